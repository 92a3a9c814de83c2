"""The run store's schema: its tables, its version, creating a store and migrating an older one.

``schema_version`` holds the store format and version. A store of an older version is migrated on open by the
functions in ``_MIGRATIONS`` (one per version step, applied in one transaction under the write lock) or
refused when no migration exists; a newer, unknown or pre-versioning (v0) store is refused, as is a file that
is not a DuckDB database or a DuckDB database that is not a run store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import duckdb

from learndyn import __version__
from learndyn.store.encoding import now
from learndyn.store.errors import StoreError, first_line

if TYPE_CHECKING:
    from learndyn.store.connection import StoreConnections

SCHEMA_VERSION = 1
STORE_FORMAT = "learndyn-run-store"
STATUSES = ("running", "completed", "failed", "interrupted", "diverged")
FINISHED = ("completed", "diverged")
"""Statuses of a run that nothing will continue (its checkpoints can go)."""
RESUMABLE = ("interrupted", "failed")
"""Statuses :meth:`RunStore.reopen_run` continues (a ``running`` run whose process is gone counts)."""

_SCHEMA = """
CREATE TABLE schema_version (
    format VARCHAR NOT NULL, version INTEGER NOT NULL, created_at TIMESTAMP, learndyn_version VARCHAR);
CREATE TABLE runs (
    id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, experiment VARCHAR, status VARCHAR NOT NULL,
    config VARCHAR, summary VARCHAR, error VARCHAR, traceback VARCHAR,
    started_at TIMESTAMP, ended_at TIMESTAMP, updated_at TIMESTAMP,
    git_commit VARCHAR, seed BIGINT, sweep_id VARCHAR, host VARCHAR, pid INTEGER, learndyn_version VARCHAR);
CREATE TABLE metrics (run_id VARCHAR NOT NULL, step BIGINT NOT NULL, name VARCHAR NOT NULL, value DOUBLE);
CREATE TABLE arrays (
    run_id VARCHAR NOT NULL, step BIGINT NOT NULL, name VARCHAR NOT NULL,
    file VARCHAR NOT NULL, key VARCHAR NOT NULL, shape VARCHAR, dtype VARCHAR);
"""
TABLES = ("schema_version", "runs", "metrics", "arrays")
RUN_COLUMNS = (
    "id",
    "name",
    "experiment",
    "status",
    "started_at",
    "ended_at",
    "updated_at",
    "seed",
    "sweep_id",
    "git_commit",
    "config",
    "summary",
    "error",
    "traceback",
    "host",
    "pid",
    "learndyn_version",
)
"""The columns of ``runs``, in the order queries return them."""

_MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {}
"""``_MIGRATIONS[v](con)`` upgrades a store of schema version ``v`` to ``v + 1`` in place (DDL/DML only; the
caller bumps ``schema_version`` and commits). Version 1 is the first versioned schema, so none exist yet; when
``SCHEMA_VERSION`` becomes 2, add ``_MIGRATIONS[1]`` (e.g. ``ALTER TABLE ... ADD COLUMN``)."""


def open_or_create(store: StoreConnections) -> bool:
    """Check (or create) the store at ``store.path``; True if it already held a store."""
    path = store.path
    fresh = not path.exists() or path.stat().st_size == 0
    if not fresh:
        try:  # under the lock: no DuckDB connection of this process has the file open (see integrity.sealed)
            with store._locked(exclusive=False), open(path, "rb") as fh:
                header = fh.read(12)
        except OSError as exc:
            raise StoreError(f"run store {path}: cannot read: {exc.strerror or exc}") from None
        if header[8:12] != b"DUCK":
            raise StoreError(f"{path} is not a learndyn run store (not a DuckDB database file)")
        with store._read() as con:
            found = tables(con)
        if found:
            _check_schema(store, found)
            return True
    with store._write() as con:  # new file, or an empty DuckDB database: make it a store
        found = tables(con)
        if not found:
            con.execute("BEGIN")
            con.execute(_SCHEMA)
            con.execute(
                "INSERT INTO schema_version VALUES (?, ?, ?, ?)",
                [STORE_FORMAT, SCHEMA_VERSION, now(), __version__],
            )
            con.execute("COMMIT")
            return False
    _check_schema(store, found)
    return True


def tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The names of the tables in the database ``con`` is connected to."""
    rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return {r[0] for r in rows}


def _check_schema(store: StoreConnections, found: set[str]) -> None:
    path = store.path
    if "schema_version" not in found:
        if {"runs", "metrics"} <= found:
            raise StoreError(
                f"{path} looks like a run store from before schema versions (version 0), which this "
                f"learndyn cannot migrate; allowed: schema versions 1..{SCHEMA_VERSION}"
            )
        raise StoreError(
            f"{path} is a DuckDB database but not a learndyn run store (no schema_version table)"
        )
    version = schema_version(store)
    if version < SCHEMA_VERSION:
        _migrate(store, version)
        with store._read() as con:
            found = tables(con)
    missing = [t for t in TABLES if t not in found]
    if missing:
        raise StoreError(f"{path} is a damaged run store: missing table(s) {', '.join(missing)}")


def schema_version(store: StoreConnections, con: duckdb.DuckDBPyConnection | None = None) -> int:
    """The store's schema version; refuses foreign, unknown and newer versions."""
    path = store.path
    try:
        if con is None:
            with store._read() as read_con:
                rows = read_con.execute("SELECT format, version FROM schema_version").fetchall()
        else:
            rows = con.execute("SELECT format, version FROM schema_version").fetchall()
    except (duckdb.Error, StoreError) as exc:
        raise StoreError(f"{path}: unreadable schema_version table: {first_line(exc)}") from None
    if len(rows) != 1 or rows[0][0] != STORE_FORMAT:
        raise StoreError(f"{path} is a DuckDB database but not a learndyn run store (foreign schema_version)")
    version = rows[0][1]
    if not isinstance(version, int) or version < 1:
        raise StoreError(
            f"{path} has an unknown schema version {version!r}; this learndyn reads 1..{SCHEMA_VERSION}"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this learndyn {__version__} supports "
            f"({SCHEMA_VERSION}); upgrade learndyn to read it"
        )
    return version


def _migrate(store: StoreConnections, version: int) -> None:
    """Upgrade the store from ``version`` to ``SCHEMA_VERSION``: one transaction, under the write lock."""
    path = store.path
    missing = [v for v in range(version, SCHEMA_VERSION) if v not in _MIGRATIONS]
    if missing:
        raise StoreError(
            f"{path} has schema version {version}, older than this learndyn's {SCHEMA_VERSION}, and "
            f"no migration from version {missing[0]} exists; open it with an older learndyn"
        )
    with store._write() as con:
        current = schema_version(store, con)  # another process may have migrated it meanwhile
        if current == SCHEMA_VERSION:
            return
        con.execute("BEGIN")
        try:
            for v in range(current, SCHEMA_VERSION):
                _MIGRATIONS[v](con)
            con.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION])
            con.execute("COMMIT")
        except Exception as exc:
            con.execute("ROLLBACK")
            raise StoreError(
                f"{path}: migration from schema version {current} to {SCHEMA_VERSION} failed "
                f"(store unchanged): {first_line(exc)}"
            ) from None
