"""Errors of the data path that end a run with one line naming the culprit (exit code 2, or 75 for
storage that stays unreachable)."""


class DataError(RuntimeError):
    """A dataset, image, list file or manifest is unusable; the message names the file and what to do."""


class ShardError(DataError):
    """A shard cannot be read (missing, refused, truncated, corrupt); the message names it."""


class StorageUnavailable(ShardError):
    """The storage stayed unreachable past the retry budget: a run stops with a resumable checkpoint."""
