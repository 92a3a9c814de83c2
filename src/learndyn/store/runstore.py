"""The run store: one embedded DuckDB file of runs and scalar metrics, with arrays in a sibling folder.

Layout of a store at ``runs/learndyn.duckdb``::

    runs/learndyn.duckdb        tables schema_version, runs, metrics, arrays (see ``_SCHEMA``)
    runs/learndyn.duckdb.lock   the cross-process lock file (see :mod:`learndyn.store.lock`)
    runs/learndyn.arrays/       one folder per run, one ``.npz`` per flush; ``arrays`` rows point into them

Concurrency: DuckDB allows one read-write process per file, so the store never keeps the file open. A
:class:`Run` buffers what it logs and flushes in batches (every ``flush_every`` distinct steps, every
``flush_seconds``, on :meth:`Run.flush` and on close); each flush takes the store's exclusive ``flock``, opens
the database, writes the batch in one transaction, closes and releases. Readers take the lock shared. So any
number of processes (sweep workers) can write runs to one store; a writer killed with SIGKILL loses only what
it had not flushed (the kernel drops its lock, DuckDB's write-ahead log drops the unfinished transaction). The
alternative, one file per worker merged on read, would make every query scan an open-ended set of files and
would need a merge step before the store is one file again; a flush costs ~10 ms, so serialising is cheap.

Crash recovery: a run records its host and pid. Opening the store marks ``interrupted`` every ``running`` run
of this host whose process is gone (SIGKILL, power loss: nothing could mark it); :meth:`RunStore.reopen_run`
continues such a run under the same id (``learndyn resume``): rows the continued run logs again replace the
rows an earlier attempt wrote at the same (step, name), so a deterministic experiment that resumes from its
checkpoints (``run.checkpointer``) ends with exactly the rows of an uninterrupted run.

Schema versions: ``schema_version`` holds the store format and version. A store of an older version is
migrated on open by the functions in ``_MIGRATIONS`` (one per version step, applied in one transaction under
the write lock) or refused when no migration exists; a newer, unknown or pre-versioning store is refused.
"""

from __future__ import annotations

import atexit
import enum
import json
import math
import os
import socket
import subprocess
import time
import traceback
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from learndyn import __version__
from learndyn.checkpoint import RunCheckpointer, default_checkpoint_every
from learndyn.store.lock import LockModeError, LockTimeout, lock_for
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

SCHEMA_VERSION = 1
STORE_FORMAT = "learndyn-run-store"
DEFAULT_STORE = "runs/learndyn.duckdb"
STATUSES = ("running", "completed", "failed", "interrupted", "diverged")
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
_TABLES = ("schema_version", "runs", "metrics", "arrays")

_MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {}
"""``_MIGRATIONS[v](con)`` upgrades a store of schema version ``v`` to ``v + 1`` in place (DDL/DML only; the
caller bumps ``schema_version`` and commits). Version 1 is the first versioned schema, so none exist yet; when
``SCHEMA_VERSION`` becomes 2, add ``_MIGRATIONS[1]`` (e.g. ``ALTER TABLE ... ADD COLUMN``)."""
_RUN_COLUMNS = (
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


class StoreError(Exception):
    """A run-store problem, explained in one line (bad file, missing run, lock timeout, ...)."""


class RunNotFoundError(StoreError, LookupError):
    """No run (or sweep) matches the reference, or a prefix matches several."""


def default_store_path() -> Path:
    """``$LEARNDYN_STORE`` if set, else ``runs/learndyn.duckdb`` (relative to the working directory)."""
    return Path(os.environ.get("LEARNDYN_STORE") or DEFAULT_STORE)


def _now() -> datetime:
    """Timestamps are stored as naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _jsonable(value: Any) -> Any:
    """Best-effort conversion of config/summary values to JSON-representable Python values."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()  # a 0-d torch tensor
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=False)


def _loads(text: str | None) -> Any:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return {}
    return json.loads(text)


