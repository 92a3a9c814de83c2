"""The translation charge under heavy-ball / Nesterov momentum with weight decay, against real training.

A softmax classifier (``Linear`` + cross-entropy, float64) trained by ``torch.optim.SGD`` with momentum and
weight decay: the class-sums ``v = (1ᵀW, 1ᵀb)`` follow :func:`translation_charge` to ~1e-12 (the law is
exact), while the momentum-free ``(1 − ηλ)^k`` is off by ~400% after 150 steps at ``μ = 0.9``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from learndyn.theory.momentum_symmetry import charge_decay_rate, charge_ratio, translation_charge
from learndyn.validation import LearndynValueError


def _train(momentum: float, nesterov: bool, lr: float, wd: float, steps: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (64,), generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        net = nn.Linear(5, 4).to(torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    charges = []
    for k in range(steps + 1):
        with torch.no_grad():
            charges.append(torch.cat([net.weight.sum(0), net.bias.sum(0, keepdim=True)]).numpy().copy())
        if k == steps:
            break
        idx = torch.randint(0, 64, (8,), generator=gen)  # minibatches: the gradient still drops out
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    return np.stack(charges)


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.5, True), (0.99, False)])
def test_charge_follows_the_exact_law_in_training(momentum, nesterov):
    lr, wd, steps = 0.1, 0.3, 150
    v = _train(momentum, nesterov, lr, wd, steps)
    k = np.arange(steps + 1)
    predicted = translation_charge(v[0], lr, k, wd, momentum, nesterov)
    scale = np.abs(v[0]).max()
    np.testing.assert_allclose(v, predicted, rtol=0, atol=1e-11 * scale)
    naive = (1 - lr * wd) ** k[:, None] * v[0]
    if momentum > 0:  # the momentum-free law misses by far
        assert np.abs(v - naive).max() > 0.1 * scale


def test_slow_root_and_limits():
    k = np.arange(0, 2001, 100)
    # μ = 0: (1 − ηλ)^k exactly
    np.testing.assert_allclose(charge_ratio(0.1, k, 0.2), (1 - 0.02) ** k, rtol=1e-12)
    # small ηλ/(1 − μ)²: the decay rate per t = η·k is λ/(1 − μ) after the transient (5e-3 here)
    lr, wd, mu = 1e-4, 0.5, 0.9
    steps = 10 * k[5:]
    ratio = charge_ratio(lr, steps, wd, mu)
    rate = -np.diff(np.log(ratio)) / np.diff(lr * steps)
    np.testing.assert_allclose(rate, charge_decay_rate(wd, mu), rtol=1e-2)
    assert charge_decay_rate(wd, mu) == pytest.approx(10 * wd)


def test_double_root_and_oscillation_are_real_and_exact():
    # heavy ball: tr² = 4 det  ⇔  (1 − ηλ + μ)² = 4μ; pick μ = 0.25, solve for ηλ = 1 + μ − 2√μ = 0.25
    lr, wd, mu = 0.5, 0.5, 0.25
    k = np.arange(30)
    A = np.array([[1 - lr * wd, -lr * mu], [wd, mu]])
    brute = np.array([np.linalg.matrix_power(A, int(i))[0, 0] for i in k])
    np.testing.assert_allclose(charge_ratio(lr, k, wd, mu), brute, rtol=1e-9, atol=1e-15)
    # complex roots (μ large, ηλ moderate): the charge changes sign, still exact
    lr, wd, mu = 1.0, 0.5, 0.95
    A = np.array([[1 - lr * wd, -lr * mu], [wd, mu]])
    brute = np.array([np.linalg.matrix_power(A, int(i))[0, 0] for i in k])
    ratio = charge_ratio(lr, k, wd, mu)
    np.testing.assert_allclose(ratio, brute, rtol=1e-9, atol=1e-12)
    assert (ratio < 0).any()


def test_bad_input_is_one_line():
    with pytest.raises(LearndynValueError, match="momentum"):
        charge_ratio(0.1, [1], 0.1, momentum=1.0)
    with pytest.raises(LearndynValueError, match="non-integer"):
        charge_ratio(0.1, [1.5], 0.1)
