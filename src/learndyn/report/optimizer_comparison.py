"""The optimizer-comparison figure: full-data loss curves per task, one line per optimizer, log scale.

Reads what :mod:`learndyn.phenomena.optimizer_comparison` logged -- metrics ``loss/<task>/<optimizer>`` and
``target/<task>`` -- from any of: a run store DataFrame with columns ``step, name, value`` (e.g.
``RunStore.metrics(run_id)``), a :class:`~learndyn.store.recorder.MemoryRecorder`, or a mapping
``name -> (steps, values)``. Reports only read; this module never trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from learndyn.report.hooks import register_figure

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
) -> go.Figure:
    """Loss curves per task (one subplot each, log-scale loss), one colour per optimizer across subplots.

    A dashed line marks ``target/<task>`` when it was logged. ``tasks`` selects and orders the subplots
    (default: every task found, in logging order). Raises ``ValueError`` if ``source`` has no loss curves.
    """
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


def _comparison_report_figures(store: Any, run_id: str) -> list[go.Figure]:
    """Report hook: the loss-curve figure of an ``optimizer-comparison`` run (none if it logged no curves)."""
    metrics = store.metrics(run_id, ["loss/*", "target/*"])
    if not comparison_curves(metrics):
        return []
    return [comparison_figure(metrics)]


register_figure("optimizer-comparison", _comparison_report_figures)
