"""Losses in the convention of :mod:`learndyn.theory`, shared by the experiments that compare with it."""

from __future__ import annotations

from torch import Tensor

__all__ = ["half_squared_error"]


def half_squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """``L = 1/(2n) Σ_μ ‖f(x_μ) − y_μ‖²``: half the squared error, summed over the output dimension (the last)
    and averaged over the ``n`` samples (the first)."""
    return 0.5 * (outputs - targets).square().sum(dim=-1).mean()
