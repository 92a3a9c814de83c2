"""Structured NTK and exact Gauss-Newton curvature against explicit Jacobians and Hessians (float64), the
batch adapter, and Lanczos reorthogonalisation."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from learndyn.probes import Monitor
from learndyn.probes.base import ProbeContext
from learndyn.probes.curvature import CurvatureProbe, lanczos, piecewise_linear
from learndyn.stats import (
    BatchAdapter,
    HookGramCollector,
    gauss_newton_diagonal,
    gradient_gram,
    gradient_gram_of,
)
from learndyn.stats.ntk import per_sample_jacobians, structured_ntk
from learndyn.validation import LearndynValueError

TOL = {"rtol": 1e-10, "atol": 1e-12}
pytestmark = pytest.mark.usefixtures("float64")


class Seq(nn.Module):
    """Embedding, position-wise Linear (reused), LayerNorm, RMSNorm, a bare parameter, pooled readout."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 6, padding_idx=0)
        self.lin = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.rms = nn.RMSNorm(6)
        self.gain = nn.Parameter(torch.tensor(1.2))
        self.head = nn.Linear(6, 3)

    def forward(self, idx):
        h = self.norm(torch.tanh(self.lin(self.emb(idx))))
        h = self.rms(self.lin(h)) * self.gain
        return self.head(h.mean(1))


def _case(name):
    g = torch.Generator().manual_seed(1)
    B = 5
    if name == "mlp":
        model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        return model, torch.randn(B, 4, generator=g), torch.randint(0, 3, (B,), generator=g)
    if name == "cnn":
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 3))
        return model, torch.randn(B, 2, 4, 4, generator=g), torch.randint(0, 3, (B,), generator=g)
    if name == "seq":
        model = Seq()
        return model, torch.randint(0, 7, (B, 4), generator=g), torch.randint(0, 3, (B,), generator=g)
    raise AssertionError(name)


def explicit_jacobian(model, x):
    """(B, O, P) by one backward pass per sample and output."""
    params = list(model.parameters())
    out = []
    for i in range(x.shape[0]):
        flat = model(x[i : i + 1]).reshape(-1)
        rows = [
            torch.autograd.grad(flat[a], params, retain_graph=True, allow_unused=True)
            for a in range(len(flat))
        ]
        out.append(
            torch.stack(
                [
                    torch.cat(
                        [
                            (t if t is not None else torch.zeros_like(p)).reshape(-1)
                            for t, p in zip(r, params, strict=True)
                        ]
                    )
                    for r in rows
                ]
            )
        )
    return torch.stack(out)


def _call(m, b):
    return m(b)


@pytest.mark.parametrize("case", ["mlp", "cnn", "seq"])
def test_structured_ntk_equals_explicit_jacobian(case):
    model, x, _ = _case(case)
    J = explicit_jacobian(model, x)
    B, O = J.shape[:2]
    trace = sum(structured_ntk(model, _call, x).values())
    torch.testing.assert_close(trace, J.reshape(B, -1) @ J.reshape(B, -1).T, **TOL)
    full = sum(structured_ntk(model, _call, x, outputs="full").values())
    torch.testing.assert_close(full, J.reshape(B * O, -1) @ J.reshape(B * O, -1).T, **TOL)
    chunked = sum(structured_ntk(model, _call, x, chunk_size=2).values())
    torch.testing.assert_close(chunked, trace, **TOL)
    ref = per_sample_jacobians(model, _call, x)  # the Jacobian method
    Jm = torch.cat([ref[n].reshape(B, O, -1) for n, _ in model.named_parameters()], 2)
    torch.testing.assert_close(Jm, J, **TOL)


def test_sequence_layers_use_hooks_for_every_supported_parameter():
    model, x, y = _case("seq")
    route = gradient_gram(model, F.cross_entropy, x, y).route
    assert route.pop("gain") == "vmap"
    assert set(route.values()) == {"hooks"}


def _explicit_ggn_diag(model, loss_fn, x, y):
    J = explicit_jacobian(model, x)
    with torch.no_grad():
        out = model(x)
    H = torch.stack(
        [
            torch.autograd.functional.hessian(
                lambda o, i=i: loss_fn(o.reshape(1, *out.shape[1:]), y[i : i + 1]), out[i]
            )
            for i in range(x.shape[0])
        ]
    )
    return torch.einsum("bop,boq,bqp->p", J, H.reshape(len(x), J.shape[1], J.shape[1]), J) / x.shape[0]


