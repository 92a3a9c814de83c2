"""The HTML report of one or more runs (or a sweep): the answer first, then the evidence.

The page, top to bottom:

1. **Verdict** (:mod:`learndyn.report.verdict`): theory-vs-simulation agreement, tolerance and pass
   (reproduction checks without a closed form, such as grokking's, in a table of their own);
   an experiment's own verdict (the optimizer comparison's winners and margins); a sweep's best cell and
   its phase diagrams. It is always the first table on the page.
2. **Figures**: the curated figures of each run -- its experiment's figures (see
   :func:`learndyn.report.hooks.register_figure`), or its theory-vs-simulation overlays -- every axis titled.
3. **Runs**: status, config (the keys that differ, then the shared ones), summary.
4. **All metrics**, folded: one automatic plot per metric group and per array metric, each drawn only when
   opened; metrics with a single value are a table, not a plot.

plotly.js is embedded (``plotlyjs="inline"``, the default: one file that opens offline) or loaded from a
shared file next to the report (``"shared"``). :class:`Report` is the same page as an object: ``save``,
``html`` and ``_repr_html_`` for notebooks.
"""

from __future__ import annotations

import html
import os
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from learndyn import __version__
from learndyn.report.data import RunData, load_runs, plan_sections, points, relabel, safe_key
from learndyn.report.figures import array_figure, ensure_axis_titles, section_figure
from learndyn.report.hooks import figures_for
from learndyn.report.page import Page, esc, plotly_script, render
from learndyn.report.verdict import (
    Verdict,
    agreement_verdict,
    experiment_verdicts,
    status_verdict,
    sweep_verdict,
)
from learndyn.store.runstore import RunStore

MAX_CURATED_RUNS = 8
"""Runs whose curated figures are drawn (a sweep's others are in its phase diagrams)."""


