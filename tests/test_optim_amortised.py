"""Amortised statistics (``statistics_every=k``) and the stacked kron buffers.

The reference below is written with explicit numpy matrices and shares no code with the package: the
matrix statistics are updated only on steps ``1, k+1, 2k+1, …`` as ``S ← βᵏ S + (1−βᵏ) X`` and
bias-corrected by ``1 − β^{k·u}`` after ``u`` updates; roots are recomputed on every ``precondition_every``
step (the optimizer may skip recomputes whose statistics did not change -- the result must be the same).
"""

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from learndyn.optim import CovariantGD
from learndyn.optim import functional as Fn
from learndyn.validation import LearndynValueError


def _sym_fn(A, fn):
    lam, V = np.linalg.eigh((A + A.T) / 2)
    return (V * fn(np.clip(lam, 0, None))) @ V.T


def _inv_metric(A, alpha, eps, mode, eps_root=0.0):
    if mode == "inside":
        return _sym_fn(A, lambda lam: (lam + eps_root + eps) ** -alpha)
    return np.linalg.inv(_sym_fn(A, lambda lam: (lam + eps_root) ** alpha) + eps * np.eye(len(A)))


class AmortisedReference:
    """Explicit-matrix covariant GD whose matrix statistics are updated every ``k`` steps."""

    def __init__(
        self,
        params,
        structure,
        lr,
        alpha=0.5,
        betas=(0.9, 0.99),
        eps=1e-4,
        eps_mode="inside",
        statistics_every=1,
        precondition_every=1,
        max_factor_dim=None,
        eps_root=0.0,
        precondition_warmup=100,
        stale_damping="trace",
    ):
        self.warmup, self.damping = precondition_warmup, stale_damping
        self.root = {}  # block/full: (Ŝ₀, u₀) of the cached root
        self.params = list(params)
        self.structure, self.lr, self.alpha, (self.b1, self.b2) = structure, lr, alpha, betas
        self.eps, self.mode, self.k, self.p, self.mfd = (
            eps,
            eps_mode,
            statistics_every,
            precondition_every,
            max_factor_dim,
        )
        self.t, self.u, self.eps_root = 0, 0, eps_root
        self.m = [np.zeros(p.numel()) for p in self.params]
        self.S, self.M = {}, {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _ema(self, key, X, beta):
        self.S[key] = beta * self.S.get(key, 0 * X) + (1 - beta) * X

    @torch.no_grad()
    def step(self):
        self.t += 1
        g = [p.grad.numpy().ravel().copy() for p in self.params]
        for i, gi in enumerate(g):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * gi
        F = [mi / (1 - self.b1**self.t) for mi in self.m]
        stats = (self.t - 1) % self.k == 0
        if stats:
            self.u += 1
        bk = self.b2**self.k
        bc2 = 1 - bk**self.u  # matrix statistics: u updates of decay β^k
        new = self.t <= self.warmup or (self.t - 1) % self.p == 0
        a, eps, mode, er = self.alpha, self.eps, self.mode, self.eps_root

        def matrix_root(key):
            """Fresh on root steps; stale otherwise, with 'trace' the fresh formula applied to the upper bound
            c Ŝ₀ + τ I of Ŝ (c = β^{k(u−u₀)}(1−β^{k u₀})/(1−β^{k u}), τ = tr(Ŝ − c Ŝ₀))."""
            S_hat = self.S[key] / bc2
            if new:
                self.root[key] = (S_hat.copy(), self.u)
                self.M[key] = _inv_metric(S_hat, a, eps, mode, er)
            elif self.damping == "trace" and a > 0:
                S0, u0 = self.root[key]
                c = bk ** (self.u - u0) * (1 - bk**u0) / bc2
                tau = max(0.0, np.trace(S_hat - c * S0))
                self.M[key] = _inv_metric(c * S0 + tau * np.eye(len(S0)), a, eps, mode, er)
            return self.M[key]

        if self.structure == "full":
            if stats:
                vv = np.concatenate(g)
                self._ema("full", np.outer(vv, vv), bk)
            M = matrix_root("full")
            d = np.split(M @ np.concatenate(F), np.cumsum([p.numel() for p in self.params])[:-1])
        else:
            d = []
            for i, p in enumerate(self.params):
                if self.structure == "block":
                    if stats:
                        self._ema(i, np.outer(g[i], g[i]), bk)
                    matrix_root(i)
                elif p.ndim >= 2:  # kron
                    m_, n_ = p.shape[0], p.numel() // p.shape[0]
                    V = g[i].reshape(m_, n_)

                    def side(X, k):
                        return np.diag(np.diag(X)) if self.mfd is not None and k > self.mfd else X

                    if stats:
                        self._ema((i, "L"), side(V @ V.T, m_), bk)
                        self._ema((i, "R"), side(V.T @ V, n_), bk)
                    if new:
                        L, R = self.S[(i, "L")] / bc2, self.S[(i, "R")] / bc2
                        if mode == "inside":
                            self.M[i] = np.kron(
                                _inv_metric(L, a / 2, eps, mode, er), _inv_metric(R, a / 2, eps, mode, er)
                            )
                        else:
                            K = np.kron(
                                _sym_fn(L, lambda x: (x + er) ** (a / 2)),
                                _sym_fn(R, lambda x: (x + er) ** (a / 2)),
                            )
                            self.M[i] = np.linalg.inv(K + eps * np.eye(len(K)))
                        self.root[i] = (L, R, self.u)
                    elif self.damping == "trace" and a > 0 and self.u != self.root[i][2]:
                        # stale: |d| ≤ G |F|, G the largest gain of the metric of the bounds
                        # X̂ ⪯ c X̂₀ + τ_X I (c = β^{k(u−u₀)}(1−β^{k u₀})/(1−β^{k u}), τ_X = tr(X̂ − c X̂₀))
                        L0, R0, u0 = self.root[i]
                        c = bk ** (self.u - u0) * (1 - bk**u0) / bc2
                        tl = max(0.0, np.trace(self.S[(i, "L")] / bc2 - c * L0)) + er
                        tr = max(0.0, np.trace(self.S[(i, "R")] / bc2 - c * R0)) + er
                        G = (
                            ((tl + eps) * (tr + eps)) ** (-a / 2)
                            if mode == "inside"
                            else 1 / ((tl * tr) ** (a / 2) + eps)
                        )
                        di = self.M[i] @ F[i]
                        d.append(di * min(1.0, G * np.linalg.norm(F[i]) / np.linalg.norm(di)))
                        continue
                else:  # kron's vectors: elementwise, every step, decay β and 1 − βᵗ
                    self._ema(i, np.diag(g[i] ** 2), self.b2)
                    self.M[i] = _inv_metric(self.S[i] / (1 - self.b2**self.t), a, eps, mode, er)
                d.append(self.M[i] @ F[i])
        for p, di in zip(self.params, d, strict=True):
            p.sub_(self.lr * torch.from_numpy(di).reshape(p.shape))


def _twins():
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2, bias=False)
    ).double()


