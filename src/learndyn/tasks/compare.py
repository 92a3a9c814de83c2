"""Train optimizers on tasks and compare them: the protocol behind the quality benchmark and the experiment.

Protocol (:func:`compare`):

1. For every task and optimizer, pick a learning rate: a fixed one, a built-in default
   (:data:`~learndyn.tasks.learning_rates.DEFAULT_LRS`, tuned once by ``benchmarks/bench_optim_quality.py``)
   or, with ``tune=True``, a grid search on a held-out seed (:data:`TUNE_SEED`, never one of the evaluation
   seeds) -- see :func:`tune_lr`.
2. Train each seed for ``steps`` steps (:func:`train`, with :func:`learndyn.training.train_loop`): minibatches
   from a ``torch.Generator`` seeded with the seed, initial weights from ``task.make_model(seed)``. Every
   ``eval_every`` steps evaluate the full-data loss ``L_t = task.evaluate(model)``. Wall time counts training
   steps only (sampling, forward, backward, optimizer step), not evaluation.
3. Per run: ``steps_to_target = min{t : L_t <= task.target_loss}`` over evaluated steps (resolution
   ``eval_every``), the training wall time up to then, the final loss ``L_T`` and, for a task with
   ``metrics``, its final metrics (:meth:`Task.final_metrics`, e.g. test accuracy). A run whose loss becomes
   non-finite or exceeds ``DIVERGENCE_FACTOR * L_0`` stops and counts as diverged (never reaches the
   target, final loss ``inf``).
4. Across seeds (:meth:`Comparison.rows`): the median of each quantity, a run that never reaches the target
   counting as ``inf`` steps -- so the median is finite only if most seeds reach the target.
5. Ranking (:meth:`Comparison.winners`): by median steps to target, ties and never-reached broken by the
   median final loss. The margin is reported as the ratio ``steps(other) / steps(winner)`` when both reach
   the target, else ``final_loss(other) / final_loss(winner)`` -- both ``> 1`` means the winner is better.

Optimizers are named by a short label (:meth:`learndyn.optim.spec.OptimizerSpec.parse`, the one optimizer
factory): ``sgd``, ``momentum`` (heavy ball, 0.9), ``adam`` (``torch.optim.Adam``), ``adamw`` and
``cgd-<structure>[-a<alpha>][-k<every>]`` for :class:`learndyn.optim.CovariantGD` -- e.g. ``cgd-kron-a0.75``
is the Kronecker-factored metric with ``g = (eps I + S)^0.75``, preconditioner refreshed every 10 steps (the
default for every structure but ``diag``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from learndyn.optim.spec import OptimizerSpec, as_spec
from learndyn.progress import progress_bar
from learndyn.store.recorder import NullRecorder, Recorder
from learndyn.tasks.base import Task, make_generator
from learndyn.tasks.learning_rates import DEFAULT_LRS, FAMILY_LR
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

TUNE_SEED = 1_000_003
"""Seed of the learning-rate search; distinct from the evaluation seeds ``0, 1, 2, ...``."""
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
"""What run times measure: wall-clock seconds, or the training thread's CPU seconds."""
DIVERGENCE_FACTOR = 1e4
"""A run stops as diverged once its full-data loss exceeds this multiple of its initial loss."""


