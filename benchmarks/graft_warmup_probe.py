"""Does a graft warm-up fix the lr transfer? Distributed Shampoo's ``start_preconditioning_step``, emulated.

For the first ``W`` steps the update is Adam's (``torch.optim.Adam`` on the same gradients) while a grafted
``CovariantGD`` accumulates its statistics on those gradients (its own parameter update is undone each
step); from step ``W + 1`` on the grafted optimizer steps alone. ``W = 0`` is plain grafting. Trains
with :func:`learndyn.tasks.compare.train` (1000 steps, seeds 0-2, median final full-data loss) at Adam's
tuned lr and half a decade either side, where :mod:`bench_graft_lr` found the own bests of its misses.

``python benchmarks/graft_warmup_probe.py [task label lr ...]`` (defaults: the MNIST-1D MLP with kron
α = 1 and multiplication with kron α = ½); prints one line per (task, label, W, lr).
"""

from __future__ import annotations

import statistics
import sys
import warnings
from typing import Any

import torch

from learndyn.optim.spec import OptimizerSpec
from learndyn.tasks import get_task
from learndyn.tasks.compare import train

WARMUPS = (0, 100, 300)
SEEDS = (0, 1, 2)
CASES = (
    ("mnist1d-mlp", "cgd-kron-a1", 0.01),
    ("mnist1d-cnn", "cgd-kron-a1", 0.01),
    ("mnist1d-mlp", "cgd-kron-a0.5", 0.01),
    ("multiplication", "cgd-kron-a0.5", 0.01),
    ("multiplication", "cgd-full-a1", 0.01),
)
"""(task, label, Adam's tuned lr from bench_graft_lr): the misses of the constant-lr table."""


class _Warm(torch.optim.Optimizer):
    """Adam's update for ``warmup`` steps while ``inner`` (grafted CovariantGD) only gathers statistics."""

    def __init__(
        self, params: list[torch.nn.Parameter], inner: torch.optim.Optimizer, lr: float, warmup: int
    ) -> None:
        super().__init__(params, {"lr": lr})
        self.inner, self.adam, self.warmup, self.t = inner, torch.optim.Adam(params, lr=lr), warmup, 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.t += 1
        if self.t > self.warmup:
            self.inner.step()
            return
        params = [p for g in self.param_groups for p in g["params"]]
        saved = [p.detach().clone() for p in params]
        self.inner.step()
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
        self.adam.step()


class _WarmSpec(OptimizerSpec):
    warmup: int

    @classmethod
    def of(cls, spec: OptimizerSpec, warmup: int) -> _WarmSpec:
        out = cls(spec.label, spec.family, spec.structure, spec.alpha, spec.precondition_every, spec.options)
        object.__setattr__(out, "warmup", warmup)
        return out

    def build(self, params: Any, lr: float, **options: Any) -> torch.optim.Optimizer:
        params = list(params)
        return _Warm(params, super().build(params, lr, **options), lr, self.warmup)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cases = [(argv[i], argv[i + 1], float(argv[i + 2])) for i in range(0, len(argv), 3)] or CASES
    for task_name, label, lr_adam in cases:
        task = get_task(task_name)
        for warmup in WARMUPS:
            for lr in (float(f"{lr_adam * 10 ** (k / 2):.3g}") for k in (-1, 0, 1)):
                spec = _WarmSpec.of(OptimizerSpec.parse(label).with_options(graft="adam"), warmup)
                finals = [train(task, spec, lr, seed=s, steps=1000, eval_every=50).final_loss for s in SEEDS]
                median = statistics.median(finals)
                print(f"{task_name} {label}+graft W={warmup} lr={lr:g}: median {median:.3g} "
                      f"seeds {[f'{x:.3g}' for x in finals]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
