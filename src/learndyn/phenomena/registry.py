"""The registry of runnable experiments: one :class:`Experiment` record per phenomenon, looked up by name.

An experiment is a config dataclass (every field has a default, a type hint and is validated in
``__post_init__``) and a ``run(config, recorder) -> ExperimentResult`` function, plus what the layers above
need to know about it -- all in its :class:`Experiment` record, so that the CLI, sweeps and reports read the
registry and never import a phenomenon by name:

- ``figures``: functions ``(store, run_id) -> [plotly Figure]`` the HTML report adds for its runs;
- ``ensemble``: an :class:`EnsembleSupport` when sweeps may train several configs in one vectorised pass;
- ``closed_form`` and ``tolerance``: whether ``run`` returns an agreement figure (theory vs simulation) and
  the default tolerance it is tested against (``learndyn run all`` runs these);
- ``reproduction``: the experiment has no closed form and its figure is a *reproduction check* of a
  published result (grokking's shortfall): listed apart from the theory agreements everywhere (``learndyn
  run --list``, ``run all``, the report's verdict), and run by ``learndyn run all`` too;
- ``in_run_all``: ``False`` keeps an experiment with a figure out of ``learndyn run all`` (one whose test
  size cannot show its phenomenon in seconds, as grokking on a transformer cannot on a CPU);
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
    is tested against) and the experiment is not a ``reproduction`` check; ``tolerance`` to that field's
    default.
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
    reproduction: bool = False
    in_run_all: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "figures", tuple(self.figures))
        default = _field_default(self.config_cls, "tolerance")
        if self.closed_form is None:
            closed = default is not dataclasses.MISSING and not self.reproduction
            object.__setattr__(self, "closed_form", closed)
        if self.tolerance is None and isinstance(default, int | float) and not isinstance(default, bool):
            object.__setattr__(self, "tolerance", float(default))


    @property
    def check(self) -> str:
        """What its agreement figure is: ``"theory vs simulation"``, ``"reproduction check"`` or ``""``."""
        if self.closed_form:
            return "theory vs simulation"
        return "reproduction check" if self.reproduction else ""


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
    """The experiment ``name``: a registered one, one a package declares under the ``learndyn.experiments``
    entry points, or a user's own as ``"module:attribute"`` (see :func:`load_reference`)."""
    if name not in _REGISTRY:
        load_entry_points()
    if name not in _REGISTRY and ":" in name:
        return load_reference(name)
    if name not in _REGISTRY:
        allowed = ", ".join(sorted(_REGISTRY)) or "(none registered)"
        raise ValueError(
            f"experiment={name!r} is not known; allowed: {allowed}, or your own as module:attribute"
        )
    return _REGISTRY[name]


ENTRY_POINTS = "learndyn.experiments"
_loaded_entry_points = False


def load_entry_points() -> None:
    """Register the experiments installed packages declare under the ``learndyn.experiments`` entry-point
    group (``name = "module:attribute"``, loaded as by :func:`load_reference`). Once per process."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        if ep.name not in _REGISTRY:
            _register_object(ep.name, ep.load(), ep.value)


def load_reference(reference: str) -> Experiment:
    """A user's experiment from ``"module:attribute"`` (the module found on ``sys.path`` or in the current
    directory), registered under that reference so that sweep workers find it by the same name.

    The attribute is an :class:`Experiment` (registered under its own name too), or a function
    ``run(config, recorder) -> ExperimentResult | dict`` whose first parameter is annotated with a config
    dataclass (every field with a default); a dict result is its summary.
    """
    import importlib
    import os
    import sys

    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise ValueError(f"experiment={reference!r} is not allowed; allowed: module:attribute")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"experiment={reference!r}: cannot import {module_name!r}: {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"experiment={reference!r}: module {module_name!r} has no {attr!r}") from None
    return _register_object(reference, obj, reference)


def _register_object(key: str, obj: Any, where: str) -> Experiment:
    import typing

    if isinstance(obj, Experiment):
        experiment = obj
        _REGISTRY.setdefault(obj.name, obj)
    elif callable(obj):
        import inspect

        params = list(inspect.signature(obj).parameters)
        hints = typing.get_type_hints(obj) if params else {}
        config_cls = hints.get(params[0]) if params else None
        if config_cls is None or not dataclasses.is_dataclass(config_cls):
            raise ValueError(
                f"experiment {where!r}: {getattr(obj, '__name__', obj)!r} is not allowed; allowed: an "
                "Experiment, or run(config: SomeDataclass, recorder) with the config annotated"
            )
        experiment = Experiment(key, (obj.__doc__ or key).strip().splitlines()[0], config_cls,
                                _as_result(obj))
    else:
        kind = type(obj).__name__
        raise ValueError(f"experiment {where!r} is a {kind}; allowed: an Experiment or a function")
    _REGISTRY[key] = experiment
    return experiment


def _as_result(fn: Callable[[Any, Recorder], Any]) -> Callable[[Any, Recorder], ExperimentResult]:
    """``fn`` returning an :class:`ExperimentResult`: a dict result becomes the summary, None an empty one."""
    import functools

    @functools.wraps(fn)
    def run(config: Any, recorder: Recorder) -> ExperimentResult:
        out = fn(config, recorder)
        if isinstance(out, ExperimentResult):
            return out
        return ExperimentResult(summary=dict(out or {}))

    return run


def find(name: str | None) -> Experiment | None:
    """The experiment registered as ``name``, or ``None``."""
    return _REGISTRY.get(name or "")


def names() -> list[str]:
    """Registered experiments (and those installed packages declare as entry points), not references."""
    load_entry_points()
    return sorted(n for n in _REGISTRY if ":" not in n)


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
