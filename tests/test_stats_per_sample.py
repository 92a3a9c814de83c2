"""Per-sample gradient statistics against a brute-force per-sample autograd loop (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learndyn.stats import (
    BatchAdapter,
    HookGramCollector,
    gradient_gram,
    gram_from_per_sample,
    per_sample_grads,
)
from learndyn.validation import LearndynValueError

pytestmark = pytest.mark.usefixtures("float64")


def reference_grads(model, loss_fn, x, y):
    """g_i = ∇ℓ_i by one backward pass per sample: {name: (B, *shape)}."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = []
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.autograd.grad(loss, list(params.values()), allow_unused=True))
    return {
        n: torch.stack([r[k] if r[k] is not None else torch.zeros_like(p) for r in rows])
        for k, (n, p) in enumerate(params.items())
    }


class SeqNet(nn.Module):
    """Position-wise linear layers on (B, T, d), pooled over T."""

    def __init__(self, d_in, d_hidden, d_out):
        super().__init__()
        self.inp = nn.Linear(d_in, d_hidden)
        self.out = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x)).mean(1))


class Reuse(nn.Module):
    """One linear layer called twice (weight reuse), a bias-free layer, a LayerNorm and a bare parameter."""

    def __init__(self):
        super().__init__()
        self.sq = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3, bias=False)
        self.scale = nn.Parameter(torch.tensor(1.3))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        h = torch.tanh(self.sq(x))
        h = self.sq(self.frozen(h))
        return self.scale * self.head(self.norm(h))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(3, 4, (2, 3), dilation=(1, 2), padding=(1, 0)),
        nn.Tanh(),
        nn.Flatten(),
        nn.LazyLinear(3),
    )


def _case(name):
    g = torch.Generator().manual_seed(1)
    B = 6
    if name == "mlp":
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
        x, y = torch.randn(B, 5, generator=g), torch.randint(0, 3, (B,), generator=g)
        return model, F.cross_entropy, x, y
    if name == "seq_ghost":  # B T² (d_in + d_out) < (T + B) d_in d_out: Gram without materialising
        model = SeqNet(32, 32, 2)
        x, y = torch.randn(B, 2, 32, generator=g), torch.randn(B, 2, generator=g)
        return model, F.mse_loss, x, y
    if name == "seq_materialise":
        model = SeqNet(3, 4, 2)
        x, y = torch.randn(B, 7, 3, generator=g), torch.randn(B, 2, generator=g)
        return model, F.mse_loss, x, y
    if name == "cnn":
        model = _cnn()
        model(torch.zeros(1, 2, 9, 10))
        x, y = torch.randn(B, 2, 9, 10, generator=g), torch.randint(0, 3, (B,), generator=g)
        return model, F.cross_entropy, x, y
    if name == "reuse":
        model = Reuse()
        x, y = torch.randn(B, 4, generator=g), torch.randint(0, 3, (B,), generator=g)
        return model, F.cross_entropy, x, y
    if name == "tied":
        model = Tied()
        x, y = torch.randn(B, 3, generator=g), torch.randn(B, 3, generator=g)
        return model, F.mse_loss, x, y
    raise AssertionError(name)


CASES = ["mlp", "seq_ghost", "seq_materialise", "cnn", "reuse", "tied"]


@pytest.mark.parametrize("case", CASES)
def test_vmap_per_sample_grads_match_reference(case):
    model, loss_fn, x, y = _case(case)
    ref = reference_grads(model, loss_fn, x, y)
    got = per_sample_grads(model, loss_fn, x, y)
    assert list(got) == list(ref)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("route", ["hooks", "vmap"])
