"""Report figures of the ``cgd-paper`` experiment, drawn from its logged series (plotly imported on use).

- Rosenbrock trajectories in the plane (seed 0, tuned learning rate, the first starts) over ``log10 f``;
- the average-loss decay per problem: median over seeds (line) and min–max band, log scale, target dashed;
- the participation ratio of the update covariance over training (multiplication), and for full CGD the
  top eigenvalues of the update covariance as fractions of its trace.

Each builder takes ``{metric: (steps, values)}`` (:func:`~learndyn.phenomena._figures.run_series`'s shape);
:func:`cgd_paper_figures` reads them from a stored run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.phenomena._figures import Series, mode_color, run_series

TRAJECTORY_PANELS = ("sgd", "adam", "adabelief", "cgd-diag-a0.5", "cgd-full-a0.5", "cgd-full-a1")


def _labels(series: Series, prefix: str) -> list[str]:
    return list(dict.fromkeys(n[len(prefix):] for n in series if n.startswith(prefix)))


def trajectory_figure(series: Series) -> Any | None:
    """Rosenbrock trajectories of up to six optimizers (one panel each) over the contours of ``log10 f``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    found = list(dict.fromkeys(n.split("/")[1] for n in series if n.startswith("traj/")))
    panels = [o for o in TRAJECTORY_PANELS if o in found] or found[:6]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=panels, horizontal_spacing=0.06,
                        vertical_spacing=0.1)
    gx, gy = np.linspace(-2.2, 2.2, 120), np.linspace(-1.2, 3.2, 120)
    X, Y = np.meshgrid(gx, gy)
    Z = np.log10(100 * (Y - X**2) ** 2 + (1 - X) ** 2 + 1e-3)
    for p, label in enumerate(panels):
        row, col = p // cols + 1, p % cols + 1
        fig.add_trace(go.Contour(x=gx, y=gy, z=Z, showscale=False, colorscale="Greys", opacity=0.5,
                                 contours={"coloring": "lines"}, hoverinfo="skip"), row=row, col=col)
        starts = sorted({int(n.split("/")[2]) for n in series if n.startswith(f"traj/{label}/")})
        for k in starts:
            xs, ys = series.get(f"traj/{label}/{k}/x"), series.get(f"traj/{label}/{k}/y")
            if xs is None or ys is None:
                continue
            fig.add_trace(go.Scatter(x=xs[1], y=ys[1], mode="lines+markers", marker={"size": 3},
                                     line={"color": mode_color(k), "width": 1.5}, showlegend=False,
                                     hovertemplate=f"start {k}<br>x %{{x:.3f}}<br>y %{{y:.3f}}"),
                          row=row, col=col)
        fig.add_trace(go.Scatter(x=[1.0], y=[1.0], mode="markers", marker={"symbol": "star", "size": 10,
                                 "color": "black"}, showlegend=False, hoverinfo="skip"), row=row, col=col)
        fig.update_xaxes(range=[-2.2, 2.2], row=row, col=col)
        fig.update_yaxes(range=[-1.2, 3.2], row=row, col=col)
    fig.update_layout(title="Rosenbrock 2-D: trajectories from random starts (seed 0, tuned lr; ★ minimum)",
                      template="plotly_white", height=340 * rows + 60)
    return fig


def loss_figure(series: Series, problem: str) -> Any | None:
    """Median loss over seeds per optimizer (min–max band) at its tuned lr; the target dashed."""
    import plotly.graph_objects as go

    labels = _labels(series, f"loss/{problem}/")
    if not labels:
        return None
    fig = go.Figure()
    for i, label in enumerate(labels):
        color = mode_color(i)
        lo, hi = series.get(f"loss_min/{problem}/{label}"), series.get(f"loss_max/{problem}/{label}")
        if lo is not None and hi is not None and lo[0].size == hi[0].size:
            fig.add_trace(go.Scatter(x=np.concatenate([lo[0], hi[0][::-1]]),
                                     y=np.concatenate([lo[1], hi[1][::-1]]), fill="toself", opacity=0.15,
                                     line={"width": 0, "color": color}, showlegend=False, hoverinfo="skip",
                                     legendgroup=label))
        steps, values = series[f"loss/{problem}/{label}"]
        dash = "solid" if label.startswith("cgd-full") else ("dot" if label.startswith("cgd") else "dash")
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=label, legendgroup=label,
                                 line={"color": color, "width": 2, "dash": dash}))
    target = series.get(f"target/{problem}")
    if target is not None and target[1].size:
        fig.add_hline(y=float(target[1][-1]), line_dash="dash", line_color="gray", annotation_text="target")
    what = "average loss over starts" if problem == "rosenbrock" else "full loss"
    fig.update_yaxes(type="log", title_text=what)
    fig.update_layout(title=f"{problem}: {what}, median over seeds (band: min–max), each at its tuned lr",
                      xaxis_title="step", template="plotly_white")
    return fig


def subspace_figure(series: Series, problem: str = "multiplication") -> Any | None:
    """PR of the update covariance per optimizer; top eigenvalue fractions of full CGD."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = _labels(series, f"pr/{problem}/")
    if not labels:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "PR (Σλ)²/Σλ² of EMA[Δq Δqᵀ] (dash-dot: of full CGD's S)", "full CGD: top eigenvalues λ_k / tr C"))
    for i, label in enumerate(labels):
        steps, values = series[f"pr/{problem}/{label}"]
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=label,
                                 line={"color": mode_color(i), "width": 2.5 if "full" in label else 1.2}),
                      row=1, col=1)
        metric = series.get(f"metric_pr/{problem}/{label}")
        if metric is not None:
            fig.add_trace(go.Scatter(x=metric[0], y=metric[1], mode="lines", name=f"{label}: PR of S",
                                     line={"color": mode_color(i), "width": 1.5, "dash": "dashdot"}),
                          row=1, col=1)
        for j, dash in enumerate(("solid", "dash", "dot"), start=1):
            eig = series.get(f"eig{j}/{problem}/{label}")
            if eig is not None:
                fig.add_trace(go.Scatter(x=eig[0], y=eig[1], mode="lines", name=f"{label} λ{j}",
                                         line={"color": mode_color(i), "dash": dash}, showlegend=False),
                              row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=f"{problem}: the update subspace over training (median over seeds, tuned lr)",
                      template="plotly_white")
    return fig


def figures_from_series(series: Series) -> list[Any]:
    """Every figure the series allow, in report order."""
    out = [trajectory_figure(series), loss_figure(series, "rosenbrock"),
           loss_figure(series, "multiplication"), subspace_figure(series)]
    return [f for f in out if f is not None]


def cgd_paper_figures(store: Any, run_id: str) -> list[Any]:
    """The report figures of a stored ``cgd-paper`` run."""
    return figures_from_series(
        run_series(store, run_id, ["traj/*", "loss/*", "loss_min/*", "loss_max/*", "target/*", "pr/*",
                                   "metric_pr/*", "eig*"])
    )
