"""Grafting: the direction of one update with the per-parameter norm of another (Distributed Shampoo's).

With ``graft='adam'`` :class:`~learndyn.optim.CovariantGD` replaces each parameter tensor's preconditioned
direction ``D = g⁻¹F`` (any structure) by::

    D_graft = D · ‖A‖ / ‖D‖          (Frobenius norms per parameter tensor; D_graft = 0 where D = 0)
    A       = F ⊘ (√(ŝ + ε_r) + ε)   (ε_r = eps_root, ε = eps; Adam's placement of ε)
    s       ← β₂ s + (1−β₂) v ⊙ v,   ŝ = s / (1 − β₂ᵗ)

``F`` is the same (bias-corrected) first moment the structure preconditions and ``v`` the same moment vector
(``∇`` or ``∇ − m``), so ``A`` is exactly the update of ``structure='diag', alpha=0.5, eps_mode='outside'``
(Adam, AdaBelief for ``moment='covariance'``) built from the optimizer's own moments. ``s`` is kept per
parameter as ``graft_exp_avg_sq`` and updated every step (also when ``statistics_every > 1``). The step is
then ``q ← q·(1 − lr·wd) − lr·D_graft``: the structure decides *where* to go, Adam *how far*, per layer; so
the learning rate means what it means for Adam, whatever the structure, ``α`` or ``ε``.

Grafting replaces the norm after everything the structure does to its direction (including the stale cap of
``stale_damping='trace'``): the grafted step is as long as Adam's on every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from learndyn.optim import functional as Fn
from learndyn.optim.structures.base import GroupStep, bias_correction2

GRAFTS = ("none", "adam")
"""Allowed ``graft=`` values: ``'none'`` (the structure's own step length) or ``'adam'``."""

STATE_KEY = "graft_exp_avg_sq"


def reference_directions(ctx: GroupStep, F: list[Tensor]) -> list[Tensor]:
    """Update the grafting second moments of ``ctx`` and return Adam's directions ``A = F ⊘ (√ŝ + ε)``."""
    group: Mapping[str, Any] = ctx.group
    for st, p in zip(ctx.states, ctx.params, strict=True):
        if STATE_KEY not in st:
            st[STATE_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
    sq = [st[STATE_KEY] for st in ctx.states]
    Fn.foreach_ema_square_(sq, ctx.vs, group["betas"][1])
    buckets: dict[int, list[int]] = {}
    for i, st in enumerate(ctx.states):
        buckets.setdefault(st["step"], []).append(i)
    out: list[Tensor | None] = [None] * len(F)
    for step, idx in buckets.items():
        metric = Fn.foreach_diag_metric(
            [sq[i] for i in idx],
            bc2=bias_correction2(group, step),
            alpha=0.5,
            eps=group["eps"],
            eps_mode="outside",
            eps_root=group["eps_root"],
        )
        assert metric is not None
        for i, a in zip(idx, torch._foreach_div([F[i] for i in idx], metric), strict=True):
            out[i] = a
    return out  # type: ignore[return-value]


def graft_norms(dirs: list[Tensor], refs: list[Tensor]) -> list[Tensor]:
    """``D · ‖A‖/‖D‖`` per tensor (Frobenius norms; ``D = 0`` stays 0), new tensors (a direction may be a
    gradient itself), batched per dtype and device (one ``_foreach_norm`` each, no host sync)."""
    out: list[Tensor | None] = [None] * len(dirs)
    buckets: dict[tuple, list[int]] = {}
    for i, d in enumerate(dirs):
        buckets.setdefault((d.dtype, d.device), []).append(i)
    for idx in buckets.values():
        d_norm = torch.stack(torch._foreach_norm([dirs[i] for i in idx]))
        r_norm = torch.stack(torch._foreach_norm([refs[i] for i in idx])).to(d_norm.dtype)
        zero = d_norm == 0
        scale = torch.where(zero, torch.zeros_like(r_norm), r_norm / torch.where(zero, 1.0, d_norm))
        for i, d in zip(idx, torch._foreach_mul([dirs[i] for i in idx], list(scale.unbind(0))), strict=True):
            out[i] = d
    return out  # type: ignore[return-value]


def graft(ctx: GroupStep, dirs: list[Tensor]) -> list[Tensor]:
    """``dirs`` (``g⁻¹F`` of every parameter of ``ctx``) with the per-tensor norms of the reference update
    ``ctx.group['graft']``; ``'none'`` returns ``dirs``."""
    if ctx.group["graft"] == "none":
        return dirs
    return graft_norms(dirs, reference_directions(ctx, ctx.directions_in()))
