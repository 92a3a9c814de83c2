r"""The lazy regime's parameter displacement: ``‖θ − θ₀‖ ∝ 1/α`` for a centred model ``f = α(h_θ − h_θ₀)``.

Chizat, Oyallon & Bach (2019), "On lazy training in differentiable programming". Scale any model ``h_θ`` by
``α`` and centre it at initialisation, ``f_θ(x) = α(h_θ(x) − h_θ₀(x))`` (so ``f₀ = 0``), and train it by
gradient descent on ``L = 1/(2n) Σ_i (f(x_i) − y_i)²`` with a learning rate ``η`` (``η ∝ 1/α²`` keeps the
function-space time scale fixed). With ``J = ∂h/∂θ(θ₀)`` (``n × P``) and the (unscaled) empirical kernel
``Θ = J Jᵀ``, the linearised model ``f = αJδ``, ``δ = θ − θ₀``, moves exactly as

    f_k = (I − (I − ηα²Θ/n)^k) y,

and since every update ``−(ηα/n) Jᵀ(f − y)`` lies in the row space of ``J``, ``δ_k = Jᵀβ_k`` with
``αΘβ_k = f_k``, so

    ‖θ_k − θ₀‖ = √(f_kᵀ Θ⁺ f_k) / α,        ‖θ_∞ − θ₀‖ = √(yᵀ Θ⁺ y) / α        (:func:`lazy_displacement`)

(``Θ⁺`` the pseudo-inverse; ``yᵀΘ⁺y`` is the squared RKHS norm of the interpolant). The parameters move
``O(1/α)`` to fit the same data, so the Jacobian changes by ``O(1/α)`` relative to itself and the
nonlinear model follows its linearisation with an ``O(1/α)`` relative error: the lazy regime as ``α → ∞``
(:func:`lazy_displacement` is exact for the linearised model and its ``α → ∞`` limit for the real one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.theory._arrays import as_float_array, symmetric_eigh
from learndyn.validation import LearndynValueError, check_real


def lazy_displacement(
    theta: Any, y: Any, alpha: float, lr: float | None = None, steps: Any = None, rcond: float = 1e-12
) -> np.ndarray:
    """``‖θ_k − θ₀‖`` of the linearised centred model after each of ``steps`` GD steps of size ``lr``
    (``(T,)``), or at convergence ``√(yᵀΘ⁺y)/α`` when ``steps`` is ``None`` (shape ``()``).

    ``theta``: the ``n × n`` kernel ``J Jᵀ`` of the *unscaled* model ``h`` at ``θ₀``; ``y``: ``(n,)`` targets.
    Eigenvalues below ``rcond · λ_max`` count as zero (their directions are never fitted).
    """
    evals, evecs = symmetric_eigh("theta", theta, psd=True)
    y = as_float_array("y", y, ndim=1)
    if y.shape[0] != evals.size:
        raise LearndynValueError(f"y has {y.shape[0]} entries but theta is {evals.size}x{evals.size}")
    alpha = check_real("alpha", alpha, low=0.0, low_open=True)
    top = float(evals.max()) if evals.size else 0.0
    alive = evals > rcond * top
    y_modes = (evecs.T @ y)[alive]
    lam = evals[alive]
    if steps is None:
        return np.asarray(np.sqrt(np.sum(y_modes**2 / lam)) / alpha)
    if lr is None:
        raise LearndynValueError("steps without lr; allowed: both, or neither (the converged displacement)")
    lr = check_real("lr", lr, low=0.0, low_open=True)
    k = np.atleast_1d(as_float_array("steps", steps, ndim=(0, 1), low=0.0))
    n = evals.size
    decay = (1.0 - lr * alpha**2 * lam / n)[None, :] ** k[:, None]  # (T, modes)
    fitted = (1.0 - decay) * y_modes[None, :]
    return np.sqrt(np.sum(fitted**2 / lam[None, :], axis=1)) / alpha
