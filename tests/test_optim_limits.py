"""CovariantGD's diagonal limits reproduce torch.optim.Adam/AdamW/RMSprop/SGD and AdaBelief trajectories."""

import math

import pytest
import torch
from torch import nn

from learndyn.optim import CovariantGD

STEPS = 120
TOL = 1e-10  # the spec asks 1e-6; in float64 the trajectories agree to round-off


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _data():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(256, 5, generator=g, dtype=torch.float64)
    Y = torch.sin(X @ torch.randn(5, 3, generator=g, dtype=torch.float64))
    return X, Y


def _trajectory(make_opt, steps: int = STEPS, closure_style: bool = False) -> torch.Tensor:
    """Parameters after every step of minibatch training (batches of 16 in a fixed random order)."""
    model = _mlp()
    opt = make_opt(model.parameters())
    X, Y = _data()
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (16,), generator=g)

        def closure(idx=idx):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(X[idx]), Y[idx])
            loss.backward()
            return loss

        if closure_style:
            opt.step(closure)
        else:
            closure()
            opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(out)


def _assert_same(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert torch.isfinite(a).all()
    err = (a - b).abs().max().item()
    assert err < tol, f"max |Δθ| over the trajectory = {err:.3g}"
    # the trajectory actually moved (otherwise agreement would be trivial)
    assert (a[-1] - a[0]).abs().max() > 1e-2


@pytest.mark.parametrize("lr", [1e-3, 3e-2])
def test_adam(lr):
    ref = _trajectory(lambda ps: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.999), eps=1e-8))
    ours = _trajectory(
        lambda ps: CovariantGD(ps, lr=lr, alpha=0.5, structure="diag", eps=1e-8, eps_mode="outside")
    )
    _assert_same(ours, ref)


def test_adam_coupled_weight_decay():
    ref = _trajectory(
        lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    )
    ours = _trajectory(
        lambda ps: CovariantGD(
            ps,
            lr=1e-2,
            betas=(0.8, 0.99),
            eps=1e-6,
            eps_mode="outside",
            weight_decay=0.05,
            decoupled_weight_decay=False,
        )
    )
    _assert_same(ours, ref)


def test_adamw():
    ref = _trajectory(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1))
    ours = _trajectory(lambda ps: CovariantGD(ps, lr=1e-2, eps_mode="outside", weight_decay=0.1))
    _assert_same(ours, ref)


def test_rmsprop_is_no_first_moment_no_bias_correction():
    ref = _trajectory(lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.99, eps=1e-8))
    ours = _trajectory(
        lambda ps: CovariantGD(
            ps,
            lr=1e-3,
            betas=(0.0, 0.99),
            eps=1e-8,
            eps_mode="outside",
            first_moment=False,
            bias_correction=False,
        )
    )
    _assert_same(ours, ref)


def test_sgd_is_alpha_zero():
    ref = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1))
    ours = _trajectory(lambda ps: CovariantGD(ps, lr=0.1, alpha=0.0, first_moment=False))
    _assert_same(ours, ref, tol=1e-12)


@pytest.mark.parametrize("structure", ["kron", "block", "full", "lowrank"])
def test_alpha_zero_is_sgd_for_every_structure(structure):
    ref = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1), steps=20)
    ours = _trajectory(
        lambda ps: CovariantGD(ps, lr=0.1, alpha=0.0, first_moment=False, structure=structure), steps=20
    )
    _assert_same(ours, ref, tol=1e-12)


def test_sgd_coupled_weight_decay():
    ref = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01))
    ours = _trajectory(
        lambda ps: CovariantGD(
            ps, lr=0.1, alpha=0.0, first_moment=False, weight_decay=0.01, decoupled_weight_decay=False
        )
    )
    _assert_same(ours, ref, tol=1e-12)


def test_heavy_ball_momentum_is_ema_first_moment_with_scaled_lr():
    """torch SGD momentum μ (dampening 0) ≡ EMA with β₁ = μ, no bias correction, lr/(1−μ)."""
    mu, lr = 0.9, 0.02

    def ours(ps):
        return CovariantGD(ps, lr=lr / (1 - mu), alpha=0.0, betas=(mu, 0.999), bias_correction=False)

    ref = _trajectory(lambda ps: torch.optim.SGD(ps, lr=lr, momentum=mu))
    # exact first step: torch starts its buffer at g, the EMA at (1−μ)g; the lr scaling makes them equal
    first_ref, first_ours = (
        _trajectory(lambda ps: torch.optim.SGD(ps, lr=lr, momentum=mu), 1),
        _trajectory(ours, 1),
    )
    assert (first_ref - first_ours).abs().max() < 1e-15
    _assert_same(_trajectory(ours), ref)


