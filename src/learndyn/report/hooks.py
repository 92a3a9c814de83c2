"""The experiment figures a report adds for a run: the experiment's own, then any registered here.

An experiment declares its figures in its registry record (``Experiment(figures=(fn, ...))``, see
:mod:`learndyn.phenomena.registry`): functions that read one run from the store and return plotly figures.
The HTML report adds them (in their own section, before the generic ones) for every run of that experiment;
the run's ``experiment`` column (by default its name) selects them.

Figures for runs of experiments that are not in the registry, or extra figures for ones that are, register
here::

    from learndyn.report import register_figure

    @register_figure("my-experiment")
    def my_figures(store, run_id):
        df = store.metrics(run_id, ["loss/*"])
        return [go.Figure(...)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing the registry loads the built-in experiments (torch): only when asked
    from learndyn.phenomena.registry import FigureFn

_FIGURES: dict[str, list[FigureFn]] = {}


def register_figure(experiment: str, fn: FigureFn | None = None) -> Any:
    """Register ``fn(store, run_id) -> list[plotly Figure]`` for runs of ``experiment``.

    Use directly (``register_figure("x", fn)``) or as a decorator (``@register_figure("x")``). Registering the
    same function twice for one experiment is a no-op (module reloads are harmless).
    """
    if not isinstance(experiment, str) or not experiment:
        raise ValueError(f"experiment={experiment!r} is not allowed; allowed: a non-empty string")

    def add(f: FigureFn) -> FigureFn:
        if not callable(f):
            raise TypeError(f"register_figure needs a callable, got {f!r}")
        hooks = _FIGURES.setdefault(experiment, [])
        key = (getattr(f, "__module__", None), getattr(f, "__qualname__", None))
        hooks[:] = [
            h for h in hooks if (getattr(h, "__module__", None), getattr(h, "__qualname__", None)) != key
        ]
        hooks.append(f)
        return f

    return add if fn is None else add(fn)


def unregister_figure(experiment: str, fn: FigureFn | None = None) -> None:
    """Remove ``fn`` (or every figure function, if None) registered here for ``experiment``."""
    if fn is None:
        _FIGURES.pop(experiment, None)
    elif experiment in _FIGURES:
        _FIGURES[experiment] = [h for h in _FIGURES[experiment] if h is not fn]


def figures_for(experiment: str | None) -> list[FigureFn]:
    """The figure functions for runs of ``experiment``: its registry record's, then those registered here."""
    from learndyn.phenomena import registry

    found = registry.find(experiment)
    own = list(found.figures) if found is not None else []
    return own + [f for f in _FIGURES.get(experiment or "", []) if f not in own]
