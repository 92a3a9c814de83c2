"""``learndyn list``, ``show``, ``compare`` and ``report``: commands that read runs from the store.

Registered on the app by :mod:`learndyn.cli.main`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from learndyn.cli.common import (
    PLOTLYJS_MODES,
    CliError,
    OpenOption,
    PlotlyjsOption,
    StoreOption,
    console,
    fmt,
    kv_table,
    open_in_browser,
    open_store,
    rows_table,
)

__all__ = ["compare", "list_runs", "report", "show"]


def list_runs(
    store: StoreOption = None,
    name: Annotated[str | None, typer.Option("--name", help="Only runs of this name.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only runs with this status.")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Only runs of this sweep id.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Show the newest N runs.")] = 50,
    sweeps: Annotated[bool, typer.Option("--sweeps", help="List the sweeps instead of the runs.")] = False,
) -> None:
    """List the runs in the store (newest last), or its sweeps with --sweeps."""
    run_store = open_store(store, create=False)
    if sweeps:
        _list_sweeps(run_store)
        return
    total = len(run_store.runs(name=name, status=status, sweep_id=sweep))
    df = run_store.runs(name=name, status=status, sweep_id=sweep, limit=limit)
    if df.empty:
        typer.echo(f"no runs in {run_store.path}")
        return
    rows = []
    for r in df.itertuples():
        duration = ""
        if r.ended_at is not None and not _isna(r.ended_at):
            duration = f"{(r.ended_at - r.started_at).total_seconds():.1f} s"
        rows.append(
            {
                "id": r.id[:8],
                "name": r.name,
                "status": r.status,
                "started (UTC)": r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                "duration": duration,
                "seed": None if _isna(r.seed) else int(r.seed),
                "sweep": "" if _isna(r.sweep_id) else (r.sweep_id or ""),
            }
        )
    shown = f"the newest {len(rows)} of {total}" if total > len(rows) else f"{total}"
    more = " (--limit N shows more)" if total > len(rows) else ""
    console().print(rows_table(rows, title=f"{shown} runs in {run_store.path}{more}"))


def _list_sweeps(run_store: Any) -> None:
    df = run_store.runs()
    df = df[df["sweep_id"].notna() & (df["sweep_id"] != "")]
    if df.empty:
        typer.echo(f"no sweeps in {run_store.path}")
        return
    rows = []
    for sweep_id, group in df.groupby("sweep_id", sort=False):
        counts = group["status"].value_counts()
        rows.append(
            {
                "sweep": sweep_id,
                "experiment": ", ".join(sorted(set(group["name"]))),
                "runs": len(group),
                "statuses": ", ".join(f"{k} {v}" for k, v in counts.items()),
                "started (UTC)": group["started_at"].min().strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
    console().print(rows_table(rows, title=f"{len(rows)} sweeps in {run_store.path}"))


def _isna(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def show(
    run_ref: Annotated[
        str,
        typer.Argument(metavar="RUN|SWEEP", help="Run id, unique id prefix, name (latest), or a sweep id."),
    ],
    store: StoreOption = None,
) -> None:
    """Show one run (status, config, summary, last metric values, arrays), or a sweep's runs."""
    run_store = open_store(store, create=False)
    sweep_runs = run_store.runs(sweep_id=run_ref)
    if not sweep_runs.empty:
        list_runs(store=store, sweep=run_ref, limit=10_000)
        typer.echo(f"`learndyn report {run_ref} --out sweep.html` draws its phase diagrams")
        return
    with run_store.reading():
        info = run_store.run_info(run_store.resolve(run_ref))
        last = run_store.last_metrics(info["id"])
        arrays = run_store.array_names(info["id"])
    out = console()
    meta = [
        ("id", info["id"]),
        ("name", info["name"]),
        ("experiment", info["experiment"]),
        ("status", info["status"]),
        ("started (UTC)", info["started_at"]),
        ("ended (UTC)", info["ended_at"]),
        ("seed", info["seed"]),
        ("sweep", info["sweep_id"]),
        ("git commit", info["git_commit"]),
        ("host / pid", f"{info['host']} / {info['pid']}"),
    ]
    if info.get("error"):
        meta.append(("error", info["error"]))
    out.print(kv_table([(k, v) for k, v in meta if v is not None], f"Run {info['id'][:8]}"))
    if info["config"]:
        out.print(kv_table(info["config"].items(), "Config"))
    if info["summary"]:
        out.print(kv_table(info["summary"].items(), "Summary", ("quantity", "value")))
    if not last.empty:
        rows = [
            {"metric": r.name, "last step": int(r.step), "last value": float(r.value), "points": int(r.count)}
            for r in last.itertuples()
        ]
        out.print(rows_table(rows, title="Metrics"))
    if not arrays.empty:
        rows = [
            {
                "array": r.name,
                "count": int(r.count),
                "steps": f"{r.first_step}..{r.last_step}",
                "shape": r.shape,
            }
            for r in arrays.itertuples()
        ]
        out.print(rows_table(rows, title="Arrays"))