class Report:
    """A report of ``runs`` (run references or sweep ids) in ``store``; see the module docstring.

    ``Report(store, "my-sweep").save("r.html")`` writes the page; in a notebook, a ``Report`` displays
    itself (``_repr_html_``: the page in an iframe, plotly.js inline).
    """

    def __init__(self, store: RunStore, runs: str | Sequence[str], *, title: str | None = None) -> None:
        self.store = store
        self.run_ids = store.resolve_targets(runs)
        # Reads are short (one session to load the series, then one per array/hook query); figures are
        # built without holding the store's lock, so writers in other processes never wait for long.
        self.data = load_runs(store, self.run_ids)
        self.title = title or _default_title(self.data)
        self.page = _build_page(store, self.data)

    @property
    def n_figures(self) -> int:
        return self.page.n_figures

    def html(self, plotlyjs: str = "inline", out_dir: str | os.PathLike[str] | None = None) -> str:
        """The page as a string; ``plotlyjs="shared"`` writes plotly.js into ``out_dir`` (default: cwd)."""
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        meta = (
            f"learndyn {__version__} · store {self.store.path} · generated {generated} · "
            f"{len(self.data)} run{'s' if len(self.data) != 1 else ''} · {self.page.n_figures} figures"
        )
        tag = plotly_script(plotlyjs, Path(out_dir) if out_dir is not None else Path.cwd())
        return render(self.page, self.title, meta, tag)

    def save(self, path: str | os.PathLike[str], *, plotlyjs: str = "inline") -> Path:
        """Write the page to ``path`` (folders created); return the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.html(plotlyjs, out.parent), encoding="utf-8")
        return out

    def _repr_html_(self) -> str:
        page = html.escape(self.html("inline"), quote=True)
        return (
            f'<iframe srcdoc="{page}" style="width:100%;height:720px;border:1px solid #ddd" '
            'sandbox="allow-scripts"></iframe>'
        )


def build_html_report(
    store: RunStore,
    runs: str | Sequence[str],
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
    plotlyjs: str = "inline",
) -> Path:
    """Write the HTML report of ``runs`` (run references or sweep ids) to ``out_path``; return the path.

    ``plotlyjs``: ``"inline"`` (default; the file opens offline on its own) or ``"shared"`` (plotly.js is
    written once next to the report and loaded from there: a small page). See the module docstring.
    """
    return Report(store, runs, title=title).save(out_path, plotlyjs=plotlyjs)


def _default_title(data: Sequence[RunData]) -> str:
    if len(data) == 1:
        return data[0].label
    return f"{len(data)} runs: " + ", ".join(sorted({str(r.info["name"]) for r in data}))


# ------------------------------------------------------------------------------------------------ the page
def _build_page(store: RunStore, data: Sequence[RunData]) -> Page:
    page = Page()
    page.heading("verdict", "Verdict", nav=True)
    _verdict_section(store, data, page)
    _curated_section(store, data, page)
    page.heading("runs", "Runs", nav=True)
    _runs_tables(data, page)
    _automatic_section(store, data, page)
    return page


def _verdict_table(page: Page, verdict: Verdict) -> None:
    page.heading(None, verdict.title, level=3)
    if verdict.headline:
        page.paragraph(verdict.headline)
    page.table(verdict.headers, verdict.rows, cls="ld-verdict", cell_classes=verdict.classes or None)


def _verdict_section(store: RunStore, data: Sequence[RunData], page: Page) -> None:
    from learndyn.report.phase import phase_figures

    shown = 0
    verdicts = [
        agreement_verdict(data),
        agreement_verdict(data, reproduction=True),
        *experiment_verdicts(data),
    ]
    for verdict in verdicts:
        if verdict is not None:
            _verdict_table(page, verdict)
            shown += 1
    for sweep_id in sorted({r.info["sweep_id"] for r in data if r.info.get("sweep_id")}):
        try:
            verdict = sweep_verdict(store, sweep_id)
            figures = phase_figures(store, sweep_id)
        except Exception as exc:  # a broken diagram must not cost the whole report
            message = f"phase diagrams of sweep {sweep_id} failed: {type(exc).__name__}: {exc}"
            warnings.warn(message, stacklevel=3)
            page.note(message)
            continue
        if verdict is not None:
            _verdict_table(page, verdict)
            shown += 1
        if figures:
            page.heading(f"phase-{safe_key(sweep_id)}", f"Phase diagrams: {sweep_id}", level=3)
            for fig in figures:
                page.figure(ensure_axis_titles(fig))
    if not shown:
        _verdict_table(page, status_verdict(data))


def _curated_section(store: RunStore, data: Sequence[RunData], page: Page) -> None:
    """Each run's experiment figures, or its theory-vs-simulation overlays."""
    started = False

    def start() -> None:
        nonlocal started
        if not started:
            page.heading("figures", "Figures", nav=True)
            started = True

    for run in data[:MAX_CURATED_RUNS]:
        figures = curated_figures(store, run, page, start)
        if not figures:
            continue
        start()
        experiment = run.info.get("experiment") or run.info["name"]
        head = str(experiment) if run.label == experiment else f"{experiment} · {run.label}"
        page.heading(f"fig-{run.id[:8]}", head, level=3)
        for fig in figures:
            page.figure(fig)
    if len(data) > MAX_CURATED_RUNS and started:
        page.note(f"curated figures of the first {MAX_CURATED_RUNS} of {len(data)} runs")


def curated_figures(
    store: RunStore, run: RunData, page: Page | None = None, start: Any = None
) -> list[go.Figure]:
    """A run's curated figures, every axis titled: its experiment's figures that hold more than one point,
    else its theory-vs-simulation overlays. A failing figure hook is a warning (and a note on ``page``)."""
    figures = [f for f in _experiment_figures(store, run, page, start) if _points(f) > 1]
    if not figures:
        overlays = [s for s in plan_sections(run.series) if s.kind == "overlay"]
        figures = [section_figure([run], s) for s in overlays if points([run], s.metrics[0]) > 1]
    return [ensure_axis_titles(f) for f in figures]


def _experiment_figures(store: RunStore, run: RunData, page: Page | None, start: Any) -> list[go.Figure]:
    out: list[go.Figure] = []
    for hook in figures_for(run.info.get("experiment")):
        name = getattr(hook, "__name__", repr(hook))
        try:
            out += [f for f in hook(store, run.id) if isinstance(f, go.Figure)]
        except Exception as exc:  # a broken hook must not cost the whole report
            message = f"figure hook {name} failed for {run.label}: {type(exc).__name__}: {exc}"
            warnings.warn(f"report {message}", stacklevel=3)
            if page is not None:
                start()
                page.note(message, cls="error")
    return out


def _points(fig: go.Figure) -> int:
    total = 0
    for trace in fig.data:
        for attr in ("y", "z", "values"):
            value = getattr(trace, attr, None)
            if value is not None:
                total += len(value)
                break
    return total


