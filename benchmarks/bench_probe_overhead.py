"""Overhead of the Monitor presets over plain training, and the hook-route speed-up for per-sample statistics.

Setup: scikit-learn's digits (1797 images, 8×8, 10 classes), batch 128 drawn with replacement, SGD,
cross-entropy, ``torch.set_num_threads(1)``. Two models: an MLP ``64 → 128 → 128 → 10`` (ReLU) and a small
CNN on the 8×8 images (``conv 1→8, 3×3`` → ReLU → ``conv 8→16, 3×3`` → ReLU → 2×2 max-pool → ``linear 256 →
10``). For every configuration (plain, light, standard, full) one model copy with the same initial weights
and its own optimizer and Monitor. A *window* is 200 consecutive training steps (zero_grad, forward,
backward, ``opt.step()``, and ``monitor.after_step`` when instrumented), a multiple of every probe's
``every``, so each probe's cost is counted at its schedule. Windows of the configurations are interleaved
(the order rotates every repetition); the headline ratio is the median over repetitions of the paired
ratio ``t(instrumented window) / t(plain window)`` -- pairing within a repetition cancels slow load drifts.

Per-sample statistics: time of the gradient Gram matrix of one batch by layer hooks
(``HookGramCollector``, one forward/backward pass) and by ``vmap(grad)`` (materialised per-sample
gradients), both in units of a plain training step, and their ratio.

Targets: light ≤ 1.1×, standard ≤ 1.5×, full ≤ 3× the plain step.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

NAME = "probe_overhead"
BATCH = 128
WINDOW = 200
PRESETS = ("light", "standard", "full")


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target, dtype=torch.int64)


def _model(kind: str) -> nn.Module:
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    if kind == "mlp":
        model: nn.Module = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        )
    else:
        model = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 16, 10),
        )
    torch.random.set_rng_state(state)
    return model


class _Config:
    """One model copy with its optimizer, optional Monitor and its own step counter."""

    def __init__(self, kind: str, preset: str | None) -> None:
        from learndyn.probes import Monitor

        self.model = _model(kind)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.monitor = (
            None if preset is None else Monitor(self.model, F.cross_entropy, preset, optimizer=self.opt)
        )
        self.step = 0

    def window(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        model, opt, monitor = self.model, self.opt, self.monitor
        start = time.perf_counter()
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if monitor is not None:
                monitor.after_step(self.step, (x, y))
            self.step += 1
        return time.perf_counter() - start


def _overhead(
    kind: str, reps: int, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[dict, list[str]]:
    notes: list[str] = []
    configs: dict[str, _Config] = {"plain": _Config(kind, None)}
    for preset in PRESETS:
        try:
            configs[preset] = _Config(kind, preset)
        except ImportError as exc:
            notes.append(f"preset {preset!r} not measured: {exc}")
    labels = list(configs)
    for label in labels:  # warm-up: first measurements capture probe batches, build hooks, load kernels
        configs[label].window(batches)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for rep in range(reps):
        order = labels[rep % len(labels) :] + labels[: rep % len(labels)]
        for label in order:
            times[label].append(configs[label].window(batches))
    out = {}
    for label in labels:
        ratio = statistics.median(a / b for a, b in zip(times[label], times["plain"], strict=True))
        probe_s = {}
        mon = configs[label].monitor
        if mon is not None:
            total = sum(mon.timings.values())
            probe_s = {k: v / total for k, v in sorted(mon.timings.items(), key=lambda kv: -kv[1])}
        out[label] = {
            "step_ms": 1e3 * statistics.median(times[label]) / len(batches),
            "ratio": ratio,
            "share": ", ".join(f"{k} {v:.0%}" for k, v in list(probe_s.items())[:4]),
        }
    return out, notes


def _per_sample(kind: str, x: torch.Tensor, y: torch.Tensor, reps: int) -> dict[str, float]:
    """Median paired ratios (interleaved) of the Gram by hooks / by vmap / a plain step."""
    from learndyn.stats import HookGramCollector, gradient_gram

    model = _model(kind)
    collector = HookGramCollector(model)
    params = list(model.parameters())
    fns = {
        "step": lambda: torch.autograd.grad(F.cross_entropy(model(x), y), params),
        "hooks": lambda: collector(F.cross_entropy, x, y),
        "vmap": lambda: gradient_gram(model, F.cross_entropy, x, y, route="vmap"),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(reps + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if rep:  # the first round is a warm-up
                times[name].append(time.perf_counter() - t0)

    def ratio(a: str, b: str) -> float:
        return statistics.median(s / t for s, t in zip(times[a], times[b], strict=True))

    return {
        "hooks_steps": ratio("hooks", "step"),
        "vmap_steps": ratio("vmap", "step"),
        "speedup": ratio("vmap", "hooks"),
    }


def run(quick: bool) -> dict[str, Any]:
    from learndyn.probes.presets import TARGET_OVERHEAD

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reps = 3 if quick else 9
        x_all, y_all = _digits()
        gen = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(WINDOW):
            idx = torch.randint(0, x_all.shape[0], (BATCH,), generator=gen)
            batches.append((x_all[idx], y_all[idx]))
        rows, notes, checks = [], [], []
        for kind in ("mlp", "cnn"):
            res, extra = _overhead(kind, reps, batches)
            notes += [f"{kind}: {n}" for n in extra]
            ps = _per_sample(kind, *batches[0], reps=5 if quick else 20)
            for label, m in res.items():
                rows.append(
                    {
                        "model": kind,
                        "config": label,
                        "ratio": m["ratio"],
                        "step_ms": m["step_ms"],
                        "probe_time_share": m["share"] or "-",
                    }
                )
                if label in TARGET_OVERHEAD:
                    target = TARGET_OVERHEAD[label]
                    checks.append(
                        {
                            "check": f"{kind} {label} / plain step",
                            "value": m["ratio"],
                            "target": f"<= {target}",
                            "passed": m["ratio"] <= target,
                        }
                    )
            rows.append({"model": kind, "config": "per-sample Gram: hooks", "ratio": ps["hooks_steps"]})
            rows.append({"model": kind, "config": "per-sample Gram: vmap", "ratio": ps["vmap_steps"]})
            rows.append({"model": kind, "config": "hook-route speed-up over vmap", "ratio": ps["speedup"]})
        notes += [
            f"ratio = median over {reps} interleaved repetitions of t(window)/t(plain window); window = "
            f"{WINDOW} SGD steps, digits batch {BATCH}, torch threads 1; step_ms = median per step",
            "per-sample Gram rows: time of one batch's Gram matrix in plain-step units (hooks: layer hooks, "
            "vmap: materialised per-sample gradients)",
            "probe_time_share: each probe's share of the Monitor's probe time (largest four)",
        ]
        return {"rows": rows, "notes": notes, "checks": checks}
    finally:
        torch.set_num_threads(threads)
