"""The grokking experiment's report: the reproduction-check verdict and the figures (split from
:mod:`learndyn.phenomena.grokking` so that module holds the experiment only)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from learndyn.phenomena._figures import run_series


def grokking_verdict(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The reproduction check a report opens with: test accuracy, the delay and the Fourier concentration
    (top-k fraction of the input table's spectrum) from initialisation through memorisation to the end."""
    if "final_test_acc" not in summary:
        return []
    tolerance = summary.get("tolerance", math.nan)
    min_delay = summary.get("min_delay_ratio", math.nan)

    def row(quantity: str, value: Any, needed: str = "") -> dict[str, Any]:
        return {"reproduction check": quantity, "measured": value, "needed": needed}

    keys = ("fourier_topk_init", "fourier_topk_memorised", "fourier_topk_final")
    topk = [float(summary.get(k, math.nan)) for k in keys]
    return [
        row("final test accuracy", summary["final_test_acc"], f"≥ {1 - tolerance:g}"),
        row("memorisation step (train acc)", summary.get("memorisation_step")),
        row("grokking step (test acc)", summary.get("grokking_step")),
        row("delay ratio (grokking / memorisation)", summary.get("delay_ratio"),
            f"≥ {(1 - tolerance) * min_delay:g}"),
        row("Fourier concentration (top-k): init → memorised → final", " → ".join(f"{v:.2f}" for v in topk)),
        row("shortfall", summary.get("agreement"), f"≤ {tolerance:g}"),
    ]


# ------------------------------------------------------------------------------------------ report figures
def _mark(fig: Any, step: float, label: str | None, color: str, dash: str, row: int | None = None) -> None:
    """A vertical line at ``step`` on a log-step axis, labelled at the top (annotations on a log axis take
    ``log10`` of the position; shapes take the value itself)."""
    where = {"row": row, "col": 1} if row is not None else {}
    fig.add_vline(x=step, line_dash=dash, line_color=color, **where)
    if label:
        fig.add_annotation(x=math.log10(step), y=1.0, yref="y domain", text=label, showarrow=False,
                           font={"color": color, "size": 11}, textangle=-90, xanchor="right",
                           yanchor="top", **where)


def grokking_figures(store: Any, run_id: str) -> list[Any]:
    """Report figures: accuracy and loss on a log-step axis with the phase markers; Fourier concentration and
    weight norm over time; the embedding's final Fourier spectrum (beside the initial one)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    series = run_series(store, run_id, ["train/*", "test/*", "fourier/*", "params/norm"])
    summary = store.run_info(run_id)["summary"] or {}

    def positive(name: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = series.get(name, (np.array([]), np.array([])))
        keep = x > 0  # a log-step axis
        return x[keep], y[keep]

    markers = [
        ("memorisation_step", "memorised", "royalblue"),
        ("cleanup_start_step", "cleanup", "darkorange"),
        ("grokking_step", "grokked", "firebrick"),
    ]
    curves = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for row, quantity in ((1, "acc"), (2, "loss")):
        for split, color in (("train", "royalblue"), ("test", "firebrick")):
            x, y = positive(f"{split}/{quantity}")
            curves.add_trace(
                go.Scatter(x=x, y=y, mode="lines", name=f"{split} {quantity}", line={"color": color}),
                row=row, col=1,
            )
    def step_of(key: str) -> float | None:
        value = summary.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok and value > 0 else None

    for key, label, color in markers:
        if (step := step_of(key)) is not None:
            for row in (1, 2):
                _mark(curves, step, label if row == 1 else None, color, "dot", row=row)
    if (step := step_of("stages/test_loss/drop")) is not None:
        _mark(curves, step, None, "gray", "dash", row=2)
    curves.update_xaxes(type="log", title_text="step", row=2, col=1)
    curves.update_xaxes(type="log", row=1, col=1)
    curves.update_yaxes(title_text="accuracy", row=1, col=1)
    curves.update_yaxes(type="log", title_text="cross-entropy", row=2, col=1)
    curves.update_layout(
        title="Grokking: train/test accuracy and loss (dotted: memorisation, cleanup start, grokking; "
        "dashed: the detected test-loss drop)",
        template="plotly_white",
        height=620,
    )

    fourier = make_subplots(specs=[[{"secondary_y": True}]])
    for name, label, dash in (
        ("fourier/embed_topk", "embedding top-k fraction", "solid"),
        ("fourier/embed_gini", "embedding Gini", "dot"),
        ("fourier/unembed_topk", "unembedding top-k fraction", "dash"),
    ):
        x, y = positive(name)
        fourier.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, line={"dash": dash}),
                          secondary_y=False)
    x, y = positive("params/norm")
    fourier.add_trace(go.Scatter(x=x, y=y, mode="lines", name="weight norm ‖θ‖", line={"color": "gray"}),
                      secondary_y=True)
    for key, label, color in markers:
        if (step := step_of(key)) is not None:
            _mark(fourier, step, label, color, "dot")
    fourier.update_xaxes(type="log", title_text="step")
    fourier.update_yaxes(title_text="Fourier concentration", range=[0, 1.02], secondary_y=False)
    fourier.update_yaxes(title_text="‖θ‖₂", secondary_y=True)
    fourier.update_layout(
        title="Hidden progress: Fourier concentration of the embeddings, and the weight norm",
        template="plotly_white",
    )
    figures = [curves, fourier]

    arrays = store.arrays(run_id, "fourier/embed_spectrum")
    if len(arrays):
        spectrum = go.Figure()
        for idx, label, opacity in ((0, "initial", 0.35), (len(arrays) - 1, "final", 1.0)):
            s = np.asarray(arrays["array"].iloc[idx], dtype=float)
            spectrum.add_trace(go.Bar(x=np.arange(1, s.size + 1), y=s, opacity=opacity,
                                      name=f"{label} (step {int(arrays['step'].iloc[idx])})"))
        spectrum.update_layout(
            title="Embedding power per frequency k (DFT over tokens, k and p−k combined, k = 0 left out)",
            xaxis_title="frequency k",
            yaxis_title="share of power",
            barmode="overlay",
            template="plotly_white",
        )
        figures.append(spectrum)
    return figures
