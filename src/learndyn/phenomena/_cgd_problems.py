r"""The two problems of the ``cgd-paper`` experiment as member families (:class:`~._members.Problem`).

:class:`RosenbrockStarts` -- ``f(x, y) = a (y − x²)² + (1 − x)²`` (``a = 100``, minimum ``f(1, 1) = 0``) from
``K`` starting points per seed, uniform in the box ``[-2, 2] × [-1, 3]``; each point is a member (``P = 2``).

:class:`Multiplication` -- a ``tanh`` MLP ``2 → w (× depth) → 1``, flattened into one vector per member,
learning ``y = x₁x₂`` on ``[-1, 1]²`` with squared error ``L = E[(f(x) − x₁x₂)²]``; every step a fresh batch
per seed (the same for every learning rate), the full loss by the midpoint rule on a ``grid × grid``
lattice. Initial weights as ``torch.nn.Linear``'s (``U(−1/√fan_in, 1/√fan_in)`` for weights and biases),
drawn from the seed. ``w = 8, depth = 2`` has ``P = 105`` parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from learndyn.phenomena._members import Problem

BOX = ((-2.0, 2.0), (-1.0, 3.0))
"""The Rosenbrock starting box ``[x_lo, x_hi] × [y_lo, y_hi]``."""


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * int(seed) + stream)


class RosenbrockStarts(Problem):
    """Rosenbrock 2-D from ``starts`` random points per seed (module docstring)."""

    dim = 2

    def __init__(self, starts: int, a: float = 100.0) -> None:
        self.n_starts, self.a = starts, a

    def starts(self, seeds: Sequence[int]) -> Tensor:
        out = []
        for seed in seeds:
            u = torch.rand(self.n_starts, 2, generator=_generator(seed, 7), dtype=torch.float64)
            lo = torch.tensor([BOX[0][0], BOX[1][0]], dtype=torch.float64)
            hi = torch.tensor([BOX[0][1], BOX[1][1]], dtype=torch.float64)
            out.append(lo + (hi - lo) * u)
        return torch.stack(out)

    def value(self, X: Tensor) -> Tensor:
        x, y = X[..., 0], X[..., 1]
        return self.a * (y - x**2) ** 2 + (1 - x) ** 2

    def train_losses(self, X: Tensor, member_seed: Tensor, step: int) -> Tensor:
        return self.value(X)

    def evaluate(self, X: Tensor) -> Tensor:
        return self.value(X)


class Multiplication(Problem):
    """A flattened tanh MLP learning ``x₁x₂`` (module docstring)."""

    def __init__(self, width: int, depth: int, batch_size: int, grid: int = 32) -> None:
        sizes = [2] + [width] * depth + [1]
        self.layers = list(zip(sizes[1:], sizes[:-1], strict=True))  # (out, in)
        self.dim = sum(o * i + o for o, i in self.layers)
        self.batch_size = batch_size
        mid = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid * 2 - 1
        self.eval_x = torch.cartesian_prod(mid, mid)
        self.eval_y = self.eval_x[:, 0] * self.eval_x[:, 1]
        self._seeds: list[int] = []

    def starts(self, seeds: Sequence[int]) -> Tensor:
        self._seeds = [int(s) for s in seeds]
        out = []
        for seed in seeds:
            gen = _generator(seed, 11)
            parts = []
            for o, i in self.layers:
                bound = 1.0 / i**0.5
                parts.append((torch.rand(o * i + o, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
            out.append(torch.cat(parts))
        return torch.stack(out).unsqueeze(1)  # (S, 1, P)

    def forward(self, X: Tensor, x: Tensor) -> Tensor:
        """Outputs ``(M, N)`` of the members ``X (M, P)`` on inputs ``x (M, N, 2)``."""
        M, h, offset = X.shape[0], x, 0
        for k, (o, i) in enumerate(self.layers):
            W = X[:, offset : offset + o * i].reshape(M, o, i)
            b = X[:, offset + o * i : offset + o * i + o].reshape(M, 1, o)
            offset += o * i + o
            h = torch.baddbmm(b, h, W.transpose(1, 2))
            if k < len(self.layers) - 1:
                h = torch.tanh(h)
        return h.squeeze(-1)

    def train_losses(self, X: Tensor, member_seed: Tensor, step: int) -> Tensor:
        gen = torch.Generator()
        batches = []
        for seed in self._seeds:
            gen.manual_seed(1_000_003 * seed + 13 + 7919 * step)
            batches.append(torch.rand(self.batch_size, 2, generator=gen, dtype=torch.float64) * 2 - 1)
        x = torch.stack(batches)[member_seed]  # (M, B, 2)
        y = x[..., 0] * x[..., 1]
        return ((self.forward(X, x) - y) ** 2).mean(-1)

    def evaluate(self, X: Tensor) -> Tensor:
        x = self.eval_x.expand(X.shape[0], *self.eval_x.shape)
        return ((self.forward(X, x) - self.eval_y) ** 2).mean(-1)