@dataclass
class RunResult:
    """One training run of one optimizer on one task from one seed.

    ``status``: ``ok``, ``diverged``, ``does not fit`` (the optimizer refused the model, e.g. ``full`` over
    its memory budget), ``skipped`` (over ``max_full_params``), ``unsupported`` (another constructor error)
    or ``error`` (``optimizer.step`` raised while the parameters were finite); ``message`` says why.
    ``eval_steps``/``losses``: the full-data loss curve. ``metrics``: the task's final metrics after training
    (:meth:`~learndyn.tasks.base.Task.final_metrics`, not timed; empty for a task without them or a run that
    did not end ``ok``), ``metric_name`` the task's headline key.
    """

    task: str
    optimizer: str
    seed: int
    lr: float
    status: str = "ok"
    message: str = ""
    eval_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))
    steps_done: int = 0
    steps_to_target: int | None = None
    time_to_target: float | None = None
    wall_time: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    metric_name: str | None = None

    @property
    def ran(self) -> bool:
        """Whether training ran (``ok``, ``diverged`` or ``error``: there is a loss curve)."""
        return self.status in ("ok", "diverged", "error")

    @property
    def final_loss(self) -> float:
        """The last evaluated full-data loss; ``inf`` for a diverged or not-run optimizer."""
        if self.status != "ok" or self.losses.size == 0:
            return math.inf
        return float(self.losses[-1])

    @property
    def step_time(self) -> float:
        """Mean training wall time per step (seconds)."""
        return self.wall_time / self.steps_done if self.steps_done else math.nan

    def score(self) -> tuple[float, float]:
        """Sort key, smaller is better: ``(steps to target or inf, final loss)``."""
        reached = math.inf if self.steps_to_target is None else float(self.steps_to_target)
        return reached, self.final_loss


