"""kron / block / full / lowrank against brute-force references: explicit P×P matrices, numpy eigh, powers."""

import numpy as np
import pytest
import torch
from torch import nn

from learndyn.optim import CovariantGD

# ----------------------------------------------------------------------------- independent reference


def _sym_fn(A: np.ndarray, fn) -> np.ndarray:
    lam, V = np.linalg.eigh((A + A.T) / 2)
    return (V * fn(np.clip(lam, 0, None))) @ V.T


def _inv_metric(A: np.ndarray, alpha: float, eps: float, mode: str) -> np.ndarray:
    """Explicit g⁻¹ for g = (A + εI)^α (inside) or A^α + εI (outside)."""
    if mode == "inside":
        return _sym_fn(A, lambda lam: (lam + eps) ** -alpha)
    return np.linalg.inv(_sym_fn(A, lambda lam: lam**alpha) + eps * np.eye(len(A)))


class Reference:
    """Covariant GD written with explicit matrices (no shared code with the package)."""

    def __init__(
        self,
        params,
        structure,
        lr,
        alpha,
        betas=(0.9, 0.99),
        eps=1e-6,
        eps_mode="inside",
        moment="second",
        first_moment=True,
        precondition_every=1,
        max_factor_dim=None,
        precondition_warmup=100,
        stale_damping="trace",
    ):
        self.params = list(params)
        self.structure, self.lr, self.alpha, (self.b1, self.b2) = structure, lr, alpha, betas
        self.eps, self.mode, self.moment, self.first = eps, eps_mode, moment, first_moment
        self.k, self.mfd, self.t = precondition_every, max_factor_dim, 0
        self.warmup, self.damping = precondition_warmup, stale_damping
        self.m = [np.zeros(p.numel()) for p in self.params]
        self.S: dict = {}
        self.M: dict = {}
        self.root: dict = {}  # block/full: (Ŝ₀, t₀) of the cached root

    def _matrix_root(self, key, S_hat, new):
        """g⁻¹ of block/full: fresh on root steps; on stale steps the cached one, or with
        stale_damping='trace' the fresh formula applied to c Ŝ₀ + τ I with c = β^{t−t₀}(1−β^{t₀})/(1−β^t),
        τ = tr(Ŝ_t − c Ŝ₀) (an upper bound of Ŝ_t)."""
        a, eps, mode = self.alpha, self.eps, self.mode
        if new:
            self.root[key] = (S_hat.copy(), self.t)
            self.M[key] = _inv_metric(S_hat, a, eps, mode)
        elif self.damping == "trace" and a > 0:
            S0, t0 = self.root[key]
            c = self.b2 ** (self.t - t0) * (1 - self.b2**t0) / (1 - self.b2**self.t)
            tau = max(0.0, np.trace(S_hat - c * S0))
            self.M[key] = _inv_metric(c * S0 + tau * np.eye(len(S0)), a, eps, mode)
        return self.M[key]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _ema(self, key, X):
        self.S[key] = self.b2 * self.S.get(key, 0 * X) + (1 - self.b2) * X

    def _kron_side(self, X, k):
        return np.diag(np.diag(X)) if self.mfd is not None and k > self.mfd else X

    @torch.no_grad()
    def step(self):
        self.t += 1
        g = [p.grad.numpy().ravel().copy() for p in self.params]
        for i, gi in enumerate(g):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * gi
        v = g if self.moment == "second" else [gi - mi for gi, mi in zip(g, self.m, strict=True)]
        bc1, bc2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        F = [mi / bc1 for mi in self.m] if self.first else g
        new = self.t <= self.warmup or (self.t - 1) % self.k == 0
        a, eps, mode = self.alpha, self.eps, self.mode
        if self.structure == "full":
            vv, FF = np.concatenate(v), np.concatenate(F)
            self._ema("full", np.outer(vv, vv))
            M = self._matrix_root("full", self.S["full"] / bc2, new)
            d = np.split(M @ FF, np.cumsum([p.numel() for p in self.params])[:-1])
        else:
            d = []
            for i, p in enumerate(self.params):
                if self.structure == "block":
                    self._ema(i, np.outer(v[i], v[i]))
                    self._matrix_root(i, self.S[i] / bc2, new)
                elif p.ndim >= 2:  # kron
                    m_, n_ = p.shape[0], p.numel() // p.shape[0]
                    V = v[i].reshape(m_, n_)
                    self._ema((i, "L"), self._kron_side(V @ V.T, m_))
                    self._ema((i, "R"), self._kron_side(V.T @ V, n_))
                    if new:
                        L, R = self.S[(i, "L")] / bc2, self.S[(i, "R")] / bc2
                        if mode == "inside":
                            self.M[i] = np.kron(
                                _inv_metric(L, a / 2, eps, mode), _inv_metric(R, a / 2, eps, mode)
                            )
                        else:
                            K = np.kron(
                                _sym_fn(L, lambda x: x ** (a / 2)), _sym_fn(R, lambda x: x ** (a / 2))
                            )
                            self.M[i] = np.linalg.inv(K + eps * np.eye(len(K)))
                        self.root[i] = (L, R, self.t)
                    elif self.damping == "trace" and a > 0:
                        # stale: |d| ≤ G |F|, G the largest gain of the metric of the bounds
                        # X̂ ⪯ c X̂₀ + τ_X I (c = β^{t−t₀}(1−β^{t₀})/(1−β^t), τ_X = tr(X̂ − c X̂₀))
                        L0, R0, t0 = self.root[i]
                        c = self.b2 ** (self.t - t0) * (1 - self.b2**t0) / bc2
                        tl = max(0.0, np.trace(self.S[(i, "L")] / bc2 - c * L0))
                        tr = max(0.0, np.trace(self.S[(i, "R")] / bc2 - c * R0))
                        G = (
                            ((tl + eps) * (tr + eps)) ** (-a / 2)
                            if mode == "inside"
                            else 1 / ((tl * tr) ** (a / 2) + eps)
                        )
                        di = self.M[i] @ F[i]
                        d.append(di * min(1.0, G * np.linalg.norm(F[i]) / np.linalg.norm(di)))
                        continue
                else:  # kron's diagonal fallback for vectors
                    self._ema(i, np.diag(v[i] ** 2))
                    self.M[i] = _inv_metric(self.S[i] / bc2, a, eps, mode)
                d.append(self.M[i] @ F[i])
        for p, di in zip(self.params, d, strict=True):
            p.sub_(self.lr * torch.from_numpy(di).reshape(p.shape))


