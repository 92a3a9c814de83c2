"""The self-contained HTML report of one or more runs (or a sweep): plotly.js inlined, no network needed."""

from __future__ import annotations

import html
import os
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.offline

from learndyn import __version__
from learndyn.report.data import RunData, format_value, load_runs, plan_sections, safe_key
from learndyn.report.figures import array_figure, run_color, section_figure
from learndyn.report.hooks import figures_for
from learndyn.store.runstore import RunStore

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; font-size: 0.9rem; }
nav { margin: 1rem 0; font-size: 0.9rem; } nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-completed { color: #1a7f37; } .status-failed, .status-diverged { color: #c62828; }
.status-interrupted, .status-running { color: #b26a00; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; border-radius: 2px; }
.ld-figure { margin: 0.5rem 0 1.5rem; } .note { color: #666; font-style: italic; }
.error { color: #c62828; white-space: pre-wrap; }
"""

# Collects script errors on the page (read by the browser test; harmless otherwise).
_ERROR_TRAP = (
    "window.__ldErrors = []; window.addEventListener('error', function (e) "
    "{ window.__ldErrors.push(String(e.message)); });"
)


def _esc(value: Any) -> str:
    return html.escape(format_value(value))


def _td(value: Any) -> str:
    cls = ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""
    return f"<td{cls}>{_esc(value)}</td>"


def _duration(info: dict[str, Any]) -> str:
    start, end = info.get("started_at"), info.get("ended_at")
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _summary_tables(runs: Sequence[RunData]) -> str:
    out = []
    keys = sorted({k for r in runs for k in r.info["config"]})
    varying = [k for k in keys if len({repr(r.info["config"].get(k)) for r in runs}) > 1]
    shared = [k for k in keys if k not in varying]
    head = ["run", "id", "experiment", "status", "started (UTC)", "duration", "seed", "sweep", "git commit"]
    out.append("<h3>Runs</h3><table><tr>" + "".join(f"<th>{h}</th>" for h in head + varying) + "</tr>")
    for i, r in enumerate(runs):
        info = r.info
        started = info["started_at"].strftime("%Y-%m-%d %H:%M:%S") if info.get("started_at") else ""
        status = html.escape(str(info["status"]))
        cells = [
            f'<td><span class="swatch" style="background:{run_color(i)}"></span>{html.escape(r.label)}</td>',
            f'<td title="{html.escape(r.id)}"><code>{html.escape(r.id[:8])}</code></td>',
            _td(info.get("experiment")),
            f'<td class="status-{status}">{status}</td>',
            _td(started),
            _td(_duration(info)),
            _td(info.get("seed")),
            _td((info.get("sweep_id") or "")[:12]),
            _td((info.get("git_commit") or "")[:12]),
        ]
        cells += [_td(info["config"].get(k)) for k in varying]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    errors = [(r, r.info.get("error")) for r in runs if r.info.get("error")]
    for r, err in errors:
        out.append(f'<p class="error"><b>{html.escape(r.label)}</b>: {html.escape(str(err))}</p>')
    if shared:
        title = "Config" if len(runs) == 1 else "Shared config"
        out.append(f"<h3>{title}</h3><table><tr><th>key</th><th>value</th></tr>")
        out += [f"<tr><td>{html.escape(k)}</td>{_td(runs[0].info['config'].get(k))}</tr>" for k in shared]
        out.append("</table>")
    summary_keys = sorted({k for r in runs for k in r.info["summary"]})
    if summary_keys:
        out.append("<h3>Summary</h3>")
        if len(runs) == 1:
            summary = runs[0].info["summary"]
            out.append("<table><tr><th>quantity</th><th>value</th></tr>")
            out += [f"<tr><td>{html.escape(k)}</td>{_td(summary[k])}</tr>" for k in summary_keys]
        else:
            out.append(
                "<table><tr><th>run</th>"
                + "".join(f"<th>{html.escape(k)}</th>" for k in summary_keys)
                + "</tr>"
            )
            for r in runs:
                out.append(
                    f"<tr><td>{html.escape(r.label)}</td>"
                    + "".join(_td(r.info["summary"].get(k, "")) for k in summary_keys)
                    + "</tr>"
                )
        out.append("</table>")
    return "\n".join(out)


class _Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.nav: list[tuple[str, str]] = []
        self.n_figures = 0

    def section(self, anchor: str, title: str) -> None:
        self.nav.append((anchor, title))
        self.parts.append(f'<h2 id="{html.escape(anchor)}">{html.escape(title)}</h2>')

    def figure(self, fig: go.Figure) -> None:
        self.n_figures += 1
        height = fig.layout.height or 450
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"ld-fig-{self.n_figures}",
            default_height=f"{height}px",
            config={"displaylogo": False, "responsive": True},
        )
        self.parts.append(f'<div class="ld-figure">{div}</div>')

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')


def build_html_report(
    store: RunStore, runs: str | Sequence[str], out_path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Write one self-contained HTML report of ``runs`` (run references or sweep ids) to ``out_path``.

    Sections: summary tables (config, status, summary scalars), experiment-specific figures (see
    :func:`learndyn.report.hooks.register_figure`), loss, theory-vs-simulation overlays, probe series
    grouped by metric prefix, conserved-quantity drift and array heatmaps. Several runs overlay per metric.
    The page embeds plotly.js, so it opens offline. Returns the written path.
    """
    run_ids = store.resolve_targets(runs)
    # Reads are short (one session to load the series, then one per array/hook query); figures are built
    # without holding the store's lock, so writers in other processes are never kept waiting for long.
    data = load_runs(store, run_ids)
    page = _Page()
    page.section("summary", "Summary")
    page.parts.append(_summary_tables(data))
    _phase_sections(store, data, page)
    _experiment_figures(store, data, page)
    names = sorted({n for r in data for n in r.series})
    for section in plan_sections(names):
        page.section(section.key, section.title)
        page.figure(section_figure(data, section))
    _array_sections(store, data, page)
    if not names and page.n_figures == 0:
        page.note("These runs logged no metrics.")
    if title is None:
        title = (
            data[0].label
            if len(data) == 1
            else f"{len(data)} runs: " + ", ".join(sorted({r.info["name"] for r in data}))
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_render(page, title, store), encoding="utf-8")
    return out


def _phase_sections(store: RunStore, data: Sequence[RunData], page: _Page) -> None:
    """Phase diagrams (learndyn.report.phase) of every sweep among the runs."""
    from learndyn.report.phase import phase_figures

    for sweep_id in sorted({r.info["sweep_id"] for r in data if r.info.get("sweep_id")}):
        try:
            figures = phase_figures(store, sweep_id)
        except Exception as exc:  # a broken diagram must not cost the whole report
            message = f"phase diagrams of sweep {sweep_id} failed: {type(exc).__name__}: {exc}"
            warnings.warn(message, stacklevel=2)
            page.note(message)
            continue
        if figures:
            page.section(f"phase-{safe_key(sweep_id)}", f"Phase diagrams: {sweep_id}")
            for fig in figures:
                page.figure(fig)


def _experiment_figures(store: RunStore, data: Sequence[RunData], page: _Page) -> None:
    started = False
    for run in data:
        for hook in figures_for(run.info.get("experiment")):
            try:
                figures = list(hook(store, run.id))
            except Exception as exc:  # a broken hook must not cost the whole report
                warnings.warn(
                    f"report figure hook {getattr(hook, '__name__', hook)} failed for run "
                    f"{run.id[:8]}: {type(exc).__name__}: {exc}",
                    stacklevel=2,
                )
                if not started:
                    page.section("experiment", "Experiment figures")
                    started = True
                page.note(
                    f"figure hook {getattr(hook, '__name__', hook)} failed for {run.label}: "
                    f"{type(exc).__name__}: {exc}"
                )
                continue
            for fig in figures:
                if not started:
                    page.section("experiment", "Experiment figures")
                    started = True
                if len(data) > 1 and isinstance(fig, go.Figure):
                    fig.update_layout(title=f"{fig.layout.title.text or ''} — {run.label}")
                page.figure(fig)


def _array_sections(store: RunStore, data: Sequence[RunData], page: _Page, max_runs: int = 8) -> None:
    names = sorted({n for r in data for n in r.array_names})
    for name in names:
        page.section(f"array-{safe_key(name)}", f"{name} (array)")
        holders = [r for r in data if name in r.array_names]
        for run in holders[:max_runs]:
            df = store.arrays(run.id, name)
            fig = array_figure(run, name, df["step"].to_numpy(), list(df["array"]))
            if fig is None:
                page.note(f"{name} of {run.label}: arrays with more than 2 dimensions are not drawn")
            else:
                page.figure(fig)
        if len(holders) > max_runs:
            page.note(f"{len(holders) - max_runs} more runs with {name} are not drawn")


def _render(page: _Page, title: str, store: RunStore) -> str:
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for a, t in page.nav)
    body = "\n".join(page.parts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} — learndyn report</title>
<style>{_CSS}</style>
<script>{_ERROR_TRAP}</script>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">learndyn {__version__} · store {html.escape(str(store.path))} · generated {generated}
 · {page.n_figures} figures</p>
<nav>{nav}</nav>
{body}
</body>
</html>
"""
