"""The optimizer comparison (``learndyn run optimizer-comparison``): CovariantGD against SGD, Adam(W), the
peers of :mod:`learndyn.optim.peers` (Muon, SOAP, Shampoo, PSGD-Kron) on the tasks of :mod:`learndyn.tasks`.

For each task in :mod:`learndyn.tasks` and each optimizer label (see
:meth:`learndyn.tasks.compare.OptimizerSpec.parse`), train from ``seeds`` seeds and record the full-data loss
``L_t``. The protocol -- learning rates, time to target ``min{t : L_t <= target}``, medians across seeds,
ranking -- is :func:`learndyn.tasks.compare.compare`, the same code ``benchmarks/bench_optim_quality.py``
runs at full size.

Logged metrics: ``loss/<task>/<optimizer>`` (median across seeds, every ``eval_every`` steps) and
``target/<task>`` at step 0. :func:`comparison_figure` draws them (one subplot per task, log scale) from a
run store frame, a :class:`~learndyn.store.recorder.MemoryRecorder` or a mapping ``name -> (steps, values)``;
it is the experiment's report figure.
The result's ``table`` has one row per task and optimizer (``rank`` 1 is the task's winner; steps to target
beside time to target, measured by ``clock``; ``metric`` the task's own final metric, e.g. MNIST-1D test
accuracy, median over seeds) and ``summary`` the final losses, steps and time to target and metrics by
``<task>/<optimizer>``. E.g. ``learndyn run optimizer-comparison --set tasks=digits,deep-linear
--set optimizers=adamw,muon,po-soap,po-kron,cgd-kron --set clock=cpu``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.store.recorder import Recorder
from learndyn.tasks import get_task, task_names
from learndyn.tasks.compare import CLOCKS, OptimizerSpec, compare, margin
from learndyn.validation import LearndynValueError, as_tuple, check_choice, check_int, check_real

NAME = "optimizer-comparison"
DESCRIPTION = "CovariantGD vs SGD, Adam(W), Muon, SOAP, Shampoo, PSGD-Kron: steps and time to target per task"


@dataclass
class OptimizerComparisonConfig:
    """Which tasks and optimizers to compare, for how long, from how many seeds, at which learning rates.

    ``steps``: training steps per run (``None``: each task's own budget). ``seeds``: the number of seeds,
    ``0 .. seeds-1``. ``lr``: one learning rate for every optimizer, or ``None`` for the per-task,
    per-optimizer defaults tuned by the quality benchmark (``tune=True`` searches instead, on a held-out seed:
    slower). ``lr_grid``: the values ``tune`` tries (empty: an adaptive decade search).
    ``max_full_params``: the ``cgd-full`` structure is skipped on models with more parameters (its
    eigendecompositions would dominate the run time). ``num_threads``: torch CPU threads while running
    (restored afterwards; ``None`` leaves the setting alone) -- these models are too small to gain from more,
    and one thread keeps wall times comparable between optimizers. ``clock``: what time to target measures --
    ``wall`` seconds or the training thread's ``cpu`` seconds (steadier on a shared machine).
    """

    tasks: tuple[str, ...] = ("rosenbrock-2d", "rosenbrock-100d", "multiplication", "digits", "deep-linear")
    optimizers: tuple[str, ...] = ("sgd", "adam", "cgd-diag", "cgd-diag-a1", "cgd-kron")
    steps: int | None = None
    seeds: int = 2
    lr: float | None = None
    tune: bool = False
    lr_grid: tuple[float, ...] = ()
    eval_every: int | None = None
    max_full_params: int = 1000
    num_threads: int | None = 1
    clock: str = "wall"

    def __post_init__(self) -> None:
        owner = "OptimizerComparisonConfig"
        self.tasks = as_tuple("tasks", self.tasks, owner=owner)
        self.optimizers = as_tuple("optimizers", self.optimizers, owner=owner)
        self.lr_grid = as_tuple("lr_grid", self.lr_grid, owner=owner, item=float, low=0, low_open=True)
        if not self.tasks:
            raise LearndynValueError(f"{owner}.tasks=() is empty; allowed: one or more of {task_names()}")
        if not self.optimizers:
            raise LearndynValueError(f"{owner}.optimizers=() is empty; allowed: labels like 'adam'")
        for task in self.tasks:
            check_choice("tasks", task, task_names(), owner=owner)
        if len(set(self.tasks)) != len(self.tasks) or len(set(self.optimizers)) != len(self.optimizers):
            raise LearndynValueError(f"{owner}: tasks or optimizers repeat; allowed: distinct names")
        for label in self.optimizers:
            OptimizerSpec.parse(label)
        if self.steps is not None:
            check_int("steps", self.steps, low=1, owner=owner)
        check_int("seeds", self.seeds, low=1, high=100, owner=owner)
        if self.lr is not None:
            self.lr = check_real("lr", self.lr, low=0, low_open=True, owner=owner)
        if not isinstance(self.tune, bool):
            raise LearndynValueError(f"{owner}.tune={self.tune!r} is not allowed; allowed: True, False")
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, low=1, owner=owner)
        check_int("max_full_params", self.max_full_params, low=1, owner=owner)
        if self.num_threads is not None:
            check_int("num_threads", self.num_threads, low=1, owner=owner)
        check_choice("clock", self.clock, CLOCKS, owner=owner)


QUICK = {
    "tasks": ("rosenbrock-2d", "deep-linear"),
    "optimizers": ("sgd", "adam", "cgd-diag"),
    "steps": 60,
    "seeds": 1,
}
"""The test-size configuration (``--quick``)."""


def run(config: OptimizerComparisonConfig, recorder: Recorder) -> ExperimentResult:
    """Train every optimizer on every task (:func:`~learndyn.tasks.compare.compare`); log curves, rank."""
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        result = compare(
            [get_task(name) for name in config.tasks],
            config.optimizers,
            seeds=range(config.seeds),
            steps=config.steps,
            lr=config.lr,
            tune=config.tune,
            lr_grid=config.lr_grid or None,
            eval_every=config.eval_every,
            max_full_params=config.max_full_params,
            recorder=recorder,
            description=NAME,
            clock=config.clock,
        )
    finally:
        torch.set_num_threads(threads)
    table = [
        {
            "task": r["task"],
            "optimizer": r["optimizer"],
            "rank": r["rank"],
            "lr": r["lr"],
            "steps_to_target": r["steps_to_target"],
            "time_to_target_s": r["time_to_target"],
            "reached": r["reached"],
            "final_loss": r["final_loss"],
            "metric_name": r["metric_name"],
            "metric": r["metric"],
            "run_time_s": r["wall_time"],
            "clock": config.clock,
            "status": r["status"] if not r["note"] else f"{r['status']}: {r['note']}",
        }
        for r in result.rows()
    ]
    return ExperimentResult(summary=result.summary(), table=table)


# ------------------------------------------------------------------------------------------------ figure
Series = dict[str, tuple[np.ndarray, np.ndarray]]


def _series(source: Any) -> Series:
    """Normalise ``source`` to ``{metric name: (steps, values)}``, sorted by step."""
    out: Series = {}
    if hasattr(source, "scalars"):  # MemoryRecorder
        for name, rows in source.scalars.items():
            out[name] = (np.array([s for s, _ in rows]), np.array([v for _, v in rows], dtype=float))
    elif hasattr(source, "columns"):  # pandas DataFrame [step, name, value]
        missing = {"step", "name", "value"} - set(source.columns)
        if missing:
            raise ValueError(f"source DataFrame lacks columns {sorted(missing)}; allowed: step, name, value")
        for name, group in source.groupby("name", sort=False):
            out[str(name)] = (group["step"].to_numpy(), group["value"].to_numpy(dtype=float))
    elif isinstance(source, Mapping):
        for name, (steps, values) in source.items():
            out[str(name)] = (np.asarray(steps), np.asarray(values, dtype=float))
    else:
        raise TypeError(
            f"source of type {type(source).__name__} is not allowed; allowed: a DataFrame "
            "[step, name, value], a MemoryRecorder or a mapping name -> (steps, values)"
        )
    for name, (steps, values) in out.items():
        order = np.argsort(steps, kind="stable")
        out[name] = (steps[order], values[order])
    return out


def comparison_curves(source: Any) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{task: {optimizer: (steps, loss)}}`` from the ``loss/<task>/<optimizer>`` metrics in ``source``."""
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name, series in _series(source).items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "loss":
            curves.setdefault(parts[1], {})[parts[2]] = series
    return curves


def comparison_figure(
    source: Any,
    *,
    tasks: Sequence[str] | None = None,
    columns: int = 2,
    title: str = "Optimizer comparison: full-data loss (median over seeds)",
) -> Any:
    """Loss curves per task (one subplot each, log-scale loss), one colour per optimizer across subplots.

    A dashed line marks ``target/<task>`` when it was logged. ``tasks`` selects and orders the subplots
    (default: every task found, in logging order). Raises ``ValueError`` if ``source`` has no loss curves.
    Returns a plotly ``Figure``.
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    curves = comparison_curves(source)
    if tasks is not None:
        unknown = [t for t in tasks if t not in curves]
        if unknown:
            raise ValueError(f"tasks={unknown!r} have no loss curves; allowed: {', '.join(curves)}")
        curves = {t: curves[t] for t in tasks}
    if not curves:
        raise ValueError("source has no 'loss/<task>/<optimizer>' metrics; allowed: a comparison run's")
    series = _series(source)
    columns = max(1, min(columns, len(curves)))
    rows = math.ceil(len(curves) / columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=list(curves), horizontal_spacing=0.08,
                        vertical_spacing=0.12 if rows > 1 else 0.0)
    optimizers = list(dict.fromkeys(o for per_task in curves.values() for o in per_task))
    palette = qualitative.Plotly + qualitative.D3
    colors = {o: palette[i % len(palette)] for i, o in enumerate(optimizers)}
    shown: set[str] = set()
    for i, (task, per_task) in enumerate(curves.items()):
        row, col = i // columns + 1, i % columns + 1
        for optimizer, (steps, values) in per_task.items():
            keep = np.isfinite(values) & (values > 0)
            fig.add_trace(
                go.Scatter(
                    x=steps[keep], y=values[keep], mode="lines", name=optimizer, legendgroup=optimizer,
                    showlegend=optimizer not in shown, line={"color": colors[optimizer], "width": 2},
                    hovertemplate=f"{optimizer}<br>step %{{x}}<br>loss %{{y:.3g}}<extra>{task}</extra>",
                ),
                row=row, col=col,
            )
            shown.add(optimizer)
        target = series.get(f"target/{task}")
        if target is not None and target[1].size and target[1][-1] > 0:
            fig.add_hline(y=float(target[1][-1]), line_dash="dash", line_color="gray", row=row, col=col,
                          annotation_text="target", annotation_position="bottom right")
        fig.update_yaxes(type="log", title_text="loss" if col == 1 else None, row=row, col=col)
        fig.update_xaxes(title_text="step" if row == rows else None, row=row, col=col)
    fig.update_layout(title=title, template="plotly_white", height=320 * rows + 80,
                      legend={"title": {"text": "optimizer"}})
    return fig


def comparison_verdict(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The winners table of a comparison run, from its summary: per task the best optimizer (fewest median
    steps to target, then lowest final loss -- the ranking of :func:`~learndyn.tasks.compare.compare`), the
    runner-up and the margin between them (:func:`~learndyn.tasks.compare.margin`)."""
    per_task: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in summary.items():
        kind, _, rest = key.partition("/")
        if kind not in ("final_loss", "steps_to_target", "time_to_target") or rest.count("/") != 1:
            continue
        task, optimizer = rest.split("/")
        row = per_task.setdefault(task, {}).setdefault(
            optimizer, {"final_loss": None, "steps_to_target": None, "time_to_target": None, "status": "ok"}
        )
        row[kind] = float(value)
    rows = []
    for task, by_optimizer in per_task.items():
        ranked = sorted(
            ((name, r) for name, r in by_optimizer.items() if r["final_loss"] is not None),
            key=lambda item: (
                math.inf if item[1]["steps_to_target"] is None else item[1]["steps_to_target"],
                item[1]["final_loss"],
            ),
        )
        if not ranked:
            continue
        (winner, best), runner = ranked[0], (ranked[1] if len(ranked) > 1 else None)
        won_by = margin(best, runner[1] if runner else None)
        if won_by is None:
            text = "only one optimizer ran"
        elif not math.isfinite(won_by["ratio"]):
            text = "the runner-up never reached the target"
        elif won_by["on"] == "steps_to_target" and won_by["ratio"] == 1.0:  # a tie: final loss decides
            other = runner[1]["final_loss"] / max(best["final_loss"], 1e-300)
            text = f"same steps to target; {other:.2f}× lower final loss"
        else:
            what = "fewer steps to target" if won_by["on"] == "steps_to_target" else "lower final loss"
            text = f"{won_by['ratio']:.2f}× {what}"
            times = best["time_to_target"], runner[1]["time_to_target"]
            if won_by["on"] == "steps_to_target" and times[0] and times[1] is not None:
                text += f", {times[1] / times[0]:.2f}× less time"
        rows.append(
            {
                "task": task,
                "winner": winner,
                "steps to target": best["steps_to_target"],
                "time to target (s)": best["time_to_target"],
                "final loss": best["final_loss"],
                "runner-up": runner[0] if runner else None,
                "margin": text,
            }
        )
    return rows


def comparison_report_figures(store: Any, run_id: str) -> list[Any]:
    """The report's figure of an ``optimizer-comparison`` run: its loss curves (none if it logged none)."""
    metrics = store.metrics(run_id, ["loss/*", "target/*"])
    if not comparison_curves(metrics):
        return []
    return [comparison_figure(metrics)]


EXPERIMENT = register(
    Experiment(
        NAME,
        DESCRIPTION,
        OptimizerComparisonConfig,
        run,
        QUICK,
        figures=(comparison_report_figures,),
        verdict=comparison_verdict,
    )
)
