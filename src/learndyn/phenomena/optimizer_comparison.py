"""The optimizer comparison (``learndyn run optimizer-comparison``): SGD, Adam and CovariantGD on small tasks.

For each task in :mod:`learndyn.tasks` and each optimizer label (see
:meth:`learndyn.tasks.compare.OptimizerSpec.parse`), train from ``seeds`` seeds and record the full-data loss
``L_t``. The protocol -- learning rates, time to target ``min{t : L_t <= target}``, medians across seeds,
ranking -- is :func:`learndyn.tasks.compare.compare`, the same code ``benchmarks/bench_optim_quality.py``
runs at full size.

Logged metrics: ``loss/<task>/<optimizer>`` (median across seeds, every ``eval_every`` steps) and
``target/<task>`` at step 0. :func:`learndyn.report.optimizer_comparison.comparison_figure` draws them.
The result's ``table`` has one row per task and optimizer (``rank`` 1 is the task's winner) and ``summary``
the final losses and steps to target by ``<task>/<optimizer>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.store.recorder import Recorder
from learndyn.tasks import get_task, task_names
from learndyn.tasks.compare import OptimizerSpec, compare
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

NAME = "optimizer-comparison"


def _as_tuple(value: object) -> tuple:
    """Accept a comma-separated string as well as a sequence (``--set tasks=digits,deep-linear``)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)  # type: ignore[arg-type]


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
    and one thread keeps wall times comparable between optimizers.
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

    def __post_init__(self) -> None:
        owner = "OptimizerComparisonConfig"
        self.tasks = _as_tuple(self.tasks)
        self.optimizers = _as_tuple(self.optimizers)
        self.lr_grid = tuple(_as_tuple(self.lr_grid))
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
        self.lr_grid = tuple(
            check_real("lr_grid", v, low=0, low_open=True, owner=owner) for v in self.lr_grid
        )
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, low=1, owner=owner)
        check_int("max_full_params", self.max_full_params, low=1, owner=owner)
        if self.num_threads is not None:
            check_int("num_threads", self.num_threads, low=1, owner=owner)


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
        )
    finally:
        torch.set_num_threads(threads)
    table = [
        {
            "task": r["task"],
            "optimizer": r["optimizer"],
            "rank": r["rank"],
            "lr": r["lr"],
            "final_loss": r["final_loss"],
            "steps_to_target": r["steps_to_target"],
            "reached": r["reached"],
            "time_to_target_s": r["time_to_target"],
            "wall_time_s": r["wall_time"],
            "status": r["status"] if not r["note"] else f"{r['status']}: {r['note']}",
        }
        for r in result.rows()
    ]
    return ExperimentResult(summary=result.summary(), table=table)


EXPERIMENT = register(
    Experiment(
        name=NAME,
        description="SGD vs Adam vs CovariantGD on Rosenbrock, x*y, digits and deep linear regression",
        config_cls=OptimizerComparisonConfig,
        run=run,
        quick_overrides={
            "tasks": ("rosenbrock-2d", "deep-linear"),
            "optimizers": ("sgd", "adam", "cgd-diag"),
            "steps": 60,
            "seeds": 1,
        },
    )
)
