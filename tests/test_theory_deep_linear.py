"""Saxe et al. exact solutions vs gradient descent on actual 2- and 3-layer linear networks.

Measured (this file's settings): max relative error of the mode strengths over the whole trajectory
0.37% (depth 2, lr = 5e-4) and 0.40% (depth 3); it halves with lr (discretisation error O(lr)).
Tolerance: 2%. The closed forms (and the exact inversion for depth >= 3) agree with a Radau
integration to ~1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from learndyn.theory import (
    decoupled_init,
    deep_linear_loss,
    learning_time,
    make_teacher,
    measure_mode_strengths,
    mode_strength,
    time_to_strength,
    whitened_inputs,
)
from learndyn.validation import LearndynValueError

S = (3.0, 2.0, 1.0)


def _full_batch_gd(weights, X, Y, lr, steps, every):
    """Plain GD on L = 1/(2n) Σ‖y − W_D⋯W_1 x‖² with hand-written backprop; snapshots every `every` steps."""
    n = X.shape[0]
    snaps = []
    for k in range(steps + 1):
        if k % every == 0:
            snaps.append([w.copy() for w in weights])
        if k == steps:
            break
        acts = [X.T]
        for w in weights:
            acts.append(w @ acts[-1])
        delta = (acts[-1] - Y.T) / n
        grads = [None] * len(weights)
        for layer in range(len(weights) - 1, -1, -1):
            grads[layer] = delta @ acts[layer].T
            delta = weights[layer].T @ delta
        weights = [w - lr * g for w, g in zip(weights, grads, strict=True)]
    return snaps


def _setup(depth, a0):
    teacher = make_teacher(S, n_in=8, n_out=6, seed=1)
    X = whitened_inputs(16, 8, seed=2)
    Y = X @ teacher.matrix.T
    return teacher, X, Y, decoupled_init(teacher, hidden=10, a0=a0, depth=depth, seed=3)


def test_inputs_whitened_and_init_decoupled_balanced():
    teacher, X, _, weights = _setup(depth=3, a0=1e-2)
    np.testing.assert_allclose(X.T @ X / X.shape[0], np.eye(8), atol=1e-12)
    np.testing.assert_allclose(measure_mode_strengths(weights, teacher), 1e-2, rtol=1e-12)
    for lower, upper in zip(weights[:-1], weights[1:], strict=True):
        np.testing.assert_allclose(upper.T @ upper, lower @ lower.T, atol=1e-12)


def test_manual_backprop_matches_autograd():
    teacher, X, Y, weights = _setup(depth=3, a0=0.3)
    ws = [torch.tensor(w, requires_grad=True) for w in weights]
    out = torch.tensor(X) @ ws[0].T @ ws[1].T @ ws[2].T
    loss = 0.5 * ((out - torch.tensor(Y)) ** 2).sum() / X.shape[0]
    auto = torch.autograd.grad(loss, ws)
    after = _full_batch_gd(weights, X, Y, lr=1.0, steps=1, every=1)[1]
    for w, w1, g in zip(weights, after, auto, strict=True):
        np.testing.assert_allclose(w - w1, g.numpy(), atol=1e-12)


@pytest.mark.parametrize(("depth", "a0", "t_end"), [(2, 1e-3, 8.0), (3, 1e-2, 10.0)])
def test_mode_strengths_match_gradient_descent(depth, a0, t_end):
    teacher, X, Y, weights = _setup(depth, a0)
    errors = {}
    for lr in (1e-3, 5e-4):
        steps = int(round(t_end / lr))
        snaps = _full_batch_gd(weights, X, Y, lr, steps, every=steps // 40)
        t = lr * (steps // 40) * np.arange(len(snaps))
        sim = np.array([measure_mode_strengths(w, teacher) for w in snaps])
        theory = mode_strength(t, teacher.s, a0, depth=depth)
        errors[lr] = float(np.max(np.abs(sim - theory) / theory))
        # the decoupled form is preserved: the product stays diagonal in the teacher's bases
        prod = snaps[-1][0]
        for w in snaps[-1][1:]:
            prod = w @ prod
        off = teacher.U.T @ prod @ teacher.V - np.diag(sim[-1])
        assert np.max(np.abs(off)) < 1e-10
    assert errors[5e-4] <= 0.02, errors
    # gradient-flow limit: the error is O(lr)
    assert 1.7 < errors[1e-3] / errors[5e-4] < 2.3, errors
    # all modes were learned, in order of s
    assert np.all(theory[-1] > 0.95 * np.array(S))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_exact_solution_matches_tight_ode(depth):
    s = np.array([3.0, 1.0, 0.5, 0.0])
    a0 = np.array([1e-3, 2e-2, 2.0, 0.3])  # includes a0 > s (decay to s) and s = 0 (algebraic decay)
    t = np.linspace(0.0, 20.0, 101)

    def rhs(_, a):
        return depth * np.abs(a) ** (2.0 - 2.0 / depth) * (s - a)

    sol = solve_ivp(rhs, (0.0, 20.0), a0, t_eval=t, method="Radau", rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mode_strength(t, s, a0, depth=depth), sol.y.T, rtol=1e-9, atol=1e-13)


def test_depth2_closed_form_and_tau():
    s, a0, t = 2.0, 1e-4, np.linspace(0.0, 5.0, 11)
    e = np.exp(2.0 * s * t)
    np.testing.assert_allclose(mode_strength(t, s, a0), s * e / (e - 1.0 + s / a0), rtol=1e-13)
    # t in steps with tau = 1/lr is the same curve as t = lr·step with tau = 1
    np.testing.assert_allclose(mode_strength(t / 0.01, s, a0, tau=100.0), mode_strength(t, s, a0), rtol=1e-13)


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_learning_time_is_exact_inverse(depth):
    s, a0 = np.array([3.0, 1.0]), np.array([1e-3, 1e-2])
    for fraction in (0.1, 0.5, 0.9):
        tl = learning_time(s, a0, depth=depth, fraction=fraction)
        reached = np.array([mode_strength(tl[i], s[i], a0[i], depth=depth) for i in range(2)])
        np.testing.assert_allclose(reached, fraction * s, rtol=1e-10)
    if depth == 2:
        np.testing.assert_allclose(learning_time(s, a0), np.log(s / a0 - 1.0) / (2.0 * s), rtol=1e-12)
    np.testing.assert_allclose(time_to_strength(s, s, a0, depth=depth), np.inf)
    assert learning_time(0.0, 1e-3, depth=depth) == np.inf
    assert learning_time(1.0, 0.9, depth=depth) == 0.0


def test_loss_has_plateaus_and_steps():
    s, a0 = np.array([3.0, 1.0]), 1e-6
    t = np.linspace(0.0, 12.0, 1201)
    loss = deep_linear_loss(t, s, a0)
    assert np.all(np.diff(loss) <= 1e-12)
    t1, t2 = learning_time(s, a0)
    # plateau at ½ s_2² between the two drops, at ½(s_1² + s_2²) before the first
    assert loss[0] == pytest.approx(5.0, rel=1e-5)
    mid = np.searchsorted(t, 0.5 * (t1 + t2))
    assert loss[mid] == pytest.approx(0.5, rel=0.05)
    assert loss[-1] < 1e-3
    assert deep_linear_loss(np.array([0.0]), s, a0, residual=0.25)[0] == pytest.approx(5.25, rel=1e-5)


def test_validation_messages():
    with pytest.raises(LearndynValueError, match="depth"):
        mode_strength(1.0, 1.0, 0.1, depth=0)
    with pytest.raises(LearndynValueError, match="a0"):
        mode_strength(1.0, 1.0, -0.1)
    with pytest.raises(LearndynValueError, match="t has an element"):
        mode_strength([-1.0], 1.0, 0.1)
    with pytest.raises(LearndynValueError, match="singular_values"):
        make_teacher([1.0, 2.0, 3.0], n_in=2, n_out=5)
    with pytest.raises(LearndynValueError, match="a lies outside"):
        time_to_strength(2.0, 1.0, 0.1)
