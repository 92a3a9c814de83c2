"""Deep linear regression: a deep linear network ``W_L ... W_1`` fits a random linear teacher ``W*``.

Inputs ``x ~ N(0, Sigma)`` with ``Sigma = diag(s_1^2, ..., s_n^2)``, the scales ``s_i`` spaced geometrically
from 1 down to ``1 / input_condition**0.5`` (so ``Sigma`` has condition number ``input_condition``); targets
``y = W* x + sigma_y * noise`` with ``W*_{ij} ~ N(0, 1 / d_in)`` drawn once from ``data_seed``. The loss is
the mean squared error per output, whose population value is exact:

.. math::

    L(W_1, ..., W_L) = \\frac{1}{d_{out}} \\operatorname{tr}\\big[(W - W^*) \\Sigma (W - W^*)^\\top\\big]
        + \\sigma_y^2, \\qquad W = W_L \\cdots W_1 .

The network is linear in its input but not in its parameters: from a small initialisation (weights
``N(0, init_scale^2 / fan_in)``) it learns the teacher's singular modes one after another (saddle-to-saddle
dynamics), and the input anisotropy makes plain gradient descent slow on the small-variance directions.
``target_loss`` is ``target_fraction`` times the loss of the zero map, ``L(0) = tr(W* Sigma W*^T) / d_out``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from learndyn.tasks.base import Batch, Task, make_generator
from learndyn.validation import check_int, check_ints, check_real


class DeepLinear(nn.Sequential):
    """``depth`` bias-free linear layers ``d_in -> width -> ... -> d_out`` (no nonlinearity)."""

    def __init__(self, d_in: int, width: int, d_out: int, depth: int, init_scale: float) -> None:
        sizes = [d_in] + [width] * (depth - 1) + [d_out]
        layers = [nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        for layer in layers:
            nn.init.normal_(layer.weight, std=init_scale / math.sqrt(layer.in_features))
        super().__init__(*layers)

    def end_to_end(self) -> torch.Tensor:
        """The product ``W = W_L ... W_1`` of shape ``(d_out, d_in)``."""
        w = self[0].weight
        for layer in list(self)[1:]:
            w = layer.weight @ w
        return w


def deep_linear(
    *, d_in: int = 16, width: int = 16, d_out: int = 8, depth: int = 3, input_condition: float = 1000.0,
    label_noise: float = 0.0, init_scale: float = 0.1, batch_size: int = 64, target_fraction: float = 1e-5,
    steps: int = 2000, data_seed: int = 0,
) -> Task:
    """Deep linear network regression on a random teacher (see the module docstring)."""
    owner = "deep_linear"
    d_in, width, d_out, depth = check_ints(owner, low=1, d_in=d_in, width=width, d_out=d_out, depth=depth)
    input_condition = check_real("input_condition", input_condition, low=1, owner=owner)
    label_noise = check_real("label_noise", label_noise, low=0, owner=owner)
    init_scale = check_real("init_scale", init_scale, low=0, low_open=True, owner=owner)
    batch_size = check_int("batch_size", batch_size, low=1, owner=owner)
    target_fraction = check_real(
        "target_fraction", target_fraction, low=0, high=1, low_open=True, owner=owner
    )
    steps = check_int("steps", steps, low=1, owner=owner)
    data_seed = check_int("data_seed", data_seed, low=0, owner=owner)

    gen = make_generator(data_seed)
    teacher = torch.randn(d_out, d_in, generator=gen) / math.sqrt(d_in)
    scales = torch.logspace(0, -0.5 * math.log10(input_condition), d_in)
    sigma = scales**2
    zero_loss = float((teacher**2 * sigma).sum() / d_out)

    def build_model() -> nn.Module:
        return DeepLinear(d_in, width, d_out, depth, init_scale)

    def sample(g: torch.Generator) -> Batch:
        x = torch.randn(batch_size, d_in, generator=g) * scales
        y = x @ teacher.T
        if label_noise:
            y = y + label_noise * torch.randn(batch_size, d_out, generator=g)
        return x, y

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs - targets) ** 2).mean()

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        assert isinstance(model, DeepLinear)
        diff = model.end_to_end() - teacher
        return float((diff**2 * sigma).sum() / d_out) + label_noise**2

    description = (
        f"depth-{depth} linear network fitting a {d_out}x{d_in} teacher (input condition {input_condition:g})"
    )
    target_loss = target_fraction * zero_loss + label_noise**2
    return Task("deep-linear", description, build_model, sample, loss_fn, evaluate, target_loss, steps)
