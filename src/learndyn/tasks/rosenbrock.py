"""The Rosenbrock function as an optimisation task; the parameters are the coordinates.

.. math::

    f(x) = \\sum_{i=1}^{d-1} \\big[ a\\,(x_{i+1} - x_i^2)^2 + (1 - x_i)^2 \\big],
    \\qquad \\min f = f(\\mathbf 1) = 0 .

A curved, narrow valley whose Hessian at the minimum has condition number ~2500 for ``a = 100``: a test of
how well an optimizer follows curvature that changes direction along the path. The start is the classical
``(-1.2, 1, -1.2, 1, ...)`` plus ``init_scale`` times a seeded standard normal.

Optional additive gradient noise of scale ``noise``: a "batch" is ``B`` vectors ``xi_b ~ N(0, noise^2 I)``
and the per-sample loss is ``f(x) + xi_b . x``, so the per-sample gradient is ``grad f(x) + xi_b`` and the
minibatch gradient ``grad f(x) + mean_b xi_b`` (noise covariance ``noise^2 I / B``). ``evaluate`` returns the
exact ``f(x)``. With ``noise = 0`` the batch is a single zero vector and the task is deterministic.
"""

from __future__ import annotations

import torch
from torch import nn

from learndyn.tasks.base import Batch, Task
from learndyn.validation import check_int, check_real


def rosenbrock_value(x: torch.Tensor, a: float = 100.0) -> torch.Tensor:
    """``f(x) = sum_i a (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`` for ``x`` of shape ``(d,)``, ``d >= 2``."""
    return (a * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


class RosenbrockPoint(nn.Module):
    """A point ``x`` in R^d as a module: ``forward(xi)`` returns ``f(x) + xi @ x`` per row of ``xi``."""

    def __init__(self, start: torch.Tensor, a: float = 100.0) -> None:
        super().__init__()
        self.a = a
        self.x = nn.Parameter(start.clone())

    def forward(self, xi: torch.Tensor) -> torch.Tensor:
        return rosenbrock_value(self.x, self.a) + xi @ self.x


def rosenbrock(
    dim: int = 2, *, noise: float = 0.0, batch_size: int = 1, init_scale: float = 0.1, a: float = 100.0,
    target_loss: float | None = None, steps: int | None = None,
) -> Task:
    """The ``dim``-dimensional Rosenbrock task (see the module docstring).

    ``target_loss`` defaults to ``1e-3`` (2-D) / ``1e-1`` (higher dimensions); ``steps`` to 2000 / 5000.
    """
    owner = "rosenbrock"
    dim = check_int("dim", dim, low=2, owner=owner)
    noise = check_real("noise", noise, low=0, owner=owner)
    batch_size = check_int("batch_size", batch_size, low=1, owner=owner)
    init_scale = check_real("init_scale", init_scale, low=0, owner=owner)
    a = check_real("a", a, low=0, low_open=True, owner=owner)
    if target_loss is None:
        target_loss = 1e-3 if dim == 2 else 1e-1
    target_loss = check_real("target_loss", target_loss, low=0, low_open=True, owner=owner)
    if steps is None:
        steps = 2000 if dim == 2 else 5000
    steps = check_int("steps", steps, low=1, owner=owner)
    base = torch.tensor([-1.2, 1.0]).repeat((dim + 1) // 2)[:dim]

    def build_model() -> nn.Module:
        return RosenbrockPoint(base + init_scale * torch.randn(dim), a)

    def sample(gen: torch.Generator) -> Batch:
        if noise == 0:
            return torch.zeros(1, dim), torch.zeros(1)
        return noise * torch.randn(batch_size, dim, generator=gen), torch.zeros(batch_size)

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs - targets).mean()

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        assert isinstance(model, RosenbrockPoint)
        return float(rosenbrock_value(model.x, model.a))

    suffix = f", gradient noise {noise:g}" if noise else ""
    name = f"rosenbrock-{dim}d" + ("-noisy" if noise else "")
    description = f"Rosenbrock function in {dim} dimensions{suffix}"
    return Task(name, description, build_model, sample, loss_fn, evaluate, target_loss, steps)
