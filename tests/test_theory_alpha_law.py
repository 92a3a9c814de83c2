"""The α-stationary law of covariant GD (theory/covariant.py) and SGD's discrete-time additive Lyapunov form.

References, each independent of the closed form it checks: a brute-force Kronecker solve of the discrete
Lyapunov equation; ``scipy.linalg.solve_discrete_lyapunov``; the exact multiplicative-noise SGD closed form
(α = 0); a lag-by-lag sum of the gradient autocovariance through the EMA filter (the statistic's mean); a
Monte Carlo of the filter on white noise; simulations (fixed-metric chains, additive-noise SGD chains in
float64). Measured: additive-noise simulation within 0.13% of max|Σ| of the discrete form (tolerance 3%)
where the Langevin form is 21% off; fixed-metric chains within 0.3% (tolerance 3%). Together ~0.8 s.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov

from learndyn.phenomena._metric_chains import ChainsSetup, stationary_second_moment
from learndyn.phenomena._threads import torch_threads
from learndyn.theory.covariant import (
    alpha_law_covariance,
    alpha_stationary,
    covariance_gain,
    metric_lyapunov_covariance,
)
from learndyn.theory.sgd_stationary import (
    langevin_stationary_covariance,
    sgd_discrete_stationary_covariance,
    sgd_noise_covariance,
    sgd_stationary_covariance,
)
from learndyn.validation import LearndynValueError


def _spd(d: int, seed: int, shift: float = 0.1) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((d, d))
    return A @ A.T / d + shift * np.eye(d)


def _kronecker_solve(A: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``Σ = AΣAᵀ + Q`` by the (d² × d²) linear system, row-major ``vec``."""
    d = A.shape[0]
    return np.linalg.solve(np.eye(d * d) - np.kron(A, A), Q.reshape(-1)).reshape(d, d)