@pytest.mark.parametrize("case", ["mlp", "cnn", "seq"])
@pytest.mark.parametrize("loss", ["ce", "ce_partial", "mse"])
def test_gauss_newton_diagonal_equals_explicit(case, loss):
    model, x, y = _case(case)
    if loss == "mse":
        loss_fn, y = F.mse_loss, torch.randn(x.shape[0], 3, generator=torch.Generator().manual_seed(2))
    else:  # the closed form (plain F.cross_entropy) and the generic eigendecomposition (a partial)
        loss_fn = F.cross_entropy if loss == "ce" else functools.partial(F.cross_entropy, label_smoothing=0.0)
    diag = _explicit_ggn_diag(model, loss_fn, x, y)
    got = gauss_newton_diagonal(model, BatchAdapter(loss_fn), (x, y))
    flat = torch.cat([got.diag[n].reshape(-1) for n, _ in model.named_parameters()])
    torch.testing.assert_close(flat, diag, **TOL)
    assert got.trace == pytest.approx(float(diag.sum()), rel=1e-10)


@pytest.mark.parametrize("case", ["mlp", "cnn", "seq"])
def test_gauss_newton_traces_alone_equal_the_diagonals_sums(case):
    model, x, y = _case(case)
    full = gauss_newton_diagonal(model, BatchAdapter(F.cross_entropy), (x, y))
    alone = gauss_newton_diagonal(model, BatchAdapter(F.cross_entropy), (x, y), diagonal=False)
    assert alone.diag == {} and alone.route == full.route
    for n, t in full.traces.items():
        assert alone.traces[n] == pytest.approx(float(full.diag[n].sum()), rel=1e-12, abs=1e-15)
        assert alone.traces[n] == pytest.approx(t, rel=1e-12, abs=1e-15)


def _dense_hessian(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss_of(flat):
        parts = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return loss_fn(functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(
        loss_of, torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    )


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_exact_trace_of_piecewise_linear_networks_is_the_hessian_trace(case):
    model, x, y = _case(case)
    H = _dense_hessian(model, F.cross_entropy, x, y)
    got = gauss_newton_diagonal(model, BatchAdapter(F.cross_entropy), (x, y))
    flat = torch.cat([got.diag[n].reshape(-1) for n, _ in model.named_parameters()])
    torch.testing.assert_close(flat, H.diagonal(), **TOL)  # ∂²f/∂θ_k² = 0 for ReLU networks
    assert piecewise_linear(model) and not piecewise_linear(_case("seq")[0])
    out = CurvatureProbe(lanczos_iters=4, hutchinson_samples=5).measure(
        ProbeContext(model, F.cross_entropy, x, y, 0)
    )
    assert out["curvature/trace"] == pytest.approx(float(H.trace()), rel=1e-10)
    assert out["curvature/trace_stderr"] == 0.0
    assert out["curvature/ggn_trace/0"] + out[
        "curvature/ggn_trace/2" if case == "mlp" else "curvature/ggn_trace/3"
    ] == (pytest.approx(float(H.trace()), rel=1e-10))


def test_unbatched_call_that_is_not_broadcast_falls_back():
    """An embedding of arange(T) whose output is *summed over positions* before use: expanding it per sample
    would be wrong; the one-time comparison with vmap drops the layer and the result stays exact."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Embedding(5, 3)
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            p = self.pos(torch.arange(5)).sum(0)  # (3,), then broadcast
            return self.lin(x + p)

    model = Odd()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)
    hooks = gradient_gram(model, F.mse_loss, x, y)
    vm = gradient_gram(model, F.mse_loss, x, y, route="vmap")
    torch.testing.assert_close(hooks.grams, vm.grams, **TOL)


def test_position_embedding_with_as_many_positions_as_samples():
    """``pos(arange(T))`` with T = B looks like one token per sample; verification sorts it out."""

    class Pos(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(5, 3)
            self.pos = nn.Embedding(4, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, idx):
            return self.head(torch.tanh(self.tok(idx) + self.pos(torch.arange(idx.shape[1]))).mean(1))

    model = Pos()
    x = torch.randint(0, 5, (4, 4), generator=torch.Generator().manual_seed(0))
    y = torch.randn(4, 2)
    hooks = gradient_gram(model, F.mse_loss, x, y)
    torch.testing.assert_close(hooks.grams, gradient_gram(model, F.mse_loss, x, y, route="vmap").grams, **TOL)
    assert hooks.route["pos.weight"] == "vmap"  # taken for one token per sample, failed verification
    model = Pos()  # afresh: first B = 3 ≠ T (verified as unbatched), then B = T = 4
    collector = HookGramCollector(model)
    collector(F.mse_loss, x[:3], y[:3])
    again = collector(F.mse_loss, x, y)
    assert again.route["pos.weight"] == "hooks"
    torch.testing.assert_close(again.grams, gradient_gram(model, F.mse_loss, x, y, route="vmap").grams, **TOL)
    J = explicit_jacobian(model, x)
    torch.testing.assert_close(
        sum(structured_ntk(model, _call, x).values()), J.reshape(4, -1) @ J.reshape(4, -1).T, **TOL
    )


# ------------------------------------------------------------------------------------------ batch adapter


class HFLike(nn.Module):
    """Called with keywords, returns an object with ``.logits`` and ``.loss`` (Hugging Face style)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(9, 4)
        self.head = nn.Linear(4, 9)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))

        class Out:
            pass

        out = Out()
        out.logits = logits
        out.loss = None if labels is None else F.cross_entropy(logits.reshape(-1, 9), labels.reshape(-1))
        return out


