"""Atomic checkpoints: written to a temporary file, flushed, then renamed over the old one, so a
crash or a full disk never leaves a half-written `last.pt`. Loaded with weights_only=True."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint (or another file of the run directory) cannot be written or read; the message names it."""


def write_failure(path: Path, error: Exception) -> str:
    """Why writing `path` failed, in words (torch.save reports a full disk as a RuntimeError)."""
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or (free is not None and free < 2**16):
        return "no space left on the device"
    return (error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]) + \
        (f" ({free / 2**20:.1f} MiB free)" if free is not None else "")


def save_atomic(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        reason = write_failure(path, e)  # before the partial file is removed: it is what filled the disk
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path}: {reason}; the previous "
                              f"checkpoint is intact (free some space, then resume=true)") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {e}") from e
