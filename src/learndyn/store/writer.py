"""Writing the run store: opening a run, continuing one, each flush of a run's buffer, whole finished runs.

Every write is one transaction under the store's exclusive lock (see :mod:`learndyn.store.connection`). A
:class:`~learndyn.store.run.Run` buffers what it logs and calls :meth:`RunWriting._flush` in batches;
:meth:`RunWriting.write_finished_runs` writes runs trained elsewhere (an ensemble's members) all at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from learndyn import __version__
from learndyn.checkpoint import RunCheckpointer, default_checkpoint_every
from learndyn.store.encoding import check_seed, dumps, finite_dumps, loads, now
from learndyn.store.errors import RunTakenError, StoreError
from learndyn.store.liveness import checkpoint_dir, recover_dead_runs
from learndyn.store.queries import RunQueries
from learndyn.store.run import Run
from learndyn.store.schema import FINISHED, RESUMABLE, STATUSES
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

_INSERT_RUN = (
    "INSERT INTO runs (id, name, experiment, status, config, summary, error, traceback, started_at, "
    "ended_at, updated_at, git_commit, seed, sweep_id, host, pid, learndyn_version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@lru_cache(maxsize=1)
def source_commit() -> str | None:
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


@dataclass
class FinishedRun:
    """A run trained outside the store (e.g. one member of a vmap ensemble), for
    :meth:`RunWriting.write_finished_runs`.

    ``config``: a dataclass or mapping, stored as JSON (as by ``start_run``). ``series``: scalar metrics as
    ``{name: (steps, values)}`` (sequences or arrays of equal length). ``experiment`` defaults to ``name``;
    ``ended_at`` to the time of the write.
    """

    name: str
    config: Any
    status: str
    started_at: datetime
    ended_at: datetime | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)
    series: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    seed: int | None = None
    sweep_id: str | None = None
    experiment: str | None = None


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise LearndynValueError(f"name={name!r} is not allowed; allowed: a non-empty string")
    return name


def _config_json(config: Any) -> str:
    from learndyn.config import config_to_dict

    return finite_dumps(config_to_dict(config), "config")


class RunWriting(RunQueries):
    """The write side of :class:`~learndyn.store.RunStore` (on top of its queries)."""

    def recover_dead_runs(self) -> list[str]:
        """Mark ``interrupted`` every ``running`` run of this host whose process is gone; return their ids.

        A process killed with SIGKILL (or a machine that lost power) cannot mark its run; this does, the next
        time anyone opens the store (``learndyn list`` included). Runs of other hosts are left alone.
        """
        return recover_dead_runs(self)

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
        one_per_config: bool = False,
    ) -> Run:
        """Open a new run (status ``running``, visible at once) and return it as a :class:`Run` recorder.

        ``config``: a dataclass or mapping, stored as JSON. ``experiment`` defaults to ``name`` and selects
        the report's experiment-specific figures. ``flush_every``: flush after this many distinct steps;
        ``flush_seconds``: also flush when a new step comes this long after the last flush (None: never).
        ``git_commit`` defaults to the learndyn source tree's commit (``+dirty`` when modified).
        ``checkpoint_every``: updates between the checkpoints of ``run.checkpointer`` (default
        ``$LEARNDYN_CHECKPOINT_EVERY``, else 100; 0: none). ``one_per_config`` (sweeps): refuse with
        :class:`RunTakenError`, writing nothing, when ``sweep_id`` already holds a run of this config (checked
        in the transaction that inserts it, so two processes never both start one config).
        """
        _check_name(name)
        seed = check_seed(seed, "start_run")
        check_int("flush_every", flush_every, low=1, owner="start_run")  # checked before the run exists
        if flush_seconds is not None:
            check_real("flush_seconds", flush_seconds, low=0.0, owner="start_run")
        if checkpoint_every is None:
            checkpoint_every = default_checkpoint_every()  # a bad $LEARNDYN_CHECKPOINT_EVERY fails here
        check_int("checkpoint_every", checkpoint_every, low=0, owner="start_run")
        buffering = {
            "flush_every": flush_every,
            "flush_seconds": flush_seconds,
            "checkpoint_every": checkpoint_every,
        }
        run_id = uuid.uuid4().hex
        config_json = _config_json(config)
        now_ = now()
        with self._write() as con:
            if one_per_config:
                _refuse_taken(con, sweep_id, [config_json])
            con.execute(
                "INSERT INTO runs (id, name, experiment, status, config, summary, started_at, updated_at, "
                "git_commit, seed, sweep_id, host, pid, learndyn_version) "
                "VALUES (?, ?, ?, 'running', ?, '{}', ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    name,
                    experiment or name,
                    config_json,
                    now_,
                    now_,
                    git_commit or source_commit(),
                    seed,
                    sweep_id,
                    socket.gethostname(),
                    os.getpid(),
                    __version__,
                ],
            )
        return Run(self, run_id, name, **buffering)

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
        buffering = {
            "flush_every": flush_every,
            "flush_seconds": flush_seconds,
            "checkpoint_every": checkpoint_every,
        }
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
                raise RunTakenError(
                    f"run {run_id[:8]} ({name}) is {status}{where}; allowed to resume: "
                    + ", ".join(RESUMABLE)
                )
            con.execute(
                "UPDATE runs SET status = 'running', ended_at = NULL, error = NULL, traceback = NULL, "
                "host = ?, pid = ?, updated_at = ? WHERE id = ?",
                [host, pid, now(), run_id],
            )
            metric_keys = con.execute(
                "SELECT name, list(DISTINCT step) FROM metrics WHERE run_id = ? GROUP BY name", [run_id]
            ).fetchall()
            array_keys = con.execute(
                "SELECT name, list(DISTINCT step) FROM arrays WHERE run_id = ? GROUP BY name", [run_id]
            ).fetchall()
        run = Run(self, run_id, name, **buffering)
        run._summary = dict(loads(summary) or {})
        run._old_rows = {n: set(steps) for n, steps in metric_keys}
        run._old_arrays = {n: set(steps) for n, steps in array_keys}
        return run

    def start_runs(
        self,
        name: str,
        configs: Sequence[Any],
        *,
        seeds: Sequence[int | None] | None = None,
        sweep_id: str | None = None,
        experiment: str | None = None,
        reopen: Sequence[str | None] | None = None,
        one_per_config: bool = False,
    ) -> list[str]:
        """Open one run per config, all ``running`` in this process, in one transaction; return their ids.

        For a sweep's ensemble: its members are visible as ``running`` (with this host and pid) before it
        trains, and :meth:`write_finished_runs` with ``ids`` finishes them. Where ``reopen[i]`` names a run,
        that ``interrupted`` or ``failed`` run is continued under its id instead of a new one; if it is not
        resumable any more (another process took it, or it finished) nothing is written (RunTakenError);
        so too with ``one_per_config`` when ``sweep_id`` already holds a run of a config to start anew.
        """
        _check_name(name)
        seeds = list(seeds) if seeds is not None else [None] * len(configs)
        reopen = list(reopen) if reopen is not None else [None] * len(configs)
        if not len(seeds) == len(reopen) == len(configs):
            raise LearndynValueError(
                f"start_runs got {len(configs)} configs, {len(seeds)} seeds and {len(reopen)} reopen ids; "
                "allowed: equal lengths"
            )
        seeds = [check_seed(s, "start_runs") for s in seeds]
        jsons = [_config_json(c) for c in configs]
        host, pid, now_, commit = socket.gethostname(), os.getpid(), now(), source_commit()
        ids = [r or uuid.uuid4().hex for r in reopen]
        fresh = [
            [i, name, experiment or name, j, now_, now_, commit, s, sweep_id, host, pid, __version__]
            for i, j, s, r in zip(ids, jsons, seeds, reopen, strict=True)
            if r is None
        ]
        if not ids:
            return []
        with self._write() as con:
            con.execute("BEGIN")
            for run_id in (r for r in reopen if r is not None):
                taken = con.execute(
                    "UPDATE runs SET status = 'running', ended_at = NULL, error = NULL, traceback = NULL, "
                    "host = ?, pid = ?, updated_at = ? "
                    "WHERE id = ? AND list_contains(?, status) RETURNING id",
                    [host, pid, now_, run_id, list(RESUMABLE)],
                ).fetchall()
                if not taken:
                    con.execute("ROLLBACK")
                    raise RunTakenError(
                        f"run {run_id[:8]} cannot be continued: it is not one of {', '.join(RESUMABLE)} "
                        "any more (another process took it, or it finished)"
                    )
            if fresh and one_per_config:
                try:
                    _refuse_taken(con, sweep_id, [row[3] for row in fresh])
                except RunTakenError:
                    con.execute("ROLLBACK")
                    raise
            if fresh:
                con.executemany(
                    "INSERT INTO runs (id, name, experiment, status, config, summary, started_at, "
                    "updated_at, git_commit, seed, sweep_id, host, pid, learndyn_version) "
                    "VALUES (?, ?, ?, 'running', ?, '{}', ?, ?, ?, ?, ?, ?, ?, ?)",
                    fresh,
                )
            con.execute("COMMIT")
        return ids

    def write_finished_runs(
        self, runs: Iterable[FinishedRun], *, ids: Sequence[str] | None = None
    ) -> list[str]:
        """Write whole finished runs (row, summary, scalar series) in one transaction; return their ids.

        The rows are the ones :meth:`start_run`, logging and ``close`` would write (same columns and JSON
        encodings); hundreds of runs cost one lock and one commit instead of three each. Everything is
        checked before anything is written: all the runs are stored, or none. With ``ids`` (runs this process
        opened with :meth:`start_runs`), those rows are finished instead of new ones written: their earlier
        metrics and arrays rows are replaced; a row no longer ``running`` in this process is refused
        (StoreError, nothing written).
        """
        runs = list(runs)
        for r in runs:
            if not isinstance(r, FinishedRun):
                raise LearndynValueError(f"runs entry {r!r} is not allowed; allowed: FinishedRun")
        if ids is not None and len(ids) != len(runs):
            raise LearndynValueError(f"write_finished_runs got {len(ids)} ids for {len(runs)} runs")
        ended = now()
        commit = source_commit()
        host, pid = socket.gethostname(), os.getpid()
        existing = list(ids) if ids is not None else None
        ids = existing if existing is not None else [uuid.uuid4().hex for _ in runs]
        run_rows = []
        run_col: list[str] = []
        name_col: list[str] = []
        step_col: list[np.ndarray] = []
        value_col: list[np.ndarray] = []
        for run_id, r in zip(ids, runs, strict=True):
            _check_name(r.name)
            check_choice("status", r.status, STATUSES[1:], owner="FinishedRun")
            end = r.ended_at or ended
            run_rows.append(
                [
                    run_id,
                    r.name,
                    r.experiment or r.name,
                    r.status,
                    _config_json(r.config),
                    dumps(dict(r.summary)),
                    r.error,
                    r.traceback,
                    r.started_at,
                    end,
                    end,
                    commit,
                    check_seed(r.seed, "FinishedRun"),
                    r.sweep_id,
                    host,
                    pid,
                    __version__,
                ]
            )
            for metric, (steps, values) in r.series.items():
                steps_arr = np.asarray(steps, dtype=np.int64).reshape(-1)
                values_arr = np.asarray(values, dtype=np.float64).reshape(-1)
                if steps_arr.shape != values_arr.shape:
                    raise LearndynValueError(
                        f"FinishedRun.series[{metric!r}] has {steps_arr.size} steps and "
                        f"{values_arr.size} values; allowed: equal lengths"
                    )
                run_col.extend([run_id] * steps_arr.size)
                name_col.extend([metric] * steps_arr.size)
                step_col.append(steps_arr)
                value_col.append(values_arr)
        metrics = pa.table(
            {
                "run_id": pa.array(run_col, pa.string()),
                "step": pa.array(np.concatenate(step_col) if step_col else np.empty(0, np.int64), pa.int64()),
                "name": pa.array(name_col, pa.string()),
                "value": pa.array(np.concatenate(value_col) if value_col else np.empty(0), pa.float64()),
            }
        )
        if not runs:
            return []
        with self._write() as con:
            con.execute("BEGIN")
            if existing is None:
                con.executemany(_INSERT_RUN, run_rows)
            else:
                _finish_claimed(con, run_rows, host, pid)
            if metrics.num_rows:
                con.register("_ld_finished_batch", metrics)
                con.execute(
                    "INSERT INTO metrics (run_id, step, name, value) SELECT run_id, step, name, value "
                    "FROM _ld_finished_batch"
                )
                con.unregister("_ld_finished_batch")
            con.execute("COMMIT")
        if existing is not None:
            for run_id, r in zip(ids, runs, strict=True):
                _drop_array_files(self.arrays_dir / run_id)  # an earlier attempt's; their rows went above
                if r.status in FINISHED:  # a continued run's checkpoints: nothing will resume it
                    RunCheckpointer(checkpoint_dir(self, run_id)).clear()
        return ids

    def _flush(
        self,
        run_id: str,
        rows: list[tuple[int, str, float]],
        array_rows: list[tuple[int, str, str, str, str, str]],
        updates: Mapping[str, Any],
        replace_rows: Sequence[tuple[int, str]] = (),
        replace_arrays: Sequence[tuple[int, str]] = (),
    ) -> None:
        """One flush of a Run's buffer: delete the rows it replaces, insert its own, update its row."""
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
            sets["updated_at"] = now()
            assignments = ", ".join(f"{k} = ?" for k in sets)
            con.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*sets.values(), run_id])
            con.execute("COMMIT")