# ------------------------------------------------------------------------------------------ harness


def _mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _twins():
    """Two same-shaped matrix layers (batched together) plus a differently shaped one."""
    return nn.Sequential(
        nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2, bias=False)
    ).double()


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.head = nn.Linear(27, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x.reshape(-1, 2, 4, 4))).flatten(1))


def _conv():
    return _Conv().double()


IN_DIM = {_mlp: 3, _twins: 4, _conv: 32}


def _trajectory(model_fn, make_opt, steps=12):
    torch.manual_seed(5)
    model = model_fn()
    opt = make_opt(model.parameters())
    g = torch.Generator().manual_seed(6)
    X = torch.randn(64, IN_DIM[model_fn], generator=g, dtype=torch.float64)
    Y = torch.randn(64, 2, generator=g, dtype=torch.float64)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, 64, (8,), generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(X[idx]), Y[idx]).backward()
        opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(out), opt, model


def _close(a, b, tol):
    err = (a - b).abs().max().item()
    assert err < tol, f"max |Δθ| = {err:.3g}"
    assert (a[-1] - a[0]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("structure", ["full", "block", "kron"])
@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
@pytest.mark.parametrize("model_fn", [_mlp, _twins])
def test_against_brute_force(structure, alpha, eps_mode, model_fn):
    # α = 1 with ε = 1e-4 takes O(1) steps along barely-seen directions and the trajectories separate
    # chaotically from round-off (1e-13 → 1e-9 in 12 steps); ε = 1e-2 keeps the comparison about the math
    eps = 1e-2 if alpha == 1.0 else 1e-4
    kw = dict(lr=0.05, alpha=alpha, betas=(0.9, 0.99), eps=eps, eps_mode=eps_mode)
    ours, _, _ = _trajectory(model_fn, lambda ps: CovariantGD(ps, structure=structure, **kw))
    ref, _, _ = _trajectory(model_fn, lambda ps: Reference(ps, structure, **kw))
    _close(ours, ref, 1e-9)


@pytest.mark.parametrize("structure", ["full", "block", "kron"])
def test_covariance_moment_against_brute_force(structure):
    kw = dict(lr=0.05, alpha=0.5, betas=(0.8, 0.95), eps=1e-4, moment="covariance")
    ours, _, _ = _trajectory(_mlp, lambda ps: CovariantGD(ps, structure=structure, **kw))
    ref, _, _ = _trajectory(_mlp, lambda ps: Reference(ps, structure, **kw))
    _close(ours, ref, 1e-9)


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_kron_conv_weights_reshaped_to_out_by_in_k_k(eps_mode):
    kw = dict(lr=0.05, alpha=0.5, eps=1e-4, betas=(0.9, 0.99), eps_mode=eps_mode)
    ours, opt, model = _trajectory(_conv, lambda ps: CovariantGD(ps, structure="kron", **kw))
    ref, _, _ = _trajectory(_conv, lambda ps: Reference(ps, "kron", **kw))
    _close(ours, ref, 1e-9)
    st = opt.state[model.conv.weight]
    assert st["kron_L"].shape == (3, 3) and st["kron_R"].shape == (8, 8)


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_kron_max_factor_dim_falls_back_to_a_diagonal_side(eps_mode):
    kw = dict(lr=0.05, alpha=0.5, eps=1e-4, betas=(0.9, 0.99), eps_mode=eps_mode, max_factor_dim=4)
    ours, opt, model = _trajectory(_conv, lambda ps: CovariantGD(ps, structure="kron", **kw))
    ref, _, _ = _trajectory(_conv, lambda ps: Reference(ps, "kron", **kw))
    _close(ours, ref, 1e-9)
    assert opt.state[model.conv.weight]["kron_R"].shape == (8,)  # 8 > 4: diagonal
    assert opt.state[model.head.weight]["kron_R"].shape == (27,)


def test_kron_batches_same_shaped_layers_like_separate_ones():
    """Batching same-shaped factors into one eigh gives the per-layer result."""
    ours, _, _ = _trajectory(_twins, lambda ps: CovariantGD(ps, lr=0.05, structure="kron", eps=1e-4))
    sep, _, _ = _trajectory(
        _twins, lambda ps: CovariantGD([{"params": [p]} for p in ps], lr=0.05, structure="kron", eps=1e-4)
    )
    _close(ours, sep, 1e-12)


@pytest.mark.parametrize("structure", ["full", "kron", "block"])
@pytest.mark.parametrize(("warmup", "damping"), [(0, "none"), (0, "trace"), (4, "none"), (4, "trace")])
def test_precondition_every_reuses_roots(structure, warmup, damping):
    """Roots on steps t ≤ warmup and t ≡ 1 (mod 3); stale steps reuse them, bounded by the trace for
    block/full with stale_damping='trace' (kron ignores stale_damping)."""
    kw = dict(lr=0.05, alpha=0.5, eps=1e-4, betas=(0.9, 0.99))
    kw.update(precondition_warmup=warmup, stale_damping=damping)
    ours, _, _ = _trajectory(
        _mlp, lambda ps: CovariantGD(ps, structure=structure, precondition_every=3, **kw)
    )
    ref, _, _ = _trajectory(_mlp, lambda ps: Reference(ps, structure, precondition_every=3, **kw))
    every, _, _ = _trajectory(_mlp, lambda ps: CovariantGD(ps, structure=structure, **kw))
    _close(ours, ref, 1e-9)
    assert (ours - every).abs().max() > 1e-6  # reuse really changes the trajectory
    n_equal = max(warmup, 1)  # …but not on the steps where both compute the root (1..4, then 7: 5 is stale)
    torch.testing.assert_close(ours[:n_equal], every[:n_equal], rtol=0, atol=1e-12)


@pytest.mark.parametrize("structure", ["full", "kron", "block", "lowrank"])
def test_precondition_warmup_recomputes_every_step(structure):
    """During the warm-up a cached root is never reused: precondition_every has no effect on those steps."""
    kw = dict(lr=0.05, alpha=0.75, eps=1e-4, betas=(0.9, 0.99), rank=3)

    def run(**extra):
        return _trajectory(_mlp, lambda ps: CovariantGD(ps, structure=structure, **kw, **extra))[0]

    every = run()
    torch.testing.assert_close(run(precondition_every=5, precondition_warmup=12), every, rtol=0, atol=1e-12)
    stale = run(precondition_every=5, precondition_warmup=0)
    assert (stale - every).abs().max() > 1e-6


@pytest.mark.parametrize("structure", ["full", "block"])
@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_stale_damping_is_the_reference_bound(structure, eps_mode):
    """stale_damping='trace' against the explicit formula (c Ŝ₀ + τ I) at α = 1 and ¼, both eps modes."""
    for alpha in (1.0, 0.25):
        kw = dict(lr=0.02, alpha=alpha, eps=1e-4, eps_mode=eps_mode, betas=(0.9, 0.99), precondition_warmup=2)
        kw.update(structure=structure, precondition_every=4)
        ours, _, _ = _trajectory(_twins, lambda ps, kw=kw: CovariantGD(ps, **kw))
        ref, _, _ = _trajectory(_twins, lambda ps, kw=kw: Reference(ps, **kw))
        _close(ours, ref, 1e-9)


def test_full_equals_block_for_a_single_parameter_tensor():
    def model_fn():
        return nn.Sequential(nn.Linear(3, 2, bias=False)).double()

    IN_DIM[model_fn] = 3
    kw = dict(lr=0.05, alpha=0.5, eps=1e-4, betas=(0.9, 0.99))
    full, _, _ = _trajectory(model_fn, lambda ps: CovariantGD(ps, structure="full", **kw))
    block, _, _ = _trajectory(model_fn, lambda ps: CovariantGD(ps, structure="block", **kw))
    _close(full, block, 1e-12)


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_lowrank_with_rank_at_least_P_equals_full(eps_mode, alpha):
    kw = dict(lr=0.05, alpha=alpha, eps=1e-4, eps_mode=eps_mode)
    full, _, _ = _trajectory(_mlp, lambda ps: CovariantGD(ps, structure="full", **kw))
    low, opt, model = _trajectory(_mlp, lambda ps: CovariantGD(ps, structure="lowrank", rank=100, **kw))
    _close(low, full, 1e-9)
    assert opt.state[next(model.parameters())]["lowrank_U"].shape == (26, 26)  # r = min(rank, P)


def test_lowrank_update_equals_explicit_matrix_from_its_factors():
    """g⁻¹ = U h(Λ̂) Uᵀ + Π h(ρ̂) Π, ρ = max(d − diag(UΛUᵀ), 0), Π = I − UUᵀ, built as a P×P matrix."""
    alpha, eps, lr, (b1, b2) = 0.5, 1e-3, 0.05, (0.9, 0.99)
    torch.manual_seed(5)
    model = _mlp()
    params = list(model.parameters())
    opt = CovariantGD(params, lr=lr, alpha=alpha, eps=eps, betas=(b1, b2), structure="lowrank", rank=3)
    g = torch.Generator().manual_seed(6)
    X, Y = (
        torch.randn(64, 3, generator=g, dtype=torch.float64),
        torch.randn(64, 2, generator=g, dtype=torch.float64),
    )
    for t in range(1, 9):
        idx = torch.randint(0, 64, (8,), generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(X[idx]), Y[idx]).backward()
        before = torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()
        opt.step()
        after = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
        st = opt.state[params[0]]
        U, lam, d = (st[k].numpy() for k in ("lowrank_U", "lowrank_lam", "lowrank_diag"))
        F = np.concatenate([opt.state[p]["exp_avg"].numpy().ravel() for p in params]) / (1 - b1**t)
        bc2 = 1 - b2**t
        assert U.shape == (26, 3)
        np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-12)
        rho = np.clip(d - (U**2 * lam).sum(1), 0, None) / bc2
        Pi = np.eye(26) - U @ U.T
        M = (U * (lam / bc2 + eps) ** -alpha) @ U.T + Pi @ np.diag((rho + eps) ** -alpha) @ Pi
        np.testing.assert_allclose(after - before, -lr * M @ F, rtol=1e-9, atol=1e-12)
        # the modelled diagonal is what the probes read
        got = torch.cat([opt.second_moment_diagonal(p).reshape(-1) for p in params]).numpy()
        np.testing.assert_allclose(got, np.maximum(d, (U**2 * lam).sum(1)) / bc2, rtol=1e-12)


