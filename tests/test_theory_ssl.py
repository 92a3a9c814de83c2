"""Stepwise SSL: predicted eigenvalues of the embedding cross-correlation vs gradient descent (autograd)
on the linear Barlow-Twins model, trained on 512 noisy positive pairs in R^6 with a 3-dim embedding.

Measured (lr = 1e-3, init scale 1e-3): aligned init — max |c_sim − c_theory| = 0.0057 over the whole
trajectory (O(lr) discretisation), loss within 0.007, staircase identical at every snapshot; random small
init with the Gram–Schmidt effective initial values — 0.0062 and 0.0067 (two seeds), step times within
0.6% (the 0.01 snapshot spacing). Tolerances: 0.01 (aligned), 0.02 (random init, an approximation) and
2% on step times.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learndyn.theory import (
    aligned_init,
    embedding_eigenvalues,
    learned_dimensions,
    projected_init,
    ssl_loss,
    ssl_step_times,
    view_correlation,
)
from learndyn.validation import LearndynValueError

LR = 1e-3


def _pairs(n: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 6)) * np.sqrt([1.0, 0.6, 0.35, 0.2, 0.1, 0.05])
    return z + 0.1 * rng.standard_normal((n, 6)), z + 0.1 * rng.standard_normal((n, 6))


def _train(W0, x1, x2, t_end, every):
    """GD on L = ‖C − I‖²_F with C the symmetrised cross-view correlation of the embeddings."""
    X1, X2 = torch.tensor(x1), torch.tensor(x2)
    W = torch.tensor(W0, requires_grad=True)
    n, eye = X1.shape[0], torch.eye(W0.shape[0], dtype=torch.float64)

    def corr():
        Z1, Z2 = X1 @ W.T, X2 @ W.T
        return (Z1.T @ Z2 + Z2.T @ Z1) / (2 * n)

    steps = int(round(t_end / LR))
    ts, eigs, losses = [], [], []
    for k in range(steps + 1):
        if k % every == 0:
            with torch.no_grad():
                C = corr().numpy()
            ts.append(k * LR)
            eigs.append(np.sort(np.linalg.eigvalsh(C))[::-1])
            losses.append(np.sum((C - np.eye(C.shape[0])) ** 2))
        if k == steps:
            break
        loss = ((corr() - eye) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, W)
        with torch.no_grad():
            W -= LR * grad
    return np.array(ts), np.array(eigs), np.array(losses)


def _gamma_top(gamma: np.ndarray, d: int) -> np.ndarray:
    return np.sort(np.linalg.eigvalsh(gamma))[::-1][:d]


def test_aligned_init_follows_exact_sigmoids():
    x1, x2 = _pairs()
    gamma = view_correlation(x1, x2)
    W0, c0 = aligned_init(gamma, embed_dim=3, init_scale=1e-3)
    np.testing.assert_allclose(projected_init(W0, gamma), c0, rtol=1e-10)
    t, sim, sim_loss = _train(W0, x1, x2, t_end=8.0, every=50)
    gam = _gamma_top(gamma, 3)
    theory = embedding_eigenvalues(t, gam, c0)
    assert np.max(np.abs(sim - theory)) <= 0.01
    assert np.max(np.abs(sim_loss - ssl_loss(t, gam, c0))) <= 0.02
    # stepwise: three well-separated steps, learned in order of γ
    steps = ssl_step_times(gam, c0)
    assert np.all(np.diff(steps) > 1.0)
    staircase = learned_dimensions(t, gam, c0)
    assert list(np.unique(staircase)) == [0, 1, 2, 3]
    mism = np.sum(np.sum(sim >= 0.5, axis=1) != staircase)
    assert mism <= 3  # only snapshots within one discretisation error of a step time may differ


@pytest.mark.parametrize("seed", [0, 1])
def test_random_small_init_with_effective_initial_values(seed):
    x1, x2 = _pairs()
    gamma = view_correlation(x1, x2)
    W0 = 1e-3 * np.random.default_rng(10 + seed).standard_normal((3, 6)) / np.sqrt(6)
    t, sim, _ = _train(W0, x1, x2, t_end=10.0, every=10)
    gam, c0 = _gamma_top(gamma, 3), projected_init(W0, gamma)
    assert np.max(np.abs(sim - embedding_eigenvalues(t, gam, c0))) <= 0.02
    crossed = np.array([t[np.argmax(sim[:, j] >= 0.5)] for j in range(3)])
    np.testing.assert_allclose(crossed, ssl_step_times(gam, c0), rtol=0.02)


def test_closed_form_properties():
    gam, c0 = np.array([1.0, 0.5, -0.2]), np.array([1e-6, 5e-7, -2e-7])
    t = np.linspace(0.0, 10.0, 10001)
    c = embedding_eigenvalues(t, gam, c0)
    # logistic ODE dc/dt = 8γc(1 − c), checked by central differences
    dc = (c[2:] - c[:-2]) / (t[2] - t[0])
    np.testing.assert_allclose(dc, 8 * gam * c[1:-1] * (1 - c[1:-1]), rtol=1e-4, atol=1e-12)
    steps = ssl_step_times(gam, c0, fraction=0.5)
    assert steps[2] == np.inf
    np.testing.assert_allclose(np.log(1 / c0[:2] - 1) / (8 * gam[:2]), steps[:2])
    for j in range(2):
        assert embedding_eigenvalues(steps[j], gam[j], c0[j]) == pytest.approx(0.5, rel=1e-12)
    assert c[-1, 2] < 0 and abs(c[-1, 2]) < abs(c0[2])  # negative γ: the mode shrinks to 0


def test_validation_messages():
    with pytest.raises(LearndynValueError, match="opposite sign"):
        embedding_eigenvalues([0.0], [1.0], [-1e-3])
    with pytest.raises(LearndynValueError, match="x2 has shape"):
        view_correlation(np.ones((4, 3)), np.ones((5, 3)))
    with pytest.raises(LearndynValueError, match="embed_dim"):
        aligned_init(np.eye(3), embed_dim=4, init_scale=0.1)
