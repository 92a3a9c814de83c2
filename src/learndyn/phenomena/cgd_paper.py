r"""Reproducing *Covariant Gradient Descent* (``learndyn run cgd-paper``): a reproduction, no closed form.

Guskov & Vanchurin, "Covariant Gradient Descent", arXiv 2504.05279 (2025). CovariantGD updates

    q ← q − lr · g⁻¹ m̂,        g = (Ŝ + εI)^α,

with ``Ŝ`` the bias-corrected EMA of ``∇∇ᵀ`` (``moment='second'``) or of ``(∇−m)(∇−m)ᵀ`` (``'covariance'``),
kept diagonal or full. The paper reports that on the Rosenbrock function and on a small network learning
multiplication, diagonal and especially *full-covariance* CGD beat the usual optimizers, and that full CGD
concentrates its updates in a shrinking subspace. This experiment re-runs both set-ups, as faithfully as
the public description allows (:mod:`learndyn.phenomena._cgd_problems`):

(a) Rosenbrock 2-D from ``starts`` random points per seed (box ``[-2,2]×[-1,3]``); a seed's curve is the
    *average* loss over its starts, and its trajectories are drawn in the plane;
(b) ``x·y`` on ``[-1,1]²`` with a tanh MLP ``2 → width (× depth) → 1`` (``P = 105`` at the defaults), small
    enough for a full ``P × P`` metric; fresh minibatches of ``batch_size`` each step.

Optimizers (:data:`~._members.OPTIMIZERS`): SGD, momentum, RMSProp, Adam (``torch.optim``), AdaBelief
(:mod:`~._adabelief`, the paper's formula), CovariantGD diag and full at ``α ∈ {½, 1}``, second moment and
covariance. **Protocol**: each optimizer runs every learning rate of one shared ``lr_grid`` from every seed
(``seeds``; all members of one optimizer in one batched run, :mod:`~._members`); per learning rate the median
over seeds of the steps to target (``min{t : L_t ≤ target}``, evaluated ``eval_points`` times; a seed that
never reaches it counts ∞) and, to break ties, of the final loss; the best learning rate is the optimizer's
*tuned* one, and its median, min and max over seeds are reported. The learning rate is chosen on the
evaluation seeds themselves (the same, optimistic, choice for every optimizer). Ratios against Adam:
``steps(Adam)/steps(opt)`` and ``final(Adam)/final(opt)`` (``> 1``: better than Adam), at each optimizer's
tuned rate and at Adam's tuned rate.

**Shrinking subspace** (multiplication): the update covariance ``C ← β C + (1−β) Δq Δqᵀ`` (``β = pr_beta``)
per member, its participation ratio ``PR = (Σλ)²/Σλ²`` and, for full CGD, its top ``top_eigs`` eigenvalues as
fractions of ``tr C``. ``pr_fall = PR(t₀)/PR(T)`` with ``t₀`` the first evaluation after the EMA's time
constant ``1/(1−β)``: the paper's claim is a fall. The same for the metric's own statistic ``S`` of full CGD
(``metric_pr``).

Verdict: the paper's two claims checked as a *reproduction* (not a theory agreement; the run has no
``agreement`` figure): full CGD α = ½ reaches the target ≥ ``1.5×`` sooner than tuned Adam on both problems
(the issue's reading of the paper), and its PR falls ≥ ``2×``. Measured: ``docs/phenomena/cgd-paper.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from learndyn.config import check_run_fields
from learndyn.phenomena._cgd_figures import cgd_paper_figures
from learndyn.phenomena._cgd_problems import Multiplication, RosenbrockStarts
from learndyn.phenomena._members import OPTIMIZERS, MemberTrace, Problem, is_full, train_members
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.progress import progress_bar
from learndyn.store.recorder import Recorder
from learndyn.validation import LearndynValueError, as_tuple, check_choice, check_int, check_real

NAME = "cgd-paper"
DESCRIPTION = "Guskov & Vanchurin's CGD experiments: Rosenbrock from many starts and x*y, 13 optimizers"
PROBLEMS = ("rosenbrock", "multiplication")
STEPS_CLAIM = 1.5
PR_CLAIM = 2.0
TRAJECTORY_STARTS = 8
SUMMARY_KEYS = ("lr", "steps", "final", "vs_adam_steps", "vs_adam_final", "at_adam_lr_vs_adam_steps",
                "at_adam_lr_vs_adam_final", "pr_start", "pr_end", "pr_fall", "metric_pr_start",
                "metric_pr_end", "metric_pr_fall")
"""What the summary keeps per problem and optimizer (``<problem>/<optimizer>/<key>``, finite values); the
result's table has every column (min/max over seeds, values at Adam's lr, wall time)."""


@dataclass
class CgdPaperConfig:
    """Which problems and optimizers, the shared learning-rate grid, seeds and sizes.

    ``problems``: ``rosenbrock`` and/or ``multiplication``. ``optimizers``: labels of
    :data:`~learndyn.phenomena._members.OPTIMIZERS`. ``lr_grid``: the learning rates every optimizer tries.
    ``seeds``: seeds ``seed … seed+seeds−1``. ``starts``: Rosenbrock starting points per seed.
    ``rosenbrock_steps``/``multiplication_steps``: training steps; ``rosenbrock_target`` (of the average
    loss over starts) / ``multiplication_target`` (full loss): the targets. ``width``/``depth``/
    ``batch_size``: the multiplication network and its minibatch. ``eval_points``: evaluations per run.
    ``pr_beta``: EMA coefficient of the update covariance; ``top_eigs``: eigenvalues recorded (full CGD).
    ``threads``: torch intra-op threads while it runs.
    """

    problems: tuple[str, ...] = PROBLEMS
    optimizers: tuple[str, ...] = OPTIMIZERS
    lr_grid: tuple[float, ...] = (1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316, 1.0, 3.16, 10.0, 31.6)
    seeds: int = 5
    starts: int = 4
    rosenbrock_steps: int = 1500
    rosenbrock_target: float = 1e-3
    width: int = 8
    depth: int = 2
    batch_size: int = 64
    multiplication_steps: int = 1000
    multiplication_target: float = 1e-3
    eval_points: int = 100
    pr_beta: float = 0.99
    top_eigs: int = 3
    seed: int = 0
    threads: int | None = 1

    def __post_init__(self) -> None:
        owner = "CgdPaperConfig"
        self.problems = as_tuple("problems", self.problems, owner=owner, nonempty=True)
        self.optimizers = as_tuple("optimizers", self.optimizers, owner=owner, nonempty=True)
        for p in self.problems:
            check_choice("problems", p, PROBLEMS, owner=owner)
        for o in self.optimizers:
            check_choice("optimizers", o, OPTIMIZERS, owner=owner)
        if len(set(self.problems)) != len(self.problems) or len(set(self.optimizers)) != len(self.optimizers):
            raise LearndynValueError(f"{owner}: problems or optimizers repeat; allowed: distinct names")
        self.lr_grid = as_tuple("lr_grid", self.lr_grid, owner=owner, item=float, low=0, low_open=True,
                                nonempty=True)
        check_int("seeds", self.seeds, low=1, high=100, owner=owner)
        check_int("starts", self.starts, low=1, high=1000, owner=owner)
        for name in ("rosenbrock_steps", "multiplication_steps"):
            check_int(name, getattr(self, name), low=1, owner=owner)
        for name in ("rosenbrock_target", "multiplication_target"):
            setattr(self, name, check_real(name, getattr(self, name), low=0, low_open=True, owner=owner))
        check_int("width", self.width, low=1, high=64, owner=owner)
        check_int("depth", self.depth, low=1, high=4, owner=owner)
        check_int("batch_size", self.batch_size, low=1, owner=owner)
        check_int("eval_points", self.eval_points, low=2, owner=owner)
        self.pr_beta = check_real("pr_beta", self.pr_beta, low=0, high=1, high_open=True, owner=owner)
        check_int("top_eigs", self.top_eigs, low=0, high=16, owner=owner)
        check_run_fields(self, owner)

    def steps(self, problem: str) -> int:
        return self.rosenbrock_steps if problem == "rosenbrock" else self.multiplication_steps

    def target(self, problem: str) -> float:
        return self.rosenbrock_target if problem == "rosenbrock" else self.multiplication_target

    def problem(self, name: str) -> Problem:
        if name == "rosenbrock":
            return RosenbrockStarts(self.starts)
        return Multiplication(self.width, self.depth, self.batch_size)


QUICK = {
    "lr_grid": (1e-2, 0.1),
    "seeds": 2,
    "starts": 4,
    "rosenbrock_steps": 100,
    "rosenbrock_target": 1.0,
    "width": 4,
    "multiplication_steps": 80,
    "multiplication_target": 3e-2,
    "batch_size": 32,
    "eval_points": 10,
    "pr_beta": 0.9,
    "top_eigs": 2,
}
"""The test-size configuration (``--quick``): every optimizer, both problems, seconds."""


# ---------------------------------------------------------------------------------------------- analysis
@dataclass
class Tuned:
    """One optimizer on one problem: every grid point's per-seed results and the chosen one.

    ``curves (L, S, E)``: per-seed loss curves (Rosenbrock: the average over starts); ``reach (L, S)``:
    steps to target (∞ if never); ``final (L, S)``; ``best``: index of the tuned learning rate.
    """

    label: str
    lrs: np.ndarray
    eval_steps: np.ndarray
    curves: np.ndarray
    reach: np.ndarray
    final: np.ndarray
    best: int
    trace: MemberTrace

    def at(self, index: int) -> dict[str, float]:
        """Median, min and max over seeds of steps to target and final loss at learning rate ``index``."""
        r, f = self.reach[index], self.final[index]
        return {
            "lr": float(self.lrs[index]),
            "steps": float(np.median(r)), "steps_min": float(r.min()), "steps_max": float(r.max()),
            "final": float(np.median(f)), "final_min": float(f.min()), "final_max": float(f.max()),
            "reached": float(np.isfinite(r).mean()),
        }


def tune(label: str, lrs: Sequence[float], trace: MemberTrace, target: float) -> Tuned:
    """Per-seed curves, steps to target and the tuned learning rate (module docstring, "Protocol")."""
    curves = trace.loss.mean(axis=2)  # (L, S, E): the average over starts; ∞ if any start diverged
    below = curves <= target
    reach = np.where(below.any(-1), trace.eval_steps[np.argmax(below, -1)], np.inf)
    final = curves[..., -1]
    score = [(float(np.median(reach[i])), float(np.median(final[i])), i) for i in range(len(lrs))]
    best = min(score, key=lambda s: (s[0], s[1] if math.isfinite(s[1]) else math.inf, s[2]))[2]
    return Tuned(label, np.asarray(lrs, float), trace.eval_steps, curves, reach, final, best, trace)


def pr_fall(tuned: Tuned, beta: float, pr: np.ndarray | None = None) -> tuple[float, float]:
    """Median over seeds of the PR at ``t₀`` (first evaluation ≥ ``1/(1−β)`` steps) and at the end (of the
    update covariance, or of ``pr`` of the same shape, e.g. the metric's)."""
    pr = tuned.trace.pr if pr is None else pr
    if pr is None:
        return math.nan, math.nan
    steps = tuned.eval_steps
    k0 = int(np.searchsorted(steps, 1.0 / (1.0 - beta)))
    k0 = min(k0, steps.size - 1)
    series = pr[tuned.best, :, 0]  # (S, E)
    return float(np.median(series[:, k0])), float(np.median(series[:, -1]))


def _ratio(num: float, den: float) -> float:
    if math.isfinite(num) and math.isfinite(den) and den > 0:
        return num / den
    if not math.isfinite(num) and math.isfinite(den):
        return math.inf
    return math.nan


def summarise(config: CgdPaperConfig, tuned: Mapping[str, Mapping[str, Tuned]]) -> ExperimentResult:
    """The flat summary (:data:`SUMMARY_KEYS`, finite values) and one table row per problem and optimizer."""
    summary: dict[str, float] = {}
    table: list[dict[str, Any]] = []
    for problem, by_label in tuned.items():
        adam = by_label.get("adam")
        adam_row = adam.at(adam.best) if adam else None
        for label, t in by_label.items():
            row = t.at(t.best)
            at_adam = t.at(adam.best) if adam else None
            entry: dict[str, Any] = {"problem": problem, "optimizer": label, **row}
            if adam_row is not None and at_adam is not None:
                entry["vs_adam_steps"] = _ratio(adam_row["steps"], row["steps"])
                entry["vs_adam_final"] = _ratio(adam_row["final"], row["final"])
                entry["at_adam_lr_steps"] = at_adam["steps"]
                entry["at_adam_lr_final"] = at_adam["final"]
                entry["at_adam_lr_vs_adam_steps"] = _ratio(adam_row["steps"], at_adam["steps"])
                entry["at_adam_lr_vs_adam_final"] = _ratio(adam_row["final"], at_adam["final"])
            if t.trace.pr is not None:
                start, end = pr_fall(t, config.pr_beta)
                entry.update(pr_start=start, pr_end=end, pr_fall=_ratio(start, end))
            if t.trace.metric_pr is not None:
                start, end = pr_fall(t, config.pr_beta, t.trace.metric_pr)
                entry.update(metric_pr_start=start, metric_pr_end=end, metric_pr_fall=_ratio(start, end))
            entry["seconds"] = t.trace.seconds
            table.append(entry)
            for key in SUMMARY_KEYS:
                value = entry.get(key)
                if isinstance(value, float) and math.isfinite(value):
                    summary[f"{problem}/{label}/{key}"] = value
    return ExperimentResult(summary=summary, table=table)


# ------------------------------------------------------------------------------------------------- run
def _log(recorder: Recorder, problem: str, t: Tuned, config: CgdPaperConfig) -> None:
    """Median/min/max curves at the tuned rate; PR and eigenvalue fractions; Rosenbrock trajectories."""
    curves = t.curves[t.best]  # (S, E)
    name = f"{problem}/{t.label}"
    for k, step in enumerate(t.eval_steps):
        column = curves[:, k]
        metrics = {}
        for kind, value in (("loss", np.median(column)), ("loss_min", column.min()),
                            ("loss_max", column.max())):
            if math.isfinite(value):
                metrics[f"{kind}/{name}"] = float(value)
        if t.trace.pr is not None:
            metrics[f"pr/{name}"] = float(np.median(t.trace.pr[t.best, :, 0, k]))
        if t.trace.metric_pr is not None and np.isfinite(t.trace.metric_pr[t.best, :, 0, k]).all():
            metrics[f"metric_pr/{name}"] = float(np.median(t.trace.metric_pr[t.best, :, 0, k]))
        if t.trace.top_eigs is not None:
            for j in range(t.trace.top_eigs.shape[-1]):
                metrics[f"eig{j + 1}/{name}"] = float(np.median(t.trace.top_eigs[t.best, :, 0, k, j]))
        if metrics:
            recorder.log(int(step), metrics)
    if t.trace.traj is not None and t.trace.traj_steps is not None:
        points = t.trace.traj[t.best, 0]  # seed index 0: (K, T, 2)
        for i, step in enumerate(t.trace.traj_steps):
            metrics = {}
            for k in range(min(points.shape[0], TRAJECTORY_STARTS)):
                metrics[f"traj/{t.label}/{k}/x"] = float(points[k, i, 0])
                metrics[f"traj/{t.label}/{k}/y"] = float(points[k, i, 1])
            recorder.log(int(step), metrics)


def trajectory_steps(steps: int, points: int = 80) -> np.ndarray:
    """About ``points`` steps, log-spaced from 0 to ``steps`` (trajectories move fastest early)."""
    return np.unique(np.concatenate([[0], np.geomspace(1, steps, points).round().astype(int)]))


@threaded
def run(config: CgdPaperConfig, recorder: Recorder) -> ExperimentResult:
    """Train every optimizer at every learning rate from every seed on both problems; tune, log, judge."""
    seeds = list(range(config.seed, config.seed + config.seeds))
    total = sum(config.steps(p) for p in config.problems) * len(config.optimizers)
    recorder.log(0, {f"target/{p}": config.target(p) for p in config.problems})
    tuned: dict[str, dict[str, Tuned]] = {}
    with progress_bar(total, NAME) as advance:
        for problem_name in config.problems:
            problem = config.problem(problem_name)
            steps = config.steps(problem_name)
            every = max(1, steps // config.eval_points)
            multiplication = problem_name == "multiplication"
            tuned[problem_name] = {}
            for label in config.optimizers:
                trace = train_members(
                    problem, label, config.lr_grid, seeds, steps, every,
                    pr_beta=config.pr_beta if multiplication else None,
                    top_k=config.top_eigs if multiplication and is_full(label) else 0,
                    traj_steps=None if multiplication else trajectory_steps(steps).tolist(),
                    progress=advance,
                )
                t = tune(label, config.lr_grid, trace, config.target(problem_name))
                tuned[problem_name][label] = t
                _log(recorder, problem_name, t, config)
    recorder.flush()
    return summarise(config, tuned)


# --------------------------------------------------------------------------------------------- verdict
def cgd_paper_verdict(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The reproduction check: the paper's claims, what was measured, and whether it reproduced.

    Rows: per problem, full CGD α = ½ against tuned Adam (steps to target, ≥ 1.5× claimed) and the best
    optimizer; on multiplication, the PR fall of full CGD α = ½ (≥ 2× claimed), of the updates'
    covariance and of the metric's statistic."""
    rows: list[dict[str, Any]] = []
    problems = list(dict.fromkeys(k.split("/")[0] for k in summary if k.count("/") == 2))
    for problem in problems:
        def get(label: str, key: str, problem: str = problem) -> float | None:
            value = summary.get(f"{problem}/{label}/{key}")
            return float(value) if value is not None else None

        full_steps, adam_steps = get("cgd-full-a0.5", "steps"), get("adam", "steps")
        ratio = adam_steps / full_steps if full_steps and adam_steps is not None else None
        if full_steps is not None and adam_steps is None:
            ratio = math.inf  # full CGD reached the target, Adam never did
        final_ratio = get("cgd-full-a0.5", "vs_adam_final")
        if get("cgd-full-a0.5", "lr") is not None and get("adam", "lr") is not None:
            if ratio is None:
                measured = "full CGD α=½ never reached the target"
            elif math.isinf(ratio):
                measured = f"full CGD α=½ reached the target ({full_steps:g} steps), Adam never did"
            else:
                measured = f"{ratio:.2f}× fewer steps ({adam_steps:g} vs {full_steps:g})"
            if final_ratio is not None:
                measured += f"; {final_ratio:.2g}× lower final loss"
            rows.append({
                "kind": "reproduction check (no closed form)",
                "problem": problem,
                "claim": f"full CGD α=½ reaches the target ≥{STEPS_CLAIM:g}× sooner than tuned Adam",
                "measured": measured,
                "reproduced": "yes" if ratio is not None and ratio >= STEPS_CLAIM else "no",
            })
        for prefix, what in (("pr", "the updates' covariance"), ("metric_pr", "the metric's statistic S")):
            fall = get("cgd-full-a0.5", f"{prefix}_fall")
            if fall is None:
                continue
            start, end = get("cgd-full-a0.5", f"{prefix}_start"), get("cgd-full-a0.5", f"{prefix}_end")
            rows.append({
                "kind": "reproduction check (no closed form)",
                "problem": problem,
                "claim": f"full CGD α=½: participation ratio of {what} falls ≥{PR_CLAIM:g}×",
                "measured": f"PR {start:.3g} → {end:.3g} ({fall:.2f}×)",
                "reproduced": "yes" if fall >= PR_CLAIM else "no",
            })
        labels = {k.split("/")[1] for k in summary if k.startswith(f"{problem}/") and k.count("/") == 2}
        if labels:
            def key(label: str) -> tuple[float, float]:
                steps, final = get(label, "steps"), get(label, "final")
                return (math.inf if steps is None else steps, math.inf if final is None else final)

            best = min(sorted(labels), key=key)
            steps, final = key(best)
            rows.append({
                "kind": "best optimizer (tuned lr)",
                "problem": problem,
                "claim": "-",
                "measured": f"{best}: {steps:g} steps to target, final loss {final:.3g}",
                "reproduced": "-",
            })
    return rows


EXPERIMENT = register(
    Experiment(
        NAME,
        DESCRIPTION,
        CgdPaperConfig,
        run,
        QUICK,
        figures=(cgd_paper_figures,),
        verdict=cgd_paper_verdict,
    )
)
