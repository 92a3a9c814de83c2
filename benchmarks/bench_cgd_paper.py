"""Reproducing Guskov & Vanchurin's CGD experiments: steps to target per optimizer vs tuned Adam, PR fall.

Protocol: the ``cgd-paper`` experiment (:mod:`learndyn.phenomena.cgd_paper`) at its default (full) size --
Rosenbrock 2-D from 4 random starts per seed (target: average loss 1e-3, 1500 steps) and x*y with a tanh MLP
2-8-8-1 (P = 105; target full loss 1e-3, 1000 steps, batch 64); 13 optimizers, each run at every learning
rate of one shared half-decade grid 1e-3 .. 31.6 from 5 seeds; per optimizer the learning rate with the best
median steps to target (then final loss) is its tuned one. Reported: median [min, max] over the seeds of
steps to target and final loss, the ratios against tuned Adam (> 1: better than Adam), the same at Adam's
tuned learning rate, and on x*y the participation ratio of the update covariance at t0 = 1/(1-beta) steps
and at the end. The JSON also holds the logged curves (``series``) for ``benchmarks/plot_cgd_paper.py``.
``--quick``: the experiment's test size (every optimizer, 2 seeds, 2 learning rates).
"""

from __future__ import annotations

import math
from typing import Any

from learndyn.phenomena import registry
from learndyn.phenomena.cgd_paper import PR_CLAIM, STEPS_CLAIM, CgdPaperConfig
from learndyn.phenomena.cgd_paper import run as run_experiment
from learndyn.store.recorder import MemoryRecorder

NAME = "cgd_paper"
COLUMNS = (
    "problem", "optimizer", "lr", "steps", "steps_min", "steps_max", "final", "final_min", "final_max",
    "reached", "vs_adam_steps", "vs_adam_final", "at_adam_lr_steps", "at_adam_lr_final",
    "at_adam_lr_vs_adam_steps", "at_adam_lr_vs_adam_final", "pr_start", "pr_end", "pr_fall",
    "metric_pr_start", "metric_pr_end", "metric_pr_fall", "seconds",
)


def run(quick: bool) -> dict[str, Any]:
    overrides = registry.get("cgd-paper").quick_overrides if quick else {}
    config = CgdPaperConfig(**overrides)
    recorder = MemoryRecorder()
    result = run_experiment(config, recorder)
    rows = [{k: row.get(k) for k in COLUMNS} for row in result.table]
    checks = []
    for row in rows:
        if row["optimizer"] != "cgd-full-a0.5":
            continue
        ratio = row["vs_adam_steps"]
        checks.append({
            "check": f"{row['problem']}: steps(Adam)/steps(full CGD a=1/2), both tuned",
            "value": ratio, "target": f">= {STEPS_CLAIM:g}",
            "passed": ratio is not None and not math.isnan(ratio) and ratio >= STEPS_CLAIM,
        })
        for key, what in (("pr_fall", "the updates' covariance"), ("metric_pr_fall", "the metric's S")):
            if row[key] is not None:
                checks.append({
                    "check": f"{row['problem']}: PR(t0)/PR(end) of {what}, full CGD a=1/2",
                    "value": row[key], "target": f">= {PR_CLAIM:g}",
                    "passed": math.isfinite(row[key]) and row[key] >= PR_CLAIM,
                })
    notes = [
        f"lr grid {list(config.lr_grid)}, seeds {config.seed}..{config.seed + config.seeds - 1}, "
        f"{config.starts} Rosenbrock starts per seed; lr chosen on the evaluation seeds (same for all)",
        f"targets: rosenbrock {config.rosenbrock_target:g} (average over starts, {config.rosenbrock_steps} "
        f"steps), multiplication {config.multiplication_target:g} ({config.multiplication_steps} steps, "
        f"width {config.width}, depth {config.depth})",
        "steps = inf: the median seed never reached the target; vs_adam_* = Adam's / this optimizer's "
        "(> 1: better than Adam); at_adam_lr_*: this optimizer at Adam's tuned lr",
        "cgd-full-* is CovariantGD structure='block' over one flat parameter vector per member = 'full' per "
        "member; precondition_every=1; CovariantGD defaults otherwise",
    ]
    series = {n: [a.tolist() for a in recorder.series(n)] for n in recorder.scalars}
    # "series": the logged curves (benchmarks/plot_cgd_paper.py draws docs/img/cgd-paper.png from them)
    return {"rows": rows, "checks": checks, "notes": notes, "series": series}
