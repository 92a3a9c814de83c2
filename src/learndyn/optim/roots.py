"""Cheaper inverse roots of stacks of PSD factors: float32 eigendecompositions, refreshed eigenbases.

:func:`~learndyn.optim.functional.kron_inverse_root_stack` decomposes in float64 (:mod:`learndyn.optim.matfun`
explains why: a float32 eigendecomposition resolves eigenvalues only down to about ``b·u₃₂·λ_max``,
``u₃₂ = 6e-8``). For Kronecker factors with a damping ``ε`` that is not far below that floor, the float64
decomposition buys nothing the direction can see; :func:`inverse_root_float32` is the same root with the
decomposition in float32 (about 1.6× faster on a CPU for blocks of 64). Its error is measured in
``docs/optimizers.md`` ("Cost of kron").

Between full decompositions an eigenbasis can be carried forward by :func:`refresh_eigenbasis` (one step of
orthogonal iteration, as SOAP does), which costs a product and a QR instead of an ``eigh``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learndyn.optim.matfun import COMPUTE_DTYPE, spectral_coefficients, symmetrize


def eigh_float32(X: Tensor) -> tuple[Tensor, Tensor]:
    """``(λ, U)`` of a stack of PSD matrices ``(B, k, k)`` by a float32 ``eigh`` of ``X/s``, ``s`` the largest
    absolute entry of each matrix; ``λ = s·λ(X/s)`` clamped ≥ 0, in float64; ``U`` float32."""
    A = symmetrize(X.to(torch.float32))
    scale = A.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    evals, U = torch.linalg.eigh(A / scale)
    return evals.to(COMPUTE_DTYPE).clamp_min(0.0) * scale.squeeze(-1).to(COMPUTE_DTYPE), U


def inverse_root_float32(X: Tensor, power: float, eps: float, eps_root: float = 0.0) -> Tensor:
    """``(X + (ε+ε_r) I)^{−power}`` of a stack ``X`` ``(B, k, k)`` of PSD matrices, decomposed in float32.

    Each matrix is divided by its largest absolute entry ``s`` before ``eigh`` (so tiny or huge statistics
    stay in range); the eigenvalues ``s·λ`` (clamped ≥ 0) go through
    :func:`~learndyn.optim.matfun.spectral_coefficients` in float64 (``h(λ) = (λ+ε_r+ε)^{−power}``, with the
    pseudo-inverse convention when ``ε = ε_r = 0``) and ``U diag(h) Uᵀ`` is rebuilt in float32. Returns
    ``X.dtype``.
    """
    if power == 0.0:
        eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
        return eye.expand(X.shape).clone()
    lam, U = eigh_float32(X)
    h = spectral_coefficients(lam, power, eps, "inside", eps_root).to(torch.float32)
    return symmetrize((U * h.unsqueeze(-2)) @ U.mT).to(X.dtype)


def refresh_eigenbasis(X: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """One step of orthogonal (subspace) iteration from a previous eigenbasis, for a stack of PSD ``X``.

    ``Q' = qr(X Q).Q`` and the Rayleigh quotients ``λ_i = q'_iᵀ X q'_i`` (clamped ≥ 0), as SOAP refreshes its
    eigenbasis between decompositions (Vyas et al. 2024, one power-iteration step followed by a QR
    decomposition). If ``X`` has not changed since ``Q`` diagonalised it, ``Q' = Q`` up to signs (which no
    spectral function sees). Costs one product and one QR of the size of ``X`` (on a CPU about a quarter of
    an ``eigh``). Runs in ``Q.dtype``; returns ``(λ, Q')`` with ``λ`` float64.
    """
    Xq = X.to(Q.dtype)
    Q2, _ = torch.linalg.qr(Xq @ Q)
    lam = ((Xq @ Q2) * Q2).sum(-2)
    return lam.to(COMPUTE_DTYPE).clamp_min(0.0), Q2
