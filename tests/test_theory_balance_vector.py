"""The law of balance with ``d = 3`` inputs per unit, against SGD on ``f(x) = u·(wᵀx)``.

Measured (``H`` with eigenvalues 2, 1, ½ in a random basis, ``v* = (1, −½, 0.8)``, ``σ² = 1``, ``B = 1``,
start ``u₀ = 2`` on ``uw = v*``): the mean balance settles at −1.58 (η = 0.04, 300 chains), −1.615
(η = 0.03), −1.656 (η = 0.015) against the predicted ``Q* = −1.703``: the leading-order law is off by 7.4%,
5.1%, 2.8%, an ``O(η)`` correction. The ``d = 1`` law would say ``Q* = 0``.
"""

from __future__ import annotations

import numpy as np
import pytest

from learndyn.theory.balance_vector import (
    balance_drift,
    balance_increment,
    balance_trajectory,
    stationary_balance,
)
from learndyn.theory.symmetry import scalar_balance_sgd
from learndyn.validation import LearndynValueError


def _problem():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    H = (q * np.array([2.0, 1.0, 0.5])) @ q.T
    return H, np.array([1.0, -0.5, 0.8])


def _sgd(H, v, lr, u0, chains, steps, seed=1):
    rng = np.random.default_rng(seed)
    L = np.linalg.cholesky(H)
    u, w = np.full(chains, u0), np.tile(v / u0, (chains, 1))
    for _ in range(steps):
        x = rng.standard_normal((chains, 3)) @ L.T
        y = x @ v + rng.standard_normal(chains)
        a = ((u * (x * w).sum(1) - y)[:, None]) * x
        u, w = u - lr * (w * a).sum(1), w - lr * u[:, None] * a
    return u, w


def test_one_step_identity_and_expected_drift_on_the_manifold():
    H, v = _problem()
    rng = np.random.default_rng(2)
    u0, lr, batch = 1.3, 0.05, 2
    w0 = v / u0
    x = rng.standard_normal((200_000, batch, 3)) @ np.linalg.cholesky(H).T
    eps = rng.standard_normal((200_000, batch))
    a = np.einsum("cb,cbd->cd", (x @ (u0 * w0) - (x @ v + eps)), x) / batch
    u1, w1 = u0 - lr * a @ w0, w0 - lr * u0 * a
    step = (u1**2 - (w1 * w1).sum(1)) - (u0**2 - w0 @ w0)
    np.testing.assert_allclose(step, balance_increment(u0, w0, a, lr), rtol=1e-9, atol=1e-15)  # exact
    expected = balance_drift(u0, v, H, lr, noise_var=1.0, batch=batch)
    assert step.mean() == pytest.approx(expected, rel=0.02)  # Monte Carlo, s.e. ~0.5%


def test_noise_drives_the_balance_to_the_d_input_law_not_to_zero():
    H, v = _problem()
    star = stationary_balance(v, H)
    assert star["u_sq"] ** 2 == pytest.approx(v @ H @ v / np.trace(H))  # u² tr H = wᵀHw
    assert star["balance"] == pytest.approx(-1.7029, abs=1e-3)
    u, w = _sgd(H, v, lr=0.04, u0=2.0, chains=300, steps=3000)
    q_end = float(np.mean(u**2 - (w * w).sum(1)))
    assert abs(q_end - star["balance"]) < 0.1 * abs(star["balance"]), q_end  # measured −1.58: O(η) off
    assert q_end < -1.0  # far from the d = 1 balance Q = 0
    assert balance_trajectory(2.0, v, H, 0.04, 1.0, [3000])[0] == pytest.approx(star["balance"], rel=1e-3)


def test_trajectory_reduces_to_the_scalar_law_and_is_monotone():
    h, v, lr = 1.5, 0.7, 0.02
    steps = np.arange(0, 20_001, 2000)
    ours = balance_trajectory(2.0, [v], [[h]], lr, 0.5, steps, batch=2)
    leading = scalar_balance_sgd(4.0 - v**2 / 4.0, lr, steps, 2, h, 0.5, v, fluctuation_correction=False)
    np.testing.assert_allclose(ours, leading, rtol=2e-3)  # (1 − κh)^k vs e^{−κhk}
    H, vv = _problem()
    traj = balance_trajectory(0.3, vv, H, 0.04, 1.0, np.arange(0, 5001, 250))  # from below: Q rises
    assert np.all(np.diff(traj) > 0) and traj[-1] < stationary_balance(vv, H)["balance"]


def test_bad_input_is_one_line():
    H, v = _problem()
    with pytest.raises(LearndynValueError, match="u0=0"):
        balance_trajectory(0.0, v, H, 0.1, 1.0, [1])
    with pytest.raises(LearndynValueError, match="allowed: \\(3, 3\\)"):
        stationary_balance(v, np.eye(2))
