"""Rescaling-symmetry balance laws vs training a 2-layer ReLU network, and SGD's law of balance.

Measured: the discrete identity Q_{k+1} = (1 − ηλ)²Q_k + η²Δ_k holds to ~1e-15 (relative) under GD and
minibatch SGD with and without weight decay; without the recorded Δ, Q₀ e^{−2λt} is off by 0.15% (λ = 0)
and 0.10% (λ = 0.2) of max|Q₀| (lr = 0.01, 1000 steps; the η² drift). Scalar law of balance (lr 0.02, B =
1, 2000 chains, 5000 steps; Q falls to 11% of Q₀): the O(η)-corrected prediction of E[Q_k] is within
0.25%; the leading-order law Q₀(1 − η²σ²h/B)^k is 18% off (it misses the fluctuations of uw). Tolerances:
1e-10, 1%, 2% and 30%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from learndyn.theory import (
    balance_flow,
    balance_gd,
    balance_product_variance,
    decay_errors,
    neuron_balance,
    scalar_balance_sgd,
    scalar_balance_step,
    sgd_stationary_covariance,
    soft_threshold_spectrum,
)
from learndyn.validation import LearndynValueError

WIDTH, DIM, N = 12, 3, 64


def _relu_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(DIM, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 2)).double()
    with torch.no_grad():
        net[2].weight.mul_(2.0)  # start unbalanced: Q_j of both signs
    return net


def _balance(net: nn.Sequential) -> np.ndarray:
    return neuron_balance(net[0].weight, net[2].weight, net[0].bias)


def _train(lr, steps, weight_decay, batch=None):
    """(S)GD with decoupled weight decay on all layers except the output bias; records Q and Δ per step."""
    net = _relu_net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, DIM, generator=gen, dtype=torch.float64)
    y = torch.stack([torch.sin(x[:, 0]), x[:, 1] * x[:, 2]], dim=1)
    qs, deltas = [_balance(net)], []
    for _ in range(steps):
        idx = torch.randint(0, N, (batch,), generator=gen) if batch else slice(None)
        loss = 0.5 * ((net(x[idx]) - y[idx]) ** 2).sum(dim=1).mean()
        grads = torch.autograd.grad(loss, list(net.parameters()))  # W_in, b_in, W_out, b_out
        deltas.append(neuron_balance(grads[0], grads[2], grads[1]))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads, strict=True):
                decay = weight_decay if p is not net[2].bias else 0.0
                p.mul_(1.0 - lr * decay).sub_(lr * g)
        qs.append(_balance(net))
    return np.array(qs), np.array(deltas)


@pytest.mark.parametrize(("weight_decay", "batch"), [(0.0, None), (0.1, None), (0.1, 8)])
def test_discrete_identity_is_exact(weight_decay, batch):
    lr, steps = 0.05, 200
    qs, deltas = _train(lr, steps, weight_decay, batch)
    pred = balance_gd(qs[0], lr, np.arange(steps + 1), weight_decay, grad_sq_diff=deltas)
    np.testing.assert_allclose(pred, qs, atol=1e-10 * np.abs(qs[0]).max())


@pytest.mark.parametrize("weight_decay", [0.0, 0.2])
def test_gradient_flow_law(weight_decay):
    lr, steps = 0.01, 1000
    qs, _ = _train(lr, steps, weight_decay)
    k = np.arange(steps + 1)
    flow = balance_flow(qs[0], lr * k, weight_decay)
    scale = np.abs(qs[0]).max()
    assert np.max(np.abs(flow - qs)) <= 0.01 * scale
    # the leading discrete term differs from the flow only at O(lr λ² t)
    lead = balance_gd(qs[0], lr, k, weight_decay)
    assert np.max(np.abs(lead - flow)) <= 2 * lr * weight_decay**2 * lr * steps * scale + 1e-15
    if weight_decay:
        assert np.abs(qs[-1]).max() < 0.05 * scale  # e^{−2λt} = e^{−4}: decay really happened


def _scalar_sgd(lr, batch, steps, every, chains, u0=2.0, w0=0.5, seed=0):
    """SGD chains on ℓ = ½(u w x − y)², y = x + ε, x, ε ~ N(0, 1); returns E[Q] every `every` steps."""
    rng = np.random.default_rng(seed)
    u, w = np.full(chains, u0), np.full(chains, w0)
    means = []
    for k in range(steps + 1):
        if k % every == 0:
            means.append(np.mean(u * u - w * w))
        if k == steps:
            break
        x = rng.standard_normal((chains, batch))
        y = x + rng.standard_normal((chains, batch))
        a = np.mean(((u * w)[:, None] * x - y) * x, axis=1)
        q_before = u * u - w * w
        u, w = u - lr * w * a, w - lr * u * a
    np.testing.assert_allclose(u * u - w * w, scalar_balance_step(q_before, a, lr), rtol=1e-9, atol=1e-12)
    return np.array(means)


def test_scalar_law_of_balance():
    lr, batch, steps, every = 0.02, 1, 5000, 500
    sim = _scalar_sgd(lr, batch, steps, every, chains=2000)
    k = np.arange(0, steps + 1, every)
    corrected = scalar_balance_sgd(sim[0], lr, k, batch, x_var=1.0, noise_var=1.0, v_star=1.0)
    leading = scalar_balance_sgd(
        sim[0], lr, k, batch, x_var=1.0, noise_var=1.0, v_star=1.0, fluctuation_correction=False
    )
    assert sim[-1] < 0.15 * sim[0]  # noise really drives Q towards the balanced fixed point 0
    assert np.max(np.abs(corrected - sim) / sim) <= 0.02
    leading_err = np.max(np.abs(leading - sim) / sim)
    assert leading_err <= 0.30
    assert leading_err > 5 * np.max(np.abs(corrected - sim) / sim)


def test_scalar_gradient_descent_conserves_balance_on_the_minimum():
    # full-batch GD at uw = v* has A = 0: Q is exactly conserved (only noise moves it)
    q = scalar_balance_step(np.array([3.75]), np.array([0.0]), lr=0.1)
    assert q[0] == 3.75
    assert scalar_balance_step(3.75, 0.0, lr=0.1, weight_decay=0.5)[()] == pytest.approx(3.75 * 0.95**2)


def test_validation_messages():
    with pytest.raises(LearndynValueError, match="w_out has shape"):
        neuron_balance(np.ones((3, 2)), np.ones((2, 4)))
    with pytest.raises(LearndynValueError, match="grad_sq_diff"):
        balance_gd(np.ones(3), 0.1, [5], grad_sq_diff=np.ones((2, 3)))
    with pytest.raises(LearndynValueError, match="weight_decay"):
        balance_flow(np.ones(3), [1.0], weight_decay=-1.0)


def test_soft_threshold_spectrum():
    np.testing.assert_allclose(soft_threshold_spectrum([1.0, 3.0, 2.0], 1.5, 2), [1.5, 0.5])
    np.testing.assert_allclose(soft_threshold_spectrum([1.0, 3.0], 0.0, 5), [3.0, 1.0])


def test_soft_threshold_spectrum_is_where_weight_decayed_factors_converge():
    """Gradient descent on ½‖W₂W₁ − T‖² + (λ/2)(‖W₁‖² + ‖W₂‖²) reaches the soft-thresholded spectrum."""
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    V, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    sv, lam, lr = np.array([3.0, 2.0, 1.0, 0.3]), 0.5, 0.05
    T = (U * sv) @ V.T
    W1, W2 = 0.1 * rng.standard_normal((4, 4)), 0.1 * rng.standard_normal((4, 4))
    for _ in range(4000):
        R = W2 @ W1 - T
        W1, W2 = W1 - lr * (W2.T @ R + lam * W1), W2 - lr * (R @ W1.T + lam * W2)
    np.testing.assert_allclose(
        np.linalg.svd(W2 @ W1, compute_uv=False), soft_threshold_spectrum(sv, lam, 4), atol=1e-6
    )


def test_decay_errors_vanish_on_the_exponential_law():
    t = np.linspace(0.0, 3.0, 7)
    q = balance_flow(np.array([1.0, -2.0, 0.5]), t, 0.3)
    np.testing.assert_allclose(decay_errors(q, t, 0.3), 0.0, atol=1e-15)
    assert decay_errors(q, t, 0.3, rate=1.0).max() > 0.3  # the wrong rate is visibly off


def test_product_variance_is_the_one_dimensional_sgd_covariance():
    q, lr, batch, h, s2, v_star = 1.5, 0.02, 2, 1.3, 0.7, 1.0
    lr_eff = lr * np.sqrt(q * q + 4 * v_star * v_star)
    expected = sgd_stationary_covariance([[h]], lr_eff, batch, s2)[0, 0]
    assert balance_product_variance(q, lr, batch, h, s2, v_star) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(LearndynValueError, match="batch=0 is out of range"):
        balance_product_variance(q, lr, 0, h, s2, v_star)
