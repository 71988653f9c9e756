"""Atomic file writes, the one way the package writes a file that a crash must not leave half-written
(checkpoints, the run directory's records, shards, manifests): write `.NAME.tmp` beside the file,
flush it to the disk, rename it over NAME. A failure removes the temporary file and raises WriteFailed,
whose reason says in words why (a full disk first)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from bmb_stream.errors import WriteFailed, first_line


def write_failure(path: Path, error: BaseException) -> str:
    """Why writing `path` failed, in words (torch.save reports a full disk as a RuntimeError)."""
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or (free is not None and free < 2**16):
        return "no space left on the device"
    return (error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)) + \
        (f" ({free / 2**20:.1f} MiB free)" if free is not None else "")


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a file to write; on leaving the block it replaces `path` whole, or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, OSError) and e.filename not in (None, str(tmp), str(path)):
            tmp.unlink(missing_ok=True)  # about another file (an image being read): not a write failure
            raise
        reason = write_failure(path, e)  # before the partial file is removed: it may be what filled the disk
        tmp.unlink(missing_ok=True)
        raise WriteFailed(path, reason) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")
