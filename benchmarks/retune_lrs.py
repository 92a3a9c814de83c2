"""Re-tune rows of ``src/learndyn/tasks/learning_rates.toml`` with the quality benchmark's own search.

``python benchmarks/retune_lrs.py TASK:LABEL [TASK:LABEL ...]`` runs :func:`learndyn.tasks.compare.tune_lr`
(the adaptive decade search + half-decade refinement on the held-out seed ``TUNE_SEED``, default task
budgets, ``max_full_params=1000``, one thread) -- exactly what ``benchmarks/bench_optim_quality.py`` does per
task and optimizer -- for the given pairs only, and prints each chosen rate as a TOML line. Results are also
appended to ``benchmarks/results/retune_lrs.jsonl`` (git-ignored). Used for rows that went stale when the
optimizer changed after the table was tuned (see the table's header).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from learndyn.tasks import get_task
from learndyn.tasks.compare import tune_lr

OUT = Path(__file__).resolve().parent / "results" / "retune_lrs.jsonl"


def main(pairs: list[str]) -> None:
    torch.set_num_threads(1)
    OUT.parent.mkdir(exist_ok=True)
    for pair in pairs:
        task_name, _, label = pair.partition(":")
        t0 = time.perf_counter()
        lr, runs = tune_lr(get_task(task_name), label, max_full_params=1000)
        tried = {r.lr: (r.steps_to_target, r.final_loss, r.status) for r in runs}
        row = {"task": task_name, "optimizer": label, "lr": lr, "seconds": time.perf_counter() - t0,
               "tried": {f"{k:g}": v for k, v in sorted(tried.items())}}
        with OUT.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        took = f'{row["seconds"]:.0f} s'
        print(f'[{task_name}] "{label}" = {lr:g}    # {took}; tried {row["tried"]}', flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
