"""Notebook display of a stored run: ``Run._repr_html_`` (status, config, summary, last metric values).

Plain escaped HTML tables, no plotting library: the figures are the report's
(``learndyn.report.Report(store, run_id)`` displays itself in a notebook too).
"""

from __future__ import annotations

import html
import math
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        value = f"{value:.4g}"
    return html.escape(str(value), quote=True)


def _table(title: str, rows: list[tuple[Any, ...]], headers: tuple[str, ...]) -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    summary = f"<summary><b>{html.escape(title)}</b></summary>"
    return f"<details open>{summary}<table><tr>{head}</tr>{body}</table></details>"


def run_html(store: Any, run_id: str, max_metrics: int = 40) -> str:
    """An HTML summary of run ``run_id`` of ``store`` (what is durable in the store so far)."""
    with store.reading():
        info = store.run_info(run_id)
        last = store.last_metrics(run_id)
    status = html.escape(str(info["status"]))
    parts = [
        f"<div><p><b>{html.escape(str(info['name']))}</b> <code>{html.escape(info['id'][:8])}</code> · "
        f"{status} · store <code>{html.escape(str(store.path))}</code></p>"
    ]
    if info.get("error"):
        parts.append(f"<p style='color:#c62828'>{html.escape(str(info['error']))}</p>")
    if info["config"]:
        parts.append(_table("config", sorted(info["config"].items()), ("key", "value")))
    if info["summary"]:
        parts.append(_table("summary", sorted(info["summary"].items()), ("quantity", "value")))
    if not last.empty:
        rows = [(r.name, int(r.step), float(r.value)) for r in last.head(max_metrics).itertuples()]
        more = f" (first {max_metrics} of {len(last)})" if len(last) > max_metrics else ""
        parts.append(_table(f"last metric values{more}", rows, ("metric", "step", "value")))
    parts.append("</div>")
    return "".join(parts)
