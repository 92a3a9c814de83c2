"""The run store: one embedded DuckDB file of runs and scalar metrics, with arrays in a sibling folder.

Layout of a store at ``runs/learndyn.duckdb``::

    runs/learndyn.duckdb        tables schema_version, runs, metrics, arrays (:mod:`learndyn.store.schema`)
    runs/learndyn.duckdb.lock   the cross-process lock file (see :mod:`learndyn.store.lock`)
    runs/learndyn.arrays/       one folder per run, one ``.npz`` per flush; ``arrays`` rows point into them

The store is built from one module per concern:

- :mod:`~learndyn.store.connection`: one short locked DuckDB connection per transaction, so any number of
  processes (sweep workers) can write runs to one store; a writer killed with SIGKILL loses only what it had
  not flushed.
- :mod:`~learndyn.store.schema`: the tables, the schema version, creating and migrating a store.
- :mod:`~learndyn.store.liveness`: whether a run's process is alive; opening the store marks ``interrupted``
  every ``running`` run of this host whose process is gone.
- :mod:`~learndyn.store.queries`: the reads (DataFrames of runs, metrics, arrays).
- :mod:`~learndyn.store.writer` and :mod:`~learndyn.store.run`: starting and continuing runs, a run's
  batched flushes and how it ends, and writing whole finished runs at once.

Crash recovery: :meth:`RunStore.reopen_run` continues an interrupted run under the same id (``learndyn
resume``): rows the continued run logs again replace the rows an earlier attempt wrote at the same (step,
name), so a deterministic experiment that resumes from its checkpoints (``run.checkpointer``) ends with
exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import os
from pathlib import Path

from learndyn.store.errors import RunNotFoundError, StoreError, StoreReadOnlyError
from learndyn.store.liveness import clean_finished_checkpoints, run_process_alive
from learndyn.store.run import Run
from learndyn.store.schema import RESUMABLE, SCHEMA_VERSION, STATUSES, STORE_FORMAT, open_or_create
from learndyn.store.writer import FinishedRun, RunWriting
from learndyn.validation import check_real

__all__ = [
    "DEFAULT_STORE",
    "RESUMABLE",
    "SCHEMA_VERSION",
    "STATUSES",
    "STORE_FORMAT",
    "FinishedRun",
    "Run",
    "RunNotFoundError",
    "RunStore",
    "StoreError",
    "StoreReadOnlyError",
    "default_store_path",
    "run_process_alive",
]

DEFAULT_STORE = "runs/learndyn.duckdb"


def default_store_path() -> Path:
    """``$LEARNDYN_STORE`` if set, else ``runs/learndyn.duckdb`` (relative to the working directory)."""
    return Path(os.environ.get("LEARNDYN_STORE") or DEFAULT_STORE)


class RunStore(RunWriting):
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
        path = Path(path) if path is not None else default_store_path()
        super().__init__(path, check_real("lock_timeout", lock_timeout, low=0.0, owner="RunStore"))
        if self.path.is_dir():
            raise StoreError(f"run store path {self.path} is a directory; expected a .duckdb file")
        if not self.path.exists():
            if not create:
                raise StoreError(f"no run store at {self.path} (pass --store PATH or set LEARNDYN_STORE)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        if open_or_create(self) and recover:
            self.recover_dead_runs()
            clean_finished_checkpoints(self)

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"
