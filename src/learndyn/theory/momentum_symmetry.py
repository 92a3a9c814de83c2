r"""Translation symmetry under heavy-ball momentum with weight decay: the conserved charge's decay law.

Setting
-------
A loss invariant under ``θ → θ + s·n`` for a fixed direction ``n`` (softmax logits: adding the same vector to
every class row of the last layer's ``[W b]``) has gradients orthogonal to ``n``, so the charge
``q = nᵀθ`` (for the logits, ``v = (1ᵀW, 1ᵀb)``: one charge per input feature and the bias) is conserved
exactly by gradient descent, even with finite steps and any batch. Weight decay breaks it; momentum changes
*how*. ``torch.optim.SGD(lr=η, momentum=μ, weight_decay=λ)`` (dampening 0) does

    d_k = g_k + λθ_k,     b_{k+1} = μ b_k + d_k  (b_1 = d_0),     θ_{k+1} = θ_k − η b_{k+1}
    (Nesterov: θ_{k+1} = θ_k − η (d_k + μ b_{k+1})).

Projected on ``n`` the gradient drops out (``nᵀg = 0``) and with ``u = nᵀb`` (``u_0 = 0`` reproduces
``b_1 = d_0``) the charge obeys an exact, gradient-free linear recursion ``z_{k+1} = A z_k`` for
``z = (q, u)``:

    heavy ball:  A = [[1 − ηλ, −ημ], [λ, μ]],          Nesterov:  A = [[1 − ηλ(1 + μ), −ημ²], [λ, μ]],

so ``q_k = [A^k]_{00} q_0`` with, by Sylvester's formula for the roots ``r_{1,2}`` of
``r² − tr(A) r + det(A) = 0`` (``det A = μ`` for heavy ball, ``μ(1 − ηλ)`` for Nesterov),

    q_k / q_0 = [(A₀₀ − r₂) r₁^k − (A₀₀ − r₁) r₂^k] / (r₁ − r₂)      (r₁ ≠ r₂),
    q_k / q_0 = r^{k−1} (k A₀₀ − (k − 1) r)                           (r₁ = r₂ = r),

real also when the roots are complex (the charge then oscillates while it decays). Exact for any ``η``,
``μ``, ``λ``: no small-step approximation. Without momentum it is ``(1 − ηλ)^k``; with momentum that law
(the one the symmetry probe used to document) is wrong: for small ``ηλ/(1 − μ)²`` the slow root is
``r₁ ≈ 1 − ηλ/(1 − μ)`` (heavy ball and Nesterov alike; relative corrections ``O(ηλ/(1 − μ)²)``), so
the charge decays ``1/(1 − μ)`` times faster (10× at ``μ = 0.9``), as ``e^{−λt/(1−μ)}`` in ``t = η·k``
(:func:`charge_decay_rate`), after a transient of ``~1/(1 − μ)`` steps while the momentum buffer builds
up. Decoupled weight decay ``θ ← (1 − ηλ)θ − η·b`` with a momentum buffer ``b`` built from gradients only
keeps ``(1 − ηλ)^k``; an adaptive step (Adam's ``m/√v``) is not orthogonal to ``n`` and moves the charge
even without weight decay.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.theory._arrays import as_float_array
from learndyn.validation import LearndynValueError, check_real


def charge_matrix(lr: float, weight_decay: float, momentum: float, nesterov: bool = False) -> np.ndarray:
    """The ``2 × 2`` map ``(q, u)_{k+1} = A (q, u)_k`` of the charge and its momentum (module docstring)."""
    lr = check_real("lr", lr, low=0.0, low_open=True)
    lam = check_real("weight_decay", weight_decay, low=0.0)
    mu = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
    if nesterov:
        return np.array([[1.0 - lr * lam * (1.0 + mu), -lr * mu * mu], [lam, mu]])
    return np.array([[1.0 - lr * lam, -lr * mu], [lam, mu]])


def charge_ratio(
    lr: float, steps: Any, weight_decay: float, momentum: float = 0.0, nesterov: bool = False
) -> np.ndarray:
    """``q_k / q_0`` after each of ``steps`` (non-negative integers) updates, exact (Sylvester's formula)."""
    A = charge_matrix(lr, weight_decay, momentum, nesterov)
    k = as_float_array("steps", steps, ndim=(0, 1), low=0.0)
    if np.any(k != np.round(k)):
        raise LearndynValueError("steps has a non-integer entry; allowed: non-negative integers")
    tr, det = A[0, 0] + A[1, 1], A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
    disc = complex(tr * tr - 4.0 * det)
    r1, r2 = (tr + np.sqrt(disc)) / 2.0, (tr - np.sqrt(disc)) / 2.0
    kc = k.astype(complex)
    if abs(r1 - r2) > 1e-9 * max(abs(r1), 1e-300):
        ratio = ((A[0, 0] - r2) * r1**kc - (A[0, 0] - r1) * r2**kc) / (r1 - r2)
    else:  # a double root: A^k = r^{k−1}(kA − (k−1)r I)
        r = (r1 + r2) / 2.0
        ratio = np.where(kc == 0, 1.0, r ** (kc - 1) * (kc * A[0, 0] - (kc - 1) * r))
    return np.real(ratio)


def translation_charge(
    q0: Any, lr: float, steps: Any, weight_decay: float, momentum: float = 0.0, nesterov: bool = False
) -> np.ndarray:
    """The conserved charge after each of ``steps`` updates of ``torch.optim.SGD(lr, momentum, weight_decay)``
    from ``q0`` (a fresh momentum buffer); shape ``steps.shape + q0.shape``. Exact; the gradient drops out."""
    q0 = as_float_array("q0", q0)
    ratio = charge_ratio(lr, steps, weight_decay, momentum, nesterov)
    return ratio.reshape(ratio.shape + (1,) * q0.ndim) * q0


def charge_decay_rate(weight_decay: float, momentum: float = 0.0) -> float:
    """``λ/(1 − μ)``: the charge's decay rate per unit ``t = η·step`` for small ``ηλ/(1 − μ)²`` (the slow root
    ``r₁ ≈ 1 − ηλ/(1 − μ)``), ``1/(1 − μ)`` times the momentum-free ``λ``."""
    lam = check_real("weight_decay", weight_decay, low=0.0)
    mu = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
    return lam / (1.0 - mu)