def test_lowrank_tracks_S_exactly_when_gradients_span_rank_dims():
    """Gradients confined to a k-dim subspace: the rank-k factorisation is the explicit EMA of ggᵀ."""
    P, k, b2 = 30, 4, 0.9
    p = nn.Parameter(torch.zeros(P, dtype=torch.float64))
    opt = CovariantGD([p], lr=0.0, structure="lowrank", rank=k, betas=(0.5, b2), bias_correction=False)
    B = torch.randn(P, k, dtype=torch.float64)
    S = torch.zeros(P, P, dtype=torch.float64)
    for _ in range(10):
        gvec = B @ torch.randn(k, dtype=torch.float64)
        p.grad = gvec.clone()
        S = b2 * S + (1 - b2) * torch.outer(gvec, gvec)
        opt.step()
    st = opt.state[p]
    low = st["lowrank_U"] @ torch.diag(st["lowrank_lam"]) @ st["lowrank_U"].T
    assert (low - S).abs().max() / S.abs().max() < 1e-12
    torch.testing.assert_close(opt.second_moment_diagonal(p), S.diagonal(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("structure", ["kron", "block", "full"])
def test_newton_root_matches_eigh_in_the_optimizer(structure):
    kw = dict(lr=0.05, alpha=0.5, eps=1e-4, structure=structure)
    eigh, _, _ = _trajectory(_twins, lambda ps: CovariantGD(ps, **kw))
    newton, _, _ = _trajectory(_twins, lambda ps: CovariantGD(ps, root_method="newton", **kw))
    _close(newton, eigh, 1e-9)


@pytest.mark.parametrize("structure", ["diag", "kron", "block", "full", "lowrank"])
def test_second_moment_diagonal(structure):
    _, opt, model = _trajectory(_conv, lambda ps: CovariantGD(ps, lr=0.05, structure=structure, rank=200), 6)
    params = list(model.parameters())
    bc2 = 1 - 0.999**6
    for p in params:
        d = opt.second_moment_diagonal(p)
        assert d.shape == p.shape and (d >= 0).all() and d.abs().max() > 0
        st = opt.state[p]
        if structure == "kron" and p.ndim >= 2:
            L, R = st["kron_L"].numpy() / bc2, st["kron_R"].numpy() / bc2
            K = np.kron(_sym_fn(L, np.sqrt), _sym_fn(R, np.sqrt))  # S ≈ L^{1/2} ⊗ R^{1/2}
            # √ of the (round-off sized) null eigenvalues of rank-deficient factors limits this to ~1e-8
            np.testing.assert_allclose(d.numpy().ravel(), np.diag(K), rtol=1e-6, atol=1e-12)
    if structure in ("full", "lowrank"):
        # lowrank with rank ≥ P keeps S exactly: both read the same diagonal as full
        _, opt_full, model_full = _trajectory(_conv, lambda ps: CovariantGD(ps, lr=0.05, structure="full"), 6)
        for p, q in zip(params, model_full.parameters(), strict=True):
            torch.testing.assert_close(opt.second_moment_diagonal(p), opt_full.second_moment_diagonal(q))


def test_second_moment_diagonal_is_diag_S_for_block_and_full():
    """diag(S) of block/full equals the elementwise EMA of g² that 'diag' tracks (same gradients)."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    opts = {s: CovariantGD([p], lr=0.0, structure=s) for s in ("diag", "block", "full", "kron")}
    for _ in range(5):
        p.grad = torch.randn(3, 2, dtype=torch.float64)
        for o in opts.values():
            o.step()
    ref = opts["diag"].second_moment_diagonal(p)
    for s in ("block", "full"):
        torch.testing.assert_close(opts[s].second_moment_diagonal(p), ref, rtol=1e-12, atol=0)
    assert opts["kron"].second_moment_diagonal(p).shape == p.shape


def test_float32_parameters_use_float64_roots():
    """float32 kron/full trajectories stay within float32 round-off of the float64 ones."""
    kw = dict(lr=0.05, alpha=0.5, eps=1e-4, betas=(0.9, 0.99))
    for structure in ("kron", "full", "lowrank"):
        ref, _, _ = _trajectory(_mlp, lambda ps, s=structure: CovariantGD(ps, structure=s, **kw))

        def f32():
            return _mlp().float()

        IN_DIM[f32] = 3
        torch.manual_seed(5)
        model = f32()
        opt = CovariantGD(model.parameters(), structure=structure, **kw)
        g = torch.Generator().manual_seed(6)
        X = torch.randn(64, 3, generator=g, dtype=torch.float64)
        Y = torch.randn(64, 2, generator=g, dtype=torch.float64)
        for _ in range(12):
            idx = torch.randint(0, 64, (8,), generator=g)
            opt.zero_grad()
            nn.functional.mse_loss(model(X[idx].float()), Y[idx].float()).backward()
            opt.step()
        last = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
        assert all(
            s.dtype == torch.float32 for st in opt.state.values() for s in st.values() if torch.is_tensor(s)
        )
        assert (last - ref[-1]).abs().max() < 1e-4, structure
