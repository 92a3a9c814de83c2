"""What a report shows, independent of how it is drawn: runs loaded from the store and sections of metrics.

Both the plotly HTML report and the matplotlib PNG figures use :func:`load_runs` and :func:`plan_sections`, so
they group metrics the same way:

- **loss**: every metric under ``loss/`` or whose last name component contains ``loss`` (outside
  ``theory/``, ``sim/``, ``symmetry/``), on one plot;
- **theory vs simulation**: ``theory/<q>`` and ``sim/<q>`` drawn together, one plot per quantity ``q``;
- **conserved quantities**: ``symmetry/*`` drawn as drift from their first value;
- **groups**: every other metric grouped by its prefix (``noise/*``, ``curvature/*``; unprefixed ones under
  ``training``), one panel per metric.

Several runs overlay per metric, one colour per run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

from learndyn.store.runstore import RunStore

SectionKind = Literal["loss", "overlay", "group", "drift"]


@dataclass(frozen=True)
class Section:
    """One figure's worth of metrics. ``key`` is a file-name/anchor-safe identifier."""

    kind: SectionKind
    title: str
    key: str
    metrics: tuple[str, ...]


@dataclass
class RunData:
    """One run as a report needs it: its store row, its scalar series and the names of its array metrics."""

    id: str
    label: str
    info: dict[str, Any]
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    array_names: list[str] = field(default_factory=list)


def safe_key(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9_-]`` (for file names and HTML anchors)."""
    out = "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")
    return out or "x"


def format_value(value: Any) -> str:
    """Short display of a config/summary/metric value: floats with 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def _prefix(name: str) -> str | None:
    return name.split("/", 1)[0] if "/" in name else None


def _is_loss(name: str) -> bool:
    return _prefix(name) == "loss" or "loss" in name.rsplit("/", 1)[-1].lower()


def plan_sections(names: Iterable[str]) -> list[Section]:
    """Group metric names into report sections (see the module docstring for the rules), in display order."""
    names = sorted(set(names))
    quantities = sorted({n.split("/", 1)[1] for n in names if _prefix(n) in ("theory", "sim") and "/" in n})
    special = {"theory", "sim", "symmetry"}
    loss = [n for n in names if _prefix(n) not in special and _is_loss(n)]
    sections: list[Section] = []
    if loss:
        sections.append(Section("loss", "Loss", "loss", tuple(loss)))
    for q in quantities:
        members = tuple(m for m in (f"theory/{q}", f"sim/{q}") if m in names)
        sections.append(Section("overlay", f"Theory vs simulation: {q}", f"theory-{safe_key(q)}", members))
    groups: dict[str, list[str]] = {}
    for n in names:
        if n in loss or _prefix(n) in ("theory", "sim"):
            continue
        groups.setdefault(_prefix(n) or "training", []).append(n)
    ordered = sorted(groups, key=lambda g: (g != "training", g))
    for g in ordered:
        if g == "symmetry":
            sections.append(
                Section(
                    "drift",
                    "Conserved quantities (drift from the initial value)",
                    "symmetry",
                    tuple(groups[g]),
                )
            )
        else:
            title = "Training" if g == "training" else f"{g}/*"
            sections.append(Section("group", title, f"group-{safe_key(g)}", tuple(groups[g])))
    return sections


def run_labels(infos: Sequence[dict[str, Any]]) -> list[str]:
    """Distinct, readable labels of the runs shown together: only what tells them apart.

    The run name when the names differ; for runs that share a name, up to three config keys that all of
    them have and that take more than one value among them (keys of other experiments never appear); the
    short id when that still leaves two labels equal.
    """
    if not infos:
        return []
    names_differ = len({info["name"] for info in infos}) > 1
    groups: dict[str, list[dict[str, Any]]] = {}
    for info in infos:
        groups.setdefault(str(info["name"]), []).append(info)
    varying: dict[str, list[str]] = {}
    for name, group in groups.items():
        common = set.intersection(*(set(info["config"]) for info in group))
        varying[name] = [
            k for k in sorted(common) if len({repr(info["config"][k]) for info in group}) > 1
        ][:3]
    labels = []
    for info in infos:
        keys = varying[str(info["name"])]
        parts = [str(info["name"])] if names_differ or not keys else []
        parts += [f"{k}={format_value(info['config'][k])}" for k in keys]
        labels.append(" ".join(parts))
    if len(set(labels)) < len(labels):
        labels = [f"{lab} [{info['id'][:6]}]" for lab, info in zip(labels, infos, strict=True)]
    return labels


def relabel(runs: Sequence[RunData]) -> list[RunData]:
    """``runs`` with labels that name only what differs between these runs (see :func:`run_labels`)."""
    labels = run_labels([r.info for r in runs])
    return [dataclasses.replace(r, label=lab) for r, lab in zip(runs, labels, strict=True)]


def points(runs: Sequence[RunData], name: str) -> int:
    """The most points any of ``runs`` has for the scalar metric ``name``."""
    return max((len(r.series[name][0]) for r in runs if name in r.series), default=0)


def load_runs(store: RunStore, run_ids: Sequence[str]) -> list[RunData]:
    """Load the runs' rows, scalar series and array names (one read session)."""
    from learndyn.progress import progress_bar

    with store.reading():
        infos = [store.run_info(r) for r in run_ids]
        labels = run_labels(infos)
        runs = [RunData(info["id"], label, info) for info, label in zip(infos, labels, strict=True)]
        with progress_bar(len(runs), "loading runs") as advance:
            for run in runs:
                df = store.metrics(run.id)
                for name, part in df.groupby("name", sort=True):
                    run.series[str(name)] = (part["step"].to_numpy(np.int64), part["value"].to_numpy(float))
                run.array_names = list(store.array_names(run.id)["name"])
                advance()
    return runs


def thin(steps: np.ndarray, values: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point (and the last) so a series has at most ~``max_points`` points for drawing."""
    n = len(steps)
    if n <= max_points:
        return steps, values
    idx = np.arange(0, n, math.ceil(n / max_points))
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return steps[idx], values[idx]


def drift(values: np.ndarray) -> np.ndarray:
    """``values - values[first finite]``: how far a conserved quantity moved from where it started."""
    finite = np.flatnonzero(np.isfinite(values))
    if not len(finite):
        return values
    return values - values[finite[0]]


def use_log_scale(values: Iterable[np.ndarray]) -> bool:
    """Log scale when every finite value is positive and they span more than two decades."""
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if len(v)]
    if not finite:
        return False
    allv = np.concatenate(finite)
    return bool(allv.min() > 0 and allv.max() / allv.min() > 100)


def array_matrix(
    steps: np.ndarray, stacked: np.ndarray, max_steps: int = 300, max_rows: int = 400
) -> tuple[np.ndarray, np.ndarray, bool]:
    """For 1-d arrays over time: ``(steps, z[index, step], log)``, thinned; ``log``: ``z`` is in log10."""
    if stacked.shape[0] > max_steps:
        idx = np.linspace(0, stacked.shape[0] - 1, max_steps).round().astype(int)
        steps, stacked = steps[idx], stacked[idx]
    if stacked.shape[1] > max_rows:
        stacked = stacked[:, np.linspace(0, stacked.shape[1] - 1, max_rows).round().astype(int)]
    z = np.asarray(stacked, dtype=float).T
    log = use_log_scale([z])
    if log:
        z = np.log10(z)
    return steps, z, log
