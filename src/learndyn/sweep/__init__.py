"""learndyn.sweep: hyperparameter sweeps into the run store: grids, random draws, resumable, local or Ray.

- :class:`SweepSpec` / :func:`parse_axis` -- the spec (``--grid key=VALUES``, YAML/TOML files), its grammar;
  :meth:`SweepSpec.expand` validates it against the experiment's config fields into a :class:`SweepPlan`;
- :func:`run_sweep` -- run what the store does not hold yet (resume = run again), with an executor:
  :class:`LocalExecutor` (process pool, default), :class:`RayExecutor`, :class:`SerialExecutor`;
- runs that differ only in an experiment's ensemble axes train as one vectorised ensemble
  (:func:`learndyn.training.train_ensemble`), where the experiment's registry record has ``ensemble``
  support (:class:`learndyn.phenomena.registry.EnsembleSupport`).

Phase diagrams of a sweep: :func:`learndyn.report.phase.phase_diagram_figure`. The ``learndyn sweep`` command
is :mod:`learndyn.cli.sweep`.
"""

from learndyn.sweep.executors import EXECUTORS, LocalExecutor, RayExecutor, SerialExecutor, make_executor
from learndyn.sweep.runner import SweepResult, SweepState, plan_units, run_sweep, sweep_state
from learndyn.sweep.spec import (
    Axis,
    SweepPlan,
    SweepPoint,
    SweepSpec,
    SweepSpecError,
    canonical_config,
    config_hash,
    ensemble_key,
    parse_axis,
)

__all__ = [
    "EXECUTORS",
    "Axis",
    "LocalExecutor",
    "RayExecutor",
    "SerialExecutor",
    "SweepPlan",
    "SweepPoint",
    "SweepResult",
    "SweepSpec",
    "SweepSpecError",
    "SweepState",
    "canonical_config",
    "config_hash",
    "ensemble_key",
    "make_executor",
    "parse_axis",
    "plan_units",
    "run_sweep",
    "sweep_state",
]
