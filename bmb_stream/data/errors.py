"""Errors of the data path that end a run with one line naming the culprit (exit code 2, or 75 for
storage that stays unreachable)."""


class DataError(RuntimeError):
    """A dataset, image, list file or manifest is unusable; the message names the file and what to do."""

    def __init__(self, message: str = ""):
        # raised in a DataLoader worker, it comes back in the main process as "Caught X in DataLoader
        # worker ...", the worker's traceback, and "<module>.X: message" last: keep the message alone
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
        super().__init__(message)


class ShardError(DataError):
    """A shard cannot be read (missing, refused, truncated, corrupt); the message names it."""


class StorageUnavailable(ShardError):
    """The storage stayed unreachable past the retry budget: a run stops with a resumable checkpoint."""


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and its message's words."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
