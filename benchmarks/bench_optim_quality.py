"""Optimisation quality: time to target and final loss of SGD, Adam and CovariantGD on the benchmark tasks.

Protocol: :func:`learndyn.tasks.compare.compare` with ``tune=True`` -- each optimizer's learning rate is
chosen per task by an adaptive decade search (decades ``1e-4 .. 1``, extended while the best is on the edge,
then refined by half decades) on a held-out seed (``TUNE_SEED``); the chosen rate is then run from the
evaluation seeds ``0, 1, 2``. Reported per task and optimizer: the medians across seeds of steps to target
(first evaluation with full-data loss ``<= target``; every ``steps/100`` steps), training wall time to
target, and the final loss. Winner: fewest median steps to target, ties and never-reached broken by the
final loss; margins are ``steps(other)/steps(winner)`` when both reach the target, else the final-loss
ratio. The ``full`` structure is skipped above 1000 parameters (``max_full_params``).

``--quick``: three tasks at 400 steps, four optimizers, one seed, the fixed grid ``1e-3, 1e-2, 1e-1``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from learndyn.tasks import get_task, task_names
from learndyn.tasks.compare import TUNE_SEED, Comparison, compare, margin

NAME = "optim_quality"
ALPHAS = (0.25, 0.5, 0.75, 1.0)


def optimizers(quick: bool) -> list[str]:
    if quick:
        return ["sgd", "adam", "cgd-diag", "cgd-kron"]
    cgd = [f"cgd-{s}-a{a:g}" for s in ("diag", "kron", "full") for a in ALPHAS]
    return ["sgd", "momentum", "adam", *cgd]


def _fmt_margin(m: dict[str, Any] | None) -> str:
    if m is None:
        return "-"
    unit = "x steps" if m["on"] == "steps_to_target" else "x loss"
    ratio = "inf" if math.isinf(m["ratio"]) else f"{m['ratio']:.2f}"
    return f"{ratio}{unit}" + (f" ({m['note']})" if m.get("note") else "")


def verdicts(result: Comparison) -> list[dict[str, Any]]:
    """Per task: the winner and its margins, the fastest by wall time, and the best CovariantGD vs Adam."""
    rows = result.rows()
    out = []
    for win in result.winners():
        task = win["task"]
        ranked = sorted((r for r in rows if r["task"] == task and r["rank"]), key=lambda r: r["rank"])
        timed = [r for r in ranked if r["time_to_target"] is not None]
        fastest = min(timed, key=lambda r: r["time_to_target"]) if timed else None
        adam = next((r for r in ranked if r["optimizer"] == "adam"), None)
        best_cgd = next((r for r in ranked if r["optimizer"].startswith("cgd-")), None)
        out.append({
            "task": task,
            "winner": win["winner"],
            "steps": win.get("steps_to_target"),
            "final_loss": win.get("final_loss"),
            "runner_up": win.get("runner_up"),
            "vs_runner_up": _fmt_margin(win.get("vs_runner_up")),
            "vs_adam": _fmt_margin(win.get("vs_adam")),
            "fastest_wall": fastest["optimizer"] if fastest else None,
            "best_cgd": best_cgd["optimizer"] if best_cgd else None,
            "best_cgd_vs_adam": _fmt_margin(margin(best_cgd, adam)) if best_cgd and adam else "-",
        })
    return out


def run(quick: bool) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if quick:
            tasks = [get_task(n) for n in ("rosenbrock-2d", "multiplication", "deep-linear")]
            result = compare(tasks, optimizers(True), seeds=(0,), steps=400, tune=True,
                             lr_grid=(1e-3, 1e-2, 1e-1), max_full_params=1000, description=NAME)
        else:
            tasks = [get_task(n) for n in task_names()]
            result = compare(tasks, optimizers(False), seeds=(0, 1, 2), tune=True, max_full_params=1000,
                             description=NAME)
    finally:
        torch.set_num_threads(threads)
    rows = [{k: r[k] for k in ("task", "optimizer", "rank", "lr", "steps_to_target", "reached",
                              "time_to_target", "final_loss", "step_ms", "status", "note")}
            for r in result.rows()]
    notes = [
        f"learning rate tuned per task and optimizer on held-out seed {TUNE_SEED} "
        + ("(grid 1e-3, 1e-2, 1e-1)" if quick else "(adaptive decade search + half-decade refinement)")
        + f"; evaluated on seeds {sorted({r.seed for r in result.runs})}; medians across seeds",
        "steps_to_target is None when most seeds never reached the task's target; time_to_target is "
        "training wall time in seconds (single thread, evaluation excluded)",
        "targets: " + ", ".join(f"{t} {v:.3g}" for t, v in result.targets.items()),
        f"{len(result.tuning)} tuning runs + {len(result.runs)} evaluation runs",
    ]
    return {"rows": rows, "winners": verdicts(result), "notes": notes}
