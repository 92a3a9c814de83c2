"""CurvatureProbe against the explicit Hessian (torch.autograd.functional.hessian + eigvalsh), float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from learndyn.probes.base import ProbeContext
from learndyn.probes.curvature import (
    CurvatureProbe,
    HessianVectorProduct,
    hutchinson_trace,
    lanczos,
    rademacher,
)
from learndyn.stats import BatchAdapter
from learndyn.stats.ggn import gauss_newton_diagonal
from learndyn.validation import LearndynValueError

pytestmark = pytest.mark.usefixtures("float64")


def _setup(B=16):
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(B, 3, generator=g)
    y = torch.randint(0, 2, (B,), generator=g)
    return model, F.cross_entropy, x, y


def explicit_hessian(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        parts = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return loss_fn(functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat0)


def test_hvp_matches_explicit_hessian():
    model, loss_fn, x, y = _setup()
    H = explicit_hessian(model, loss_fn, x, y)
    hvp = HessianVectorProduct(model, loss_fn, x, y)
    v = torch.randn(hvp.dim)
    torch.testing.assert_close(hvp(v), H @ v, rtol=1e-10, atol=1e-12)


def test_lanczos_full_dimension_is_exact_and_short_run_gets_the_top():
    model, loss_fn, x, y = _setup()
    H = explicit_hessian(model, loss_fn, x, y)
    evals = torch.linalg.eigvalsh(H)
    P = H.shape[0]
    ritz = lanczos(lambda v: H @ v, P, P, generator=torch.Generator().manual_seed(0))
    # exact: the Ritz values are eigenvalues; extremes match
    torch.testing.assert_close(ritz[-3:], evals[-3:], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ritz[0], evals[0], rtol=1e-8, atol=1e-10)
    short = lanczos(lambda v: H @ v, P, 15, generator=torch.Generator().manual_seed(0))
    assert float(short[-1]) == pytest.approx(float(evals[-1]), rel=1e-6)


def test_lanczos_on_a_known_spectrum_with_repeats():
    d = torch.tensor([5.0, 5.0, 3.0, 1.0, 0.0, -2.0] + [0.5] * 30)
    Q, _ = torch.linalg.qr(torch.randn(36, 36, generator=torch.Generator().manual_seed(1)))
    A = Q @ torch.diag(d) @ Q.T
    ritz = lanczos(lambda v: A @ v, 36, 36, generator=torch.Generator().manual_seed(3))
    assert float(ritz[-1]) == pytest.approx(5.0, rel=1e-10)
    assert float(ritz[0]) == pytest.approx(-2.0, rel=1e-10)
    # a breakdown (invariant subspace) stops early: at most 6 distinct eigenvalues
    assert len(ritz) <= 6


def _textbook_lanczos(A, start, m):
    """Ritz values of ``m`` Lanczos steps with full reorthogonalisation, as in a textbook (the reference)."""
    Q = [start / start.norm()]
    T = torch.zeros(m, m, dtype=A.dtype)
    for j in range(m):
        w = A @ Q[j]
        T[j, j] = w @ Q[j]
        for _ in range(2):
            for q in Q:
                w = w - (w @ q) * q
        if j + 1 < m:
            T[j, j + 1] = T[j + 1, j] = w.norm()
            Q.append(w / w.norm())
    return torch.linalg.eigvalsh(T)


@pytest.mark.parametrize("reorth", ["partial", "full"])
def test_lanczos_equals_textbook_reference_reusing_its_workspace(reorth):
    g = torch.Generator().manual_seed(4)
    d = torch.cat([torch.tensor([4.0, 3.5, 3.4]), torch.rand(57, generator=g)])
    Q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g))
    A = Q @ torch.diag(d) @ Q.T
    held = torch.empty(60)

    def mv(v):  # returns the same tensor every time: Lanczos must only read it
        return held.copy_(A @ v)

    workspace: dict = {}
    for m in (12, 30, 12):  # the 30-step basis is allocated once and reused by the next 12-step call
        start = torch.randn(60, generator=torch.Generator().manual_seed(m))
        gen = torch.Generator().manual_seed(m)
        got = lanczos(mv, 60, m, generator=gen, reorth=reorth, workspace=workspace)
        torch.testing.assert_close(got, _textbook_lanczos(A, start, m), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(held, A @ workspace["basis"][m - 1, :60], rtol=1e-12, atol=1e-14)
    assert workspace["basis"].shape[0] == 30


def test_hvp_with_unused_and_frozen_parameters():
    model, loss_fn, x, y = _setup()
    H = explicit_hessian(model, loss_fn, x, y)
    keep = [k for k, p in enumerate(model.parameters()) if k != 1]
    sizes = [p.numel() for p in model.parameters()]
    model[0].bias.requires_grad_(False)
    # trainable but outside the forward pass (last in parameter order): H v is 0 there
    model[2].register_parameter("unused", nn.Parameter(torch.randn(6)))
    idx = torch.cat([torch.arange(sum(sizes[:k]), sum(sizes[: k + 1])) for k in keep])
    hvp = HessianVectorProduct(model, loss_fn, x, y)
    assert hvp.dim == len(idx) + 6
    v = torch.randn(hvp.dim)
    want = torch.cat([H[idx][:, idx] @ v[: len(idx)], torch.zeros(6)])
    torch.testing.assert_close(hvp(v), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(LearndynValueError, match=f"allowed: \\({hvp.dim},\\)"):
        hvp(torch.randn(hvp.dim + 1))


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)],
        lambda: [nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)],
        lambda: [nn.Linear(5, 4), nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3), nn.Identity()],
    ],
)
@pytest.mark.parametrize("loss", ["ce", "ce_module", "mse"])
def test_mlp_hvp_by_the_written_out_r_operator_matches_explicit_hessian(layers, loss):
    torch.manual_seed(3)
    model = nn.Sequential(*layers())
    x = torch.randn(11, 5)
    if loss == "mse":
        loss_fn, y = F.mse_loss, torch.randn(11, 3)
    else:
        loss_fn, y = (F.cross_entropy if loss == "ce" else nn.CrossEntropyLoss()), torch.randint(0, 3, (11,))
    H = explicit_hessian(model, loss_fn, x, y)
    hvp = HessianVectorProduct(model, loss_fn, x, y)
    assert hvp._structured is not None
    assert hvp.loss == pytest.approx(float(loss_fn(model(x), y).detach()), rel=1e-12)
    v = torch.randn(hvp.dim)
    torch.testing.assert_close(hvp(v), H @ v, rtol=1e-10, atol=1e-12)
    # the Gauss-Newton traces from the same factors equal the structured-backpropagation ones
    ggn = gauss_newton_diagonal(model, BatchAdapter(loss_fn), (x, y))
    traces = hvp.ggn_traces()
    assert list(traces) == list(ggn.traces)
    for name, value in traces.items():
        assert value == pytest.approx(ggn.traces[name], rel=1e-10, abs=1e-14)
    if all(not isinstance(m, nn.Tanh) for m in model):  # piecewise linear: tr G = tr H
        assert sum(traces.values()) == pytest.approx(float(H.trace()), rel=1e-10)


def test_mlp_hvp_is_used_only_where_it_applies():
    torch.manual_seed(3)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    assert HessianVectorProduct(mlp, F.cross_entropy, x, y)._structured is not None
    others = [
        (nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 3)), F.cross_entropy),  # other activation
        (nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.ReLU(), nn.Linear(7, 3)), F.cross_entropy),
        (nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.ReLU()), F.cross_entropy),
        (mlp, nn.CrossEntropyLoss(label_smoothing=0.1)),
        (mlp, lambda o, t: F.cross_entropy(o, t)),
    ]
    hooked = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    hooked[1].register_forward_hook(lambda m, i, o: 2 * o)
    others.append((hooked, F.cross_entropy))
    for model, loss_fn in others:
        hvp = HessianVectorProduct(model, loss_fn, x, y)
        assert hvp._structured is None
        H = explicit_hessian(model, loss_fn, x, y)
        v = torch.randn(hvp.dim)
        torch.testing.assert_close(hvp(v), H @ v, rtol=1e-10, atol=1e-12)
    mlp[0].bias.requires_grad_(False)
    assert HessianVectorProduct(mlp, F.cross_entropy, x, y)._structured is None


def test_hutchinson_reproduces_vectors_and_is_unbiased():
    model, loss_fn, x, y = _setup()
    H = explicit_hessian(model, loss_fn, x, y)
    P = H.shape[0]
    est, err = hutchinson_trace(lambda v: H @ v, P, 7, generator=torch.Generator().manual_seed(4))
    V = rademacher(7, P, generator=torch.Generator().manual_seed(4))
    assert set(V.unique().tolist()) == {-1.0, 1.0}
    quad = torch.einsum("np,pq,nq->n", V, H, V)
    assert est == pytest.approx(float(quad.mean()), rel=1e-10)
    assert err == pytest.approx(float(quad.std() / 7**0.5), rel=1e-10)
    big, big_err = hutchinson_trace(lambda v: H @ v, P, 4000, generator=torch.Generator().manual_seed(5))
    assert abs(big - float(H.trace())) < 4 * big_err


def test_probe_matches_explicit_hessian_and_leaves_rng_and_grads_alone():
    model, loss_fn, x, y = _setup()
    H = explicit_hessian(model, loss_fn, x, y)
    evals = torch.linalg.eigvalsh(H).flip(0)
    P = H.shape[0]
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    rng = torch.get_rng_state()
    probe = CurvatureProbe(k=3, lanczos_iters=P, hutchinson_samples=5, seed=1)
    ctx = ProbeContext(model, loss_fn, x, y, step=0, lr=0.5)
    out = probe.measure(ctx)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(bool((p.grad == 3.0).all()) for p in model.parameters())
    np.testing.assert_allclose(out["curvature/top_eigenvalues"], evals[:3].numpy(), rtol=1e-8)
    assert out["curvature/lambda_max"] == pytest.approx(float(evals[0]), rel=1e-8)
    assert out["curvature/lambda_min"] == pytest.approx(float(evals[-1]), rel=1e-6, abs=1e-8)
    assert out["curvature/sharpness"] == pytest.approx(0.5 * float(evals[0]), rel=1e-8)
    assert out["curvature/stability_ratio"] == pytest.approx(0.25 * float(evals[0]), rel=1e-8)
    # the trace estimate is reproducible from the seed (Lanczos draws its start vector first)
    gen = torch.Generator().manual_seed(1)
    torch.randn(P, generator=gen, dtype=torch.float64)
    V = rademacher(5, P, generator=gen)
    assert out["curvature/trace"] == pytest.approx(
        float(torch.einsum("np,pq,nq->n", V, H, V).mean()), rel=1e-8
    )
    # reset() restarts the private stream: same numbers again
    probe.reset()
    again = probe.measure(ProbeContext(model, loss_fn, x, y, step=0, lr=0.5))
    assert again["curvature/trace"] == out["curvature/trace"]


def test_bad_arguments():
    with pytest.raises(LearndynValueError, match="lanczos_iters"):
        CurvatureProbe(k=5, lanczos_iters=3)
    with pytest.raises(LearndynValueError, match="hutchinson_samples"):
        CurvatureProbe(hutchinson_samples=-1)