def _finish_claimed(con: Any, run_rows: list[list[Any]], host: str, pid: int) -> None:
    """Finish rows :meth:`RunWriting.start_runs` opened (``run_rows`` as for ``_INSERT_RUN``): replace their
    metrics and arrays and set their outcome; roll back and refuse if one is not ``running`` here any more."""
    ids = [row[0] for row in run_rows]
    for table in ("metrics", "arrays"):
        con.execute(f"DELETE FROM {table} WHERE list_contains(?, run_id)", [ids])
    for row in run_rows:
        (run_id, _, _, status, _, summary, error, tb, _, ended, updated, commit, *_rest) = row
        done = con.execute(
            "UPDATE runs SET status = ?, summary = ?, error = ?, traceback = ?, ended_at = ?, "
            "updated_at = ?, git_commit = ? "
            "WHERE id = ? AND status = 'running' AND host = ? AND pid = ? RETURNING id",
            [status, summary, error, tb, ended, updated, commit, run_id, host, pid],
        ).fetchall()
        if not done:
            con.execute("ROLLBACK")
            raise StoreError(f"run {run_id[:8]} is not running in this process any more; nothing was written")


def _refuse_taken(con: Any, sweep_id: str | None, config_jsons: list[str]) -> None:
    """Raise :class:`RunTakenError` if sweep ``sweep_id`` already holds a run of one of these configs."""
    found = con.execute(
        "SELECT id, status FROM runs "
        "WHERE sweep_id IS NOT DISTINCT FROM ? AND list_contains(?, config) LIMIT 1",
        [sweep_id, config_jsons],
    ).fetchone()
    if found is not None:
        raise RunTakenError(
            f"sweep {sweep_id} already holds run {found[0][:8]} ({found[1]}) of this config; "
            "allowed: one run per config (a re-run of the sweep continues it)"
        )


def _drop_array_files(folder: Path) -> None:
    """Delete the ``.npz`` array files in a run's folder (best effort: a leftover file is only disk space)."""
    try:
        for f in folder.glob("*.npz"):
            f.unlink(missing_ok=True)
    except OSError:
        pass
