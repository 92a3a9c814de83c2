"""RepresentationProbe / ParameterDistanceProbe / capture_activations against independent numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from learndyn.probes.base import ProbeContext
from learndyn.probes.representation import (
    ParameterDistanceProbe,
    RepresentationProbe,
    capture_activations,
    default_representation_modules,
    effective_rank,
    participation_ratio,
    shared_activations,
    singular_values,
)
from learndyn.validation import LearndynValueError


def _np_erank(h: np.ndarray) -> float:
    s = np.linalg.svd(h, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _np_pr(h: np.ndarray) -> float:
    lam = np.linalg.eigvalsh(h.T @ h)
    return float(lam.sum() ** 2 / (lam**2).sum())


@pytest.mark.parametrize(("b", "d", "r"), [(20, 8, 1), (20, 8, 5), (6, 30, 6), (16, 16, 3)])
def test_effective_rank_of_orthogonal_rank_r_matrices_is_exactly_r(b, d, r):
    rng = np.random.default_rng(r)
    u, _ = np.linalg.qr(rng.standard_normal((b, b)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    h = 3.7 * u[:, :r] @ v[:, :r].T  # r equal singular values
    sv = singular_values(torch.from_numpy(h))
    assert effective_rank(sv) == pytest.approx(r, abs=1e-9)
    assert participation_ratio(sv) == pytest.approx(r, abs=1e-9)
    # the float32 route agrees to single precision
    assert effective_rank(singular_values(torch.from_numpy(h).float())) == pytest.approx(r, abs=1e-4)


def test_effective_rank_of_known_spectra():
    sv = np.array([4.0, 2.0, 1.0, 1.0, 0.0])
    p = sv[:4] / sv.sum()
    assert effective_rank(sv) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    lam = sv**2
    assert participation_ratio(sv) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-12)
    assert effective_rank(np.zeros(3)) == 0.0 and participation_ratio(np.zeros(3)) == 0.0
    h = np.random.default_rng(0).standard_normal((12, 7)) @ np.diag([5, 3, 1, 0.5, 0.1, 0.01, 0.0])
    assert effective_rank(singular_values(torch.from_numpy(h))) == pytest.approx(_np_erank(h), rel=1e-10)
    assert participation_ratio(singular_values(torch.from_numpy(h))) == pytest.approx(_np_pr(h), rel=1e-10)
    hc = h - h.mean(0)
    assert effective_rank(singular_values(torch.from_numpy(h), center=True)) == pytest.approx(
        _np_erank(hc), rel=1e-10
    )


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 3))


def test_probe_matches_numpy_on_hand_computed_activations():
    model = _mlp()
    x = torch.randn(32, 5)
    w1, b1, w2, b2 = (
        t.detach().double().numpy() for t in (model[0].weight, model[0].bias, model[2].weight, model[2].bias)
    )
    xn = x.double().numpy()
    h1 = np.maximum(xn @ w1.T + b1, 0)
    h2 = np.tanh(h1 @ w2.T + b2)
    out = RepresentationProbe(spectrum=True).measure(
        ProbeContext(model, F.mse_loss, x, torch.zeros(32, 3), 0)
    )
    for name, h in (("1", h1), ("3", h2)):
        assert out[f"repr/{name}/erank"] == pytest.approx(_np_erank(h), rel=1e-5)
        assert out[f"repr/{name}/pr"] == pytest.approx(_np_pr(h), rel=1e-5)
        assert out[f"repr/{name}/erank_frac"] == pytest.approx(_np_erank(h) / min(h.shape), rel=1e-5)
        assert out[f"repr/{name}/norm"] == pytest.approx(np.sqrt((h**2).sum(1).mean()), rel=1e-5)
        assert out[f"repr/{name}/dead_frac"] == pytest.approx(((h > 0).sum(0) == 0).mean())
        np.testing.assert_allclose(
            out[f"repr/{name}/sv"], np.linalg.svd(h, compute_uv=False), rtol=1e-4, atol=1e-5
        )
    assert out["repr/collapse"] == 0.0
    centred = RepresentationProbe(center=True).measure(
        ProbeContext(model, F.mse_loss, x, torch.zeros(32, 3), 0)
    )
    assert centred["repr/1/erank"] == pytest.approx(_np_erank(h1 - h1.mean(0)), rel=1e-5)


def test_collapse_flags():
    model = _mlp()
    with torch.no_grad():
        model[0].bias[:6] = -100.0  # half of the ReLUs never fire
        model[2].weight.copy_(torch.outer(torch.randn(7), torch.randn(12)))  # rank one
        model[2].bias.zero_()
    x = torch.randn(64, 5)
    probe = RepresentationProbe(modules=["1", "2"], rank_frac=0.3)
    ctx = ProbeContext(model, F.mse_loss, x, torch.zeros(64, 3), 0)
    out = probe.measure(ctx)
    assert out["repr/1/dead_frac"] == 0.5 and out["repr/1/dead_collapse"] == 1.0
    assert out["repr/2/rank_collapse"] == 1.0 and out["repr/2/erank"] == pytest.approx(1.0, abs=1e-5)
    assert out["repr/1/norm_collapse"] == 0.0 and out["repr/collapse"] == 1.0
    with torch.no_grad():
        model[0].weight.mul_(1e-3)
        model[0].bias.mul_(1e-3)
    out = probe.measure(ProbeContext(model, F.mse_loss, x, torch.zeros(64, 3), 1))
    assert out["repr/1/norm_collapse"] == 1.0


def test_capture_leaves_no_trace_and_matches_manual_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2))
    x = torch.randn(16, 4)
    model.train()
    model[3].eval()  # mixed modes must come back as they were
    F.mse_loss(model(x), torch.zeros(16, 2)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    for mode in ("eval", "train"):
        acts = capture_activations(model, x, ["1", "2", "3"], mode=mode)
        assert list(acts) == ["1", "2", "3"] and all(a.shape == (16, 6) for a in acts.values())
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        assert [m.training for m in model] == [True, True, True, False, True]
        assert all(not m._forward_hooks for m in model.modules())
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    with torch.no_grad():
        z = model[0](x)
        ref_train = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5) * model[1].weight + model[
            1
        ].bias
        rm, rv = model[1].running_mean, model[1].running_var
        ref_eval = (z - rm) / torch.sqrt(rv + 1e-5) * model[1].weight + model[1].bias
    torch.testing.assert_close(capture_activations(model, x, ["1"], mode="train")["1"], ref_train)
    torch.testing.assert_close(capture_activations(model, x, ["1"])["1"], ref_eval)
    # the ReLU's output is a copy: the in-place dropout (train mode) cannot change it afterwards
    acts = capture_activations(model, x, ["2"], mode="train")
    torch.testing.assert_close(acts["2"], F.relu(ref_train))


def test_repeated_modules_shared_cache_and_defaults():
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2))
    acts = capture_activations(model, torch.randn(5, 3), ["1"])
    assert list(acts) == ["1", "1.call1"]
    assert default_representation_modules(model) == ["1"]  # named_modules lists a shared module once

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.c(F.relu(self.b(F.relu(self.a(x)))))

    assert default_representation_modules(Functional()) == ["a", "b"]
    model = _mlp()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    ctx = ProbeContext(model, F.mse_loss, torch.randn(8, 5), torch.zeros(8, 3), 0)
    first = shared_activations(ctx)
    RepresentationProbe().measure(ctx)
    assert shared_activations(ctx) is first and len(calls) == 1
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    assert capture_activations(conv, torch.randn(3, 1, 6, 6))["1"].shape == (3, 32)


def test_validation_messages():
    with pytest.raises(LearndynValueError, match="mode='test' is not allowed"):
        RepresentationProbe(mode="test")
    with pytest.raises(LearndynValueError, match="rank_frac=0.0 is out of range"):
        RepresentationProbe(rank_frac=0)
    with pytest.raises(LearndynValueError, match="norm_frac=1.0 is out of range"):
        RepresentationProbe(norm_frac=1.0)
    with pytest.raises(LearndynValueError, match="modules='1' is not allowed"):
        RepresentationProbe(modules="1")  # type: ignore[arg-type]
    with pytest.raises(LearndynValueError, match="'nope', not a submodule"):
        capture_activations(_mlp(), torch.randn(2, 5), ["nope"])
    with pytest.raises(LearndynValueError, match="reference='last'"):
        ParameterDistanceProbe(reference="last")
    with pytest.raises(LearndynValueError, match="every=0"):
        ParameterDistanceProbe(every=0)


def test_parameter_distances():
    model = _mlp()
    model[4].bias.requires_grad_(False)  # frozen parameters are not counted
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)

    def step() -> None:
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()

    step()
    probe = ParameterDistanceProbe()
    out = probe.measure(ProbeContext(model, F.mse_loss, x, y, 1, init_params=init))
    assert "params/update" not in out and "params/4.bias/norm" not in out
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    prev = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
    step()
    step()
    out = probe.measure(ProbeContext(model, F.mse_loss, x, y, 3, init_params=init))
    now = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
    ini = {n: t.double().numpy() for n, t in init.items()}

    def tot(f) -> float:
        return math.sqrt(sum(float((f(n) ** 2).sum()) for n in names))

    assert out["params/norm"] == pytest.approx(tot(lambda n: now[n]), rel=1e-10)
    assert out["params/dist_init"] == pytest.approx(tot(lambda n: now[n] - ini[n]), rel=1e-6)
    assert out["params/dist_init_rel"] == pytest.approx(
        tot(lambda n: now[n] - ini[n]) / tot(lambda n: ini[n]), rel=1e-6
    )
    assert out["params/update"] == pytest.approx(tot(lambda n: now[n] - prev[n]), rel=1e-6)
    assert out["params/update_rel"] == pytest.approx(
        tot(lambda n: now[n] - prev[n]) / tot(lambda n: prev[n]), rel=1e-6
    )
    w = "0.weight"
    assert out[f"params/{w}/norm"] == pytest.approx(np.linalg.norm(now[w]), rel=1e-10)
    assert out[f"params/{w}/dist_init"] == pytest.approx(np.linalg.norm(now[w] - ini[w]), rel=1e-6)
    assert out[f"params/{w}/dist_init_rel"] == pytest.approx(
        np.linalg.norm(now[w] - ini[w]) / np.linalg.norm(ini[w]), rel=1e-6
    )
    assert out[f"params/{w}/update"] == pytest.approx(np.linalg.norm(now[w] - prev[w]), rel=1e-6)
    # without init_params (or with reference="first") distances count from the first measurement
    first = ParameterDistanceProbe(per_param=False, reference="first")
    ctx = ProbeContext(model, F.mse_loss, x, y, 3, init_params=init)
    assert first.measure(ctx)["params/dist_init"] == 0.0
    assert set(first.measure(ctx)) == {
        f"params/{k}" for k in ("norm", "dist_init", "dist_init_rel", "update", "update_rel")
    }
    assert all(p.grad is None or p.requires_grad for p in model.parameters())


def test_activations_recorded_on_the_noise_probes_forward_pass_are_the_same():
    """With the noise probe due, the representation probe reads activations recorded during the noise
    probe's hooked forward pass (one model call instead of two); every metric is identical to its own pass,
    and parameter distances over several measurements equal fresh recomputation."""
    from learndyn.probes import Monitor
    from learndyn.probes.noise import NoiseProbe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    both = Monitor(model, F.cross_entropy, [NoiseProbe(), RepresentationProbe(spectrum=True)])
    alone = Monitor(model, F.cross_entropy, [RepresentationProbe(spectrum=True)])
    both.after_step(0, (x, y))  # first batch: the reduction check calls the model too
    calls[0] = 0
    got = both.after_step(1, (x, y))
    assert calls[0] == 1
    ref = alone.after_step(1, (x, y))
    for k, v in ref.items():
        np.testing.assert_array_equal(got[k], v)
    # train mode: the representation probe makes its own pass
    train = Monitor(model, F.cross_entropy, [NoiseProbe(), RepresentationProbe(mode="train")])
    train.after_step(0, (x, y))
    calls[0] = 0
    train.after_step(1, (x, y))
    assert calls[0] == 2
