r"""AdaBelief (Zhuang et al., NeurIPS 2020, arXiv 2010.07468), written from its published algorithm.

torch has no AdaBelief, so the ``cgd-paper`` comparison uses this one. Per step ``t`` and element, with the
gradient ``g`` (Algorithm 2 of the paper, no weight decay, no AMSGrad, no rectification)::

    m ← β₁ m + (1−β₁) g
    s ← β₂ s + (1−β₂) (g − m)² + ε
    m̂ = m / (1−β₁ᵗ),   ŝ = s / (1−β₂ᵗ)
    θ ← θ − lr · m̂ / (√ŝ + ε)

The ``+ε`` inside the EMA is the paper's (it accumulates to about ``ε/(1−β₂)``); the update differs from
Adam's only in ``s``, the EMA of the squared deviation of ``g`` from its own EMA ("belief"), instead of
``g²``. The step is multi-tensor (``torch._foreach_*``): no Python loop per parameter element.
(CovariantGD's ``structure='diag', moment='covariance'`` keeps the same statistic with its own ε placement;
this class is the paper's formula, tested element by element against a brute-force loop.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from learndyn.validation import LearndynValueError, check_real

OWNER = "AdaBelief"


class AdaBelief(Optimizer):
    """AdaBelief: ``θ ← θ − lr m̂/(√ŝ + ε)`` with ``s`` the EMA of ``(g − m)² + ε`` (module docstring).

    Args:
        params: parameters or parameter groups.
        lr: learning rate ``> 0``.
        betas: ``(β₁, β₂)`` in ``[0, 1)``.
        eps: ``ε ≥ 0`` (the paper's default 1e-16 for its image tasks; 1e-8 here, as Adam).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        lr = check_real("lr", lr, low=0.0, low_open=True, owner=OWNER)
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise LearndynValueError(
                f"{OWNER}.betas={betas!r} is not allowed; allowed: a pair (beta1, beta2) with 0 <= beta < 1"
            )
        betas = tuple(
            check_real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True, owner=OWNER)
            for i, b in enumerate(betas)
        )
        eps = check_real("eps", eps, low=0.0, owner=OWNER)
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = [self.state[p] for p in params]
            for p, st in zip(params, states, strict=True):
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["s"] = torch.zeros_like(p)
            # one step count per group: every parameter of a group steps together
            t = states[0]["step"] + 1
            for st in states:
                st["step"] = t
            beta1, beta2 = group["betas"]
            eps, lr = group["eps"], group["lr"]
            ms, ss = [st["m"] for st in states], [st["s"] for st in states]
            torch._foreach_lerp_(ms, grads, 1 - beta1)  # m ← β₁ m + (1−β₁) g
            dev = torch._foreach_sub(grads, ms)  # g − m (the updated m)
            torch._foreach_mul_(ss, beta2)
            torch._foreach_addcmul_(ss, dev, dev, value=1 - beta2)
            torch._foreach_add_(ss, eps)  # s ← β₂ s + (1−β₂)(g − m)² + ε
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t
            denom = torch._foreach_div(ss, bc2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)  # √ŝ + ε
            torch._foreach_addcdiv_(params, ms, denom, value=-lr / bc1)  # θ ← θ − lr m̂/(√ŝ + ε)
        return loss