def train(
    task: Task,
    optimizer: str | OptimizerSpec,
    lr: float,
    *,
    seed: int = 0,
    steps: int | None = None,
    eval_every: int | None = None,
    max_full_params: int | None = None,
    clock: str = "wall",
) -> RunResult:
    """Train ``task``'s model with ``optimizer`` at learning rate ``lr`` from ``seed``; see the module doc.

    ``steps`` defaults to ``task.steps``; ``eval_every`` to ``max(1, steps // 100)``. A ``cgd-full`` optimizer
    on a model with more than ``max_full_params`` parameters is skipped without training. ``clock``: what
    the times measure, one of :data:`CLOCKS` -- ``wall`` (``time.perf_counter``) or ``cpu``
    (``time.thread_time``, the training thread's CPU time: with one torch thread it is the work done, and it
    does not grow when other processes load the machine).
    """
    spec = as_spec(optimizer)
    lr = check_real("lr", lr, low=0, low_open=True, owner="train")
    seed = check_int("seed", seed, low=0, owner="train")
    steps = check_int("steps", task.steps if steps is None else steps, low=1, owner="train")
    eval_every = check_int("eval_every", eval_every or max(1, steps // 100), low=1, owner="train")
    now = CLOCKS[check_choice("clock", clock, CLOCKS, owner="train")]
    result = RunResult(task=task.name, optimizer=spec.label, seed=seed, lr=lr, metric_name=task.metric_name)

    model = task.make_model(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    if spec.structure == "full" and max_full_params is not None and n_params > max_full_params:
        result.status = "skipped"
        result.message = f"{n_params} parameters > max_full_params={max_full_params}"
        return result
    try:
        opt = spec.build(params, lr)
    except (ValueError, NotImplementedError, ImportError) as exc:  # ImportError: a peer's package is missing
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        result.status = "does not fit" if "memory" in text.lower() else "unsupported"
        result.message = text
        return result

    curve = _Curve(task, now)
    stepping = _Stepping(opt)
    start = now()
    try:
        loop = train_loop(
            model,
            stepping,  # type: ignore[arg-type]
            task.sample,
            task.loss_fn,
            steps,
            generator=make_generator(seed),
            recorder=curve,
            log_every=steps,
            evaluate=curve.evaluate,
            eval_every=eval_every,
            prefix="",
            progress=False,
            diverged_if=curve.diverged,
        )
    except _StepFailed as failed:  # e.g. an eigendecomposition of a non-finite metric
        finite = all(bool(torch.isfinite(p).all()) for p in params)
        exc = failed.__cause__
        result.status = "diverged" if not finite else "error"
        result.message = f"step {failed.step}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        result.steps_done = failed.step - 1
    else:
        result.steps_done = loop.steps_done
        if loop.status == "diverged":
            result.status = "diverged"
            result.message = "" if curve.stopped else loop.reason or ""
    result.wall_time = now() - start - curve.eval_seconds
    result.eval_steps = np.asarray(curve.steps, dtype=np.int64)
    result.losses = np.asarray(curve.losses, dtype=float)
    for step, value, stamp in zip(curve.steps, curve.losses, curve.times, strict=True):
        if value <= task.target_loss:  # training time to the first evaluation at or below the target
            result.steps_to_target, result.time_to_target = step, (stamp - start if step else 0.0)
            break
    if result.status == "ok":
        result.metrics = task.final_metrics(model)
    return result


class _Curve(NullRecorder):
    """The full-data loss ``L_t = task.evaluate(model)`` at the loop's evaluations (the loop's recorder: it
    keeps the steps), when in training time each was taken, and the divergence rule: ``L_t`` non-finite or
    ``> DIVERGENCE_FACTOR · L_0``."""

    def __init__(self, task: Task, now: Callable[[], float]) -> None:
        self.task, self.now = task, now
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.times: list[float] = []  # the clock at each evaluation, less the evaluations before it
        self.eval_seconds = 0.0
        self.stopped = False

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        begin = self.now()
        value = self.task.evaluate(model)
        self.losses.append(value)
        self.times.append(begin - self.eval_seconds)
        self.eval_seconds += self.now() - begin
        return {"full_loss": value}

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if "full_loss" in metrics:
            self.steps.append(int(step))

    def diverged(self, metrics: Mapping[str, float]) -> str | None:
        value, limit = metrics["full_loss"], DIVERGENCE_FACTOR * max(abs(self.losses[0]), 1e-12)
        self.stopped = not math.isfinite(value) or value > limit
        return f"full-data loss {value:.3g} is over {DIVERGENCE_FACTOR:g} x L_0" if self.stopped else None


class _StepFailed(Exception):
    """``optimizer.step()`` raised at update ``step`` (1-based); the cause is the original exception."""

    def __init__(self, step: int) -> None:
        super().__init__(f"optimizer step {step} failed")
        self.step = step


class _Stepping:
    """The optimizer as :func:`~learndyn.training.train_loop` drives it, reporting which update raised."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.updates = optimizer, 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        try:
            self.optimizer.step()
        except (RuntimeError, ValueError) as exc:
            raise _StepFailed(self.updates + 1) from exc
        self.updates += 1


def lr_search_grid(center: float = 1e-2, decades: int = 2) -> list[float]:
    """The coarse grid ``center * 10^k`` for ``k = -decades .. decades``."""
    return [center * 10.0**k for k in range(-decades, decades + 1)]


def tune_lr(
    task: Task,
    optimizer: str | OptimizerSpec,
    *,
    grid: Sequence[float] | None = None,
    seed: int = TUNE_SEED,
    steps: int | None = None,
    eval_every: int | None = None,
    max_full_params: int | None = None,
    on_run: Callable[[], None] | None = None,
    clock: str = "wall",
    tried: Sequence[RunResult] = (),
) -> tuple[float, list[RunResult]]:
    """Best learning rate of ``optimizer`` on ``task`` by :meth:`RunResult.score` from one (held-out) seed.

    With an explicit ``grid`` every value is tried once. Without, the search is adaptive: decades
    ``1e-4 ... 1``, extended by one decade at a time (down to ``1e-6``, up to ``10``) while the best value
    lies on the edge, then refined with the two half-decade neighbours ``best * 10^(+-1/2)``.
    ``tried``: runs of this optimizer on this task and seed made before (e.g. on part of a grid since
    widened), reused instead of run again. Returns ``(best lr, all tuning runs)`` (``tried`` among them); if
    the optimizer cannot run, ``(nan, [that run])``.
    """
    spec = as_spec(optimizer)
    runs: dict[float, RunResult] = {float(f"{r.lr:.3g}"): r for r in tried}

    def attempt(lr: float) -> RunResult:
        lr = float(f"{lr:.3g}")
        if lr not in runs:
            runs[lr] = train(
                task,
                spec,
                lr,
                seed=seed,
                steps=steps,
                eval_every=eval_every,
                max_full_params=max_full_params,
                clock=clock,
            )
            if on_run is not None:
                on_run()
        return runs[lr]

    def best() -> float:
        return min(runs, key=lambda lr: (runs[lr].score(), lr))

    first = attempt(grid[0] if grid else 1e-2)
    if not first.ran:
        return math.nan, [first]
    if grid:
        for lr in grid[1:]:
            attempt(lr)
        return best(), list(runs.values())
    for lr in lr_search_grid(1e-2, 2):
        attempt(lr)
    while True:
        lr = best()
        low, high = min(runs), max(runs)
        if lr == low and low > 1.5e-6:
            attempt(low / 10)
        elif lr == high and high < 5:
            attempt(high * 10)
        else:
            break
    lr = best()
    for factor in (10**-0.5, 10**0.5):
        attempt(lr * factor)
    return best(), sorted(runs.values(), key=lambda r: r.lr)


def default_lr(task: Task, optimizer: str | OptimizerSpec) -> float:
    """The tuned default from :data:`DEFAULT_LRS`, else the family fallback :data:`FAMILY_LR`.

    A ``cgd`` label is also looked up in its canonical form ``cgd-<structure>-a<alpha>`` (so ``cgd-kron``
    finds ``cgd-kron-a0.5``) when its ``precondition_every`` is the default.
    """
    spec = as_spec(optimizer)
    keys = [spec.label]
    if spec.family == "cgd":
        canonical = OptimizerSpec.parse(f"cgd-{spec.structure}-a{spec.alpha:g}")
        if canonical.precondition_every == spec.precondition_every:
            keys.append(canonical.label)
    for key in keys:
        if (task.name, key) in DEFAULT_LRS:
            return DEFAULT_LRS[(task.name, key)]
    return FAMILY_LR[spec.family]


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float))) if len(values) else math.nan


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class Comparison:
    """Everything :func:`compare` measured: evaluation runs, tuning runs and the learning rates used."""

    runs: list[RunResult]
    tuning: list[RunResult]
    lrs: dict[tuple[str, str], float]
    targets: dict[str, float]
    tuned: bool

    def runs_of(self, task: str, optimizer: str) -> list[RunResult]:
        return [r for r in self.runs if r.task == task and r.optimizer == optimizer]

    def pairs(self) -> list[tuple[str, str]]:
        """``(task, optimizer)`` in the order they were run."""
        return list(dict.fromkeys((r.task, r.optimizer) for r in self.runs))

    def curve(self, task: str, optimizer: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, median full-data loss across seeds)``; a seed that stopped early counts as ``inf``."""
        runs = [r for r in self.runs_of(task, optimizer) if r.ran]
        if not runs:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        longest = max(runs, key=lambda r: r.eval_steps.size)
        steps = longest.eval_steps
        stack = np.full((len(runs), steps.size), np.inf)
        for i, r in enumerate(runs):
            stack[i, : r.losses.size] = r.losses
        return steps, np.median(stack, axis=0)

    def rows(self) -> list[dict[str, Any]]:
        """One row per task and optimizer: medians across seeds and the ``rank`` within the task.

        Keys: ``task, optimizer, lr, status, note, final_loss, steps_to_target, time_to_target`` (seconds),
        ``reached`` (``"k/n"`` seeds), ``wall_time`` (seconds per run), ``step_ms``, ``metric_name`` and
        ``metric`` (the task's headline final metric, median over the seeds that ended ``ok``; ``None`` for a
        task without one), ``rank`` (1 = best by steps to target then final loss; ``None`` for optimizers
        that did not run).
        """
        out = []
        for task, name in self.pairs():
            runs = self.runs_of(task, name)
            ran = [r for r in runs if r.ran]
            row: dict[str, Any] = {"task": task, "optimizer": name, "lr": self.lrs.get((task, name)),
                                   "metric_name": runs[0].metric_name, "metric": None}
            if not ran:
                row.update(
                    status=runs[0].status,
                    note=runs[0].message,
                    final_loss=None,
                    steps_to_target=None,
                    time_to_target=None,
                    reached=f"0/{len(runs)}",
                    wall_time=None,
                    step_ms=None,
                )
                out.append(row)
                continue
            reach = [r.steps_to_target if r.steps_to_target is not None else math.inf for r in runs]
            ttt = [r.time_to_target if r.time_to_target is not None else math.inf for r in runs]
            bad = [r for r in runs if r.status != "ok"]
            status = ", ".join(
                f"{s} {sum(r.status == s for r in bad)}/{len(runs)}"
                for s in dict.fromkeys(r.status for r in bad)
            )
            row.update(
                status=status or "ok",
                note=next((r.message for r in bad if r.status == "error"), ""),
                final_loss=_finite_or_none(_median([r.final_loss for r in runs])),
                steps_to_target=_finite_or_none(_median(reach)),
                time_to_target=_finite_or_none(_median(ttt)),
                reached=f"{sum(math.isfinite(s) for s in reach)}/{len(runs)}",
                wall_time=_median([r.wall_time for r in ran]),
                step_ms=1e3 * _median([r.step_time for r in ran]),
            )
            scored = [r.metrics[r.metric_name] for r in runs if r.metric_name in r.metrics]
            row["metric"] = _median(scored) if scored else None
            out.append(row)
        for task in dict.fromkeys(r["task"] for r in out):
            finished = (r for r in out if r["task"] == task and r["final_loss"] is not None)
            ranked = sorted(finished, key=rank_key)
            for rank, row in enumerate(ranked, start=1):
                row["rank"] = rank
        for row in out:
            row.setdefault("rank", None)
        return out

    def winners(self) -> list[dict[str, Any]]:
        """Per task: the best optimizer, its margin over the runner-up and over Adam (see module doc)."""
        rows = self.rows()
        out = []
        for task in dict.fromkeys(r["task"] for r in rows):
            ranked = sorted((r for r in rows if r["task"] == task and r["rank"] is not None), key=rank_key)
            if not ranked:
                out.append({"task": task, "winner": None})
                continue
            win = ranked[0]
            runner = ranked[1] if len(ranked) > 1 else None
            adam = next((r for r in rows if r["task"] == task and r["optimizer"] == "adam"), None)
            out.append(
                {
                    "task": task,
                    "winner": win["optimizer"],
                    "steps_to_target": win["steps_to_target"],
                    "final_loss": win["final_loss"],
                    "runner_up": runner["optimizer"] if runner else None,
                    "vs_runner_up": margin(win, runner),
                    "vs_adam": margin(win, adam),
                }
            )
        return out

    def summary(self) -> dict[str, float]:
        """Flat scalars: ``final_loss/<task>/<opt>``, ``steps_to_target/<task>/<opt>`` and
        ``time_to_target/<task>/<opt>`` (when reached), ``<metric_name>/<task>/<opt>`` (with a metric)."""
        out: dict[str, float] = {}
        for row in self.rows():
            key = f"{row['task']}/{row['optimizer']}"
            for name in ("final_loss", "steps_to_target", "time_to_target"):
                if row[name] is not None:
                    out[f"{name}/{key}"] = row[name]
            if row["metric"] is not None:
                out[f"{row['metric_name']}/{key}"] = row["metric"]
        return out


def rank_key(row: Mapping[str, Any]) -> tuple[float, float]:
    """The ranking's sort key of a :meth:`Comparison.rows` row with a final loss, smaller is better:
    ``(median steps to target, inf if not reached; median final loss)``."""
    steps = row["steps_to_target"]
    return (math.inf if steps is None else steps), row["final_loss"]


def margin(win: Mapping[str, Any], other: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """How much better ``win`` is than ``other``: a ratio > 1 and the quantity it is measured on."""
    if other is None:
        return None
    if other["final_loss"] is None:
        return {"ratio": math.inf, "on": "final_loss", "note": other["status"]}
    if win["steps_to_target"] is not None and other["steps_to_target"] is not None:
        return {"ratio": other["steps_to_target"] / max(win["steps_to_target"], 1), "on": "steps_to_target"}
    if win["steps_to_target"] is not None:
        return {"ratio": math.inf, "on": "steps_to_target", "note": "other never reached the target"}
    return {"ratio": other["final_loss"] / max(win["final_loss"], 1e-300), "on": "final_loss"}


def compare(
    tasks: Sequence[Task],
    optimizers: Sequence[str | OptimizerSpec],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int | Mapping[str, int] | None = None,
    lr: float | Mapping[tuple[str, str], float] | None = None,
    tune: bool = False,
    lr_grid: Sequence[float] | None = None,
    eval_every: int | None = None,
    max_full_params: int | None = None,
    recorder: Recorder | None = None,
    description: str = "optimizer comparison",
    clock: str = "wall",
) -> Comparison:
    """Run every optimizer on every task from every seed; see the module docstring for the protocol.

    ``steps``: one budget, or per task name (default ``task.steps``). ``lr``: one learning rate, or per
    ``(task, label)`` (missing pairs fall back to :func:`default_lr`), or ``None`` for the defaults;
    ``tune=True`` ignores ``lr`` and runs :func:`tune_lr` (on :data:`TUNE_SEED`, with ``lr_grid`` if given).
    With a ``recorder``: ``target/<task>`` at step 0, then for each task and optimizer the median curve
    across seeds as ``loss/<task>/<optimizer>`` (logged once all seeds of that pair are done; non-finite
    points are left out). ``clock``: ``wall`` or ``cpu`` time for the runs' times (see :func:`train`).
    """
    specs = [as_spec(o) for o in optimizers]
    check_choice("clock", clock, CLOCKS, owner="compare")
    if not tasks or not specs:
        raise LearndynValueError("compare got no tasks or no optimizers; allowed: non-empty lists")
    seeds = [check_int("seed", s, low=0, owner="compare") for s in seeds]
    if not seeds:
        raise LearndynValueError("compare.seeds=() is empty; allowed: at least one seed")
    targets = {t.name: t.target_loss for t in tasks}
    if recorder is not None:
        recorder.log(0, {f"target/{name}": value for name, value in targets.items()})
    per_tune = len(lr_grid) if lr_grid else 9
    total = len(tasks) * len(specs) * (len(seeds) + (per_tune if tune else 0))
    runs: list[RunResult] = []
    tuning: list[RunResult] = []
    lrs: dict[tuple[str, str], float] = {}
    with progress_bar(total, description) as advance:
        for task in tasks:
            n_steps = steps.get(task.name, task.steps) if isinstance(steps, Mapping) else steps
            for spec in specs:
                key = (task.name, spec.label)
                if tune:
                    chosen, tried = tune_lr(
                        task,
                        spec,
                        grid=lr_grid,
                        steps=n_steps,
                        eval_every=eval_every,
                        max_full_params=max_full_params,
                        on_run=advance,
                        clock=clock,
                    )
                    tuning.extend(tried)
                elif isinstance(lr, Mapping):
                    chosen = lr.get(key, default_lr(task, spec))
                elif lr is not None:
                    chosen = lr
                else:
                    chosen = default_lr(task, spec)
                lrs[key] = chosen
                pair_runs = []
                for seed in seeds:
                    if math.isnan(chosen):
                        failed = tuning[-1]
                        run = RunResult(
                            task=task.name,
                            optimizer=spec.label,
                            seed=seed,
                            lr=math.nan,
                            status=failed.status,
                            message=failed.message,
                        )
                    else:
                        run = train(
                            task,
                            spec,
                            chosen,
                            seed=seed,
                            steps=n_steps,
                            eval_every=eval_every,
                            max_full_params=max_full_params,
                            clock=clock,
                        )
                    pair_runs.append(run)
                    advance(1)
                runs.extend(pair_runs)
                if recorder is not None:
                    _log_curve(recorder, Comparison(pair_runs, [], {}, {}, tune), task.name, spec.label)
    if recorder is not None:
        recorder.flush()
    return Comparison(runs=runs, tuning=tuning, lrs=lrs, targets=targets, tuned=tune)


def _log_curve(recorder: Recorder, comparison: Comparison, task: str, optimizer: str) -> None:
    name = f"loss/{task}/{optimizer}"
    for step, value in zip(*comparison.curve(task, optimizer), strict=True):
        if math.isfinite(value):
            recorder.log(int(step), {name: float(value)})
