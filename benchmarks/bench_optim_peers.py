"""CovariantGD against the optimizers people pick (AdamW, momentum, Muon, SOAP, Shampoo, PSGD-Kron).

Issue 12's "steps to target vs tuned AdamW" benchmark. Protocol (:func:`learndyn.tasks.compare.compare`): for
each task every optimizer is tuned on the SAME learning-rate grid (half decades; the range is per task, listed
in :data:`PLANS`, identical for all optimizers of a task) on the held-out seed ``TUNE_SEED``; the chosen rate
then runs from the evaluation seeds. Per task and optimizer: lr (``edge`` when the choice is the grid's end),
median steps to target, median CPU time to target (the training thread's CPU seconds, ``clock="cpu"``:
the machine is shared), final full-data loss and the task's own metric (MNIST-1D test accuracy, the char
transformer's validation bits/char), winner and margin. Then :func:`learndyn.tasks.versus.verdict`: the best
CovariantGD configuration per task and the best single one against tuned AdamW.

Optimizers: ``cgd-kron+graft`` is ``cgd-kron`` with ``graft='adam'`` (lr is then Adam's); ``cgd-full`` runs
only on models of at most 1000 parameters. Each task's result is written to
``benchmarks/results/optim_peers/<task>.json`` after every optimizer and reused by a later run with the same
plan (a partial one is resumed); ``LEARNDYN_PEERS_DEADLINE=<ISO UTC time>`` starts no optimizer after that
time (the ones left out are printed as NOT RUN). ``LEARNDYN_PEERS_FRESH=1`` ignores saved results;
``LEARNDYN_PEERS_TASKS=a,b`` runs only those tasks (the verdict then covers every task with a saved result);
``LEARNDYN_PEERS_ONLY=x,y`` runs only those optimizers of each plan (the others come from the saved result),
so several processes can share a task's plan: each save re-reads the file under a lock and keeps what another
process saved; ``LEARNDYN_PEERS_RERUN=x,y`` drops those optimizers' saved results first (after a change to
their code).
Reductions of the full plan (fewer optimizers, steps, seeds or grid points on the costly tasks) are stated in
each plan's ``note`` and printed.

``--quick``: rosenbrock-2d and deep-linear, 200 steps, four optimizers, a 3-point grid, seed 0 (not saved).

``python benchmarks/bench_optim_peers.py --markdown``: the per-task tables, the verdict and the checks as
Markdown, from the saved results only (runs nothing) -- the tables of docs/optimizers.md.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from learndyn.optim.spec import OptimizerSpec
from learndyn.tasks import get_task
from learndyn.tasks.compare import TUNE_SEED, Comparison, RunResult, compare, margin, tune_lr
from learndyn.tasks.versus import verdict

NAME = "optim_peers"
GRAFT = "+graft"
SAVED = Path(__file__).resolve().parent / "results" / "optim_peers"
BASE = ("adamw", "adam", "momentum", "muon", "po-soap", "po-shampoo", "po-scalable-shampoo", "po-kron")
CGD = ("cgd-diag", "cgd-kron", "cgd-kron+graft", "cgd-kron-a1+graft", "cgd-full")
BASELINE = ("adamw", "adam")
"""Tuned AdamW: its learning rate on the grid and its weight decay in ``{0.01 (torch's default), 0}``
(``adam`` is AdamW without decay, the same update as ``torch.optim.Adam``); each task's verdict uses the
better of the two."""
METRIC_CHECKS = (("mnist1d-cnn", ">=", 0.94), ("char-transformer", "<=base", None))


def half_decades(low: int, high: int) -> tuple[float, ...]:
    """``10^(k/2)`` for ``k = low .. high`` (half-decade exponents), 3 significant digits."""
    return tuple(float(f"{10.0 ** (k / 2):.3g}") for k in range(low, high + 1))


class Plan(NamedTuple):
    """What runs on one task: optimizers, grid, seeds, steps (``None``: the task's own) and why reduced."""

    task: str
    optimizers: tuple[str, ...]
    grid: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int | None = None
    note: str = ""

    def signature(self) -> dict[str, Any]:
        return {**self._asdict(), "note": None}


SMALL = BASE + CGD
PLANS = (
    Plan("rosenbrock-2d", SMALL, half_decades(-8, 3), note="grid 1e-4 .. 31.6 (the cgd-kron-a1 rates of the "
         "tuned table reach 31.6)"),
    Plan("multiplication", SMALL, half_decades(-8, 1)),
    Plan("digits", SMALL, half_decades(-8, 1)),
    Plan("deep-linear", SMALL, half_decades(-8, 1)),
    Plan("mnist1d-cnn", ("adamw", "adam", "cgd-kron+graft", "cgd-diag", "muon", "cgd-kron", "po-soap",
                         "SHAMPOO", "momentum", "cgd-kron-a1+graft", "po-kron"), half_decades(-6, -2),
         note="reduced: 5-point grid 1e-3 .. 0.1 (AdamW's published rate 1e-2 inside it; widened from "
         "3.16e-3 after four optimizers chose that end); one Shampoo "
         "(the stronger of po-shampoo / po-scalable-shampoo on the four small tasks); cgd-full does not fit "
         "(5210 parameters); optimizers in priority order, po-kron (7 ms/step, 3x AdamW) last"),
    Plan("char-transformer", ("adamw", "adam", "cgd-kron", "cgd-diag", "muon"), half_decades(-7, -2),
         note="reduced: five optimizers (AdamW, Adam, cgd-kron -- the kron variant ranked best on the first "
         "run's earlier tasks --, cgd-diag, Muon); grid 3.16e-4 .. 0.1, widened twice from 1e-2 after "
         "cgd-kron chose the end; when no one reaches the target (1.6 nats) the ranking is the final "
         "validation loss at equal steps"),
    Plan("mnist1d-mlp", tuple(o for o in SMALL if o != "cgd-full"), half_decades(-6, -2),
         note="grid 1e-3 .. 0.1 (AdamW's published rate 1e-2 inside it); cgd-full does not fit (15k "
         "parameters)"),
)
EVAL_EVERY = {"char-transformer": 10}
"""Evaluation interval where it differs from ``steps // 100`` (the char transformer's evaluation is dear)."""
QUICK = (
    Plan("rosenbrock-2d", ("adamw", "muon", "cgd-diag", "cgd-kron+graft"), (1e-3, 1e-2, 1e-1), (0,), 200),
    Plan("deep-linear", ("adamw", "muon", "cgd-diag", "cgd-kron+graft"), (1e-3, 1e-2, 1e-1), (0,), 200),
)


def spec(label: str) -> OptimizerSpec:
    """The optimizer of a benchmark label: a registry label, or ``<cgd label>+graft`` (``graft='adam'``)."""
    if label.endswith(GRAFT):
        base = OptimizerSpec.parse(label[: -len(GRAFT)]).with_options(graft="adam")
        return dataclasses.replace(base, label=label)
    return OptimizerSpec.parse(label)


def _pick(done: dict[str, dict[str, Any]], options: tuple[str, ...]) -> str:
    """Of ``options``, the one ranked better on most finished tasks (first option on a tie or no data)."""
    score = dict.fromkeys(options, 0)
    for result in done.values():
        ranks = {r["optimizer"]: r["rank"] for r in result["rows"] if r["optimizer"] in options and r["rank"]}
        if ranks:
            score[min(ranks, key=ranks.__getitem__)] += 1
    return max(options, key=lambda o: (score[o], -options.index(o)))


def resolve(plan: Plan, done: dict[str, dict[str, Any]]) -> Plan:
    """Fill the placeholders ``SHAMPOO`` and ``KRON`` from the tasks finished before this one."""
    names = []
    for name in plan.optimizers:
        if name == "SHAMPOO":
            name = _pick(done, ("po-shampoo", "po-scalable-shampoo"))
        elif name == "KRON":
            name = _pick(done, ("cgd-kron+graft", "cgd-kron", "cgd-kron-a1+graft"))
        names.append(name)
    return plan._replace(optimizers=tuple(names))


def _encode(run: RunResult) -> dict[str, Any]:
    out = {f.name: getattr(run, f.name) for f in dataclasses.fields(RunResult)}
    return {**out, "eval_steps": run.eval_steps.tolist(), "losses": run.losses.tolist()}


def _decode(data: dict[str, Any]) -> RunResult:
    return RunResult(**{**data, "eval_steps": np.asarray(data["eval_steps"], dtype=np.int64),
                        "losses": np.asarray(data["losses"], dtype=float)})


def run_plan(plan: Plan, partial: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Tune and run one task's plan, one optimizer at a time, saving after each (``partial``: the optimizers
    already done, by label, as saved before). Optimizers not started by ``LEARNDYN_PEERS_DEADLINE`` (an ISO
    UTC time) are left out and listed under ``not_run``. A saved optimizer whose tuning lacks some rates of
    the plan's grid (the grid was widened) is tuned on those only (:func:`_widen`). Under
    ``LEARNDYN_PEERS_ONLY`` the other optimizers are read back from the saved file before every save.
    Returns rows (medians) and tuning runs (JSON)."""
    task = get_task(plan.task)
    deadline = os.environ.get("LEARNDYN_PEERS_DEADLINE")
    stop = datetime.fromisoformat(deadline).replace(tzinfo=UTC) if deadline else None
    only = _labels("LEARNDYN_PEERS_ONLY")
    own = {o for o in plan.optimizers if not only or o in only}
    done = {k: v for k, v in partial.items() if k in plan.optimizers}
    lrs: dict[tuple[str, str], float] = {}
    result: dict[str, Any] = {}
    for label in plan.optimizers:
        if label in own and (stop is None or datetime.now(UTC) < stop):
            if label in done:
                done[label] = _widen(plan, task, label, done[label])
            else:
                part = compare([task], [spec(label)], seeds=plan.seeds, steps=plan.steps, tune=True,
                               lr_grid=plan.grid, max_full_params=1000,
                               description=f"{NAME} {plan.task} {label}", clock="cpu",
                               eval_every=EVAL_EVERY.get(plan.task))
                done[label] = {"lr": part.lrs[(plan.task, label)], "runs": [_encode(r) for r in part.runs],
                               "tuning": [_encode(r) for r in part.tuning]}
        others = {k: v for k, v in _saved_partial(plan).items() if k not in own}
        done = {o: (others.get(o) or done.get(o)) for o in plan.optimizers if o in others or o in done}
        ran = [o for o in plan.optimizers if o in done]
        runs = [_decode(r) for o in ran for r in done[o]["runs"]]
        tuning = [_decode(r) for o in ran for r in done[o]["tuning"]]
        lrs = {(plan.task, o): done[o]["lr"] for o in ran}
        targets = {task.name: task.target_loss}
        merged = Comparison(runs=runs, tuning=tuning, lrs=lrs, targets=targets, tuned=True)
        result = {"plan": plan.signature(), "note": plan.note, "target": task.target_loss,
                  "steps": plan.steps or task.steps, "rows": table(merged, plan),
                  "not_run": [o for o in plan.optimizers if o not in done or _missing(plan, done[o])],
                  "partial": done,
                  "tuning": [{"optimizer": r.optimizer, "lr": r.lr, "status": r.status,
                              "steps_to_target": r.steps_to_target,
                              "final_loss": r.final_loss if math.isfinite(r.final_loss) else None}
                             for r in tuning]}
        save(result, own)
    return result


def _missing(plan: Plan, entry: dict[str, Any]) -> list[float]:
    """The rates of ``plan.grid`` that a saved optimizer's tuning did not try (none if it could not run)."""
    if entry["lr"] is None or math.isnan(entry["lr"]):
        return []
    tried = {float(f"{r['lr']:.3g}") for r in entry["tuning"]}
    return [lr for lr in plan.grid if lr not in tried]


def _widen(plan: Plan, task: Any, label: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A saved optimizer tuned on part of the grid, tuned on the whole of it by
    :func:`~learndyn.tasks.compare.tune_lr` with the saved tuning runs reused (only the missing rates run);
    the evaluation seeds run again only if the choice moved."""
    if not _missing(plan, entry):
        return entry
    sp = spec(label)
    best, tuning = tune_lr(task, sp, grid=plan.grid, steps=plan.steps, eval_every=EVAL_EVERY.get(plan.task),
                           max_full_params=1000, clock="cpu", tried=[_decode(r) for r in entry["tuning"]])
    runs = entry["runs"]
    if best != entry["lr"]:
        part = compare([task], [sp], seeds=plan.seeds, steps=plan.steps, lr=best, max_full_params=1000,
                       description=f"{NAME} {plan.task} {label} (grid widened)", clock="cpu",
                       eval_every=EVAL_EVERY.get(plan.task))
        runs = [_encode(r) for r in part.runs]
    return {"lr": best, "runs": runs, "tuning": [_encode(r) for r in tuning]}


def table(result: Comparison, plan: Plan) -> list[dict[str, Any]]:
    """Rows per optimizer with the winner's margin over each (``x steps`` or ``x loss``)."""
    rows = result.rows()
    ranked = sorted((r for r in rows if r["rank"]), key=lambda r: r["rank"])
    out = []
    for r in rows:
        lr = r["lr"]
        edge = lr is not None and math.isfinite(lr) and lr in (plan.grid[0], plan.grid[-1])
        m = margin(ranked[0], r) if ranked and r is not ranked[0] else None
        out.append({
            "task": r["task"], "optimizer": r["optimizer"], "rank": r["rank"], "lr": lr,
            "lr_at_edge": edge, "steps_to_target": r["steps_to_target"], "reached": r["reached"],
            "time_to_target": r["time_to_target"], "final_loss": r["final_loss"],
            "metric": r["metric"], "metric_name": r["metric_name"], "step_ms": r["step_ms"],
            "winner_margin": None if m is None else f"{m['ratio']:.3g}x " + _unit(m),
            "status": r["status"] if not r["note"] else f"{r['status']}: {r['note'][:60]}",
        })
    return out


def _unit(m: dict[str, Any]) -> str:
    return "steps" if m["on"] == "steps_to_target" else "loss"


def _labels(variable: str) -> set[str]:
    return {name for name in os.environ.get(variable, "").split(",") if name}


def _lock(task: str) -> Any:
    """An exclusive lock on ``<task>.lock`` beside the results (released when the returned file closes)."""
    SAVED.mkdir(parents=True, exist_ok=True)
    handle = (SAVED / f"{task}.lock").open("a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _read(plan: Plan) -> dict[str, Any] | None:
    """The result saved for ``plan``'s task under a :func:`_compatible` plan (``None`` if there is none), read
    under the lock, with the optimizers of ``LEARNDYN_PEERS_RERUN`` dropped (and listed as not run)."""
    path = SAVED / f"{plan.task}.json"
    if not path.exists():
        return None
    with _lock(plan.task):
        saved = json.loads(path.read_text())
    if not _compatible(saved.get("plan", {}), plan):
        return None
    rerun = _labels("LEARNDYN_PEERS_RERUN")
    if rerun & set(saved.get("partial", {})):
        saved["partial"] = {k: v for k, v in saved["partial"].items() if k not in rerun}
        saved["not_run"] = sorted(rerun)
    return saved


def _saved_partial(plan: Plan) -> dict[str, Any]:
    """The optimizers of ``plan`` saved so far, by this process or another (:func:`_read`)."""
    saved = _read(plan) or {}
    return {k: v for k, v in saved.get("partial", {}).items() if k in plan.optimizers}


def _load(plan: Plan) -> tuple[dict[str, Any] | None, bool]:
    """``(saved result, complete)`` for this plan (:func:`_read`; ``None`` under ``LEARNDYN_PEERS_FRESH``),
    complete when it is this plan's and ran every optimizer of it."""
    saved = None if os.environ.get("LEARNDYN_PEERS_FRESH") else _read(plan)
    if saved is None:
        return None, False
    want = json.loads(json.dumps(plan.signature()))
    return saved, saved.get("plan") == want and not saved.get("not_run")


def _compatible(saved_plan: dict[str, Any], plan: Plan) -> bool:
    """Whether results saved under ``saved_plan`` serve ``plan``: same task, seeds and steps, and a grid
    within the plan's (a widened grid tunes the saved optimizers on the new rates only)."""
    want = json.loads(json.dumps(plan.signature()))
    same = all(saved_plan.get(k) == want[k] for k in ("task", "seeds", "steps"))
    return same and set(saved_plan.get("grid") or ()) <= set(want["grid"])


def _saver(task: str) -> Callable[[dict[str, Any], set[str]], None]:
    def save(result: dict[str, Any], own: set[str]) -> None:
        """Write ``result``; the optimizers this process does not own (``LEARNDYN_PEERS_ONLY``) are taken
        from the file as another process saved them since this one read it."""
        with _lock(task):
            path = SAVED / f"{task}.json"
            if path.exists():
                other = json.loads(path.read_text())
                if other.get("plan") == result["plan"]:
                    for label, value in other.get("partial", {}).items():
                        if label not in own:
                            result["partial"][label] = value
            path.write_text(json.dumps(result, indent=1, default=str) + "\n")

    return save


def run(quick: bool, execute: bool = True) -> dict[str, Any]:
    """The benchmark (see the module doc); ``execute=False`` only reads the saved results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    only = [t for t in os.environ.get("LEARNDYN_PEERS_TASKS", "").split(",") if t]
    done: dict[str, dict[str, Any]] = {}
    notes = []
    try:
        for template in QUICK if quick else PLANS:
            plan = resolve(template, done)
            saved, complete = (None, False) if quick else _load(plan)
            if execute and not complete and (not only or plan.task in only):  # run it, or what is missing
                partial = saved.get("partial", {}) if saved else {}
                saved = run_plan(plan, partial, (lambda r, own: None) if quick else _saver(plan.task))
            if saved is not None and saved.get("not_run"):
                notes.append(f"{plan.task}: NOT RUN (compute budget): {', '.join(saved['not_run'])}")
            if saved is not None and saved["rows"]:
                done[plan.task] = saved
                if saved["note"]:
                    notes.append(f"{plan.task}: {saved['note']}")
    finally:
        torch.set_num_threads(threads)
    rows = [row for result in done.values() for row in result["rows"]]
    kept = [r for r in rows if r["optimizer"] != "cgd-full" or r["final_loss"] is not None]
    empty: dict[str, Any] = {"per_task": [], "single": [], "checks": []}
    judged = verdict(kept, baseline=BASELINE, metric_checks=() if quick else METRIC_CHECKS) if rows else empty
    notes += [
        f"lr tuned per task and optimizer on held-out seed {TUNE_SEED} over the task's half-decade grid; "
        "medians over the evaluation seeds; lr_at_edge marks a choice at the grid's end",
        "time_to_target: the training thread's CPU seconds (clock='cpu', evaluation excluded, 1 thread) "
        "-- the machine was shared with other jobs, so wall time would be noisy",
        "steps_to_target is None when most seeds never reached the task's target: "
        + ", ".join(f"{t} {r['target']:.3g} in {r['steps']} steps" for t, r in done.items()),
        "verdict ratios are AdamW's / the candidate's (> 1: the candidate is faster); undecided (neither "
        "reaches the target) is never a win",
    ]
    per_task = [{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in p.items()}
                for p in judged["per_task"]]
    single = [{"optimizer": s["optimizer"], "wins": s["wins"],
               "slower_on": ", ".join(s["slower_on"]) or "none",
               "mean_log_steps_ratio": s["mean_log_steps_ratio"],
               **{t: _fmt_ratio(r) for t, r in s["ratios"].items()}} for s in judged["single"]]
    return {"rows": rows, "verdict_per_task": per_task, "single_configurations": single,
            "checks": judged["checks"], "notes": notes, "targets": {t: (r["target"], r["steps"])
                                                                    for t, r in done.items()}}


def _fmt_ratio(r: dict[str, Any]) -> str:
    if r["steps_ratio"] is None:
        loss = r["loss_ratio"]
        return "undecided" + (f" (loss {loss:.3g}x)" if loss is not None else " (did not run)")
    return f"{r['steps_ratio']:.3g}x steps / {r['time_ratio']:.3g}x time"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """The per-task tables (rows by rank), the verdict tables and the checks of :func:`run`'s result."""
    out = []
    for task, (target, steps) in result["targets"].items():
        rows = sorted((r for r in result["rows"] if r["task"] == task), key=lambda r: r["rank"] or math.inf)
        metric = next((r["metric_name"] for r in rows if r.get("metric_name")), None)
        head = ["rank", "optimizer", "lr", "steps to target", "reached", "CPU s to target", "final loss"]
        head += [metric] if metric else []
        head += ["ms/step", "margin of the winner", "status"]
        out += [f"**{task}** (target {target:.3g}, {steps} steps)", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)]
        for r in rows:
            lr = _cell(r["lr"]) + (" (edge)" if r["lr_at_edge"] else "")
            cells = [_cell(r["rank"]), f"`{r['optimizer']}`", lr, _cell(r["steps_to_target"]), r["reached"],
                     _cell(r["time_to_target"]), _cell(r["final_loss"])]
            cells += [f"{r['metric']:.4g}" if r["metric"] is not None else "–"] if metric else []
            cells += [_cell(r["step_ms"]), r["winner_margin"] or "winner", r["status"]]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["| task | baseline | best CovariantGD | steps ratio | CPU-time ratio | final-loss ratio | win | "
            ">1.5x slower |", "|---|---|---|---|---|---|---|---|"]
    for p in result["verdict_per_task"]:
        cells = [p["task"], f"`{p['baseline']}`", f"`{p['best']}`", p["steps_ratio"], p["time_ratio"],
                 p["loss_ratio"], "yes" if p["win"] else "no", "yes" if p["slower"] else "no"]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    tasks = list(result["targets"])
    out += ["", "| configuration | wins | >1.5x slower on | " + " | ".join(tasks) + " |",
            "|" + "---|" * (3 + len(tasks))]
    for s in result["single_configurations"]:
        cells = [f"`{s['optimizer']}`", str(s["wins"]), s["slower_on"]] + [s.get(t, "–") for t in tasks]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for c in result["checks"]:
        value = f"{c['value']:.4g}" if isinstance(c["value"], float) else c["value"]
        out.append(f"- {c['check']}: {value} (target {c['target']}): **{'PASS' if c['passed'] else 'FAIL'}**")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python benchmarks/bench_optim_peers.py --markdown "
                         "(the benchmark itself runs from benchmarks/run.py --only optim_peers)")
    print(markdown(run(quick=False, execute=False)), end="")
