"""``'diag'``: the elementwise metric ``g = (ŝ + ε_r + ε)^α`` (inside) or ``(ŝ + ε_r)^α + ε`` (outside).

``s ← β₂ s + (1−β₂) v ⊙ v`` per parameter (state ``exp_avg_sq``, updated every step), ``ŝ = s/(1−β₂ᵗ)``;
``g⁻¹F = F ⊘ g``. With α = ½, ``eps_mode='outside'`` this is Adam/AdamW (RMSprop without first moment and
bias correction), with ``moment='covariance'`` AdaBelief, with α = 0 SGD. It is also the fallback of the
other structures for the parameters they do not cover (kron's vectors, empty tensors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from learndyn.optim import functional as Fn
from learndyn.optim.structures.base import GroupStep, Structure, bias_correction2


def _ensure_state(ctx: GroupStep) -> None:
    for st, p in zip(ctx.states, ctx.params, strict=True):
        if "exp_avg_sq" not in st:
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _buckets(ctx: GroupStep) -> dict[int, list[int]]:
    """Positions of the parameters by step count (parameters that missed steps are out of step)."""
    out: dict[int, list[int]] = {}
    for i, st in enumerate(ctx.states):
        out.setdefault(st["step"], []).append(i)
    return out


def _metric(group: Mapping[str, Any], sq: list[Tensor], step: int) -> list[Tensor] | None:
    return Fn.foreach_diag_metric(
        sq,
        bc2=bias_correction2(group, step),
        alpha=group["alpha"],
        eps=group["eps"],
        eps_mode=group["eps_mode"],
        eps_root=group["eps_root"],
    )


class Diag(Structure):
    """Elementwise metric (see the module doc); state ``exp_avg_sq`` shaped like the parameter."""

    name = "diag"
    exact = True

    def covers(self, p: Tensor) -> bool:
        return True

    def elements(self, params: Sequence[Tensor], opts: Mapping[str, Any]) -> int:
        return sum(p.numel() for p in params)

    def step(self, ctx: GroupStep) -> None:
        """Adam's fused form ``q ← q − (lr/(1−β₁ᵗ)) · m ⊘ g`` (one ``addcdiv`` per bucket of equal steps)."""
        group, params = ctx.group, ctx.params
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        _ensure_state(ctx)
        for step, idx in _buckets(ctx).items():
            ps = [params[i] for i in idx]
            sq = [ctx.states[i]["exp_avg_sq"] for i in idx]
            Fn.foreach_ema_square_(sq, [ctx.vs[i] for i in idx], beta2)
            metric = _metric(group, sq, step)
            if group["first_moment"]:
                assert ctx.exp_avgs is not None
                F = [ctx.exp_avgs[i] for i in idx]
                step_size = lr / Fn.bias_correction(beta1, step, group["bias_correction"])
            else:
                F, step_size = [ctx.grads[i] for i in idx], lr
            if wd and group["decoupled_weight_decay"]:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            Fn.foreach_diag_precondition_(ps, F, metric, step_size)

    def directions(self, ctx: GroupStep) -> list[Tensor]:
        """``F̂ ⊘ g`` per parameter (what :meth:`step` applies, written out as directions)."""
        _ensure_state(ctx)
        F = ctx.directions_in()
        out: list[Tensor | None] = [None] * len(ctx.params)
        for step, idx in _buckets(ctx).items():
            sq = [ctx.states[i]["exp_avg_sq"] for i in idx]
            Fn.foreach_ema_square_(sq, [ctx.vs[i] for i in idx], ctx.group["betas"][1])
            metric = _metric(ctx.group, sq, step)
            for j, i in enumerate(idx):
                out[i] = F[i] if metric is None else F[i] / metric[j]
        return out  # type: ignore[return-value]

    def diagonal(
        self, group: Mapping[str, Any], p: Tensor, state: Mapping[Tensor, dict[str, Any]]
    ) -> Tensor | None:
        st = state.get(p, {})
        if "exp_avg_sq" not in st:
            return None
        return st["exp_avg_sq"] / bias_correction2(group, st["step"])


DIAG = Diag()
