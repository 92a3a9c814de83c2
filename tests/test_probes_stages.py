"""StageDetector / StageProbe on synthetic staircases, smooth decays and saddle-to-saddle deep linear nets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from learndyn.probes.base import ProbeContext
from learndyn.probes.stages import StageDetector, StageEvent, StageProbe, batch_loss
from learndyn.validation import LearndynValueError


def _run(det: StageDetector, steps, values) -> list[StageEvent]:
    events = [e for s, v in zip(steps, values, strict=True) for e in det.update(int(s), float(v))]
    return events + det.finish()


def _staircase(seed: int, length: int = 2400):
    """A sum of sigmoids in log space: 1–4 drops of height 0.8–2 (log units), widths 4–12 steps."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 5))
    while True:
        centres = np.sort(rng.choice(np.arange(200, length - 200, 50), size=k, replace=False))
        if np.all(np.diff(centres) >= 350):
            break
    heights, widths = rng.uniform(0.8, 2.0, k), rng.uniform(4.0, 12.0, k)
    t = np.arange(length)
    y = math.log(5.0) - sum(
        h / (1 + np.exp(-(t - c) / w)) for c, h, w in zip(centres, heights, widths, strict=True)
    )
    return t, y, centres, widths, rng


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_staircases_give_one_stage_per_drop(seed, noise):
    t, y, centres, widths, rng = _staircase(seed)
    values = np.exp(y + noise * rng.standard_normal(len(t)))
    det = StageDetector()
    events = _run(det, t, values)
    drops = [e for e in events if e.kind == "drop"]
    assert det.stage == len(centres) == len(drops)
    assert [e.stage for e in drops] == list(range(1, len(centres) + 1))
    np.testing.assert_array_less(np.abs(np.array(det.boundaries()) - centres), 2 * widths + 10)
    assert all(e.detected_at >= e.step for e in events)
    # each drop sits between the end of one plateau and the start of the next
    kinds = [e.kind for e in events]
    assert kinds[0] == "plateau_start"
    for i, k in enumerate(kinds):
        if k == "drop":
            assert "plateau_end" in kinds[:i]
    # the reported level is the smoothed metric: each drop's value lies below its plateau's
    assert all(d.value < 5.0 for d in drops)


@pytest.mark.parametrize("horizon", [None, 0.15])
def test_noisier_staircases_need_longer_windows(horizon):
    t = np.arange(2000)
    centres, heights = [300, 800, 1400], [1.0, 1.5, 0.8]
    y = math.log(10.0) - sum(h / (1 + np.exp(-(t - c) / 15)) for c, h in zip(centres, heights, strict=True))
    for seed in range(4):
        noise = np.random.default_rng(seed).standard_normal(len(t))
        det = StageDetector(window=40 if horizon is None else 10, horizon=horizon)
        _run(det, t, np.exp(y + 0.1 * noise))
        assert len(det.boundaries()) == 3, seed
        np.testing.assert_array_less(np.abs(np.array(det.boundaries()) - centres), 40)


@pytest.mark.parametrize("tau", [20, 50, 100, 150, 200, 400, 1000])
@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_smooth_exponential_decay_has_no_stages(tau, floor):
    t = np.arange(3000)
    for noise, seed in ((0.0, 0), (0.05, 1), (0.05, 2)):
        values = (floor + np.exp(-t / tau)) * np.exp(
            noise * np.random.default_rng(seed).standard_normal(len(t))
        )
        det = StageDetector()
        events = _run(det, t, values)
        assert det.stage == 0 and not [e for e in events if e.kind == "drop"], (noise, seed)
        if noise == 0.0:
            assert not [e for e in events if e.kind == "plateau_end"]


