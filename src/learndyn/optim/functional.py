"""Functional core of covariant gradient descent: moments → metric → power → precondition.

Covariant gradient descent updates ``q ← q − lr · g⁻¹ F`` where

* ``F`` is the (bias-corrected) EMA first moment ``m̂ = m/(1−β₁ᵗ)``, ``m ← β₁m + (1−β₁)∇``, or the raw
  gradient ``∇``;
* ``S`` is the EMA of ``v vᵀ`` with ``v = ∇`` (``moment='second'``, ``S ≈ E[∇∇ᵀ]``) or ``v = ∇ − m``
  (``moment='covariance'``, AdaBelief-style, ``S ≈ E[∇∇ᵀ] − E[∇]E[∇]ᵀ``; ``m`` is the first moment *after*
  this step's update), bias-corrected ``Ŝ = S/(1−β₂ᵗ)``;
* ``g = (Ŝ + εI)^α`` (``eps_mode='inside'``) or ``Ŝ^α + εI`` (``'outside'``), restricted to a structure.

The functions here are the separable steps, on plain tensors, so probes and theory can reuse them; the
:class:`~learndyn.optim.CovariantGD` wrapper only owns state and bookkeeping. Functions ending in ``_``
update their first argument(s) in place (the EMA state); all others are pure. ``foreach_*`` functions take
lists of tensors and use ``torch._foreach_*`` kernels (one fused call per list, no per-element loops).

Structures and their metric (``P`` the parameter count of what the structure covers):

* ``diag``: ``S`` elementwise (shape of the parameter), ``g⁻¹F = F / g`` elementwise.
* ``kron``: for a matrix-shaped parameter ``G`` of shape ``(m, n)`` (a conv weight ``(out, in, k, k)`` is
  reshaped to ``(out, in·k·k)``) the Kronecker factors ``L = EMA[V Vᵀ]`` ``(m, m)`` and ``R = EMA[Vᵀ V]``
  ``(n, n)`` model ``S ≈ (L ⊗ R)^{1/2} = L^{1/2} ⊗ R^{1/2}`` (exact for a rank-one ``V = a bᵀ``), so

      inside:   g⁻¹F = (L̂ + εI)^{−α/2} F (R̂ + εI)^{−α/2}        (ε damps each factor, as in Shampoo)
      outside:  g⁻¹F = U_L [ (U_Lᵀ F U_R) ⊘ ((λ_L^{α/2} λ_Rᵀ^{α/2}) + ε) ] U_Rᵀ,  L̂ = U_L diag(λ_L) U_Lᵀ …

  i.e. ``g = (L̂+εI)^{α/2} ⊗ (R̂+εI)^{α/2}`` or ``L̂^{α/2} ⊗ R̂^{α/2} + εI`` (at α = ½ the factor powers are
  Shampoo's ¼). A side larger than ``max_factor_dim`` keeps only the diagonal of its factor (a vector).
* ``block``: one ``(n, n)`` matrix ``S`` per parameter tensor (``n`` its numel), ``g⁻¹ F`` a matrix-vector
  product with ``g⁻¹`` from :func:`~learndyn.optim.matfun.inverse_metric`.
* ``full``: the same for the concatenation of all parameters of a group, ``S`` of shape ``(P, P)``.
* ``lowrank``: ``S`` in factored form: ``S_lr = U diag(Λ) Uᵀ`` with ``U`` ``(P, r)`` orthonormal and
  ``r = min(rank, P)``, plus the exact EMA diagonal ``d = EMA[v ⊙ v]`` ``(P,)``. The update keeps the top
  ``r`` eigenpairs of ``β₂ U Λ Uᵀ + (1−β₂) v vᵀ`` (a thin SVD of the ``(P, r+1)`` matrix
  ``[U Λ^{1/2} √β₂, v √(1−β₂)]``; the rest is dropped). With the diagonal remainder
  ``ρ = max(d − diag(U Λ Uᵀ), 0)`` and ``Π = I − U Uᵀ``, the inverse metric is the symmetric PSD matrix

      g⁻¹ = U diag(h(Λ̂)) Uᵀ + Π diag(h(ρ̂)) Π,          h as in matfun.spectral_coefficients,

  applied in ``O(P r)`` without forming any ``P × P`` matrix. When ``r = P`` (rank ≥ P) ``Π = 0``, the
  SVD update is exact and ``g⁻¹ = h(Ŝ)``: identical to ``full``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from learndyn.optim.matfun import (
    COMPUTE_DTYPE,
    EpsMode,
    RootMethod,
    eigh_psd,
    inverse_metric,
    spectral_coefficients,
    symmetrize,
)

# --------------------------------------------------------------------------------------------- moments


def bias_correction(beta: float, step: int, enabled: bool = True) -> float:
    """``1 − βᵗ`` (divide an EMA started at zero by this after ``t`` updates), or 1 when disabled."""
    return 1.0 - beta**step if enabled else 1.0


def foreach_ema_(avgs: list[Tensor], values: list[Tensor], beta: float) -> None:
    """In place ``avg ← β·avg + (1−β)·value`` for every pair (one fused ``lerp``)."""
    if avgs:
        torch._foreach_lerp_(avgs, values, 1.0 - beta)


def statistics_update(step: int, every: int) -> bool:
    """Whether step ``t`` (1-based) updates statistics kept every ``k`` steps: ``t = 1, k+1, 2k+1, …``."""
    return (step - 1) % every == 0


def statistics_count(step: int, every: int) -> int:
    """``u = ⌈t/k⌉``: how many updates statistics kept every ``k`` steps have had after step ``t``
    (0 for ``t ≤ 0``)."""
    return (step - 1) // every + 1 if step > 0 else 0


def amortised_bias_correction(beta: float, step: int, every: int, enabled: bool = True) -> float:
    """``1 − (βᵏ)ᵘ`` with ``u = ⌈t/k⌉``: the total weight of an EMA that is updated on steps ``1, k+1, …``
    with decay ``βᵏ`` (see :func:`amortised_ema_beta`); ``k = 1`` is :func:`bias_correction`."""
    return bias_correction(amortised_ema_beta(beta, every), statistics_count(step, every), enabled)


def amortised_ema_beta(beta: float, every: int) -> float:
    """``βᵏ``: the per-update decay of an EMA updated every ``k`` steps with the per-step time constant of
    ``β``. On update steps ``t_j = 1 + (j−1)k``::

        S ← βᵏ S + (1 − βᵏ) X_t,       so after u updates   S = Σ_j (1 − βᵏ) β^{k(u−j)} X_{t_j}

    A sample ``a`` steps old weighs ``∝ βᵃ`` as in the every-step EMA (same time constant ``1/(1−β)`` steps,
    with ``2τ/k`` instead of ``2τ`` effective samples), and the weights sum to ``1 − β^{ku}``, the bias
    correction (:func:`amortised_bias_correction`) that makes ``Ŝ`` a weighted average of the samples."""
    return beta if every == 1 else beta**every


def moment_vectors(grads: list[Tensor], exp_avgs: list[Tensor] | None, moment: str) -> list[Tensor]:
    """The vectors ``v`` whose outer products ``S`` averages: ``∇`` (second) or ``∇ − m`` (covariance)."""
    if moment == "second":
        return grads
    assert exp_avgs is not None, "moment='covariance' needs the first moment"
    return torch._foreach_sub(grads, exp_avgs)


def foreach_ema_square_(sq_avgs: list[Tensor], vs: list[Tensor], beta: float) -> None:
    """Diagonal second moment, in place: ``s ← β·s + (1−β)·v ⊙ v``."""
    if sq_avgs:
        torch._foreach_mul_(sq_avgs, beta)
        torch._foreach_addcmul_(sq_avgs, vs, vs, value=1.0 - beta)


def relative_damping(X: Tensor, eps_rel: float, *, diagonal: bool = False) -> Tensor:
    """``X + ε_rel·(tr X / n)·I`` for (a stack of) PSD matrices ``X`` ``(..., n, n)``: damping relative to the
    statistics' mean eigenvalue, so that it scales with ``Ŝ`` (a fixed ``ε`` may be many orders of magnitude
    below ``Ŝ``'s spectrum, leaving rank-deficient early statistics nearly undamped). ``diagonal=True``: ``X``
    holds the diagonals ``(..., n)`` of diagonal matrices (``X + ε_rel·mean(X)``). ``ε_rel = 0`` returns
    ``X`` itself. Like ``eps_root`` the shift sits inside the power in both ``eps_mode``s."""
    if not eps_rel:
        return X
    if diagonal:
        return X + eps_rel * X.mean(dim=-1, keepdim=True)
    n = X.shape[-1]
    mean = X.diagonal(dim1=-2, dim2=-1).sum(-1) / max(n, 1)
    return X + (eps_rel * mean)[..., None, None] * torch.eye(n, dtype=X.dtype, device=X.device)


def ema_outer_(S: Tensor, v: Tensor, beta: float) -> None:
    """Full second moment, in place: ``S ← β·S + (1−β)·v vᵀ``; ``S`` ``(..., n, n)``, ``v`` ``(..., n)``."""
    S.mul_(beta)
    if S.ndim == 2:
        S.addr_(v, v, alpha=1.0 - beta)
    else:
        S.baddbmm_(v.unsqueeze(-1), v.unsqueeze(-2), alpha=1.0 - beta)


def kron_statistics_ema_(L: Tensor, R: Tensor, V: Tensor, beta: float) -> None:
    """In place ``L ← β L + (1−β) V Vᵀ`` and ``R ← β R + (1−β) Vᵀ V`` for a stack ``V`` ``(B, m, n)``.

    ``L`` is ``(B, m, m)``, or ``(B, m)`` for a diagonal side (then ``diag(V Vᵀ)`` is used); ``R`` likewise
    ``(B, n, n)`` or ``(B, n)``. The matrix sides are one ``baddbmm_`` each: the EMA is fused into the Gram
    product and no ``(B, m, m)`` temporary is allocated."""
    if L.ndim == V.ndim:
        L.baddbmm_(V, V.mT, beta=beta, alpha=1.0 - beta)
    else:
        L.lerp_(V.square().sum(-1), 1.0 - beta)
    if R.ndim == V.ndim:
        R.baddbmm_(V.mT, V, beta=beta, alpha=1.0 - beta)
    else:
        R.lerp_(V.square().sum(-2), 1.0 - beta)


# ---------------------------------------------------------------------------------------------- diag


def foreach_diag_metric(
    sq_avgs: list[Tensor],
    *,
    bc2: float,
    alpha: float,
    eps: float,
    eps_mode: EpsMode,
    eps_root: float = 0.0,
) -> list[Tensor] | None:
    """The diagonal metric ``g`` (elementwise, a new list) from EMA squares ``s`` with ``Ŝ = s/bc2``:
    ``(Ŝ + ε_r + ε)^α`` (inside) or ``(Ŝ + ε_r)^α + ε`` (outside). ``None`` means the identity (α = 0,
    inside). With ``ε = ε_r = 0`` zero entries become ``+inf`` so that ``F/g = 0`` there (pseudo-inverse).

    With ``eps_mode='outside'``, ``α = ½``, ``ε_r = 0`` this is literally Adam's ``√s/√bc2 + ε``.
    """
    if alpha == 0.0:
        if eps_mode == "inside":
            return None
        return [torch.full_like(s, 1.0 + eps) for s in sq_avgs]
    if eps_mode == "outside" and eps_root == 0.0:
        if alpha == 0.5:
            g = torch._foreach_sqrt(sq_avgs)
            torch._foreach_div_(g, math.sqrt(bc2))
        else:
            g = torch._foreach_pow(sq_avgs, alpha)
            torch._foreach_div_(g, bc2**alpha)
    else:
        g = torch._foreach_div(sq_avgs, bc2)
        shift = eps_root + (eps if eps_mode == "inside" else 0.0)
        if shift:
            torch._foreach_add_(g, shift)
        g = torch._foreach_sqrt(g) if alpha == 0.5 else torch._foreach_pow(g, alpha)
    if eps_mode == "outside" and eps:
        torch._foreach_add_(g, eps)
    if eps == 0.0 and eps_root == 0.0:
        for x in g:
            x.masked_fill_(x == 0, math.inf)
    return g


def foreach_diag_precondition_(
    params: list[Tensor], directions: list[Tensor], metric: list[Tensor] | None, step_size: float
) -> None:
    """In place ``p ← p − step_size · F / g`` (``metric=None``: ``p ← p − step_size · F``)."""
    if not params:
        return
    if metric is None:
        torch._foreach_add_(params, directions, alpha=-step_size)
    else:
        torch._foreach_addcdiv_(params, directions, metric, value=-step_size)


# ---------------------------------------------------------------------------------------------- kron


def kron_inverse_root_stack(
    X: Tensor,
    alpha: float,
    eps: float,
    eps_root: float = 0.0,
    method: RootMethod = "eigh",
    *,
    diagonal: bool = False,
) -> Tensor:
    """``(X̂ + (ε+ε_r) I)^{−α/2}`` for a stack of bias-corrected factors, in ``X.dtype``.

    ``X`` is ``(B, k, k)``, or ``(B, k)`` with ``diagonal=True`` (elementwise power). With ``'eigh'`` only the
    decomposition runs in float64; ``V diag(h) Vᵀ`` is rebuilt in ``X.dtype`` (for float32 that is the
    precision the result is stored in anyway, at half the cost of a float64 product). ``'newton'`` iterates
    in float64 (:func:`~learndyn.optim.matfun.inverse_metric`).
    """
    if diagonal:
        return spectral_coefficients(
            X.to(COMPUTE_DTYPE), alpha / 2, eps, "inside", eps_root, cutoff="zero"
        ).to(X.dtype)
    if method != "eigh" or alpha == 0.0 or X.dtype == COMPUTE_DTYPE:
        return inverse_metric(X, alpha / 2, eps, "inside", eps_root, method)
    evals, evecs = eigh_psd(X)
    h = spectral_coefficients(evals, alpha / 2, eps, "inside", eps_root)
    U = evecs.to(X.dtype)
    return symmetrize((U * h.to(X.dtype).unsqueeze(-2)) @ U.mT)


def kron_eigenbasis_stack(
    X: Tensor, alpha: float, eps_root: float = 0.0, *, diagonal: bool = False
) -> tuple[Tensor, Tensor]:
    """For the outside placement: ``(U, λ^{α/2})`` of a stack of bias-corrected factors (float64).

    ``X`` ``(B, k, k)`` gives eigenvectors ``(B, k, k)`` and ``(λ + ε_r)^{α/2}`` ``(B, k)``; a diagonal stack
    ``(B, k)`` gives an empty basis ``(B, 0)`` (the identity) and ``(X + ε_r)^{α/2}``.
    """
    if diagonal:
        X64 = X.to(COMPUTE_DTYPE)
        return X64.new_empty((X.shape[0], 0)), (X64 + eps_root).pow(alpha / 2)
    evals, evecs = eigh_psd(X)
    return evecs, (evals + eps_root).pow(alpha / 2)


def kron_outside_coefficients(left_pow: Tensor, right_pow: Tensor, eps: float) -> Tensor:
    """``C = 1/(λ_L^{α/2} λ_Rᵀ^{α/2} + ε)`` ``(m, n)``; with ``ε = 0`` zero products give 0
    (pseudo-inverse)."""
    prod = left_pow.unsqueeze(-1) * right_pow.unsqueeze(-2)
    c = (prod + eps).reciprocal()
    if eps == 0.0:
        c = torch.where(prod > 0, c, torch.zeros_like(c))
    return c


def _side_left(A: Tensor, X: Tensor) -> Tensor:
    """``A X`` for a matrix ``A`` ``(..., m, m)`` or a diagonal ``A`` ``(..., m)``."""
    return A @ X if A.ndim == X.ndim else A.unsqueeze(-1) * X


def _side_right(X: Tensor, A: Tensor) -> Tensor:
    """``X A`` for a matrix ``A`` ``(..., n, n)`` or a diagonal ``A`` ``(..., n)``."""
    return X @ A if A.ndim == X.ndim else X * A.unsqueeze(-2)


def kron_direction_inside(left: Tensor, F: Tensor, right: Tensor) -> Tensor:
    """``g⁻¹F = L⁻ F R⁻`` for inverse-root factors ``L⁻``/``R⁻`` (matrices or diagonals), batched over a
    leading dimension of ``F`` ``(..., m, n)``."""
    return _side_right(_side_left(left, F), right)


def kron_direction_outside(UL: Tensor, UR: Tensor, C: Tensor, F: Tensor) -> Tensor:
    """``g⁻¹F = U_L [(U_Lᵀ F U_R) ⊙ C] U_Rᵀ`` (an empty ``U`` is the identity basis); ``F``
    ``(..., m, n)``."""
    X = F
    if UL.numel():
        X = UL.mT @ X
    if UR.numel():
        X = X @ UR
    X = X * C
    if UL.numel():
        X = UL @ X
    if UR.numel():
        X = X @ UR.mT
    return X


def kron_sqrt_diagonal(L_hat: Tensor, R_hat: Tensor) -> Tensor:
    """``diag(L̂^{1/2} ⊗ R̂^{1/2})`` as an ``(m, n)`` matrix: the diagonal of the Kronecker model of ``S``."""

    def sqrt_diag(A: Tensor) -> Tensor:
        if A.ndim == 1:
            return A.to(COMPUTE_DTYPE).clamp_min(0).sqrt()
        evals, evecs = eigh_psd(A)
        return (evecs.square() * evals.sqrt().unsqueeze(-2)).sum(-1)

    return (sqrt_diag(L_hat).unsqueeze(-1) * sqrt_diag(R_hat).unsqueeze(-2)).to(L_hat.dtype)


# ------------------------------------------------------------------------------------- block and full


def matrix_direction(Minv: Tensor, F: Tensor) -> Tensor:
    """``g⁻¹ f`` for ``Minv`` ``(..., n, n)`` and flat ``F`` ``(..., n)``."""
    return (Minv @ F.unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------------ stale roots, bounded


def stale_bound(
    trace: Tensor,
    root_trace: Tensor,
    count: int,
    root_count: int,
    beta: float,
    enabled: bool = True,
) -> tuple[float, Tensor]:
    """``(c, τ)`` with ``Ŝ_t ⪯ c Ŝ₀ + τ I``: how far statistics may have moved since a cached root.

    The statistics ``S`` (raw, not bias-corrected) are an EMA with per-update decay ``β`` (``βᵏ`` when
    amortised). A root was computed from ``S₀`` after ``u₀ = root_count`` updates; now, after ``u = count``,
    ``S = β^{u−u₀} S₀ + N`` with ``N ⪰ 0`` the weighted outer products added since. Dividing by the bias
    corrections ``b(u) = 1 − βᵘ``::

        Ŝ_t = c Ŝ₀ + N/b(u),   c = β^{u−u₀} b(u₀)/b(u),   N ⪯ tr(N) I,   tr N = tr S − β^{u−u₀} tr S₀

    so ``τ = tr(N)/b(u)`` (clamped at 0 against round-off) gives the bound. ``trace``/``root_trace`` are
    ``tr S`` now and at the root (tensors, batched over leading dimensions); ``τ`` has their shape.
    """
    decay = beta ** (count - root_count)
    c = decay * bias_correction(beta, root_count, enabled) / bias_correction(beta, count, enabled)
    tau = (trace - decay * root_trace).clamp_min(0) / bias_correction(beta, count, enabled)
    return c, tau


def kron_stale_gain(
    tau_left: Tensor,
    tau_right: Tensor,
    alpha: float,
    eps: float,
    eps_mode: EpsMode = "inside",
    eps_root: float = 0.0,
) -> Tensor:
    """An upper bound ``G`` on ``‖g⁻¹‖`` for a kron metric bounded per factor as in :func:`stale_bound`.

    With ``L̂_t ⪯ c_L L̂₀ + τ_L I`` (and ``R`` alike) the bounded inside metric
    ``(c_L L̂₀ + (τ_L+ε_r+ε) I)^{α/2} ⊗ (c_R R̂₀ + (τ_R+ε_r+ε) I)^{α/2}`` has eigenvalues at least
    ``((τ_L+ε_r+ε)(τ_R+ε_r+ε))^{α/2}``, so its inverse has norm at most
    ``G = ((τ_L+ε_r+ε)(τ_R+ε_r+ε))^{−α/2}``; outside ``G = 1/(((τ_L+ε_r)(τ_R+ε_r))^{α/2} + ε)``.
    ``inf`` where that is ``1/0`` (no bound). Batched over the shape of ``τ``; float64.
    """
    tl, tr = tau_left.to(COMPUTE_DTYPE) + eps_root, tau_right.to(COMPUTE_DTYPE) + eps_root
    if eps_mode == "inside":
        denom = ((tl + eps) * (tr + eps)).pow(alpha / 2)
    else:
        denom = (tl * tr).pow(alpha / 2) + eps
    return torch.where(denom > 0, denom.reciprocal(), torch.full_like(denom, math.inf))


def eigen_direction(U: Tensor, h: Tensor, F: Tensor) -> Tensor:
    """``U diag(h) Uᵀ f`` for a basis ``U`` ``(..., n, n)``, coefficients ``h`` ``(..., n)`` and flat ``F``
    ``(..., n)``, without assembling the matrix (two matrix-vector products)."""
    a = (U.mT @ F.unsqueeze(-1)).squeeze(-1)
    return (U @ (h * a).unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------------------------- lowrank


def lowrank_ema_(U: Tensor, lam: Tensor, diag: Tensor, v: Tensor, beta: float) -> None:
    """In place rank-``r`` EMA: ``U diag(λ) Uᵀ ← top-r eigenpairs of β U diag(λ) Uᵀ + (1−β) v vᵀ`` and
    ``d ← β d + (1−β) v ⊙ v``. ``U`` ``(P, r)``, ``λ`` ``(r,)``, ``d`` and ``v`` ``(P,)``. Float64 inside."""
    r = U.shape[1]
    Z = torch.cat(
        [
            U.to(COMPUTE_DTYPE) * (beta * lam.to(COMPUTE_DTYPE).clamp_min(0)).sqrt(),
            math.sqrt(1.0 - beta) * v.to(COMPUTE_DTYPE).unsqueeze(1),
        ],
        dim=1,
    )
    Uz, s, _ = torch.linalg.svd(Z, full_matrices=False)
    U.copy_(Uz[:, :r])
    lam.copy_(s[:r].square())
    diag.mul_(beta).addcmul_(v, v, value=1.0 - beta)


def lowrank_coefficients(
    U: Tensor,
    lam_hat: Tensor,
    diag_hat: Tensor,
    alpha: float,
    eps: float,
    eps_mode: EpsMode = "inside",
    eps_root: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """``(h(Λ̂), h(ρ̂))`` with the remainder ``ρ̂ = max(d̂ − diag(U Λ̂ Uᵀ), 0)`` (float64; see module doc)."""
    U64, lam64 = U.to(COMPUTE_DTYPE), lam_hat.to(COMPUTE_DTYPE).clamp_min(0)
    rem = (diag_hat.to(COMPUTE_DTYPE) - (U64.square() * lam64).sum(1)).clamp_min(0)
    c_lam = spectral_coefficients(lam64, alpha, eps, eps_mode, eps_root, cutoff="relative")
    c_rem = spectral_coefficients(rem, alpha, eps, eps_mode, eps_root, cutoff="zero")
    return c_lam, c_rem


def lowrank_direction(U: Tensor, c_lam: Tensor, c_rem: Tensor, F: Tensor) -> Tensor:
    """``g⁻¹F = U (h(Λ̂) ⊙ UᵀF) + Π (h(ρ̂) ⊙ Π F)``, ``Π = I − U Uᵀ`` (skipped when ``U`` is square)."""
    a = U.mT @ F
    out = U @ (c_lam * a)
    if U.shape[1] < U.shape[0]:
        y = c_rem * (F - U @ a)
        out = out + y - U @ (U.mT @ y)
    return out


def lowrank_diagonal(U: Tensor, lam: Tensor, diag: Tensor) -> Tensor:
    """``diag(U Λ Uᵀ) + ρ = max(d, diag(U Λ Uᵀ))``: the diagonal of the modelled ``S`` ``(P,)``."""
    return torch.maximum(diag, (U.square() * lam.clamp_min(0)).sum(1))
