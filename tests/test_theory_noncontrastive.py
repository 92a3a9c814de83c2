"""learndyn.theory.noncontrastive against brute force: numpy gradient descent on the population BYOL/SimSiam
loss (float64), and independent checks of the fixed points of the mode equations."""

from __future__ import annotations

import numpy as np
import pytest

from learndyn.theory.noncontrastive import (
    balance_matrix,
    collapse_threshold,
    commutator_norm,
    directpred_predictor,
    mode_flow,
    predictor_balance,
    predictor_fixed_point,
    predictor_saddle,
)
from learndyn.validation import LearndynValueError


def _spd(rng: np.random.Generator, d: int, low: float) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * rng.uniform(low, 1.5, d)) @ q.T


def _byol_gd(W, Wp, Wa, X, Xa, lr, steps, alpha_p, eta, ema):
    """Plain GD on J = ½E‖W_p W x₁ − sg(W_a x₂)‖² (population form), EMA target."""
    S1 = X + Xa
    for _ in range(steps):
        N = Wa @ X - Wp @ W @ S1
        Wp, W = Wp + lr * (alpha_p * N @ W.T - eta * Wp), W + lr * (Wp.T @ N - eta * W)
        Wa = ema * Wa + (1 - ema) * W
    return W, Wp


def test_balance_law_holds_for_any_data_target_and_predictor_rate():
    rng = np.random.default_rng(0)
    d_in, d_out = 5, 3
    X, Xa = _spd(rng, d_in, 0.3), _spd(rng, d_in, 0.0)
    W0 = 0.6 * rng.standard_normal((d_out, d_in))
    Wp0 = 0.4 * rng.standard_normal((d_out, d_out))
    alpha_p, eta, T = 2.0, 0.1, 3.0
    D0 = balance_matrix(W0, Wp0, alpha_p)
    predicted = predictor_balance(T, D0, eta)
    errors = []
    for lr in (0.004, 0.002):
        W, Wp = _byol_gd(W0, Wp0, 0.8 * W0, X, Xa, lr, round(T / lr), alpha_p, eta, ema=0.99)
        errors.append(np.abs(balance_matrix(W, Wp, alpha_p) - predicted).max() / np.abs(D0).max())
    # GD departs from the law at O(lr) over a fixed time: halving lr halves the error
    assert errors[1] < 0.6 * errors[0] and errors[1] < 5e-3


@pytest.mark.parametrize("aug_var", [0.0, 1.0, 3.0])
def test_fixed_point_is_stationary_and_attracting(aug_var):
    eta, alpha_p = 0.05, 2.0
    p, s = predictor_fixed_point(aug_var, eta, alpha_p)
    w = np.sqrt(s)
    gap = 1 - (1 + aug_var) * p
    assert abs(alpha_p * w * w * gap - eta * p) < 1e-14 and abs(p * gap - eta) < 1e-14
    # from a generous start the mode converges to (p₊, √s); from a tiny one it collapses
    pt, wt = mode_flow([0.0, 400.0], 0.0, 1.0, aug_var, eta, alpha_p)
    assert pt[-1] == pytest.approx(p, rel=1e-6) and wt[-1] ** 2 == pytest.approx(s, rel=1e-6)
    pt, wt = mode_flow([0.0, 400.0], 0.0, 1e-3, aug_var, eta, alpha_p)
    assert abs(wt[-1]) < 1e-6
    # the saddle lies between: 0 < p₋ < p₊
    assert 0 < predictor_saddle(aug_var, eta) < p


def test_directions_beyond_the_threshold_collapse():
    eta = 0.05
    sc = collapse_threshold(eta)
    assert sc == pytest.approx(4.0)
    p, s = predictor_fixed_point([sc - 0.1, sc + 0.1], eta)
    assert p[0] > 0 and p[1] == 0 and s[1] == 0
    # (just past the threshold the decay is slow: a saddle-node; well past it, fast)
    _, wt = mode_flow([0.0, 400.0], 0.0, 1.0, sc + 2.0, eta)
    assert abs(wt[-1]) < 1e-6
    assert collapse_threshold(0.0) == float("inf")


def test_aligned_matrix_gd_follows_the_mode_equations():
    rng = np.random.default_rng(1)
    d = 3
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    R, _ = np.linalg.qr(rng.standard_normal((d, d)))
    aug = np.array([0.0, 0.7, 2.0])
    Xa = (Q * aug) @ Q.T
    w0, p0 = np.array([0.9, 1.1, 0.8]), np.array([0.1, 0.0, 0.3])
    W, Wp = (R * w0) @ Q.T, (R * p0) @ R.T
    alpha_p, eta, lr, T = 1.5, 0.05, 0.001, 4.0
    W_T, Wp_T = _byol_gd(W, Wp, W, np.eye(d), Xa, lr, round(T / lr), alpha_p, eta, ema=0.0)
    for j in range(d):
        pt, wt = mode_flow([T], p0[j], w0[j], aug[j], eta, alpha_p)
        assert R[:, j] @ Wp_T @ R[:, j] == pytest.approx(pt[-1], abs=3e-3)
        assert R[:, j] @ W_T @ Q[:, j] == pytest.approx(wt[-1], abs=3e-3)
    # the form is preserved: off-diagonal entries stay zero
    off = R.T @ W_T @ Q - np.diag(np.diag(R.T @ W_T @ Q))
    assert np.abs(off).max() < 1e-12


def test_directpred_predictor_squares_to_alpha_f_and_commutes():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((4, 6))
    F = W @ W.T
    Wp = directpred_predictor(F, alpha_p=3.0)
    np.testing.assert_allclose(Wp.T @ Wp, 3.0 * F, atol=1e-10)
    assert commutator_norm(Wp, F) < 1e-14
    assert commutator_norm(rng.standard_normal((4, 4)), F) > 0.05
    assert commutator_norm(np.zeros((4, 4)), F) == 0.0


def test_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="eta"):
        predictor_fixed_point(1.0, 0.0)
    with pytest.raises(LearndynValueError, match="allowed: Wp of shape"):
        balance_matrix(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(LearndynValueError, match="square"):
        directpred_predictor(np.ones((2, 3)))
