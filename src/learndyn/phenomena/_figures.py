"""Plotting helpers the phenomena's report figures share (plotly is imported when a figure is drawn).

A phenomenon logs its simulated series as ``sim/<quantity>`` and, where it has one, the closed form as
``theory/<quantity>``; :func:`sim_theory_traces` draws the pair, simulation solid and theory dashed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Series = dict[str, tuple[np.ndarray, np.ndarray]]


def run_series(store: Any, run_id: str, names: list[str]) -> Series:
    """``{metric name: (steps, values)}`` of a stored run's metrics matching ``names`` (globs allowed)."""
    df = store.metrics(run_id, names)
    return {name: (g["step"].to_numpy(), g["value"].to_numpy(dtype=float)) for name, g in df.groupby("name")}


def mode_color(k: int) -> str:
    """A colour per mode index ``k``, well apart for neighbouring ``k``."""
    return f"hsl({(k * 67) % 360},70%,45%)"


def sim_theory_traces(series: Series, quantity: str, label: str, **line: Any) -> list[Any]:
    """Line traces of ``sim/<quantity>`` (solid) and ``theory/<quantity>`` (dashed), those in ``series``,
    named ``<label> (sim)`` / ``<label> (theory)``; ``line`` adds line properties (e.g. ``color``)."""
    import plotly.graph_objects as go

    traces = []
    for kind, dash in (("sim", "solid"), ("theory", "dash")):
        if f"{kind}/{quantity}" in series:
            x, y = series[f"{kind}/{quantity}"]
            style = {**line, "dash": dash, "width": 2}
            traces.append(go.Scatter(x=x, y=y, mode="lines", name=f"{label} ({kind})", line=style))
    return traces
