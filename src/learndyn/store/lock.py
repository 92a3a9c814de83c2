"""A fair cross-process readers-writer lock on a lock file, re-entrant inside one process.

DuckDB lets only one process hold a database file open for writing, and a read-only open fails while another
process writes. The run store therefore never keeps the database open: every flush takes this lock
*exclusively*, opens the file read-write, commits and closes; every read takes it *shared*, opens the file
read-only and closes. The lock is ``flock(2)`` on ``<store>.lock``, so the kernel releases it when a holder
dies, SIGKILL included: a killed writer never leaves the store locked.

Fairness (first come, first served). Polling ``flock`` alone lets a newcomer overtake a process that has
waited for seconds. So before it asks for the ``flock``, a process takes a *ticket* ``t``: it reads and
increments the counter in the lock file's first 8 bytes and locks its queue byte ``QUEUE + t`` (an
open-file-description record lock, ``F_OFD_SETLK``), all under a short record lock on byte 0. It then waits
until no earlier ticket's queue byte is locked (one ``F_OFD_GETLK`` over ``[QUEUE, QUEUE + t)``), takes the
``flock`` and unlocks its queue byte. So the ``flock`` is taken in ticket order: a writer waits behind the
readers and writers that came before it and no longer; consecutive readers share. The kernel drops the
record locks of a process that dies, so a killed waiter never blocks the queue; one that gives up (timeout)
unlocks its byte. Where record locks are unavailable (a read-only lock file, no ``F_OFD_*``), the ``flock``
is polled without a ticket.

Robustness. A lock file deleted (or replaced) while processes use it is recreated by the next one to come:
after taking the ``flock``, a process checks that its descriptor is still the file at the path and otherwise
starts over on the new file. (A holder of the deleted file may still be inside its transaction; DuckDB's own
file lock refuses the second writer, and the store retries that, see :mod:`learndyn.store.connection`.) A
lock file that cannot be opened for writing (read-only file system, no permission) is opened read-only for
shared locks, and a missing one that cannot be created means there is nothing to lock against: reading
proceeds without it; writing raises :class:`LockReadOnly`.

``flock`` locks belong to an open file description, so two descriptors of one process would block each other.
:func:`lock_for` therefore hands out one :class:`StoreLock` per lock-file path and process, serialised between
threads by a re-entrant mutex. Taking it exclusively while this process already holds it shared is refused
(the store would need a read-write and a read-only DuckDB handle on one file in one process, which DuckDB
refuses too).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

QUEUE = 1 << 32
"""Offset of ticket 0's queue byte (record locks beyond the end of a file lock nothing in it)."""
PAYLOAD = 4096
"""The lock file's bytes from this offset are free for the store's own use (see :func:`read_payload`)."""
_HAS_OFD = hasattr(fcntl, "F_OFD_SETLK")
_FLOCK = "hhqqi4x"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class LockTimeout(TimeoutError):
    """The lock could not be taken within the timeout."""


class LockModeError(RuntimeError):
    """Exclusive access was asked for while this process holds the lock shared."""


class LockReadOnly(PermissionError):
    """Exclusive access was asked for, but the lock file cannot be opened for writing."""


def _record_lock(fd: int, kind: int, start: int, length: int, *, query: bool = False) -> bool:
    """Set (or with ``query``, test) an open-file-description record lock; False if another holds it."""
    request = struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK if query else fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return not query or struct.unpack(_FLOCK, answer)[0] == fcntl.F_UNLCK


class _Backoff:
    """Sleeps for polling: 0.5 ms at first, growing by half each time to ``cap`` seconds."""

    def __init__(self, cap: float = 0.005) -> None:
        self.delay, self.cap = 0.0005, cap

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 1.5, self.cap)


