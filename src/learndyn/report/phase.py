"""Phase diagrams of a sweep: a stored scalar over two swept config fields, seeds aggregated.

:func:`sweep_frame` reads a sweep's finished runs into one table (config fields, summary values, final metric
values); :func:`phase_table` aggregates a metric over the runs that share ``(x, y)`` -- the seeds, and any
other field that varies -- into mean, spread (standard deviation), count and number of diverged runs;
:func:`phase_diagram_figure` draws it: a heatmap of the mean beside a heatmap of the spread (hover shows
both, with the counts), or, for random sweeps whose fields take many values, a scatter coloured by the
mean. Values spanning more than two decades are coloured on a log10 scale. :func:`phase_figures` picks the
swept fields and metrics automatically for ``learndyn report <sweep>``.

A diverged run counts in ``diverged`` and contributes no value (its losses are not numbers).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from learndyn.report.data import format_value
from learndyn.store.runstore import RunStore
from learndyn.validation import LearndynValueError

__all__ = ["phase_diagram_figure", "phase_figures", "phase_table", "sweep_frame", "swept_fields"]

REPLICATE_FIELDS = ("seed",)
"""Config fields that are replicates, not coordinates: aggregated over, never an axis by default."""

_CONFIG, _SUMMARY, _FINAL = "config.", "summary.", "final."
_MAX_CATEGORIES = 30  # more distinct values on an axis than this: a scatter instead of a heatmap


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.number):
        return float(value)
    return None


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def sweep_frame(store: RunStore, sweep_id: str) -> pd.DataFrame:
    """One row per finished (``completed`` or ``diverged``) run of ``sweep_id``.

    Columns: ``run_id``, ``status``, ``config.<field>``, ``summary.<key>`` (numeric summary values) and
    ``final.<metric>`` (each scalar metric's value at its last step; NaN for diverged runs).
    """
    runs = store.runs(sweep_id=sweep_id)
    runs = runs[runs["status"].isin(["completed", "diverged"])]
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "status"])
    finals = store.sql(
        "SELECT m.run_id, m.name, arg_max(m.value, m.step) AS value FROM metrics m "
        "JOIN runs r ON m.run_id = r.id WHERE r.sweep_id = ? AND r.status IN ('completed', 'diverged') "
        "GROUP BY m.run_id, m.name",
        [sweep_id],
    )
    final_by_run: dict[str, dict[str, float]] = {}
    for run_id, name, value in finals.itertuples(index=False):
        final_by_run.setdefault(run_id, {})[name] = value
    rows = []
    for r in runs.itertuples(index=False):
        row: dict[str, Any] = {"run_id": r.id, "status": r.status}
        for k, v in (r.config or {}).items():
            row[_CONFIG + k] = _hashable(v)
        for k, v in (r.summary or {}).items():
            s = _scalar(v)
            if s is not None:
                row[_SUMMARY + k] = s
        diverged = r.status == "diverged"
        for k, v in final_by_run.get(r.id, {}).items():
            row[_FINAL + k] = math.nan if diverged or v is None else float(v)
        rows.append(row)
    return pd.DataFrame(rows)


def swept_fields(frame: pd.DataFrame, *, include_replicates: bool = False) -> list[str]:
    """Config fields that take more than one value in ``frame`` (replicates such as ``seed`` left out)."""
    out = []
    for col in frame.columns:
        if not col.startswith(_CONFIG):
            continue
        name = col[len(_CONFIG) :]
        if not include_replicates and name in REPLICATE_FIELDS:
            continue
        if frame[col].nunique(dropna=False) > 1:
            out.append(name)
    return out


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Metric names usable in a phase diagram: numeric summary keys, then final metric values."""
    summary = [c[len(_SUMMARY) :] for c in frame.columns if c.startswith(_SUMMARY)]
    finals = [c[len(_FINAL) :] for c in frame.columns if c.startswith(_FINAL)]
    return summary + [f for f in finals if f not in summary]


def _metric_column(frame: pd.DataFrame, metric: str) -> str:
    for col in (_SUMMARY + metric, _FINAL + metric, metric):
        if col in frame.columns:
            return col
    allowed = ", ".join(metric_columns(frame)) or "(none)"
    raise LearndynValueError(f"metric={metric!r} is not stored for this sweep; allowed: {allowed}")


def _field_column(frame: pd.DataFrame, field: str) -> str:
    col = _CONFIG + field
    if col not in frame.columns:
        allowed = ", ".join(c[len(_CONFIG) :] for c in frame.columns if c.startswith(_CONFIG)) or "(none)"
        raise LearndynValueError(f"field={field!r} is not a config field of this sweep; allowed: {allowed}")
    return col


def _order(values: Sequence[Any]) -> list[Any]:
    uniq = list(dict.fromkeys(values))
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=repr)


