"""Running a sweep into the store, resumably: plan → compare with the store → group → execute → reconcile.

:func:`run_sweep` expands the spec (:class:`~learndyn.sweep.spec.SweepSpec`), reads the runs the store
already holds under the sweep id and matches them to the plan by config hash
(:func:`~learndyn.sweep.spec.config_hash`):

- a config with a ``completed`` or ``diverged`` run is **done** and skipped;
- a config whose runs all ``failed`` or were ``interrupted`` (or that has none) is **run** (again): its
  latest such run is continued under its own id (as ``learndyn resume`` does: a single run restores its
  checkpoints, an ensemble member is trained again and its rows replaced): a config never gets a second row;
- a config with a ``running`` run is **in progress** when that run's process is alive (same host) and left
  alone; a ``running`` run whose process is gone (a killed worker, a crashed machine) is marked
  ``interrupted`` and its config run again. Runs on another host cannot be checked and count as in
  progress, unless ``rerun_running=True``.

So re-running a sweep is idempotent: it runs exactly what is missing. The configs to run are grouped into
work units -- vectorised ensembles where the experiment supports them (its
:class:`~learndyn.phenomena.registry.EnsembleSupport`) and the configs differ only in its ensemble axes,
single runs otherwise -- and handed to an executor (:mod:`learndyn.sweep.executors`). A unit whose worker
dies is reported lost; its ``running`` rows are marked ``interrupted`` so that the next resume reruns exactly
them.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from learndyn.phenomena import registry
from learndyn.progress import progress_bar
from learndyn.store.runstore import RESUMABLE, run_process_alive
from learndyn.sweep.executors import Executor, SerialExecutor, make_executor
from learndyn.sweep.spec import SweepPlan, SweepPoint, SweepSpec, SweepSpecError, config_hash, ensemble_key
from learndyn.sweep.work import UnitResult, WorkUnit
from learndyn.validation import check_int

__all__ = ["SweepResult", "SweepState", "plan_units", "run_sweep", "sweep_state"]

DONE = ("completed", "diverged")


@dataclass
class SweepState:
    """How a plan stands against the store: which configs are done, in progress, or to run."""

    plan: SweepPlan
    done: list[SweepPoint] = field(default_factory=list)
    in_progress: list[SweepPoint] = field(default_factory=list)
    to_run: list[SweepPoint] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # ids of 'running' runs whose process is gone
    previous_failures: int = 0  # configs in to_run that already have failed/interrupted runs
    resume: dict[str, str] = field(default_factory=dict)  # config hash -> the run to continue under its id


@dataclass
class SweepResult:
    """What :func:`run_sweep` did. ``counts``: outcomes of the runs it ran, by status (``lost``: a worker
    died before writing anything; ``taken elsewhere``: another process started or continued the config
    between the plan and the unit, so this sweep left it alone)."""

    sweep_id: str
    experiment: str
    total: int
    skipped: int
    in_progress: int
    counts: dict[str, int]
    run_ids: list[str]
    units: int
    ensembles: int
    executor: str
    workers: int
    seconds: float
    marked_interrupted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """No run failed, was interrupted or lost."""
        return not any(self.counts.get(s) for s in ("failed", "interrupted", "lost"))


# --------------------------------------------------------------------------------------------- state
def sweep_state(store: Any, plan: SweepPlan, *, rerun_running: bool = False, mark: bool = True) -> SweepState:
    """Match ``plan`` against the store's runs of ``plan.sweep_id`` (see the module docstring).

    With ``mark`` (default), ``running`` runs whose process is gone are marked ``interrupted`` in the store.
    """
    state = SweepState(plan)
    recover = getattr(store, "recover_dead_runs", None)
    if mark and recover is not None:
        recover()  # this host's 'running' runs whose process is gone become 'interrupted'
    df = store.runs(sweep_id=plan.sweep_id)
    by_hash: dict[str, list[dict[str, Any]]] = {}
    for row in df.to_dict("records"):
        by_hash.setdefault(config_hash(row["config"]), []).append(row)
    for point in plan.points:
        rows = by_hash.get(point.hash, [])
        statuses = [r["status"] for r in rows]
        if any(s in DONE for s in statuses):
            state.done.append(point)
            continue
        running = [r for r in rows if r["status"] == "running"]
        live = False
        for r in running:
            alive = run_process_alive(r.get("host"), r.get("pid"))
            if alive or (alive is None and not rerun_running):
                live = True
            else:
                state.stale.append(r["id"])
        if live:
            state.in_progress.append(point)
            continue
        if rows:
            state.previous_failures += 1
            resumable = [r for r in rows if r["status"] in RESUMABLE and r["id"] not in state.stale]
            resumable += [r for r in rows if r["id"] in state.stale]  # marked interrupted just below
            if resumable:
                latest = max(resumable, key=lambda r: (str(r.get("started_at")), r["id"]))
                state.resume[point.hash] = latest["id"]
        state.to_run.append(point)
    if mark and state.stale:
        _mark_interrupted(store, state.stale, "the process running it is gone (found by sweep resume)")
    return state


def _mark_interrupted(store: Any, run_ids: Sequence[str], reason: str) -> None:
    from learndyn.store.runstore import Run

    for run_id in run_ids:
        run = Run(store, run_id, "sweep")
        run.close("interrupted", f"interrupted: {reason}")


# ------------------------------------------------------------------------------------------- units
def plan_units(
    plan: SweepPlan,
    points: Sequence[SweepPoint],
    *,
    store_path: str,
    ensemble: bool | str = "auto",
    ensemble_size: int = 256,
    workers: int = 1,
    threads: int = 1,
    imports: Sequence[str] = (),
    resume: dict[str, str] | None = None,
) -> list[WorkUnit]:
    """Group ``points`` into work units: ensembles of configs that differ only in the experiment's ensemble
    axes (chunks of at most ``ensemble_size``, split so that ``workers`` share a group), single runs
    otherwise. ``ensemble``: ``"auto"`` (where supported), ``True`` (required) or ``False``. ``resume``:
    config hash -> the id of an earlier run of that config to continue (:attr:`SweepState.resume`)."""
    resume = resume or {}
    check_int("ensemble_size", ensemble_size, low=1, owner="sweep")
    support = registry.ensemble_support(plan.experiment) if ensemble else None
    if ensemble is True and support is None:
        raise SweepSpecError(f"experiment {plan.experiment!r} cannot train ensembles; use --no-ensemble")
    units: list[WorkUnit] = []

    def add(kind: str, group: Sequence[SweepPoint]) -> None:
        units.append(
            WorkUnit(
                id=len(units),
                kind=kind,
                experiment=plan.experiment,
                sweep_id=plan.sweep_id,
                store_path=store_path,
                configs=tuple(p.config_dict for p in group),
                hashes=tuple(p.hash for p in group),
                run_ids=tuple(resume.get(p.hash) for p in group),
                imports=tuple(imports),
                threads=threads,
            )
        )

    if support is None:
        for p in points:
            add("single", [p])
        return units
    groups: dict[str, list[SweepPoint]] = {}
    for p in points:
        groups.setdefault(ensemble_key(p.config, support.axes), []).append(p)
    limit = min(ensemble_size, support.max_members)
    for group in groups.values():
        size = min(limit, max(1, math.ceil(len(group) / max(1, workers))))
        for i in range(0, len(group), size):
            chunk = group[i : i + size]
            add("ensemble" if len(chunk) > 1 else "single", chunk)
    return units


def _imports_for(experiment_name: str) -> tuple[str, ...]:
    """Modules a fresh worker must import to know the experiment (for experiments registered outside
    learndyn, e.g. by a user's module)."""
    module = getattr(registry.get(experiment_name).run, "__module__", None)
    if not module or module == "__main__" or module.startswith("learndyn."):
        return ()
    return (module,)


# ---------------------------------------------------------------------------------------------- run
def run_sweep(
    spec: SweepSpec | SweepPlan,
    store: Any,
    *,
    executor: str | Executor = "local",
    workers: int | None = None,
    address: str | None = None,
    ensemble: bool | str = "auto",
    ensemble_size: int = 256,
    threads: int = 1,
    rerun_running: bool = False,
    on_unit: Callable[[WorkUnit, UnitResult | None], None] | None = None,
    progress: str | None = None,
) -> SweepResult:
    """Run every config of ``spec`` that the store does not hold yet; return what happened.

    ``store``: a :class:`~learndyn.store.RunStore`. ``executor``: ``"local"`` (process pool of ``workers``,
    default the available cores), ``"ray"`` (``address`` or a local Ray instance), ``"serial"``, or an
    executor object. ``ensemble``: train groups as vectorised ensembles (``"auto"``: where the experiment
    supports it). ``on_unit(unit, result)`` is called as units finish (``result`` None for a lost unit).
    """
    start = time.perf_counter()
    plan = spec.expand() if isinstance(spec, SweepSpec) else spec
    exe = (
        make_executor(executor, workers=workers, address=address, threads=threads)
        if isinstance(executor, str)
        else executor
    )
    state = sweep_state(store, plan, rerun_running=rerun_running)
    unit_threads = 0 if isinstance(exe, SerialExecutor) else threads
    units = plan_units(
        plan,
        state.to_run,
        store_path=str(store.path),
        ensemble=ensemble,
        ensemble_size=ensemble_size,
        workers=getattr(exe, "workers", 1),
        threads=unit_threads,
        imports=_imports_for(plan.experiment),
        resume=state.resume,
    )
    counts: Counter[str] = Counter()
    run_ids: list[str] = []
    errors: list[str] = []
    interrupted: list[str] = []

    with progress_bar(len(state.to_run), f"sweep {plan.sweep_id}") as advance:

        def on_result(unit: WorkUnit, result: UnitResult) -> None:
            for outcome in result.outcomes:
                counts[outcome.status] += 1
                if outcome.run_id:
                    run_ids.append(outcome.run_id)
                if outcome.error and outcome.status == "failed" and len(errors) < 20:
                    errors.append(outcome.error)
            advance(unit.size)
            if on_unit is not None:
                on_unit(unit, result)

        def on_lost(unit: WorkUnit, reason: str) -> None:
            ids = _running_runs(store, plan.sweep_id, unit.hashes)
            if ids:
                _mark_interrupted(store, ids, reason)
                interrupted.extend(ids)
                run_ids.extend(ids)
            if ids:
                counts["interrupted"] += len(ids)
            if unit.size > len(ids):
                counts["lost"] += unit.size - len(ids)
            if len(errors) < 20:
                errors.append(reason)
            advance(unit.size)
            if on_unit is not None:
                on_unit(unit, None)

        try:
            exe.run(units, on_result, on_lost)
        except KeyboardInterrupt:
            ids = _running_runs(store, plan.sweep_id, [p.hash for p in state.to_run])
            if ids:
                _mark_interrupted(store, ids, "the sweep was interrupted")
            raise

    return SweepResult(
        sweep_id=plan.sweep_id,
        experiment=plan.experiment,
        total=len(plan),
        skipped=len(state.done),
        in_progress=len(state.in_progress),
        counts=dict(counts),
        run_ids=run_ids,
        units=len(units),
        ensembles=sum(u.kind == "ensemble" for u in units),
        executor=exe.name,
        workers=getattr(exe, "workers", 1),
        seconds=time.perf_counter() - start,
        marked_interrupted=state.stale + interrupted,
        errors=errors,
    )


def _running_runs(store: Any, sweep_id: str, hashes: Sequence[str]) -> list[str]:
    """Ids of this sweep's ``running`` runs with one of ``hashes`` (the configs this invocation ran: any
    earlier ``running`` run of them was stale and is already marked)."""
    wanted = set(hashes)
    df = store.runs(sweep_id=sweep_id, status="running")
    out = []
    for row in df.to_dict("records"):
        if config_hash(row["config"]) in wanted:
            out.append(row["id"])
    return out
