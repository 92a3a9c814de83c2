"""Grafting (``graft='adam'``), relative damping (``eps_rel``) and the override warnings of CovariantGD.

The grafted update is written out here from scratch: the structure's direction from brute-force matrix
powers (``eigh`` of the EMA statistics kept in this file) and its per-tensor norm from Adam's update
``F / (√ŝ + ε)`` built from this file's own moments; compared step by step on a tiny float64 model.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from learndyn.optim import CovariantGD, options
from learndyn.validation import LearndynValueError

B1, B2, EPS, LR = 0.9, 0.99, 1e-4, 0.05


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, generator=g, dtype=torch.float64),
             torch.randn(6, 2, generator=g, dtype=torch.float64)) for _ in range(n)]


def _power(S: torch.Tensor, power: float) -> torch.Tensor:
    """``S^power`` of a symmetric positive definite matrix, by ``eigh``."""
    lam, U = torch.linalg.eigh(S)
    return U @ torch.diag(lam.pow(power)) @ U.T


def _damped(S: torch.Tensor, eps_rel: float) -> torch.Tensor:
    n = S.shape[0]
    return S + (EPS + eps_rel * torch.trace(S) / n) * torch.eye(n, dtype=S.dtype)


class _Reference:
    """The grafted CovariantGD step, written out (per-parameter loops and explicit matrices on purpose)."""

    def __init__(self, params: list[torch.Tensor], structure: str, alpha: float, eps_rel: float) -> None:
        self.structure, self.alpha, self.eps_rel, self.t = structure, alpha, eps_rel, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.s = [torch.zeros_like(p) for p in params]  # the grafting (Adam) second moment
        self.L = [torch.zeros(p.shape[0], p.shape[0], dtype=p.dtype) if p.ndim == 2 else None for p in params]
        self.R = [torch.zeros(p.shape[1], p.shape[1], dtype=p.dtype) if p.ndim == 2 else None for p in params]
        P = sum(p.numel() for p in params)
        self.S = torch.zeros(P, P, dtype=torch.float64)

    def update(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``Δq`` of one step for the gradients ``grads``."""
        self.t += 1
        t, a = self.t, self.alpha
        bc1, bc2 = 1 - B1**t, 1 - B2**t
        F, adam = [], []
        for i, g in enumerate(grads):
            self.m[i] = B1 * self.m[i] + (1 - B1) * g
            self.s[i] = B2 * self.s[i] + (1 - B2) * g * g
            F.append(self.m[i] / bc1)
            adam.append(F[i] / ((self.s[i] / bc2).sqrt() + EPS))
        if self.structure == "full":
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.S = B2 * self.S + (1 - B2) * torch.outer(flat, flat)
            d = _power(_damped(self.S / bc2, self.eps_rel), -a) @ torch.cat([f.reshape(-1) for f in F])
            dirs = list(d.split([g.numel() for g in grads]))
            dirs = [x.reshape(g.shape) for x, g in zip(dirs, grads, strict=True)]
        else:  # kron: factors for matrices, the diagonal metric (Ŝ + ε)^α for vectors
            dirs = []
            for i, g in enumerate(grads):
                if g.ndim == 2:
                    self.L[i] = B2 * self.L[i] + (1 - B2) * g @ g.T
                    self.R[i] = B2 * self.R[i] + (1 - B2) * g.T @ g
                    left = _power(_damped(self.L[i] / bc2, self.eps_rel), -a / 2)
                    right = _power(_damped(self.R[i] / bc2, self.eps_rel), -a / 2)
                    dirs.append(left @ F[i] @ right)
                else:
                    dirs.append(F[i] / (self.s[i] / bc2 + EPS).pow(a))
        return [-LR * d * adam_i.norm() / d.norm() for d, adam_i in zip(dirs, adam, strict=True)]


@pytest.mark.parametrize("structure", ["kron", "full"])
@pytest.mark.parametrize(("alpha", "eps_rel"), [(0.5, 0.0), (1.0, 0.0), (1.0, 0.1)])
def test_grafted_update_matches_written_out_reference(structure: str, alpha: float, eps_rel: float) -> None:
    model = _model()
    params = list(model.parameters())
    opt = CovariantGD(params, lr=LR, alpha=alpha, structure=structure, betas=(B1, B2), eps=EPS,
                      graft="adam", eps_rel=eps_rel)
    ref = _Reference([p.detach() for p in params], structure, alpha, eps_rel)
    for x, y in _batches(4):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        expected = ref.update([p.grad.detach().clone() for p in params])
        before = [p.detach().clone() for p in params]
        opt.step()
        for p, q0, dq in zip(params, before, expected, strict=True):
            torch.testing.assert_close(p.detach() - q0, dq, rtol=1e-6, atol=1e-9)


