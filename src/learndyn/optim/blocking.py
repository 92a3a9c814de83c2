"""Block-diagonal Kronecker factors: the layout and the batched products of blocked ``'kron'`` sides.

A side of length ``k`` of a matrix parameter ``(m, n)`` (``k = m`` for the left factor ``L``, ``k = n`` for
the right factor ``R``) is kept in one of three forms (:class:`Side`):

``'diag'``  (``k > max_factor_dim``)  a vector ``(k,)``: only ``diag(L)``;
``'full'``  (unblocked)               a matrix ``(k, k)``;
``'blocks'`` (``k > max_block``)      ``nb`` diagonal blocks ``(nb, b, b)``, ``nb = ⌈k/max_block⌉``,
                                      ``b = ⌈k/nb⌉ ≤ max_block``.

With blocks the factor is the block-diagonal part of the full one: for the left side, with ``V`` split into
row blocks ``V_i`` (``b × n``; the last zero-padded to ``nb·b`` rows when ``b ∤ k``)::

    L = blockdiag(L₁, …, L_nb),   L_i = EMA[V_i V_iᵀ] = (EMA[V Vᵀ])_ii

and every matrix function acts block by block, ``f(L) = blockdiag(f(L₁), …, f(L_nb))``. (This is not the
tiling of Distributed Shampoo, which gives every ``b × b`` tile of the *parameter* its own pair of factors:
here each block of rows still sees all ``n`` columns, there are ``⌈m/b⌉ + ⌈n/b⌉`` roots per parameter instead
of ``2⌈m/b⌉⌈n/b⌉``, and one block is exactly unblocked Shampoo.) Zero padding is harmless: padded rows of
``V`` are zero, so the padded part of ``L_nb`` is a zero block, which the spectral functions map to a block
that only ever multiplies zero rows.

Cost for an ``(m, n)`` parameter and block size ``b``: statistics ``2mn·b`` flops per side (instead of
``2mn·k``), applying ``L^{-a} F R^{-a}`` ``2mn(b_L + b_R)`` (instead of ``2mn(m + n)``), roots
``⌈k/b⌉`` eigendecompositions of size ``b`` per side (``O(k b²)`` instead of ``O(k³)``). Every function here
is batched over the blocks (no loop over blocks) and over a leading stack dimension ``B`` (same-shaped
parameters): one ``baddbmm``/``bmm`` per side and bucket for the left side; for the right-side product one
per member, on strided column-block views (a single batched call would first copy ``X`` into a block-major
layout and the result back, two ``B·m·n`` copies into fresh memory per product); the right-side statistics
copy ``V``'s column blocks into a work buffer once and take one ``baddbmm_``. The products take
``out=`` buffers so that a step need not allocate: on a CPU every fresh multi-megabyte tensor costs its page
faults (about 1 ms per 3 MB measured, as much as the product itself; docs/optimizers.md, "Cost of kron").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SideKind = Literal["diag", "full", "blocks"]


@dataclass(frozen=True)
class Side:
    """The layout of one Kronecker side of length ``size``: ``kind``, ``blocks`` × ``block`` (``padded =
    blocks·block ≥ size``; ``blocks = 1``, ``block = size`` unless ``kind == 'blocks'``)."""

    kind: SideKind
    size: int
    blocks: int = 1
    block: int = 0

    @property
    def padded(self) -> int:
        return self.blocks * self.block if self.kind == "blocks" else self.size

    def factor_shape(self) -> tuple[int, ...]:
        """Shape of the factor of one parameter: ``(k,)``, ``(k, k)`` or ``(nb, b, b)``."""
        if self.kind == "diag":
            return (self.size,)
        if self.kind == "full":
            return (self.size, self.size)
        return (self.blocks, self.block, self.block)

    def elements(self) -> int:
        """Entries of the factor (for the memory guard)."""
        return int(torch.Size(self.factor_shape()).numel())


def side_layout(size: int, max_factor_dim: int | None, max_block: int | None) -> Side:
    """The :class:`Side` of a side of length ``size``: diagonal beyond ``max_factor_dim``, else ``⌈size /
    max_block⌉`` blocks of equal size ``⌈size/nb⌉`` when ``max_block`` is set and smaller than ``size``,
    else one full factor (a side that fits in one block keeps the unblocked ``(k, k)`` layout and state)."""
    if max_factor_dim is not None and size > max_factor_dim:
        return Side("diag", size)
    if max_block is None or size <= max_block:
        return Side("full", size)
    nb = -(-size // max_block)
    return Side("blocks", size, nb, -(-size // nb))


def _row_blocks(X: Tensor, side: Side) -> Tensor:
    """``(B, nb·b, n)`` → ``(B·nb, b, n)`` (a view of a contiguous ``X``)."""
    return X.reshape(-1, side.block, X.shape[-1])


def _col_blocks(X: Tensor, side: Side) -> Tensor:
    """One matrix ``(m, nb·b)`` → ``(nb, m, b)``: a strided view of a contiguous ``X`` (column blocks)."""
    return X.view(X.shape[0], side.blocks, side.block).transpose(0, 1)


def left_mul(A: Tensor, X: Tensor, side: Side, out: Tensor | None = None) -> Tensor:
    """``A X`` for a left factor ``A`` (``(B, m)``, ``(B, m, m)`` or ``(B, nb, b, b)`` by ``side.kind``) and
    ``X`` ``(B, m_padded, n)``: per block ``A_i X_i`` (rows ``i·b … (i+1)·b − 1``). ``out``: a contiguous
    ``(B, m_padded, n)`` buffer to write into (not aliasing ``X``), else a new tensor."""
    if side.kind == "diag":
        return torch.mul(A.unsqueeze(-1), X, out=out) if out is not None else A.unsqueeze(-1) * X
    if side.kind == "full":
        return torch.matmul(A, X, out=out) if out is not None else A @ X
    B, mp, n = X.shape
    Xb = X.reshape(B * side.blocks, side.block, n)
    Ab = A.reshape(B * side.blocks, side.block, side.block)
    if out is None:
        return torch.bmm(Ab, Xb).view(B, mp, n)
    torch.bmm(Ab, Xb, out=out.view(B * side.blocks, side.block, n))
    return out


def right_mul(X: Tensor, A: Tensor, side: Side, out: Tensor | None = None) -> Tensor:
    """``X A`` for a right factor ``A`` (``(B, n)``, ``(B, n, n)`` or ``(B, nb, b, b)``) and ``X``
    ``(B, m, n_padded)``: per column block ``X_j A_j``.

    With blocks, member ``i``'s column blocks are the strided view ``X_i.view(m, nb, b).transpose(0, 1)``
    (batch stride ``b``, row stride ``n``), which BLAS multiplies in place: one ``bmm`` per member writing
    into the same view of the output, so neither ``X`` nor the result is copied into a block-major layout.
    ``out``: a contiguous ``(B, m, n_padded)`` buffer (not aliasing ``X``), else a new tensor."""
    if side.kind == "diag":
        return torch.mul(X, A.unsqueeze(-2), out=out) if out is not None else X * A.unsqueeze(-2)
    if side.kind == "full":
        return torch.matmul(X, A, out=out) if out is not None else X @ A
    B, m, npad = X.shape
    if out is None:
        out = X.new_empty(B, m, npad)
    for i in range(B):
        torch.bmm(_col_blocks(X[i], side), A[i], out=_col_blocks(out[i], side))
    return out


def left_statistics_ema_(L: Tensor, V: Tensor, side: Side, beta: float) -> None:
    """In place ``L ← β L + (1−β) V Vᵀ`` restricted to ``side`` (``V`` ``(B, m_padded, n)``): the diagonal,
    the full Gram matrix, or its diagonal blocks ``V_i V_iᵀ`` (one ``baddbmm_`` over all blocks)."""
    if side.kind == "diag":
        L.lerp_(V.square().sum(-1), 1.0 - beta)
    elif side.kind == "full":
        L.baddbmm_(V, V.mT, beta=beta, alpha=1.0 - beta)
    else:
        Vb = _row_blocks(V, side)
        L.view(-1, side.block, side.block).baddbmm_(Vb, Vb.mT, beta=beta, alpha=1.0 - beta)


def right_statistics_ema_(R: Tensor, V: Tensor, side: Side, beta: float, work: Tensor | None = None) -> None:
    """In place ``R ← β R + (1−β) Vᵀ V`` restricted to ``side`` (``V`` ``(B, m, n_padded)``). Blocks: with a
    contiguous buffer ``work`` of ``V.numel()`` elements (not aliasing ``V``), ``V``'s column blocks are
    copied into it block-major and one ``baddbmm_`` covers all of them (about 25 % faster on a CPU for blocks
    of 32 than BLAS on strided blocks); without, one ``baddbmm_`` per member on the strided column blocks."""
    if side.kind == "diag":
        R.lerp_(V.square().sum(-2), 1.0 - beta)
    elif side.kind == "full":
        R.baddbmm_(V.mT, V, beta=beta, alpha=1.0 - beta)
    elif work is not None:
        B, m, npad = V.shape
        Vb = work.view(B, side.blocks, m, side.block)
        Vb.copy_(V.view(B, m, side.blocks, side.block).transpose(1, 2))
        Vb = Vb.view(B * side.blocks, m, side.block)
        R.view(-1, side.block, side.block).baddbmm_(Vb.mT, Vb, beta=beta, alpha=1.0 - beta)
    else:
        for i in range(V.shape[0]):
            Vi = _col_blocks(V[i], side)
            R[i].baddbmm_(Vi.mT, Vi, beta=beta, alpha=1.0 - beta)


def stack_padded(xs: list[Tensor], m: int, n: int, left: Side, right: Side, out: Tensor) -> Tensor:
    """The tensors ``xs`` (each of ``m·n`` elements) as the matrices of ``out``
    ``(len(xs), left.padded, right.padded)`` (contiguous), zero-padded below and to the right, without a new
    allocation."""
    if left.padded == m and right.padded == n:
        return torch.stack([x.reshape(m, n) for x in xs], out=out)
    out.zero_()
    for x, o in zip(xs, out.unbind(0), strict=True):
        o[:m, :n].copy_(x.reshape(m, n))
    return out


def trace(X: Tensor) -> Tensor:
    """Traces of a stack ``(B, …)`` of factors: diagonal ``(B, k)``, full ``(B, k, k)`` or blocked
    ``(B, nb, b, b)`` (the sum over the blocks)."""
    if X.ndim == 2:
        return X.sum(-1)
    return X.diagonal(dim1=-2, dim2=-1).flatten(1).sum(-1)


def as_matrices(X: Tensor) -> Tensor:
    """A stack of full or blocked factors as one stack of square matrices ``(B·nb, b, b)`` (a view)."""
    return X.reshape(-1, X.shape[-1], X.shape[-1])


def block_diagonal(X: Tensor) -> Tensor:
    """The dense ``(nb·b, nb·b)`` block-diagonal matrix of blocks ``X`` ``(nb, b, b)`` (for references and
    probes, not for the step)."""
    return torch.block_diag(*X.unbind(0))
