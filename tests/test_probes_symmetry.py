"""SymmetryProbe: detection from the architecture, exact invariance (autograd), drift under GD and decay.

The generators used here are written out independently of the probe's code: for each detected symmetry the
test builds the tangent vector ``Aθ`` of the transformation and checks ``⟨∇L, Aθ⟩ = 0`` by autograd.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from learndyn.probes.base import ProbeContext
from learndyn.probes.symmetry import Symmetry, SymmetryProbe, detect_symmetries, symmetry_quantity
from learndyn.validation import LearndynValueError

DT = torch.float64


def _mlp_ce() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Linear(5, 3)
    )


def _deep_linear() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 4), nn.Linear(4, 2))


def _convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def _bn() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, eps=1e-30), nn.ReLU(), nn.Linear(6, 3))


def _ln_gn() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 6),
        nn.LayerNorm(6, eps=1e-30),
        nn.ReLU(),
        nn.Linear(6, 8),
        nn.GroupNorm(2, 8, eps=1e-30),
        nn.ReLU(),
        nn.Linear(8, 2),
    )


class _Branchy(nn.Module):
    """``a → relu → b``; b's output is used twice (residual), so ``b → c`` has no rescaling symmetry."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(F.relu(self.a(x)))
        return self.c(F.relu(h)) + h


class _Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, detection falls back to the Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x) if float(x.sum()) > 0 else self.seq(-x)


def _data(model: nn.Module, ce: bool, shape: tuple[int, ...] = (4,), n: int = 16):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((n, *shape), generator=gen, dtype=DT)
    with torch.no_grad():
        out = model(x)
    if ce:
        return x, torch.randint(0, out.shape[-1], (n,), generator=gen), F.cross_entropy
    return x, torch.randn(out.shape, generator=gen, dtype=DT), F.mse_loss


CASES = {  # model, cross-entropy?, input shape, expected (kind, producer, consumer)
    "mlp_ce": (
        _mlp_ce,
        True,
        (4,),
        {("rescale", "0", "2"), ("rescale", "2", "5"), ("translation", "5", None)},
    ),
    "deep_linear": (_deep_linear, False, (3,), {("linear", "0", "1"), ("linear", "1", "2")}),
    "convnet": (
        _convnet,
        True,
        (2, 10, 10),
        {("rescale", "0", "3"), ("rescale", "3", "6"), ("translation", "6", None)},
    ),
    "bn": (_bn, False, (4,), {("scale", "0", "1"), ("rescale", "1", "3")}),
    "ln_gn": (
        _ln_gn,
        False,
        (4,),
        {("scale", "0", "1"), ("rescale", "1", "3"), ("scale", "3", "4"), ("rescale", "4", "6")},
    ),
    "branchy": (_Branchy, False, (4,), {("rescale", "a", "b")}),
    "untraceable": (_Untraceable, False, (4,), {("rescale", "seq.0", "seq.2")}),
}


def _grads(model, loss_fn, x, y) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)  # the same dropout mask for every evaluation
    params = dict(model.named_parameters())
    loss = loss_fn(model(x), y)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


def _inner(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum((a[k] * b[k]).sum() for k in b))


def _norm(a: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.square().sum()) for t in a.values()))


def _generators(model: nn.Module, sym: Symmetry) -> list[dict[str, torch.Tensor]]:
    """Tangent vectors ``Aθ`` of the transformation group of ``sym``, written out per kind."""
    mods = dict(model.named_modules())
    p = {n: t.detach() for n, t in model.named_parameters()}
    prod = sym.producer
    w1, b1 = p[f"{prod}.weight"], p.get(f"{prod}.bias")
    units = w1.shape[0]
    gens: list[dict[str, torch.Tensor]] = []
    if sym.kind in ("rescale", "scale"):
        if sym.kind == "scale":
            groups = sym.groups or units
        else:
            groups = units
        per = units // groups
        for g in range(groups):
            sel = torch.zeros(units, dtype=DT)
            sel[g * per : (g + 1) * per] = 1.0
            gen = {f"{prod}.weight": w1 * sel.reshape(-1, *[1] * (w1.dim() - 1))}
            if b1 is not None:
                gen[f"{prod}.bias"] = b1 * sel
            if sym.kind == "rescale":
                w2 = p[f"{sym.consumer}.weight"]
                block = w2.shape[1] // units  # a flatten maps unit j to a block of input columns
                cols = sel.repeat_interleave(block) if isinstance(mods[sym.consumer], nn.Linear) else sel
                gen[f"{sym.consumer}.weight"] = -w2 * cols.reshape(1, -1, *[1] * (w2.dim() - 2))
            gens.append(gen)
    elif sym.kind == "linear":
        w2 = p[f"{sym.consumer}.weight"]
        for seed in range(3):
            a = torch.randn(units, units, generator=torch.Generator().manual_seed(seed), dtype=DT)
            gen = {f"{prod}.weight": a @ w1, f"{sym.consumer}.weight": -w2 @ a}
            if b1 is not None:
                gen[f"{prod}.bias"] = a @ b1
            gens.append(gen)
    else:  # translation: add the same vector to every class row
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            v = torch.randn(w1.shape[1], generator=g, dtype=DT)
            gen = {f"{prod}.weight": torch.ones(units, 1, dtype=DT) * v}
            if b1 is not None:
                gen[f"{prod}.bias"] = torch.randn((), generator=g, dtype=DT) * torch.ones(units, dtype=DT)
            gens.append(gen)
    return gens


