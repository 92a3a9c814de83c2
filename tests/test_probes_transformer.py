"""Every probe on a 2-layer GPT (d=32, 8 tokens, float64) against brute-force references: a per-sample
autograd loop (noise), a dense Hessian of a parameter block (curvature), an explicit per-output Jacobian
(kernel, Gauss-Newton) -- for every route, with the default (fused) attention backend left as it is."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from _gpt import GPT, gpt_batch, lm_loss
from learndyn.probes import Monitor
from learndyn.probes.base import ProbeContext
from learndyn.probes.curvature import CurvatureProbe
from learndyn.probes.kernel import KernelProbe, empirical_ntk
from learndyn.probes.noise import NoiseProbe
from learndyn.stats import BatchAdapter, gauss_newton_diagonal, gradient_gram

B, T, V = 3, 8, 16
TOL = {"rtol": 1e-9, "atol": 1e-12}


def _gpt():
    torch.manual_seed(0)
    return GPT(vocab=V, d=32, layers=2, heads=2, context=T).double().eval()


@pytest.fixture(scope="module")
def ref():
    """Model, batch, per-sample gradients G (B, P), per-output Jacobians J (B, O, P), output Hessians."""
    model = _gpt()
    x, y = gpt_batch(B=B, T=T, vocab=V)
    params = list(model.parameters())
    G, J = [], []
    for i in range(B):
        out = model(x[i : i + 1])
        g = torch.autograd.grad(lm_loss(out, y[i : i + 1]), params, retain_graph=True)
        G.append(torch.cat([t.reshape(-1) for t in g]))
        flat = out.reshape(-1)  # every row of the Jacobian: one backward pass per one-hot cotangent
        eye = torch.eye(flat.numel(), dtype=flat.dtype)
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
            rows = torch.autograd.grad(flat, params, eye, is_grads_batched=True, retain_graph=True)
        J.append(torch.cat([t.reshape(flat.numel(), -1) for t in rows], 1))
    with torch.no_grad():
        outs = model(x)
    H = torch.stack(
        [
            torch.autograd.functional.hessian(
                lambda o, i=i: lm_loss(o.reshape(1, T, V), y[i : i + 1]), outs[i].reshape(-1)
            )
            for i in range(B)
        ]
    )
    return {"model": model, "x": x, "y": y, "G": torch.stack(G), "J": torch.stack(J), "H": H}


@pytest.mark.parametrize("route", ["hooks", "vmap"])
def test_noise_matches_per_sample_loop(ref, route):
    G = ref["G"]
    gbar = G.mean(0)
    Gc = G - gbar  # C = Gcᵀ Gc / B (P × P, not formed): tr C = ‖Gc‖²/B, eig(C) \ 0 = eig(Gc Gcᵀ/B)
    evals = torch.linalg.eigvalsh(Gc @ Gc.T / B).flip(0)
    out = NoiseProbe(k=2, route=route).measure(
        ProbeContext(ref["model"], lm_loss, ref["x"], ref["y"], 0, lr=0.1)
    )
    assert out["noise/trace"] == pytest.approx(float(Gc.square().sum()) / B, rel=1e-9)
    assert out["noise/grad_norm_sq"] == pytest.approx(float(gbar @ gbar), rel=1e-9)
    np.testing.assert_allclose(out["noise/spectrum"], evals[:2].numpy(), rtol=1e-9)
    stats = gradient_gram(ref["model"], lm_loss, ref["x"], ref["y"], route=route)
    torch.testing.assert_close(stats.gram(), G @ G.T, **TOL)
    if route == "hooks":  # embeddings (the position one unbatched), LayerNorms and Linears: no vmap
        assert set(stats.route.values()) == {"hooks"}


@pytest.mark.parametrize("method", ["structured", "jacobian", "ntvp"])
def test_kernel_matches_explicit_jacobian(ref, method):
    n = 2 if method == "ntvp" else B  # ntvp: n·O jvp columns
    J = ref["J"][:n]
    K = empirical_ntk(ref["model"], ref["x"][:n], method=method)
    Jf = J.reshape(n, -1)
    torch.testing.assert_close(K, Jf @ Jf.T, **TOL)
    if method == "structured":  # and the Jacobian method, to 1e-10
        torch.testing.assert_close(
            K, empirical_ntk(ref["model"], ref["x"], method="jacobian"), rtol=1e-10, atol=0
        )
    if method != "ntvp":
        full = empirical_ntk(ref["model"], ref["x"][:2], outputs="full", method=method)
        rows = ref["J"][:2].reshape(2 * T * V, -1)
        torch.testing.assert_close(full, rows @ rows.T, **TOL)


def test_kernel_probe_output_subset_is_scaled_and_fixed(ref):
    probe = KernelProbe(n_samples=B, max_outputs=40, seed=3)
    ctx = ProbeContext(ref["model"], lm_loss, ref["x"], ref["y"], 0)
    out = probe.measure(ctx)
    S = probe._select
    assert out["kernel/n_outputs"] == 40 and len(S) == 40
    Js = ref["J"][:, S.cpu()].reshape(B, -1)
    K = Js @ Js.T * (T * V / 40)
    assert out["kernel/trace"] == pytest.approx(float(K.trace()), rel=1e-9)
    np.testing.assert_allclose(
        out["kernel/top_eigenvalues"][:3], torch.linalg.eigvalsh(K).flip(0)[:3], rtol=1e-9
    )
    again = probe.measure(ProbeContext(ref["model"], lm_loss, ref["x"], ref["y"], 1))
    assert torch.equal(probe._select, S) and again["kernel/velocity"] == pytest.approx(0.0, abs=1e-12)


def _dense_block_hessian(model, x, y, names):
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])

    def loss_of(flat):
        parts = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return lm_loss(functional_call(model, parts, (x,)), y)

    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        return torch.autograd.functional.hessian(loss_of, flat0, vectorize=True)


@pytest.mark.parametrize("reorth", ["partial", "full"])
def test_curvature_block_matches_dense_hessian(ref, reorth):
    names = ["blocks.1.ln2.weight", "blocks.1.ln2.bias", "ln_f.weight", "ln_f.bias"]
    H = _dense_block_hessian(ref["model"], ref["x"], ref["y"], names)
    evals = torch.linalg.eigvalsh(H)
    P = H.shape[0]
    probe = CurvatureProbe(
        k=3, lanczos_iters=P, hutchinson_samples=0, params=["blocks.1.ln2", "ln_f"], reorth=reorth, ggn=False
    )
    out = probe.measure(ProbeContext(ref["model"], lm_loss, ref["x"], ref["y"], 0, lr=0.1))
    np.testing.assert_allclose(out["curvature/top_eigenvalues"], evals.flip(0)[:3].numpy(), rtol=1e-9)
    assert out["curvature/lambda_min"] == pytest.approx(float(evals[0]), rel=1e-9)


def test_gauss_newton_matches_explicit_jacobian(ref):
    J, H = ref["J"], ref["H"]
    diag = torch.einsum("bop,boq,bqp->p", J, H, J) / B
    got = gauss_newton_diagonal(ref["model"], BatchAdapter(lm_loss), (ref["x"], ref["y"]))
    flat = torch.cat([got.diag[n].reshape(-1) for n, _ in ref["model"].named_parameters()])
    torch.testing.assert_close(flat, diag, **TOL)
    assert got.trace == pytest.approx(float(diag.sum()), rel=1e-9)
    probe = CurvatureProbe(lanczos_iters=3, hutchinson_samples=0, ggn=True, ggn_max_outputs=1)
    out = probe.measure(ProbeContext(ref["model"], lm_loss, ref["x"], ref["y"], 0))
    assert out["curvature/ggn_trace"] == pytest.approx(float(diag.sum()), rel=1e-9)
    assert "curvature/trace" not in out  # a transformer is not piecewise linear: tr H ≠ tr G


def test_full_preset_runs_with_the_default_attention_backend():
    """The reported crash: curvature (double backward) and ntvp (forward AD) through CPU flash attention."""
    model = _gpt().float()
    x, y = gpt_batch(B=4, T=T, vocab=V)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, lm_loss, "full", optimizer=opt)
    for p in mon.probes:
        p.every = 1
    out = mon.after_step(0, (x, y))
    assert np.isfinite(out["curvature/lambda_max"]) and np.isfinite(out["kernel/trace"])
    assert np.isfinite(out["noise/trace"]) and np.isfinite(out["repr/blocks.0.fc/erank"])
    ntvp = KernelProbe(n_samples=2, method="ntvp", max_outputs=8).measure(
        ProbeContext(model, lm_loss, x, y, 0)
    )
    assert np.isfinite(ntvp["kernel/trace"])
