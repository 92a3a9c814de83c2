"""Blocked ``'kron'`` (``max_block``) and float32 roots against brute-force references.

The references are written from the definitions: the full Kronecker statistics ``L = EMA[G Gᵀ]``,
``R = EMA[Gᵀ G]`` restricted to their diagonal blocks by a mask, roots by numpy's ``eigh`` of the whole
(masked, dense) matrix, and for the outside placement the explicit ``mn × mn`` Kronecker metric
``L̂^{α/2} ⊗ R̂^{α/2} + εI`` solved densely.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from learndyn.optim import CovariantGD
from learndyn.optim.blocking import (
    Side,
    block_diagonal,
    left_mul,
    left_statistics_ema_,
    right_mul,
    right_statistics_ema_,
    side_layout,
    trace,
)
from learndyn.optim.roots import inverse_root_float32
from learndyn.validation import LearndynValueError


def _block_mask(k: int, max_block: int) -> np.ndarray:
    """Block-diagonal 0/1 mask: ⌈k/max_block⌉ blocks of ⌈k/nb⌉ (the last one shorter)."""
    nb = -(-k // max_block)
    b = -(-k // nb)
    ids = np.arange(k) // b
    return (ids[:, None] == ids[None, :]).astype(float)


def _sym_power(A: np.ndarray, power: float, shift: float) -> np.ndarray:
    lam, V = np.linalg.eigh(0.5 * (A + A.T))
    return (V * (np.clip(lam, 0, None) + shift) ** power) @ V.T


def _data(m: int = 9, n: int = 7, batch: int = 16, steps: int = 8):
    gen = torch.Generator().manual_seed(0)
    W0 = torch.randn(m, n, generator=gen, dtype=torch.float64) / 3
    xs = [torch.randn(batch, n, generator=gen, dtype=torch.float64) for _ in range(steps)]
    ys = [torch.randn(batch, m, generator=gen, dtype=torch.float64) for _ in range(steps)]
    return W0, xs, ys


def _ours(W0, xs, ys, **kw) -> tuple[torch.Tensor, CovariantGD, nn.Parameter]:
    W = nn.Parameter(W0.clone())
    opt = CovariantGD([W], **kw)
    for x, y in zip(xs, ys, strict=True):
        opt.zero_grad()
        ((x @ W.T - y) ** 2).mean().backward()
        opt.step()
    return W.detach().clone(), opt, W


def _reference(W0, xs, ys, *, lr, alpha, eps, betas, eps_mode, max_block) -> torch.Tensor:
    """Brute force: full Kronecker statistics, masked to blocks, dense roots / dense Kronecker solve."""
    W = W0.numpy().copy()
    m, n = W.shape
    b1, b2 = betas
    mL, mR = _block_mask(m, max_block), _block_mask(n, max_block)
    M, L, R = np.zeros_like(W), np.zeros((m, m)), np.zeros((n, n))
    for t, (x, y) in enumerate(zip(xs, ys, strict=True), start=1):
        Wt = torch.tensor(W, requires_grad=True)
        ((x @ Wt.T - y) ** 2).mean().backward()
        G = Wt.grad.numpy()
        M = b1 * M + (1 - b1) * G
        L = b2 * L + (1 - b2) * G @ G.T
        R = b2 * R + (1 - b2) * G.T @ G
        Lh, Rh = L * mL / (1 - b2**t), R * mR / (1 - b2**t)
        Fh = M / (1 - b1**t)
        if eps_mode == "inside":
            D = _sym_power(Lh, -alpha / 2, eps) @ Fh @ _sym_power(Rh, -alpha / 2, eps)
        else:
            K = np.kron(_sym_power(Lh, alpha / 2, 0.0), _sym_power(Rh, alpha / 2, 0.0)) + eps * np.eye(m * n)
            D = np.linalg.solve(K, Fh.reshape(-1)).reshape(m, n)
        W = W - lr * D
    return torch.tensor(W)


KW = dict(lr=0.05, alpha=0.5, eps=1e-3, betas=(0.9, 0.95), structure="kron", stale_damping="none")


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_one_block_equals_unblocked_kron(eps_mode):
    W0, xs, ys = _data()
    kw = dict(KW, eps_mode=eps_mode, precondition_every=3, stale_damping="trace")
    unblocked, _, _ = _ours(W0, xs, ys, max_block=None, **kw)
    one, opt, W = _ours(W0, xs, ys, max_block=9, **kw)
    assert opt.state[W]["kron_L"].shape == (9, 9)  # a side that fits one block keeps the unblocked state
    assert (one - unblocked).abs().max() <= 1e-10


def test_the_blocked_kernels_with_one_block_equal_the_unblocked_ones():
    """The blocked code path itself (statistics, both products, trace) with ``nb = 1`` in float64."""
    gen = torch.Generator().manual_seed(3)
    V = torch.randn(2, 9, 7, generator=gen, dtype=torch.float64)
    A = torch.randn(2, 9, 9, generator=gen, dtype=torch.float64)
    C = torch.randn(2, 7, 7, generator=gen, dtype=torch.float64)
    full_l, full_r = Side("full", 9), Side("full", 7)
    one_l, one_r = Side("blocks", 9, 1, 9), Side("blocks", 7, 1, 7)
    L0, R0 = A @ A.mT, C @ C.mT
    L1, R1 = L0.clone().unsqueeze(1), R0.clone().unsqueeze(1)
    left_statistics_ema_(L0, V, full_l, 0.9)
    right_statistics_ema_(R0, V, full_r, 0.9)
    left_statistics_ema_(L1, V, one_l, 0.9)
    right_statistics_ema_(R1, V, one_r, 0.9)
    assert (L1.squeeze(1) - L0).abs().max() <= 1e-10 and (R1.squeeze(1) - R0).abs().max() <= 1e-10
    D0 = right_mul(left_mul(A, V, full_l), C, full_r)
    D1 = right_mul(left_mul(A.unsqueeze(1), V, one_l), C.unsqueeze(1), one_r)
    assert (D1 - D0).abs().max() <= 1e-10
    assert (trace(L1) - trace(L0)).abs().max() <= 1e-10


def test_blocked_kernels_into_buffers_equal_dense_block_diagonal_products():
    """Several blocks (padded): the products into ``out=`` buffers, the right statistics through the
    block-major ``work`` buffer and through strided views all equal the dense block-diagonal products."""
    gen = torch.Generator().manual_seed(4)
    left, right = side_layout(9, None, 4), side_layout(7, None, 3)  # 3 blocks of 3; 3 blocks of 3 (9)
    X = torch.zeros(2, left.padded, right.padded, dtype=torch.float64)
    X[:, :9, :7] = torch.randn(2, 9, 7, generator=gen, dtype=torch.float64)
    A = torch.randn(2, left.blocks, left.block, left.block, generator=gen, dtype=torch.float64)
    C = torch.randn(2, right.blocks, right.block, right.block, generator=gen, dtype=torch.float64)
    dense_a = torch.stack([block_diagonal(a) for a in A])
    dense_c = torch.stack([block_diagonal(c) for c in C])
    out = torch.full_like(X, float("nan"))
    assert (left_mul(A, X, left, out=out) - dense_a @ X).abs().max() <= 1e-12
    assert (right_mul(X, C, right, out=out) - X @ dense_c).abs().max() <= 1e-12
    R0 = torch.randn(2, right.blocks, right.block, right.block, generator=gen, dtype=torch.float64)
    R1, R2 = R0.clone(), R0.clone()
    right_statistics_ema_(R1, X, right, 0.9, work=torch.full_like(X, float("nan")))
    right_statistics_ema_(R2, X, right, 0.9)
    ref = 0.9 * torch.stack([block_diagonal(r) for r in R0]) + 0.1 * X.mT @ X
    mask = torch.tensor(_block_mask(right.padded, 3), dtype=torch.float64)
    for R in (R1, R2):
        assert (torch.stack([block_diagonal(r) for r in R]) - ref * mask).abs().max() <= 1e-12


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
@pytest.mark.parametrize("max_block", [2, 4])
def test_blocked_kron_equals_a_brute_force_block_diagonal_reference(eps_mode, max_block):
    W0, xs, ys = _data()
    ours, opt, W = _ours(W0, xs, ys, eps_mode=eps_mode, max_block=max_block, **KW)
    ref = _reference(
        W0, xs, ys, lr=0.05, alpha=0.5, eps=1e-3, betas=(0.9, 0.95), eps_mode=eps_mode, max_block=max_block
    )
    assert (ours - ref).abs().max() <= 1e-10
    left = side_layout(9, None, max_block)
    assert opt.state[W]["kron_L"].shape == (left.blocks, left.block, left.block)


def test_blocked_root_equals_the_root_of_the_block_diagonal_matrix():
    """The cached root of the blocked factor is the dense root of the masked (block-diagonal) statistic."""
    W0, xs, ys = _data()
    _, opt, W = _ours(W0, xs, ys, max_block=4, precondition_every=1, **KW)
    st = opt.state[W]
    L = block_diagonal(st["kron_L"])[:9, :9].numpy()
    assert np.allclose(L, L * _block_mask(9, 4), atol=0)  # zero off the blocks
    bc2 = 1 - 0.95 ** len(xs)
    expected = _sym_power(L / bc2, -0.25, 1e-3)
    got = block_diagonal(st["kron_Linv"])[:9, :9].numpy()
    assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max()


def test_blocked_kron_resumes_from_a_state_dict_and_reports_its_diagonal():
    W0, xs, ys = _data()
    kw = dict(KW, max_block=4, precondition_every=2)
    full, _, _ = _ours(W0, xs, ys, **kw)
    half, opt, W = _ours(W0, xs[:4], ys[:4], **kw)
    W2 = nn.Parameter(half.clone())
    opt2 = CovariantGD([W2], **kw)
    opt2.load_state_dict(opt.state_dict())
    for x, y in zip(xs[4:], ys[4:], strict=True):
        opt2.zero_grad()
        ((x @ W2.T - y) ** 2).mean().backward()
        opt2.step()
    assert (W2.detach() - full).abs().max() <= 1e-12
    d = opt2.second_moment_diagonal(W2)
    st, bc2 = opt2.state[W2], 1 - 0.95 ** len(xs)
    Ld = np.diag(_sym_power(block_diagonal(st["kron_L"])[:9, :9].numpy() / bc2, 0.5, 0.0))
    Rd = np.diag(_sym_power(block_diagonal(st["kron_R"])[:7, :7].numpy() / bc2, 0.5, 0.0))
    assert d.shape == (9, 7) and np.allclose(d.numpy(), np.outer(Ld, Rd), rtol=1e-8, atol=1e-14)


def test_blocked_kron_handles_conv_weights_and_layers_out_of_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5), nn.Linear(5, 5))
    opt = CovariantGD(model.parameters(), lr=0.01, structure="kron", max_block=8)
    x = torch.randn(4, 3, 6, 6)
    for step in range(3):
        opt.zero_grad()
        out = model(x) if step != 1 else model[2](model[1](model[0](x)))  # last layer without a grad once
        out.square().mean().backward()
        opt.step()
    assert opt.state[model[0].weight]["kron_R"].shape == (4, 7, 7)  # 27 = 4 blocks of 7 (padded to 28)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_float32_roots_match_float64_roots():
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(6, 32, 64, generator=gen, dtype=torch.float64)
    X = G @ G.mT / 64
    ref = torch.stack([torch.tensor(_sym_power(x.numpy(), -0.25, 1e-3)) for x in X])
    got = inverse_root_float32(X, 0.25, 1e-3)
    assert got.dtype == torch.float64
    assert float((got - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(max_block=0), r"max_block=0 is out of range; allowed: 1 <= max_block"),
        (dict(root_dtype="float16"), r"root_dtype='float16'.*allowed: 'float64', 'float32'"),
    ],
)
def test_bad_block_options_are_refused_in_one_line(kw, message):
    with pytest.raises(LearndynValueError, match=message):
        CovariantGD([nn.Parameter(torch.zeros(2, 2))], structure="kron", **kw)


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_amortised_roots_refresh_the_eigenbasis_by_one_power_qr_step(eps_mode):
    """``eigh_every=3``: roots 1, 4, 7 … from ``eigh``, the others from ``Q ← qr(L̂ Q)`` and the Rayleigh
    quotients ``diag(Qᵀ L̂ Q)``; brute force on the dense block-diagonal statistics (blocks of 3 of 6)."""
    m = n = 6
    W0, xs, ys = _data(m, n, batch=16, steps=8)
    kw = dict(KW, eps_mode=eps_mode, max_block=3, precondition_every=1, eigh_every=3)
    ours, _, _ = _ours(W0, xs, ys, **kw)
    b1, b2, eps, alpha, lr = 0.9, 0.95, 1e-3, 0.5, 0.05
    mask = _block_mask(m, 3)
    W = W0.numpy().copy()
    M, L, R = np.zeros_like(W), np.zeros((m, m)), np.zeros((n, n))
    Q: dict[str, np.ndarray] = {}
    for t, (x, y) in enumerate(zip(xs, ys, strict=True), start=1):
        Wt = torch.tensor(W, requires_grad=True)
        ((x @ Wt.T - y) ** 2).mean().backward()
        G = Wt.grad.numpy()
        M = b1 * M + (1 - b1) * G
        L = b2 * L + (1 - b2) * G @ G.T
        R = b2 * R + (1 - b2) * G.T @ G
        spectra = {}
        for side, X in (("L", L * mask / (1 - b2**t)), ("R", R * mask / (1 - b2**t))):
            if (t - 1) % 3 == 0:
                lam, Q[side] = np.linalg.eigh(X)
            else:
                Q[side] = np.linalg.qr(X @ Q[side])[0]
                lam = np.diag(Q[side].T @ X @ Q[side])
            spectra[side] = np.clip(lam, 0, None)
        Fh = M / (1 - b1**t)
        QL, QR = Q["L"], Q["R"]
        if eps_mode == "inside":
            D = (
                (QL * (spectra["L"] + eps) ** (-alpha / 2))
                @ QL.T
                @ Fh
                @ (QR * (spectra["R"] + eps) ** (-alpha / 2))
                @ QR.T
            )
        else:
            C = 1 / (np.outer(spectra["L"] ** (alpha / 2), spectra["R"] ** (alpha / 2)) + eps)
            D = QL @ ((QL.T @ Fh @ QR) * C) @ QR.T
        W = W - lr * D
    assert (ours - torch.tensor(W)).abs().max() <= 1e-10
    plain, _, _ = _ours(W0, xs, ys, **dict(kw, eigh_every=1))
    assert (plain - ours).abs().max() > 1e-8  # the refresh is not a full decomposition


def test_blocked_kron_steps_complex_parameters_as_their_real_views():
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(10, 5, dtype=torch.complex128))
    opt = CovariantGD([W], lr=1e-2, structure="kron", max_block=4)
    for _ in range(2):
        opt.zero_grad()
        (W.abs() ** 2).sum().backward()
        opt.step()
    assert opt.state[W]["kron_R"].shape == (3, 4, 4)  # the real view is (10, 10): 3 blocks of 4
    assert opt.second_moment_diagonal(W).shape == (10, 5, 2)


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
@pytest.mark.parametrize("first_moment", [True, False])
def test_buckets_sharing_scratch_buffers_equal_separate_optimizers(eps_mode, first_moment):
    """One optimizer over a bucket of three padded same-shaped weights, a larger and a smaller weight (the
    shared scratch buffers grown, then reused across buckets) equals one optimizer per weight; after the
    first step the scratch buffers are never reallocated."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(9, 7), (9, 7), (9, 7), (17, 11), (3, 5)]
    W0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    xs = [[torch.randn(4, s[1], generator=gen, dtype=torch.float64) for s in shapes] for _ in range(6)]
    kw = dict(KW, eps_mode=eps_mode, first_moment=first_moment, max_block=4, precondition_every=2)
    kw.update(stale_damping="trace", weight_decay=0.1, precondition_warmup=0)

    def loss(Ws, x):
        return sum(((xi @ W.T).tanh() ** 2).mean() for W, xi in zip(Ws, x, strict=True))

    joint = [nn.Parameter(w.clone()) for w in W0]
    alone = [nn.Parameter(w.clone()) for w in W0]
    opt, opts = CovariantGD(joint, **kw), [CovariantGD([w], **kw) for w in alone]
    pointers = None
    for x in xs:
        opt.zero_grad()
        loss(joint, x).backward()
        opt.step()
        for o in opts:
            o.zero_grad()
        loss(alone, x).backward()
        for o in opts:
            o.step()
        scratch = {k: v.data_ptr() for k, v in opt._structure_cache["kron"]["scratch"].items()}
        assert pointers is None or scratch == pointers
        pointers = scratch
    for a, b in zip(joint, alone, strict=True):
        assert (a - b).abs().max() <= 1e-12
