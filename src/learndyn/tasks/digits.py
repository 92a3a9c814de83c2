"""An MLP classifying scikit-learn's handwritten digits (8x8 images, 10 classes, 1797 samples).

``sklearn.datasets.load_digits`` ships with scikit-learn (no download). Pixels are scaled to ``[0, 1]``.
The loss is the cross-entropy

.. math::

    L(\\theta) = -\\frac1N \\sum_{n=1}^{N} \\log \\operatorname{softmax}(f_\\theta(x_n))_{y_n},

minibatches are drawn with replacement from all ``N = 1797`` samples, and ``evaluate`` is the full-data
training loss (this is an optimisation benchmark, not a generalisation one).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from learndyn.tasks.base import Batch, Task, mlp
from learndyn.validation import check_int, check_ints, check_real


@lru_cache(maxsize=1)
def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: float32 images of shape ``(1797, 64)`` in ``[0, 1]`` and int64 labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    return x, y


def digits(
    *, width: int = 32, depth: int = 1, batch_size: int = 64, target_loss: float = 0.01, steps: int = 1500
) -> Task:
    """MLP ``64 -> width (x depth hidden layers, tanh) -> 10`` on the digits data with cross-entropy."""
    owner = "digits"
    width, depth, batch_size = check_ints(owner, low=1, width=width, depth=depth, batch_size=batch_size)
    target_loss = check_real("target_loss", target_loss, low=0, low_open=True, owner=owner)
    steps = check_int("steps", steps, low=1, owner=owner)
    x, y = digits_data()

    def build_model() -> nn.Module:
        return mlp([64] + [width] * depth + [10])

    def sample(gen: torch.Generator) -> Batch:
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        return x[idx], y[idx]

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        return float(F.cross_entropy(model(x), y))

    description = f"MLP (width {width}, {depth} hidden) on sklearn digits, cross-entropy"
    return Task("digits", description, build_model, sample, F.cross_entropy, evaluate, target_loss, steps)
