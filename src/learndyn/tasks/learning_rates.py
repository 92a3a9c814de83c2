"""The learning rates the optimizer comparison uses when it neither gets one nor tunes one.

They are data -- what ``benchmarks/bench_optim_quality.py`` chose, with the rows that went stale when
CovariantGD changed re-tuned by ``benchmarks/retune_lrs.py`` (the same search; provenance in the table's
header) -- kept in ``learning_rates.toml`` beside this module: :data:`DEFAULT_LRS` per task and canonical
optimizer label (see :func:`learndyn.tasks.compare.default_lr` for how ``cgd-diag`` finds ``cgd-diag-a0.5``)
and :data:`FAMILY_LR`, the fallbacks per optimizer family.
"""

from __future__ import annotations

import tomllib
from importlib import resources

__all__ = ["DEFAULT_LRS", "FAMILY_LR"]

_TABLE = tomllib.loads(resources.files(__package__).joinpath("learning_rates.toml").read_text("utf-8"))

FAMILY_LR: dict[str, float] = dict(_TABLE["family"])
"""Fallback learning rates when neither a fixed lr nor a :data:`DEFAULT_LRS` entry applies."""

DEFAULT_LRS: dict[tuple[str, str], float] = {
    (task, label): lr for task, row in _TABLE["task"].items() for label, lr in row.items()
}
"""Learning rates per ``(task, optimizer label)``: the values ``benchmarks/bench_optim_quality.py`` chose
(adaptive search on the held-out seed, default task budgets). Labels are canonical (``cgd-diag-a0.5``).
Chosen for fewest steps to target, so some are aggressive (e.g. Adam at 1.0 on Rosenbrock reaches the target
fast, then oscillates)."""
