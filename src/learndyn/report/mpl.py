"""A plotly figure redrawn with matplotlib, for PNG export of a report's curated figures without a browser.

Covers what learndyn's figures use: scatter traces (lines, markers, dashes, colours, legends), heatmaps,
subplot grids (placed by their axis domains, titled by plotly's subplot-title annotations), axis titles,
log axes, and vertical/horizontal line shapes (``add_vline``/``add_hline``). Other trace types are skipped
with a note in the axes.
"""

from __future__ import annotations

import colorsys
import math
import re
from typing import Any

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

_DASHES = {"dash": "--", "dot": ":", "dashdot": "-.", "longdash": "--", "longdashdot": "-."}


def _color(value: Any) -> Any:
    """A plotly colour (hex, named, ``rgb(...)``, ``rgba(...)``, ``hsl(...)``) as matplotlib RGBA, or None."""
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"\s*hsl\(\s*([\d.]+)\s*,\s*([\d.]+)%\s*,\s*([\d.]+)%\s*\)\s*", value)
    if m:
        h, s, lum = float(m[1]) / 360, float(m[2]) / 100, float(m[3]) / 100
        return (*colorsys.hls_to_rgb(h, lum, s), 1.0)
    m = re.fullmatch(r"\s*rgba?\(([^)]*)\)\s*", value)
    if m:
        parts = [float(p) for p in m[1].split(",")]
        return (parts[0] / 255, parts[1] / 255, parts[2] / 255, parts[3] if len(parts) > 3 else 1.0)
    try:
        return to_rgba(value)
    except ValueError:
        return None


def _axis_name(ref: str) -> str:
    """``"x2"`` -> ``"xaxis2"``."""
    return f"{ref[0]}axis{ref[1:]}"


def _domain(axis: Any) -> tuple[float, float]:
    dom = axis.domain if axis is not None and axis.domain is not None else (0.0, 1.0)
    return float(dom[0]), float(dom[1])


def _text(obj: Any) -> str:
    title = getattr(obj, "title", None)
    text = getattr(title, "text", None) if title is not None else None
    return re.sub(r"<[^>]+>", " ", text) if text else ""


def to_matplotlib(fig: Any) -> Figure:
    """``fig`` (a plotly ``Figure``) drawn on a matplotlib ``Figure`` (one axes per plotly subplot)."""
    layout = fig.layout
    pairs = list(dict.fromkeys((t.xaxis or "x", t.yaxis or "y") for t in fig.data)) or [("x", "y")]

    def place(pair: tuple[str, str]) -> tuple[float, float]:
        (x0, _), (_, y1) = _domain(layout[_axis_name(pair[0])]), _domain(layout[_axis_name(pair[1])])
        return (-round(y1, 3), round(x0, 3))

    pairs.sort(key=place)
    rows_at = sorted({place(p)[0] for p in pairs})
    cols = max(sum(1 for p in pairs if place(p)[0] == r) for r in rows_at)
    rows = math.ceil(len(pairs) / cols)
    out = Figure(figsize=(6 * cols, 4 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(out.subplots(rows, cols, squeeze=False)).ravel()
    titles = [a for a in (layout.annotations or ()) if a.xref == "paper" and a.yref == "paper" and a.text]
    for ax, (xref, yref) in zip(axes, pairs, strict=False):
        xa, ya = layout[_axis_name(xref)], layout[_axis_name(yref)]
        for trace in fig.data:
            if (trace.xaxis or "x", trace.yaxis or "y") != (xref, yref):
                continue
            _draw(ax, trace)
        for shape in layout.shapes or ():
            if shape.type == "line" and (shape.xref or "x").split(" ")[0] == xref:
                if shape.x0 == shape.x1 and (shape.yref or "").endswith("domain"):
                    ax.axvline(float(shape.x0), color=_color(shape.line.color) or "gray", ls=":", lw=1)
            if shape.type == "line" and (shape.yref or "y").split(" ")[0] == yref:
                if shape.y0 == shape.y1 and (shape.xref or "").endswith("domain"):
                    ax.axhline(float(shape.y0), color=_color(shape.line.color) or "gray", ls="--", lw=1)
        ax.set_xlabel(_text(xa))
        ax.set_ylabel(_text(ya))
        if xa.type == "log":
            ax.set_xscale("log")
        if ya.type == "log":
            ax.set_yscale("log")
        (x0, x1), (_, y1) = _domain(xa), _domain(ya)
        for a in titles:
            if x0 <= float(a.x) <= x1 and abs(float(a.y) - y1) < 0.06:
                ax.set_title(re.sub(r"<[^>]+>", " ", a.text), fontsize=9)
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    if _text(layout):
        out.suptitle(_text(layout), fontsize=10)
    return out


def _draw(ax: Any, trace: Any) -> None:
    if trace.type in ("scatter", "scattergl"):
        x = np.asarray(trace.x if trace.x is not None else np.arange(len(trace.y)))
        y = np.asarray(trace.y, dtype=float)
        mode = trace.mode or "lines"
        line = trace.line
        style = {
            "color": (_color(line.color) if line is not None else None)
            or (_color(trace.marker.color) if "markers" in mode and trace.marker is not None else None),
            "ls": _DASHES.get(line.dash, "-") if line is not None and line.dash else "-",
            "marker": "o" if "markers" in mode else None,
            "ms": 3,
            "lw": (line.width or 1.5) * 0.8 if line is not None else 1.2,
            "label": trace.name if trace.showlegend is not False and trace.name else "_nolegend_",
        }
        if "lines" not in mode:
            style["ls"] = "none"
        ax.plot(x, y, **style)
    elif trace.type == "heatmap":
        z = np.asarray(trace.z, dtype=float)
        if trace.x is not None and trace.y is not None and z.shape == (len(trace.y), len(trace.x)):
            # cells at the given coordinates (on log axes too), not at their indices
            ax.pcolormesh(np.asarray(trace.x, dtype=float), np.asarray(trace.y, dtype=float), z,
                          shading="nearest", cmap="viridis")
        else:
            ax.imshow(z, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    else:
        ax.text(0.5, 0.5, f"({trace.type} trace not drawn)", transform=ax.transAxes, ha="center")
