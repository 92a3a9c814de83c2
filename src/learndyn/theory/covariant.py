r"""The update covariance of covariant gradient descent, and its effective dimension.

:class:`~learndyn.optim.CovariantGD` steps ``θ ← θ − lr·u`` with ``u = g⁻¹∇̂`` and the metric
``g = (Ŝ + εI)^α`` built from the gradient statistic ``Ŝ``. When ``Ŝ`` equals the covariance ``C`` of the
minibatch gradient (``moment='covariance'``, after its EMA has settled, ``ε → 0``), the update's covariance
is a function of ``C`` alone (exact given ``Ŝ = C``):

* ``full`` (and ``block`` for a one-tensor model): ``Cov(u) = C^{−α} C C^{−α} = C^{1−2α}`` on the support of
  ``C`` and 0 off it (the pseudo-inverse power: directions without noise get no update noise). α = 0 keeps
  the noise's anisotropy, α = ½ *whitens* it (``Π``, the projector on the support), α = 1 inverts it.
* ``diag``: ``g = D^α`` with ``D = diag C``, so ``Cov(u) = D^{−α} C D^{−α}``; at α = ½ the correlation
  matrix of the gradient (only the variances are whitened).

The effective dimension of the update subspace is the participation ratio of its covariance's eigenvalues,
``PR = (Σλ)² / Σλ²`` (:func:`participation_ratio`): ``r`` for ``r`` equal eigenvalues (a whitened update on a
rank-``r`` support), 1 when one direction dominates.

The α-stationary law (near a minimum)
-------------------------------------
Near a minimum of a quadratic loss with Hessian ``H`` the update with a *fixed* inverse metric ``P = g⁻¹``
(symmetric positive definite) and additive gradient noise of covariance ``C`` is
``e ← (I − ηPH)e − ηPξ``, whose stationary covariance solves the discrete Lyapunov equation

    Σ = (I − ηPH) Σ (I − ηPH)ᵀ + η² P C P                                                       (L)

(:func:`metric_lyapunov_covariance`, exact, any ``P``: with ``K = P^{½}HP^{½} = U diag(k) Uᵀ`` and
``W = P^{½}U`` the map is diagonal: ``Σ = W Σ̃ Wᵀ``,
``Σ̃_ij = η² (UᵀP^{½}CP^{½}U)_ij / (1 − (1 − ηk_i)(1 − ηk_j))``).
For SGD-shaped noise ``C = sH``, ``s = σ²/B``, and the covariance metric ``g = (γ s H)^α`` (``γ = 1`` when the
statistic equals ``C``) everything commutes with ``H`` and to leading order in ``η``

    Σ_α = (η/2) s (γ s H)^{−α} = (η/2) γ^{−α} s^{1−α} H^{−α}              (:func:`alpha_law_covariance`)

isotropic at α = 0 (SGD's ``T·I``), ``∝ H^{−½}`` at α = ½ and the Gibbs-like ``(η/2γ) H⁻¹`` at α = 1,
independent of the noise level.

Finite ``η`` (:func:`alpha_stationary`, exact for Gaussian linear regression given the metric's mean). The
minibatch noise is multiplicative, ``Cov[ξ | e] = N(eeᵀ) = (1/B)[HeeᵀH + (eᵀHe)H + σ²H]``, and (L) with
``C = N(Σ)`` is closed in ``H``'s eigenbasis (``λ_i``; ``P = diag(p_i)`` there, ``q_i = ηp_iλ_i``):

    Σ_i = (η p_i σ²/B) / ((1 − κ)(2 − q_i(1 + 1/B))),      κ = (1/B) Σ_j q_j / (2 − q_j(1 + 1/B)),

stable iff every ``q_i(1 + 1/B) < 2`` and ``κ < 1`` (``p = 1`` is SGD,
:func:`~learndyn.theory.sgd_stationary.sgd_stationary_covariance`). The metric is the EMA statistic's
stationary mean ``ŝ_i`` raised to ``−α``: ``p_i = (ŝ_i + ε)^{−α}``. With ``moment='second'``
``ŝ = E[∇∇ᵀ] = λ²Σ + n`` (``n_i = (λ_i²Σ_i + λ_i Σ_j λ_jΣ_j + σ²λ_i)/B``); with ``moment='covariance'``
``v = ∇ − m`` with the first moment ``m ← β₁m + (1 − β₁)∇`` taken *after* this step's update, a linear filter
of the gradient (``v_t = Σ_k a_k ∇_{t−k}``, ``a_0 = β₁``, ``a_k = −(1 − β₁)β₁ᵏ``). The gradient's
autocovariance in mode ``i`` is ``Γ(0) = λ²Σ + n`` and ``Γ(τ) = ρ^{τ−1}(ρλ²Σ − ηλpn)`` for ``τ ≥ 1``
(``ρ = 1 − q``), and the filter's autocorrelation ``R(0) = 2β₁²/(1 + β₁)``,
``R(τ) = −(1 − β₁)β₁^{τ+1}/(1 + β₁)``, so

    ŝ = R(0) Γ(0) − [2(1 − β₁)β₁² / ((1 + β₁)(1 − ρβ₁))] (ρλ²Σ − ηλpn).

For white gradients ``ŝ = γC`` with ``γ = 2β₁²/(1 + β₁)`` (0.853 at β₁ = 0.9): the AdaBelief-style
covariance statistic underestimates the covariance it names, so the small-``η`` law carries ``γ^{−α}``.
``p`` and ``Σ`` are solved together by fixed-point iteration. Not modelled: the EMA statistic's own
fluctuations (a Wishart-like noise of relative size ``~√((1 − β₂)/2)`` that is correlated with the state);
:mod:`~learndyn.phenomena.regimes` measures their effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from learndyn.theory._arrays import as_square, symmetric_eigh
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

STRUCTURES = ("diag", "block", "full")
"""Metric structures with a closed-form update covariance (``block`` is ``full`` for one tensor)."""


def update_covariance(C: Any, alpha: float, structure: str) -> np.ndarray:
    """Covariance of ``u = g⁻¹∇̂`` when the metric statistic equals the gradient covariance ``C``.

    ``full``/``block``: ``C^{1−2α}`` on the support of ``C`` (eigenvalues above ``n·1e-12·λ_max``; 0 off
    it); ``diag``: ``D^{−α} C D^{−α}`` with ``D = diag C`` (every variance must be positive). α = 0 returns
    ``C`` itself. ``C``: ``(n, n)`` symmetric positive semi-definite.
    """
    C = as_square("C", C)
    alpha = check_real("alpha", alpha, low=0.0, high=1.0)
    structure = check_choice("structure", structure, STRUCTURES)
    if alpha == 0.0:
        return C
    if structure == "diag":
        d = np.diag(C) ** (-alpha)
        return d[:, None] * C * d[None, :]
    lam, U = np.linalg.eigh(C)
    keep = lam > lam.max() * C.shape[0] * 1e-12
    power = np.zeros_like(lam)
    power[keep] = lam[keep] ** (1.0 - 2.0 * alpha)
    return (U * power) @ U.T


def participation_ratio(eigenvalues: Any) -> float:
    """``(Σλ)² / Σλ²`` of eigenvalues, negative ones (rounding) clipped to 0; 0 when all are 0.

    Not validated (a measured spectrum of a diverging run gives ``nan``, not an error).
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=float), 0.0, None)
    den = float(np.sum(lam**2))
    return float(np.sum(lam) ** 2 / den) if den > 0 else 0.0