def _deep_linear(steps: int, lr: float, init: float, seed: int = 0):
    """GD on ``½‖W₂W₁ − M‖²`` (whitened inputs), ``M`` with singular values 4, 2, 1 (learnable with 3
    hidden units) and 0.3 (not: the loss floor). Returns the losses and each mode's half-learning step."""
    s = torch.tensor([4.0, 2.0, 1.0, 0.3], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    m = u @ torch.diag(s) @ v.T
    w1 = init * torch.randn(3, 4, generator=g, dtype=torch.float64)
    w2 = init * torch.randn(4, 3, generator=g, dtype=torch.float64)
    losses, modes = np.empty(steps), np.empty((steps, 4))
    for k in range(steps):
        r = w2 @ w1 - m
        losses[k] = 0.5 * float((r * r).sum())
        modes[k] = torch.diagonal(u.T @ (w2 @ w1) @ v).numpy()
        w1, w2 = w1 - lr * (w2.T @ r), w2 - lr * (r @ w1.T)
    half = [int(np.argmax(modes[:, i] > s[i].item() / 2)) for i in range(3)]
    return losses, half


@pytest.mark.parametrize(
    ("lr", "init", "window", "horizon"),
    [(0.01, 1e-3, 40, None), (0.01, 1e-3, 10, 0.15), (0.01, 1e-5, 10, 0.15), (0.003, 1e-3, 10, 0.15)],
)
def test_deep_linear_saddle_to_saddle_gives_one_stage_per_mode(lr, init, window, horizon):
    losses, half = _deep_linear(round(12 / lr), lr, init)
    # the modes are learnt one after another at t ≈ log(s/init²)/(2s) (in units of lr · steps)
    for i, s in enumerate((4.0, 2.0, 1.0)):
        assert half[i] * lr == pytest.approx(math.log(s / init**2) / (2 * s), rel=0.15)
    det = StageDetector(window=window, horizon=horizon)
    _run(det, range(len(losses)), losses)
    assert det.stage == 3
    np.testing.assert_allclose(det.boundaries(), half, rtol=0.05)


def test_increasing_metric_and_pending_drop_at_the_end():
    t = np.arange(1200)
    acc = 0.3 + 0.3 / (1 + np.exp(-(t - 400) / 8)) + 0.3 / (1 + np.exp(-(t - 900) / 8))
    det = StageDetector(log=False, direction="increase", drop_tol=0.1, plateau_tol=0.02, min_drop=0.15)
    _run(det, t, acc)
    assert det.stage == 2 and np.all(np.abs(np.array(det.boundaries()) - [400, 900]) < 15)
    assert [e.value for e in det.events if e.kind == "drop"] == pytest.approx([0.45, 0.75], abs=0.05)
    # a series that ends mid-descent: the drop is reported by finish()
    det = StageDetector()
    values = np.where(t < 600, 5.0, 5.0 * np.exp(-(t - 600) / 20.0))
    events = [e for s, v in zip(t, values, strict=True) for e in det.update(int(s), v)]
    assert not [e for e in events if e.kind == "drop"]
    assert [e.kind for e in det.finish()] == ["drop"] and det.stage == 1
    assert det.finish() == []


def test_detector_ignores_bad_values_and_validates():
    det = StageDetector(window=5)
    assert det.update(0, float("nan")) == [] and det.update(1, 0.0) == [] and det.update(2, -1.0) == []
    assert det.last_step is None
    for k in range(3, 9):
        det.update(k, 1.0)
    assert det.in_plateau and det.rate == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(LearndynValueError, match="step=8 is out of range"):
        det.update(8, 1.0)
    det.reset()
    assert det.stage == 0 and det.events == [] and det.rate is None
    for kwargs, msg in (
        ({"window": 2}, "window=2 is out of range"),
        ({"horizon": 0.0}, "horizon=0.0 is out of range"),
        ({"plateau_tol": 0.3}, "drop_tol=0.2 is out of range; allowed: drop_tol > plateau_tol=0.3"),
        ({"min_drop": -1}, "min_drop=-1.0 is out of range"),
        ({"contrast": 0.5}, "contrast=0.5 is out of range"),
        ({"direction": "up"}, "direction='up' is not allowed"),
        ({"log": "yes"}, "log='yes' is not allowed"),
    ):
        with pytest.raises(LearndynValueError, match=msg):
            StageDetector(**kwargs)
    with pytest.raises(LearndynValueError, match="metric=''"):
        StageProbe(metric="")
    with pytest.raises(LearndynValueError, match="mode='test'"):
        StageProbe(mode="test")
    with pytest.raises(LearndynValueError, match="detector="):
        StageProbe(detector="fast")  # type: ignore[arg-type]


def test_stage_probe_on_a_deep_linear_network():
    """End to end: the probe computes the batch loss from ctx at every step of a real training loop."""
    torch.manual_seed(0)
    s = torch.tensor([4.0, 2.0, 1.0, 0.3])
    u, _ = torch.linalg.qr(torch.randn(4, 4))
    v, _ = torch.linalg.qr(torch.randn(4, 4))
    m = u @ torch.diag(s) @ v.T
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 4, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1e-3)
    x, y = torch.eye(4), m.T  # whitened inputs: mse = ‖W₂W₁ − M‖² / 16
    opt = torch.optim.SGD(model.parameters(), lr=0.08)  # = lr 0.01 on ½‖W₂W₁ − M‖²
    probe = StageProbe(detector=StageDetector(window=40))
    out = {}
    drops, modes = [], []
    for step in range(1200):
        out = probe.measure(ProbeContext(model, F.mse_loss, x, y, step))
        if out["stage/drops"]:
            drops.append(out["stage/drop_step"])
        with torch.no_grad():
            modes.append(torch.diagonal(u.T @ model[1].weight @ model[0].weight @ v)[:3].numpy())
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    assert out["stage/index"] == 3.0 and len(drops) == 3 and out["stage/in_plateau"] == 1.0
    assert out["stage/value"] == pytest.approx(0.3**2 / 16, rel=1e-3)
    assert drops == [e.step for e in probe.events if e.kind == "drop"]
    half = np.argmax(np.array(modes) > s[:3].numpy() / 2, axis=0)  # when each mode is half learnt
    np.testing.assert_allclose(drops, half, rtol=0.05)


def test_stage_probe_leaves_no_trace_and_reads_logged_metrics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 1))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ctx = ProbeContext(model, F.mse_loss, x, y, 0)
    out = StageProbe(mode="train").measure(ctx)
    assert set(out) == {"stage/index", "stage/in_plateau", "stage/value", "stage/drops"}
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert batch_loss(ctx, "eval") == pytest.approx(float(F.mse_loss(model(x), y)))
    assert "batch_loss/train" in ctx.cache and "batch_loss/eval" in ctx.cache

    probe = StageProbe(metric="acc", detector=StageDetector(window=5, direction="increase"))
    assert probe.prefix == "stage/acc"
    out = probe.measure(ProbeContext(model, F.mse_loss, x, y, 0))  # nothing logged yet
    assert out == {"stage/acc/index": 0.0, "stage/acc/in_plateau": 0.0, "stage/acc/drops": 0.0}
    for step in range(1, 8):
        ctx = ProbeContext(model, F.mse_loss, x, y, step, cache={"metrics": {"acc": 0.5}})
        out = probe.measure(ctx)
    assert out["stage/acc/in_plateau"] == 1.0 and out["stage/acc/value"] == 0.5
    assert probe.observe(8, 0.5) == [] and probe.detector.last_step == 8
    # a measurement at a step already fed by observe() does not feed the detector twice
    probe.measure(ProbeContext(model, F.mse_loss, x, y, 8, cache={"acc": 0.5}))
    probe.reset()
    assert probe.events == [] and probe.detector.last_step is None
