"""Optimizers for an *ensemble*: parameters stacked along a leading member dimension ``(B, ...)``.

Each member's update is the same arithmetic as the single-model optimizer it mirrors, with per-member
hyperparameters: a hyperparameter is a float (shared) or a length-``B`` sequence/tensor (one per member,
broadcast along the member dimension). A per-member value that is the same for every member is treated as a
float, so the update then uses the very same kernels as the single-model optimizer.

- :class:`StackedSGD` -- :class:`torch.optim.SGD` (momentum, dampening, Nesterov, L2 weight decay);
- :class:`StackedAdam` -- :class:`torch.optim.Adam` (L2 weight decay, not AMSGrad);
- :class:`StackedCovariantDiag` -- :class:`~learndyn.optim.CovariantGD` with ``structure='diag'``
  (per-member metric power ``alpha``); its moment updates are the functional core's
  (:mod:`learndyn.optim.functional`), which work on stacked tensors unchanged.

All step in lockstep (one step count for the ensemble), update in place and keep their state as stacked
tensors. ``step(params, grads)`` takes lists of stacked tensors in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from learndyn.optim import functional as Fn
from learndyn.validation import LearndynValueError, check_choice, check_real

__all__ = [
    "PerMember",
    "StackedAdam",
    "StackedCovariantDiag",
    "StackedOptimizer",
    "StackedSGD",
    "per_member",
]

PerMember = float | Sequence[float] | Tensor
"""A hyperparameter: one float for every member, or one value per member."""


class StackedOptimizer(Protocol):
    """Steps stacked parameters in place from stacked gradients (lists in a fixed order)."""

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None: ...


def per_member(
    name: str,
    value: PerMember,
    members: int,
    *,
    low: float | None = None,
    high: float | None = None,
    owner: str = "stacked optimizer",
) -> float | Tensor:
    """``value`` checked and normalised: a float, or a float64 tensor ``(members,)`` when members differ."""
    if isinstance(value, Tensor):
        values = value.detach().to("cpu", torch.float64).reshape(-1).tolist()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return check_real(name, value, low=low, high=high, owner=owner)
    else:
        values = list(value)
    if len(values) != members:
        raise LearndynValueError(
            f"{owner}.{name} has {len(values)} values for {members} members; "
            "allowed: a float or one per member"
        )
    checked = [check_real(name, float(v), low=low, high=high, owner=owner) for v in values]
    if len(set(checked)) == 1:
        return checked[0]
    return torch.tensor(checked, dtype=torch.float64)


def _member_view(h: Tensor, like: Tensor) -> Tensor:
    """A ``(B,)`` hyperparameter shaped ``(B, 1, ..., 1)`` to broadcast against ``like`` ``(B, ...)``."""
    return h.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class StackedSGD:
    """:class:`torch.optim.SGD` for stacked parameters; ``lr``, ``momentum``, ``weight_decay`` per member.

    Per member and step: ``d = ∇ + wd·p``; with momentum ``buf ← μ·buf + (1−dampening)·d`` (``buf = d`` on
    the first step), ``d = buf`` (or ``d + μ·buf`` with Nesterov); ``p ← p − lr·d``.
    """

    def __init__(
        self,
        members: int,
        lr: PerMember,
        momentum: PerMember = 0.0,
        weight_decay: PerMember = 0.0,
        *,
        dampening: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        owner = "StackedSGD"
        self.lr = per_member("lr", lr, members, low=0.0, owner=owner)
        self.momentum = per_member("momentum", momentum, members, low=0.0, owner=owner)
        self.weight_decay = per_member("weight_decay", weight_decay, members, low=0.0, owner=owner)
        self.dampening = check_real("dampening", dampening, owner=owner)
        self.nesterov = bool(nesterov)
        self._bufs: list[Tensor] | None = None
        self.steps = 0

    def _uses_momentum(self) -> bool:
        return isinstance(self.momentum, Tensor) or self.momentum != 0.0

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """One SGD step of every member, in place."""
        self.steps += 1
        first = self._bufs is None
        if first and self._uses_momentum():
            self._bufs = [torch.empty(0)] * len(params)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            wd = self.weight_decay
            if isinstance(wd, Tensor):
                g = torch.addcmul(g, p, _member_view(wd, p))
            elif wd != 0.0:
                g = g.add(p, alpha=wd)
            if self._bufs is not None:
                mu = self.momentum
                if first:
                    buf = self._bufs[i] = g.detach().clone()
                elif isinstance(mu, Tensor):
                    buf = self._bufs[i]
                    buf.mul_(_member_view(mu, p)).add_(g, alpha=1 - self.dampening)
                else:
                    buf = self._bufs[i]
                    buf.mul_(mu).add_(g, alpha=1 - self.dampening)
                if self.nesterov:
                    g = (
                        torch.addcmul(g, buf, _member_view(mu, p))
                        if isinstance(mu, Tensor)
                        else g.add(buf, alpha=mu)
                    )
                else:
                    g = buf
            if isinstance(self.lr, Tensor):
                p.addcmul_(g, _member_view(-self.lr, p))
            else:
                p.add_(g, alpha=-self.lr)


class StackedAdam:
    """:class:`torch.optim.Adam` for stacked parameters; ``lr`` and ``weight_decay`` per member.

    Per member: ``g = ∇ + wd·p``, ``m ← lerp(m, g, 1−β₁)``, ``v ← β₂ v + (1−β₂) g²``,
    ``p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)``.
    """

    def __init__(
        self,
        members: int,
        lr: PerMember,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: PerMember = 0.0,
    ) -> None:
        owner = "StackedAdam"
        self.lr = per_member("lr", lr, members, low=0.0, owner=owner)
        self.weight_decay = per_member("weight_decay", weight_decay, members, low=0.0, owner=owner)
        self.betas = tuple(
            check_real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True, owner=owner)
            for i, b in enumerate(betas)
        )
        self.eps = check_real("eps", eps, low=0.0, owner=owner)
        self._m: list[Tensor] | None = None
        self._v: list[Tensor] | None = None
        self.steps = 0

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """One Adam step of every member, in place."""
        if self._m is None:
            self._m = [torch.zeros_like(p) for p in params]
            self._v = [torch.zeros_like(p) for p in params]
        assert self._v is not None
        self.steps += 1
        beta1, beta2 = self.betas
        bc1 = 1 - beta1**self.steps
        bc2_sqrt = (1 - beta2**self.steps) ** 0.5
        lr = self.lr
        neg_step = -(lr / bc1)  # a float, or float64 (B,): per member
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            wd = self.weight_decay
            if isinstance(wd, Tensor):
                g = torch.addcmul(g, p, _member_view(wd, p))
            elif wd != 0.0:
                g = g.add(p, alpha=wd)
            m, v = self._m[i], self._v[i]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            if isinstance(neg_step, Tensor):
                p.addcmul_(m / denom, _member_view(neg_step, p))
            else:
                p.addcdiv_(m, denom, value=neg_step)


class StackedCovariantDiag:
    """:class:`~learndyn.optim.CovariantGD` (``structure='diag'``) for stacked parameters.

    ``lr``, ``alpha`` and ``weight_decay`` per member; the other options as in ``CovariantGD``. Per member:
    ``m ← lerp(m, ∇, 1−β₁)``, ``s ← β₂ s + (1−β₂) v²`` (``v = ∇`` or ``∇ − m``), ``g = (ŝ + ε_r + ε)^α``
    (inside) or ``(ŝ + ε_r)^α + ε`` (outside), ``p ← p − lr · F / g`` with ``F = m̂`` or ``∇``. With one
    ``alpha`` for all members the metric is :func:`learndyn.optim.functional.foreach_diag_metric` itself.
    """

    def __init__(
        self,
        members: int,
        lr: PerMember,
        alpha: PerMember = 0.5,
        *,
        moment: str = "second",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eps_mode: str = "inside",
        first_moment: bool = True,
        bias_correction: bool = True,
        weight_decay: PerMember = 0.0,
        decoupled_weight_decay: bool = True,
        eps_root: float = 0.0,
    ) -> None:
        owner = "StackedCovariantDiag"
        self.lr = per_member("lr", lr, members, low=0.0, owner=owner)
        self.alpha = per_member("alpha", alpha, members, low=0.0, high=1.0, owner=owner)
        self.weight_decay = per_member("weight_decay", weight_decay, members, low=0.0, owner=owner)
        self.moment = check_choice("moment", moment, ("second", "covariance"), owner=owner)
        self.eps_mode = check_choice("eps_mode", eps_mode, ("inside", "outside"), owner=owner)
        self.betas = tuple(
            check_real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True, owner=owner)
            for i, b in enumerate(betas)
        )
        self.eps = check_real("eps", eps, low=0.0, owner=owner)
        self.eps_root = check_real("eps_root", eps_root, low=0.0, owner=owner)
        self.first_moment = bool(first_moment)
        self.bias_correction = bool(bias_correction)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self._m: list[Tensor] | None = None
        self._s: list[Tensor] | None = None
        self.steps = 0

    def _metric(self, sq: list[Tensor], bc2: float) -> list[Tensor] | None:
        alpha = self.alpha
        if not isinstance(alpha, Tensor):
            return Fn.foreach_diag_metric(
                sq, bc2=bc2, alpha=alpha, eps=self.eps, eps_mode=self.eps_mode, eps_root=self.eps_root
            )
        inside = self.eps_mode == "inside"
        shift = self.eps_root + (self.eps if inside else 0.0)
        out = []
        for s in sq:
            g = s / bc2
            if shift:
                g = g + shift
            g = g.pow(_member_view(alpha, s))
            if not inside and self.eps:
                g = g + self.eps
            if self.eps == 0.0 and self.eps_root == 0.0:
                g = g.masked_fill(g == 0, math.inf)
            out.append(g)
        return out

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """One diagonal covariant step of every member, in place."""
        need_m = self.first_moment or self.moment == "covariance"
        if self._s is None:
            self._s = [torch.zeros_like(p) for p in params]
            self._m = [torch.zeros_like(p) for p in params] if need_m else None
        self.steps += 1
        t = self.steps
        beta1, beta2 = self.betas
        wd = self.weight_decay
        if not self.decoupled_weight_decay:
            if isinstance(wd, Tensor):
                grads = [torch.addcmul(g, p, _member_view(wd, p)) for p, g in zip(params, grads, strict=True)]
            elif wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
        if self._m is not None:
            Fn.foreach_ema_(self._m, grads, beta1)
        vs = Fn.moment_vectors(grads, self._m, self.moment)
        Fn.foreach_ema_square_(self._s, vs, beta2)
        metric = self._metric(self._s, Fn.bias_correction(beta2, t, self.bias_correction))
        if self.first_moment:
            assert self._m is not None
            F = self._m
            bc1 = Fn.bias_correction(beta1, t, self.bias_correction)
        else:
            F, bc1 = grads, 1.0
        lr = self.lr
        if self.decoupled_weight_decay and (isinstance(wd, Tensor) or wd):
            decay = 1.0 - lr * wd  # a float, or float64 (B,)
            if isinstance(decay, Tensor):
                for p in params:
                    p.mul_(_member_view(decay, p))
            else:
                torch._foreach_mul_(params, decay)
        if not isinstance(lr, Tensor):
            Fn.foreach_diag_precondition_(params, F, metric, lr / bc1 if self.first_moment else lr)
            return
        neg_step = -(lr / bc1)
        for i, p in enumerate(params):
            direction = F[i] if metric is None else F[i] / metric[i]
            p.addcmul_(direction, _member_view(neg_step, p))
