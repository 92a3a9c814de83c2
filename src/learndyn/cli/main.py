"""The ``learndyn`` command line: run experiments into the store; list, show and compare runs; build reports.

Bad input (an unknown experiment, a bad ``--set``, an unknown option or a bad option value, a missing run or
store) prints one line on stderr and exits with code 2, never a traceback; all of it is checked before any
training starts. An experiment that fails while running marks its run ``failed`` and exits 1 (set
``LEARNDYN_DEBUG=1`` to see the traceback); Ctrl-C (or SIGTERM) marks it ``interrupted`` and exits 130, and
``learndyn resume RUN`` continues it from its last checkpoint. A run whose training diverged is stored as
``diverged`` (exit 0: it is a result).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from learndyn import __version__
from learndyn.cli import inspect
from learndyn.cli.common import (
    CheckpointOption,
    CliError,
    OpenOption,
    StoreOption,
    check_output_path,
    console,
    fail,
    fmt,
    friendly,
    kv_table,
    open_in_browser,
    open_store,
    print_error,
    resolve_checkpoint_every,
    rows_table,
)
from learndyn.cli.metrics import metrics as _metrics_command
from learndyn.cli.sweep import sweep as _sweep_command
from learndyn.config import seed_of
from learndyn.validation import error_text, one_line

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
            message = one_line(exc.format_message())
            if ctx is not None:
                message = f"{ctx.command_path}: {message} (see `{ctx.command_path} --help`)"
            print_error(message)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="learndyn: drive, measure and explain neural-network learning dynamics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"learndyn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
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
    experiments = [registry.get(n) for n in names]
    kind = max(len(e.check) for e in experiments)
    for e in experiments:
        typer.echo(f"{e.name:<{width}}  {e.check or '-':<{kind}}  {e.description}")


def _show_config(experiment: Any) -> None:
    from learndyn.config import config_fields

    table = Table(title=f"{experiment.name}: config ({experiment.config_cls.__name__})", title_justify="left")
    for col in ("key", "type", "default", "--quick"):
        table.add_column(col, overflow="fold")
    for name, tp, default in config_fields(experiment.config_cls):
        quick = experiment.quick_overrides.get(name, "")
        table.add_row(name, tp, fmt(default), fmt(quick) if name in experiment.quick_overrides else "")
    console().print(table)


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
        raise CliError(f"invalid config for experiment {experiment.name!r}: {error_text(exc)}") from None


@app.command()
@friendly
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
        raise CliError(error_text(exc)) from None
    if show_config:
        _show_config(experiment)
        return
    if open_ and report is None:
        raise CliError("--open needs --report FILE (the report to open)")
    config = _build_config(experiment, set_ or [], quick)
    every = resolve_checkpoint_every(checkpoint_every)
    check_output_path(report, "--report")
    run_store = open_store(store, create=True)
    _execute(
        experiment,
        config,
        run_store,
        lambda: run_store.start_run(experiment.name, config, seed=seed_of(config), checkpoint_every=every),
        report,
        open_report=open_,
    )


@app.command()
@friendly
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

    every = resolve_checkpoint_every(checkpoint_every)
    check_output_path(report, "--report")
    run_store = open_store(store, create=False)  # opening marks runs of dead processes interrupted
    info = run_store.run_info(run_store.resolve(run_ref))
    if info["status"] not in RESUMABLE:
        raise CliError(
            f"run {info['id'][:8]} ({info['name']}) is {info['status']}; "
            f"allowed to resume: {', '.join(RESUMABLE)} runs"
        )
    try:
        experiment = registry.get(info["experiment"] or info["name"])
    except ValueError as exc:
        raise CliError(f"run {info['id'][:8]} cannot be resumed: {error_text(exc)}") from None
    try:
        config = config_from_dict(experiment.config_cls, info["config"], experiment=experiment.name)
    except ConfigError as exc:
        raise CliError(f"run {info['id'][:8]}: stored config no longer fits: {error_text(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise CliError(f"run {info['id'][:8]}: invalid stored config: {error_text(exc)}") from None
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
    from learndyn.phenomena.registry import execute

    out = console()
    store_run = None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm)  # `kill` marks the run interrupted, like Ctrl-C
    try:
        with open_run() as store_run:
            verb = "resuming" if resumed else "run"
            out.print(f"[bold]{experiment.name}[/] {verb} [cyan]{store_run.id[:8]}[/] → {run_store.path}")
            outcome = execute(experiment, config, store_run, reraise=bool(os.environ.get("LEARNDYN_DEBUG")))
        if outcome.result is None:
            fail(
                f"experiment {experiment.name!r} failed: {outcome.error} "
                f"(run {store_run.id[:8]} marked failed; LEARNDYN_DEBUG=1 shows the traceback)",
                code=1,
            )
        result = outcome.result
    except KeyboardInterrupt:
        where = (
            f"run {store_run.id[:8]} marked interrupted in {run_store.path}" if store_run else "no run stored"
        )
        fail(f"interrupted; {where}", code=130)
    finally:
        signal.signal(signal.SIGTERM, previous)

    if result.table:
        out.print(rows_table(result.table, title="Results"))
    if result.summary:
        out.print(kv_table(result.summary.items(), "Summary", ("quantity", "value")))
    if result.passed is not None:
        verdict = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
        reproduction = getattr(experiment, "reproduction", False)
        label = "reproduction check: shortfall" if reproduction else "theory vs simulation: agreement"
        out.print(f"{label} {fmt(result.agreement)} (tolerance {fmt(result.tolerance)}) {verdict}")
    out.print(f"run [cyan]{store_run.id}[/] ({store_run.status}) stored in {run_store.path}")
    if store_run.status == "diverged":
        info = run_store.run_info(store_run.id)
        out.print(f"training diverged: {info['error']}")
    if report is not None:
        from learndyn.report.html import build_html_report

        path = build_html_report(run_store, [store_run.id], report)
        out.print(f"report: {path}")
        if open_report:
            open_in_browser(path)


ALL = "all"


def _run_all(
    overrides: Sequence[str],
    quick: bool,
    store: Path | None,
    report: Path | None,
    checkpoint_every: int | None,
    open_report: bool = False,
) -> None:
    """``learndyn run all [--quick]``: every registered phenomenon with a closed form, and every reproduction
    check, each as its own stored run (at its test size with ``--quick``), then a table of agreement figures
    (the reproduction checks in a table of their own) and, with ``--report``, one combined HTML report.
    Exits 1 when any of them fails, diverges or misses its tolerance."""
    import time

    from learndyn.phenomena import registry
    from learndyn.phenomena.registry import execute

    if overrides:
        raise CliError("--set is not allowed with `run all`; run one experiment to change its config")
    if open_report and report is None:
        raise CliError("--open needs --report FILE (the report to open)")
    every = resolve_checkpoint_every(checkpoint_every)
    check_output_path(report, "--report")
    experiments = [registry.get(n) for n in registry.names()]
    chosen = [e for e in experiments if e.check and e.in_run_all]  # check: it has a figure to test
    if not chosen:
        raise CliError("no registered experiment has a closed form (a `tolerance` config field)")
    configs = [(e, _build_config(e, [], quick)) for e in chosen]  # every config is valid before any runs
    run_store = open_store(store, create=True)
    out = console()
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    store_run = None
    debug = bool(os.environ.get("LEARNDYN_DEBUG"))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        for experiment, config in configs:
            row: dict[str, Any] = {"experiment": experiment.name}
            start = time.perf_counter()
            seed = seed_of(config)
            with run_store.start_run(experiment.name, config, seed=seed, checkpoint_every=every) as store_run:
                ids.append(store_run.id)
                out.print(f"[bold]{experiment.name}[/] run [cyan]{store_run.id[:8]}[/] → {run_store.path}")
                outcome = execute(experiment, config, store_run, reraise=debug)
            result = outcome.result
            if result is None:
                print_error(f"experiment {experiment.name!r} failed: {outcome.error}")
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
        fail(f"interrupted; {where} in {run_store.path}", code=130)
    finally:
        signal.signal(signal.SIGTERM, previous)

    size = "test size (--quick)" if quick else "default size"
    theory = [row for row, (e, _) in zip(rows, configs, strict=False) if not e.reproduction]
    checks = [row for row, (e, _) in zip(rows, configs, strict=False) if e.reproduction]
    if theory:
        out.print(rows_table(theory, title=f"Theory vs simulation, {len(theory)} phenomena at {size}"))
    if checks:
        title = f"Reproduction checks (no closed form), {len(checks)} at {size}"
        renamed = [{("shortfall" if k == "agreement" else k): v for k, v in r.items()} for r in checks]
        out.print(rows_table(renamed, title=title))
    no_figure = [e.name for e in experiments if not e.check]
    if no_figure:
        out.print(f"not run (no closed form): {', '.join(no_figure)}")
    too_long = [e.name for e in experiments if e.check and not e.in_run_all]
    if too_long:
        out.print(f"not run (too long at test size; run it alone): {', '.join(too_long)}")
    if report is not None:
        from learndyn.report.html import build_html_report

        path = build_html_report(run_store, ids, report, title=f"learndyn run all ({size})")
        out.print(f"report: {path}")
        if open_report:
            open_in_browser(path)
    failed = [r["experiment"] for r in rows if r["pass"] == "NO"]
    if failed:
        print_error(f"{len(failed)} of {len(rows)} did not pass: {', '.join(failed)}")
        raise typer.Exit(1)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------------ list / show / report
app.command("list")(friendly(inspect.list_runs))
app.command()(friendly(inspect.show))
app.command()(friendly(inspect.compare))
app.command()(friendly(inspect.report))
app.command("metrics")(friendly(_metrics_command))

# ----------------------------------------------------------------------------------------------------- sweep
app.command("sweep")(friendly(_sweep_command))