# ------------------------------------------------------------------------------------ the α-stationary law


def metric_lyapunov_covariance(H: Any, noise_cov: Any, inv_metric: Any, lr: float) -> np.ndarray:
    """Exact solution of ``Σ = (I − ηPH)Σ(I − ηPH)ᵀ + η²PCPᵀ`` (eq. L) for any symmetric positive definite
    ``P`` (``inv_metric``), symmetric PSD ``H`` and ``C`` (``noise_cov``), by the eigenbasis of
    ``P^{½}HP^{½}`` (no Kronecker system). Raise if the map is not a contraction (``|1 − ηk| ≥ 1``)."""
    H = as_square("H", H)
    C = as_square("noise_cov", noise_cov)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    p_evals, p_vecs = symmetric_eigh("inv_metric", inv_metric, psd=True)
    if not (H.shape == C.shape == p_vecs.shape):
        raise LearndynValueError(
            f"H, noise_cov and inv_metric have shapes {H.shape}, {C.shape}, {p_vecs.shape}; "
            "allowed: one shape"
        )
    if p_evals.min() <= 0:
        raise LearndynValueError("inv_metric is singular; allowed: a positive definite matrix")
    root = (p_vecs * np.sqrt(p_evals)) @ p_vecs.T
    k, U = symmetric_eigh("P^½HP^½", root @ H @ root, psd=True)
    d = 1.0 - lr * k
    if np.max(np.abs(d)) >= 1.0:
        raise LearndynValueError(
            f"lr={lr!r} is out of range (eq. L has no stationary solution: "
            f"|1 − ηk| = {np.max(np.abs(d)):.4g}); "
            f"allowed: 0 < lr·k < 2 for every eigenvalue k of P^½HP^½"
        )
    W = root @ U
    Qt = lr**2 * (W.T @ C @ W)
    St = Qt / (1.0 - np.outer(d, d))
    out = W @ St @ W.T
    return 0.5 * (out + out.T)


