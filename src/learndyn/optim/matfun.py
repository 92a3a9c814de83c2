"""Matrix functions of symmetric positive semi-definite (PSD) matrices: powers, inverse roots, metrics.

Everything here is a pure function of tensors, batched over leading dimensions: an input of shape
``(..., n, n)`` is a stack of matrices and every matrix in the stack is treated independently.

The optimizer's metric is ``g = (S + εI)^α`` (``eps_mode='inside'``) or ``g = S^α + εI``
(``eps_mode='outside'``, Adam's placement), with ``S ⪰ 0`` and ``0 ≤ α ≤ 1``. What is needed is the
*inverse* metric ``g⁻¹ = V diag(h(λ)) Vᵀ`` where ``S = V diag(λ) Vᵀ`` and

    inside:   h(λ) = (λ + ε_r + ε)^(−α)
    outside:  h(λ) = ((λ + ε_r)^α + ε)^(−1)

(``ε_r`` is an optional extra damping ``eps_root`` added inside the power in both modes; 0 by default).

Two ways to compute it:

* ``method='eigh'`` -- a symmetric eigendecomposition (:func:`torch.linalg.eigh`). Negative eigenvalues
  (round-off of a PSD matrix) are clamped to 0. The matrix is divided by its largest absolute entry before
  the decomposition and the eigenvalues multiplied back, so statistics of size 1e-30 or 1e30 stay finite.
* ``method='newton'`` -- a matmul-only coupled Newton iteration for the inverse ``p``-th root
  (:func:`inverse_root_newton`), used for exponents ``α = a/b`` with small ``b``: ``A^{−a/b} = (A^{−1/b})^a``.
  Only the inside placement is matmul-only (``S^α + εI`` needs a second inversion); it requires a
  positive-definite ``A = S + (ε + ε_r) I``, i.e. ``ε + ε_r > 0`` for a rank-deficient ``S``.

Precision: all decompositions and iterations run in float64 whatever the input dtype (float32 has a unit
round-off of 6e-8, so an eigenvalue 1e-8 times the largest -- condition number 1e8 -- is already lost in
float32; float64 keeps conditions up to ~1e12 with bounded relative error). Results are returned in the
input dtype unless ``out_dtype`` says otherwise.

Pseudo-inverse convention: when ``ε = ε_r = 0`` and ``α > 0`` an eigenvalue ``λ ≤ n·u·λ_max`` (``u`` the
float64 unit round-off) counts as zero and gets ``h = 0`` (Moore-Penrose), so a rank-deficient or zero ``S``
never produces NaN or inf. ``α = 0`` is the identity metric (``h = 1`` inside, ``1/(1+ε)`` outside).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Literal

import torch
from torch import Tensor

from learndyn.validation import LearndynValueError

COMPUTE_DTYPE = torch.float64
"""The dtype every decomposition and iteration runs in."""

EpsMode = Literal["inside", "outside"]
RootMethod = Literal["eigh", "newton"]

MAX_NEWTON_DENOMINATOR = 64
"""``root_method='newton'`` handles exponents ``a/b`` with ``b`` up to this."""


def _compute(A: Tensor) -> Tensor:
    return A if A.dtype == COMPUTE_DTYPE else A.to(COMPUTE_DTYPE)


def symmetrize(A: Tensor) -> Tensor:
    """``(A + Aᵀ)/2`` over the last two dimensions."""
    return 0.5 * (A + A.mT)


def eigh_psd(A: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a stack of symmetric PSD matrices, in float64.

    Args:
        A: ``(..., n, n)``, symmetric (only its symmetric part is used).

    Returns:
        ``(λ, V)`` with ``λ`` of shape ``(..., n)`` ascending and clamped to ``λ ≥ 0``, and ``V`` of shape
        ``(..., n, n)`` orthonormal, such that ``A ≈ V diag(λ) Vᵀ``; both float64.
    """
    A64 = symmetrize(_compute(A))
    scale = A64.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    evals, evecs = torch.linalg.eigh(A64 / scale)
    return evals.clamp_min(0.0) * scale.squeeze(-1), evecs