def test_closure_form_gives_the_same_trajectory():
    a = _trajectory(lambda ps: CovariantGD(ps, lr=1e-2), steps=30)
    b = _trajectory(lambda ps: CovariantGD(ps, lr=1e-2), steps=30, closure_style=True)
    assert torch.equal(a, b)


class AdaBelief:
    """AdaBelief written out from Zhuang et al. (2020), Algorithm 2::

    m_t = β₁ m + (1−β₁) g;  s_t = β₂ s + (1−β₂)(g − m_t)² + ε
    m̂ = m_t/(1−β₁ᵗ);  ŝ = s_t/(1−β₂ᵗ);  θ ← θ − lr · m̂/(√ŝ + ε)
    """

    def __init__(self, params, lr, betas, eps):
        self.params = list(params)
        self.lr, (self.b1, self.b2), self.eps, self.t = lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.s = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        for p, m, s in zip(self.params, self.m, self.s, strict=True):
            g = p.grad
            m.mul_(self.b1).add_((1 - self.b1) * g)
            s.mul_(self.b2).add_((1 - self.b2) * (g - m) ** 2 + self.eps)
            m_hat = m / (1 - self.b1**self.t)
            s_hat = s / (1 - self.b2**self.t)
            p.sub_(self.lr * m_hat / (s_hat.sqrt() + self.eps))


@pytest.mark.parametrize("eps", [1e-8, 1e-12])
def test_covariance_moment_is_adabelief(eps):
    b = (0.9, 0.999)
    ref = _trajectory(lambda ps: AdaBelief(ps, lr=1e-2, betas=b, eps=eps))
    # AdaBelief's ε added to s every step accumulates to ε/(1−β₂) in ŝ: that is eps_root
    ours = _trajectory(
        lambda ps: CovariantGD(
            ps, lr=1e-2, betas=b, eps=eps, eps_mode="outside", moment="covariance", eps_root=eps / (1 - b[1])
        )
    )
    _assert_same(ours, ref)


def test_eps_inside_differs_from_outside_but_agrees_as_eps_vanishes():
    inside = _trajectory(lambda ps: CovariantGD(ps, lr=1e-2, eps=1e-3), steps=30)
    outside = _trajectory(lambda ps: CovariantGD(ps, lr=1e-2, eps=1e-3, eps_mode="outside"), steps=30)
    assert (inside - outside).abs().max() > 1e-4
    inside = _trajectory(lambda ps: CovariantGD(ps, lr=1e-2, eps=0.0), steps=30)
    outside = _trajectory(lambda ps: CovariantGD(ps, lr=1e-2, eps=0.0, eps_mode="outside"), steps=30)
    assert (inside - outside).abs().max() < 1e-12


def test_general_alpha_diag_matches_written_out_formula():
    """α = 0.3, inside: θ ← θ − lr · m̂ / (ŝ + ε)^α, written out per tensor."""
    alpha, lr, eps, (b1, b2) = 0.3, 1e-2, 1e-6, (0.9, 0.99)

    class Ref:
        def __init__(self, params):
            self.params, self.t = list(params), 0
            self.m = [torch.zeros_like(p) for p in self.params]
            self.s = [torch.zeros_like(p) for p in self.params]

        def zero_grad(self):
            for p in self.params:
                p.grad = None

        @torch.no_grad()
        def step(self):
            self.t += 1
            for p, m, s in zip(self.params, self.m, self.s, strict=True):
                m.copy_(b1 * m + (1 - b1) * p.grad)
                s.copy_(b2 * s + (1 - b2) * p.grad**2)
                p.sub_(lr * (m / (1 - b1**self.t)) / (s / (1 - b2**self.t) + eps) ** alpha)

    ours = _trajectory(lambda ps: CovariantGD(ps, lr=lr, alpha=alpha, betas=(b1, b2), eps=eps))
    _assert_same(ours, _trajectory(Ref))
    assert math.isfinite(ours.abs().max().item())


def test_adam_float32_to_1e6():
    """The same in float32, the dtype people train in (agreement to 1e-6 over 120 steps)."""

    def traj(make_opt):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
        opt = make_opt(model.parameters())
        X, Y = (t.float() for t in _data())
        g = torch.Generator().manual_seed(3)
        out = []
        for _ in range(STEPS):
            idx = torch.randint(0, X.shape[0], (16,), generator=g)
            opt.zero_grad()
            nn.functional.mse_loss(model(X[idx]), Y[idx]).backward()
            opt.step()
            out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
        return torch.stack(out)

    ref = traj(lambda ps: torch.optim.Adam(ps, lr=1e-2))
    ours = traj(lambda ps: CovariantGD(ps, lr=1e-2, eps_mode="outside"))
    _assert_same(ours, ref, tol=1e-6)
