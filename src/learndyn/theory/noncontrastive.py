r"""Non-contrastive self-supervised learning (BYOL/SimSiam) with linear networks and a linear predictor:
the conserved predictor balance, the eigen-mode fixed points, collapse, and DirectPred.

Tian, Chen & Ganguli, "Understanding self-supervised learning dynamics without contrastive pairs", ICML 2021.
The derivation of the balance law and of the fixed points below is ours, in the paper's model.

Model and conventions
---------------------
Two augmented views ``x₁ = x + e₁``, ``x₂ = x + e₂`` of an input with ``E[xxᵀ] = X`` and independent
augmentation noise ``E[eeᵀ] = X'``. Online network ``W`` (``d_out × d``), linear predictor ``W_p``
(``d_out × d_out``), target network ``W_a`` (an exponential moving average of ``W``; ``W_a = W`` is SimSiam),
stop-gradient on the target branch:

    J = ½ E‖W_p W x₁ − StopGrad(W_a x₂)‖²,      N := E[(W_a x₂ − W_p W x₁) x₁ᵀ] = W_a X − W_p W (X + X').

Gradient flow in ``t = lr·step`` with the predictor's learning rate ``α_p`` times the online one and weight
decay ``η`` on both (Tian et al.'s eqs. 4–5):

    dW_p/dt = α_p N Wᵀ − η W_p,        dW/dt = W_pᵀ N − η W.

Balance law (exact, any ``X``, ``X'`` and target). ``W_p W`` is a product of two linear layers, so as for any
two-layer linear network (:mod:`learndyn.theory.two_layer_linear`) the cross terms cancel in

    d/dt (W Wᵀ − W_pᵀ W_p / α_p) = −2η (W Wᵀ − W_pᵀ W_p / α_p),

i.e. ``W Wᵀ − W_pᵀW_p/α_p = e^{−2ηt} (W₀W₀ᵀ − W_{p,0}ᵀW_{p,0}/α_p)`` (:func:`predictor_balance`). With
weight decay the predictor therefore ends with ``W_pᵀW_p = α_p W Wᵀ``: for whitened inputs (``X = I``,
``F = E[W x xᵀ Wᵀ] = WWᵀ``) and a symmetric positive predictor ``W_p = (α_p F)^{1/2}`` -- the DirectPred
rule ``p_j ∝ √s_j`` (:func:`directpred_predictor`), and ``[W_p, F] = 0``: the eigenspaces align.

Eigen-mode fixed points (``X = I``, ``X' = Q diag(σ_j²) Qᵀ``, ``W_a = τW``). If ``W = R diag(w) Qᵀ`` and
``W_p = R diag(p) Rᵀ`` (orthogonal ``R``) the form is preserved and each mode obeys

    dp/dt = α_p w² (τ − (1 + σ²) p) − η p,      dw/dt = w [p (τ − (1 + σ²) p) − η],              (1)

(:func:`mode_flow`). Besides the collapsed ``w = 0``, the fixed points have ``(1 + σ²) p² − τ p + η = 0`` and
``w² = p²/α_p``:

    p± = [τ ± √(τ² − 4η(1 + σ²))] / (2(1 + σ²)),       s = w² = p²/α_p,                        (2)

``p₊`` attracts, ``p₋`` is the saddle between it and collapse. A direction survives only if
``τ² > 4η(1 + σ²)``: directions whose augmentation noise exceeds ``σ_c² = τ²/(4η) − 1``
(:func:`collapse_threshold`) collapse, ``s → 0`` (:func:`predictor_fixed_point`). At a fixed point of the
EMA ``W_a = W``, so ``τ = 1``.

Collapse without the asymmetry. Without the predictor (``W_p = I`` fixed) the online mode obeys
``dw/dt = −(σ² + (1 − τ) + η) w`` -- it decays for ``τ <= 1``; without the stop-gradient the loss
``½E‖W_p W(x₁ − x₂)‖²`` is minimised by ``W_p W = 0``. Both collapse; the phenomenon shows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from learndyn.theory._arrays import as_float_array, time_grid
from learndyn.validation import LearndynValueError, check_real


def predictor_balance(t: Any, D0: Any, eta: float) -> np.ndarray:
    """``D(t) = e^{−2ηt} D₀`` with ``D = W Wᵀ − W_pᵀW_p/α_p``; shape ``t.shape + D0.shape``."""
    t = time_grid("t", t)
    D0 = as_float_array("D0", D0, ndim=2)
    eta = check_real("eta", eta, low=0.0)
    return np.exp(-2.0 * eta * t)[..., None, None] * D0


def balance_matrix(W: Any, Wp: Any, alpha_p: float = 1.0) -> np.ndarray:
    """``D = W Wᵀ − W_pᵀ W_p / α_p`` of an online network ``W`` and predictor ``W_p``."""
    W = as_float_array("W", W, ndim=2)
    Wp = as_float_array("Wp", Wp, ndim=2)
    alpha_p = check_real("alpha_p", alpha_p, low=0.0, low_open=True)
    if Wp.shape != (W.shape[0], W.shape[0]):
        raise LearndynValueError(
            f"Wp has shape {Wp.shape} and W {W.shape}; allowed: Wp of shape (d_out, d_out)"
        )
    return W @ W.T - Wp.T @ Wp / alpha_p


def collapse_threshold(eta: float, tau: float = 1.0) -> float:
    """The augmentation variance ``σ_c² = τ²/(4η) − 1`` above which a direction collapses (``inf`` at
    ``η = 0``)."""
    eta = check_real("eta", eta, low=0.0)
    tau = check_real("tau", tau, low=0.0, low_open=True)
    return float("inf") if eta == 0 else tau**2 / (4.0 * eta) - 1.0


def predictor_fixed_point(
    aug_var: Any, eta: float, alpha_p: float = 1.0, tau: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. (2): the attracting predictor eigenvalues ``p₊`` and online eigenvalues ``s = p₊²/α_p`` per
    direction of augmentation variance ``aug_var`` (0 for directions that collapse); needs ``η > 0``."""
    s2 = as_float_array("aug_var", aug_var, ndim=(0, 1), low=0.0)
    eta = check_real("eta", eta, low=0.0, low_open=True)
    alpha_p = check_real("alpha_p", alpha_p, low=0.0, low_open=True)
    tau = check_real("tau", tau, low=0.0, low_open=True)
    disc = tau**2 - 4.0 * eta * (1.0 + s2)
    p = np.where(disc > 0, (tau + np.sqrt(np.maximum(disc, 0.0))) / (2.0 * (1.0 + s2)), 0.0)
    return p, p**2 / alpha_p