def _data(steps, seed=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 4, generator=g, dtype=dtype)
    Y = torch.randn(64, 2, generator=g, dtype=dtype)
    return [(X[idx], Y[idx]) for idx in (torch.randint(0, 64, (8,), generator=g) for _ in range(steps))]


def _run(model, opt, batches, drop=None):
    """Train; ``drop(step, params)`` may return parameters whose gradient is removed on that step."""
    out = []
    params = list(model.parameters())
    for t, (x, y) in enumerate(batches, 1):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        for p in drop(t, params) if drop else ():
            p.grad = None
        opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in params]).clone())
    return torch.stack(out)


def _close(a, b, tol):
    err = (a - b).abs().max().item()
    assert err < tol, f"max |Δθ| = {err:.3g}"
    assert (a[-1] - a[0]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------ against brute force


@pytest.mark.parametrize(
    ("structure", "eps_mode", "k", "p", "warmup", "damping"),
    [
        ("kron", "inside", 3, 1, 0, "trace"),
        ("kron", "inside", 3, 2, 0, "trace"),
        ("kron", "outside", 2, 3, 0, "trace"),
        ("kron", "inside", 4, 2, 0, "trace"),  # k > p: some recomputes see unchanged statistics
        ("kron", "inside", 2, 3, 5, "trace"),  # warm-up: roots on every statistics update up to step 5
        ("block", "inside", 3, 2, 0, "none"),
        ("block", "inside", 3, 2, 0, "trace"),
        ("block", "outside", 2, 1, 0, "trace"),
        ("full", "inside", 3, 2, 0, "none"),
        ("full", "inside", 2, 3, 0, "trace"),
        ("full", "outside", 4, 2, 0, "trace"),
        ("full", "inside", 2, 3, 5, "trace"),
    ],
)
def test_statistics_every_against_brute_force(structure, eps_mode, k, p, warmup, damping):
    # With k > 1 the first moment holds gradients the statistics never saw, so F reaches the null space
    # of a rank-deficient Ŝ. Outside, h(λ) = 1/(λ^α + ε) has an infinite slope at λ = 0: round-off
    # eigenvalues ~1e-17 move h by √1e-17/ε. eps_root > 0 makes the slope finite (inside it is already),
    # and ε = 1e-2 keeps the steps along unseen directions O(1) (no chaotic separation from round-off).
    eps, eps_root = (1e-4, 0.0) if eps_mode == "inside" else (1e-2, 1e-4)
    kw = dict(lr=0.05, alpha=0.5, betas=(0.9, 0.99), eps=eps, eps_mode=eps_mode, eps_root=eps_root)
    kw.update(precondition_warmup=warmup, stale_damping=damping)
    amort = dict(statistics_every=k, precondition_every=p)
    batches = _data(13)
    ours = _run(m := _twins(), CovariantGD(m.parameters(), structure=structure, **kw, **amort), batches)
    ref = _run(m := _twins(), AmortisedReference(m.parameters(), structure, **kw, **amort), batches)
    _close(ours, ref, 1e-9)
    every = _run(
        m := _twins(), CovariantGD(m.parameters(), structure=structure, precondition_every=p, **kw), batches
    )
    assert (ours - every).abs().max() > 1e-6  # amortising really changes the trajectory
    torch.testing.assert_close(ours[0], every[0], rtol=0, atol=1e-12)  # same on step 1 (up to round-off)


def test_statistics_every_with_a_diagonal_kron_side():
    kw = dict(lr=0.05, alpha=0.5, betas=(0.9, 0.99), eps=1e-4, max_factor_dim=3, statistics_every=2)
    batches = _data(10)
    ours = _run(m := _twins(), CovariantGD(m.parameters(), structure="kron", **kw), batches)
    ref = _run(m := _twins(), AmortisedReference(m.parameters(), "kron", **kw), batches)
    _close(ours, ref, 1e-9)


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_lowrank_with_rank_at_least_P_equals_full_when_amortised(eps_mode):
    eps, eps_root = (1e-4, 0.0) if eps_mode == "inside" else (1e-2, 1e-4)  # see the brute-force test
    kw = dict(lr=0.05, alpha=0.5, eps=eps, eps_mode=eps_mode, eps_root=eps_root)
    kw.update(statistics_every=3, precondition_every=2)
    batches = _data(10)
    full = _run(m := _twins(), CovariantGD(m.parameters(), structure="full", **kw), batches)
    low = _run(m := _twins(), CovariantGD(m.parameters(), structure="lowrank", rank=100, **kw), batches)
    _close(low, full, 1e-9)


@pytest.mark.parametrize("structure", ["kron", "block", "full", "lowrank"])
def test_second_moment_diagonal_uses_the_amortised_bias_correction(structure):
    """After 7 steps with k = 3 the statistics had u = 3 updates of decay β₂³: Ŝ = S/(1 − β₂⁹)."""
    b2, k = 0.99, 3
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    opt = CovariantGD([p], lr=0.0, structure=structure, betas=(0.9, b2), statistics_every=k, rank=6)
    S = np.zeros((6, 6))
    for t in range(1, 8):
        p.grad = torch.randn(3, 2, dtype=torch.float64)
        if (t - 1) % k == 0:
            v = p.grad.numpy().ravel()
            S = b2**k * S + (1 - b2**k) * np.outer(v, v)
        opt.step()
    got = opt.second_moment_diagonal(p).numpy().ravel()
    bc2 = 1 - (b2**k) ** 3
    if structure == "kron":
        st = opt.state[p]
        L, R = (st[n].numpy() / bc2 for n in ("kron_L", "kron_R"))
        want = np.diag(np.kron(_sym_fn(L, np.sqrt), _sym_fn(R, np.sqrt)))
        np.testing.assert_allclose(got, want, rtol=1e-6)
    else:
        np.testing.assert_allclose(got, np.diag(S) / bc2, rtol=1e-12)


def test_amortised_bias_correction_is_the_total_weight():
    beta, k = 0.9, 4
    for t in range(1, 20):
        u = Fn.statistics_count(t, k)
        assert u == -(-t // k)
        weights = [(1 - beta**k) * (beta**k) ** (u - j) for j in range(1, u + 1)]
        assert Fn.amortised_bias_correction(beta, t, k) == pytest.approx(sum(weights), rel=1e-14)
    assert Fn.amortised_bias_correction(0.999, 7, 1) == Fn.bias_correction(0.999, 7)


@pytest.mark.parametrize(
    ("k", "p", "warmup", "computed"),
    [
        (4, 2, 0, 2),  # statistics on 1, 5; roots due on 1, 3, 5, 7: only 1 and 5 computed
        (4, 2, 100, 2),  # warm-up: due on every step, computed only where the statistics changed (1, 5)
        (2, 4, 3, 3),  # statistics on 1, 3, 5, 7; due on 1, 2, 3 (warm-up) and 5: 2 is skipped
        (2, 4, 0, 2),  # due on 1 and 5 only
    ],
)
def test_recomputes_are_skipped_only_when_the_statistics_did_not_change(monkeypatch, k, p, warmup, computed):
    calls = []
    real = Fn.kron_inverse_root_stack
    monkeypatch.setattr(
        Fn, "kron_inverse_root_stack", lambda X, *a, **kw: calls.append(1) or real(X, *a, **kw)
    )
    m = _twins()
    opt = CovariantGD(
        m.parameters(),
        lr=0.05,
        structure="kron",
        statistics_every=k,
        precondition_every=p,
        precondition_warmup=warmup,
    )
    per_recompute = 2 * 2  # two buckets ((4,4) twins and (2,4)), two sides each
    _run(m, opt, _data(8))
    assert len(calls) == computed * per_recompute


# ------------------------------------------------------------------------------------ state and resume


@pytest.mark.parametrize("structure", ["kron", "block", "full", "lowrank"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("warmup", [0, 6])
def test_state_dict_resume_mid_cycle_is_identical(structure, dtype, warmup):
    """Step 4 is off the root cycle (warm-up 0: a stale root, bounded for block/full, is live) or inside the
    warm-up (6): either way the resumed run continues bit for bit."""
    kw = dict(lr=0.05, eps=1e-3, structure=structure, statistics_every=3, precondition_every=2, rank=4)
    kw.update(precondition_warmup=warmup)
    batches = _data(12, dtype=dtype)
    m = _twins().to(dtype)
    opt = CovariantGD(m.parameters(), **kw)
    _run(m, opt, batches[:4])  # step 4: between statistics updates (1, 4, 7) and off the root cycle
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, buf)
    straight = _run(m, opt, batches[4:])
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    m2 = _twins().to(dtype)
    m2.load_state_dict(saved["model"])
    opt2 = CovariantGD(m2.parameters(), **kw)
    opt2.load_state_dict(saved["opt"])
    resumed = _run(m2, opt2, batches[4:])
    assert torch.equal(straight, resumed)
    assert opt2.param_groups[0]["statistics_every"] == 3
    assert opt2.param_groups[0]["precondition_warmup"] == warmup


def test_load_state_dict_into_the_same_optimizer_rewinds_it():
    """The stacked kron buffers are rebuilt from loaded state, not kept from before the load."""
    batches = _data(10)
    m = _twins()
    opt = CovariantGD(m.parameters(), lr=0.05, structure="kron", statistics_every=2, precondition_every=3)
    _run(m, opt, batches[:3])
    snap_model, snap_opt = copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict())
    first = _run(m, opt, batches[3:])
    m.load_state_dict(snap_model)
    opt.load_state_dict(snap_opt)
    again = _run(m, opt, batches[3:])
    assert torch.equal(first, again)


def test_state_dict_from_before_statistics_every_loads_as_every_step():
    m = _twins()
    opt = CovariantGD(m.parameters(), lr=0.05, structure="kron")
    _run(m, opt, _data(2))
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        del g["statistics_every"]
    opt2 = CovariantGD(_twins().parameters(), lr=0.05, structure="kron", statistics_every=5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["statistics_every"] == 1


def test_state_dict_from_before_the_warm_up_and_stale_damping_resumes_as_it_ran():
    """A state dict saved before precondition_warmup / stale_damping existed ran without them: it loads with
    warm-up 0 and no stale damping, whatever the new optimizer was built with."""
    m = _twins()
    opt = CovariantGD(
        m.parameters(),
        lr=0.05,
        structure="full",
        precondition_every=3,
        precondition_warmup=0,
        stale_damping="none",
    )
    _run(m, opt, _data(2))
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        del g["precondition_warmup"], g["stale_damping"]
    opt2 = CovariantGD(_twins().parameters(), lr=0.05, structure="full", precondition_every=3)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["precondition_warmup"] == 0
    assert opt2.param_groups[0]["stale_damping"] == "none"


def test_kron_state_entries_are_views_of_persistent_stacks():
    m = _twins()
    opt = CovariantGD(m.parameters(), lr=0.05, structure="kron", precondition_every=4, precondition_warmup=0)
    w1, w2 = m[0].weight, m[2].weight  # same shape: one bucket
    _run(m, opt, _data(2))
    L1, Linv1 = opt.state[w1]["kron_L"], opt.state[w1]["kron_Linv"]
    assert L1.untyped_storage().data_ptr() == opt.state[w2]["kron_L"].untyped_storage().data_ptr()
    _run(m, opt, _data(2, seed=7))  # steps 3, 4: no restacking, no recompute
    assert opt.state[w1]["kron_L"] is L1 and opt.state[w1]["kron_Linv"] is Linv1


def test_assigning_a_state_entry_is_picked_up():
    """A user's replacement of a factor (not an in-place edit) is restacked and used."""
    batches = _data(6)
    runs = []
    for assign in (False, True):
        m = _twins()
        opt = CovariantGD(m.parameters(), lr=0.05, structure="kron")
        _run(m, opt, batches[:2])
        st = opt.state[m[2].weight]
        if assign:
            st["kron_L"] = 2 * st["kron_L"]
        else:
            st["kron_L"].mul_(2)
        runs.append(_run(m, opt, batches[2:]))
    assert torch.equal(*runs)


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
@pytest.mark.parametrize("k", [1, 2])
def test_bucket_members_out_of_step_match_separate_groups(eps_mode, k):
    """Same-shaped layers whose step counters differ (one lacks a gradient on some steps) share a bucket;
    the result equals giving each parameter its own group (buckets of one)."""

    def drop(t, params):
        return [params[2]] if t in (2, 5, 6) else []  # the second (4, 4) weight

    kw = dict(lr=0.05, eps=1e-4, eps_mode=eps_mode, statistics_every=k, precondition_every=3)
    batches = _data(12)
    shared = _run(m := _twins(), CovariantGD(m.parameters(), structure="kron", **kw), batches, drop)
    sep = _run(
        m := _twins(),
        CovariantGD([{"params": [p]} for p in m.parameters()], structure="kron", **kw),
        batches,
        drop,
    )
    _close(shared, sep, 1e-12)


def test_param_groups_keep_their_own_statistics_every():
    batches = _data(8)
    kw = dict(lr=0.05, structure="kron", eps=1e-4)
    m = _twins()
    ps = list(m.parameters())
    mixed = _run(
        m, CovariantGD([{"params": ps[:2], "statistics_every": 3}, {"params": ps[2:]}], **kw), batches
    )
    m = _twins()
    ps = list(m.parameters())
    opts = [CovariantGD(ps[:2], statistics_every=3, **kw), CovariantGD(ps[2:], **kw)]

    class Both:
        def zero_grad(self):
            for o in opts:
                o.zero_grad()

        def step(self):
            for o in opts:
                o.step()

    _close(mixed, _run(m, Both(), batches), 1e-12)


# ------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, r"CovariantGD\.statistics_every=0 is out of range; allowed: 1 <= statistics_every"),
        (-2, r"CovariantGD\.statistics_every=-2 is out of range; allowed: 1 <= statistics_every"),
        (1.5, r"CovariantGD\.statistics_every=1\.5 has type float; allowed: an integer"),
        (True, r"CovariantGD\.statistics_every=True has type bool; allowed: an integer"),
    ],
)
def test_bad_statistics_every(value, message):
    m = _twins()
    with pytest.raises(LearndynValueError, match=message):
        CovariantGD(m.parameters(), structure="kron", statistics_every=value)
    with pytest.raises(LearndynValueError, match=message):
        CovariantGD([{"params": list(m.parameters()), "statistics_every": value}], structure="kron")
