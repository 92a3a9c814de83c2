"""SymmetryHessianProbe: the Noether identity on small models (float64), the Hessian checked against
``torch.autograd.functional.hessian`` (an independent brute-force Hessian), and the zero-mode counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learndyn.probes.base import ProbeContext
from learndyn.probes.symmetry import Symmetry
from learndyn.probes.symmetry_hessian import SymmetryHessianProbe, full_hessian, symmetry_generators


def _ctx(model, loss_fn, x, y):
    target = y if y.dtype == torch.long else y.double()
    return ProbeContext(model.double(), loss_fn, x.double(), target, step=0)


def _brute_hessian(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(th):
        ps = {n: t.reshape(s) for n, t, s in zip(names, th.split(sizes), shapes, strict=True)}
        return loss_fn(torch.func.functional_call(model, ps, (x,)), y)

    return torch.autograd.functional.hessian(loss, theta).numpy()


def test_identity_holds_on_an_mlp_with_cross_entropy():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(16, 3, generator=g), torch.randint(0, 3, (16,), generator=g)
    ctx = _ctx(model, F.cross_entropy, x, y)
    np.testing.assert_allclose(full_hessian(ctx), _brute_hessian(model, F.cross_entropy, x.double(), y),
                               atol=1e-12)
    out = SymmetryHessianProbe().measure(ctx)
    assert out["hessian_symmetry/rescale/0-2/generators"] == 4
    assert out["hessian_symmetry/translation/2/generators"] == 5
    assert out["hessian_symmetry/max_residual"] < 1e-12
    assert out["hessian_symmetry/rescale/0-2/curvature"] > 1e-3  # away from a minimum: not zero modes
    assert out["hessian_symmetry/translation/2/curvature"] < 1e-12  # translations: zero modes everywhere
    # the 5 translations are null everywhere (a unit dead on the whole batch adds its rescaling direction)
    assert out["hessian_symmetry/symmetry_rank"] == 9
    assert 5 <= out["hessian_symmetry/explained"] <= out["hessian_symmetry/zero_modes"]


def test_linear_pair_and_scale_symmetries():
    g = torch.Generator().manual_seed(1)
    pair = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    x, y = torch.randn(10, 3, generator=g), torch.randn(10, 2, generator=g)
    out = SymmetryHessianProbe().measure(_ctx(pair, F.mse_loss, x, y))
    assert out["hessian_symmetry/linear/0-1/generators"] == 16
    assert out["hessian_symmetry/max_residual"] < 1e-12
    # LayerNorm with eps = 0 is exactly scale invariant; the default eps breaks it at ~1e-5
    for eps, bound in ((0.0, 1e-10), (1e-5, 1e-3)):
        normed = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5, eps=eps), nn.Linear(5, 2))
        out = SymmetryHessianProbe().measure(_ctx(normed, F.mse_loss, x, y))
        assert out["hessian_symmetry/scale/0/residual"] < bound


def test_generators_of_a_conv_rescaling_pair_leave_the_loss_invariant():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)).double()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    (gen, *_) = symmetry_generators(model, Symmetry("rescale", "0", "3"))
    params = {n: p.detach() for n, p in model.named_parameters()}
    xi = gen.xi(params)
    with torch.no_grad():
        before = model(x)
        for n, p in model.named_parameters():  # exp(tA)θ for a diagonal ±1 generator
            if n in xi:
                p.mul_(torch.where(xi[n] != 0, torch.exp(0.3 * torch.sign(xi[n] * p.sign())), 1.0))
        assert torch.allclose(model(x), before, atol=1e-12)


def test_probe_validation():
    with pytest.raises(ValueError, match="max_generators"):
        SymmetryHessianProbe(max_generators=0)