def compare(
    runs: Annotated[list[str], typer.Argument(metavar="RUN RUN...", help="Two or more runs.")],
    store: StoreOption = None,
    all_config: Annotated[bool, typer.Option("--all", help="Also show config keys that are equal.")] = False,
) -> None:
    """Compare runs side by side: config (differing keys), summary and final metric values."""
    if len(runs) < 2:
        raise CliError("compare needs at least two runs")
    run_store = open_store(store, create=False)
    with run_store.reading():
        ids = [run_store.resolve(r) for r in runs]
        infos = [run_store.run_info(i) for i in ids]
        lasts = [dict(zip(df["name"], df["value"], strict=True)) for df in map(run_store.last_metrics, ids)]
    table = Table(title="Comparison", title_justify="left")
    table.add_column("", overflow="fold")
    for info in infos:
        table.add_column(f"{info['name']}\n{info['id'][:8]}", justify="right", overflow="fold")

    def add(label: str, values: list[Any], style: str = "") -> None:
        differ = len({repr(v) for v in values}) > 1
        table.add_row(
            label, *("" if v is None else fmt(v) for v in values), style="bold" if differ else style
        )

    add("status", [i["status"] for i in infos])
    add("seed", [i["seed"] for i in infos])
    config_keys = sorted({k for i in infos for k in i["config"]})
    hidden = 0
    table.add_section()
    for k in config_keys:
        values = [i["config"].get(k) for i in infos]
        if all_config or len({repr(v) for v in values}) > 1:
            add(f"config.{k}", values)
        else:
            hidden += 1
    summary_keys = sorted({k for i in infos for k in i["summary"]})
    if summary_keys:
        table.add_section()
    for k in summary_keys:
        add(f"summary.{k}", [i["summary"].get(k) for i in infos])
    metric_keys = sorted({k for m in lasts for k in m})
    if metric_keys:
        table.add_section()
    for k in metric_keys:
        add(f"final {k}", [m.get(k) for m in lasts])
    out = console()
    out.print(table)
    if hidden:
        out.print(f"{hidden} equal config keys hidden (--all shows them); rows in bold differ")


# ---------------------------------------------------------------------------------------------------- report
def report(
    targets: Annotated[
        list[str], typer.Argument(metavar="RUN|SWEEP...", help="Runs or sweep ids to report.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
    png: Annotated[
        Path | None, typer.Option("--png", help="Also write PNG figures into this folder.")
    ] = None,
    store: StoreOption = None,
    open_: OpenOption = False,
    plotlyjs: PlotlyjsOption = "inline",
) -> None:
    """Write an interactive HTML report (verdict first; optionally PNG figures) of runs or a sweep."""
    from learndyn.report.html import build_html_report
    from learndyn.report.png import save_png_figures

    run_store = open_store(store, create=False)
    ids = run_store.resolve_targets(targets)
    if plotlyjs not in PLOTLYJS_MODES:
        raise CliError(f"--plotlyjs={plotlyjs!r} is not allowed; allowed: {', '.join(PLOTLYJS_MODES)}")
    path = build_html_report(run_store, ids, out, plotlyjs=plotlyjs)
    shown = console()
    shown.print(f"report of {len(ids)} run{'s' if len(ids) != 1 else ''}: {path}")
    if open_:
        open_in_browser(path)
    if png is not None:
        for run_id in ids:
            folder = png if len(ids) == 1 else png / run_id[:8]
            written = save_png_figures(run_store, run_id, folder)
            shown.print(f"{len(written)} PNG figures of {run_id[:8]}: {folder}")
