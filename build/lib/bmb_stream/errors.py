"""The package's errors: one family, by what the user must fix. Each is raised where the problem is
found, with a message that names the culprit and what to do; the command line turns any of them into
one line on stderr and the exit code (`bmb_stream.cli`). str() is that message.

    BmbError
    ├── ConfigError          the command line, a config value, a stream recipe, an output folder named
    │   └── TrainingDiverged     the loss or the weights became NaN or infinite (the settings to change)
    ├── DataError            a dataset, list file, image, manifest or shard is unusable
    │   ├── DataNotFound         a dataset's files are missing
    │   ├── BadData              a file of the user's dataset (or a split of it)
    │   ├── UnusableImage        one image (its reader adds the name)
    │   └── ShardError           a shard cannot be read (missing, refused, truncated, corrupt)
    │       ├── SampleError          one sample of a shard
    │       └── StorageUnavailable   the storage stayed unreachable past the retry budget (exit code 75)
    ├── StorageError         a file could not be written where it goes
    │   └── WriteFailed          (a full disk, a folder that may not be written)
    └── RunFolderError       the run folder: a checkpoint or record that cannot be read, a folder in use
        ├── CheckpointError
        └── FolderBusy
"""

from __future__ import annotations

from pathlib import Path


class BmbError(Exception):
    exit_code = 2
    # True where every rank of a data-parallel run meets the same error (a config, a divergence): rank 0
    # alone reports it. A data fault may be one rank's alone, and each rank reports its own.
    same_on_every_rank = False


class ConfigError(BmbError, ValueError):
    """A configuration value, a command-line argument, a recipe or an output folder is wrong."""

    same_on_every_rank = True


class TrainingDiverged(ConfigError):
    """The loss or the weights became NaN or infinite; the message says when and what to change."""


class DataError(BmbError):
    """A dataset, image, list file or manifest is unusable; the message names the file and what to do."""

    def __init__(self, message: str = ""):
        # raised in a DataLoader worker, it comes back in the main process as "Caught X in DataLoader
        # worker ...", the worker's traceback, and "<module>.X: message" last: keep the message alone
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
        super().__init__(message)


class DataNotFound(DataError, FileNotFoundError):
    """A dataset's files are missing; the message says where they were looked for and how to get them."""


class BadData(DataError, ValueError):
    """A file of the user's dataset (or a split of it) is unusable; the message names it and what to do.
    A ValueError too, as these readers raised before."""


class UnusableImage(DataError):
    """`reason` completes "the image ...": "is not an image ...", "is 9000x8000 pixels, over ..."; the
    reader that meets it names the image."""

    def __init__(self, reason: str, too_big: bool = False):
        super().__init__(reason)
        self.reason, self.too_big = reason, too_big


class ShardError(DataError):
    """A shard cannot be read (missing, refused, truncated, corrupt); the message names it."""


class SampleError(ShardError):
    """One sample of a shard is unusable (its image, class or json); the message names it and its shard."""


class StorageError(BmbError):
    """Storage fails: a file cannot be written, or object storage stays unreachable."""


class StorageUnavailable(ShardError, StorageError):
    """The storage stayed unreachable past the retry budget: a run stops with a resumable checkpoint
    (EX_TEMPFAIL: try again later)."""

    exit_code = 75


class WriteFailed(StorageError):
    def __init__(self, path: Path, reason: str):
        super().__init__(f"could not write {path}: {reason}")
        self.path, self.reason = path, reason


class RunFolderError(BmbError):
    """The run folder cannot be used as it is; the message names the file and what to do."""


class CheckpointError(RunFolderError):
    """A checkpoint (or another file of the run directory) cannot be written or read; the message names it."""


class FolderBusy(RunFolderError):
    """Another live process holds the folder's lock; `pid` is its PID (None where it could not be read)."""

    def __init__(self, folder: Path, pid: int | None):
        super().__init__(f"{folder} is in use by another process (PID {pid if pid is not None else 'unknown'})")
        self.folder, self.pid = folder, pid


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and its message's words."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def first_line(error: BaseException) -> str:
    """The first line of an error's message; its type's name where the message is empty."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def few_of(items: list[str], lead: str = "") -> str:
    """The first five of a list for a message, and how many in all."""
    return lead + ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "") if items else ""
