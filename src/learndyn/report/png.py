"""Static PNG figures of a run for papers (matplotlib on an Agg canvas; pyplot's global state is not used)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from learndyn.report.data import (
    RunData,
    Section,
    array_matrix,
    drift,
    load_runs,
    plan_sections,
    safe_key,
    thin,
)
from learndyn.report.data import use_log_scale as _use_log
from learndyn.store.runstore import RunStore

_DPI = 150


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
        lo = min(np.nanmin(arrays[0]), np.nanmin(arrays[-1]))
        hi = max(np.nanmax(arrays[0]), np.nanmax(arrays[-1]))
        for ax, mat, step in ((axes[0], arrays[0], steps[0]), (axes[1], arrays[-1], steps[-1])):
            im = ax.imshow(mat, vmin=lo, vmax=hi, cmap="RdBu_r")
            ax.set_title(f"{name}, step {step}", fontsize=9)
        fig.colorbar(im, ax=axes, shrink=0.8)
    return _save(fig, path)


def save_png_figures(store: RunStore, run_id: str, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write one PNG per report section of a run (and per array metric) into ``out_dir``; return the paths.

    File names: ``loss.png``, ``theory-<q>.png``, ``group-<prefix>.png``, ``symmetry.png``,
    ``array-<name>.png``.
    Experiment-specific plotly hooks are HTML-only.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    (run,) = load_runs(store, [store.resolve(run_id)])  # the store is read, then released while drawing
    for section in plan_sections(run.series):
        written.append(_section_png(run, section, out / f"{section.key}.png"))
    for name in run.array_names:
        path = _array_png(store, run, name, out / f"array-{safe_key(name)}.png")
        if path is not None:
            written.append(path)
    return written
