"""NoiseProbe against the explicit P × P gradient-noise covariance (float64, tiny models)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learndyn.probes.base import ProbeContext
from learndyn.probes.noise import NoiseProbe, shared_gradient_gram
from learndyn.validation import LearndynValueError

pytestmark = pytest.mark.usefixtures("float64")


def _setup(B=8, seq=False):
    g = torch.Generator().manual_seed(3)
    if seq:
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Flatten(), nn.Linear(20, 2))
        x = torch.randn(B, 4, 3, generator=g)
    else:
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        x = torch.randn(B, 4, generator=g)
    y = torch.randint(0, 2, (B,), generator=g)
    return model, F.cross_entropy, x, y


def _per_sample_matrix(model, loss_fn, x, y):
    """(B, P) per-sample gradients by a loop of single-sample backward passes."""
    params = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        gs = torch.autograd.grad(loss_fn(model(x[i : i + 1]), y[i : i + 1]), params)
        rows.append(torch.cat([t.reshape(-1) for t in gs]))
    return torch.stack(rows)


class FakeCovariant(torch.optim.SGD):
    """Stands in for CovariantGD: exposes ``second_moment_diagonal(p)``."""

    def __init__(self, params, diag):
        super().__init__(params, lr=0.1)
        self._diag = diag

    def second_moment_diagonal(self, p):
        return self._diag[id(p)]


@pytest.mark.parametrize("route", ["hooks", "vmap"])
@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("unbiased", [False, True])
def test_noise_matches_explicit_covariance(route, seq, unbiased):
    model, loss_fn, x, y = _setup(seq=seq)
    B = x.shape[0]
    G = _per_sample_matrix(model, loss_fn, x, y)
    gbar = G.mean(0)
    n = B - 1 if unbiased else B
    C = (G - gbar).T @ (G - gbar) / n  # P × P, the brute-force reference
    evals = torch.linalg.eigvalsh(C).flip(0)

    diag = {
        id(p): torch.rand(p.shape, generator=torch.Generator().manual_seed(5)) for p in model.parameters()
    }
    opt = FakeCovariant(model.parameters(), diag)
    ctx = ProbeContext(model, loss_fn, x, y, step=0, lr=0.05, optimizer=opt)
    out = NoiseProbe(k=4, route=route, unbiased=unbiased).measure(ctx)

    tr = float(C.trace())
    assert out["noise/trace"] == pytest.approx(tr, rel=1e-10)
    np.testing.assert_allclose(out["noise/spectrum"], evals[:4].numpy(), rtol=1e-8, atol=1e-12)
    assert out["noise/grad_norm_sq"] == pytest.approx(float(gbar @ gbar), rel=1e-10)
    assert out["noise/snr"] == pytest.approx(float(gbar @ gbar) / (tr / B), rel=1e-10)
    assert out["noise/effective_rank"] == pytest.approx(tr**2 / float(C.square().sum()), rel=1e-10)
    assert out["noise/temperature"] == pytest.approx(0.05 * tr / (2 * B), rel=1e-10)
    # per-layer SNR: restrict the reference to each module's slice of the flat parameter vector
    start = 0
    for mod, m in model.named_children():
        size = sum(p.numel() for p in m.parameters())
        if size == 0:
            continue
        sl = slice(start, start + size)
        start += size
        tr_m = float(C.diagonal()[sl].sum())
        assert out[f"noise/snr/{mod}"] == pytest.approx(float(gbar[sl] @ gbar[sl]) / (tr_m / B), rel=1e-10)
    s = torch.cat([diag[id(p)].reshape(-1) for p in model.parameters()])
    cos = float(C.diagonal() @ s / (C.diagonal().norm() * s.norm()))
    assert out["noise/metric_alignment"] == pytest.approx(cos, rel=1e-10)


def test_no_alignment_without_covariant_optimizer_and_no_side_effects():
    model, loss_fn, x, y = _setup()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    rng = torch.get_rng_state()
    ctx = ProbeContext(model, loss_fn, x, y, step=0, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    out = NoiseProbe(per_layer=False).measure(ctx)
    assert "noise/metric_alignment" not in out and "noise/temperature" not in out
    assert not any(k.startswith("noise/snr/") for k in out)
    assert len(out["noise/spectrum"]) == x.shape[0]  # k=10 > B: B eigenvalues (one of them ~0)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(bool((p.grad == 1).all()) for p in model.parameters())


def test_gram_is_computed_once_and_shared():
    model, loss_fn, x, y = _setup()
    ctx = ProbeContext(model, loss_fn, x, y, step=0)
    a = shared_gradient_gram(ctx, "hooks", need_sq=True)
    assert shared_gradient_gram(ctx, "hooks") is a  # the sq version serves plain requests
    NoiseProbe().measure(ctx)
    NoiseProbe(k=2).measure(ctx)
    assert [k for k in ctx.cache if k.startswith("gradient_gram")] == ["gradient_gram/hooks/sq"]


def test_bad_arguments():
    with pytest.raises(LearndynValueError, match="'hooks', 'vmap'"):
        NoiseProbe(route="fast")
    with pytest.raises(LearndynValueError, match="k"):
        NoiseProbe(k=0)
    with pytest.raises(LearndynValueError, match="every"):
        NoiseProbe(every=0)


def test_alignment_with_covariant_gd():
    optim = pytest.importorskip("learndyn.optim")
    if not hasattr(optim, "CovariantGD"):
        pytest.skip("learndyn.optim.CovariantGD not available")
    model, loss_fn, x, y = _setup()
    frozen = model[0].bias
    opt = optim.CovariantGD([p for p in model.parameters() if p is not frozen], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    ctx = ProbeContext(model, loss_fn, x, y, step=3, optimizer=opt)
    out = NoiseProbe().measure(ctx)
    # reference over the managed parameters only
    G = _per_sample_matrix(model, loss_fn, x, y)
    diag_c = ((G - G.mean(0)) ** 2).mean(0)
    sizes = [p.numel() for p in model.parameters()]
    keep = torch.cat(
        [torch.full((n,), p is not frozen) for p, n in zip(model.parameters(), sizes, strict=True)]
    )
    s = torch.cat([opt.second_moment_diagonal(p).reshape(-1) for p in model.parameters() if p is not frozen])
    c = diag_c[keep]
    assert out["noise/metric_alignment"] == pytest.approx(float(c @ s / (c.norm() * s.norm())), rel=1e-8)
