"""Exponential moving averages with the time-constant convention of the design.

An EMA of time constant ``τ ≥ 0`` is ``⟨f⟩_t = f_t/(1+τ) + τ/(1+τ) ⟨f⟩_{t−1}``, i.e. ``β = τ/(1+τ)``
(Adam's defaults are ``τ₁ = 9``, ``τ₂ = 999``). ``τ = 0`` keeps only the latest value. Bias correction
divides by ``1 − β^t`` (the weight an EMA started from zero has accumulated after ``t`` updates).
"""

from __future__ import annotations

import torch
from torch import Tensor

from learndyn.validation import check_int, check_real


def beta_from_tau(tau: float) -> float:
    """``β = τ/(1+τ)`` for an EMA of time constant ``τ ≥ 0``."""
    tau = check_real("tau", tau, low=0.0)
    return tau / (1.0 + tau)


def tau_from_beta(beta: float) -> float:
    """Inverse of :func:`beta_from_tau`: ``τ = β/(1−β)`` for ``0 ≤ β < 1``."""
    beta = check_real("beta", beta, low=0.0, high=1.0, high_open=True)
    return beta / (1.0 - beta)


def ema_update_(avg: Tensor | list[Tensor], value: Tensor | list[Tensor], beta: float) -> None:
    """In place ``avg ← β·avg + (1−β)·value`` for one tensor or a list of tensors (one fused foreach call)."""
    if isinstance(avg, Tensor):
        avg.lerp_(value, 1.0 - beta)
        return
    torch._foreach_lerp_(avg, value, 1.0 - beta)


def bias_correction(beta: float, t: int) -> float:
    """``1 − β^t``: divide an EMA started at zero by this after ``t ≥ 1`` updates to unbias it."""
    t = check_int("t", t, low=1)
    return 1.0 - beta**t
