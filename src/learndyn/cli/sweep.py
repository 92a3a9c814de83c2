"""``learndyn sweep``: run a sweep of an experiment into the store (registered by :mod:`learndyn.cli.main`).

One self-contained command over :mod:`learndyn.sweep`; it imports nothing heavy until it runs. Bad input
(an unknown field, a bad value, a bad spec file) exits 2 with one line before anything runs; a sweep with
failed, interrupted or lost runs exits 1 (re-running the same command retries exactly those); Ctrl-C stops
the workers, marks their runs ``interrupted`` and exits 130.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from learndyn.cli.common import CliError, StoreOption, console, fail, fmt, open_store, rows_table, store_path

__all__ = ["sweep"]


def sweep(
    experiment: Annotated[
        str | None,
        typer.Argument(
            help="Experiment name (see `learndyn run --list`); optional with --spec.", show_default=False
        ),
    ] = None,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Sweep spec file (.yaml, .yml, .toml, .json).")
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            "-g",
            help="Sweep a config field: key=v1,v2 | range(n) | linspace(a,b,n) | logspace(a,b,n) | "
            "uniform(a,b) | loguniform(a,b) | randint(a,b) | choice(v1,...) (repeatable).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Fix a config field: key=value (repeatable).")
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Draws of the random axes (uniform, choice, ...).")
    ] = None,
    sweep_seed: Annotated[
        int | None, typer.Option("--sweep-seed", help="Seed of the random draws (default 0).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Sweep id (default: derived from the configs).")
    ] = None,
    executor: Annotated[
        str, typer.Option("--executor", "-e", help="Where runs execute: local (process pool), ray, serial.")
    ] = "local",
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", help="Worker processes / Ray CPUs (default: all cores).")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (default: start a local Ray).")
    ] = None,
    ensemble: Annotated[
        bool,
        typer.Option(
            "--ensemble/--no-ensemble",
            help="Train runs differing only in seed/lr/alpha/... as one vectorised ensemble (if supported).",
        ),
    ] = True,
    ensemble_size: Annotated[
        int, typer.Option("--ensemble-size", help="Largest ensemble trained in one pass.")
    ] = 256,
    quick: Annotated[
        bool, typer.Option("--quick", help="Start from the experiment's small test config.")
    ] = False,
    rerun_running: Annotated[
        bool,
        typer.Option("--rerun-running", help="Also rerun configs whose run is 'running' on another host."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (what would run) and exit.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write an HTML report of the sweep here afterwards.")
    ] = None,
    store: StoreOption = None,
) -> None:
    """Run a hyperparameter sweep into the store; re-running it resumes (runs only what is missing).

    Every run gets the sweep id (printed; `learndyn report SWEEP` draws its phase diagrams). Example:
    `learndyn sweep mlp-teacher -g lr=logspace(1e-3,1,7) -g alpha=0,0.5,1 -g seed=range(3)
    -s optimizer=cgd-diag`
    """
    from learndyn.sweep.executors import EXECUTORS, make_executor
    from learndyn.sweep.runner import SweepState, plan_units, run_sweep, sweep_state
    from learndyn.sweep.spec import SweepSpec

    if executor not in EXECUTORS:
        raise CliError(f"--executor={executor!r} is not allowed; allowed: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise CliError(f"--workers={workers} is out of range; allowed: workers >= 1")
    if ensemble_size < 1:
        raise CliError(f"--ensemble-size={ensemble_size} is out of range; allowed: >= 1")
    if address and executor != "ray":
        raise CliError("--address needs --executor ray")
    cli_spec = SweepSpec.from_cli(
        experiment or "",
        grid or [],
        set_ or [],
        samples=samples,
        sweep_seed=sweep_seed,
        name=name,
        quick=quick,
    )
    if spec is not None:
        the_spec = SweepSpec.from_file(spec, experiment=experiment).merged(cli_spec)
    elif not experiment:
        raise CliError("missing experiment name (or --spec FILE); try `learndyn run --list`")
    else:
        the_spec = cli_spec
    plan = the_spec.expand()  # validates everything before anything runs
    exe = make_executor(executor, workers=workers, address=address)
    out = console()
    if dry_run and not store_path(store).exists():
        run_store, state = None, SweepState(plan, to_run=list(plan.points))
    else:
        run_store = open_store(store, create=True)
        state = sweep_state(run_store, plan, rerun_running=rerun_running, mark=not dry_run)
    units = plan_units(
        plan,
        state.to_run,
        store_path=str(store_path(store)),
        ensemble="auto" if ensemble else False,
        ensemble_size=ensemble_size,
        workers=exe.workers,
    )
    n_ens = sum(u.kind == "ensemble" for u in units)
    fields = ", ".join(f"{a.key}({len(a.values) if not a.is_random else 'random'})" for a in plan.axes)
    out.print(
        f"sweep [cyan]{plan.sweep_id}[/]: {len(plan)} configs of [bold]{plan.experiment}[/] over {fields}"
        + (f" ({plan.duplicates} duplicates dropped)" if plan.duplicates else "")
    )
    out.print(
        f"{len(state.done)} done, {len(state.in_progress)} in progress elsewhere, {len(state.to_run)} to run"
        + (f" ({state.previous_failures} again)" if state.previous_failures else "")
        + f" as {len(units)} units ({n_ens} vectorised ensembles) on {exe.name}"
        + (f" with {exe.workers} workers" if exe.name != "serial" else "")
    )
    if dry_run:
        _print_plan(out, plan, state)
        return
    assert run_store is not None
    if not state.to_run:
        out.print("nothing to run: every config of this sweep is done")
    else:
        try:
            result = run_sweep(
                plan,
                run_store,
                executor=exe,
                ensemble="auto" if ensemble else False,
                ensemble_size=ensemble_size,
                rerun_running=rerun_running,
            )
        except KeyboardInterrupt:
            fail(
                f"interrupted; running runs of sweep {plan.sweep_id} marked interrupted; "
                "re-run the same command to resume",
                code=130,
            )
        rows = [{"status": k, "runs": v} for k, v in sorted(result.counts.items())]
        rows.append({"status": "skipped (done before)", "runs": result.skipped})
        out.print(rows_table(rows, title=f"Sweep {plan.sweep_id} ({result.seconds:.1f} s)"))
        for err in result.errors[:5]:
            out.print(f"[red]•[/] {err}")
        if not result.ok:
            bad = sum(result.counts.get(s, 0) for s in ("failed", "interrupted", "lost"))
            fail(
                f"{bad} runs of sweep {plan.sweep_id} failed or were interrupted; "
                "re-run the same command to retry exactly those",
                code=1,
            )
    out.print(
        f"runs stored in {run_store.path} under sweep id [cyan]{plan.sweep_id}[/]; "
        f"`learndyn report {plan.sweep_id}` draws its phase diagrams"
    )
    if report is not None:
        from learndyn.report.html import build_html_report

        path = build_html_report(run_store, [plan.sweep_id], report)
        out.print(f"report: {path}")


def _print_plan(out: Any, plan: Any, state: Any, limit: int = 40) -> None:
    status = {p.hash: "done" for p in state.done}
    status.update({p.hash: "in progress" for p in state.in_progress})
    status.update({p.hash: "to run" for p in state.to_run})
    rows = [
        {"#": p.index, **{k: fmt(v) for k, v in p.values.items()}, "status": status[p.hash]}
        for p in plan.points[:limit]
    ]
    out.print(rows_table(rows, title=f"Plan of sweep {plan.sweep_id}"))
    if len(plan) > limit:
        out.print(f"... and {len(plan) - limit} more configs")
