"""Weight decay in deep scalar linear networks: closed-form minima against brute force and gradient descent.

Brute force: the full, unbalanced objective ½(Π w_i − s)² + (γ/2)Σ w_i² on a grid over all L weights
(401², 61³, 25⁴ points), L-BFGS from the best grid point near v = 0 and the best one away from it
(products agree with the closed form to 1e-6); φ maximised on a grid of 2·10⁵ points (spinodal, 1e-8).
Gradient descent (numpy, float64, lr 0.05, 6000 steps) from balanced starts just above and below the barrier
ends where :func:`flow_limit_product` says (1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from learndyn.theory import soft_threshold_spectrum
from learndyn.theory.weight_decay_transition import (
    barrier_product,
    critical_weight_decay,
    flow_limit_product,
    global_minimum_product,
    jump_product,
    nonzero_minimum,
    reduced_loss,
    spinodal_weight_decay,
)
from learndyn.validation import LearndynValueError


def _full_loss(w, s, gamma):
    return 0.5 * (np.prod(w) - s) ** 2 + 0.5 * gamma * np.sum(w**2)


def _full_grad(w, s, gamma):
    v = np.prod(w)
    return (v - s) * np.array([np.prod(np.delete(w, i)) for i in range(w.size)]) + gamma * w


GRID = {2: 401, 3: 61, 4: 25}


def _brute_force_product(s, gamma, depth):
    """The product at the global minimum of the full objective: a grid over all weights
    (``[−1.5, 1.5]·s^{1/L}`` per weight); L-BFGS from its best point with ``|v| < s/10`` and its best point
    with ``|v| ≥ s/10`` (so a coarse grid cannot pick the wrong one of two nearly equal minima); the
    better of the two."""
    axis = np.linspace(-1.5, 1.5, GRID[depth]) * s ** (1 / depth)
    mesh = np.meshgrid(*([axis] * depth), indexing="ij", sparse=True)
    v = mesh[0]
    sq = mesh[0] ** 2
    for m in mesh[1:]:
        v = v * m
        sq = sq + m**2
    v = np.broadcast_to(v, (GRID[depth],) * depth).ravel()
    loss = np.broadcast_to(0.5 * (v.reshape((GRID[depth],) * depth) - s) ** 2 + 0.5 * gamma * sq,
                           (GRID[depth],) * depth).ravel()
    best = (np.inf, None)
    for region in (np.abs(v) < 0.1 * s, np.abs(v) >= 0.1 * s):
        flat = np.flatnonzero(region)[np.argmin(loss[region])]
        w0 = np.array([axis[i] for i in np.unravel_index(flat, (GRID[depth],) * depth)])
        res = minimize(_full_loss, w0, args=(s, gamma), jac=_full_grad, method="L-BFGS-B",
                       options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 2000})
        if res.fun < best[0]:
            best = (res.fun, np.prod(res.x))
    return best[1]


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_global_minimum_matches_multistart_optimisation(depth):
    s = 1.3
    gamma_star = critical_weight_decay(s, depth)
    for ratio in (0.5, 0.97, 1.03, 1.5):
        gamma = ratio * gamma_star
        expected = global_minimum_product(s, gamma, depth)
        assert abs(_brute_force_product(s, gamma, depth)) == pytest.approx(expected, abs=1e-6)
    if depth >= 3:  # the jump: just below γ* the minimum is ≈ v_jump, just above it is 0
        just_below = global_minimum_product(s, 0.999999 * gamma_star, depth)
        assert just_below == pytest.approx(jump_product(s, depth), rel=1e-3)
        assert global_minimum_product(s, 1.000001 * gamma_star, depth) == 0.0
        v = nonzero_minimum(s, gamma_star, depth)
        assert reduced_loss(v, s, gamma_star, depth) == pytest.approx(reduced_loss(0.0, s, gamma_star, depth))


def test_depth_two_is_soft_thresholding():
    s = np.array([2.0, 1.0, 0.4])
    for gamma in (0.1, 0.5, 1.5):
        ours = [global_minimum_product(float(si), gamma, 2) for si in s]
        np.testing.assert_allclose(ours, soft_threshold_spectrum(s, gamma, 3), atol=1e-12)
    assert critical_weight_decay(1.7, 2) == spinodal_weight_decay(1.7, 2) == pytest.approx(1.7)
    assert barrier_product(1.0, 0.5, 2) is None


@pytest.mark.parametrize("depth", [3, 4, 6])
def test_spinodal_is_the_maximum_of_phi(depth):
    s = 0.8
    a = np.linspace(0.0, s ** (1 / depth), 200_001)
    phi = a ** (depth - 2) * (s - a**depth)
    assert spinodal_weight_decay(s, depth) == pytest.approx(phi.max(), abs=1e-8)
    assert spinodal_weight_decay(s, depth) > critical_weight_decay(s, depth)
    assert nonzero_minimum(s, 1.0001 * spinodal_weight_decay(s, depth), depth) is None


def _gd_products(starts, s, gamma, depth, lr=0.05, steps=6000):
    """Plain GD on the full objective from balanced starts (rows), vectorised over starts."""
    w = np.repeat(np.asarray(starts, dtype=float)[:, None], depth, axis=1)
    for _ in range(steps):
        v = w.prod(axis=1, keepdims=True)
        w = w - lr * ((v - s) * v / w + gamma * w)  # ∂/∂w_i of ½(v − s)²: (v − s)·v/w_i
    return w.prod(axis=1)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_gradient_descent_ends_where_the_flow_limit_says(depth):
    s = 1.0
    gamma_star = critical_weight_decay(s, depth)
    for ratio in (0.5, 0.9, 1.1):
        gamma = ratio * gamma_star
        barrier = barrier_product(s, gamma, depth)
        starts = [0.05, 1.3]
        if barrier is not None:
            a_b = barrier ** (1 / depth)
            starts += [0.99 * a_b, 1.01 * a_b]
        sim = _gd_products(starts, s, gamma, depth)
        theory = [flow_limit_product(s, gamma, depth, a0) for a0 in starts]
        np.testing.assert_allclose(sim, theory, atol=1e-5)
        if barrier is not None:  # the two sides of the barrier go different ways
            assert theory[2] == 0.0 and theory[3] > 0.0


def test_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="depth"):
        critical_weight_decay(1.0, 1)
    with pytest.raises(LearndynValueError, match="teacher"):
        global_minimum_product(-1.0, 0.1, 3)
    with pytest.raises(LearndynValueError, match="init"):
        flow_limit_product(1.0, 0.1, 3, 0.0)
