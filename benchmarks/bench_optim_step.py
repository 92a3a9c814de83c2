"""Step cost of optimizers (issue 12, "Drive II"): a training step ÷ AdamW's, CovariantGD and peers, one run.

Setup: MLP ``width -> width -> width -> width -> 10`` (three hidden ReLU layers), batch 128, cross-entropy,
``torch.set_num_threads(1)``, one model copy per optimizer (same initial weights), windows of ``window``
steps (a multiple of 10, so a schedule of roots every 10 steps is counted fully) interleaved over
repetitions in a rotating order. ``ratio`` is the median over repetitions of the paired ratio
``t(window) / t(AdamW window)`` of the full training step (forward, backward, ``step``: pairing within a
repetition cancels slow drifts of a shared machine's load); ``opt_ratio`` the same for the time inside
``optimizer.step()`` only (the part an optimizer controls). Root schedules start in their steady state
(``precondition_warmup=0``: the default warm-up's per-step roots are a one-off, not a step cost).

Optimizers (labels):

- ``adamw`` -- :class:`torch.optim.AdamW` (the denominator); ``cgd-diag`` -- CovariantGD ``'diag'``;
- ``kron-unblocked`` -- ``'kron'`` before issue 12: full factors, roots every 10 steps, float64;
- ``kron`` -- ``'kron'`` with today's defaults (:data:`learndyn.optim.options.DEFAULT_MAX_BLOCK`), roots
  every 10 steps (the ``cgd-kron`` label's schedule);
- ``kron-b<b>[-s<k>][-e<r>][-f32]`` -- blocks of ``b``, statistics every ``k`` steps, ``eigh`` on every
  ``r``-th root only (power-iteration + QR refreshes between), float32 roots (the choices the defaults
  were picked from);
- ``muon``, ``po-soap``, ``po-shampoo``, ``po-scalable-shampoo``, ``hb-soap`` -- the peers of
  :data:`learndyn.optim.peers.PEERS`, built exactly as the optimizer comparison builds them: torch's Muon
  on every 2-D parameter + AdamW on the rest (one lr, Muon's step scaled to AdamW's update RMS),
  pytorch_optimizer's SOAP (its defaults: eigenbasis every 10 steps), Shampoo (roots every 10 steps) and
  ScalableShampoo (blocks of 128, roots every 10 steps), heavyball's SOAP uncompiled. ``hb-psgd-kron`` --
  heavyball's PSGDKron, uncompiled, not in the default list: it asked for an 824 GB einsum buffer at width
  512 and grew past 8 GB at width 128 with heavyball 3.2.1 and torch 2.13, so pass it in ``extra`` only
  knowingly. Peers are measured only if their package is installed (``pip install -c constraints.txt -e
  ".[bench]"``); a missing one is listed as not measured.

The quality check trains the digits MLP (``64 -> 256 -> 256 -> 10``, so blocks of 32 and 64 really split its
factors) for a fixed number of steps with each optimizer at the best learning rate of a small grid
(best final full-data loss), median over 3 seeds: blocked ``kron`` must still reach a lower loss than
AdamW (cheap must not mean broken); unblocked ``kron`` and Muon are printed beside it. ``--quick`` times
widths 128 and 512 with fewer repetitions and trains 60 steps at one learning rate each (a smoke test of
the harness).

This replaces the former ``kron_cost`` and ``optim_step`` benchmarks (one command, one table, one JSON:
``python benchmarks/run.py --only optim_step``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from learndyn.optim.peers import PEERS as PEER_OPTIMIZERS
from learndyn.optim.peers import build_peer

NAME = "optim_step"
BATCH = 128
TARGET_WIDTH = 512
TARGETS = {"kron": 1.5, "cgd-diag": 1.05}
EVERY = 10
VARIANTS = ["kron-b32-f32", "kron-b32-e4", "kron-b32-s2", "kron-b32-s2-e4"]
"""The ``kron`` settings timed beside the default (labels as in the module doc; blocks of 64 are the default,
``kron``, so ``kron-b64`` is not timed again unless passed in ``extra``)."""
PEERS = ["po-soap", "po-shampoo", "po-scalable-shampoo", "hb-soap"]
"""The package peers timed by default (``muon`` is always timed; see the module doc)."""
FAILURES: list[str] = []
"""Optimizers that raised at some width (reported in the notes)."""


def _model(width: int, seed: int = 0) -> nn.Module:
    """The benchmark MLP: ``width -> width -> width -> width -> 10``, ReLU, initial weights from ``seed``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(3):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    torch.random.set_rng_state(gen_state)
    return model


def _cgd(params: Any, lr: float, steady: bool, **kw: Any) -> torch.optim.Optimizer:
    from learndyn.optim import CovariantGD

    if steady:  # the steady-state schedule from the first step (for timing)
        kw["precondition_warmup"] = 0
    return CovariantGD(params, lr=lr, alpha=0.5, **kw)