def spectral_coefficients(
    evals: Tensor,
    alpha: float,
    eps: float = 0.0,
    eps_mode: EpsMode = "inside",
    eps_root: float = 0.0,
    cutoff: Literal["relative", "zero"] = "relative",
) -> Tensor:
    """The eigenvalues ``h(λ)`` of the inverse metric ``g⁻¹`` for eigenvalues ``λ ≥ 0`` of ``S``.

    ``h(λ) = (λ + ε_r + ε)^(−α)`` (inside) or ``((λ + ε_r)^α + ε)^(−1)`` (outside), elementwise, same shape
    as ``evals``. With ``ε = ε_r = 0`` zero eigenvalues get ``h = 0`` (pseudo-inverse): ``cutoff='relative'``
    treats ``λ ≤ n·u·max(λ)`` over the last dimension as zero (for the spectrum of one matrix),
    ``cutoff='zero'`` only exact zeros (for elementwise, i.e. diagonal, metrics).
    """
    if alpha == 0.0:
        return torch.full_like(evals, 1.0 if eps_mode == "inside" else 1.0 / (1.0 + eps))
    lam = evals + eps_root if eps_root else evals
    if eps_mode == "inside":
        h = (lam + eps).pow(-alpha)
    else:
        h = (lam.pow(alpha) + eps).reciprocal()
    if eps == 0.0 and eps_root == 0.0:
        if cutoff == "relative" and evals.ndim > 0 and evals.shape[-1] > 0:
            n = evals.shape[-1]
            tol = evals.amax(dim=-1, keepdim=True) * (n * torch.finfo(evals.dtype).eps)
        else:
            tol = torch.zeros((), dtype=evals.dtype, device=evals.device)
        h = torch.where(evals > tol, h, torch.zeros_like(h))
    return h


def psd_function(A: Tensor, fn: Callable[[Tensor], Tensor], out_dtype: torch.dtype | None = None) -> Tensor:
    """``V diag(fn(λ)) Vᵀ`` for ``A = V diag(λ) Vᵀ`` (``λ`` clamped ≥ 0), batched; float64 inside."""
    evals, evecs = eigh_psd(A)
    out = (evecs * fn(evals).unsqueeze(-2)) @ evecs.mT
    return symmetrize(out).to(out_dtype or A.dtype)


def psd_power(A: Tensor, power: float, out_dtype: torch.dtype | None = None) -> Tensor:
    """``A^power`` of a stack of PSD matrices ``(..., n, n)``; for ``power < 0`` zero eigenvalues map to 0
    (pseudo-inverse convention, see :func:`spectral_coefficients`)."""
    if power >= 0:
        return psd_function(A, lambda lam: lam.pow(power), out_dtype)
    return psd_function(A, lambda lam: spectral_coefficients(lam, -power), out_dtype)


def fractional_exponent(
    x: float, name: str = "alpha", max_denominator: int = MAX_NEWTON_DENOMINATOR
) -> Fraction:
    """``x`` as an exact small fraction ``a/b`` (``b ≤ max_denominator``), as the Newton root needs.

    Raises:
        LearndynValueError: if no such fraction is within 1e-12 of ``x``.
    """
    frac = Fraction(x).limit_denominator(max_denominator)
    if abs(float(frac) - x) > 1e-12:
        raise LearndynValueError(
            f"{name}={x!r} is not allowed with root_method='newton'; allowed: a fraction a/b with "
            f"b <= {max_denominator} (e.g. 0.5, 0.25, 1/3), or root_method='eigh'"
        )
    return frac


def inverse_root_newton(A: Tensor, p: int, *, max_iters: int = 100, tol: float = 1e-13) -> Tensor:
    """``A^{−1/p}`` of a stack of symmetric positive-definite matrices by the coupled Newton iteration.

    With ``c = ‖A‖_F^{1/p}`` (so the eigenvalues of ``M₀`` lie in ``(0, 1]``)::

        X₀ = I/c,  M₀ = A/c^p
        T_k = ((p+1) I − M_k)/p,   X_{k+1} = X_k T_k,   M_{k+1} = T_k^p M_k

    keeps ``M_k = X_k^p A`` and drives ``M_k → I``, hence ``X_k → A^{−1/p}``, using matrix products only
    (Guo & Higham, SIAM J. Matrix Anal. Appl. 28, 2006). Per eigenvalue ``m ∈ (0, 1]`` of ``M`` the map is
    ``m ← m((p+1−m)/p)^p``, which grows small eigenvalues by ``(1+1/p)^p ≥ 2`` per step and converges
    quadratically near 1: a condition number ``κ`` costs about ``log₂ κ`` steps (≈ 40 for ``κ = 1e12``).
    Iterates are re-symmetrised every step. Stops when ``max‖M − I‖_F/√n < tol`` or when the residual stops
    decreasing (round-off floor), at most ``max_iters`` steps. Runs in float64; returns float64.

    Args:
        A: ``(..., n, n)`` symmetric positive definite. A singular ``A`` gives finite but meaningless values
            along its null space (add a ridge first).
        p: the root, ``p ≥ 1`` (``p = 1`` is the Newton-Schulz inverse).
    """
    if p < 1:
        raise LearndynValueError(f"p={p!r} is out of range; allowed: 1 <= p")
    A64 = symmetrize(_compute(A))
    n = A64.shape[-1]
    eye = torch.eye(n, dtype=A64.dtype, device=A64.device)
    norm = torch.linalg.matrix_norm(A64, ord="fro", keepdim=True)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    X = eye / norm.pow(1.0 / p)
    M = A64 / norm
    prev = math.inf
    for _ in range(max_iters):
        T = ((p + 1) * eye - M) / p
        X = symmetrize(X @ T)
        M = symmetrize(torch.linalg.matrix_power(T, p) @ M)
        res = float((torch.linalg.matrix_norm(M - eye, ord="fro") / math.sqrt(n)).max()) if n else 0.0
        if res < tol or (res >= prev and res < 1e-6):
            break
        prev = res
    return X