def _process_alive(pid: int, wrote_at: datetime | None = None) -> bool:
    """Whether process ``pid`` of this host may still be the one that wrote a run's row at ``wrote_at``.

    No such process (or a zombie) is dead. On Linux a process that started after ``wrote_at`` cannot have
    written it: the pid was reused, and the writer is dead too. When unsure (no permission, no /proc) the
    process counts as alive.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return True
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
    if not fields or fields[0] in ("Z", "X"):
        return False
    if wrote_at is not None:
        try:
            ticks = int(fields[19])  # starttime, clock ticks after boot
            boot = _boot_time()
            started = boot + ticks / os.sysconf("SC_CLK_TCK")
        except (IndexError, ValueError, OSError):
            return True
        if started > wrote_at.replace(tzinfo=UTC).timestamp() + 2.0:  # /proc's boot time: 1 s resolution
            return False
    return True


def run_process_alive(host: Any, pid: Any, wrote_at: datetime | None = None) -> bool | None:
    """Whether the process recorded for a run (``host``, ``pid``) may still be running it: None when the run
    belongs to another host (this one cannot tell), else :func:`_process_alive` (malformed pids are dead)."""
    if not host or pid is None or host != socket.gethostname():
        return None
    try:
        pid = int(pid)
    except (OverflowError, ValueError, TypeError):
        return False
    return _process_alive(pid, wrote_at)


@lru_cache(maxsize=1)
def _boot_time() -> float:
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the learndyn source tree (``+dirty`` if it has uncommitted changes), or None."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


class RunStore:
    """An embedded DuckDB run store at ``path`` (created on first use unless ``create=False``).

    >>> store = RunStore("runs/learndyn.duckdb")
    >>> with store.start_run("my-exp", config, seed=0) as run:   # a Recorder
    ...     run.log(step, {"loss": 0.1})
    >>> store.metrics(run.id)                                    # pandas DataFrame

    Opening checks the file: a text file, a foreign DuckDB database or a store with a newer or unknown schema
    version is refused with a one-line :class:`StoreError`; an older schema is migrated. Queries return pandas
    DataFrames and accept a run reference: its id, a unique id prefix, or its name (the latest run of that
    name). ``lock_timeout`` bounds how long a read or a flush waits for another process's flush.
    ``recover``: mark this host's ``running`` runs whose process is gone ``interrupted`` on opening
    (:meth:`recover_dead_runs`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        lock_timeout: float = 60.0,
        recover: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.lock_timeout = check_real("lock_timeout", lock_timeout, low=0.0, owner="RunStore")
        self.arrays_dir = self.path.with_name(self.path.stem + ".arrays")
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._read_con: duckdb.DuckDBPyConnection | None = None
        if self.path.is_dir():
            raise StoreError(f"run store path {self.path} is a directory; expected a .duckdb file")
        if not self.path.exists():
            if not create:
                raise StoreError(f"no run store at {self.path} (pass --store PATH or set LEARNDYN_STORE)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        if self._open_or_create() and recover:
            self.recover_dead_runs()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    # ------------------------------------------------------------------ connections
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
                    f"run store {self.path}: cannot open for writing: {_first_line(exc)}"
                ) from None
            try:
                yield con
            except duckdb.Error as exc:
                raise StoreError(f"run store {self.path}: {_first_line(exc)}") from exc
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
                raise StoreError(f"run store {self.path}: cannot open: {_first_line(exc)}") from None
            try:
                yield con
            except duckdb.Error as exc:
                raise StoreError(f"run store {self.path}: {_first_line(exc)}") from exc
            finally:
                con.close()

    @contextmanager
    def reading(self) -> Iterator[RunStore]:
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

    def _open_or_create(self) -> bool:
        """Check (or create) the store; True if it already held a store."""
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            try:
                with open(self.path, "rb") as fh:
                    header = fh.read(12)
            except OSError as exc:
                raise StoreError(f"run store {self.path}: cannot read: {exc.strerror or exc}") from None
            if header[8:12] != b"DUCK":
                raise StoreError(f"{self.path} is not a learndyn run store (not a DuckDB database file)")
            with self._read() as con:
                tables = self._tables(con)
            if tables:
                self._check_schema(tables)
                return True
        with self._write() as con:  # new file, or an empty DuckDB database: make it a store
            tables = self._tables(con)
            if not tables:
                con.execute("BEGIN")
                con.execute(_SCHEMA)
                con.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?, ?)",
                    [STORE_FORMAT, SCHEMA_VERSION, _now(), __version__],
                )
                con.execute("COMMIT")
                return False
        self._check_schema(tables)
        return True

    @staticmethod
    def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
        rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        return {r[0] for r in rows}

    def _check_schema(self, tables: set[str]) -> None:
        if "schema_version" not in tables:
            if {"runs", "metrics"} <= tables:
                raise StoreError(
                    f"{self.path} looks like a run store from before schema versions (version 0), which this "
                    f"learndyn cannot migrate; allowed: schema versions 1..{SCHEMA_VERSION}"
                )
            raise StoreError(
                f"{self.path} is a DuckDB database but not a learndyn run store (no schema_version table)"
            )
        version = self._schema_version()
        if version < SCHEMA_VERSION:
            self._migrate(version)
            tables = self._tables_now()
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            raise StoreError(f"{self.path} is a damaged run store: missing table(s) {', '.join(missing)}")

    def _schema_version(self, con: duckdb.DuckDBPyConnection | None = None) -> int:
        """The store's schema version; refuses foreign, unknown and newer versions."""
        try:
            if con is None:
                with self._read() as read_con:
                    rows = read_con.execute("SELECT format, version FROM schema_version").fetchall()
            else:
                rows = con.execute("SELECT format, version FROM schema_version").fetchall()
        except (duckdb.Error, StoreError) as exc:
            raise StoreError(f"{self.path}: unreadable schema_version table: {_first_line(exc)}") from None
        if len(rows) != 1 or rows[0][0] != STORE_FORMAT:
            raise StoreError(
                f"{self.path} is a DuckDB database but not a learndyn run store (foreign schema_version)"
            )
        version = rows[0][1]
        if not isinstance(version, int) or version < 1:
            raise StoreError(
                f"{self.path} has an unknown schema version {version!r}; "
                f"this learndyn reads 1..{SCHEMA_VERSION}"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this learndyn {__version__} supports "
                f"({SCHEMA_VERSION}); upgrade learndyn to read it"
            )
        return version

    def _tables_now(self) -> set[str]:
        with self._read() as con:
            return self._tables(con)

    def _migrate(self, version: int) -> None:
        """Upgrade the store from ``version`` to ``SCHEMA_VERSION``: one transaction, under the write lock."""
        missing = [v for v in range(version, SCHEMA_VERSION) if v not in _MIGRATIONS]
        if missing:
            raise StoreError(
                f"{self.path} has schema version {version}, older than this learndyn's {SCHEMA_VERSION}, and "
                f"no migration from version {missing[0]} exists; open it with an older learndyn"
            )
        with self._write() as con:
            current = self._schema_version(con)  # another process may have migrated it meanwhile
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
                    f"{self.path}: migration from schema version {current} to {SCHEMA_VERSION} failed "
                    f"(store unchanged): {_first_line(exc)}"
                ) from None

    # ------------------------------------------------------------------ crash recovery
    def recover_dead_runs(self) -> list[str]:
        """Mark ``interrupted`` every ``running`` run of this host whose process is gone; return their ids.

        A process killed with SIGKILL (or a machine that lost power) cannot mark its run; this does, the next
        time anyone opens the store (``learndyn list`` included). Runs of other hosts are left alone.
        """
        host = socket.gethostname()
        with self._read() as con:
            rows = con.execute(  # updated_at: the writer (pid) was alive then, so it started before
                "SELECT id, pid, coalesce(updated_at, started_at) FROM runs "
                "WHERE status = 'running' AND host = ?",
                [host],
            ).fetchall()
        dead = [(i, pid) for i, pid, wrote in rows if pid is not None and not _process_alive(pid, wrote)]
        if not dead:
            return []
        marked = []
        with self._write() as con:
            for run_id, pid in dead:
                changed = con.execute(
                    "UPDATE runs SET status = 'interrupted', ended_at = coalesce(updated_at, ?), error = ? "
                    "WHERE id = ? AND status = 'running' AND host = ? AND pid = ? RETURNING id",
                    [
                        _now(),
                        f"process {pid} on {host} ended without closing the run (killed?)",
                        run_id,
                        host,
                        pid,
                    ],
                ).fetchall()
                marked.extend(r[0] for r in changed)
        return marked

    # ------------------------------------------------------------------ writing
    def start_run(
        self,
        name: str,
        config: Any = None,
        *,
        seed: int | None = None,
        sweep_id: str | None = None,
        experiment: str | None = None,
        flush_every: int = 100,
        flush_seconds: float | None = 10.0,
        git_commit: str | None = None,
        checkpoint_every: int | None = None,
    ) -> Run:
        """Open a new run (status ``running``, visible at once) and return it as a :class:`Run` recorder.

        ``config``: a dataclass or mapping, stored as JSON. ``experiment`` defaults to ``name`` and selects
        the report's experiment-specific figures. ``flush_every``: flush after this many distinct steps;
        ``flush_seconds``: also flush when a new step comes this long after the last flush (None: never).
        ``git_commit`` defaults to the learndyn source tree's commit (``+dirty`` when modified).
        ``checkpoint_every``: updates between the checkpoints of ``run.checkpointer`` (default
        ``$LEARNDYN_CHECKPOINT_EVERY``, else 100; 0: none).
        """
        from learndyn.config import config_to_dict

        if not isinstance(name, str) or not name.strip():
            raise LearndynValueError(f"name={name!r} is not allowed; allowed: a non-empty string")
        if seed is not None:
            seed = check_int("seed", int(seed) if isinstance(seed, np.integer) else seed, owner="start_run")
        check_int("flush_every", flush_every, low=1, owner="start_run")  # checked before the run exists
        if flush_seconds is not None:
            check_real("flush_seconds", flush_seconds, low=0.0, owner="start_run")
        if checkpoint_every is None:
            checkpoint_every = default_checkpoint_every()  # a bad $LEARNDYN_CHECKPOINT_EVERY fails here
        check_int("checkpoint_every", checkpoint_every, low=0, owner="start_run")
        run_id = uuid.uuid4().hex
        config_json = _dumps(config_to_dict(config))
        now = _now()
        with self._write() as con:
            con.execute(
                "INSERT INTO runs (id, name, experiment, status, config, summary, started_at, updated_at, "
                "git_commit, seed, sweep_id, host, pid, learndyn_version) "
                "VALUES (?, ?, ?, 'running', ?, '{}', ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    name,
                    experiment or name,
                    config_json,
                    now,
                    now,
                    git_commit or _git_commit(),
                    seed,
                    sweep_id,
                    socket.gethostname(),
                    os.getpid(),
                    __version__,
                ],
            )
        return Run(
            self,
            run_id,
            name,
            flush_every=flush_every,
            flush_seconds=flush_seconds,
            checkpoint_every=checkpoint_every,
        )

    def reopen_run(
        self,
        ref: str,
        *,
        flush_every: int = 100,
        flush_seconds: float | None = 10.0,
        checkpoint_every: int | None = None,
    ) -> Run:
        """Continue an ``interrupted`` or ``failed`` run under its id (``learndyn resume``); returns its Run.

        The run is marked ``running`` by this process. Rows it logs at a (step, name) an earlier attempt
        already wrote replace those rows (metrics and arrays alike); its summary starts from the stored one. A
        run still running in a live process, or one that completed or diverged, is refused (StoreError).
        """
        check_int("flush_every", flush_every, low=1, owner="reopen_run")
        if checkpoint_every is None:
            checkpoint_every = default_checkpoint_every()
        check_int("checkpoint_every", checkpoint_every, low=0, owner="reopen_run")
        run_id = self.resolve(ref)
        self.recover_dead_runs()
        host, pid = socket.gethostname(), os.getpid()
        with self._write() as con:
            row = con.execute(
                "SELECT name, status, host, pid, summary FROM runs WHERE id = ?", [run_id]
            ).fetchone()
            name, status, run_host, run_pid, summary = row
            if status not in RESUMABLE:
                where = f" (pid {run_pid} on {run_host})" if status == "running" else ""
                raise StoreError(
                    f"run {run_id[:8]} ({name}) is {status}{where}; allowed to resume: "
                    + ", ".join(RESUMABLE)
                )
            con.execute(
                "UPDATE runs SET status = 'running', ended_at = NULL, error = NULL, traceback = NULL, "
                "host = ?, pid = ?, updated_at = ? WHERE id = ?",
                [host, pid, _now(), run_id],
            )
            metric_keys = con.execute(
                "SELECT name, list(DISTINCT step) FROM metrics WHERE run_id = ? GROUP BY name", [run_id]
            ).fetchall()
            array_keys = con.execute(
                "SELECT name, list(DISTINCT step) FROM arrays WHERE run_id = ? GROUP BY name", [run_id]
            ).fetchall()
        run = Run(
            self,
            run_id,
            name,
            flush_every=flush_every,
            flush_seconds=flush_seconds,
            checkpoint_every=checkpoint_every,
        )
        run._summary = dict(_loads(summary) or {})
        run._old_rows = {n: set(steps) for n, steps in metric_keys}
        run._old_arrays = {n: set(steps) for n, steps in array_keys}
        return run

    # ------------------------------------------------------------------ resolving references
    def resolve(self, ref: str) -> str:
        """The id of the run ``ref`` names: an exact id, a name (its latest run) or a unique id prefix."""
        if not isinstance(ref, str) or not ref:
            raise RunNotFoundError(f"run reference {ref!r} is empty")
        with self._read() as con:
            if con.execute("SELECT 1 FROM runs WHERE id = ?", [ref]).fetchone():
                return ref
            row = con.execute(
                "SELECT id FROM runs WHERE name = ? ORDER BY started_at DESC, id LIMIT 1", [ref]
            ).fetchone()
            if row:
                return row[0]
            rows = con.execute(
                "SELECT id FROM runs WHERE starts_with(id, ?) ORDER BY started_at LIMIT 6", [ref.lower()]
            ).fetchall()
        if len(rows) == 1:
            return rows[0][0]
        if not rows:
            raise RunNotFoundError(f"no run with id, id prefix or name {ref!r} in {self.path}")
        shown = ", ".join(r[0][:12] for r in rows[:5])
        raise RunNotFoundError(f"run prefix {ref!r} is ambiguous in {self.path}: matches {shown}, ...")

    def resolve_targets(self, refs: str | Sequence[str]) -> list[str]:
        """Run ids for a list of references, each a run (as in :meth:`resolve`) or a sweep id (or prefix).

        A sweep reference expands to its runs in start order. Duplicates are dropped, order kept.
        """
        if isinstance(refs, str):
            refs = [refs]
        out: list[str] = []
        for ref in refs:
            ids = self._sweep_runs(ref, exact=True)
            if not ids:
                try:
                    ids = [self.resolve(ref)]
                except RunNotFoundError:
                    ids = self._sweep_runs(ref, exact=False)
                    if not ids:
                        raise RunNotFoundError(
                            f"no run or sweep with id, id prefix or name {ref!r} in {self.path}"
                        ) from None
            out.extend(i for i in ids if i not in out)
        return out

    def _sweep_runs(self, ref: str, *, exact: bool) -> list[str]:
        with self._read() as con:
            if exact:
                rows = con.execute(
                    "SELECT id FROM runs WHERE sweep_id = ? ORDER BY started_at, id", [ref]
                ).fetchall()
                return [r[0] for r in rows]
            sweeps = con.execute(
                "SELECT DISTINCT sweep_id FROM runs WHERE starts_with(sweep_id, ?)", [ref]
            ).fetchall()
        if len(sweeps) > 1:
            raise RunNotFoundError(f"sweep prefix {ref!r} is ambiguous in {self.path}")
        return self._sweep_runs(sweeps[0][0], exact=True) if sweeps else []

    # ------------------------------------------------------------------ queries
    def runs(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        sweep_id: str | None = None,
        experiment: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """All runs (oldest first), optionally filtered; ``config`` and ``summary`` are parsed to dicts.

        With ``limit``, the newest ``limit`` runs (still oldest first).
        """
        where, params = [], []
        for column, value in (
            ("name", name),
            ("status", status),
            ("sweep_id", sweep_id),
            ("experiment", experiment),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if status is not None:
            check_choice("status", status, STATUSES, owner="RunStore.runs")
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, id"
        if limit is not None:
            sql += f" LIMIT {check_int('limit', limit, low=0, owner='RunStore.runs')}"
        with self._read() as con:
            df = con.execute(sql, params).df()
        df = df.iloc[::-1].reset_index(drop=True)
        for column in ("config", "summary"):
            df[column] = [_loads(v) for v in df[column]]
        df["seed"] = df["seed"].astype("Int64")
        return df

    def run_info(self, run: str) -> dict[str, Any]:
        """One run's row as a dict (``config`` and ``summary`` parsed)."""
        run_id = self.resolve(run)
        with self._read() as con:
            df = con.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?", [run_id]).df()
        info = {k: (None if _isna(v) else v) for k, v in df.iloc[0].to_dict().items()}
        info["config"] = _loads(info["config"])
        info["summary"] = _loads(info["summary"])
        if info["seed"] is not None:
            info["seed"] = int(info["seed"])
        if info["pid"] is not None:
            info["pid"] = int(info["pid"])
        return info

    def metrics(self, run: str, names: str | Iterable[str] | None = None) -> pd.DataFrame:
        """Scalar metrics of ``run`` as a DataFrame ``[step, name, value]`` sorted by name then step.

        ``names``: metric names to keep; an entry with ``*`` or ``?`` is a glob (``"noise/*"``).
        """
        run_id = self.resolve(run)
        sql = "SELECT step, name, value FROM metrics WHERE run_id = ?"
        params: list[Any] = [run_id]
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            if not names:
                return pd.DataFrame(
                    {
                        "step": pd.Series(dtype="int64"),
                        "name": pd.Series(dtype=object),
                        "value": pd.Series(dtype=float),
                    }
                )
            clauses = []
            for n in names:
                clauses.append("name GLOB ?" if ("*" in n or "?" in n) else "name = ?")
                params.append(n)
            sql += " AND (" + " OR ".join(clauses) + ")"
        sql += " ORDER BY name, step"
        with self._read() as con:
            return con.execute(sql, params).df()

    def metric_names(self, run: str) -> list[str]:
        """Names of the scalar metrics ``run`` logged, sorted."""
        run_id = self.resolve(run)
        with self._read() as con:
            rows = con.execute(
                "SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name", [run_id]
            ).fetchall()
        return [r[0] for r in rows]

    def last_metrics(self, run: str) -> pd.DataFrame:
        """Per metric of ``run``: ``[name, step, value, count]`` at its largest step (the final value)."""
        run_id = self.resolve(run)
        with self._read() as con:
            return con.execute(
                "SELECT name, arg_max(step, step) AS step, arg_max(value, step) AS value, count(*) AS count "
                "FROM metrics WHERE run_id = ? GROUP BY name ORDER BY name",
                [run_id],
            ).df()

    def array_names(self, run: str) -> pd.DataFrame:
        """Array metrics of ``run``: ``[name, count, first_step, last_step, shape]`` (shape of the last)."""
        run_id = self.resolve(run)
        with self._read() as con:
            return con.execute(
                "SELECT name, count(*) AS count, min(step) AS first_step, max(step) AS last_step, "
                "arg_max(shape, step) AS shape FROM arrays WHERE run_id = ? GROUP BY name ORDER BY name",
                [run_id],
            ).df()

    def arrays(self, run: str, name: str) -> pd.DataFrame:
        """The array metric ``name`` of ``run``: a DataFrame ``[step, array]`` (numpy arrays), by step."""
        run_id = self.resolve(run)
        with self._read() as con:
            refs = con.execute(
                "SELECT step, file, key FROM arrays WHERE run_id = ? AND name = ? ORDER BY step, file, key",
                [run_id, name],
            ).fetchall()
        loaded: dict[str, Any] = {}
        steps, values = [], []
        for step, file, key in refs:
            if file not in loaded:
                full = self.arrays_dir / file
                try:
                    with np.load(full, allow_pickle=False) as npz:
                        loaded[file] = {k: npz[k] for k in npz.files}
                except (OSError, ValueError) as exc:
                    raise StoreError(f"run store {self.path}: cannot read array file {full}: {exc}") from None
            steps.append(int(step))
            values.append(loaded[file][key])
        return pd.DataFrame(
            {"step": pd.Series(steps, dtype="int64"), "array": pd.Series(values, dtype=object)}
        )

    def array_stack(self, run: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, stacked)`` for an array metric; ragged 1-d arrays are padded with NaN to the longest."""
        df = self.arrays(run, name)
        steps = df["step"].to_numpy()
        arrays = [np.asarray(a) for a in df["array"]]
        if not arrays:
            return steps, np.empty((0, 0))
        if len({a.shape for a in arrays}) == 1:
            return steps, np.stack(arrays)
        if all(a.ndim == 1 for a in arrays):
            width = max(a.shape[0] for a in arrays)
            out = np.full((len(arrays), width), np.nan)
            for i, a in enumerate(arrays):
                out[i, : a.shape[0]] = a
            return steps, out
        raise StoreError(f"array metric {name!r} has arrays of different shapes; use arrays() instead")

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query against the store's tables (runs, metrics, arrays)."""
        with self._read() as con:
            return con.execute(query, list(params or [])).df()

    # ------------------------------------------------------------------ used by Run
    def _flush(
        self,
        run_id: str,
        rows: list[tuple[int, str, float]],
        array_rows: list[tuple[int, str, str, str, str, str]],
        updates: Mapping[str, Any],
        replace_rows: Sequence[tuple[int, str]] = (),
        replace_arrays: Sequence[tuple[int, str]] = (),
    ) -> None:
        with self._write() as con:
            con.execute("BEGIN")
            for table, keys in (("metrics", replace_rows), ("arrays", replace_arrays)):
                if keys:
                    batch = pa.table(
                        {
                            "step": pa.array([k[0] for k in keys], pa.int64()),
                            "name": pa.array([k[1] for k in keys], pa.string()),
                        }
                    )
                    con.register("_ld_replace", batch)
                    con.execute(
                        f"DELETE FROM {table} WHERE run_id = ? AND (step, name) IN "
                        "(SELECT (step, name) FROM _ld_replace)",
                        [run_id],
                    )
                    con.unregister("_ld_replace")
            if rows:
                table = pa.table(
                    {
                        "run_id": pa.array([run_id] * len(rows), pa.string()),
                        "step": pa.array([r[0] for r in rows], pa.int64()),
                        "name": pa.array([r[1] for r in rows], pa.string()),
                        "value": pa.array([r[2] for r in rows], pa.float64()),
                    }
                )
                con.register("_ld_batch", table)
                con.execute("INSERT INTO metrics SELECT * FROM _ld_batch")
                con.unregister("_ld_batch")
            if array_rows:
                con.executemany(
                    "INSERT INTO arrays VALUES (?, ?, ?, ?, ?, ?, ?)", [[run_id, *r] for r in array_rows]
                )
            sets = dict(updates)
            sets["updated_at"] = _now()
            assignments = ", ".join(f"{k} = ?" for k in sets)
            con.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*sets.values(), run_id])
            con.execute("COMMIT")


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