def _kron_variant(label: str) -> dict[str, Any]:
    """``kron-b64-s10-e5-f32`` → the CovariantGD options it names (blocks of 64, statistics every 10 steps,
    a full eigendecomposition every 5th root, float32 roots)."""
    kw: dict[str, Any] = {"structure": "kron", "precondition_every": EVERY}
    for part in label.split("-")[1:]:
        if part.startswith("b"):
            kw["max_block"] = int(part[1:])
        elif part.startswith("s"):
            kw["statistics_every"] = int(part[1:])
        elif part.startswith("e"):
            kw["eigh_every"] = int(part[1:])
        elif part == "f32":
            kw["root_dtype"] = "float32"
        else:
            raise ValueError(f"unknown part {part!r} of the optimizer label {label!r}")
    return kw


def make_optimizer(label: str, model: nn.Module, lr: float, steady: bool = True) -> torch.optim.Optimizer:
    """The optimizer ``label`` (see the module doc) for ``model`` at learning rate ``lr``; ``steady``:
    CovariantGD without its root warm-up (``precondition_warmup=0``, for timing)."""
    params = list(model.parameters())
    if label == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if label == "cgd-diag":
        return _cgd(params, lr, steady, structure="diag")
    if label == "kron":
        return _cgd(params, lr, steady, structure="kron", precondition_every=EVERY)
    if label == "kron-unblocked":
        return _cgd(params, lr, steady, structure="kron", precondition_every=EVERY, max_block=None)
    if label.startswith("kron-"):
        return _cgd(params, lr, steady, **_kron_variant(label))
    if label == "hb-psgd-kron":
        import heavyball

        heavyball.utils.compile_mode = None  # eager: compilation on a shared CPU is not what is measured
        return heavyball.PSGDKron(params, lr=lr)
    if label in PEER_OPTIMIZERS:
        return build_peer(label, params, lr)
    raise ValueError(f"unknown optimizer label {label!r}")


