"""The second-order Noether identity against finite-difference Hessians (numpy, float64).

Brute force: the Hessian by central second differences of the loss itself (step 1e-4; measured error
~1e-8 relative), on a rotation-invariant loss in R³ and on a two-unit ReLU network with a rescaling symmetry.
Tolerance 1e-5 relative. The sign-flipped form (dᵀHd = +(A²θ)·∇L) misses by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest

from learndyn.theory.symmetry_hessian import (
    explained_zero_modes,
    noether_scalar_residual,
    noether_vector_residual,
)
from learndyn.validation import LearndynValueError


def _fd_grad(f, x, h=1e-6):
    e = np.eye(x.size)
    return np.array([(f(x + h * e[i]) - f(x - h * e[i])) / (2 * h) for i in range(x.size)])


def _fd_hessian(f, x, h=1e-4):
    n, e = x.size, np.eye(x.size)
    H = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            H[i, j] = (f(x + h * e[i] + h * e[j]) - f(x + h * e[i] - h * e[j])
                       - f(x - h * e[i] + h * e[j]) + f(x - h * e[i] - h * e[j])) / (4 * h * h)
    return 0.5 * (H + H.T)


def _check(f, theta, A, u=None):
    u = np.zeros_like(theta) if u is None else u
    g, H = _fd_grad(f, theta), _fd_hessian(f, theta)
    xi = A @ theta + u
    s = np.linalg.norm(H, 2)
    vec = noether_vector_residual(H @ xi, A.T @ g, s, np.linalg.norm(xi))
    scal = float(noether_scalar_residual(xi @ H @ xi, -(A @ xi) @ g, s * xi @ xi))
    flipped = float(noether_scalar_residual(xi @ H @ xi, (A @ xi) @ g, s * xi @ xi))
    return vec, scal, flipped, abs((A @ xi) @ g) / (s * xi @ xi)


def test_rotation_invariant_loss():
    def f(x):
        r2 = x @ x
        return np.log1p(r2) + 0.3 * r2**2 - 0.1 * np.sqrt(r2)

    A = np.array([[0.0, -1.0, 0.4], [1.0, 0.0, -0.7], [-0.4, 0.7, 0.0]])  # antisymmetric: rotations
    vec, scal, flipped, size = _check(f, np.array([0.7, -0.4, 1.1]), A)
    assert vec < 1e-5 and scal < 1e-5
    assert size > 0.1 and flipped > 0.1  # the identity is not trivial here, and its sign matters


def test_relu_rescaling_symmetry_of_a_two_unit_network():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 2)), rng.standard_normal(30)

    def f(theta):  # f(x) = Σ_j a_j relu(w_jᵀx + b_j); θ = (w₀, b₀, w₁, b₁, a₀, a₁)
        w = theta[:6].reshape(2, 3)
        pre = x @ w[:, :2].T + w[:, 2]
        return 0.5 * np.mean((np.maximum(pre, 0.0) @ theta[6:] - y) ** 2)

    theta = rng.standard_normal(8)
    for unit in (0, 1):
        A = np.zeros((8, 8))
        A[3 * unit: 3 * unit + 3, 3 * unit: 3 * unit + 3] = np.eye(3)  # incoming weights and bias: +1
        A[6 + unit, 6 + unit] = -1.0  # outgoing weight: −1
        vec, scal, flipped, size = _check(f, theta, A)
        assert vec < 1e-5 and scal < 1e-5 and size > 1e-3 and flipped > 1e-3


def test_translation_directions_are_null_everywhere():
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((20, 2)), rng.integers(0, 3, 20)

    def f(theta):  # softmax regression, W (3 × 2) and b (3)
        z = x @ theta[:6].reshape(3, 2).T + theta[6:]
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(20), labels]))

    theta = rng.standard_normal(9)
    u = np.zeros(9)
    u[[0, 2, 4]] = 1.0  # column 0 of W
    H = _fd_hessian(f, theta)
    assert np.linalg.norm(H @ u) < 1e-6 * np.linalg.norm(H, 2)
    vec, scal, _, _ = _check(f, theta, np.zeros((9, 9)), u)
    assert vec < 1e-5 and scal < 1e-5


def test_explained_zero_modes_counts_the_intersection():
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((5, 5)))
    H = (q * np.array([0.0, 0.0, 0.0, 1.0, 2.0])) @ q.T
    directions = np.stack([q[:, 0] + q[:, 1], 2 * q[:, 1], q[:, 3]])  # two inside the null space, one outside
    assert explained_zero_modes(H, directions) == {"zero_modes": 3, "symmetry_rank": 3, "explained": 2}
    assert explained_zero_modes(H, np.zeros((0, 5)))["explained"] == 0


def test_residuals_of_a_wrong_coefficient_and_errors():
    hx, atg = np.array([1.0, -2.0]), np.array([-1.0, 2.0])  # Hξ = −Aᵀg exactly
    assert noether_vector_residual(hx, atg, 1.0, 1.0) == 0.0
    wrong = noether_vector_residual(hx, atg, 1.0, 1.0, coefficient=1.02)
    assert wrong == pytest.approx(0.02 * 5**0.5 / (1 + 1.02 * 5**0.5))
    assert float(noether_scalar_residual(2.0, 2.0, 1.0, coefficient=1.02)) == pytest.approx(0.04 / 3.04)
    with pytest.raises(LearndynValueError, match="equal shapes"):
        noether_vector_residual(hx, atg[:1], 1.0, 1.0)
    with pytest.raises(LearndynValueError, match="directions"):
        explained_zero_modes(np.eye(3), np.ones((1, 4)))
