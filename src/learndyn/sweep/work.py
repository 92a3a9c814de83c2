"""Units of sweep work and how a worker runs them: one run, or one ensemble of runs.

A :class:`WorkUnit` is plain data (picklable, cheap to ship to a process or a Ray task): the experiment name,
the sweep id, the store path and one config (``single``) or several (``ensemble``), as dicts. A worker
calls :func:`execute_unit`, which opens the store itself and writes the runs:

- ``single``: exactly like ``learndyn run`` -- ``start_run`` (the run is visible as ``running`` at once;
  or, where the unit names an earlier interrupted/failed run of the config, ``reopen_run`` as ``learndyn
  resume`` does: same id, checkpoints restored, rows logged again replace the old ones), then
  :func:`~learndyn.phenomena.registry.execute`: the experiment's ``run`` logging into it, the summary, then
  ``completed``/``diverged``; an exception marks it ``failed`` (the unit reports it, the worker lives
  on); Ctrl-C/SIGTERM mark it ``interrupted``.
- ``ensemble``: first every member's run is opened ``running`` in one transaction (new ids, or the earlier
  runs the unit names; ``RunStore.start_runs``), so the configs are visibly in progress before training; the
  experiment's ensemble function (its record's ``ensemble``) trains all members in memory; then every member
  is finished in a single store transaction (:func:`write_finished_runs` with the ids; hundreds of runs cost
  two locks and two commits instead of three each). A worker killed mid-ensemble leaves its members
  ``running`` under a dead pid: they become ``interrupted`` and the resume trains the group again under the
  same ids, replacing their rows.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from learndyn.config import config_from_dict
from learndyn.config import seed_of as _seed_of
from learndyn.phenomena import registry
from learndyn.phenomena.registry import MemberOutcome, execute
from learndyn.store.errors import RunTakenError
from learndyn.validation import error_text, exception_line

__all__ = ["RunOutcome", "UnitResult", "WorkUnit", "execute_unit", "write_finished_runs"]


@dataclass(frozen=True)
class WorkUnit:
    """One schedulable piece of a sweep (see the module docstring). ``hashes`` are the configs' hashes."""

    id: int
    kind: str  # "single" | "ensemble"
    experiment: str
    sweep_id: str
    store_path: str
    configs: tuple[dict[str, Any], ...]
    hashes: tuple[str, ...]
    imports: tuple[str, ...] = ()
    threads: int = 1
    run_ids: tuple[str | None, ...] = ()  # per config: an earlier run to continue under its id, or None

    def run_id(self, i: int) -> str | None:
        """The earlier run config ``i`` continues (None: a new run)."""
        return self.run_ids[i] if i < len(self.run_ids) else None

    @property
    def size(self) -> int:
        return len(self.configs)


@dataclass
class RunOutcome:
    """How one run of a unit ended."""

    hash: str
    run_id: str | None
    status: str
    error: str | None = None


@dataclass
class UnitResult:
    """What a worker reports back for a unit."""

    unit_id: int
    outcomes: list[RunOutcome] = field(default_factory=list)
    seconds: float = 0.0
    pid: int = 0
    host: str = ""


def _prepare(unit: WorkUnit) -> Any:
    import torch

    if unit.threads > 0:
        torch.set_num_threads(unit.threads)
    for module in unit.imports:
        importlib.import_module(module)
    return registry.get(unit.experiment)


def execute_unit(unit: WorkUnit) -> UnitResult:
    """Run ``unit`` and write its runs to the store at ``unit.store_path``; never raises for a failing
    experiment (that is a ``failed`` outcome). KeyboardInterrupt (and SIGTERM turned into it) propagates after
    the run is marked ``interrupted``."""
    start = time.perf_counter()
    result = UnitResult(unit.id, pid=os.getpid(), host=socket.gethostname())
    try:
        experiment = _prepare(unit)
        configs = [
            config_from_dict(experiment.config_cls, c, experiment=experiment.name) for c in unit.configs
        ]
        store = _open_store(unit.store_path)
    except Exception as exc:  # noqa: BLE001 - setup failures fail the unit's runs without a store row
        result.outcomes = [RunOutcome(h, None, "failed", exception_line(exc)) for h in unit.hashes]
        result.seconds = time.perf_counter() - start
        return result
    try:
        if unit.kind == "ensemble":
            result.outcomes = _execute_ensemble(unit, experiment, configs, store)
        else:
            single = _execute_single(unit, experiment, configs[0], unit.hashes[0], store, unit.run_id(0))
            result.outcomes = [single]
    except RunTakenError as exc:  # another process continues these runs: not ours to run, nothing written
        message = error_text(exc)
        result.outcomes = [RunOutcome(h, None, "taken elsewhere", message) for h in unit.hashes]
    result.seconds = time.perf_counter() - start
    return result


_STORES: dict[tuple[int, str], Any] = {}


