"""How the run store reaches its DuckDB file: one short connection per transaction, under the store lock.

DuckDB allows one read-write process per file, so the store never keeps the file open. Every write takes the
store's lock exclusively (:mod:`learndyn.store.lock`), opens the database read-write, runs one transaction,
closes (which checkpoints the write-ahead log into the file) and releases; every read takes the lock shared
and opens the database read-only. So any number of processes can write to one store, and a writer killed with
SIGKILL loses only its unfinished transaction (the kernel drops its lock, DuckDB's write-ahead log drops the
transaction). A flush costs ~10 ms, so serialising is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import duckdb

from learndyn.store.errors import StoreError, first_line
from learndyn.store.lock import LockModeError, LockTimeout, lock_for


class StoreConnections:
    """The locked connections of a run store at ``path`` (the base of :class:`~learndyn.store.RunStore`)."""

    def __init__(self, path: Path, lock_timeout: float) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self.arrays_dir = path.with_name(path.stem + ".arrays")
        self._lock_path = path.with_name(path.name + ".lock")
        self._read_con: duckdb.DuckDBPyConnection | None = None

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        try:
            with lock_for(self._lock_path).hold(exclusive=exclusive, timeout=self.lock_timeout):
                yield
        except LockTimeout as exc:
            raise StoreError(f"run store {self.path}: {exc}") from None
        except LockModeError as exc:
            raise StoreError(f"run store {self.path}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive lock + read-write connection, closed (and so checkpointed) afterwards."""
        if self._read_con is not None:
            raise StoreError(f"run store {self.path}: cannot write inside this store's reading() block")
        with self._locked(exclusive=True):
            try:
                con = duckdb.connect(str(self.path))
            except duckdb.Error as exc:
                raise StoreError(
                    f"run store {self.path}: cannot open for writing: {first_line(exc)}"
                ) from None
            try:
                yield con
            except duckdb.Error as exc:
                raise StoreError(f"run store {self.path}: {first_line(exc)}") from exc
            finally:
                con.close()

    @contextmanager
    def _read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Shared lock + read-only connection (reused inside :meth:`reading`)."""
        if self._read_con is not None:
            yield self._read_con
            return
        with self._locked(exclusive=False):
            try:
                con = duckdb.connect(str(self.path), read_only=True)
            except duckdb.Error as exc:
                raise StoreError(f"run store {self.path}: cannot open: {first_line(exc)}") from None
            try:
                yield con
            except duckdb.Error as exc:
                raise StoreError(f"run store {self.path}: {first_line(exc)}") from exc
            finally:
                con.close()

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
