"""Chains: many independent small models trained in one loop, and the probes that average over them.

A chain model holds ``C`` independent copies of a model in its parameters' leading (or only) dimension, with
inputs and outputs ``(B, C, ...)``: column ``c`` is copy ``c``'s batch. With :func:`chains_loss` (the sum of
the copies' own minibatch losses) the gradient in copy ``c`` is that copy's own minibatch gradient, so one SGD
step is ``C`` independent SGD steps -- an ensemble average in one vectorised loop. (A preconditioner that
mixes coordinates, CovariantGD at α > 0, would couple them.)

- :class:`ChainLinear` and :class:`ChainSecondMomentProbe`: linear models ``f_c(x) = p_cᵀx`` and the second
  moment of their weights around ``p*`` (:mod:`~learndyn.phenomena.regimes`);
- :class:`ScalarNetEnsemble` and :class:`ChainBalanceProbe`: scalar two-layer networks ``u_c w_c x`` and
  their balance ``u² − w²`` (:mod:`~learndyn.phenomena.symmetry`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from learndyn.probes.base import Measurement, Probe, ProbeContext
from learndyn.validation import LearndynValueError

F64 = torch.float64


def chains_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Sum over chains of each chain's minibatch loss ``1/(2B) Σ_b (f_c(x_b) − y_b)²`` (``(B, C)`` inputs)."""
    return 0.5 * (outputs - targets).square().mean(dim=0).sum()


class ChainSecondMomentProbe(Probe):
    """``E_c[(p_c − p*)(p_c − p*)ᵀ]`` over the chains of a :class:`ChainLinear` model.

    Metrics: ``chains/trace`` and ``chains/second_moment`` (array ``d × d``).
    """

    name = "chains"

    def __init__(self, every: int, p_star: Tensor) -> None:
        super().__init__(every)
        self.p_star = p_star.detach().to(F64)

    def measure(self, ctx: ProbeContext) -> Measurement:
        e = ctx.params["weight"].to(F64) - self.p_star
        S = e.T @ e / e.shape[0]
        return {"chains/trace": float(torch.trace(S)), "chains/second_moment": S.numpy()}


class ChainLinear(nn.Module):
    """``C`` independent linear models ``f_c(x) = p_cᵀx``: ``weight (C, d)``, inputs ``(B, C, d)``.

    With a loss that sums the chains' own minibatch losses, one SGD step is ``C`` independent SGD steps
    (α = 0 only: a preconditioner with α > 0 would couple them through the metric).
    """

    def __init__(self, chains: int, init: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.detach().to(F64).reshape(1, -1).repeat(chains, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bcd,cd->bc", x, self.weight)


class ScalarNetEnsemble(nn.Module):
    """``C`` independent two-layer linear networks of width one, ``f_c(x) = u_c w_c x`` (float64).

    Input and output are ``(B, C)``: column ``c`` is network ``c``'s batch. Summing the networks' losses gives
    each its own gradient, so one optimizer step is ``C`` independent SGD steps.
    """

    def __init__(self, chains: int, u0: float, w0: float) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.full((chains,), float(u0), dtype=F64))
        self.w = nn.Parameter(torch.full((chains,), float(w0), dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        return self.u * self.w * x

    def balance(self) -> Tensor:
        """``Q_c = u_c² − w_c²`` (detached)."""
        return (self.u.square() - self.w.square()).detach()


class ChainBalanceProbe(Probe):
    """Mean and standard error of ``Q = u² − w²`` over a :class:`ScalarNetEnsemble`, and ``Var(uw − v*)``.

    Metrics: ``balance/mean``, ``balance/sem``, ``balance/product_var``.
    """

    name = "balance"

    def __init__(self, every: int, v_star: float) -> None:
        super().__init__(every)
        self.v_star = float(v_star)

    def measure(self, ctx: ProbeContext) -> Measurement:
        model = ctx.model
        if not isinstance(model, ScalarNetEnsemble):
            raise LearndynValueError(
                f"ChainBalanceProbe needs a ScalarNetEnsemble, got {type(model).__name__}"
            )
        q = model.balance()
        delta = (model.u * model.w).detach() - self.v_star
        return {
            "balance/mean": float(q.mean()),
            "balance/sem": float(q.std() / math.sqrt(q.numel())),
            "balance/product_var": float(delta.square().mean()),
        }