def _varying(runs: Sequence[RunData]) -> list[str]:
    """Config keys every run has that take more than one value among them (``seed`` has its own column)."""
    common = set.intersection(*(set(r.info["config"]) for r in runs)) if runs else set()
    return [k for k in sorted(common) if k != "seed" and len({repr(r.info["config"][k]) for r in runs}) > 1]


def _runs_tables(data: Sequence[RunData], page: Page) -> None:
    varying = _varying(data)
    head = ["run", "id", "experiment", "status", "started (UTC)", "duration", "seed", "sweep", "git commit"]
    rows = []
    for r in data:
        info = r.info
        started = info["started_at"].strftime("%Y-%m-%d %H:%M:%S") if info.get("started_at") else ""
        rows.append(
            [r.label, r.id[:8], info.get("experiment"), info["status"], started, _duration(info),
             info.get("seed"), info.get("sweep_id") or "", (info.get("git_commit") or "")[:12]]
            + [info["config"][k] for k in varying]
        )
    classes = [[None, None, None, f"status-{row[3]}"] + [None] * (len(row) - 4) for row in rows]
    page.table(head + varying, rows, cell_classes=classes)
    for r in data:
        if r.info.get("error"):
            page.raw(f'<p class="error"><b>{esc(r.label)}</b>: {esc(r.info["error"])}</p>')
    groups: dict[str, list[RunData]] = {}
    for r in data:
        groups.setdefault(str(r.info.get("experiment") or r.info["name"]), []).append(r)
    for experiment, runs in groups.items():
        runs = relabel(runs)
        count = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
        with page.fold(f"Config and summary: {experiment} ({count})", open_=len(groups) == 1):
            differ = _varying(runs)
            keys = sorted({k for r in runs for k in r.info["config"]} - set(differ) - {"seed"})
            if keys:
                page.table(["config key", "value"], [[k, runs[0].info["config"].get(k)] for k in keys])
            if differ:
                table = [[r.label] + [r.info["config"][k] for k in differ] for r in runs]
                page.table(["run", *differ], table)
            summary_keys = sorted({k for r in runs for k in r.info["summary"]})
            if summary_keys and len(runs) == 1:
                page.table(["summary", "value"], [[k, runs[0].info["summary"][k]] for k in summary_keys])
            elif summary_keys:
                page.table(["run", *summary_keys],
                           [[r.label] + [r.info["summary"].get(k) for k in summary_keys] for r in runs])


def _duration(info: dict[str, Any]) -> str:
    start, end = info.get("started_at"), info.get("ended_at")
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _automatic_section(store: RunStore, data: Sequence[RunData], page: Page, max_runs: int = 8) -> None:
    """Every metric, folded: one plot per section (drawn when opened); single values as a table."""
    names = sorted({n for r in data for n in r.series})
    plotted = [n for n in names if points(data, n) > 1]
    single = [n for n in names if n not in plotted]
    arrays = sorted({n for r in data for n in r.array_names})
    if not names and not arrays:
        page.note("These runs logged no metrics.")
        return
    sections = plan_sections(plotted)
    page.heading("metrics", "All metrics", nav=True)
    page.note(
        f"{len(plotted)} series in {len(sections)} plots, {len(arrays)} array metrics and {len(single)} "
        "single values; open a group to draw it. `learndyn metrics NAME` explains a metric."
    )
    with page.fold(f"All metrics ({len(sections) + len(arrays)} groups)", anchor="all-metrics"):
        for section in sections:
            with page.fold(f"{section.title} ({len(section.metrics)})", anchor=section.key):
                page.figure(section_figure(data, section))
        for name in arrays:
            holders = [r for r in data if name in r.array_names]
            runs_note = f", {len(holders)} runs" if len(holders) > 1 else ""
            with page.fold(f"{name} (array){runs_note}", anchor=f"array-{safe_key(name)}"):
                for run in relabel(holders)[:max_runs]:
                    df = store.arrays(run.id, name)
                    fig = array_figure(run, name, df["step"].to_numpy(), list(df["array"]))
                    if fig is None:
                        page.note(f"{name} of {run.label}: not drawn (one value, or more than 2 dimensions)")
                    else:
                        page.figure(fig)
                if len(holders) > max_runs:
                    page.note(f"{len(holders) - max_runs} more runs with {name} are not drawn")
        if single:
            with page.fold(f"Single values ({len(single)})", anchor="single-values"):
                rows = []
                for r in data:
                    for n in single:
                        if n in r.series:
                            steps, values = r.series[n]
                            rows.append([r.label, n, int(steps[0]), float(values[0])])
                page.table(["run", "metric", "step", "value"], rows)
