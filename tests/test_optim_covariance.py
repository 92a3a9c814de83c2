"""Covariance facts of the design: reparametrisation q = A p and loss scaling H → cH.

A noisy quadratic in q-space, ``ℓ_t(q) = ½ qᵀHq − (b + ξ_t)ᵀq``, trained either in q directly or through
``q = A p`` (gradient ``Aᵀ∇_q``) with the same noise sequence. The first ``WARM`` steps run at lr = 0 so
that the EMA statistic ``S`` has full rank before anything moves (with a rank-deficient S the ε-damped
inverse is only covariant on the range of S, and the test would be about ε, not about α).
"""

import math

import pytest
import torch
from torch import nn

from learndyn.optim import CovariantGD

P, WARM, STEPS = 4, 12, 30


def _problem():
    g = torch.Generator().manual_seed(11)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    H = Q @ torch.diag(torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=torch.float64)) @ Q.T
    b = torch.randn(P, generator=g, dtype=torch.float64)
    q0 = torch.randn(P, generator=g, dtype=torch.float64)
    return H, b, q0


def _orthogonal(seed=12):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))[0]


def _general(seed=13):
    g = torch.Generator().manual_seed(seed)
    U, V = (torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))[0] for _ in range(2))
    return U @ torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.3], dtype=torch.float64)) @ V.T


def _q_trajectory(A, alpha, structure="full", loss_scale=1.0, grad_scale=None, eps=1e-12, lr=0.05):
    """q_t = A p_t after every step (warm-up steps excluded)."""
    H, b, q0 = _problem()
    p = nn.Parameter(torch.linalg.solve(A, q0))
    opt = CovariantGD([p], lr=0.0, alpha=alpha, structure=structure, eps=eps, betas=(0.9, 0.99))
    noise = torch.Generator().manual_seed(14)
    qs = []
    for t in range(WARM + STEPS):
        if t == WARM:
            opt.param_groups[0]["lr"] = lr
        with torch.no_grad():
            q = A @ p
            grad_q = loss_scale * (H @ q - b - torch.randn(P, generator=noise, dtype=torch.float64))
            grad_p = A.T @ grad_q
            p.grad = grad_p * grad_scale if grad_scale is not None else grad_p
        opt.step()
        if t >= WARM:
            qs.append((A @ p).detach().clone())
    return torch.stack(qs)


def _gap(a, b):
    return ((a - b).abs().max() / (a[-1] - a[0]).abs().max()).item()


def test_full_alpha_one_is_covariant_for_any_invertible_A():
    identity = torch.eye(P, dtype=torch.float64)
    ref = _q_trajectory(identity, 1.0)
    assert (ref[-1] - ref[0]).abs().max() > 0.1
    for A in (_general(), _general(seed=21), _orthogonal()):
        assert _gap(_q_trajectory(A, 1.0), ref) < 1e-8


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75])
def test_full_other_alpha_covariant_for_orthogonal_A_only(alpha):
    identity = torch.eye(P, dtype=torch.float64)
    ref = _q_trajectory(identity, alpha)
    assert _gap(_q_trajectory(_orthogonal(), alpha), ref) < 1e-8
    # the negative case: a general A breaks covariance (so the positive checks can fail)
    assert _gap(_q_trajectory(_general(), alpha), ref) > 1e-2


@pytest.mark.parametrize("structure", ["block", "lowrank"])
def test_other_whole_matrix_structures_are_covariant_at_alpha_one(structure):
    """With one parameter tensor, block = full; lowrank with rank ≥ P = full."""
    ref = _q_trajectory(torch.eye(P, dtype=torch.float64), 1.0, structure=structure)
    assert _gap(_q_trajectory(_general(), 1.0, structure=structure), ref) < 1e-8


def test_diag_alpha_one_is_covariant_for_diagonal_A_and_alpha_half_is_not():
    """Δq = D Δp: at α = 1, D(D F)/(D² s) = F/s for any diagonal D; at α = ½ it gives |D| F/√s.

    (Adam's α = ½ invariance is a different one: rescaling gradient coordinates, tested below.)
    """
    identity = torch.eye(P, dtype=torch.float64)
    D = torch.diag(torch.tensor([3.0, -0.5, 2.0, 0.1], dtype=torch.float64))
    assert (
        _gap(_q_trajectory(D, 1.0, structure="diag"), _q_trajectory(identity, 1.0, structure="diag")) < 1e-8
    )
    assert (
        _gap(_q_trajectory(D, 0.5, structure="diag"), _q_trajectory(identity, 0.5, structure="diag")) > 1e-2
    )
    signs = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    for alpha in (0.25, 0.5):  # signed permutations are orthogonal and diagonal: covariant at every α
        assert (
            _gap(
                _q_trajectory(signs, alpha, structure="diag"),
                _q_trajectory(identity, alpha, structure="diag"),
            )
            < 1e-8
        )


def test_diag_alpha_half_is_invariant_to_rescaling_gradient_coordinates():
    identity = torch.eye(P, dtype=torch.float64)
    d = torch.tensor([10.0, 0.1, 3.0, 1.0], dtype=torch.float64)
    ref = _q_trajectory(identity, 0.5, structure="diag", eps=0.0)
    assert _gap(_q_trajectory(identity, 0.5, structure="diag", grad_scale=d, eps=0.0), ref) < 1e-10
    assert _gap(_q_trajectory(identity, 0.25, structure="diag", grad_scale=d, eps=0.0), ref) > 1e-2


@pytest.mark.parametrize("structure", ["full", "diag", "block", "lowrank"])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_loss_scaling_scales_the_update_by_c_to_the_one_minus_two_alpha(structure, alpha):
    """H → cH (the whole loss × c): ∇ → c∇, S → c²S, so g⁻¹F → c^{1−2α} g⁻¹F (ε → 0)."""
    c = 10.0
    identity = torch.eye(P, dtype=torch.float64)
    # one step after the warm-up: compare the first update
    base = _q_trajectory(identity, alpha, structure=structure)
    scaled = _q_trajectory(identity, alpha, structure=structure, loss_scale=c)
    _, _, q0 = _problem()
    ratio = (scaled[0] - q0) / (base[0] - q0)
    torch.testing.assert_close(ratio, torch.full_like(ratio, c ** (1 - 2 * alpha)), rtol=1e-8, atol=0)
    if alpha == 0.5:  # only α = ½ is scale-free: the whole trajectory is the same
        assert _gap(scaled, base) < 1e-8
    assert math.isfinite(scaled.abs().max().item())
