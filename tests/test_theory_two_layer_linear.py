"""learndyn.theory.two_layer_linear against brute force: width-h networks trained by plain numpy gradient
descent (float64), an independent ODE integration of the aligned equation, and the Saxe and NTK limits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from learndyn.theory import mode_strength, ntk_predictions_flow
from learndyn.theory.two_layer_linear import (
    aligned_kernel,
    aligned_norms,
    aligned_strength,
    aligned_time,
    imbalance,
    lazy_prediction,
    lazy_rich_ratio,
    rank_one_init,
    reduced_flow,
    reduced_gd,
    reduced_state,
)
from learndyn.validation import LearndynValueError


def _data(d: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, d)))
    X = np.sqrt(n) * q  # X^T X / n = I exactly
    target = rng.standard_normal(d)
    return X, X @ target, target


def _gd(a: np.ndarray, W: np.ndarray, X: np.ndarray, y: np.ndarray, lr: float, steps: int):
    """Plain gradient descent on L = 1/(2n) Σ (aᵀ W x − y)², from the data (no reduction used)."""
    n = X.shape[0]
    for _ in range(steps):
        grad_beta = X.T @ (X @ (W.T @ a) - y) / n
        a, W = a - lr * W @ grad_beta, W - lr * np.outer(a, grad_beta)
    return a, W


@pytest.mark.parametrize("width", [1, 3, 40])
def test_reduced_gd_is_exact_at_every_width(width):
    d = 4
    X, y, target = _data(d, 30, seed=width)
    rng = np.random.default_rng(100 + width)
    a, W = 0.4 * rng.standard_normal(width), 0.3 * rng.standard_normal((width, d)) / np.sqrt(width)
    A, S, beta = reduced_state(a, W)
    lr, steps = 0.05, 150
    red = reduced_gd([0, steps], A, S, beta, target, lr)
    a_T, W_T = _gd(a, W, X, y, lr, steps)
    A_T, S_T, beta_T = reduced_state(a_T, W_T)
    np.testing.assert_allclose(red.beta[-1], beta_T, rtol=0, atol=1e-11)
    np.testing.assert_allclose(red.S[-1], S_T, rtol=0, atol=1e-11)
    assert abs(red.A[-1] - A_T) < 1e-11
    # the full h×h imbalance Δ = WWᵀ − aaᵀ moves only at O(lr²) per step under GD
    delta0, delta_T = W @ W.T - np.outer(a, a), W_T @ W_T.T - np.outer(a_T, a_T)
    assert np.abs(delta_T - delta0).max() < 5 * lr**2 * steps


def test_small_step_gd_converges_to_the_reduced_flow_at_first_order():
    d, width = 3, 6
    X, y, target = _data(d, 20, seed=7)
    rng = np.random.default_rng(8)
    a, W = 0.3 * rng.standard_normal(width), 0.3 * rng.standard_normal((width, d))
    T = 2.0
    flow = reduced_flow([T], *reduced_state(a, W), target)
    errors = []
    for lr in (0.02, 0.01):
        a_T, W_T = _gd(a, W, X, y, lr, round(T / lr))
        errors.append(np.abs(W_T.T @ a_T - flow.beta[-1]).max())
    assert errors[1] < 0.6 * errors[0] and errors[1] < 0.02  # first order in lr: halves when lr halves
    # gradient flow conserves λ = ‖a‖² − ‖W‖²
    traj = reduced_flow(np.linspace(0, T, 9), *reduced_state(a, W), target)
    lam = traj.A - np.trace(traj.S, axis1=1, axis2=2)
    np.testing.assert_allclose(lam, imbalance(a, W), atol=1e-8)


@pytest.mark.parametrize("lam", [-3.0, -0.4, 0.0, 0.7, 5.0])
def test_aligned_closed_form_matches_an_independent_ode_solve(lam):
    s, u0 = 1.5, 0.01
    t = np.linspace(0.0, 6.0, 31)
    sol = solve_ivp(lambda _t, u: np.sqrt(lam**2 + 4 * u**2) * (s - u), (0, 6), [u0], t_eval=t,
                    rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(aligned_strength(t, s, lam, u0), sol.y[0], rtol=0, atol=1e-9)
    # aligned_time inverts aligned_strength
    u = aligned_strength(t[1:], s, lam, u0)
    well_posed = s - u > 1e-4  # (near s, t(u) is ill-conditioned: dt/du = 1/((s − u)√(λ² + 4u²)))
    np.testing.assert_allclose(aligned_time(u[well_posed], s, lam, u0), t[1:][well_posed], rtol=1e-8)
    # the width-5 network from the aligned init follows the closed form along ê, and nothing else
    a, W = rank_one_init(5, 3, u0, lam, [0.0, 2.0, 0.0], seed=3)
    assert abs(imbalance(a, W) - lam) < 1e-12
    traj = reduced_flow(t, *reduced_state(a, W), [0.0, s, 0.0])
    np.testing.assert_allclose(traj.beta[:, 1], sol.y[0], atol=1e-8)
    np.testing.assert_allclose(traj.beta[:, [0, 2]], 0.0, atol=1e-12)
    A, w2 = aligned_norms(traj.beta[:, 1], lam)
    np.testing.assert_allclose(traj.A, A, atol=1e-8)
    np.testing.assert_allclose(traj.kernel[:, 1, 1], aligned_kernel(traj.beta[:, 1], lam), atol=1e-8)


def test_balanced_limit_is_saxe_sigmoid():
    t = np.linspace(0.0, 10.0, 101)
    for s, u0 in ((1.0, 1e-4), (3.0, 0.02)):
        np.testing.assert_allclose(aligned_strength(t, s, 0.0, u0), mode_strength(t, s, u0, depth=2),
                                   rtol=1e-12, atol=1e-13)
    # the balanced network's kernel grows by s/u0: rich
    assert lazy_rich_ratio(1.0, 0.0, 1e-4) == pytest.approx(1e4)


def test_large_imbalance_limit_is_the_linearised_model():
    s, u0 = 1.0, 0.1
    deviations = []
    for lam in (10.0, 100.0, 1000.0):
        t = np.linspace(0.0, 20.0 / lam, 200)
        A0, w2 = aligned_norms(u0, lam)
        lin = lazy_prediction(t, A0, np.diag([w2, 0.0]), [u0, 0.0], [s, 0.0])
        deviations.append(np.abs(aligned_strength(t, s, lam, u0) - lin[:, 0]).max())
        assert lazy_rich_ratio(s, lam, u0) == pytest.approx(1.0, abs=3 * s**2 / lam**2)
    # O(s²/λ²): a factor 100 per decade of λ (within a margin)
    assert deviations[0] < 5e-3
    assert deviations[1] / deviations[0] < 0.02 and deviations[2] / deviations[1] < 0.02
    # and for a random finite-width init with a large read-out (λ ≫ s): the ODE follows its linearisation
    d, width = 3, 8
    rng = np.random.default_rng(0)
    r = rng.standard_normal(width)
    a = 30.0 * r / np.linalg.norm(r)
    W = 0.05 * rng.standard_normal((width, d))
    target = np.array([1.0, -0.5, 0.3])
    t = np.linspace(0.0, 0.02, 21)
    state = reduced_state(a, W)
    dev = np.abs(reduced_flow(t, *state, target).beta - lazy_prediction(t, *state, target)).max()
    assert dev < 2e-3 * np.linalg.norm(target)


def test_lazy_prediction_is_the_ntk_modules_linearised_model():
    # the linearised network on the data: Θ₀ = X K₀ Xᵀ on the training points (learndyn.theory.ntk)
    d, width = 3, 5
    X, y, target = _data(d, 12, seed=4)
    rng = np.random.default_rng(5)
    a, W = rng.standard_normal(width), 0.5 * rng.standard_normal((width, d))
    A0, S0, beta0 = reduced_state(a, W)
    t = np.linspace(0.0, 2.0, 9)
    theta = X @ (A0 * np.eye(d) + S0) @ X.T
    ntk = ntk_predictions_flow(theta, y, X @ beta0, t)
    np.testing.assert_allclose(lazy_prediction(t, A0, S0, beta0, target) @ X.T, ntk.train, atol=1e-10)


def test_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="u0 has an element >= s"):
        aligned_strength([1.0], 1.0, 0.0, 1.0)
    with pytest.raises(LearndynValueError, match="fixed point"):
        aligned_strength([1.0], 1.0, 0.0, 0.0)
    with pytest.raises(LearndynValueError, match="allowed: W of shape"):
        reduced_state(np.ones(3), np.ones((2, 2)))
    with pytest.raises(LearndynValueError, match="allowed: \\(d, d\\)"):
        reduced_flow([1.0], 1.0, np.eye(3), np.zeros(2), np.zeros(2))
    with pytest.raises(LearndynValueError, match="sorted"):
        reduced_flow([1.0, 0.5], 1.0, np.eye(2), np.zeros(2), np.zeros(2))
