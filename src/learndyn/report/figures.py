"""Interactive plotly figures of runs, one function per section kind (see :mod:`learndyn.report.data`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from learndyn.glossary import axis_title, lookup
from learndyn.report.data import RunData, Section, array_matrix, drift, relabel, thin, use_log_scale

PALETTE = qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def run_color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


MAX_POINTS = 600
"""Points per drawn series (thinned evenly, the last kept): enough for a 1200-pixel-wide plot."""


def _compact(values: np.ndarray) -> np.ndarray:
    """Float series as float32 (half the bytes in the page; ~7 significant digits are plenty to draw)."""
    values = np.asarray(values)
    return values.astype(np.float32) if values.dtype.kind == "f" else values


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = thin(x, y, MAX_POINTS)
    return x, _compact(y)


def unit_title(name: str) -> str:
    """A y-axis title for one metric of a grid panel (the panel title has the name): its unit."""
    entry = lookup(name)
    if entry is None or entry.unit in ("varies", ""):
        return "value"
    return "value [1]" if entry.unit == "1" else f"value [{entry.unit}]"


def ensure_axis_titles(fig: go.Figure) -> go.Figure:
    """Give every axis of ``fig`` a title: a subplot axis without one takes its row's or column's sibling's
    (same letter), as in a grid where only the outer axes are labelled. Returns ``fig``."""
    layout = fig.layout
    for letter in ("x", "y"):
        names = [k for k in layout.to_plotly_json() if k.startswith(f"{letter}axis")]
        if not names:
            names = [f"{letter}axis"]
        titled = [layout[n].title.text for n in names if layout[n].title and layout[n].title.text]
        for n in names:
            if not (layout[n].title and layout[n].title.text) and titled:
                layout[n].title = {"text": titled[0]}
    return fig


def _mode(x: np.ndarray) -> str:
    """Short series get markers too (a single point drawn as a line is invisible)."""
    return "lines+markers" if len(x) <= 30 else "lines"


def _base_layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=title,
        height=height,
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
        legend={"orientation": "h", "y": -0.15},
        hovermode="x unified",
    )
    return fig


def _log_toggle(fig: go.Figure, log: bool) -> None:
    fig.update_yaxes(type="log" if log else "linear")
    fig.update_layout(
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 1.0,
                "xanchor": "right",
                "y": 1.12,
                "yanchor": "top",
                "showactive": True,
                "active": 1 if log else 0,
                "buttons": [
                    {"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
                    {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]},
                ],
            }
        ]
    )


def loss_figure(runs: Sequence[RunData], section: Section) -> go.Figure:
    """Every loss-like metric of every run on one plot (colour: run, dash: metric); log/linear toggle."""
    fig = go.Figure()
    values = []
    runs = relabel([r for r in runs if any(n in r.series for n in section.metrics)])
    for i, run in enumerate(runs):
        for j, name in enumerate(section.metrics):
            if name not in run.series:
                continue
            x, y = _thin(*run.series[name])
            values.append(y)
            if len(runs) == 1:  # one run: a colour per metric
                label, line = name, {"color": run_color(j)}
            else:  # several: colour per run, dash per metric
                label, line = (
                    f"{run.label} · {name}",
                    {"color": run_color(i), "dash": DASHES[j % len(DASHES)]},
                )
            fig.add_trace(go.Scatter(x=x, y=y, mode=_mode(x), name=label, legendgroup=run.id, line=line))
    _base_layout(fig, section.title, 420)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss [L]")
    _log_toggle(fig, use_log_scale(values))
    return fig


def grid_figure(runs: Sequence[RunData], section: Section) -> go.Figure:
    """One panel per metric of the section (two columns), runs overlaid; ``drift`` sections subtract y₀."""
    names = list(section.metrics)
    runs = relabel([r for r in runs if any(n in r.series for n in names)])
    cols = 1 if len(names) == 1 else 2
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=names,
        horizontal_spacing=0.1,
        vertical_spacing=min(0.12, 0.6 / max(rows, 1)),
    )
    for k, name in enumerate(names):
        r, c = divmod(k, cols)
        for i, run in enumerate(runs):
            if name not in run.series:
                continue
            x, y = run.series[name]
            if section.kind == "drift":
                y = drift(y)
            x, y = _thin(x, y)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode=_mode(x),
                    name=run.label,
                    legendgroup=run.id,
                    showlegend=len(runs) > 1 and k == 0,
                    line={"color": run_color(i)},
                ),
                row=r + 1,
                col=c + 1,
            )
    _base_layout(fig, section.title, 120 + 260 * rows)
    for k, name in enumerate(names):
        r, c = divmod(k, cols)
        unit = unit_title(name)
        ytitle = unit.replace("value", "value − initial", 1) if section.kind == "drift" else unit
        fig.update_yaxes(title_text=ytitle, row=r + 1, col=c + 1)
        fig.update_xaxes(title_text="step", row=r + 1, col=c + 1)
    return fig


def overlay_figure(runs: Sequence[RunData], section: Section) -> go.Figure:
    """``theory/<q>`` (dashed) over ``sim/<q>`` (solid with markers), per run."""
    fig = go.Figure()
    runs = relabel([r for r in runs if any(n in r.series for n in section.metrics)])
    for i, run in enumerate(runs):
        for name in section.metrics:
            if name not in run.series:
                continue
            x, y = _thin(*run.series[name])
            is_theory = name.startswith("theory/")
            kind = "theory" if is_theory else "simulation"
            label = kind if len(runs) == 1 else f"{run.label} · {kind}"
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    name=label,
                    legendgroup=run.id,
                    mode="lines" if is_theory else "lines+markers",
                    marker={"size": 4},
                    line={
                        "color": run_color(i),
                        "dash": "dash" if is_theory else "solid",
                        "width": 3 if is_theory else 1.5,
                    },
                )
            )
    _base_layout(fig, section.title, 420)
    fig.update_xaxes(title="step")
    quantity = section.metrics[0].split("/", 1)[1] if section.metrics else "value"
    fig.update_yaxes(title=axis_title(section.metrics[0]).replace(section.metrics[0], quantity, 1)
                     if section.metrics else quantity)
    return fig


def section_figure(runs: Sequence[RunData], section: Section) -> go.Figure:
    """The figure for any section kind."""
    if section.kind == "loss":
        return loss_figure(runs, section)
    if section.kind == "overlay":
        return overlay_figure(runs, section)
    return grid_figure(runs, section)


def array_figure(run: RunData, name: str, steps: np.ndarray, arrays: list[np.ndarray]) -> go.Figure | None:
    """A heatmap of an array metric: 1-d arrays (spectra) over time, or first/last 2-d array (kernels)."""
    if not arrays:
        return None
    ndim = arrays[-1].ndim
    title = f"{name} — {run.label}"
    if ndim == 1 and len(arrays) == 1:  # logged once: the spectrum as a line
        values = np.asarray(arrays[0], dtype=float)
        if values.size < 2:
            return None
        fig = go.Figure(go.Scatter(x=np.arange(values.size), y=_compact(values), mode=_mode(values),
                                   name=name))
        fig.update_xaxes(title="index")
        fig.update_yaxes(title=axis_title(name), type="log" if use_log_scale([values]) else "linear")
        return _base_layout(fig, f"{title} (step {steps[0]})", 380)
    if ndim == 1:
        widths = {a.shape[0] for a in arrays}
        stacked = np.full((len(arrays), max(widths)), np.nan)
        for k, a in enumerate(arrays):
            stacked[k, : a.shape[0]] = a
        x, z, log = array_matrix(steps, stacked, max_steps=150, max_rows=100)
        fig = go.Figure(
            go.Heatmap(
                x=x,
                y=np.arange(z.shape[0]),
                z=_compact(z),
                colorscale="Viridis",
                colorbar={"title": {"text": "log10 value" if log else "value"}},
                hovertemplate="step %{x}<br>index %{y}<br>%{z:.4g}<extra></extra>",
            )
        )
        fig.update_xaxes(title="step")
        fig.update_yaxes(title="index")
        return _base_layout(fig, f"{title} (over time)", 420)
    if ndim == 2:
        first, last = np.asarray(arrays[0], float), np.asarray(arrays[-1], float)
        fig = make_subplots(rows=1, cols=2, subplot_titles=[f"step {steps[0]}", f"step {steps[-1]}"])
        lo = float(np.nanmin([np.nanmin(first), np.nanmin(last)]))
        hi = float(np.nanmax([np.nanmax(first), np.nanmax(last)]))
        for c, mat in ((1, first), (2, last)):
            fig.add_trace(
                go.Heatmap(
                    z=_compact(mat[:100, :100]),
                    zmin=lo,
                    zmax=hi,
                    colorscale="RdBu_r",
                    showscale=c == 2,
                    hovertemplate="%{y}, %{x}: %{z:.4g}<extra></extra>",
                ),
                row=1,
                col=c,
            )
        fig.update_yaxes(autorange="reversed", title="row")
        fig.update_xaxes(title="column")
        return _base_layout(fig, f"{title} (first and last)", 440)
    return None
