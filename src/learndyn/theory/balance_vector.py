r"""The noise-driven law of balance beyond one input: a unit ``f(x) = u·(wᵀx)`` with ``w ∈ R^d``.

Ziyin, Li & Ueda (2023) show that for ``f(x) = u w x`` (``d = 1``) SGD noise drives ``Q = u² − w²`` to the
balanced point ``Q = 0`` (:func:`learndyn.theory.symmetry.scalar_balance_sgd`). With ``d > 1`` inputs the
rescaling ``(u, w) → (cu, w/c)`` is still a symmetry and gradient descent still conserves
``Q = u² − ‖w‖²`` in the flow, but the noise drives it elsewhere.

Exact one-step identity. Online SGD on ``L = ½(u wᵀx − y)²`` with a batch of ``B`` has the gradients
``g_u = wᵀa``, ``g_w = u a`` with ``a = (1/B) Σ_b r_b x_b`` (``r_b`` the residuals), so
``u g_u − wᵀg_w = 0`` and

    Q_{k+1} = Q_k + η² [(wᵀa)² − u² ‖a‖²]          (:func:`balance_increment`; any data, any η)

(for ``d = 1`` this is ``Q(1 − η²a²)``: the scalar law).

Expected drift on the solution manifold. Data ``x ~ N(0, H)``, ``y = v*ᵀx + ε``, ``ε ~ N(0, σ²)``; at
``u w = v*`` the residuals are ``−ε_b`` and ``E[a aᵀ] = σ²H/B``, so with ``κ = η²σ²/B``

    E[ΔQ] = κ (wᵀHw − u² tr H)                       (:func:`balance_drift`),

which vanishes at the **balance law** ``u² tr H = wᵀHw``: on the manifold ``w = v*/u``,

    u*² = √(v*ᵀHv* / tr H),    ‖w*‖² = ‖v*‖²/u*²,    Q* = u*² − ‖v*‖²/u*²    (:func:`stationary_balance`).

For ``d = 1`` this is ``u² = w²`` (``Q* = 0``); for ``H = hI`` it is ``u² = ‖w‖²/d``: the output weight
carries ``1/d`` of the input weights' norm, ``Q* = ‖v*‖(1/√d − √d) < 0``. Along the manifold, with
``s = u²``, ``m = v*ᵀHv*``, ``T = tr H``, ``c = ‖v*‖²`` and ``Q = s − c/s``, the drift is
``dQ/dk = κ(m/s − T s)``, i.e. ``ds/dk = κ s (m − T s²)/(s² + c)``, which integrates (partial fractions in
``x = s² = u⁴``) to the implicit closed form

    (c/m) ln(x_k/x₀) − (1/T + c/m) ln[(m − T x_k)/(m − T x₀)] = 2κk      (:func:`balance_trajectory`),

whose left side grows monotonically from 0 as ``x_k`` moves from ``x₀`` towards ``x* = m/T`` (for ``d = 1``
it reduces to the scalar law's leading order ``Q_k = Q₀e^{−κhk}``).
Approximations: leading order in ``η`` (the fluctuations of ``uw`` around ``v*`` add ``O(η)`` relative
corrections, as in the scalar law) and the mean of ``Q`` is evolved by the drift at the mean.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import brentq

from learndyn.theory._arrays import as_float_array, as_square
from learndyn.validation import LearndynValueError, check_int, check_real


def balance_increment(u: Any, w: Any, a: Any, lr: float) -> np.ndarray:
    """``Q_{k+1} − Q_k = η²[(wᵀa)² − u²‖a‖²]`` (exact) for ``u`` of shape ``(...)`` and ``w``, ``a`` of
    shape ``(..., d)`` (``a`` the batch mean of residual × input)."""
    lr = check_real("lr", lr, low=0.0)
    u, w, a = (np.asarray(z, dtype=float) for z in (u, w, a))
    return lr**2 * ((w * a).sum(-1) ** 2 - u**2 * (a * a).sum(-1))


def _problem(v_star: Any, H: Any) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    v = as_float_array("v_star", v_star, ndim=1)
    H = as_square("H", H)
    if H.shape != (v.size, v.size):
        raise LearndynValueError(f"H has shape {H.shape}; allowed: ({v.size}, {v.size}), the size of v_star")
    m, T, c = float(v @ H @ v), float(np.trace(H)), float(v @ v)
    if m <= 0 or T <= 0:
        raise LearndynValueError("v*ᵀHv* or tr H is not > 0; allowed: H positive definite, v_star ≠ 0")
    return v, H, m, T, c


def balance_drift(u: float, v_star: Any, H: Any, lr: float, noise_var: float, batch: int = 1) -> float:
    """``E[ΔQ] = (η²σ²/B)(wᵀHw − u² tr H)`` at ``u`` on the manifold ``w = v*/u`` (leading order in η)."""
    v, H, m, T, _ = _problem(v_star, H)
    u = check_real("u", u)
    if u == 0:
        raise LearndynValueError("u=0 is not on the solution manifold u·w = v*; allowed: u ≠ 0")
    kappa = _kappa(lr, noise_var, batch)
    return kappa * (m / u**2 - u**2 * T)


def stationary_balance(v_star: Any, H: Any) -> dict[str, float]:
    """The fixed point of the noise-driven drift: ``u*²``, ``‖w*‖²`` and ``Q* = u*² − ‖w*‖²``."""
    _, _, m, T, c = _problem(v_star, H)
    x = math.sqrt(m / T)
    return {"u_sq": x, "w_sq": c / x, "balance": x - c / x}


def _kappa(lr: float, noise_var: float, batch: int) -> float:
    lr = check_real("lr", lr, low=0.0)
    noise_var = check_real("noise_var", noise_var, low=0.0)
    batch = check_int("batch", batch, low=1)
    return lr**2 * noise_var / batch


def balance_trajectory(
    u0: float, v_star: Any, H: Any, lr: float, noise_var: float, steps: Any, batch: int = 1
) -> np.ndarray:
    """``E[Q_k]`` for SGD started on the manifold at ``(u0, v*/u0)`` (implicit closed form, module docstring;
    solved for ``u_k²`` by bracketing), for each ``k`` in ``steps``."""
    _, _, m, T, c = _problem(v_star, H)
    u0 = check_real("u0", u0)
    if u0 == 0:
        raise LearndynValueError("u0=0 is not on the solution manifold u·w = v*; allowed: u0 ≠ 0")
    kappa = _kappa(lr, noise_var, batch)
    k = as_float_array("steps", steps, ndim=(0, 1), low=0.0)
    x0, x_star = u0**4, m / T
    coef_x, coef_gap = c / m, 1.0 / T + c / m

    def phase(x: float) -> float:
        """The left side of the implicit law at ``x = u⁴`` (0 at ``x0``, growing towards ``x*``)."""
        return coef_x * math.log(x / x0) - coef_gap * math.log((m - T * x) / (m - T * x0))

    near = x_star + (x0 - x_star) * 1e-15  # just short of the fixed point, on x0's side
    out = np.empty(k.shape)
    for i, ki in np.ndenumerate(k):
        target = 2.0 * kappa * float(ki)
        if x0 == x_star or target == 0.0:
            x = x0
        elif phase(near) <= target:
            x = near
        else:
            lo, hi = min(x0, near), max(x0, near)
            x = brentq(lambda z, t=target: phase(z) - t, lo, hi, xtol=1e-300, rtol=1e-14)
        s = math.sqrt(x)
        out[i] = s - c / s
    return out