def phase_table(frame: pd.DataFrame, x: str, y: str | None, metric: str) -> pd.DataFrame:
    """``metric`` aggregated per ``(x, y)`` (``y`` None: per ``x``): columns ``x``, ``y``, ``mean``,
    ``std`` (0 for a single run), ``min``, ``max``, ``n`` (runs with a value), ``diverged``, ``runs``."""
    mcol = _metric_column(frame, metric)
    keys = [_field_column(frame, x)] + ([_field_column(frame, y)] if y else [])
    records = []
    for key, group in frame.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        values = pd.to_numeric(group[mcol], errors="coerce").to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        records.append(
            {
                "x": key[0],
                "y": key[1] if y else None,
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan),
                "min": float(finite.min()) if finite.size else math.nan,
                "max": float(finite.max()) if finite.size else math.nan,
                "n": int(finite.size),
                "diverged": int((group["status"] == "diverged").sum()),
                "runs": len(group),
            }
        )
    return pd.DataFrame.from_records(
        records, columns=["x", "y", "mean", "std", "min", "max", "n", "diverged", "runs"]
    )


def _log_scale(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(finite.size) and bool((finite > 0).all()) and finite.max() / finite.min() > 100


def _log10_positive(values: np.ndarray) -> np.ndarray:
    """log10 of the positive entries; NaN elsewhere (a zero spread has no logarithm)."""
    values = np.asarray(values, dtype=float)
    out = np.full(values.shape, np.nan)
    pos = np.isfinite(values) & (values > 0)
    out[pos] = np.log10(values[pos])
    return out


def _numeric_axis(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _grid(table: pd.DataFrame, xs: list[Any], ys: list[Any], column: str) -> np.ndarray:
    z = np.full((len(ys), len(xs)), np.nan)
    xi = {v: i for i, v in enumerate(xs)}
    yi = {v: i for i, v in enumerate(ys)}
    for row in table.itertuples(index=False):
        z[yi[row.y], xi[row.x]] = getattr(row, column)
    return z


def _hover_text(table: pd.DataFrame, xs: list[Any], ys: list[Any], x: str, y: str, metric: str) -> list:
    text = [["" for _ in xs] for _ in ys]
    xi = {v: i for i, v in enumerate(xs)}
    yi = {v: i for i, v in enumerate(ys)}
    for r in table.itertuples(index=False):
        div = f"<br>diverged: {r.diverged}/{r.runs}" if r.diverged else ""
        text[yi[r.y]][xi[r.x]] = (
            f"{x} = {format_value(r.x)}<br>{y} = {format_value(r.y)}<br>{metric}: {format_value(r.mean)}"
            f" ± {format_value(r.std)} (n = {r.n}){div}"
            f"<br>range {format_value(r.min)} .. {format_value(r.max)}"
        )
    return text


def _cell_labels(table: pd.DataFrame, xs: list[Any], ys: list[Any]) -> list | None:
    if len(xs) * len(ys) > 225:
        return None
    labels = [["" for _ in xs] for _ in ys]
    xi = {v: i for i, v in enumerate(xs)}
    yi = {v: i for i, v in enumerate(ys)}
    for r in table.itertuples(index=False):
        if r.n == 0 and r.diverged:
            labels[yi[r.y]][xi[r.x]] = "div"
        elif r.diverged:
            labels[yi[r.y]][xi[r.x]] = f"{format_value(r.mean)}*"
        else:
            labels[yi[r.y]][xi[r.x]] = format_value(r.mean)
    return labels


def phase_diagram_figure(
    store: RunStore | pd.DataFrame,
    sweep_id: str | None,
    x: str,
    y: str,
    metric: str | Sequence[str],
    *,
    title: str | None = None,
) -> go.Figure:
    """A phase diagram of ``metric`` over swept fields ``x`` and ``y`` of ``sweep_id`` (see the module doc).

    ``store`` may also be a :func:`sweep_frame`. ``metric``: a numeric summary key or a scalar metric name
    (its final value), or several (a dropdown switches between them). Left panel: the mean over the runs
    that share ``(x, y)`` (seeds and any other varying field); right panel: their standard deviation. Cells
    whose runs all diverged are blank and labelled ``div``; a ``*`` marks cells where some diverged.
    """
    frame = store if isinstance(store, pd.DataFrame) else sweep_frame(store, str(sweep_id))
    if frame.empty:
        raise LearndynValueError(f"sweep {sweep_id!r} has no finished runs to draw")
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise LearndynValueError("metric=[] is empty; allowed: one or more metric names")
    xcol, ycol = _field_column(frame, x), _field_column(frame, y)
    xs, ys = _order(frame[xcol].tolist()), _order(frame[ycol].tolist())
    others = [f for f in swept_fields(frame, include_replicates=True) if f not in (x, y)]
    scatter = len(xs) > _MAX_CATEGORIES or len(ys) > _MAX_CATEGORIES
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("mean over runs", "spread: standard deviation over runs"),
        horizontal_spacing=0.14,
    )
    buttons = []
    n_traces = 2
    for k, name in enumerate(metrics):
        table = phase_table(frame, x, y, name)
        log = _log_scale(table["mean"].to_numpy(dtype=float))
        mean = table["mean"].to_numpy(dtype=float)
        spread = table["std"].to_numpy(dtype=float)
        label = f"log10 {name}" if log else name
        visible = k == 0
        if scatter:
            color = np.log10(mean) if log else mean
            hover = [
                f"{x} = {format_value(r.x)}<br>{y} = {format_value(r.y)}<br>{name}: {format_value(r.mean)}"
                f" ± {format_value(r.std)} (n = {r.n})"
                for r in table.itertuples(index=False)
            ]
            for col, values in ((1, color), (2, _log10_positive(spread) if log else spread)):
                fig.add_trace(
                    go.Scatter(
                        x=table["x"],
                        y=table["y"],
                        mode="markers",
                        marker={
                            "color": values,
                            "colorscale": "Viridis",
                            "size": 9,
                            "showscale": True,
                            "colorbar": {
                                "title": label if col == 1 else ("log10 std" if log else "std"),
                                "x": 0.43 if col == 1 else 1.0,
                            },
                        },
                        text=hover,
                        hoverinfo="text",
                        visible=visible,
                        name=name,
                    ),
                    row=1,
                    col=col,
                )
        else:
            xs_lab = [format_value(v) for v in xs]
            ys_lab = [format_value(v) for v in ys]
            zmean = _grid(table, xs, ys, "mean")
            zstd = _grid(table, xs, ys, "std")
            hover = _hover_text(table, xs, ys, x, y, name)
            labels = _cell_labels(table, xs, ys)
            fig.add_trace(
                go.Heatmap(
                    z=np.log10(zmean) if log else zmean,
                    x=xs_lab,
                    y=ys_lab,
                    colorscale="Viridis",
                    colorbar={"title": label, "x": 0.43},
                    customdata=hover,
                    hovertemplate="%{customdata}<extra></extra>",
                    text=labels,
                    texttemplate="%{text}" if labels is not None else None,
                    hoverongaps=False,
                    visible=visible,
                    name=name,
                ),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Heatmap(
                    z=_log10_positive(zstd) if log else zstd,
                    x=xs_lab,
                    y=ys_lab,
                    colorscale="Magma",
                    colorbar={"title": "log10 std" if log else "std", "x": 1.0},
                    customdata=hover,
                    hovertemplate="%{customdata}<extra></extra>",
                    hoverongaps=False,
                    visible=visible,
                    name=f"{name} std",
                ),
                row=1,
                col=2,
            )
        vis = [False] * (n_traces * len(metrics))
        vis[n_traces * k : n_traces * (k + 1)] = [True] * n_traces
        buttons.append({"label": name, "method": "update", "args": [{"visible": vis}]})
    for col in (1, 2):
        fig.update_xaxes(title_text=x, row=1, col=col, type="category" if not scatter else None)
        fig.update_yaxes(title_text=y, row=1, col=col, type="category" if not scatter else None)
        if scatter:
            if _numeric_axis(xs) and _log_scale(np.asarray(xs, dtype=float)):
                fig.update_xaxes(type="log", row=1, col=col)
            if _numeric_axis(ys) and _log_scale(np.asarray(ys, dtype=float)):
                fig.update_yaxes(type="log", row=1, col=col)
    aggregated = f" (aggregated over {', '.join(others)})" if others else ""
    fig.update_layout(
        title=title or f"{metrics[0] if len(metrics) == 1 else 'metric'} over {x} × {y}{aggregated}",
        height=480,
        template="plotly_white",
        margin={"l": 70, "r": 30, "t": 90, "b": 60},
    )
    if len(metrics) > 1:
        fig.update_layout(
            updatemenus=[
                {
                    "type": "dropdown",
                    "buttons": buttons,
                    "x": 1.0,
                    "xanchor": "right",
                    "y": 1.2,
                    "yanchor": "top",
                    "showactive": True,
                }
            ]
        )
    return fig


def _line_figure(frame: pd.DataFrame, x: str, metrics: Sequence[str]) -> go.Figure:
    """One swept field: the metric's mean against it, with the spread as error bars."""
    fig = go.Figure()
    for k, name in enumerate(metrics):
        table = phase_table(frame, x, None, name)
        table = table.set_index("x").loc[_order(table["x"].tolist())].reset_index()
        numeric = _numeric_axis(table["x"].tolist())
        fig.add_trace(
            go.Scatter(
                x=table["x"] if numeric else [format_value(v) for v in table["x"]],
                y=table["mean"],
                error_y={"type": "data", "array": table["std"].fillna(0.0)},
                mode="lines+markers",
                name=name,
                visible=True if k == 0 else "legendonly",
            )
        )
        if numeric and _log_scale(table["x"].to_numpy(dtype=float)):
            fig.update_xaxes(type="log")
        if k == 0 and _log_scale(table["mean"].to_numpy(dtype=float)):
            fig.update_yaxes(type="log")
    fig.update_layout(
        title=f"{metrics[0]} over {x} (mean ± std over runs)",
        xaxis_title=x,
        height=420,
        template="plotly_white",
    )
    return fig


def default_metrics(frame: pd.DataFrame, limit: int = 8) -> list[str]:
    """Metrics worth drawing: loss-like ones first (final test/train losses), then the rest."""
    names = [m for m in metric_columns(frame) if m not in ("steps_done",)]

    def rank(name: str) -> tuple[int, str]:
        low = name.lower()
        if "test" in low and "loss" in low:
            return (0, name)
        if "loss" in low:
            return (1, name)
        if "diverged" in low:
            return (3, name)
        return (2, name)

    return sorted(names, key=rank)[:limit]


def phase_figures(store: RunStore, sweep_id: str, *, max_pairs: int = 3) -> list[go.Figure]:
    """The phase diagrams ``learndyn report <sweep>`` shows: for the first ``max_pairs`` pairs of swept
    fields (seeds aggregated), the loss-like metrics with a dropdown for the others; a line plot when only one
    field (besides the seed) was swept; nothing when none was."""
    frame = sweep_frame(store, sweep_id)
    if frame.empty:
        return []
    fields = swept_fields(frame)
    metrics = default_metrics(frame)
    if not metrics or not fields:
        return []
    if len(fields) == 1:
        return [_line_figure(frame, fields[0], metrics)]
    return [
        phase_diagram_figure(frame, sweep_id, x, y, metrics)
        for x, y in itertools.islice(itertools.combinations(fields, 2), max_pairs)
    ]
