"""Exclusive use of a folder by one process: an OS file lock (flock) on a `.lock` file inside it, which
the kernel releases when the process ends, however it ends (a crash or SIGKILL leaves no stale lock).
The lock file holds the holder's PID, so that a refused process can name it."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from bmb_stream.errors import FolderBusy


class FolderLock:
    """Hold `folder/.lock` until `release()` or the end of the process (the lock is on the open file)."""

    NAME = ".lock"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock without waiting; FolderBusy when another process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(self.folder, self.holder()) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def holder(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    __del__ = release  # a lock object dropped without release (an error on the way) frees the folder

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