@pytest.mark.parametrize("case", CASES)
def test_gram_matches_reference(case, route):
    model, loss_fn, x, y = _case(case)
    ref = reference_grads(model, loss_fn, x, y)
    stats = gradient_gram(model, loss_fn, x, y, route=route, need_sq=True)
    assert stats.names == list(ref)
    B = x.shape[0]
    for k, n in enumerate(stats.names):
        flat = ref[n].reshape(B, -1)
        torch.testing.assert_close(stats.grams[k], flat @ flat.T, rtol=1e-10, atol=1e-12, msg=n)
        torch.testing.assert_close(stats.mean[n], ref[n].mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(stats.sq_mean[n], ref[n].square().mean(0), rtol=1e-10, atol=1e-12)
    allflat = torch.cat([ref[n].reshape(B, -1) for n in ref], 1)
    torch.testing.assert_close(stats.gram(), allflat @ allflat.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.norms(), allflat.norm(dim=1), rtol=1e-10, atol=1e-12)
    assert stats.loss == pytest.approx(float(loss_fn(model(x), y).detach()), rel=1e-12)


def test_hook_route_covers_linear_conv_and_norms_and_falls_back_for_the_rest():
    model, loss_fn, x, y = _case("reuse")
    stats = gradient_gram(model, loss_fn, x, y)
    assert stats.route == {
        "sq.weight": "hooks",
        "sq.bias": "hooks",
        "head.weight": "hooks",
        "norm.weight": "hooks",
        "norm.bias": "hooks",
        "scale": "vmap",
    }
    cnn, loss_fn, x, y = _case("cnn")
    assert set(gradient_gram(cnn, loss_fn, x, y).route.values()) == {"hooks"}
    tied, loss_fn, x, y = _case("tied")
    route = gradient_gram(tied, loss_fn, x, y).route
    assert set(route.values()) == {"vmap"}  # a shared weight sends both layers to vmap


def test_by_module_groups_parameters():
    model, loss_fn, x, y = _case("mlp")
    stats = gradient_gram(model, loss_fn, x, y)
    groups = stats.by_module()
    assert set(groups) == {"0", "2"}
    torch.testing.assert_close(groups["0"], stats.grams[0] + stats.grams[1])
    torch.testing.assert_close(sum(groups.values()), stats.gram())


def test_sq_mean_is_none_unless_requested_and_grads_untouched():
    model, loss_fn, x, y = _case("mlp")
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    stats = HookGramCollector(model)(loss_fn, x, y)
    assert stats.sq_mean is None
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    assert stats.batch_size == 6


@pytest.mark.parametrize("case", ["mlp", "cnn", "seq_materialise", "tied"])
def test_grams_without_the_mean_gradient_and_with_a_kept_graph(case):
    """``need_mean=False`` stops the backward pass at the layer outputs (same Grams, no mean);
    ``keep_graph=True`` returns gradients that differentiate again to the Hessian."""
    model, loss_fn, x, y = _case(case)
    ref = reference_grads(model, loss_fn, x, y)
    B = x.shape[0]
    col = HookGramCollector(model)
    batch = (x, y)
    full = col.collect(BatchAdapter(loss_fn), batch)
    bare = col.collect(BatchAdapter(loss_fn), batch, need_mean=False)
    kept = col.collect(BatchAdapter(loss_fn), batch, keep_graph=True, need_mean=False)
    assert bare.mean is None and full.graph is None and bare.graph is None
    for k, n in enumerate(full.names):
        flat = ref[n].reshape(B, -1)
        for stats in (full, bare, kept):
            torch.testing.assert_close(stats.grams[k], flat @ flat.T, rtol=1e-10, atol=1e-12, msg=n)
        torch.testing.assert_close(kept.mean[n], ref[n].mean(0), rtol=1e-10, atol=1e-12)
    loss, grads = kept.graph
    assert float(loss.detach()) == pytest.approx(full.loss, rel=1e-12)
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    live = [(g, t) for g, t in zip(grads, v, strict=True) if g is not None and g.requires_grad]
    hv = torch.autograd.grad([g for g, _ in live], params, [t for _, t in live], allow_unused=True)
    flat_v = torch.cat([t.reshape(-1) for t in v])
    flat_p = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(theta):
        parts = dict(
            zip(
                [n for n, p in model.named_parameters() if p.requires_grad],
                [t.view_as(p) for t, p in zip(theta.split([p.numel() for p in params]), params, strict=True)],
                strict=True,
            )
        )
        return loss_fn(torch.func.functional_call(model, parts, (x,)), y)

    H = torch.autograd.functional.hessian(loss_of, flat_p)
    got = torch.cat(
        [(h if h is not None else torch.zeros_like(p)).reshape(-1) for h, p in zip(hv, params, strict=True)]
    )
    torch.testing.assert_close(got, H @ flat_v, rtol=1e-9, atol=1e-11)


def test_gram_from_given_per_sample_grads():
    model, loss_fn, x, y = _case("mlp")
    per = per_sample_grads(model, loss_fn, x, y)
    a = gram_from_per_sample(model, loss_fn, x, y, per_sample=per)
    b = gradient_gram(model, loss_fn, x, y, route="hooks")
    torch.testing.assert_close(a.grams, b.grams)


def test_bad_route_names_allowed_values():
    model, loss_fn, x, y = _case("mlp")
    with pytest.raises(LearndynValueError, match="'hooks', 'vmap'"):
        gradient_gram(model, loss_fn, x, y, route="magic")


def test_hook_route_rejects_a_sum_reduced_loss():
    model, _, x, y = _case("mlp")
    with pytest.raises(LearndynValueError, match="reduction='mean'"):
        gradient_gram(model, lambda o, t: F.cross_entropy(o, t, reduction="sum"), x, y)
    col = HookGramCollector(model)
    col(F.cross_entropy, x, y)  # checked once, on the first call
    assert col._checked
