"""The update covariance of covariant GD (``C^{1−2α}``, whitening at α = ½) and its participation ratio.

References: the matrix power from ``scipy.linalg.fractional_matrix_power`` (an independent algorithm), and a
Monte Carlo of the update ``u = g⁻¹∇̂`` for Gaussian gradients ``∇̂ ~ N(0, C)`` (10⁵ draws; measured error
≤ 1% of ``max|Cov u|``, tolerance 3%).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import fractional_matrix_power

from learndyn.theory.covariant import participation_ratio, update_covariance
from learndyn.validation import LearndynValueError


def _spd(d: int, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, rank or d))
    return A @ A.T + (0.0 if rank else 0.1 * np.eye(d))


def test_update_covariance_on_diagonal_examples():
    C = np.diag([4.0, 1.0, 0.0])
    np.testing.assert_allclose(update_covariance(C, 0.5, "full"), np.diag([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(update_covariance(C, 1.0, "full"), np.diag([0.25, 1.0, 0.0]))
    A = np.array([[4.0, 2.0], [2.0, 9.0]])
    corr = update_covariance(A, 0.5, "diag")
    np.testing.assert_allclose(np.diag(corr), 1.0)
    assert participation_ratio([1.0, 1.0, 0.0]) == pytest.approx(2.0)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_full_structure_is_the_matrix_power_sandwich(alpha):
    C = _spd(5, seed=1)
    g_inv = np.real(fractional_matrix_power(C, -alpha))
    np.testing.assert_allclose(update_covariance(C, alpha, "full"), g_inv @ C @ g_inv, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(update_covariance(C, alpha, "block"), update_covariance(C, alpha, "full"))


def test_diag_structure_whitens_only_the_variances():
    C = _spd(4, seed=2)
    D = np.diag(np.diag(C) ** -0.75)
    np.testing.assert_allclose(update_covariance(C, 0.75, "diag"), D @ C @ D, rtol=1e-12)


def test_singular_noise_gives_no_update_off_its_support():
    C = _spd(5, seed=3, rank=2)
    for alpha in (0.5, 1.0):
        U = update_covariance(C, alpha, "full")
        lam, V = np.linalg.eigh(C)
        off = V[:, lam < 1e-9 * lam.max()]
        np.testing.assert_allclose(off.T @ U @ off, 0.0, atol=1e-10)
    # α = ½ whitens: the projector on the support, PR = rank
    assert participation_ratio(np.linalg.eigvalsh(update_covariance(C, 0.5, "full"))) == pytest.approx(2.0)


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_matches_a_monte_carlo_of_the_update(structure):
    rng = np.random.default_rng(4)
    C = _spd(3, seed=5)
    grads = rng.multivariate_normal(np.zeros(3), C, size=100_000)
    alpha = 0.5
    g_inv = (
        np.real(fractional_matrix_power(C, -alpha))
        if structure == "full"
        else np.diag(np.diag(C) ** -alpha)
    )
    u = grads @ g_inv.T
    measured = np.cov(u, rowvar=False)
    predicted = update_covariance(C, alpha, structure)
    assert np.max(np.abs(measured - predicted)) <= 0.03 * np.max(np.abs(predicted))


def test_participation_ratio_counts_directions():
    assert participation_ratio([3.0, 3.0, 3.0, 3.0]) == pytest.approx(4.0)
    assert participation_ratio([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert participation_ratio([0.0, 0.0]) == 0.0
    assert participation_ratio([2.0, -1e-18]) == pytest.approx(1.0)  # rounding below zero is clipped
    assert 1.0 < participation_ratio([1.0, 0.1, 0.01]) < 2.0


def test_bad_arguments_fail_with_one_line():
    with pytest.raises(LearndynValueError, match="structure='kron' is not allowed"):
        update_covariance(np.eye(2), 0.5, "kron")
    with pytest.raises(LearndynValueError, match="alpha=1.5 is out of range"):
        update_covariance(np.eye(2), 1.5, "full")
    with pytest.raises(LearndynValueError, match="square"):
        update_covariance(np.ones((2, 3)), 0.5, "full")