def test_grafted_step_has_adams_norm_and_adam_onto_adam_is_adam() -> None:
    """Grafting Adam's norm onto Adam's own direction (diag, α = ½, ε outside) is torch's Adam."""
    a, b = _model(), _model()
    opt_a = CovariantGD(a.parameters(), lr=LR, alpha=0.5, eps_mode="outside", graft="adam")
    opt_b = torch.optim.Adam(b.parameters(), lr=LR)
    for x, y in _batches(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_graft_none_is_the_default_and_changes_nothing() -> None:
    a, b = _model(), _model()
    opt_a = CovariantGD(a.parameters(), lr=LR, structure="kron")
    opt_b = CovariantGD(b.parameters(), lr=LR, structure="kron", graft="none", eps_rel=0.0)
    assert opt_a.defaults["graft"] == "none" and opt_a.defaults["eps_rel"] == 0.0
    for x, y in _batches(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert all("graft_exp_avg_sq" not in st for st in opt_a.state.values())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"graft": "shampoo"}, "CovariantGD.graft='shampoo' is not allowed; allowed: 'none', 'adam'"),
        ({"eps_rel": -1.0}, "CovariantGD.eps_rel"),
        ({"eps_rel": "big"}, "CovariantGD.eps_rel"),
        ({"eps_rel": 0.1, "structure": "diag"}, "eps_rel=0.1 is not allowed with structure='diag'"),
    ],
)
def test_bad_options_give_one_line_errors(kwargs: dict, needle: str) -> None:
    with pytest.raises(LearndynValueError) as info:
        CovariantGD(_model().parameters(), **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value) and "allowed" in str(info.value)


def test_override_warning_fires_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CovariantGD(_model().parameters(), structure="kron", precondition_every=10, precondition_warmup=0)
        assert not caught  # nothing overridden
        for _ in range(3):
            CovariantGD(_model().parameters(), structure="kron", precondition_every=10)
    hits = [w for w in caught if "overrides precondition_every" in str(w.message)]
    assert len(hits) == 1 and "precondition_warmup=100" in str(hits[0].message)
    assert hits[0].filename == __file__  # points at the caller's line


def test_graft_state_is_counted_and_resumes() -> None:
    model = _model()
    P = sum(p.numel() for p in model.parameters())
    ps = list(model.parameters())
    need = options.memory_requirement("kron", ps, {"graft": "adam", "eps_mode": "inside"})
    base = options.memory_requirement("kron", ps, {"graft": "none", "eps_mode": "inside"})
    assert need - base == P * 8
    opt = CovariantGD(model.parameters(), lr=LR, structure="full", graft="adam", eps_rel=0.01)
    (x, y), *rest = _batches(3)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    twin = _model()
    twin.load_state_dict(model.state_dict())
    opt2 = CovariantGD(twin.parameters(), lr=LR, structure="full", graft="adam", eps_rel=0.01)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares same-dtype tensors
    for x, y in rest:
        for m, o in ((model, opt), (twin, opt2)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_eps_rel_on_a_stale_full_step_uses_the_current_trace() -> None:
    """Step 2 reuses step 1's eigenbasis (``stale_damping='trace'``): spectrum ``h(cλ₀ + τ + ε_rel·tr Ŝ₂/P)``
    with ``c``, ``τ`` of the bound ``Ŝ₂ ⪯ c Ŝ₀ + τ I``, written out here."""
    model = _model()
    params = list(model.parameters())
    alpha, eps_rel = 1.0, 0.1
    opt = CovariantGD(params, lr=LR, alpha=alpha, structure="full", betas=(B1, B2), eps=EPS,
                      eps_rel=eps_rel, precondition_every=2, precondition_warmup=0)
    grads, deltas = [], []
    for x, y in _batches(2):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
        before = torch.cat([p.detach().reshape(-1) for p in params])
        opt.step()
        deltas.append(torch.cat([p.detach().reshape(-1) for p in params]) - before)
    g1, g2 = grads
    S1 = (1 - B2) * torch.outer(g1, g1)
    S2 = B2 * S1 + (1 - B2) * torch.outer(g2, g2)
    b1, b2 = 1 - B2, 1 - B2**2
    lam0, U0 = torch.linalg.eigh(S1 / b1)
    c = B2 * b1 / b2
    tau = (torch.trace(S2) - B2 * torch.trace(S1)) / b2
    shift = eps_rel * torch.trace(S2 / b2) / g1.numel()
    h = (c * lam0.clamp_min(0) + tau + shift + EPS).pow(-alpha)
    F2 = (B1 * (1 - B1) * g1 + (1 - B1) * g2) / (1 - B1**2)
    torch.testing.assert_close(deltas[1], -LR * (U0 @ (h * (U0.T @ F2))), rtol=1e-6, atol=1e-9)
