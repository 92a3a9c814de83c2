"""How the run store reaches its DuckDB file: one short connection per transaction, under the store lock.

DuckDB allows one read-write process per file, so the store never keeps the file open. Every write takes the
store's lock exclusively (:mod:`learndyn.store.lock`), opens the database read-write, runs one transaction,
closes (which checkpoints the write-ahead log into the file) and releases; every read takes the lock shared
and opens the database read-only. So any number of processes can write to one store, and a writer killed with
SIGKILL loses only its unfinished transaction (the kernel drops its lock, DuckDB's write-ahead log drops the
transaction). A flush costs ~10 ms, so serialising is cheap.

Every write is checked first (:mod:`learndyn.store.integrity`): a damaged store is refused in one line, never
written to. A store on a read-only file system (or in a directory this user cannot write) is readable: reads
take no lock where no lock file can be made; a write is refused with :class:`StoreReadOnlyError`. If DuckDB's
own file lock is held by a process outside this lock (a holder of a deleted lock file, another program), a
connection is retried until ``lock_timeout``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import duckdb

from learndyn.store import integrity
from learndyn.store.errors import StoreError, StoreReadOnlyError, first_line
from learndyn.store.lock import LockModeError, LockReadOnly, LockTimeout, lock_for


class StoreConnections:
    """The locked connections of a run store at ``path`` (the base of :class:`~learndyn.store.RunStore`)."""

    def __init__(self, path: Path, lock_timeout: float) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self.arrays_dir = path.with_name(path.stem + ".arrays")
        self._lock_path = path.with_name(path.name + ".lock")
        self._read_con: duckdb.DuckDBPyConnection | None = None
        self._waited_for_duckdb = False
        self.full_checks = 0
        """How many times this store object ran the full integrity check before a write."""

    @property
    def writable(self) -> bool:
        """Whether this process may write the store (its file and folder are writable)."""
        folder = self.path.parent
        return os.access(folder, os.W_OK) and (not self.path.exists() or os.access(self.path, os.W_OK))

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        try:
            with lock_for(self._lock_path).hold(exclusive=exclusive, timeout=self.lock_timeout):
                yield
        except (LockTimeout, LockModeError) as exc:
            raise StoreError(f"run store {self.path}: {exc}") from None
        except LockReadOnly as exc:
            raise StoreReadOnlyError(f"run store {self.path} is read-only: {exc}") from None

    @contextmanager
    def _connection(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The lock (exclusive to write, else shared) and a DuckDB connection, closed afterwards.

        DuckDB's own file lock held by a process outside the store's lock is waited out (up to
        ``lock_timeout``); any other error opening the file is one line.
        """
        if write and not self.writable:
            raise StoreReadOnlyError(
                f"run store {self.path} is read-only (no write permission or file system)"
            )
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        self._waited_for_duckdb = False
        while True:
            with self._locked(exclusive=write):
                try:
                    con = duckdb.connect(str(self.path), read_only=not write)
                except duckdb.Error as exc:
                    if not _is_lock_conflict(exc) or time.monotonic() >= deadline:
                        doing = "cannot open for writing" if write else "cannot open"
                        raise StoreError(f"run store {self.path}: {doing}: {first_line(exc)}") from None
                else:
                    try:
                        yield con
                    except duckdb.Error as exc:
                        raise StoreError(f"run store {self.path}: {first_line(exc)}") from exc
                    finally:
                        con.close()
                    return
            self._waited_for_duckdb = True
            time.sleep(delay)  # (a reader sleeps outside the store's lock; _write keeps holding it)
            delay = min(delay * 2, 0.1)

    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive lock + read-write connection of a checked store, closed (and so checkpointed) afterwards.

        The store is checked before the transaction (:mod:`learndyn.store.integrity`); afterwards the file is
        sealed, unless the check or DuckDB failed (then the next write checks the whole file).
        """
        if self._read_con is not None:
            raise StoreError(f"run store {self.path}: cannot write inside this store's reading() block")
        with self._locked(exclusive=True):  # one hold for the check, the transaction and the seal
            # the cheap check reads the file before DuckDB opens it: closing any descriptor of the file while
            # DuckDB holds it open would drop DuckDB's own (POSIX, per-process) lock on it
            trusted = integrity.sealed(self)
            sound = False
            try:
                with self._connection(write=True) as con:
                    if not trusted or self._waited_for_duckdb:  # someone wrote outside our lock meanwhile
                        integrity.verify(self, con)
                        self.full_checks += 1
                    sound = True
                    try:
                        yield con
                    except BaseException as exc:
                        sound = not isinstance(exc, duckdb.Error) and not isinstance(
                            exc.__cause__, duckdb.Error
                        )
                        raise
            finally:
                (integrity.seal if sound else integrity.unseal)(self)

    @contextmanager
    def _read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Shared lock + read-only connection (reused inside :meth:`reading`)."""
        if self._read_con is not None:
            yield self._read_con
            return
        with self._connection(write=False) as con:
            yield con

    @contextmanager
    def reading(self) -> Iterator[Self]:
        """Hold one read-only connection (and the shared lock) for many queries, e.g. while building a report.

        Writers in other processes wait until the block ends; writing from this process inside it is refused.
        """
        if self._read_con is not None:
            yield self
            return
        with self._read() as con:
            self._read_con = con
            try:
                yield self
            finally:
                self._read_con = None


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    """DuckDB could not take its own lock on the file (another process has it open)."""
    return "Could not set lock on file" in str(exc) or "Conflicting lock is held" in str(exc)
