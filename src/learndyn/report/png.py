"""Static PNG figures of a run for papers (matplotlib on an Agg canvas; pyplot's global state is not used).

The curated figures (the experiment's own, or its theory-vs-simulation overlays: what the HTML report shows
under "Figures") are redrawn from their plotly form (:mod:`learndyn.report.mpl`); the automatic ones are
drawn directly, every panel with a y label (its unit from the glossary), at most :data:`PANELS` panels per
file, and metrics with a single value left out.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from learndyn.glossary import axis_title
from learndyn.report.data import (
    RunData,
    Section,
    array_matrix,
    drift,
    load_runs,
    plan_sections,
    points,
    safe_key,
    thin,
)
from learndyn.report.data import use_log_scale as _use_log
from learndyn.report.figures import unit_title
from learndyn.store.runstore import RunStore

_DPI = 150
PANELS = 8
"""Panels per PNG of a metric group (more go to ``<group>-2.png``, ...)."""


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _section_png(run: RunData, section: Section, path: Path) -> Path:
    names = [n for n in section.metrics if n in run.series]
    if section.kind in ("loss", "overlay"):
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for name in names:
            x, y = thin(*run.series[name], max_points=5000)
            if section.kind == "overlay":
                theory = name.startswith("theory/")
                ax.plot(
                    x,
                    y,
                    "--" if theory else "-",
                    lw=2.5 if theory else 1.2,
                    label="theory" if theory else "simulation",
                    zorder=3 if theory else 2,
                )
            else:
                ax.plot(x, y, lw=1.2, label=name)
        if section.kind == "loss" and _use_log([run.series[n][1] for n in names]):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss [L]" if section.kind == "loss" else axis_title(names[0]).split("/", 1)[-1])
        ax.set_title(section.title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    else:
        cols = 1 if len(names) == 1 else 2
        rows = math.ceil(len(names) / cols)
        fig = Figure(figsize=(5 * cols, 2.8 * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, name in zip(axes, names, strict=False):
            x, y = run.series[name]
            if section.kind == "drift":
                y = drift(y)
            x, y = thin(x, y, max_points=5000)
            ax.plot(x, y, lw=1.2)
            ax.set_title(name, fontsize=9)
            label = unit_title(name)
            ax.set_ylabel(label.replace("value", "value − initial", 1) if section.kind == "drift" else label)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        fig.suptitle(section.title)
    return _save(fig, path)


def _array_png(store: RunStore, run: RunData, name: str, path: Path) -> Path | None:
    df = store.arrays(run.id, name)
    arrays = [np.asarray(a, float) for a in df["array"]]
    steps = df["step"].to_numpy()
    if not arrays or arrays[-1].ndim not in (1, 2):
        return None
    if arrays[-1].ndim == 1:
        stacked = np.full((len(arrays), max(a.shape[0] for a in arrays)), np.nan)
        for k, a in enumerate(arrays):
            stacked[k, : a.shape[0]] = a
        x, z, log = array_matrix(steps, stacked)
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        mesh = ax.pcolormesh(x, np.arange(z.shape[0]), z, shading="nearest", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="log10 value" if log else "value")
        ax.set_xlabel("step")
        ax.set_ylabel("index")
        ax.set_title(name)
    else:
        fig = Figure(figsize=(9, 4), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax in axes:
            ax.set_xlabel("column")
            ax.set_ylabel("row")
        lo = min(np.nanmin(arrays[0]), np.nanmin(arrays[-1]))
        hi = max(np.nanmax(arrays[0]), np.nanmax(arrays[-1]))
        for ax, mat, step in ((axes[0], arrays[0], steps[0]), (axes[1], arrays[-1], steps[-1])):
            im = ax.imshow(mat, vmin=lo, vmax=hi, cmap="RdBu_r")
            ax.set_title(f"{name}, step {step}", fontsize=9)
        fig.colorbar(im, ax=axes, shrink=0.8)
    return _save(fig, path)


def save_png_figures(store: RunStore, run_id: str, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write PNGs of a run into ``out_dir``; return the paths.

    File names: ``figure-<k>-<title>.png`` (the curated figures, as in the HTML report), ``loss.png``,
    ``theory-<q>.png``, ``group-<prefix>.png`` (``-2``, ``-3``, ... beyond :data:`PANELS` panels),
    ``symmetry.png``, ``array-<name>.png``.
    """
    from learndyn.report.html import curated_figures
    from learndyn.report.mpl import to_matplotlib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    (run,) = load_runs(store, [store.resolve(run_id)])  # the store is read, then released while drawing
    for k, fig in enumerate(curated_figures(store, run), start=1):
        slug = re.sub("-+", "-", safe_key((fig.layout.title.text or "")[:40]).lower())
        written.append(_save(to_matplotlib(fig), out / f"figure-{k}{'-' + slug if slug != 'x' else ''}.png"))
    plotted = [n for n in run.series if points([run], n) > 1]
    for section in plan_sections(plotted):
        chunks = [section.metrics[i : i + PANELS] for i in range(0, len(section.metrics), PANELS)]
        for i, chunk in enumerate(chunks):
            part = Section(section.kind, section.title, section.key, tuple(chunk))
            name = section.key if i == 0 else f"{section.key}-{i + 1}"
            written.append(_section_png(run, part, out / f"{name}.png"))
    for name in run.array_names:
        path = _array_png(store, run, name, out / f"array-{safe_key(name)}.png")
        if path is not None:
            written.append(path)
    return written