def alpha_law_covariance(
    H: Any, noise_scale: float, alpha: float, lr: float, gain: float = 1.0
) -> np.ndarray:
    """The small-``η`` α-law ``Σ_α = (η/2) s (γ s H)^{−α}`` for noise ``C = sH`` and metric ``g = (γC)^α``
    (``noise_scale`` ``s = σ²/B``, ``gain`` ``γ``; :func:`covariance_gain` for the covariance moment), on the
    support of ``H`` (0 off it). Leading order in ``η``; :func:`alpha_stationary` is exact."""
    evals, evecs = symmetric_eigh("H", H, psd=True)
    s = check_real("noise_scale", noise_scale, low=0.0, low_open=True)
    alpha = check_real("alpha", alpha, low=0.0, high=1.0)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    gain = check_real("gain", gain, low=0.0, low_open=True)
    keep = evals > (evals.max() if evals.size else 0.0) * evals.size * 1e-12
    diag = np.zeros_like(evals)
    diag[keep] = 0.5 * lr * s * (gain * s * evals[keep]) ** (-alpha)
    return (evecs * diag) @ evecs.T


def covariance_gain(beta1: float) -> float:
    """``γ = 2β₁²/(1 + β₁)``: the covariance statistic's mean over the covariance of white gradients."""
    b = check_real("beta1", beta1, low=0.0, high=1.0, high_open=True)
    return 2.0 * b * b / (1.0 + b)


MOMENTS = ("second", "covariance")
"""The statistics of :class:`~learndyn.optim.CovariantGD` the α-law models (``moment=``)."""


@dataclass(frozen=True)
class AlphaStationary:
    """:func:`alpha_stationary`'s answer in ``H``'s eigenbasis (``basis`` columns, ``eigenvalues`` ascending).

    ``variances``: ``Σ_i`` (the eigenvalues of the stationary covariance ``covariance``), ``inv_metric``:
    ``p_i``, ``statistic``: ``ŝ_i`` (the EMA statistic's mean), ``kappa``: ``κ``, ``iterations``: of the
    fixed point."""

    basis: np.ndarray
    eigenvalues: np.ndarray
    variances: np.ndarray
    inv_metric: np.ndarray
    statistic: np.ndarray
    kappa: float
    iterations: int

    @property
    def covariance(self) -> np.ndarray:
        return (self.basis * self.variances) @ self.basis.T


def metric_sgd_variances(
    eigenvalues: np.ndarray, inv_metric: np.ndarray, lr: float, noise_var: float, batch: int
) -> tuple[np.ndarray, float]:
    """``(Σ_i, κ)`` of the closed form in the module docstring (fixed ``p_i``, multiplicative noise); raise
    where there is no stationary covariance."""
    q = lr * inv_metric * eigenvalues
    margin = 2.0 - q * (1.0 + 1.0 / batch)
    if np.any(margin <= 0) or np.any(q <= 0):
        raise LearndynValueError(
            f"lr={lr!r} is out of range (a mode's variance diverges: η p λ (1 + 1/B) = "
            f"{np.max(q) * (1 + 1 / batch):.4g}); allowed: < 2"
        )
    kappa = float(np.sum(q / margin) / batch)
    if not kappa < 1.0:
        raise LearndynValueError(f"lr={lr!r} is out of range (κ = {kappa:.4g} ≥ 1: the variance diverges)")
    return lr * inv_metric * noise_var * kappa_factor(kappa) / (batch * margin), kappa


