r"""Stepwise learning in a linear joint-embedding (Barlow Twins) model.

Simon, Knutins, Ziyin, Geisz, Fetterman & Albrecht (ICML 2023), "On the stepwise nature of
self-supervised learning". Derivation and normalisation below are ours; the paper's model is the same.

Model and conventions
---------------------
Positive pairs ``(x_i, x_i')``, ``i = 1 … n``, inputs in ``R^m``; linear embedding ``f(x) = W x`` with
``W ∈ R^{d×m}`` (``d <= m``). Symmetrised cross-view correlations

    Γ = 1/(2n) Σ_i (x_i x_i'ᵀ + x_i' x_iᵀ)         (:func:`view_correlation`),
    C = 1/(2n) Σ_i (f(x_i) f(x_i')ᵀ + f(x_i') f(x_i)ᵀ) = W Γ Wᵀ,

and the Barlow-Twins loss with off-diagonal weight 1 (which makes it rotation invariant),

    L(W) = ‖C − I_d‖_F²,      ∇_W L = 4 (C − I) W Γ,

trained by gradient descent; ``t = lr·step`` (:mod:`learndyn.theory.timescale`).

Exact solution from an aligned initialisation
---------------------------------------------
Let ``Γ = Σ_j γ_j v_j v_jᵀ`` with ``γ_1 >= γ_2 >= …``. If ``W(0) = U diag(s(0)) V_dᵀ`` (orthogonal ``U``,
``V_d = [v_1 … v_d]``) the form is preserved, ``ds_j/dt = 4γ_j s_j (1 − γ_j s_j²)``, and the eigenvalues of
``C``, ``c_j = γ_j s_j²``, follow decoupled logistic curves

    dc_j/dt = 8 γ_j c_j (1 − c_j),       c_j(t) = c_j(0) / (c_j(0) + (1 − c_j(0)) e^{−8γ_j t}).

Step times: ``c_j`` reaches ``fraction`` (default ½) at
``t_j = ln[(f/(1 − f)) (1 − c_j(0))/c_j(0)] / (8γ_j)`` (exact, :func:`ssl_step_times`). From small
``W(0) = α U V_dᵀ`` (``c_j(0) = γ_j α²``) this is ``t_j ≈ ln(1/(γ_j α²))/(8γ_j) ≈ ln(1/α)/(4γ_j)``: the
paper's ``t_j ∝ (1/γ_j) ln(1/α)``. Well-separated ``γ_j`` give well-separated steps: the loss
``L = Σ_j (1 − c_j)²`` (:func:`ssl_loss`) drops by one per learned dimension, and the number of learned
dimensions (:func:`learned_dimensions`; smooth version ``tr C = Σ_j c_j``) climbs a staircase.

Generic small initialisation (approximate)
------------------------------------------
``C = Σ_j γ_j a_j a_jᵀ`` with columns ``a_j = W v_j``, and ``da_j/dt = −4γ_j (C − I) a_j``. From a random
small ``W(0)`` the early dynamics is linear, ``a_j(t) = e^{4γ_j t} a_j(0)``. Once mode 1 saturates,
``C − I`` vanishes along ``a_1``, so only the part of ``a_2`` orthogonal to ``a_1`` keeps growing, and so on:
mode ``j`` follows the same sigmoid from ``c_j(0) ≈ γ_j ‖(I − P_{<j}) a_j(0)‖² = γ_j R_jj²`` where
``W(0)V_d = QR`` (Gram–Schmidt in order of decreasing ``γ``; :func:`projected_init`). Exact for an
aligned ``W(0)``; otherwise the neglected parts (components frozen along earlier modes, overlap while
modes grow together) vanish as ``α → 0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.theory._arrays import as_float_array, broadcast_pair, symmetric_eigh, time_grid
from learndyn.validation import LearndynValueError, check_int, check_real


def view_correlation(x1: Any, x2: Any) -> np.ndarray:
    """``Γ = 1/(2n) Σ_i (x_i x_i'ᵀ + x_i' x_iᵀ)`` from two ``(n, m)`` arrays of paired views."""
    x1 = as_float_array("x1", _numpy(x1), ndim=2)
    x2 = as_float_array("x2", _numpy(x2), ndim=2)
    if x1.shape != x2.shape:
        raise LearndynValueError(f"x2 has shape {x2.shape}; allowed: the shape of x1, {x1.shape}")
    cross = x1.T @ x2 / x1.shape[0]
    return 0.5 * (cross + cross.T)


def _numpy(x: Any) -> Any:
    detach = getattr(x, "detach", None)
    return detach().cpu().numpy() if callable(detach) else x


def _spectrum(gamma: Any) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the symmetric ``gamma``."""
    evals, evecs = symmetric_eigh("gamma", gamma, psd=False)
    order = np.argsort(evals)[::-1]
    return evals[order], evecs[:, order]


