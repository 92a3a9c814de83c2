r"""Continuous symmetries constrain the Hessian (a second-order Noether identity).

Derivation
----------
Let the loss be invariant under a one-parameter group of affine maps of the parameters,
``L(Φ_t θ) = L(θ)`` for all ``t`` and ``θ``, with generator (velocity field) ``ξ(θ) = Aθ + u``
(``A`` linear: rescaling, ``GL(n)`` of a linear pair, scale before a normalisation; ``u`` constant:
translation of softmax logits). Differentiating at ``t = 0`` gives Noether's first-order identity, for every
``θ``,

    ∇L(θ)ᵀ ξ(θ) = 0.                                                                  (1)

Differentiating (1) with respect to ``θ`` (it holds identically) gives the vector identity

    H(θ) ξ(θ) = −Aᵀ ∇L(θ),                                                            (2)

and contracting with ``ξ`` (or differentiating ``L(Φ_t θ)`` twice in ``t``) the scalar one

    ξᵀ H ξ = −(Aξ)ᵀ ∇L = −(A²θ + Au)·∇L.                                              (3)

For a linear generator (``u = 0``) and ``d = Aθ`` this is ``dᵀHd = −(A²θ)·∇L``, the form stated in issue 15
(correct as stated; (2) is the stronger, vector form). Consequences:

* at a critical point (``∇L = 0``) every symmetry direction ``ξ`` is an exact zero mode, ``Hξ = 0``;
* for translations (``A = 0``) ``Hu = 0`` at *every* ``θ``, not only at minima;
* for a scale symmetry (``A`` a projection ``P``, ``A² = A``): ``H(Pθ) = −P∇L`` (the Euler identity of a
  degree-0 homogeneous loss) and ``ξᵀHξ = −θᵀP∇L = 0`` by (1);
* for rescaling of unit ``j`` (``A = diag(+1 on its incoming, −1 on its outgoing weights)``, ``A²`` the
  projection on both): ``dᵀHd = −(w_in·g_in + w_out·g_out) = −2 w_in·g_in``.

Away from a critical point ``ξ`` need not be a small-curvature direction: (3) says exactly how curved it is.
At a minimum the symmetry directions span a subspace of the Hessian's null space; the remaining null
directions (if any) come from elsewhere (dead units, over-parametrisation):
:func:`explained_zero_modes` counts both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.theory._arrays import as_float_array, symmetric_eigh
from learndyn.validation import LearndynValueError, check_real


def noether_vector_residual(hessian_xi: Any, a_transpose_grad: Any, hessian_scale: float, xi_norm: float,
                            coefficient: float = 1.0) -> float:
    """``‖Hξ + c·Aᵀ∇L‖ / (s‖ξ‖ + c‖Aᵀ∇L‖)`` for identity (2) (``c = coefficient``, 1 for the true identity;
    ``s = hessian_scale``, a norm of ``H``). 0 when both sides vanish."""
    hx = as_float_array("hessian_xi", hessian_xi, ndim=1)
    atg = as_float_array("a_transpose_grad", a_transpose_grad, ndim=1)
    if hx.shape != atg.shape:
        raise LearndynValueError(f"hessian_xi has shape {hx.shape} and a_transpose_grad {atg.shape}; "
                                 "allowed: equal shapes")
    c = check_real("coefficient", coefficient)
    denom = check_real("hessian_scale", hessian_scale, low=0.0) * check_real("xi_norm", xi_norm, low=0.0)
    denom += abs(c) * float(np.linalg.norm(atg))
    num = float(np.linalg.norm(hx + c * atg))
    return num / denom if denom > 0 else (0.0 if num == 0 else float("inf"))


def noether_scalar_residual(
    curvature: Any, predicted: Any, scale: Any, coefficient: float = 1.0
) -> np.ndarray:
    """``|ξᵀHξ − c·pred| / (scale + c·|pred|)`` elementwise for identity (3), with ``pred = −(Aξ)·∇L`` and
    ``scale = s‖ξ‖²`` (``c = coefficient``)."""
    xhx = as_float_array("curvature", curvature, ndim=(0, 1))
    pred = as_float_array("predicted", predicted, ndim=(0, 1))
    sc = as_float_array("scale", scale, ndim=(0, 1), low=0.0)
    c = check_real("coefficient", coefficient)
    denom = sc + abs(c) * np.abs(pred)
    num = np.abs(xhx - c * pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), np.where(num == 0, 0.0, np.inf))


def explained_zero_modes(hessian: Any, directions: Any, rtol: float = 1e-6, cos_tol: float = 1e-3
                         ) -> dict[str, int]:
    """How many near-zero Hessian directions the symmetry directions explain.

    ``hessian``: ``(P, P)`` symmetric; ``directions``: ``(k, P)`` symmetry directions ``ξ`` (rows).
    ``zero_modes``: eigenvalues with ``|λ| ≤ rtol·max|λ|``; ``symmetry_rank``: the rank of the directions
    (singular values above ``1e-8`` of the largest); ``explained``: the dimension of the intersection of their
    span with the near-null eigenspace (principal angles with ``cos ≥ 1 − cos_tol``).
    """
    evals, evecs = symmetric_eigh("hessian", hessian, psd=False)
    xi = as_float_array("directions", directions, ndim=2)
    if xi.shape[1] != evals.size:
        raise LearndynValueError(f"directions has shape {xi.shape}; allowed: (k, {evals.size})")
    rtol = check_real("rtol", rtol, low=0.0)
    top = float(np.max(np.abs(evals))) if evals.size else 0.0
    null = evecs[:, np.abs(evals) <= rtol * top]
    if xi.shape[0] == 0:
        return {"zero_modes": int(null.shape[1]), "symmetry_rank": 0, "explained": 0}
    u, sv, _ = np.linalg.svd(xi.T, full_matrices=False)
    basis = u[:, sv > 1e-8 * sv.max()] if sv.max() > 0 else u[:, :0]
    cosines = np.linalg.svd(null.T @ basis, compute_uv=False) if null.size and basis.size else np.zeros(0)
    return {
        "zero_modes": int(null.shape[1]),
        "symmetry_rank": int(basis.shape[1]),
        "explained": int(np.sum(cosines >= 1.0 - cos_tol)),
    }
