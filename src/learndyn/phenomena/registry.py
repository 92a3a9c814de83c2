"""Registry of runnable experiments (phenomena and the optimizer comparison), looked up by name.

An experiment is a config dataclass (every field has a default, a type hint and is validated in
``__post_init__``) and a ``run(config, recorder) -> ExperimentResult`` function. The CLI's
``learndyn run <name> --set key=value`` builds the config from the defaults plus overrides, opens a run
in the store (a :class:`~learndyn.store.recorder.Recorder`) and calls ``run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from learndyn.store.recorder import Recorder


@dataclass
class ExperimentResult:
    """What an experiment returns besides what it logged.

    ``summary``: named scalars for the run's summary table (e.g. final losses, the agreement figure).
    ``agreement`` / ``tolerance``: for phenomena with a closed form, the theory-vs-simulation figure and
    the tolerance it is tested against (``None`` for experiments without theory).
    Figures are never returned: reports read the store only. An experiment logs its simulated series and,
    where it has one, the theory curve as metrics named ``sim/<quantity>`` and ``theory/<quantity>``; the
    report overlays series that share a quantity name.
    ``table``: rows (list of dicts) to print, e.g. one row per optimizer.
    """

    summary: dict[str, float] = field(default_factory=dict)
    agreement: float | None = None
    tolerance: float | None = None
    table: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        if self.agreement is None or self.tolerance is None:
            return None
        return self.agreement <= self.tolerance

    def stored_summary(self) -> dict[str, Any]:
        """What a run stores as its summary: ``summary`` plus ``agreement``, ``tolerance`` and ``passed``
        where they are known."""
        out: dict[str, Any] = dict(self.summary)
        for key in ("agreement", "tolerance", "passed"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str  # one line, shown by `learndyn run --list`
    config_cls: type
    run: Callable[[Any, Recorder], ExperimentResult]
    quick_overrides: dict[str, Any] = field(default_factory=dict)  # the test-size configuration


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in _REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} is registered twice")
    _REGISTRY[experiment.name] = experiment
    return experiment


def _load_builtin() -> None:
    # Importing the package registers the built-in experiments.
    import learndyn.phenomena  # noqa: F401


def get(name: str) -> Experiment:
    _load_builtin()
    if name not in _REGISTRY:
        allowed = ", ".join(sorted(_REGISTRY)) or "(none registered)"
        raise ValueError(f"experiment={name!r} is not known; allowed: {allowed}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)
