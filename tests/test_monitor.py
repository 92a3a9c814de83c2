"""The Monitor: runs probes, logs through the recorder, and never changes the training trajectory."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learndyn.probes import CurvatureProbe, KernelProbe, Monitor, NoiseProbe, Probe
from learndyn.probes.presets import PRESETS, describe_preset
from learndyn.store.recorder import MemoryRecorder
from learndyn.validation import LearndynValueError


def _mlp(bn=False):
    torch.manual_seed(1)
    layers = [nn.Linear(6, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def _train(model, steps, monitor=None):
    """SGD with momentum and weight decay; data and dropout draw from the global RNG."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    if monitor is not None:
        monitor.optimizer = opt
    torch.manual_seed(123)
    for step in range(steps):
        x = torch.randn(16, 6)
        y = torch.randint(0, 3, (16,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if monitor is not None:
            monitor.after_step(step, (x, y))
    return [p.detach().clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


def _assert_bitwise(a, b):
    assert len(a) == len(b)
    for s, t in zip(a, b, strict=True):
        assert torch.equal(s, t)


def _all_probes(every=1):
    return [
        NoiseProbe(every=every),
        CurvatureProbe(every=every, lanczos_iters=8, hutchinson_samples=2),
        KernelProbe(every=every, n_samples=4),
    ]


def test_training_is_bitwise_identical_with_a_monitor():
    plain = _train(_mlp(), 12)
    rec = MemoryRecorder()
    with Monitor(_mlp(), F.cross_entropy, probes=_all_probes(), recorder=rec) as mon:
        watched = _train(mon.model, 12, mon)
    _assert_bitwise(plain[0], watched[0])
    assert len(rec.series("noise/trace")[0]) == 12
    assert len(rec.arrays["curvature/top_eigenvalues"]) == 12


def test_train_mode_with_batchnorm_restores_buffers():
    plain = _train(_mlp(bn=True), 6)
    mon = Monitor(_mlp(bn=True), F.cross_entropy, probes=[CurvatureProbe(lanczos_iters=4)], mode="train")
    watched = _train(mon.model, 6, mon)
    _assert_bitwise(plain[0], watched[0])
    _assert_bitwise(plain[1], watched[1])  # running mean/var and num_batches_tracked


def test_full_preset_keeps_training_bitwise_identical():
    pytest.importorskip("learndyn.probes.representation")
    pytest.importorskip("learndyn.probes.stages")
    plain = _train(_mlp(), 4)
    mon = Monitor(_mlp(), F.cross_entropy, probes="full")
    for p in mon.probes:  # every probe runs at every step
        p.every = 1
    watched = _train(mon.model, 4, mon)
    _assert_bitwise(plain[0], watched[0])


class Vandal(Probe):
    """A badly behaved probe: draws from the global RNG, writes .grad, flips modes."""

    name = "vandal"

    def measure(self, ctx):
        torch.rand(3)
        ctx.model.train()
        loss = ctx.loss_fn(ctx.model(ctx.inputs), ctx.targets)
        loss.backward()
        return {"vandal/x": torch.tensor(1.5), "vandal/arr": torch.arange(3.0)}


def test_state_is_restored_even_for_a_badly_behaved_probe():
    model = _mlp()
    model[2].eval()  # a mixed-mode model: the dropout already in eval
    modes = [m.training for m in model.modules()]
    assert modes.count(False) == 1
    grads = []
    for p in model.parameters():
        p.grad = torch.randn_like(p)
        grads.append((p.grad, p.grad.clone()))
    list(model.parameters())[-1].requires_grad_(False)
    mon = Monitor(model, F.cross_entropy, probes=[Vandal(), NoiseProbe()])
    batch = (torch.randn(8, 6), torch.randint(0, 3, (8,)))
    rng = torch.get_rng_state()
    out = mon.after_step(0, batch)
    assert torch.equal(rng, torch.get_rng_state())
    assert [m.training for m in model.modules()] == modes
    for p, (obj, val) in zip(model.parameters(), grads, strict=True):
        assert p.grad is obj and torch.equal(p.grad, val)
    assert not list(model.parameters())[-1].requires_grad
    assert out["vandal/x"] == 1.5 and isinstance(out["vandal/arr"], np.ndarray)
    assert all(isinstance(v, float | np.ndarray) for v in out.values())
    assert mon.timings["vandal"] > 0 and mon.timings["noise"] > 0


class FlushCounter(MemoryRecorder):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self):
        self.flushes += 1


def test_logging_schedule_and_close():
    rec = FlushCounter()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    probes = [
        NoiseProbe(every=2, per_layer=False),
        CurvatureProbe(every=3, lanczos_iters=4, hutchinson_samples=0),
    ]
    with Monitor(model, F.cross_entropy, probes=probes, recorder=rec, optimizer=opt) as mon:
        for step in range(7):
            x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
            out = mon.after_step(step, (x, y))
            assert bool(out) == (step % 2 == 0 or step % 3 == 0)
            opt.step()
            sched.step()
    assert rec.flushes == 1
    mon.close()
    assert rec.flushes == 1
    with pytest.raises(RuntimeError):
        mon.after_step(8, (x, y))
    steps, temps = rec.series("noise/temperature")
    assert steps.tolist() == [0, 2, 4, 6]
    traces = np.array([v for _, v in rec.scalars["noise/trace"]])
    np.testing.assert_allclose(temps, 0.3 * 0.5**steps * traces / (2 * 8))  # lr read from the scheduler
    assert rec.series("curvature/lambda_max")[0].tolist() == [0, 3, 6]
    assert [s for s, _ in rec.arrays["noise/spectrum"]] == [0, 2, 4, 6]
    assert "curvature/trace" not in rec.scalars


def test_probe_names_and_explicit_lr():
    mon = Monitor(_mlp(), F.cross_entropy, probes=["noise", "curvature", KernelProbe(every=5)], lr=0.01)
    assert [p.name for p in mon.probes] == ["noise", "curvature", "kernel"]
    assert mon.lr == 0.01
    assert [p.name for p in mon.due(5)] == ["noise", "curvature", "kernel"]
    assert [p.name for p in mon.due(3)] == ["noise", "curvature"]


def test_bad_arguments_list_allowed_values():
    model = _mlp()
    with pytest.raises(ValueError, match="'light', 'standard', 'full'"):
        Monitor(model, F.cross_entropy, probes="heavy")
    with pytest.raises(ValueError, match="'noise', 'curvature', 'kernel'"):
        Monitor(model, F.cross_entropy, probes=["noise", "bogus"])
    with pytest.raises(ValueError, match="allowed: a Probe"):
        Monitor(model, F.cross_entropy, probes=[3])
    with pytest.raises(ValueError, match="'eval', 'train', 'keep'"):
        Monitor(model, F.cross_entropy, probes=["noise"], mode="test")
    with pytest.raises(ValueError, match="two probes named 'noise'"):
        Monitor(model, F.cross_entropy, probes=[NoiseProbe(), NoiseProbe(k=3)])
    with pytest.raises(LearndynValueError, match="lr"):
        Monitor(model, F.cross_entropy, probes=["noise"], lr=-1.0)
    with pytest.raises(LearndynValueError, match="step"):
        Monitor(model, F.cross_entropy, probes=["noise"]).after_step(-1, (torch.zeros(2, 6), torch.zeros(2)))


def test_preset_descriptions_grow():
    light, standard, full = (dict(describe_preset(p)) for p in ("light", "standard", "full"))
    assert set(light) < set(standard) < set(full)
    assert standard["noise"] >= 1 and full["curvature"] >= full["noise"]
    with pytest.raises(ValueError, match="'light', 'standard', 'full'"):
        describe_preset("medium")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build_and_run(preset):
    pytest.importorskip("learndyn.probes.representation")
    pytest.importorskip("learndyn.probes.stages")
    rec = MemoryRecorder()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, F.cross_entropy, probes=preset, recorder=rec, optimizer=opt) as mon:
        for step in range(3):
            mon.after_step(step * 200, (torch.randn(16, 6), torch.randint(0, 3, (16,))))
    prefixes = {k.split("/")[0] for k in (*rec.scalars, *rec.arrays)}
    assert {p.name for p in mon.probes} <= prefixes
    assert [p.every for p in mon.probes] == [every for _, every in describe_preset(preset)]


class Spy(Probe):
    """Records what it saw in the shared context."""

    name = "spy"

    def __init__(self):
        super().__init__()
        self.seen = {}

    def measure(self, ctx):
        import weakref

        from learndyn.probes.curvature import shared_hvp

        self.seen["metrics"] = ctx.cache.get("metrics")
        self.seen["loss"] = ctx.cache.get("batch_loss/eval")
        self.seen["hvp"] = weakref.ref(shared_hvp(ctx))
        self.seen["training"] = ctx.model.training
        return {}


def test_shared_context_metrics_and_no_graph_left_behind():
    model = _mlp()
    spy = Spy()
    mon = Monitor(model, F.cross_entropy, probes=[NoiseProbe(), spy])
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    mon.after_step(0, (x, y), metrics={"loss": 0.7})
    assert spy.seen["metrics"] == {"loss": 0.7}
    model.eval()
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x), y))
    model.train()
    assert spy.seen["loss"] == pytest.approx(expected)  # offered by the noise probe's forward pass
    assert spy.seen["training"] is False  # probes run in eval mode by default
    assert spy.seen["hvp"]() is None  # the Hessian-vector product (and its graph) is gone


def test_curvature_reuses_the_noise_probes_gradient_pass():
    """With the noise probe due on the same step, the Hessian-vector products differentiate the gradient
    of its hooked pass again: one forward pass less, the same metrics as each probe alone."""
    torch.manual_seed(0)  # LayerNorm: not an MLP the written-out R-operator covers (mlp_hvp)
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))

    def run(probes):
        calls.clear()
        out = Monitor(model, F.cross_entropy, probes=probes).after_step(0, (x, y))
        return out, len(calls)

    curv = {"lanczos_iters": 30, "hutchinson_samples": 4, "ggn": False}
    noise, n_noise = run([NoiseProbe()])  # first: the one-time check of the loss's reduction
    noise, n_noise = run([NoiseProbe()])
    both, n_both = run([NoiseProbe(), CurvatureProbe(**curv)])
    alone, n_alone = run([CurvatureProbe(**curv)])
    assert n_both == n_noise == n_alone == 1
    for key, value in {**noise, **alone}.items():
        np.testing.assert_allclose(both[key], value, rtol=1e-12, atol=1e-14)