def predictor_saddle(aug_var: Any, eta: float, tau: float = 1.0) -> np.ndarray:
    """The smaller root ``p₋`` of eq. (2) (``nan`` where there is none): the saddle between survival and
    collapse."""
    s2 = as_float_array("aug_var", aug_var, ndim=(0, 1), low=0.0)
    eta = check_real("eta", eta, low=0.0, low_open=True)
    tau = check_real("tau", tau, low=0.0, low_open=True)
    disc = tau**2 - 4.0 * eta * (1.0 + s2)
    return np.where(disc > 0, (tau - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * (1.0 + s2)), np.nan)


def directpred_predictor(F: Any, alpha_p: float = 1.0) -> np.ndarray:
    """DirectPred with the fixed-point rule: ``W_p = (α_p F)^{1/2} = U diag(√(α_p s_j)) Uᵀ`` from the
    eigen-decomposition ``F = U diag(s) Uᵀ`` (negative rounding-level eigenvalues clipped to 0).

    (Tian et al.'s DirectPred uses ``p_j = √s_j / max_k √s_k + ε`` on a moving average of ``F``; the rule here
    is the one the balance law makes exact for the trained predictor.)
    """
    F = as_float_array("F", F, ndim=2)
    alpha_p = check_real("alpha_p", alpha_p, low=0.0, low_open=True)
    if F.shape[0] != F.shape[1]:
        raise LearndynValueError(f"F has shape {F.shape}; allowed: a square matrix")
    evals, evecs = np.linalg.eigh(0.5 * (F + F.T))
    return (evecs * np.sqrt(alpha_p * np.clip(evals, 0.0, None))) @ evecs.T


def commutator_norm(A: Any, B: Any) -> float:
    """``‖AB − BA‖_F / (‖A‖_F ‖B‖_F)`` (0 when either is 0): 0 iff ``A`` and ``B`` share eigenvectors
    (for symmetric matrices)."""
    A = as_float_array("A", A, ndim=2)
    B = as_float_array("B", B, ndim=2)
    scale = float(np.linalg.norm(A) * np.linalg.norm(B))
    return 0.0 if scale == 0 else float(np.linalg.norm(A @ B - B @ A) / scale)


def mode_flow(
    t: Any, p0: float, w0: float, aug_var: float, eta: float, alpha_p: float = 1.0, tau: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate eq. (1) for one mode from ``(p0, w0)`` to the times ``t`` (sorted); returns ``(p(t), w(t))``
    (DOP853 at rtol 1e-11)."""
    times = np.atleast_1d(time_grid("t", t))
    if np.any(np.diff(times) < 0):
        raise LearndynValueError("t is not non-decreasing; allowed: a sorted time grid")
    s2 = check_real("aug_var", aug_var, low=0.0)
    eta = check_real("eta", eta, low=0.0)
    alpha_p = check_real("alpha_p", alpha_p, low=0.0, low_open=True)
    tau = check_real("tau", tau, low=0.0, low_open=True)

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        p, w = y
        gap = tau - (1.0 + s2) * p
        return np.array([alpha_p * w * w * gap - eta * p, w * (p * gap - eta)])

    y0 = np.array([check_real("p0", p0), check_real("w0", w0)])
    if not times.size or times[-1] == 0:
        return np.full(times.size, y0[0]), np.full(times.size, y0[1])
    sol = solve_ivp(rhs, (0.0, float(times[-1])), y0, method="DOP853", t_eval=times, rtol=1e-11, atol=1e-13)
    return sol.y[0], sol.y[1]
