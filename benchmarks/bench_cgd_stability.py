"""Why non-diagonal CovariantGD loses at a shared learning rate: step scale, statistics' rank and ε scale.

Part A, *shadow* measurement on the multiplication task (697 parameters): a model is trained by
``torch.optim.Adam`` (lr ``ADAM_LR``); a CovariantGD on the same parameters at lr = 1 is stepped on the same
gradients and undone after each step, so its direction ``d = g⁻¹F`` is seen along Adam's trajectory without
changing it. Reported per configuration: ``r_t = ‖d‖/‖a‖`` (whole-model norms; ``a`` Adam's direction
``m̂/(√v̂ + ε)``), i.e. the factor by which its lr would have to be *smaller* than Adam's for an equally long
step, at step 1, its median over the warm-up (steps 1-100, roots fresh every step) and the largest on the
stale steps after it (roots reused for 10 steps); for ``full``, ``tr(Ŝ)/P`` (the mean eigenvalue, vs ε) and
the rank of ``Ŝ`` at steps 10 and 100.

Part B, final loss after ``STEPS_B`` steps on the same task at Adam's tuned lr (best of ``ADAM_GRID``), seed
0: grafted kron/full at α = 1 with ``eps_rel ∈ EPS_RELS``, and without grafting.

``--quick``: part A for 60 steps, part B skipped.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any

import torch

from learndyn.optim import CovariantGD
from learndyn.optim.spec import OptimizerSpec
from learndyn.tasks import get_task
from learndyn.tasks.base import make_generator
from learndyn.tasks.compare import train

NAME = "cgd_stability"
ADAM_LR = 1e-2
STEPS_A = 300
CONFIGS = (("kron", 0.5), ("kron", 1.0), ("full", 0.5), ("full", 1.0))
STEPS_B = 1000
ADAM_GRID = (3.16e-3, 1e-2, 3.16e-2, 1e-1)
EPS_RELS = (0.0, 1e-3, 1e-1)


def _shadow(structure: str, alpha: float, steps: int) -> dict[str, Any]:
    task = get_task("multiplication")
    model = task.make_model(0)
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    adam = torch.optim.Adam(params, lr=ADAM_LR)
    shadow = CovariantGD(params, lr=1.0, alpha=alpha, structure=structure, precondition_every=10)
    gen = make_generator(0)
    ratios: list[float] = []
    spectrum: dict[int, tuple[float, int]] = {}
    for t in range(1, steps + 1):
        x, y = task.sample(gen)
        adam.zero_grad()
        task.loss_fn(model(x), y).backward()
        before = [p.detach().clone() for p in params]
        shadow.step()
        with torch.no_grad():
            d = torch.cat([(q0 - p).reshape(-1) for p, q0 in zip(params, before, strict=True)])
            for p, q0 in zip(params, before, strict=True):
                p.copy_(q0)
        adam.step()
        with torch.no_grad():
            a = torch.cat([(q0 - p).reshape(-1) for p, q0 in zip(params, before, strict=True)]) / ADAM_LR
        ratios.append(float(d.norm() / a.norm()))
        if structure == "full" and t in (10, 100):
            S = next(st["full_S"] for st in shadow.state.values() if "full_S" in st)
            S_hat = S.double() / (1 - 0.999**t)
            lam = torch.linalg.eigvalsh(S_hat)
            rank = int((lam > lam.max() * P * torch.finfo(torch.float32).eps).sum())
            spectrum[t] = (float(S_hat.trace() / P), rank)
    warm, stale = ratios[:100], ratios[100:]
    row: dict[str, Any] = {
        "config": f"cgd-{structure}-a{alpha:g} (k=10)",
        "r_step1": ratios[0],
        "r_median_warmup": statistics.median(warm),
        "r_max_stale": max(stale) if stale else None,
        "r_median_stale": statistics.median(stale) if stale else None,
    }
    if structure == "full":
        for t, (mean_eig, rank) in spectrum.items():
            row[f"trS/P_t{t}"] = mean_eig
            row[f"rank_t{t}"] = f"{rank}/{P}"
    return row


def _final(label: str, lr: float, **options: Any) -> float:
    spec = OptimizerSpec.parse(label)
    if options:
        spec = spec.with_options(**options)
    return train(get_task("multiplication"), spec, lr, seed=0, steps=STEPS_B).final_loss


def run(quick: bool) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    try:
        rows = [_shadow(s, a, 60 if quick else STEPS_A) for s, a in CONFIGS]
        finals: list[dict[str, Any]] = []
        if not quick:
            adam = {lr: _final("adam", lr) for lr in ADAM_GRID}
            lr = min(adam, key=lambda k: (adam[k], k))
            finals.append({"optimizer": "adam", "lr": lr, "eps_rel": None, "graft": "-", "final": adam[lr]})
            for s in ("kron", "full"):
                label = f"cgd-{s}-a1"
                finals.append({"optimizer": label, "lr": lr, "eps_rel": 0.0, "graft": "none",
                               "final": _final(label, lr)})
                for eps_rel in EPS_RELS:
                    finals.append({"optimizer": label, "lr": lr, "eps_rel": eps_rel, "graft": "adam",
                                   "final": _final(label, lr, graft="adam", eps_rel=eps_rel)})
    finally:
        torch.set_num_threads(threads)
    for f in finals:
        f["final"] = f["final"] if math.isfinite(f["final"]) else math.inf
    notes = [
        f"part A: multiplication, Adam lr {ADAM_LR:g}, {60 if quick else STEPS_A} steps, seed 0; r = "
        "‖CovariantGD direction‖/‖Adam direction‖ on the same gradients (eps=1e-8 inside, warm-up 100)",
        f"part B: multiplication, {STEPS_B} steps, seed 0, at Adam's tuned lr from {ADAM_GRID}",
    ]
    return {"rows": rows, "final_loss": finals, "notes": notes}


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import main

    raise SystemExit(main(["--only", NAME, *sys.argv[1:]]))