NEWTON_FALLBACK_RESIDUAL = 1e-3
"""Newton roots whose residual ``‖X^q A − I‖_F/√n`` exceeds this are recomputed by ``eigh``."""


def inverse_metric(
    S: Tensor,
    alpha: float,
    eps: float = 0.0,
    eps_mode: EpsMode = "inside",
    eps_root: float = 0.0,
    method: RootMethod = "eigh",
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """The inverse metric ``g⁻¹`` for ``g = (S + ε_r I + ε I)^α`` (inside) or ``(S + ε_r I)^α + ε I``
    (outside), batched over ``S`` of shape ``(..., n, n)``; returns the same shape (dtype ``out_dtype``, by
    default ``S.dtype``). See the module docstring for the methods and the conventions."""
    out_dtype = out_dtype or S.dtype
    n = S.shape[-1]
    if alpha == 0.0:
        scale = 1.0 if eps_mode == "inside" else 1.0 / (1.0 + eps)
        eye = torch.eye(n, dtype=out_dtype, device=S.device) * scale
        return eye.expand(S.shape).clone()
    if method == "eigh":
        return psd_function(
            S, lambda lam: spectral_coefficients(lam, alpha, eps, eps_mode, eps_root), out_dtype
        )
    if method != "newton":
        raise LearndynValueError(f"method={method!r} is not allowed; allowed: 'eigh', 'newton'")
    if eps_mode != "inside":
        raise LearndynValueError(
            f"eps_mode={eps_mode!r} is not allowed with root_method='newton'; allowed: 'inside'"
        )
    frac = fractional_exponent(alpha)
    A = symmetrize(_compute(S))
    ridge = eps + eps_root
    if ridge:
        A = A + ridge * torch.eye(n, dtype=A.dtype, device=A.device)
    q = frac.denominator
    X = inverse_root_newton(A, q)
    # Newton cannot resolve a ridge below float64 resolution of ‖A‖ (ε/‖S‖ ≲ 1e-16, e.g. statistics of 1e30
    # with ε = 1e-8): there the iterate stalls or blows up. Check the residual ‖X^q A − I‖_F/√n of each matrix
    # and recompute the ones that did not converge with the eigendecomposition (same metric, same formula).
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    residual = torch.linalg.matrix_norm(torch.linalg.matrix_power(X, q) @ A - eye, ord="fro") / math.sqrt(n)
    if frac.numerator != 1:
        X = symmetrize(torch.linalg.matrix_power(X, frac.numerator))
    failed = ~(residual < NEWTON_FALLBACK_RESIDUAL)  # NaN residuals count as failures
    if bool(failed.any()):
        X = X.clone()
        X[failed] = psd_function(
            S.to(X.dtype)[failed], lambda lam: spectral_coefficients(lam, alpha, eps, eps_mode, eps_root)
        )
    return X.to(out_dtype)


def batched(mats: Sequence[Tensor], fn: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Apply a batched function to a list of matrices, stacking those of equal shape/dtype/device.

    ``fn`` maps a stack ``(B, ...)`` to a stack ``(B, ...)``. Returns the results in input order. This is how
    same-shaped layers share one ``eigh``/Newton call.
    """
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault((tuple(m.shape), m.dtype, m.device), []).append(i)
    out: list[Tensor | None] = [None] * len(mats)
    for idx in groups.values():
        res = fn(torch.stack([mats[i] for i in idx]))
        for i, r in zip(idx, res.unbind(0), strict=True):
            out[i] = r
    return out  # type: ignore[return-value]
