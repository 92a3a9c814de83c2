r"""Stationary fluctuations of minibatch SGD on linear regression with Gaussian inputs.

Model and conventions
---------------------
Data ``y = xᵀw* + ε`` with ``x ~ N(0, H)`` (``H`` positive definite) and label noise ``ε ~ N(0, σ²)``;
per-sample loss ``ℓ = ½(xᵀw − y)²`` so the population loss is ``L(w) = ½ eᵀHe + ½σ²`` with ``e = w − w*``.
Online SGD: each step draws a fresh minibatch of ``B`` i.i.d. samples (equivalently, sampling with
replacement from a very large data set) and updates ``w ← w − η ĝ`` with ``ĝ = (1/B) Σ_b x_b(x_bᵀw − y_b)``.

Exact second-moment recursion
-----------------------------
Write ``ĝ = He + ξ`` with ``E[ξ | e] = 0``. Each sample's gradient is ``g = x xᵀ e − x ε``; by Isserlis'
theorem for Gaussian ``x``, ``E[x xᵀ A x xᵀ] = H(A + Aᵀ)H + tr(HA) H``, so with ``A = eeᵀ``

    Cov[g | e] = H e eᵀ H + (eᵀHe) H + σ² H,            Cov[ξ | e] = Cov[g | e] / B.

(The ``(eᵀHe)H`` term is the fourth-moment contribution that an "additive noise" model misses; the
``HeeᵀH`` term is what remains of ``E[xxᵀeeᵀxxᵀ] − HeeᵀH``.) Because ``ξ`` is conditionally centred,
``S_k = E[e_k e_kᵀ]`` obeys *exactly*

    S_{k+1} = (I − ηH) S_k (I − ηH) + (η²/B) [H S_k H + tr(H S_k) H + σ² H].                     (1)

Stationary covariance (closed form)
-----------------------------------
In the eigenbasis ``H = Q diag(λ) Qᵀ`` the off-diagonal entries of ``QᵀSQ`` decay and the diagonal
``Σ_i = (QᵀΣQ)_ii`` solves ``(2 − η(1 + 1/B)λ_i) Σ_i = (η/B)(σ² + Σ_j λ_j Σ_j)``, hence

    κ = (η/B) Σ_j λ_j / (2 − η(1 + 1/B)λ_j),
    Σ = Q diag[ (ησ²/B) / ((1 − κ)(2 − η(1 + 1/B)λ_i)) ] Qᵀ,
    E[L(w)] − L(w*) = ½ tr(HΣ) = ½ σ² κ / (1 − κ).

Stability (exact for the second moment): (1) converges iff ``η(1 + 1/B)λ_max < 2`` *and* ``κ < 1``. The
diagonal of ``QᵀSQ`` evolves by ``M = diag((1 − ηλ_i)² + η²λ_i²/B) + (η²/B)λλᵀ`` (non-negative, diagonal
plus rank one: spectral radius < 1 iff both conditions hold); off-diagonal entries contract whenever the
diagonal ones do. :func:`sgd_max_stable_lr` solves for the threshold. Beyond it the *variance* diverges even
where the mean still converges (``η < 2/λ_max``). Note: finite fourth moments need a stricter condition, so
near the threshold the sample covariance of a simulation converges slowly (heavy tails from the
multiplicative noise).

Small-learning-rate (Langevin / "Boltzmann") limit
--------------------------------------------------
To leading order in ``η`` the noise at the minimum is additive, ``C = σ²H/B``, and the SDE
``de = −He dt + √(ηC) dW`` (``t = η·step``) has the stationary covariance that solves the Lyapunov
equation ``HΣ + ΣH = ηC`` (:func:`langevin_stationary_covariance`, exact for the SDE). For SGD-shaped noise
this gives ``Σ = T·I`` with temperature ``T = ησ²/(2B)`` (:func:`sgd_temperature`). That is *not* the
Gibbs distribution ``∝ e^{−L/T}`` of the loss, whose covariance ``T H⁻¹`` arises only for isotropic noise
``C = cI`` (then ``T = ηc/2``); SGD's is the Gibbs covariance times the noise shape, ``Σ = T H⁻¹·H``, so
each eigendirection holds excess loss ``½λ_iΣ_ii = λ_i T/2`` instead of the equipartition value ``T/2``.
The exact result above is ``T·I`` times ``1/((1 − κ)(1 − η(1 + 1/B)λ_i/2)) = 1 + O(η)``.

Discrete time, general additive noise
-------------------------------------
For ``e ← (I − ηH)e − ηξ`` with any noise of covariance ``C`` (independent of ``e``) the stationary
covariance solves the discrete Lyapunov equation ``Σ = (I − ηH)Σ(I − ηH) + η²C``, i.e.

    HΣ + ΣH − ηHΣH = ηC,        Σ_ij = η C̃_ij / (λ_i + λ_j − ηλ_iλ_j)   (in H's eigenbasis, C̃ = QᵀCQ)

(:func:`sgd_discrete_stationary_covariance`, exact; finite iff ``0 < ηλ_i < 2``). It is the Langevin form
plus the ``−ηHΣH`` term of the discrete steps. Since (1) is linear in ``S``, it is also exact for SGD's
multiplicative noise *if* ``C`` is the noise covariance averaged over the stationary state,
``C = E[N(e)] = (1/B)[HΣH + tr(HΣ)H + σ²H]``; with the leading-order ``C = σ²H/B`` it gives
``Σ_i = ησ²/(B(2 − ηλ_i))``, which misses the factor ``(2 − ηλ_i)/((1 − κ)(2 − η(1 + 1/B)λ_i))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import brentq

from learndyn.theory._arrays import as_float_array, as_square, symmetric_eigh
from learndyn.validation import LearndynValueError, check_int, check_real


def _pd_eigh(H: Any) -> tuple[np.ndarray, np.ndarray]:
    evals, evecs = symmetric_eigh("H", H, psd=True)
    if evals.size == 0 or evals.min() <= 0:
        raise LearndynValueError("H is singular; allowed: a positive definite input covariance")
    return evals, evecs


def _check_common(lr: float, batch: int, noise_var: float) -> tuple[float, int, float]:
    return (
        check_real("lr", lr, low=0.0, low_open=True),
        check_int("batch", batch, low=1),
        check_real("noise_var", noise_var, low=0.0),
    )


def sgd_noise_covariance(H: Any, second_moment: Any, noise_var: float, batch: int) -> np.ndarray:
    """Minibatch gradient-noise covariance ``E[Cov(ĝ | e)] = (1/B)[H S H + tr(HS) H + σ² H]``.

    ``second_moment`` is ``S = E[(w − w*)(w − w*)ᵀ]`` (the raw second moment; it equals the covariance at
    stationarity, where the mean is zero).
    """
    H = as_square("H", H)
    S = as_square("second_moment", second_moment)
    if S.shape != H.shape:
        raise LearndynValueError(f"second_moment has shape {S.shape}; allowed: the shape of H, {H.shape}")
    noise_var = check_real("noise_var", noise_var, low=0.0)
    batch = check_int("batch", batch, low=1)
    return (H @ S @ H + np.trace(H @ S) * H + noise_var * H) / batch


def sgd_gradient_covariance(H: Any, weight_cov: Any, noise_var: float, batch: int) -> np.ndarray:
    """Covariance of the minibatch gradient ``ĝ`` over the weights' spread: ``HΣH + E[Cov(ĝ | e)]``.

    With the weight error ``e`` centred with covariance ``Σ = weight_cov`` (e.g. SGD's stationary
    distribution): ``HΣH + (1/B)[HΣH + tr(HΣ)H + σ²H]`` (exact for Gaussian inputs). ``weight_cov=None``
    gives the leading order in ``η`` at the minimum, ``σ²H/B`` (``Σ = 0``). ``H`` may be singular.
    """
    H = as_square("H", H)
    if weight_cov is None:
        return sgd_noise_covariance(H, np.zeros_like(H), noise_var, batch)
    S = as_square("weight_cov", weight_cov)
    return H @ S @ H + sgd_noise_covariance(H, S, noise_var, batch)


def sgd_stationary_forms(
    basis: Any, eigenvalues: Any, lr: float, batch: int, noise_var: float
) -> dict[str, np.ndarray]:
    """The stationary weight covariance of SGD for ``H = V diag(h) Vᵀ`` (``V``: ``d × r`` orthonormal columns,
    ``h > 0``; ``H`` may be singular, ``r < d``), three ways, each ``d × d`` and 0 off the support of ``H``:

    ``exact`` (:func:`sgd_stationary_covariance` on the support), ``langevin`` (the small-``η`` limit
    ``T·VVᵀ``, :func:`sgd_temperature`) and ``gibbs`` (``T·H⁺``, the Boltzmann form SGD does *not* reach).
    """
    V = as_float_array("basis", basis, ndim=2)
    h = as_float_array("eigenvalues", eigenvalues, ndim=1, low=0.0, low_open=True)
    if V.shape[1] != h.size:
        raise LearndynValueError(f"basis has shape {V.shape}; allowed: (d, {h.size})")
    exact = V @ sgd_stationary_covariance(np.diag(h), lr, batch, noise_var) @ V.T
    T = sgd_temperature(lr, batch, noise_var)
    return {"exact": exact, "langevin": T * V @ V.T, "gibbs": T * (V / h) @ V.T}


def sgd_excess_loss_trajectory(
    eigenvalues: Any, initial_error: Any, lr: float, batch: int, noise_var: float, steps: Any
) -> np.ndarray:
    """Exact expected excess loss ``E[L_k] − σ²/2 = ½ tr(H S_k)`` of SGD from a deterministic start.

    In the eigenbasis of ``H`` (``eigenvalues`` ``h``, ``initial_error`` ``e₀ = w₀ − w*`` in that basis):
    ``S_k`` from :func:`sgd_second_moment_trajectory` with ``S₀ = e₀e₀ᵀ``. Shape ``(T,)`` for ``steps``.
    """
    h = as_float_array("eigenvalues", eigenvalues, ndim=1)
    e0 = as_float_array("initial_error", initial_error, ndim=1)
    S = sgd_second_moment_trajectory(np.diag(h), lr, batch, noise_var, np.outer(e0, e0), steps)
    return 0.5 * np.einsum("i,tii->t", h, S)


def _kappa(evals: np.ndarray, lr: float, batch: int) -> tuple[float, np.ndarray]:
    margin = 2.0 - lr * (1.0 + 1.0 / batch) * evals
    if np.any(margin <= 0):
        return np.inf, margin
    return float(lr / batch * np.sum(evals / margin)), margin


def sgd_max_stable_lr(H: Any, batch: int) -> float:
    """Largest ``η`` for which the SGD second moment (eq. 1) converges.

    The root of ``κ(η) = 1`` on ``(0, 2/((1 + 1/B)λ_max))``, where ``κ`` increases from 0 to ∞.
    """
    evals, _ = _pd_eigh(H)
    batch = check_int("batch", batch, low=1)
    upper = 2.0 / ((1.0 + 1.0 / batch) * evals.max())
    # κ increases monotonically from 0 to ∞ on (0, upper)
    return float(
        brentq(lambda lr: _kappa(evals, lr, batch)[0] - 1.0, 0.0, upper * (1 - 1e-15), xtol=1e-15, rtol=1e-14)
    )


def _stationary(H: Any, lr: float, batch: int) -> tuple[np.ndarray, float, np.ndarray]:
    """``(eigenvectors of H, κ, margins 2 − η(1 + 1/B)λ_i)`` where SGD has a stationary second moment;
    raise naming the threshold where it has none (``lr`` and ``batch`` already checked)."""
    evals, evecs = _pd_eigh(H)
    kappa, margin = _kappa(evals, lr, batch)
    if not kappa < 1.0:
        raise LearndynValueError(
            f"lr={lr!r} is out of range (SGD variance diverges); "
            f"allowed: lr < {sgd_max_stable_lr(H, batch):.6g}"
        )
    return evecs, kappa, margin


def sgd_stationary_covariance(H: Any, lr: float, batch: int, noise_var: float) -> np.ndarray:
    """Exact stationary covariance ``Σ = E[(w − w*)(w − w*)ᵀ]`` of online minibatch SGD (closed form)."""
    lr, batch, noise_var = _check_common(lr, batch, noise_var)
    evecs, kappa, margin = _stationary(H, lr, batch)
    diag = (lr * noise_var / batch) / ((1.0 - kappa) * margin)
    return (evecs * diag) @ evecs.T


def sgd_stationary_excess_loss(H: Any, lr: float, batch: int, noise_var: float) -> float:
    """``E[L(w)] − L(w*) = ½ tr(HΣ) = ½ σ² κ/(1 − κ)`` at stationarity."""
    lr, batch, noise_var = _check_common(lr, batch, noise_var)
    _, kappa, _ = _stationary(H, lr, batch)
    return 0.5 * noise_var * kappa / (1.0 - kappa)


def sgd_second_moment_trajectory(
    H: Any, lr: float, batch: int, noise_var: float, initial: Any, steps: Any
) -> np.ndarray:
    """``S_k = E[e_k e_kᵀ]`` after ``k`` SGD steps (eq. 1, exact), for each ``k`` in ``steps``: ``(T, d, d)``.

    ``initial`` is ``S_0 = e_0 e_0ᵀ`` for a deterministic start (or any second moment). In the eigenbasis of
    ``H`` the off-diagonal entries evolve as ``[(1 − ηλ_i)(1 − ηλ_j) + η²λ_iλ_j/B]^k`` and the diagonal as
    ``M^k`` with the symmetric ``M = diag((1 − ηλ_i)² + η²λ_i²/B) + (η²/B) λλᵀ``. Valid at any ``lr``,
    including unstable ones (then it grows).
    """
    evals, evecs = _pd_eigh(H)
    lr, batch, noise_var = _check_common(lr, batch, noise_var)
    S0 = as_square("initial", initial)
    if S0.shape != (evals.size, evals.size):
        raise LearndynValueError(
            f"initial has shape {S0.shape}; allowed: the shape of H, {(evals.size,) * 2}"
        )
    k = np.atleast_1d(as_float_array("steps", steps, ndim=(0, 1), low=0.0))
    if np.any(k != np.round(k)):
        raise LearndynValueError("steps has a non-integer entry; allowed: non-negative integers")
    c = 1.0 - lr * evals
    off_rate = np.outer(c, c) + lr**2 / batch * np.outer(evals, evals)
    M = np.diag(c**2 + lr**2 / batch * evals**2) + lr**2 / batch * np.outer(evals, evals)
    source = lr**2 * noise_var / batch * evals
    mu, V = np.linalg.eigh(M)
    S0e = evecs.T @ S0 @ evecs
    # off-diagonal part: elementwise powers (diagonal handled below)
    out = np.power(off_rate[None], k[:, None, None]) * S0e[None]
    # diagonal: p_k = M^k p_0 + Σ_{j<k} M^j b = V[μ^k (V^T p_0) + (1 − μ^k)/(1 − μ) (V^T b)]
    p0 = V.T @ np.diag(S0e)
    b = V.T @ source
    mu_k = np.power(mu[None], k[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        geom = np.where(
            np.isclose(mu, 1.0, rtol=0, atol=1e-14)[None], k[:, None], (1.0 - mu_k) / (1.0 - mu[None])
        )
    p = (mu_k * p0[None] + geom * b[None]) @ V.T
    idx = np.arange(evals.size)
    out[:, idx, idx] = p
    return np.einsum("ia,tab,jb->tij", evecs, out, evecs)


def sgd_temperature(lr: float, batch: int, noise_var: float) -> float:
    """``T = ησ²/(2B)``: the small-``η`` SGD temperature, ``Σ → T·I`` as ``η → 0``."""
    lr, batch, noise_var = _check_common(lr, batch, noise_var)
    return lr * noise_var / (2.0 * batch)


def langevin_stationary_covariance(H: Any, lr: float, noise_cov: Any) -> np.ndarray:
    """Stationary covariance of ``de = −He dt + √(η C) dW``: the solution of ``HΣ + ΣH = η C`` (exact).

    ``C = σ²H/B`` (SGD noise at the minimum) gives ``Σ = ησ²/(2B) · I``; ``C = cI`` gives the Gibbs form
    ``Σ = (ηc/2) H⁻¹``. In the eigenbasis ``Σ_ij = η C_ij/(λ_i + λ_j)``.
    """
    evals, evecs = _pd_eigh(H)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    C = as_square("noise_cov", noise_cov)
    if C.shape != (evals.size, evals.size):
        raise LearndynValueError(
            f"noise_cov has shape {C.shape}; allowed: the shape of H, {(evals.size,) * 2}"
        )
    Ce = evecs.T @ C @ evecs
    return evecs @ (lr * Ce / (evals[:, None] + evals[None, :])) @ evecs.T


def sgd_discrete_stationary_covariance(H: Any, lr: float, noise_cov: Any) -> np.ndarray:
    """Stationary covariance of ``e ← (I − ηH)e − ηξ``, ``Cov ξ = C``: the solution of
    ``HΣ + ΣH − ηHΣH = ηC`` (exact; ``H`` positive definite, ``C`` any symmetric matrix).

    In the eigenbasis ``Σ_ij = η C_ij / (λ_i + λ_j − ηλ_iλ_j)``; raise unless ``ηλ_max < 2``.
    """
    evals, evecs = _pd_eigh(H)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    C = as_square("noise_cov", noise_cov)
    if C.shape != (evals.size, evals.size):
        raise LearndynValueError(
            f"noise_cov has shape {C.shape}; allowed: the shape of H, {(evals.size,) * 2}"
        )
    if lr * evals.max() >= 2.0:
        raise LearndynValueError(
            f"lr={lr!r} is out of range (the mean diverges); allowed: lr < 2/λ_max = {2.0 / evals.max():.6g}"
        )
    Ce = evecs.T @ (0.5 * (C + C.T)) @ evecs
    den = evals[:, None] + evals[None, :] - lr * np.outer(evals, evals)
    return evecs @ (lr * Ce / den) @ evecs.T
