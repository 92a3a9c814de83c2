"""The registry of runnable experiments: one :class:`Experiment` record per phenomenon, looked up by name.

An experiment is a config dataclass (every field has a default, a type hint and is validated in
``__post_init__``) and a ``run(config, recorder) -> ExperimentResult`` function, plus what the layers above
need to know about it -- all in its :class:`Experiment` record, so that the CLI, sweeps and reports read the
registry and never import a phenomenon by name:

- ``figures``: functions ``(store, run_id) -> [plotly Figure]`` the HTML report adds for its runs;
- ``ensemble``: an :class:`EnsembleSupport` when sweeps may train several configs in one vectorised pass;
- ``closed_form`` and ``tolerance``: whether ``run`` returns an agreement figure (theory vs simulation) and
  the default tolerance it is tested against (``learndyn run all`` runs exactly these);
- ``verdict``: a function ``(summary) -> [row dict]`` giving the table a report shows first for a run of
  this experiment (e.g. the optimizer comparison's winners and margins); experiments with a closed form
  need none (the report shows agreement, tolerance and pass).

Adding a phenomenon is one module that ends in ``register(Experiment(...))`` plus its import line in
:mod:`learndyn.phenomena`. Importing this module imports that package first (Python imports a package
before its submodules), so every built-in experiment is registered whenever the registry is read.

:func:`execute` is the one place where an experiment runs into a stored run (the CLI's ``run``, ``resume``
and ``run all``, and every single-run unit of a sweep call it).
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learndyn.store.recorder import Recorder
from learndyn.validation import check_int, exception_line

FigureFn = Callable[[Any, str], list[Any]]
"""``fn(store, run_id) -> [plotly Figure]``: figures of one run, read from the run store."""

VerdictFn = Callable[[dict[str, Any]], list[dict[str, Any]]]
"""``fn(summary) -> [row]``: the rows of a run's verdict table, computed from its stored summary."""


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


@dataclass
class MemberOutcome:
    """What one ensemble member produced: the equivalent of one run.

    ``series``: scalar metrics ``name -> (steps, values)``; ``summary``: the run summary; ``status``:
    ``completed``, ``diverged`` or ``failed`` (with ``error``).
    """

    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class EnsembleSupport:
    """How an experiment trains several configs at once.

    ``axes``: the config fields members may differ in; ``run(configs) -> [MemberOutcome]`` trains configs
    that agree on every other field (one outcome per config, in order); ``max_members``: the largest group
    it takes (bigger groups are split).
    """

    axes: tuple[str, ...]
    run: Callable[[list[Any]], list[MemberOutcome]]
    max_members: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(self.axes))
        check_int("max_members", self.max_members, low=1, owner="EnsembleSupport")


@dataclass(frozen=True)
class Experiment:
    """Everything a phenomenon declares (see the module docstring).

    ``closed_form`` defaults to whether ``config_cls`` has a ``tolerance`` field (what an agreement figure
    is tested against); ``tolerance`` to that field's default.
    """

    name: str
    description: str  # one line, shown by `learndyn run --list`
    config_cls: type
    run: Callable[[Any, Recorder], ExperimentResult]
    quick_overrides: dict[str, Any] = field(default_factory=dict)  # the test-size configuration
    figures: tuple[FigureFn, ...] = ()
    ensemble: EnsembleSupport | None = None
    closed_form: bool | None = None
    tolerance: float | None = None
    verdict: VerdictFn | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "figures", tuple(self.figures))
        default = _field_default(self.config_cls, "tolerance")
        if self.closed_form is None:
            object.__setattr__(self, "closed_form", default is not dataclasses.MISSING)
        if self.tolerance is None and isinstance(default, int | float) and not isinstance(default, bool):
            object.__setattr__(self, "tolerance", float(default))


def _field_default(cls: type, name: str) -> Any:
    if not dataclasses.is_dataclass(cls):
        return dataclasses.MISSING
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default
    return dataclasses.MISSING


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in _REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} is registered twice")
    _REGISTRY[experiment.name] = experiment
    return experiment


def get(name: str) -> Experiment:
    if name not in _REGISTRY:
        allowed = ", ".join(sorted(_REGISTRY)) or "(none registered)"
        raise ValueError(f"experiment={name!r} is not known; allowed: {allowed}")
    return _REGISTRY[name]


def find(name: str | None) -> Experiment | None:
    """The experiment registered as ``name``, or ``None``."""
    return _REGISTRY.get(name or "")


def names() -> list[str]:
    return sorted(_REGISTRY)


def register_ensemble(
    experiment: str,
    run: Callable[[list[Any]], list[MemberOutcome]],
    axes: Sequence[str],
    *,
    max_members: int = 1024,
) -> EnsembleSupport:
    """Declare that the registered ``experiment`` trains configs differing only in ``axes`` together with
    ``run`` (its record gets ``ensemble``; for experiments registered without one)."""
    support = EnsembleSupport(tuple(axes), run, max_members)
    _REGISTRY[experiment] = dataclasses.replace(get(experiment), ensemble=support)
    return support


def ensemble_support(experiment: str) -> EnsembleSupport | None:
    """The :class:`EnsembleSupport` of ``experiment`` (``None``: none, or no such experiment)."""
    found = find(experiment)
    return found.ensemble if found is not None else None


# ---------------------------------------------------------------------------------------------- execute
@dataclass
class Executed:
    """How :func:`execute` ended: the experiment's ``result``, or ``error`` (one line) when it raised."""

    result: ExperimentResult | None
    error: str | None = None


def execute(experiment: Experiment, config: Any, run: Any, *, reraise: bool = False) -> Executed:
    """Run ``experiment`` with ``config`` into the open stored ``run`` and record how it ended.

    On return the run's summary is the result's :meth:`~ExperimentResult.stored_summary`; if the experiment
    raises, the run is closed ``failed`` with the one-line error and the traceback, and the error is
    returned (``reraise=True``: raised instead, before the run is touched -- for debugging).
    ``KeyboardInterrupt`` and ``SystemExit`` always propagate (the run's context marks it interrupted).
    """
    try:
        result = experiment.run(config, run)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if reraise:
            raise
        message = exception_line(exc)
        run.close("failed", message, "".join(traceback.format_exception(exc)))
        return Executed(None, message)
    run.set_summary(result.stored_summary())
    return Executed(result)