def _hf_batch():
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 9, (6, 5), generator=g)
    return {"input_ids": ids, "labels": torch.roll(ids, -1, 1)}


def test_dict_batches_through_an_adapter_equal_the_pair_form():
    model = HFLike()
    batch = _hf_batch()

    def lm(logits, labels):
        return F.cross_entropy(logits.reshape(-1, 9), labels.reshape(-1))

    pair = gradient_gram(model, lambda o, t: lm(o.logits, t), batch["input_ids"], batch["labels"])
    forms = {
        "loss": BatchAdapter(loss=lambda m, b: m(**b).loss),
        "loss_fn": BatchAdapter(
            lm,
            inputs_of=lambda b: b["input_ids"],
            targets_of=lambda b: b["labels"],
            outputs=lambda m, b: m(b["input_ids"]).logits,
        ),
        "per_sample": BatchAdapter(
            per_sample_loss=lambda o, t: F.cross_entropy(o.transpose(1, 2), t, reduction="none").mean(1),
            outputs=lambda m, b: m(b["input_ids"]).logits,
            targets_of=lambda b: b["labels"],
        ),
    }
    for name, adapter in forms.items():
        for route in ("hooks", "vmap"):
            got = gradient_gram_of(model, adapter, batch, route=route)
            torch.testing.assert_close(got.grams, pair.grams, **TOL, msg=f"{name} {route}")


def test_monitor_runs_every_probe_on_dict_batches():
    model = HFLike()
    adapter = BatchAdapter(
        loss=lambda m, b: m(**b).loss,
        inputs_of=lambda b: b["input_ids"],
        outputs=lambda m, b: m(b["input_ids"]).logits,
    )
    mon = Monitor(model, adapter=adapter, probes="full")
    for p in mon.probes:
        p.every = 1
    batch = _hf_batch()
    out = mon.after_step(0, batch)
    for key in ("noise/trace", "curvature/lambda_max", "kernel/trace", "params/dist_init"):
        assert np.isfinite(out[key]), key
    with torch.no_grad():
        assert out["stage/value"] == pytest.approx(float(model(**batch).loss), rel=1e-12)
    assert "curvature/ggn_trace" not in out  # loss(model, batch) has no outputs/loss split


def test_bad_batches_and_summed_losses_get_clear_errors():
    model = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    mon = Monitor(model, F.mse_loss, probes=["noise"])
    with pytest.raises(LearndynValueError, match=r"dict with keys \['x', 'y'\].*BatchAdapter"):
        mon.after_step(0, {"x": x, "y": y})
    with pytest.raises(LearndynValueError, match="tuple of length 3"):
        mon.after_step(0, (x, y, y))
    summed = Monitor(model, functools.partial(F.mse_loss, reduction="sum"), probes=["noise"])
    with pytest.raises(LearndynValueError, match="sums over the batch"):
        summed.after_step(0, (x, y))
    with pytest.raises(LearndynValueError, match="one loss"):
        Monitor(model, F.mse_loss, adapter=BatchAdapter(F.mse_loss))
    with pytest.raises(LearndynValueError, match="exactly one of"):
        BatchAdapter(F.mse_loss, loss=lambda m, b: m(b).sum())
    fixed = Monitor(
        model, adapter=BatchAdapter(per_sample_loss=lambda o, t: (o - t).square().sum(1)), probes=["noise"]
    )
    assert np.isfinite(fixed.after_step(0, (x, y))["noise/trace"])


# ------------------------------------------------------------------------------------------------ Lanczos


def test_partial_reorthogonalisation_matches_full():
    g = torch.Generator().manual_seed(5)
    d = torch.cat([torch.tensor([10.0, 9.5, 9.0]), torch.rand(297, generator=g) * 2 - 1])
    Q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g))
    A = Q @ torch.diag(d) @ Q.T
    calls = []

    def mv(v):
        calls.append(1)
        return A @ v

    full = lanczos(mv, 300, 60, generator=torch.Generator().manual_seed(0), reorth="full")
    part = lanczos(mv, 300, 60, generator=torch.Generator().manual_seed(0), reorth="partial")
    torch.testing.assert_close(part[-3:], full[-3:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(part[-3:], torch.tensor([9.0, 9.5, 10.0]), rtol=1e-10, atol=1e-12)
    assert len(calls) == 120
    with pytest.raises(LearndynValueError, match="'partial', 'full'"):
        lanczos(mv, 300, 5, generator=g, reorth="none")
