"""The project's one file lock: an exclusive advisory `fcntl.flock` on a file, created if needed.

The operating system drops the lock when its holder dies (even by SIGKILL), so a killed process never leaves a
lock behind. Users: the data directory's manifest and per-dataset generation locks (`envs.manifest`, blocking)
and the run directory's lock (`runner.safety.RunLock`, non-blocking, with the holder's pid in the file so the
refusal can name it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Any


class FileLock:
    """`acquire()` blocks until the lock is ours; `acquire(blocking=False)` returns False if another process holds
    it (then `holder` is the pid it wrote, if any). `release()` or the object's end drops it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.holder: str | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (OSError if the file cannot be opened or locked for another reason than contention)."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            self.holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        with contextlib.suppress(OSError):  # our pid, for a refusal message elsewhere; the lock is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _read_pid(fd: int) -> str | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None