def _flow_derivative(model, sym, names, theta, tangent):
    """``(Q(θ), ∂Q(θ)·v)`` by autograd (double backward), with ``Q`` the probe's quantity for ``sym``."""

    def quantity(*ts):
        return symmetry_quantity(model, sym, dict(zip(names, ts, strict=True)))

    return torch.autograd.functional.jvp(quantity, theta, tangent)


def _as_tuple(s: Symmetry) -> tuple[str, str, str | None]:
    return (s.kind, s.producer, s.consumer)


@pytest.mark.parametrize("case", sorted(CASES))
def test_detected_symmetries_are_exact(case):
    make, ce, shape, expected = CASES[case]
    model = make().to(DT)
    found = detect_symmetries(model, softmax_output=ce)
    assert {_as_tuple(s) for s in found} == expected
    x, y, loss_fn = _data(model, ce, shape)
    grads = _grads(model, loss_fn, x, y)
    gnorm = _norm(grads)
    for sym in found:
        for gen in _generators(model, sym):
            assert abs(_inner(grads, gen)) <= 1e-10 * gnorm * _norm(gen), (case, sym)

        # The probe's quantity is constant along the gradient flow: d/dt Q(θ) = ∂Q·(−∇L) = 0.
        names = [n for n, _ in model.named_parameters()]
        theta = tuple(t.detach() for _, t in model.named_parameters())
        tangent = tuple(-grads[n] for n in names)
        q, dq = _flow_derivative(model, sym, names, theta, tangent)
        assert float(dq.abs().max()) <= 1e-10 * gnorm * (1 + float(q.abs().max())), (case, sym)


def test_nonhomogeneous_activations_have_no_rescaling():
    for act in (nn.Tanh(), nn.GELU(), nn.Sigmoid(), nn.ReLU6(), nn.SiLU()):
        model = nn.Sequential(nn.Linear(4, 5), act, nn.Linear(5, 3)).to(DT)
        assert detect_symmetries(model) == [], act
    # ... and the symmetry really is absent: the rescaling generator is not orthogonal to the gradient.
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    x, y, loss_fn = _data(model, False)
    grads = _grads(model, loss_fn, x, y)
    worst = max(
        abs(_inner(grads, g)) / (_norm(grads) * _norm(g))
        for g in _generators(model, Symmetry("rescale", "0", "2"))
    )
    assert worst > 1e-3
    # The negative control for the branchy model: b's output is reused, so b → c is broken.
    model = _Branchy().to(DT)
    x, y, loss_fn = _data(model, False)
    grads = _grads(model, loss_fn, x, y)
    worst = max(
        abs(_inner(grads, g)) / (_norm(grads) * _norm(g))
        for g in _generators(model, Symmetry("rescale", "b", "c"))
    )
    assert worst > 1e-3


def test_frozen_or_tied_weights_are_not_reported():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    assert {_as_tuple(s) for s in detect_symmetries(model)} == {("rescale", "2", "4")}
    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    tied[2].weight = tied[0].weight
    assert {_as_tuple(s) for s in detect_symmetries(tied)} == set()


