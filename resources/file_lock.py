"""Cross-process file locks (flock): the one way Feynman serialises work between processes."""

from __future__ import annotations

import fcntl
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeout(TimeoutError):
    """The lock was held by another process for longer than the caller would wait."""


def acquire(path: str | Path, *, exclusive: bool = True, timeout_s: float | None = None, what: str = "lock") -> int:
    """Take the lock and return its descriptor (closing the descriptor releases it).

    ``timeout_s`` None waits forever; otherwise ``LockTimeout`` names ``what`` and the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                os.close(fd)
                raise LockTimeout(f"timed out after {timeout_s:.0f}s waiting for {what} {path}") from None
            time.sleep(0.005 + random.random() * 0.02)  # jitter: waiting processes don't wake in lockstep


@contextmanager
def file_lock(path: str | Path, *, exclusive: bool = True, timeout_s: float | None = None,
              what: str = "lock") -> Iterator[None]:
    fd = acquire(path, exclusive=exclusive, timeout_s=timeout_s, what=what)
    try:
        yield
    finally:
        os.close(fd)
