"""The multiplication task: a small MLP learns ``y = x1 * x2`` from pairs uniform in ``[-1, 1]^2``.

.. math::

    L(\\theta) = \\mathbb E_{x \\sim U[-1,1]^2} \\big( f_\\theta(x) - x_1 x_2 \\big)^2,
    \\qquad \\operatorname{Var}(x_1 x_2) = 1/9 .

Multiplication is not linearly separable into sums of one-dimensional functions, so a ``tanh`` MLP has to
bend its features jointly in both inputs; plain SGD tends to plateau near the best additive fit
(loss ``1/9``) before it finds the product. Minibatches are drawn fresh each step (an infinite data
stream). ``evaluate`` approximates the population loss by the midpoint rule on a ``grid x grid`` lattice
(deterministic, error ``O(grid^-2)``).
"""

from __future__ import annotations

import torch
from torch import nn

from learndyn.tasks.base import Batch, Task, mlp
from learndyn.validation import check_int, check_ints, check_real


def multiplication(
    *, width: int = 24, depth: int = 2, batch_size: int = 64, grid: int = 64, target_loss: float = 5e-4,
    steps: int = 2000,
) -> Task:
    """MLP ``2 -> width (x depth hidden layers, tanh) -> 1`` fitting ``x1 * x2``, mean squared error."""
    owner = "multiplication"
    width, depth, batch_size = check_ints(owner, low=1, width=width, depth=depth, batch_size=batch_size)
    grid = check_int("grid", grid, low=2, owner=owner)
    target_loss = check_real("target_loss", target_loss, low=0, low_open=True, owner=owner)
    steps = check_int("steps", steps, low=1, owner=owner)

    mid = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
    eval_x = torch.cartesian_prod(mid, mid)
    eval_y = eval_x[:, :1] * eval_x[:, 1:]

    def build_model() -> nn.Module:
        return mlp([2] + [width] * depth + [1])

    def sample(gen: torch.Generator) -> Batch:
        x = torch.rand(batch_size, 2, generator=gen) * 2 - 1
        return x, x[:, :1] * x[:, 1:]

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs - targets) ** 2).mean()

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        return float(loss_fn(model(eval_x), eval_y))

    description = f"MLP (width {width}, {depth} hidden) learning x*y on [-1,1]^2"
    return Task("multiplication", description, build_model, sample, loss_fn, evaluate, target_loss, steps)
