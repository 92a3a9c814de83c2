"""Experiment-specific report figures: a tiny registry keyed by experiment name.

A module registers a function that reads one run from the store and returns plotly figures; the HTML report
adds them (in their own section, before the generic ones) for every run of that experiment::

    from learndyn.report.hooks import register_figure

    @register_figure("optimizer-comparison")
    def comparison_figures(store, run_id):
        df = store.metrics(run_id, ["loss/*"])
        return [go.Figure(...)]

The run's ``experiment`` column (by default its name) selects the hooks. Modules listed in
``BUILTIN_FIGURE_MODULES`` are imported (if present) before a report is built, so their hooks register.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from learndyn.store.runstore import RunStore

FigureFn = Callable[["RunStore", str], list[Any]]

# Importing ``learndyn.phenomena`` registers every built-in experiment together with its figure hooks.
BUILTIN_FIGURE_MODULES = ("learndyn.report.optimizer_comparison", "learndyn.phenomena")

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
    """Remove ``fn`` (or every hook, if None) registered for ``experiment``."""
    if fn is None:
        _FIGURES.pop(experiment, None)
    elif experiment in _FIGURES:
        _FIGURES[experiment] = [h for h in _FIGURES[experiment] if h is not fn]


def load_builtin_figures() -> None:
    """Import the modules that register built-in hooks (missing ones are skipped)."""
    for module in BUILTIN_FIGURE_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def figures_for(experiment: str | None) -> list[FigureFn]:
    """The hooks registered for ``experiment`` (after loading the built-in ones)."""
    load_builtin_figures()
    return list(_FIGURES.get(experiment or "", []))