def aligned_init(
    gamma: Any, embed_dim: int, init_scale: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``W(0) = α U V_dᵀ`` (random orthogonal ``U``, top-``d`` eigenvectors ``V_d`` of ``Γ``) and its
    ``c(0) = γ_j α²`` for ``j = 1 … d`` (descending ``γ``). Returns ``(W0, c0)``."""
    gam, vecs = _spectrum(gamma)
    d = check_int("embed_dim", embed_dim, low=1, high=gam.size)
    alpha = check_real("init_scale", init_scale, low=0.0, low_open=True)
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    u = q * np.sign(np.diag(r))
    return alpha * u @ vecs[:, :d].T, gam[:d] * alpha**2


def projected_init(W0: Any, gamma: Any) -> np.ndarray:
    """Effective ``c_j(0) = γ_j R_jj²`` with ``W(0) V_d = QR`` for the top ``d`` modes of ``Γ``.

    ``R_jj`` is the part of ``W(0) v_j`` orthogonal to ``W(0) v_1 … W(0) v_{j−1}`` (module docstring); exact
    for an aligned ``W(0)``, the small-init approximation otherwise.
    """
    W0 = as_float_array("W0", _numpy(W0), ndim=2)
    gam, vecs = _spectrum(gamma)
    if W0.shape[1] != gam.size or W0.shape[0] > gam.size:
        raise LearndynValueError(f"W0 has shape {W0.shape}; allowed: (d, {gam.size}) with d <= {gam.size}")
    d = W0.shape[0]
    r = np.linalg.qr(W0 @ vecs[:, :d], mode="r")
    return gam[:d] * np.diag(r) ** 2


def _modes(gamma_eigs: Any, c0: Any) -> tuple[np.ndarray, np.ndarray]:
    gam, c0 = broadcast_pair("gamma_eigs", gamma_eigs, "c0", c0)
    if np.any(gam * c0 < 0):
        raise LearndynValueError(
            "c0 has the opposite sign to gamma_eigs somewhere; allowed: c0 = γ s² (same sign)"
        )
    return gam, c0


def embedding_eigenvalues(t: Any, gamma_eigs: Any, c0: Any) -> np.ndarray:
    """Eigenvalues ``c_j(t)`` of ``C`` for an aligned init; shape ``t.shape + gamma_eigs.shape``."""
    gam, c0 = _modes(gamma_eigs, c0)
    t = time_grid("t", t)
    tt = t.reshape(t.shape + (1,) * gam.ndim)
    with np.errstate(over="ignore"):
        decay = np.exp(-8.0 * gam * tt)
        out = c0 / (c0 + (1.0 - c0) * decay)
    return np.where(c0 == 0, 0.0, out)


def ssl_step_times(gamma_eigs: Any, c0: Any, fraction: float = 0.5) -> np.ndarray:
    """Exact time at which each ``c_j`` reaches ``fraction``: ``ln[(f/(1 − f))(1 − c0)/c0] / (8γ)``.

    ``inf`` for modes that never get there (``γ <= 0`` or ``c0 = 0``); ``0`` if ``c0 >= fraction`` already.
    """
    f = check_real("fraction", fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    gam, c0 = _modes(gamma_eigs, c0)
    out = np.full(gam.shape, np.inf)
    grow = (gam > 0) & (c0 > 0) & (c0 < f)
    out[grow] = np.log(f / (1.0 - f) * (1.0 - c0[grow]) / c0[grow]) / (8.0 * gam[grow])
    out[(gam > 0) & (c0 >= f)] = 0.0
    return out


def ssl_loss(t: Any, gamma_eigs: Any, c0: Any) -> np.ndarray:
    """``L(t) = Σ_j (1 − c_j(t))²`` over the ``d`` embedding modes (aligned init: off-diagonals vanish)."""
    c = embedding_eigenvalues(t, gamma_eigs, c0)
    return np.sum(((1.0 - c) ** 2).reshape(np.shape(t) + (-1,)), axis=-1)


def learned_dimensions(t: Any, gamma_eigs: Any, c0: Any, threshold: float = 0.5) -> np.ndarray:
    """The staircase: number of embedding eigenvalues ``c_j(t) >= threshold`` at each time."""
    threshold = check_real("threshold", threshold, low=0.0, high=1.0, low_open=True, high_open=True)
    c = embedding_eigenvalues(t, gamma_eigs, c0)
    return np.sum((c >= threshold).reshape(np.shape(t) + (-1,)), axis=-1)
