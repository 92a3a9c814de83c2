"""learndyn.sweep: hyperparameter sweeps into the run store: grids, random draws, resumable, local or Ray.

- :class:`SweepSpec` / :func:`parse_axis` -- the spec (``--grid key=VALUES``, YAML/TOML files), its grammar;
  :meth:`SweepSpec.expand` validates it against the experiment's config fields into a :class:`SweepPlan`;
- :func:`run_sweep` -- run what the store does not hold yet (resume = run again), with an executor:
  :class:`LocalExecutor` (process pool, default), :class:`RayExecutor`, :class:`SerialExecutor`;
- :func:`train_ensemble` and :func:`register_ensemble` -- many small models in one vectorised pass
  (``torch.func``), with the stacked optimizers of :mod:`learndyn.optim.stacked`.

Phase diagrams of a sweep: :func:`learndyn.report.phase.phase_diagram_figure`.

Imports are lazy: ``import learndyn.sweep.command`` (the CLI) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EnsembleSupport": "ensemble",
    "EnsembleTrace": "ensemble",
    "MemberOutcome": "ensemble",
    "ensemble_support": "ensemble",
    "register_ensemble": "ensemble",
    "train_ensemble": "ensemble",
    "EXECUTORS": "executors",
    "LocalExecutor": "executors",
    "RayExecutor": "executors",
    "SerialExecutor": "executors",
    "make_executor": "executors",
    "SweepResult": "runner",
    "SweepState": "runner",
    "plan_units": "runner",
    "run_sweep": "runner",
    "sweep_state": "runner",
    "Axis": "spec",
    "SweepPlan": "spec",
    "SweepPoint": "spec",
    "SweepSpec": "spec",
    "SweepSpecError": "spec",
    "canonical_config": "spec",
    "config_hash": "spec",
    "parse_axis": "spec",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"learndyn.sweep.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'learndyn.sweep' has no attribute {name!r}")
