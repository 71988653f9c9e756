"""Errors of the data path that end a run with one line naming the shard or URL."""


class ShardError(RuntimeError):
    """A shard cannot be read (missing, refused, truncated, corrupt); the message names it."""


class StorageUnavailable(ShardError):
    """The storage stayed unreachable past the retry budget: a run stops with a resumable checkpoint."""