def available(labels: list[str]) -> tuple[list[str], list[str]]:
    """``(labels that build, notes on those that do not)``."""
    ok, notes = [], []
    for label in labels:
        try:
            make_optimizer(label, _model(8), 1e-3)
        except Exception as exc:  # noqa: BLE001 - a peer that does not import is reported, not fatal
            notes.append(f"{label}: not measured ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        else:
            ok.append(label)
    return ok, notes


def _window(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> tuple[float, float]:
    """Seconds for ``steps`` training steps, and the part spent in ``opt.step()``."""
    in_step = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        t = time.perf_counter()
        opt.step()
        in_step += time.perf_counter() - t
    return time.perf_counter() - start, in_step


def measure(width: int, labels: list[str], reps: int, window: int) -> dict[str, dict[str, float]]:
    """Per optimizer: median ms per step (total, in ``step()``) and the median paired ratios to ``adamw``."""
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(BATCH, width, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    setups = {}
    for label in labels:
        model = _model(width)
        try:
            opt = make_optimizer(label, model, 1e-4)
            _window(model, opt, x, y, window)  # warm-up: state allocation, first roots
        except Exception as exc:  # noqa: BLE001 - a peer that fails at this width is reported, not fatal
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            FAILURES.append(f"{label} at width {width}: {why}")
            continue
        setups[label] = (model, opt)
    labels = list(setups)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
    for rep in range(reps):
        order = labels[rep % len(labels) :] + labels[: rep % len(labels)]
        for label in order:
            model, opt = setups[label]
            times[label].append(_window(model, opt, x, y, window))
    base = times["adamw"]

    def ratio(ts: list[tuple[float, float]], part: int) -> float:
        return statistics.median(a[part] / b[part] for a, b in zip(ts, base, strict=True))

    return {
        label: {
            "ratio": ratio(ts, 0),
            "opt_ratio": ratio(ts, 1),
            "step_ms": 1e3 * statistics.median(t for t, _ in ts) / window,
            "opt_step_ms": 1e3 * statistics.median(s for _, s in ts) / window,
        }
        for label, ts in times.items()
    }


def flop_floor(width: int, block: int | None, statistics_every: int = 1) -> float:
    """``1 +`` the FLOPs of ``kron``'s per-step products over the forward + backward FLOPs of the MLP.

    Forward + backward of an ``m × n`` linear layer at batch ``B`` costs ``~6Bmn``; applying
    ``L^{-a} F R^{-a}`` with blocks of ``b`` (``b = min(side, block)``) costs ``2mn(b_m + b_n)``, and the
    statistics the same again every ``statistics_every``-th step. Adam's own elementwise work is left out, so
    this is roughly the least ``t(kron)/t(AdamW)`` can be with the same matmul efficiency.
    """

    def side(k: int) -> int:
        return k if block is None else min(k, block)

    shapes = [(width, width)] * 3 + [(10, width)]
    fb = sum(6 * BATCH * m * n for m, n in shapes)
    kron = sum(2 * m * n * (side(m) + side(n)) for m, n in shapes) * (1 + 1 / statistics_every)
    return 1 + kron / fb


def quality(labels: list[str], steps: int, seeds: int, lrs: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Final full-data loss on the digits MLP (width 256, 2 hidden) per optimizer: best lr of its grid,
    median over ``seeds`` seeds (the same seeds and batches for every optimizer)."""
    from learndyn.tasks import get_task

    task = get_task("digits", width=256, depth=2, batch_size=64)
    rows = []
    for label in labels:
        best: tuple[float, float] | None = None
        for lr in lrs[label]:
            finals = []
            for seed in range(seeds):
                model = task.make_model(seed)
                opt = make_optimizer(label, model, lr, steady=False)
                gen = torch.Generator().manual_seed(1000 + seed)
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    task.loss(model, task.sample(gen)).backward()
                    opt.step()
                final = task.evaluate(model)
                finals.append(final if final == final else float("inf"))
            med = statistics.median(finals)
            if best is None or med < best[1]:
                best = (lr, med)
        assert best is not None
        rows.append({"optimizer": label, "steps": steps, "best_lr": best[0], "final_loss": best[1]})
    return rows


KRON_LRS = [1e-2, 3e-2, 5e-2, 1e-1, 3e-1]
QUALITY_LRS: dict[str, list[float]] = {
    "adamw": [1e-3, 3e-3, 5e-3, 1e-2],
    "kron-unblocked": KRON_LRS,
    "kron": KRON_LRS,
    "muon": [1e-3, 3e-3, 5e-3, 1e-2],  # AdamW's grid: the peer scales Muon's step to AdamW's update RMS
}
"""Learning-rate grids of the quality check (kron's scale differs from Adam's: its tuned rates in
``learndyn/tasks/learning_rates.toml`` are 0.1-1)."""


def run(quick: bool, widths: list[int] | None = None, extra: list[str] | None = None) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        widths = widths or ([128] if quick else [128, 512, 1024])
        reps, window = (3, 10) if quick else (5, 10)
        wanted = ["adamw", "cgd-diag", "kron-unblocked", "kron", *VARIANTS, "muon", *PEERS, *(extra or [])]
        labels, notes = available(wanted)
        rows, checks = [], []
        for width in widths:
            for label, m in measure(width, labels, reps, window).items():
                rows.append({"width": width, "optimizer": label, **m})
                if width == TARGET_WIDTH and label in TARGETS:
                    checks.append(
                        {
                            "check": f"{label} step / adamw step at width {width}",
                            "value": m["ratio"],
                            "target": f"<= {TARGETS[label]}",
                            "passed": m["ratio"] <= TARGETS[label],
                        }
                    )
        grids = {k: v[-2:-1] for k, v in QUALITY_LRS.items()} if quick else QUALITY_LRS
        q = quality(list(QUALITY_LRS), 60 if quick else 400, 1 if quick else 3, grids)
        for r in q:
            rows.append(
                {
                    "width": "digits-256x2",
                    "optimizer": r["optimizer"],
                    "final_loss": r["final_loss"],
                    "best_lr": r["best_lr"],
                    "steps": r["steps"],
                }
            )
        loss = {r["optimizer"]: r["final_loss"] for r in q}
        if quick:
            notes.append("quick: the quality rows are a 60-step smoke test at one learning rate (no check)")
        else:
            checks.append(
                {
                    "check": "digits final loss: kron (blocked, default) / AdamW",
                    "value": loss["kron"] / loss["adamw"],
                    "target": "< 1",
                    "passed": loss["kron"] < loss["adamw"],
                }
            )
        notes += [f"not measured: {f}" for f in FAILURES]
        notes += [
            f"ratio = median over {reps} interleaved repetitions of t(window)/t(adamw window), window = "
            f"{window} steps (forward+backward+step), batch {BATCH}, torch threads 1",
            "opt_ratio = the same for the time inside optimizer.step() only; *_ms are medians per step",
            f"roots/eigenbases every {EVERY} steps for kron and the peers' Shampoo/SOAP; "
            "precondition_warmup=0 for CovariantGD (steady state)",
        ]
        notes += [
            f"width {w}: FLOP floor of kron's products + statistics over AdamW (1 + their FLOPs / forward+"
            f"backward FLOPs): blocks of 64 {flop_floor(w, 64):.2f}, of 32 {flop_floor(w, 32):.2f}, "
            f"unblocked {flop_floor(w, None):.2f}"
            for w in widths
        ]
        return {"rows": rows, "notes": notes, "checks": checks}
    finally:
        torch.set_num_threads(threads)