def metric_power(statistic: np.ndarray, eps: float, alpha: float) -> np.ndarray:
    """The inverse metric's eigenvalues ``(ŝ + ε)^{−α}``."""
    return (statistic + eps) ** (-alpha)


def kappa_factor(kappa: float) -> float:
    """``1/(1 − κ)``: how much the multiplicative noise ``(eᵀHe)H/B`` raises every variance."""
    return 1.0 / (1.0 - kappa)


def _statistic(
    lam: np.ndarray, var: np.ndarray, p: np.ndarray, lr: float, noise_var: float, batch: int,
    moment: str, beta1: float,
) -> np.ndarray:
    n = (lam**2 * var + lam * float(lam @ var) + noise_var * lam) / batch
    gamma0 = lam**2 * var + n
    if moment == "second":
        return gamma0
    rho = 1.0 - lr * p * lam
    b = beta1
    lagged = 2.0 * (1.0 - b) * b * b / ((1.0 + b) * (1.0 - rho * b)) * (rho * lam**2 * var - lr * lam * p * n)
    return covariance_gain(b) * gamma0 - lagged


def alpha_stationary(
    H: Any,
    lr: float,
    alpha: float,
    noise_var: float,
    batch: int,
    *,
    moment: str = "covariance",
    beta1: float = 0.9,
    eps: float = 0.0,
    tol: float = 1e-15,
    max_iter: int = 10_000,
) -> AlphaStationary:
    """Stationary covariance of covariant GD ``θ ← θ − η(Ŝ + εI)^{−α}∇̂`` near the minimum of Gaussian linear
    regression (input covariance ``H`` positive definite, label noise ``σ²`` = ``noise_var``, minibatch
    ``B``), with ``Ŝ`` replaced by its stationary mean (module docstring; ``moment`` ``'second'`` or
    ``'covariance'`` with first-moment decay ``beta1``). Exact at α = 0; at α > 0 exact up to the
    statistic's own fluctuations. Fixed-point iteration to relative change ``tol``."""
    lam, V = symmetric_eigh("H", H, psd=True)
    if lam.size == 0 or lam.min() <= 0:
        raise LearndynValueError("H is singular; allowed: a positive definite matrix")
    lr = check_real("lr", lr, low=0.0, low_open=True)
    alpha = check_real("alpha", alpha, low=0.0, high=1.0)
    noise_var = check_real("noise_var", noise_var, low=0.0, low_open=True)
    batch = check_int("batch", batch, low=1)
    moment = check_choice("moment", moment, MOMENTS)
    beta1 = check_real("beta1", beta1, low=0.0, high=1.0, high_open=True)
    eps = check_real("eps", eps, low=0.0)
    check_int("max_iter", max_iter, low=1)
    gain = covariance_gain(beta1) if moment == "covariance" else 1.0
    p = metric_power(gain * noise_var / batch * lam, eps, alpha)
    var, kappa = metric_sgd_variances(lam, p, lr, noise_var, batch)
    stat = _statistic(lam, var, p, lr, noise_var, batch, moment, beta1)
    it = 0
    while alpha > 0.0 and it < max_iter:
        it += 1
        if np.any(stat + eps <= 0):
            raise LearndynValueError(f"lr={lr!r} is out of range (the statistic's mean is not positive)")
        new = metric_power(stat, eps, alpha)
        var, kappa = metric_sgd_variances(lam, new, lr, noise_var, batch)
        stat = _statistic(lam, var, new, lr, noise_var, batch, moment, beta1)
        change = float(np.max(np.abs(new - p) / p))
        p = new
        if change <= tol:
            break
    else:
        if alpha > 0.0:
            raise LearndynValueError(
                f"lr={lr!r}: the metric's fixed point did not converge in {max_iter} steps"
            )
    return AlphaStationary(V, lam, var, p, stat, kappa, it)