class StoreLock:
    """A fair ``flock``-based shared/exclusive lock, re-entrant per process (use :func:`lock_for`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._fd: int | None = None
        self._exclusive = False
        self._depth = 0
        self.last_ticket: int | None = None
        """The ticket this process drew the last time it took the lock (None: it took no ticket)."""

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (in either mode)."""
        return self._depth > 0

    @contextmanager
    def hold(self, *, exclusive: bool, timeout: float) -> Iterator[None]:
        """Hold the lock (``exclusive`` for writers, shared for readers) for the ``with`` block.

        Waits up to ``timeout`` seconds, in turn, then raises :class:`LockTimeout`.
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

    # ------------------------------------------------------------------------------------ taking
    def _take(self, exclusive: bool, deadline: float, timeout: float) -> None:
        while True:
            fd, writable = self._open(exclusive)
            if fd is None:  # a read-only place without a lock file: nobody can write, nothing to lock
                self._fd, self._exclusive = None, False
                return
            ticket = None
            try:
                if writable and _HAS_OFD:
                    ticket = self._draw_ticket(fd, deadline, timeout)
                    self._wait_turn(fd, ticket, deadline, timeout, exclusive)
                self._flock(fd, exclusive, deadline, timeout)
            except BaseException:
                os.close(fd)  # drops the record locks (our queue byte) and any flock of this descriptor
                raise
            if ticket is not None:
                _record_lock(fd, fcntl.F_UNLCK, QUEUE + ticket, 1)  # the next in line may go
            if self._same_file(fd):
                self._fd, self._exclusive, self.last_ticket = fd, exclusive, ticket
                return
            os.close(fd)  # the lock file was deleted or replaced while we waited: start over on the new one

    def _open(self, exclusive: bool) -> tuple[int | None, bool]:
        """The lock file opened read-write (created if missing), else read-only for a reader, else None."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), True
        except OSError as exc:
            if exc.errno not in _READ_ONLY_ERRNOS:
                raise
            reason = exc.strerror
        if exclusive:
            raise LockReadOnly(f"cannot open the lock file {self.path} for writing: {reason}")
        try:
            return os.open(self.path, os.O_RDONLY), False
        except OSError as exc:
            if exc.errno == errno.ENOENT or exc.errno in _READ_ONLY_ERRNOS:
                return None, False
            raise

    def _draw_ticket(self, fd: int, deadline: float, timeout: float) -> int:
        """Read and increment the ticket counter and lock this ticket's queue byte, under the counter lock."""
        backoff = _Backoff()
        while not _record_lock(fd, fcntl.F_WRLCK, 0, 1):
            self._check_deadline(deadline, timeout, "the ticket counter of")
            backoff.sleep()
        try:
            ticket = int.from_bytes(os.pread(fd, 8, 0).ljust(8, b"\0"), "little")
            while not _record_lock(fd, fcntl.F_WRLCK, QUEUE + ticket, 1):  # only if the count was lost
                ticket += 1
            os.pwrite(fd, (ticket + 1).to_bytes(8, "little"), 0)
        finally:
            _record_lock(fd, fcntl.F_UNLCK, 0, 1)
        return ticket

    def _wait_turn(self, fd: int, ticket: int, deadline: float, timeout: float, exclusive: bool) -> None:
        """Wait until every earlier ticket has taken the flock or given up (no earlier queue byte locked)."""
        backoff = _Backoff()
        while ticket and not _record_lock(fd, fcntl.F_RDLCK, QUEUE, ticket, query=True):
            self._check_deadline(deadline, timeout, "the exclusive" if exclusive else "the shared")
            backoff.sleep()

    def _flock(self, fd: int, exclusive: bool, deadline: float, timeout: float) -> None:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        backoff = _Backoff(cap=0.002)  # the head of the queue (alone, normally): a short hand-over gap
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                self._check_deadline(deadline, timeout, "the exclusive" if exclusive else "the shared")
                backoff.sleep()

    def _check_deadline(self, deadline: float, timeout: float, what: str) -> None:
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"could not take {what} lock {self.path} within {timeout:g} s "
                "(another process holds the run store)"
            )

    def _same_file(self, fd: int) -> bool:
        try:
            st, now = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._exclusive = False


def read_payload(path: str | os.PathLike[str], size: int) -> bytes:
    """Up to ``size`` of the store's bytes in the lock file at :data:`PAYLOAD` (b"" if none or unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        return os.pread(fd, size, PAYLOAD)
    except OSError:
        return b""
    finally:
        os.close(fd)


def write_payload(path: str | os.PathLike[str], data: bytes) -> bool:
    """Replace the store's bytes in the lock file at :data:`PAYLOAD` (call it holding the lock exclusively).
    Best effort: False if the file cannot be written. Another descriptor of the lock file is opened and
    closed here; that releases no ``flock`` nor open-file-description lock (unlike POSIX ``F_SETLK``)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.pwrite(fd, data, PAYLOAD)
        os.ftruncate(fd, PAYLOAD + len(data))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


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
