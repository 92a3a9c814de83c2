import math

import pytest
import torch
from torch import nn

from learndyn.checkpoint import FileCheckpointer, MemoryCheckpointer
from learndyn.optim import CovariantGD
from learndyn.store.recorder import MemoryRecorder
from learndyn.training import train_loop


def _setup(seed=0, lr=0.05, activation=nn.Tanh):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), activation(), nn.Linear(8, 1))
    opt = CovariantGD(model.parameters(), lr=lr, alpha=0.5, structure="kron", precondition_every=3)
    w = torch.randn(4, 1, generator=torch.Generator().manual_seed(1))

    def sample(gen):
        x = torch.randn(16, 4, generator=gen)
        return x, x @ w + 0.1 * torch.randn(16, 1, generator=gen)

    gen = torch.Generator().manual_seed(seed)
    return model, opt, sample, gen


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_loop_logs_loss_and_evaluation_and_decreases_loss():
    model, opt, sample, gen = _setup()
    rec = MemoryRecorder()
    result = train_loop(model, opt, sample, nn.functional.mse_loss, 60, generator=gen, recorder=rec,
                        evaluate=lambda m: {"norm": float(_params(m).norm())}, eval_every=20)
    assert result.status == "completed" and result.steps_done == 60
    steps, losses = rec.series("train/loss")
    assert list(steps) == list(range(60))
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    eval_steps, _ = rec.series("train/norm")
    assert list(eval_steps) == [0, 20, 40, 60]


@pytest.mark.parametrize("checkpointer_kind", ["memory", "file"])
def test_resume_from_checkpoint_reaches_bitwise_identical_parameters(checkpointer_kind, tmp_path):
    model, opt, sample, gen = _setup()
    train_loop(model, opt, sample, nn.functional.mse_loss, 40, generator=gen)
    reference = _params(model)

    ckpt = MemoryCheckpointer() if checkpointer_kind == "memory" else FileCheckpointer(tmp_path)
    model, opt, sample, gen = _setup()
    # An "interrupted" run: 25 steps with a checkpoint every 10 -> the checkpoint is at step 20.
    train_loop(model, opt, sample, nn.functional.mse_loss, 25, generator=gen,
               checkpointer=ckpt, checkpoint_every=10)
    # A fresh process rebuilds everything from the config and resumes.
    model, opt, sample, gen = _setup()
    rec = MemoryRecorder()
    result = train_loop(model, opt, sample, nn.functional.mse_loss, 40, generator=gen, recorder=rec,
                        checkpointer=ckpt, checkpoint_every=10)
    assert result.resumed_from == 20
    assert rec.series("train/loss")[0][0] == 20
    assert torch.equal(_params(model), reference)


def test_divergence_stops_cleanly_and_keeps_logged_rows():
    model, opt, sample, gen = _setup(lr=1e6)
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    rec = MemoryRecorder()
    result = train_loop(
        model, opt, sample, nn.functional.mse_loss, 200, generator=gen, recorder=rec, explode_factor=0
    )  # 0: NaN/Inf only (the loss explodes above 1e6 x its initial value first)
    assert result.status == "diverged"
    assert result.diverged_at is not None and 0 < result.diverged_at < 200
    steps, losses = rec.series("train/loss")
    assert steps[-1] == result.diverged_at and not math.isfinite(losses[-1])
    assert math.isfinite(losses[0])
    assert rec.series("train/diverged_at")[1][0] == result.diverged_at


def test_bad_arguments_name_the_field():
    model, opt, sample, gen = _setup()
    with pytest.raises(ValueError, match=r"train_loop.steps=-1 is out of range"):
        train_loop(model, opt, sample, nn.functional.mse_loss, -1, generator=gen)
    with pytest.raises(ValueError, match=r"checkpoint key='../x' is not allowed"):
        FileCheckpointer("/tmp").path("../x")


ALL_PROBES = ("parameters", "stages", "noise", "symmetry", "representation", "curvature", "kernel")


def _monitored(rec, probes=None):
    from learndyn.probes import Monitor
    from learndyn.probes.presets import make_probe

    model, opt, sample, gen = _setup(activation=nn.ReLU)  # ReLU: a rescaling symmetry to track
    if probes is None:  # every probe, measuring every 3 steps
        probes = [make_probe(name, every=3) for name in ALL_PROBES]
    monitor = Monitor(model, nn.functional.mse_loss, probes=probes, recorder=rec, optimizer=opt)
    return model, opt, sample, gen, monitor


def _after(rec, start):
    """Every scalar and array the monitor logged at steps >= start (order-independent)."""
    scalars = {(n, s): v for n, rows in rec.scalars.items() for s, v in rows if s >= start}
    arrays = {(n, s): a for n, rows in rec.arrays.items() for s, a in rows if s >= start}
    return scalars, arrays


def test_a_resumed_monitor_measures_what_an_uninterrupted_one_does():
    """Probe memory (initial parameters, previous kernel, stage detector, curvature RNG, symmetry references)
    travels in the checkpoint: the measurements after the resume equal those of an uninterrupted run."""
    full = MemoryRecorder()
    model, opt, sample, gen, monitor = _monitored(full)
    train_loop(model, opt, sample, nn.functional.mse_loss, 40, generator=gen, monitor=monitor)

    ckpt = MemoryCheckpointer()
    model, opt, sample, gen, monitor = _monitored(MemoryRecorder())
    train_loop(model, opt, sample, nn.functional.mse_loss, 25, generator=gen, monitor=monitor,
               checkpointer=ckpt, checkpoint_every=10)
    resumed = MemoryRecorder()
    model, opt, sample, gen, monitor = _monitored(resumed)
    result = train_loop(model, opt, sample, nn.functional.mse_loss, 40, generator=gen, monitor=monitor,
                        checkpointer=ckpt, checkpoint_every=10)
    assert result.resumed_from == 20

    want_scalars, want_arrays = _after(full, 20)
    got_scalars, got_arrays = _after(resumed, 20)
    names = {n for n, _ in want_scalars}
    # the memory-dependent quantities are among them
    memory = {"params/dist_init", "params/update", "kernel/velocity", "kernel/distance_from_init"}
    assert memory <= names, sorted(names)
    assert any(n.startswith("symmetry/") and n.endswith("/drift") for n in names)
    assert got_scalars.keys() == want_scalars.keys()
    for key, value in want_scalars.items():
        assert got_scalars[key] == value or (math.isnan(value) and math.isnan(got_scalars[key])), key
    assert got_arrays.keys() == want_arrays.keys()
    for key, value in want_arrays.items():
        assert (got_arrays[key] == value).all(), key


def test_monitor_state_is_refused_by_a_monitor_with_other_probes():
    _, _, _, _, full = _monitored(MemoryRecorder())
    _, _, _, _, light = _monitored(MemoryRecorder(), "light")
    with pytest.raises(ValueError, match="saved probes .* allowed: this Monitor's"):
        light.load_state_dict(full.state_dict())
