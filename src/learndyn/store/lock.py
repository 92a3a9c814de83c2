"""A cross-process readers-writer lock on a lock file, re-entrant inside one process.

DuckDB lets only one process hold a database file open for writing, and a read-only open fails while another
process writes. The run store therefore never keeps the database open: every flush takes this lock
*exclusively*, opens the file read-write, commits and closes; every read takes it *shared*, opens the file
read-only and closes. The lock is ``flock(2)`` on ``<store>.lock``, so the kernel releases it when a holder
dies, SIGKILL included: a killed writer never leaves the store locked.

``flock`` locks belong to an open file description, so two descriptors of one process would block each other.
:func:`lock_for` therefore hands out one :class:`StoreLock` per lock-file path and process, serialised between
threads by a re-entrant mutex. Taking it exclusively while this process already holds it shared is refused
(the store would need a read-write and a read-only DuckDB handle on one file in one process, which DuckDB
refuses too).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class LockTimeout(TimeoutError):
    """The lock could not be taken within the timeout."""


class LockModeError(RuntimeError):
    """Exclusive access was asked for while this process holds the lock shared."""


class StoreLock:
    """``flock``-based shared/exclusive lock, re-entrant per process (use :func:`lock_for`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._fd: int | None = None
        self._exclusive = False
        self._depth = 0

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (in either mode)."""
        return self._depth > 0

    @contextmanager
    def hold(self, *, exclusive: bool, timeout: float) -> Iterator[None]:
        """Hold the lock (``exclusive`` for writers, shared for readers) for the ``with`` block.

        Waits up to ``timeout`` seconds, polling, then raises :class:`LockTimeout`.
        """
        deadline = time.monotonic() + timeout
        if not self._mutex.acquire(timeout=max(timeout, 0.0)):
            raise LockTimeout(f"lock {self.path} is busy in this process for more than {timeout:g} s")
        try:
            if self._depth == 0:
                self._take(exclusive, deadline, timeout)
            elif exclusive and not self._exclusive:
                raise LockModeError(
                    f"cannot write to the store while this process reads it (lock {self.path} is held shared)"
                )
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()
        finally:
            self._mutex.release()

    def _take(self, exclusive: bool, deadline: float, timeout: float) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    kind = "exclusive" if exclusive else "shared"
                    raise LockTimeout(
                        f"could not take the {kind} lock {self.path} within {timeout:g} s "
                        "(another process holds the run store)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        self._exclusive = exclusive

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._exclusive = False


_LOCKS: dict[str, StoreLock] = {}
_LOCKS_MUTEX = threading.Lock()


def lock_for(path: str | os.PathLike[str]) -> StoreLock:
    """The process-wide :class:`StoreLock` for the lock file ``path``."""
    key = os.path.realpath(os.fspath(path))
    with _LOCKS_MUTEX:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = StoreLock(key)
        return lock


def _reset_after_fork() -> None:
    # A forked child does not own its parent's flock state; start afresh.
    global _LOCKS_MUTEX
    _LOCKS.clear()
    _LOCKS_MUTEX = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