def test_quantities_match_independent_formulas():
    model = _convnet().to(DT)
    lin = _deep_linear().to(DT)
    w1, b1 = (t.detach().numpy() for t in (model[3].weight, model[3].bias))
    w2 = model[6].weight.detach().numpy()
    q = (w1.reshape(4, -1) ** 2).sum(1) + b1**2 - (w2.reshape(3, 4, 16) ** 2).sum((0, 2))
    np.testing.assert_allclose(symmetry_quantity(model, Symmetry("rescale", "3", "6")).detach().numpy(), q)
    a, b, c = (t.detach().numpy() for t in (lin[1].weight, lin[1].bias, lin[2].weight))
    big_q = a @ a.T + np.outer(b, b) - c.T @ c
    np.testing.assert_allclose(symmetry_quantity(lin, Symmetry("linear", "1", "2")).detach().numpy(), big_q)
    mlp = _mlp_ce().to(DT)
    v = np.concatenate([mlp[5].weight.detach().numpy().sum(0), [mlp[5].bias.detach().numpy().sum()]])
    np.testing.assert_allclose(symmetry_quantity(mlp, Symmetry("translation", "5")).detach().numpy(), v)


def _train(model, loss_fn, x, y, lr, steps, wd=0.0, probe=None):
    init = {n: t.detach().clone() for n, t in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    probe = probe or SymmetryProbe()
    return probe.measure(ProbeContext(model, loss_fn, x, y, steps, lr=lr, init_params=init))


def _relu_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3)).to(DT)


def test_small_lr_drift_is_first_order_in_lr():
    torch.manual_seed(0)
    x = torch.randn(32, 4, dtype=DT)
    y = torch.randint(0, 3, (32,))
    t = 1.0
    drifts = {}
    for lr in (0.04, 0.02, 0.01):
        out = _train(_relu_net(), F.cross_entropy, x, y, lr, round(t / lr))
        drifts[lr] = out
        # The translation symmetry is conserved exactly by discrete GD.
        assert out["symmetry/translation/3/drift"] <= 1e-12
    for key in ("symmetry/rescale/0-2/rel_drift", "symmetry/linear/2-3/rel_drift"):
        d = [drifts[lr][key] for lr in (0.04, 0.02, 0.01)]
        assert 0 < d[2] < 0.02, key
        # Drift per step is O(lr²), over t/lr steps: O(lr). Halving lr halves the drift.
        assert 1.7 < d[0] / d[1] < 2.3 and 1.7 < d[1] / d[2] < 2.3, (key, d)


def test_weight_decay_shrinks_invariants_exponentially():
    torch.manual_seed(0)
    x = torch.randn(32, 4, dtype=DT)
    y = torch.randint(0, 3, (32,))
    lam, lr, t = 0.5, 0.005, 1.0
    steps = round(t / lr)
    probe = SymmetryProbe()
    out = _train(_relu_net(), F.cross_entropy, x, y, lr, steps, wd=lam, probe=probe)
    model0 = _relu_net()
    for sym in probe.symmetries():
        q0 = symmetry_quantity(model0, sym).detach().numpy()
        q = out[f"symmetry/{sym.kind}/{sym.tag}/value"]
        if sym.kind == "translation":  # linear in θ: exactly (1 − ηλ)^steps under discrete GD
            np.testing.assert_allclose(q, q0 * (1 - lr * lam) ** steps, rtol=1e-9, atol=1e-12)
        else:  # quadratic: e^{−2λt} under the flow, O(lr) corrections from the finite steps
            err = np.linalg.norm(q - q0 * math.exp(-2 * lam * t)) / np.linalg.norm(q0)
            assert err < 0.005, (sym, err)
            # ... and well resolved: without the decay factor the prediction would be far off.
            assert np.linalg.norm(q - q0) / np.linalg.norm(q0) > 0.5


def test_scale_invariant_norm_grows_by_lr_squared_grad_squared():
    torch.manual_seed(0)
    model = _bn().to(DT)
    x, y = torch.randn(32, 4, dtype=DT), torch.randn(32, 3, dtype=DT)
    probe = SymmetryProbe()
    lr = 0.5
    prev, gsq = None, 0.0
    for step in range(5):
        out = probe.measure(ProbeContext(model, F.mse_loss, x, y, step))
        total = out["symmetry/scale/0/total"]
        if prev is not None:
            assert total == pytest.approx(prev + lr**2 * gsq, rel=1e-10)
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        gsq = float(model[0].weight.grad.square().sum() + model[0].bias.grad.square().sum())
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        prev = total