def test_metric_lyapunov_matches_the_kronecker_solve():
    H, C, P = _spd(4, 0), _spd(4, 1), _spd(4, 2, shift=0.5)
    lr = 0.3 / np.linalg.eigvalsh(P @ H).real.max()
    sigma = metric_lyapunov_covariance(H, C, P, lr)
    A = np.eye(4) - lr * P @ H
    np.testing.assert_allclose(sigma, _kronecker_solve(A, lr**2 * P @ C @ P), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(sigma, solve_discrete_lyapunov(A, lr**2 * P @ C @ P), rtol=1e-9, atol=1e-14)
    with pytest.raises(LearndynValueError, match="no stationary solution"):
        metric_lyapunov_covariance(H, C, P, 10 * lr / 0.3)


def test_alpha_zero_is_sgds_exact_closed_form():
    H = _spd(3, 3)
    th = alpha_stationary(H, 0.2, 0.0, 1.3, 4)
    np.testing.assert_allclose(th.covariance, sgd_stationary_covariance(H, 0.2, 4, 1.3), rtol=1e-12)


@pytest.mark.parametrize("moment", ["second", "covariance"])
def test_fixed_point_solves_the_lyapunov_equation_and_the_statistic_is_the_filtered_autocovariance(moment):
    H, lr, B, s2, b1 = _spd(3, 4), 0.05, 4, 1.0, 0.9
    th = alpha_stationary(H, lr, 0.5, s2, B, moment=moment, beta1=b1)
    V, p = th.basis, th.inv_metric
    P = (V * p) @ V.T
    sigma = th.covariance
    N = sgd_noise_covariance(H, sigma, s2, B)  # the noise averaged over the stationary state
    np.testing.assert_allclose(metric_lyapunov_covariance(H, N, P, lr), sigma, rtol=1e-10)
    # Ŝ's mean, lag by lag: Γ(0) = HΣH + N, Γ(τ) = H A^τ Σ H − η H A^{τ−1} P N, filtered by a_k
    A = np.eye(3) - lr * P @ H
    lags = 600
    gammas = [H @ sigma @ H + N]
    Ak = np.eye(3)
    for _ in range(1, lags):
        gammas.append(H @ (A @ Ak) @ sigma @ H - lr * H @ Ak @ P @ N)
        Ak = A @ Ak
    if moment == "second":
        expected = gammas[0]
    else:
        a = np.array([b1] + [-(1 - b1) * b1**k for k in range(1, lags)])
        expected = sum(a[k] * a[k] * gammas[0] for k in range(lags))
        for tau in range(1, lags):
            w = float(a[:-tau] @ a[tau:])
            expected = expected + w * (gammas[tau] + gammas[tau].T)
    np.testing.assert_allclose(V.T @ expected @ V, np.diag(th.statistic), atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(p, th.statistic ** (-0.5), rtol=1e-12)


def test_covariance_gain_by_monte_carlo_of_the_filter():
    rng = np.random.default_rng(0)
    g = rng.standard_normal(200_000)
    m, b = 0.0, 0.9
    v = np.empty_like(g)
    for t, x in enumerate(g):  # m after this step's update, as the optimizer
        m = b * m + (1 - b) * x
        v[t] = x - m
    assert np.mean(v[100:] ** 2) == pytest.approx(covariance_gain(b), rel=0.01)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_small_lr_limit_is_the_alpha_law(alpha):
    H, s2, B = np.diag([1.0, 0.25, 0.1]), 1.0, 4
    gain = covariance_gain(0.9)
    for lr, tol in ((1e-3, 5e-3), (1e-5, 5e-5)):
        exact = alpha_stationary(H, lr, alpha, s2, B).covariance
        law = alpha_law_covariance(H, s2 / B, alpha, lr, gain)
        np.testing.assert_allclose(exact, law, rtol=tol, atol=0)
    # the shapes: isotropic, ∝ H^{−½}, ∝ H^{−1} (and independent of the noise level at α = 1)
    law = np.diag(alpha_law_covariance(H, 0.25, alpha, 1e-3, gain))
    np.testing.assert_allclose(law * np.diag(H) ** alpha, law[0] * np.ones(3), rtol=1e-12)
    if alpha == 1.0:
        loud, quiet = alpha_law_covariance(H, 7.0, 1.0, 1e-3), alpha_law_covariance(H, 0.1, 1.0, 1e-3)
        np.testing.assert_allclose(loud, quiet, rtol=1e-12)


def test_fixed_metric_chains_follow_the_closed_form():
    """The chains with the theory's metric held fixed (no EMA): the Lyapunov part alone, α = 1."""
    setup = ChainsSetup((1.0, 0.25), 0.3, 1.0, 4, 1.0, 0.025, 0.9, 0.99, 0.0)
    th = alpha_stationary(setup.H, 0.025, 1.0, 1.0, 4)
    P = (th.basis * th.inv_metric) @ th.basis.T
    with torch_threads(1):
        est = stationary_second_moment(setup, 500, 0, 40, 400, seed=5, oracle=P)
    var = np.diag(th.basis.T @ est.second_moment @ th.basis)
    np.testing.assert_allclose(var, th.variances, rtol=0.03)


def test_discrete_additive_form_matches_a_float64_simulation():
    """``HΣ + ΣH − ηHΣH = ηC``, noise covariance not commuting with ``H``, at ``ηλ_max = 1.2``."""
    H, C = np.diag([1.0, 0.5, 0.3]), _spd(3, 7)
    lr = 1.2
    sigma = sgd_discrete_stationary_covariance(H, lr, C)
    np.testing.assert_allclose(H @ sigma + sigma @ H - lr * H @ sigma @ H, lr * C, atol=1e-13)
    np.testing.assert_allclose(sigma, metric_lyapunov_covariance(H, C, np.eye(3), lr), rtol=1e-10)
    gen = torch.Generator().manual_seed(0)
    A = torch.from_numpy(np.eye(3) - lr * H)
    L = torch.from_numpy(np.linalg.cholesky(C))
    e = torch.zeros(4000, 3, dtype=torch.float64)
    acc = torch.zeros(3, 3, dtype=torch.float64)
    for k in range(300):
        e = e @ A.T - lr * torch.randn(4000, 3, generator=gen, dtype=torch.float64) @ L.T
        if k >= 50:
            acc += e.T @ e
    estimate = (acc / (250 * 4000)).numpy()
    scale = np.abs(sigma).max()
    assert np.abs(estimate - sigma).max() < 0.03 * scale
    langevin = langevin_stationary_covariance(H, lr, C)
    assert np.abs(langevin - sigma).max() > 0.1 * scale  # the continuous form is far off here


def test_discrete_form_is_exact_for_sgd_with_the_averaged_noise():
    H, lr, B, s2 = _spd(3, 8), 0.2, 2, 1.0
    exact = sgd_stationary_covariance(H, lr, B, s2)
    averaged = sgd_noise_covariance(H, exact, s2, B)
    np.testing.assert_allclose(sgd_discrete_stationary_covariance(H, lr, averaged), exact, rtol=1e-10)
    leading = sgd_discrete_stationary_covariance(H, lr, s2 * H / B)
    assert np.trace(leading) < np.trace(exact) * 0.97  # the multiplicative part still matters


def test_validation_messages():
    H = np.diag([1.0, 0.5])
    with pytest.raises(LearndynValueError, match=r"lr=5.0 is out of range \(the mean diverges\)"):
        sgd_discrete_stationary_covariance(H, 5.0, np.eye(2))
    with pytest.raises(LearndynValueError, match="out of range"):
        alpha_stationary(H, 3.0, 0.5, 1.0, 4)
    with pytest.raises(LearndynValueError, match="moment='third' is not allowed"):
        alpha_stationary(H, 0.01, 0.5, 1.0, 4, moment="third")
    with pytest.raises(LearndynValueError, match="singular"):
        metric_lyapunov_covariance(H, np.eye(2), np.diag([1.0, 0.0]), 0.1)