def _open_store(path: str) -> Any:
    """The worker's :class:`~learndyn.store.RunStore` for ``path``, opened once per process (opening checks
    the file and its schema: two store reads a run need not pay again). The sweep's driver has already
    recovered dead runs, so workers open without recovery where the store supports that."""
    import inspect

    from learndyn.store.runstore import RunStore

    key = (os.getpid(), os.path.realpath(path))
    store = _STORES.get(key)
    if store is None or not os.path.exists(path):
        kwargs = {"recover": False} if "recover" in inspect.signature(RunStore).parameters else {}
        store = _STORES[key] = RunStore(path, create=False, **kwargs)
    return store


def _execute_single(
    unit: WorkUnit, experiment: Any, config: Any, h: str, store: Any, run_id: str | None
) -> RunOutcome:
    buffering = {"flush_every": 1000, "flush_seconds": 30.0}
    if run_id is not None:
        run = store.reopen_run(run_id, **buffering)  # as `learndyn resume`: same id, from its checkpoints
    else:
        run = store.start_run(  # refused if another process started this config meanwhile
            experiment.name,
            config,
            seed=_seed_of(config),
            sweep_id=unit.sweep_id,
            one_per_config=True,
            **buffering,
        )
    with run:
        outcome = execute(experiment, config, run)  # a failing run is an outcome, not a worker crash
    if outcome.error is not None:
        return RunOutcome(h, run.id, "failed", outcome.error)
    return RunOutcome(h, run.id, run.status, None)


def _execute_ensemble(unit: WorkUnit, experiment: Any, configs: list[Any], store: Any) -> list[RunOutcome]:
    support = experiment.ensemble
    started = _now()
    ids = store.start_runs(  # visible as running (this pid) before training
        experiment.name,
        configs,
        seeds=[_seed_of(c) for c in configs],
        sweep_id=unit.sweep_id,
        reopen=[unit.run_id(i) for i in range(len(configs))],
        one_per_config=True,
    )
    try:
        if support is None:
            raise RuntimeError(f"experiment {experiment.name!r} registers no ensemble function")
        members = support.run(configs)
        if len(members) != len(configs):
            raise RuntimeError(f"the ensemble returned {len(members)} outcomes for {len(configs)} configs")
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM, the parent died: resumable under these ids
        _interrupt(store, ids)
        raise
    except Exception as exc:  # noqa: BLE001 - the whole group failed; record every member as failed
        message = exception_line(exc)
        tb = "".join(traceback.format_exception(exc))
        members = [MemberOutcome("failed", error=message, summary={}) for _ in configs]
        for m in members:
            m.series = {}
        write_finished_runs(store, experiment.name, unit.sweep_id, configs, members, started, tb=tb, ids=ids)
        return [RunOutcome(h, i, "failed", message) for h, i in zip(unit.hashes, ids, strict=True)]
    write_finished_runs(store, experiment.name, unit.sweep_id, configs, members, started, ids=ids)
    return [
        RunOutcome(h, i, m.status, m.error if m.status == "failed" else None)
        for h, i, m in zip(unit.hashes, ids, members, strict=True)
    ]


def _interrupt(store: Any, ids: Sequence[str]) -> None:
    """Mark an ensemble's opened runs ``interrupted`` (best effort: a dead pid is recovered anyway)."""
    from learndyn.store.runstore import Run

    for run_id in ids:
        try:
            Run(store, run_id, "sweep").close("interrupted", "interrupted: the ensemble was stopped")
        except Exception:  # noqa: BLE001,S112 - the store's crash recovery marks them once this process is gone
            continue


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def write_finished_runs(
    store: Any,
    experiment: str,
    sweep_id: str,
    configs: Sequence[Any],
    members: Sequence[Any],
    started_at: datetime,
    *,
    tb: str | None = None,
    ids: Sequence[str] | None = None,
) -> list[str]:
    """Write finished runs (one per member: status, summary, scalar series) in one store transaction.

    ``members`` are :class:`~learndyn.phenomena.registry.MemberOutcome`. The rows are the ones
    ``RunStore.start_run`` + logging + ``close`` would write (``RunStore.write_finished_runs``). Returns
    the run ids in order: new ones, or ``ids`` (runs opened with ``RunStore.start_runs``), finished in place.
    """
    from learndyn.store import FinishedRun

    runs = [
        FinishedRun(
            name=experiment,
            experiment=experiment,
            config=config,
            status=m.status,
            started_at=started_at,
            summary=m.summary,
            series=m.series,
            error=m.error if m.status in ("failed", "diverged") else None,
            traceback=tb if m.status == "failed" else None,
            seed=_seed_of(config),
            sweep_id=sweep_id,
        )
        for config, m in zip(configs, members, strict=True)
    ]
    if ids is None:
        return store.write_finished_runs(runs)
    return store.write_finished_runs(runs, ids=ids)