def test_probe_metrics_reference_and_no_side_effects():
    torch.manual_seed(0)
    model = _mlp_ce().to(DT)
    x, y = torch.randn(8, 4, dtype=DT), torch.randint(0, 3, (8,))
    init = {n: t.detach().clone() for n, t in model.named_parameters()}
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    probe = SymmetryProbe(symmetries=[("2", "5")], max_matrix=0)
    ctx = ProbeContext(model, nn.CrossEntropyLoss(), x, y, 0, init_params=init)
    out = probe.measure(ctx)
    assert out["symmetry/count"] == 3.0  # the declared pair duplicates a detected one
    assert out["symmetry/rescale/0-2/drift"] > 0  # measured from init_params, not from this measurement
    assert out["symmetry/translation/5/drift"] == 0.0
    assert isinstance(out["symmetry/rescale/0-2/value"], np.ndarray)
    assert out["symmetry/max_rel_drift"] == out["symmetry/rescale/0-2/rel_drift"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    first = SymmetryProbe(reference="first").measure(ctx)
    assert first["symmetry/rescale/0-2/drift"] == 0.0
    # without cross-entropy there is no softmax: no translation symmetry
    out = SymmetryProbe().measure(ProbeContext(model, F.mse_loss, x, torch.zeros(8, 3, dtype=DT), 0))
    assert "symmetry/translation/5/norm" not in out and out["symmetry/count"] == 2.0


def test_declared_pairs_and_validation():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    out = SymmetryProbe(symmetries=[Symmetry("rescale", "0", "2")]).measure(
        ProbeContext(model, F.mse_loss, x, y, 0)
    )
    assert out["symmetry/count"] == 1.0 and "symmetry/rescale/0-2/norm" in out
    with pytest.raises(LearndynValueError, match="kind='spin' is not allowed"):
        Symmetry("spin", "0", "2")
    with pytest.raises(LearndynValueError, match="consumer=None"):
        Symmetry("rescale", "0")
    with pytest.raises(LearndynValueError, match="reference='last'"):
        SymmetryProbe(reference="last")
    with pytest.raises(LearndynValueError, match="softmax"):
        SymmetryProbe(softmax="yes")  # type: ignore[arg-type]
    with pytest.raises(LearndynValueError, match="symmetries entry"):
        SymmetryProbe(symmetries=["0"])  # type: ignore[list-item]
    for bad, msg in (
        (Symmetry("rescale", "0", "9"), "not a submodule"),
        (Symmetry("rescale", "1", "2"), "producer is Tanh"),
        (Symmetry("linear", "0", "0"), "fan-in 4 is not a multiple"),
        (Symmetry("translation", "1"), "allowed: nn.Linear"),
    ):
        with pytest.raises(LearndynValueError, match=msg):
            SymmetryProbe(symmetries=[bad], detect=False).measure(ProbeContext(model, F.mse_loss, x, y, 0))


@pytest.mark.parametrize(("optimizer", "law"), [("sgd", True), ("momentum", True), ("adam", False)])
def test_translation_charge_law_with_momentum_and_weight_decay(optimizer, law):
    """With torch SGD (momentum or not) the probe checks the charge against the exact law of
    :mod:`learndyn.theory.momentum_symmetry` (at μ = 0.9 the momentum-free (1 − ηλ)^k is far off); Adam's
    step is not orthogonal to the symmetry, so no law is reported."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4, dtype=DT), torch.randint(0, 3, (32,))
    model = _relu_net()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, lam, steps = 0.05, 0.2, 60
    make = {
        "sgd": lambda p: torch.optim.SGD(p, lr=lr, weight_decay=lam),
        "momentum": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=lam),
        "adam": lambda p: torch.optim.Adam(p, lr=lr, weight_decay=lam),
    }
    opt = make[optimizer](model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    probe = SymmetryProbe()
    out = probe.measure(ProbeContext(model, F.cross_entropy, x, y, steps, optimizer=opt, init_params=init))
    assert ("symmetry/translation/3/law_error" in out) == law
    if law:
        assert out["symmetry/translation/3/law_error"] < 1e-10
    if optimizer == "momentum":
        q0 = symmetry_quantity(_relu_net(), Symmetry("translation", "3")).detach().numpy()
        naive = q0 * (1 - lr * lam) ** steps
        q = out["symmetry/translation/3/value"]
        assert np.linalg.norm(q - naive) > 0.3 * np.linalg.norm(q0)


def test_row_square_sums_by_blocks_equal_the_whole_float64_copy():
    from learndyn.probes.symmetry import _row_square_sums

    g = torch.Generator().manual_seed(0)
    for shapes in [[(37, 300), (37,)], [(37, 300)], [(16, 3, 3, 3), (16,)]]:
        ts = [torch.randn(*s, generator=g) for s in shapes]
        whole = torch.cat([t.double().reshape(shapes[0][0], -1) for t in ts], 1).square().sum(1)
        for block in (64, 1000, 65536):
            assert torch.equal(_row_square_sums(ts, shapes[0][0], block), whole)
