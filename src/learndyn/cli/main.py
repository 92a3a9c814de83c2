"""The ``learndyn`` command line: run experiments into the store; list, show and compare runs; build reports.

Bad input (an unknown experiment, a bad ``--set``, an unknown option or a bad option value, a missing run or
store) prints one line on stderr and exits with code 2, never a traceback; all of it is checked before any
training starts. An experiment that fails while running marks its run ``failed`` and exits 1 (set
``LEARNDYN_DEBUG=1`` to see the traceback); Ctrl-C (or SIGTERM) marks it ``interrupted`` and exits 130, and
``learndyn resume RUN`` continues it from its last checkpoint. A run whose training diverged is stored as
``diverged`` (exit 0: it is a result).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from learndyn import __version__

# typer vendors click: its exception classes, found from the public ones
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, a bad option value, a missing argument) as one line on stderr with
    exit code 2, like every other bad input, instead of click's usage block."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `learndyn`: the help, as before
                return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
            ctx = getattr(exc, "ctx", None)
            message = _one_line_text(exc.format_message())
            if ctx is not None:
                message = f"{ctx.command_path}: {message} (see `{ctx.command_path} --help`)"
            _print_error(message)
            sys.exit(exc.exit_code)
        except typer.Abort:
            _print_error("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _one_line_text(text: str) -> str:
    return " ".join(str(text).split())


app = typer.Typer(
    cls=_OneLineErrors,
    help="learndyn: drive, measure and explain neural-network learning dynamics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Run store file (default: $LEARNDYN_STORE or runs/learndyn.duckdb)."),
]


OpenOption = Annotated[
    bool,
    typer.Option("--open", help="Open the written HTML report in the default web browser."),
]


def _open_report(path: Path) -> None:
    """Open ``path`` in the default browser; on a machine without one, say where the file is instead."""
    import webbrowser

    uri = Path(path).resolve().as_uri()
    try:
        opened = webbrowser.open(uri)
    except webbrowser.Error:
        opened = False
    if not opened:
        _out().print(f"no web browser found here; open {uri} yourself")


class CliError(Exception):
    """Bad input: printed as one line on stderr, exit code 2."""


def _out() -> Console:
    # Piped output (files, CI logs) gets wide tables instead of rich's 80-column default.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(highlight=False, soft_wrap=False, width=wide)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _print_error(message: str) -> None:
    from rich.markup import escape

    _err().print(f"[bold red]error:[/] {escape(message)}", markup=True)  # user text is never markup


def _fail(message: str, code: int = 2) -> NoReturn:
    _print_error(message)
    raise typer.Exit(code)


def _friendly(fn: F) -> F:
    """Turn bad-input exceptions into one line on stderr and exit code 2."""
    from learndyn.validation import LearndynValueError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from learndyn.store.runstore import StoreError

        try:
            return fn(*args, **kwargs)
        except (CliError, StoreError, LearndynValueError) as exc:
            _fail(_one_line(exc))
        except OSError as exc:  # a path given on the command line that cannot be read or written
            name = f": {exc.filename}" if exc.filename else ""
            _fail(f"{exc.strerror or _one_line(exc)}{name}")

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    text = _one_line_text(str(exc))
    return text or type(exc).__name__


CheckpointOption = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        help="Training updates between checkpoints (0: none; default $LEARNDYN_CHECKPOINT_EVERY or 100).",
        show_default=False,
    ),
]


def _checkpoint_every(value: int | None) -> int:
    from learndyn.checkpoint import default_checkpoint_every
    from learndyn.validation import check_int

    if value is None:
        return default_checkpoint_every()
    return check_int("--checkpoint-every", value, low=0)


def _check_output_path(path: Path | None, option: str) -> None:
    """Refuse an output file that cannot be written, before anything runs."""
    if path is None:
        return
    if path.is_dir():
        raise CliError(f"{option} {path} is a directory; allowed: a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise CliError(f"{option} {path}: {parent} is not writable")


def _open_store(path: Path | None, *, create: bool):
    from learndyn.store.runstore import RunStore, default_store_path

    return RunStore(path or default_store_path(), create=create)


def _fmt(value: Any) -> str:
    from learndyn.report.data import format_value

    return format_value(value)


def _table(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        numeric = all(
            isinstance(r.get(c), int | float) and not isinstance(r.get(c), bool)
            for r in rows
            if r.get(c) is not None
        )
        table.add_column(str(c), justify="right" if numeric else "left", overflow="fold", no_wrap=numeric)
    for row in rows:
        table.add_row(*(_fmt(row.get(c, "")) if row.get(c) is not None else "" for c in columns))
    return table


def _kv_table(
    items: Iterable[tuple[str, Any]], title: str, headers: tuple[str, str] = ("key", "value")
) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(headers[0], overflow="fold")
    table.add_column(headers[1], overflow="fold")
    for k, v in items:
        table.add_row(str(k), _fmt(v))
    return table


@app.callback()
def main() -> None:
    """learndyn: drive, measure and explain neural-network learning dynamics."""


@app.command()
def version() -> None:
    """Print the installed learndyn version."""
    typer.echo(__version__)


# ---------------------------------------------------------------------------------------------------- run
def _list_experiments() -> None:
    from learndyn.phenomena import registry

    names = registry.names()
    if not names:
        typer.echo("no experiments are registered")
        return
    width = max(len(n) for n in names)
    for name in names:
        typer.echo(f"{name:<{width}}  {registry.get(name).description}")


def _show_config(experiment: Any) -> None:
    from learndyn.config import config_fields

    table = Table(title=f"{experiment.name}: config ({experiment.config_cls.__name__})", title_justify="left")
    for col in ("key", "type", "default", "--quick"):
        table.add_column(col, overflow="fold")
    for name, tp, default in config_fields(experiment.config_cls):
        quick = experiment.quick_overrides.get(name, "")
        table.add_row(name, tp, _fmt(default), _fmt(quick) if name in experiment.quick_overrides else "")
    _out().print(table)


def _build_config(experiment: Any, overrides: Sequence[str], quick: bool) -> Any:
    from learndyn.config import ConfigError, apply_overrides

    try:
        config = experiment.config_cls()
        if quick and experiment.quick_overrides:
            config = apply_overrides(config, experiment.quick_overrides, experiment=experiment.name)
        return apply_overrides(config, list(overrides), experiment=experiment.name)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        raise CliError(f"invalid config for experiment {experiment.name!r}: {_one_line(exc)}") from None


@app.command()
@_friendly
def run(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Experiment name (see --list), or 'all': every phenomenon with a closed form.",
            show_default=False,
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a config field: key=value (repeatable; lists: lrs=0.1,0.01)."
        ),
    ] = None,
    store: StoreOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write an HTML report of the run here.")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Use the experiment's small test-size config.")
    ] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the registered experiments and exit.")] = False,
    show_config: Annotated[
        bool,
        typer.Option(
            "--show-config", help="Print the experiment's config fields, types and defaults, and exit."
        ),
    ] = False,
    checkpoint_every: CheckpointOption = None,
    open_: OpenOption = False,
) -> None:
    """Run an experiment, store it, print its results (and write a report with --report)."""
    from learndyn.phenomena import registry

    if list_:
        _list_experiments()
        return
    if not name:
        raise CliError("missing experiment name; try `learndyn run --list`")
    if name == ALL:
        if show_config:
            raise CliError("--show-config needs one experiment name, not 'all'")
        _run_all(set_ or [], quick, store, report, checkpoint_every, open_)
        return
    try:
        experiment = registry.get(name)
    except ValueError as exc:
        raise CliError(_one_line(exc)) from None
    if show_config:
        _show_config(experiment)
        return
    if open_ and report is None:
        raise CliError("--open needs --report FILE (the report to open)")
    config = _build_config(experiment, set_ or [], quick)
    every = _checkpoint_every(checkpoint_every)
    _check_output_path(report, "--report")
    run_store = _open_store(store, create=True)
    seed = getattr(config, "seed", None)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    _execute(
        experiment,
        config,
        run_store,
        lambda: run_store.start_run(experiment.name, config, seed=seed, checkpoint_every=every),
        report,
        open_report=open_,
    )


@app.command()
@_friendly
def resume(
    run_ref: Annotated[
        str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or name (latest).")
    ],
    store: StoreOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write an HTML report of the run here.")
    ] = None,
    checkpoint_every: CheckpointOption = None,
) -> None:
    """Continue an interrupted (or failed) run from its last checkpoint, under the same run id.

    The config is rebuilt from the stored one and the experiment runs again; its training loops restore
    their checkpoints (model, optimizer, RNG), and rows logged again replace those of the earlier attempt.
    """
    from learndyn.config import ConfigError, config_from_dict
    from learndyn.phenomena import registry
    from learndyn.store.runstore import RESUMABLE

    every = _checkpoint_every(checkpoint_every)
    _check_output_path(report, "--report")
    run_store = _open_store(store, create=False)  # opening marks runs of dead processes interrupted
    info = run_store.run_info(run_store.resolve(run_ref))
    if info["status"] not in RESUMABLE:
        raise CliError(
            f"run {info['id'][:8]} ({info['name']}) is {info['status']}; "
            f"allowed to resume: {', '.join(RESUMABLE)} runs"
        )
    try:
        experiment = registry.get(info["experiment"] or info["name"])
    except ValueError as exc:
        raise CliError(f"run {info['id'][:8]} cannot be resumed: {_one_line(exc)}") from None
    try:
        config = config_from_dict(experiment.config_cls, info["config"], experiment=experiment.name)
    except ConfigError as exc:
        raise CliError(f"run {info['id'][:8]}: stored config no longer fits: {_one_line(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise CliError(f"run {info['id'][:8]}: invalid stored config: {_one_line(exc)}") from None
    _execute(
        experiment,
        config,
        run_store,
        lambda: run_store.reopen_run(info["id"], checkpoint_every=every),
        report,
        resumed=True,
    )


def _execute(
    experiment: Any,
    config: Any,
    run_store: Any,
    open_run: Callable[[], Any],
    report: Path | None,
    *,
    resumed: bool = False,
    open_report: bool = False,
) -> None:
    """Run ``experiment`` into the run ``open_run()`` gives (a new or a reopened one); print; report."""
    out = _out()
    store_run = None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm)  # `kill` marks the run interrupted, like Ctrl-C
    try:
        with open_run() as store_run:
            verb = "resuming" if resumed else "run"
            out.print(f"[bold]{experiment.name}[/] {verb} [cyan]{store_run.id[:8]}[/] → {run_store.path}")
            try:
                result = experiment.run(config, store_run)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                if os.environ.get("LEARNDYN_DEBUG"):
                    raise
                store_run.close("failed", f"{type(exc).__name__}: {_one_line(exc)}", _traceback(exc))
                _fail(
                    f"experiment {experiment.name!r} failed: {type(exc).__name__}: {_one_line(exc)} "
                    f"(run {store_run.id[:8]} marked failed; LEARNDYN_DEBUG=1 shows the traceback)",
                    code=1,
                )
            store_run.set_summary(result.stored_summary())
    except KeyboardInterrupt:
        where = (
            f"run {store_run.id[:8]} marked interrupted in {run_store.path}" if store_run else "no run stored"
        )
        _fail(f"interrupted; {where}", code=130)
    finally:
        signal.signal(signal.SIGTERM, previous)

    if result.table:
        out.print(_table(result.table, title="Results"))
    if result.summary:
        out.print(_kv_table(result.summary.items(), "Summary", ("quantity", "value")))
    if result.passed is not None:
        verdict = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
        out.print(
            f"theory vs simulation: agreement {_fmt(result.agreement)} "
            f"(tolerance {_fmt(result.tolerance)}) {verdict}"
        )
    out.print(f"run [cyan]{store_run.id}[/] ({store_run.status}) stored in {run_store.path}")
    if store_run.status == "diverged":
        info = run_store.run_info(store_run.id)
        out.print(f"training diverged: {info['error']}")
    if report is not None:
        from learndyn.report.html import build_html_report

        path = build_html_report(run_store, [store_run.id], report)
        out.print(f"report: {path}")
        if open_report:
            _open_report(path)


ALL = "all"


def _has_closed_form(experiment: Any) -> bool:
    """Whether ``run all`` runs ``experiment``: a phenomenon with an agreement figure -- a closed form, or a
    reproduction criterion like grokking's -- has a ``tolerance`` config field (what the figure is tested
    against); an ``Experiment.has_theory`` flag would decide."""
    import dataclasses

    flag = getattr(experiment, "has_theory", None)
    if isinstance(flag, bool):
        return flag
    cls = experiment.config_cls
    return dataclasses.is_dataclass(cls) and any(f.name == "tolerance" for f in dataclasses.fields(cls))


def _run_all(
    overrides: Sequence[str],
    quick: bool,
    store: Path | None,
    report: Path | None,
    checkpoint_every: int | None,
    open_report: bool = False,
) -> None:
    """``learndyn run all [--quick]``: every registered phenomenon with a closed form, each as its own stored
    run (at its test size with ``--quick``), then a table of agreement figures and, with ``--report``, one
    combined HTML report. Exits 1 when any of them fails, diverges or misses its tolerance."""
    import time

    from learndyn.phenomena import registry

    if overrides:
        raise CliError("--set is not allowed with `run all`; run one experiment to change its config")
    if open_report and report is None:
        raise CliError("--open needs --report FILE (the report to open)")
    every = _checkpoint_every(checkpoint_every)
    _check_output_path(report, "--report")
    experiments = [registry.get(n) for n in registry.names()]
    chosen = [e for e in experiments if _has_closed_form(e)]
    if not chosen:
        raise CliError("no registered experiment has a closed form (a `tolerance` config field)")
    configs = [(e, _build_config(e, [], quick)) for e in chosen]  # every config is valid before any runs
    run_store = _open_store(store, create=True)
    out = _out()
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    store_run = None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        for experiment, config in configs:
            seed = getattr(config, "seed", None)
            seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
            row: dict[str, Any] = {"experiment": experiment.name}
            start = time.perf_counter()
            with run_store.start_run(experiment.name, config, seed=seed, checkpoint_every=every) as store_run:
                ids.append(store_run.id)
                out.print(f"[bold]{experiment.name}[/] run [cyan]{store_run.id[:8]}[/] → {run_store.path}")
                try:
                    result = experiment.run(config, store_run)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:
                    if os.environ.get("LEARNDYN_DEBUG"):
                        raise
                    message = f"{type(exc).__name__}: {_one_line(exc)}"
                    store_run.close("failed", message, _traceback(exc))
                    _print_error(f"experiment {experiment.name!r} failed: {message}")
                    result = None
                if result is not None:
                    store_run.set_summary(result.stored_summary())
            ok = result is not None and result.passed is not False and store_run.status == "completed"
            row["run"] = store_run.id[:8]
            row["agreement"] = None if result is None else result.agreement
            row["tolerance"] = None if result is None else result.tolerance
            row["pass"] = "n/a" if ok and result.passed is None else ("yes" if ok else "NO")
            row["status"] = store_run.status
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
    except KeyboardInterrupt:
        where = f"run {store_run.id[:8]} marked interrupted" if store_run else "no run stored"
        _fail(f"interrupted; {where} in {run_store.path}", code=130)
    finally:
        signal.signal(signal.SIGTERM, previous)

    size = "test size (--quick)" if quick else "default size"
    out.print(_table(rows, title=f"Theory vs simulation, {len(rows)} phenomena at {size}"))
    skipped = [e.name for e in experiments if e not in chosen]
    if skipped:
        out.print(f"not run (no closed form): {', '.join(skipped)}")
    if report is not None:
        from learndyn.report.html import build_html_report

        path = build_html_report(run_store, ids, report, title=f"learndyn run all ({size})")
        out.print(f"report: {path}")
        if open_report:
            _open_report(path)
    failed = [r["experiment"] for r in rows if r["pass"] == "NO"]
    if failed:
        _print_error(f"{len(failed)} of {len(rows)} did not pass: {', '.join(failed)}")
        raise typer.Exit(1)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _traceback(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# ----------------------------------------------------------------------------------------------- list / show
@app.command("list")
@_friendly
def list_runs(
    store: StoreOption = None,
    name: Annotated[str | None, typer.Option("--name", help="Only runs of this name.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only runs with this status.")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Only runs of this sweep id.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Show the newest N runs.")] = 50,
) -> None:
    """List the runs in the store (newest last)."""
    run_store = _open_store(store, create=False)
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
                "sweep": (r.sweep_id or "")[:8] if not _isna(r.sweep_id) else "",
            }
        )
    _out().print(_table(rows, title=f"{len(rows)} runs in {run_store.path}"))


def _isna(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


@app.command()
@_friendly
def show(
    run_ref: Annotated[
        str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or name (latest).")
    ],
    store: StoreOption = None,
) -> None:
    """Show one run: status, config, summary, metrics with their last values, arrays."""
    run_store = _open_store(store, create=False)
    with run_store.reading():
        info = run_store.run_info(run_store.resolve(run_ref))
        last = run_store.last_metrics(info["id"])
        arrays = run_store.array_names(info["id"])
    out = _out()
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
    out.print(_kv_table([(k, v) for k, v in meta if v is not None], f"Run {info['id'][:8]}"))
    if info["config"]:
        out.print(_kv_table(info["config"].items(), "Config"))
    if info["summary"]:
        out.print(_kv_table(info["summary"].items(), "Summary", ("quantity", "value")))
    if not last.empty:
        rows = [
            {"metric": r.name, "last step": int(r.step), "last value": float(r.value), "points": int(r.count)}
            for r in last.itertuples()
        ]
        out.print(_table(rows, title="Metrics"))
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
        out.print(_table(rows, title="Arrays"))


@app.command()
@_friendly
def compare(
    runs: Annotated[list[str], typer.Argument(metavar="RUN RUN...", help="Two or more runs.")],
    store: StoreOption = None,
    all_config: Annotated[bool, typer.Option("--all", help="Also show config keys that are equal.")] = False,
) -> None:
    """Compare runs side by side: config (differing keys), summary and final metric values."""
    if len(runs) < 2:
        raise CliError("compare needs at least two runs")
    run_store = _open_store(store, create=False)
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
            label, *("" if v is None else _fmt(v) for v in values), style="bold" if differ else style
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
    out = _out()
    out.print(table)
    if hidden:
        out.print(f"{hidden} equal config keys hidden (--all shows them); rows in bold differ")


# ---------------------------------------------------------------------------------------------------- report
@app.command()
@_friendly
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
) -> None:
    """Write an interactive, self-contained HTML report (and optionally PNG figures) of runs or a sweep."""
    from learndyn.report.html import build_html_report
    from learndyn.report.png import save_png_figures

    run_store = _open_store(store, create=False)
    ids = run_store.resolve_targets(targets)
    path = build_html_report(run_store, ids, out)
    console = _out()
    console.print(f"report of {len(ids)} run{'s' if len(ids) != 1 else ''}: {path}")
    if open_:
        _open_report(path)
    if png is not None:
        for run_id in ids:
            folder = png if len(ids) == 1 else png / run_id[:8]
            written = save_png_figures(run_store, run_id, folder)
            console.print(f"{len(written)} PNG figures of {run_id[:8]}: {folder}")


# ----------------------------------------------------------------------------------------------------- sweep
from learndyn.sweep.command import sweep as _sweep_command  # noqa: E402  (lives beside the sweep code)

app.command("sweep")(_friendly(_sweep_command))