_OPEN_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()


@atexit.register
def _flush_open_runs() -> None:
    """At interpreter exit, flush runs that were never closed (they stay ``running``)."""
    for run in list(_OPEN_RUNS):
        if run._pid == os.getpid():  # never a parent's buffer from a forked child
            try:
                run.flush()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


class Run:
    """One run in a :class:`RunStore`; a :class:`~learndyn.store.recorder.Recorder` and a context manager.

    Leaving the ``with`` block marks the run ``completed`` (or ``diverged`` after :meth:`mark_diverged`),
    ``interrupted`` on KeyboardInterrupt/SystemExit, ``failed`` with the error on any other exception (which
    propagates). Everything logged is buffered and written in batches; :attr:`last_flushed_step` tells how far
    the durable part goes. A run never closed is flushed (not closed) at interpreter exit. Not thread-safe:
    log to one run from one thread.

    :attr:`checkpointer` is where the run's training loops keep their checkpoints
    (``train_loop(..., checkpointer=getattr(recorder, "checkpointer", None))``); they are deleted when the
    run completes or diverges and kept otherwise, for ``learndyn resume``.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        name: str,
        *,
        flush_every: int = 100,
        flush_seconds: float | None = 10.0,
        checkpoint_every: int | None = None,
    ) -> None:
        self.store = store
        self.id = run_id
        self.name = name
        self.flush_every = check_int("flush_every", flush_every, low=1, owner="Run")
        self.flush_seconds = (
            None
            if flush_seconds is None
            else check_real("flush_seconds", flush_seconds, low=0.0, owner="Run")
        )
        self._rows: list[tuple[int, str, float]] = []
        self._arrays: list[tuple[int, str, np.ndarray]] = []
        self._updates: dict[str, Any] = {}
        self._summary: dict[str, Any] = {}
        self._status = "running"
        self._diverged_reason: str | None = None
        self._steps_since_flush = 0
        self._last_step: int | None = None
        self._max_step: int | None = None
        self._last_flushed_step: int | None = None
        self._last_flush_time = time.monotonic()
        self._file_seq = 0
        self._closed = False
        self._pid = os.getpid()
        self._checkpointer = RunCheckpointer(
            store.arrays_dir / run_id / "checkpoints", every=checkpoint_every
        )  # validates checkpoint_every now, before any training
        # (step)s per name an earlier attempt of this run wrote (see RunStore.reopen_run); rows logged again
        # at those keys replace the old ones
        self._old_rows: dict[str, set[int]] = {}
        self._old_arrays: dict[str, set[int]] = {}
        _OPEN_RUNS.add(self)

    def __repr__(self) -> str:
        return f"Run(id={self.id[:8]!r}, name={self.name!r}, status={self._status!r})"

    @property
    def status(self) -> str:
        return self._status

    @property
    def last_flushed_step(self) -> int | None:
        """The largest step whose rows are durable in the store (None before the first flush)."""
        return self._last_flushed_step

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    @property
    def checkpointer(self) -> RunCheckpointer:
        """The run's checkpoints (``<store>.arrays/<run id>/checkpoints``), for ``train_loop``."""
        return self._checkpointer

    # ------------------------------------------------------------------ Recorder
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer scalar ``metrics`` at ``step``; flushes every ``flush_every`` distinct steps."""
        self._check_open()
        step = self._step(step)
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise LearndynValueError(f"metric name {name!r} is not allowed; allowed: a non-empty string")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise LearndynValueError(
                    f"metric {name}={value!r} at step {step} is not a number; allowed: a real scalar"
                ) from None
            self._rows.append((step, name, number))

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        """Buffer an array-valued metric (a spectrum, a kernel) at ``step``; stored in an ``.npz`` beside."""
        self._check_open()
        step = self._step(step)
        if not isinstance(name, str) or not name:
            raise LearndynValueError(f"array name {name!r} is not allowed; allowed: a non-empty string")
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        arr = np.array(array, copy=True)
        if arr.dtype == object:
            raise LearndynValueError(
                f"array {name!r} at step {step} has dtype object; allowed: numeric arrays"
            )
        self._arrays.append((step, name, arr))

    def flush(self) -> None:
        """Write everything buffered to the store now (one transaction under the store's write lock)."""
        if not (self._rows or self._arrays or self._updates):
            return
        replace_rows = self._replaced(self._old_rows, ((s, n) for s, n, _ in self._rows))
        replace_arrays = self._replaced(self._old_arrays, ((s, n) for s, n, _ in self._arrays))
        array_rows = self._write_array_file() if self._arrays else []
        self.store._flush(self.id, self._rows, array_rows, self._updates, replace_rows, replace_arrays)
        for old, keys in ((self._old_rows, replace_rows), (self._old_arrays, replace_arrays)):
            for step, name in keys:
                old[name].discard(step)
        if self._max_step is not None:
            self._last_flushed_step = self._max_step
        self._rows, self._arrays, self._updates = [], [], {}
        self._steps_since_flush = 0
        self._last_flush_time = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def set_summary(self, summary: Mapping[str, Any]) -> None:
        """Merge ``summary`` (named scalars and short values) into the run's summary and store it now."""
        if not isinstance(summary, Mapping):
            raise LearndynValueError(f"summary={summary!r} is not allowed; allowed: a mapping")
        self._summary.update(_jsonable(dict(summary)))
        self._updates["summary"] = _dumps(self._summary)
        self.flush()

    def mark_diverged(self, reason: str | None = None, *, step: int | None = None) -> None:
        """Mark the run as diverged; it is closed with status ``diverged`` instead of ``completed``.

        ``train_loop`` calls this when a loop diverges. The first call wins: its ``reason`` becomes the run's
        error and ``step`` is stored as ``diverged_at`` in the summary (now, so it survives a crash).
        """
        if self._diverged_reason is not None:
            return
        self._diverged_reason = reason or "diverged"
        if step is not None:
            self.set_summary({"diverged_at": int(step)})

    @property
    def diverged(self) -> bool:
        return self._diverged_reason is not None

    @diverged.setter
    def diverged(self, value: bool) -> None:
        self._diverged_reason = "diverged" if value else None

    def close(self, status: str | None = None, error: str | None = None, tb: str | None = None) -> None:
        """Flush and mark the run finished (``completed``, or ``diverged`` if marked; or ``status``)."""
        if self._closed:
            return
        if status is None:
            status = "diverged" if self.diverged else "completed"
        check_choice("status", status, STATUSES[1:], owner="Run.close")
        if status == "diverged" and error is None:
            error = self._diverged_reason
        self._updates.update({"status": status, "ended_at": _now(), "error": error, "traceback": tb})
        self.flush()
        self._status = status
        self._closed = True
        _OPEN_RUNS.discard(self)
        if status in ("completed", "diverged"):
            self._checkpointer.clear()  # nothing will resume it

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            self.close()
            return False
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            status = "interrupted"
        else:
            status = "failed"
        message = f"{type(exc).__name__}: {_first_line(exc)}" if str(exc) else type(exc).__name__
        trace = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            self.close(status, message, trace)
        except StoreError as store_exc:  # do not mask the original exception
            warnings.warn(f"run {self.id[:8]} could not be marked {status}: {store_exc}", stacklevel=2)
        return False

    # ------------------------------------------------------------------ helpers
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"run {self.id[:8]} ({self.name}) is closed; start a new run to log more")

    def _step(self, step: Any) -> int:
        """Coerce ``step``; when a new step begins, flush first if enough steps or time have passed.

        Flushing before the new step's rows are buffered means an automatic flush never splits a step.
        """
        try:
            step_int = int(step)
        except (TypeError, ValueError):
            raise LearndynValueError(f"step={step!r} is not allowed; allowed: an integer") from None
        if step_int != self._last_step:
            due = self._steps_since_flush >= self.flush_every
            if not due and self.flush_seconds is not None and self._steps_since_flush:
                due = time.monotonic() - self._last_flush_time >= self.flush_seconds
            if due:
                self._auto_flush()
            self._steps_since_flush += 1
            self._last_step = step_int
        if self._max_step is None or step_int > self._max_step:
            self._max_step = step_int
        return step_int

    @staticmethod
    def _replaced(old: dict[str, set[int]], keys: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
        """The (step, name) keys of this batch that an earlier attempt of the run wrote."""
        if not old:
            return []
        out = {(step, name) for step, name in keys if step in old.get(name, ())}
        return sorted(out)

    def _auto_flush(self) -> None:
        """A flush due by step count or time; if the store is busy (lock timeout), keep buffering and retry
        after another ``flush_every`` steps rather than break the training loop (explicit flushes raise)."""
        try:
            self.flush()
        except StoreError as exc:
            warnings.warn(f"run {self.id[:8]}: flush deferred, keeping rows in memory: {exc}", stacklevel=4)
            self._steps_since_flush = 0
            self._last_flush_time = time.monotonic()

    def _write_array_file(self) -> list[tuple[int, str, str, str, str, str]]:
        folder = self.store.arrays_dir / self.id
        folder.mkdir(parents=True, exist_ok=True)
        self._file_seq += 1
        relative = f"{self.id}/{self._file_seq:06d}-{uuid.uuid4().hex[:6]}.npz"
        payload = {f"a{i}": arr for i, (_, _, arr) in enumerate(self._arrays)}
        target = self.store.arrays_dir / relative
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return [
            (step, name, relative, f"a{i}", "x".join(str(d) for d in arr.shape), str(arr.dtype))
            for i, (step, name, arr) in enumerate(self._arrays)
        ]
