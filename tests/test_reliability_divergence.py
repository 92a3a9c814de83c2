"""Divergence: a NaN/Inf loss, parameter or gradient, or a loss exploding above 1e6 x its initial value, stops
the loop cleanly, keeps everything logged, and
marks the stored run ``diverged`` with the reason and the step -- without the experiment doing anything but
passing its recorder to ``train_loop``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from learndyn.optim import CovariantGD
from learndyn.store import MemoryRecorder
from learndyn.training import train_loop


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    w = torch.randn(3, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def sample(gen):
        x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
        return x, x @ w

    return model, sample, torch.Generator().manual_seed(seed)


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with a NaN gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


def _nan_grad_loss(out, target):
    return nn.functional.mse_loss(_NanGrad.apply(out), target)


def test_inf_loss_marks_the_run_diverged_with_step_and_keeps_rows(store):
    model, sample, gen = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=100.0)
    with store.start_run("div", {}, flush_every=1000) as run:
        result = train_loop(
            model, opt, sample, nn.functional.mse_loss, 500, generator=gen, recorder=run, explode_factor=0
        )  # 0: only NaN/Inf count (a loss explosion comes first otherwise: see below)
        assert result.status == "diverged"
        assert store.run_info(run.id)["summary"]["diverged_at"] == result.diverged_at  # durable at once
    info = store.run_info(run.id)
    at = result.diverged_at
    assert info["status"] == "diverged" and info["error"] == f"train/loss is inf at step {at}"
    assert info["summary"] == {"diverged_at": at}
    loss = store.metrics(run.id, "train/loss")
    assert loss["step"].tolist() == list(range(at + 1)) and not math.isfinite(loss["value"].iloc[-1])
    assert store.metrics(run.id, "train/diverged_at")["value"].tolist() == [float(at)]


def test_a_nan_parameter_is_divergence_even_when_the_loss_is_finite(store):
    model, sample, gen = _setup()
    model.register_parameter("unused", nn.Parameter(torch.tensor([1.0, math.nan], dtype=torch.float64)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with store.start_run("p", {}) as run:
        result = train_loop(model, opt, sample, nn.functional.mse_loss, 20, generator=gen, recorder=run)
    assert result.status == "diverged" and result.diverged_at == 0 and math.isfinite(result.last_loss)
    info = store.run_info(run.id)
    assert info["status"] == "diverged" and info["error"] == "a parameter is NaN/Inf at step 0"


class _StrictSGD(torch.optim.SGD):
    """Fails on a non-finite gradient, as a matrix decomposition of NaN statistics does."""

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return super().step(closure)


def test_an_optimizer_that_raises_on_a_nan_gradient_is_divergence_not_a_crash(store):
    model, sample, gen = _setup()
    opt = _StrictSGD(model.parameters(), lr=0.01)
    with store.start_run("g", {}) as run:
        result = train_loop(model, opt, sample, _nan_grad_loss, 20, generator=gen, recorder=run)
    assert result.status == "diverged" and result.diverged_at == 0
    assert store.run_info(run.id)["error"] == "a gradient is NaN/Inf at step 0"


def test_an_optimizer_that_keeps_going_on_a_nan_gradient_is_caught_one_step_later():
    model, sample, gen = _setup()
    opt = CovariantGD(model.parameters(), lr=0.01, alpha=0.5, structure="diag")
    result = train_loop(model, opt, sample, _nan_grad_loss, 20, generator=gen, recorder=MemoryRecorder())
    assert result.status == "diverged" and result.diverged_at == 1


def test_an_optimizer_error_with_finite_gradients_is_not_hidden(store):
    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("a real bug")

    model, sample, gen = _setup()
    with pytest.raises(RuntimeError, match="a real bug"):
        with store.start_run("b", {}) as run:
            train_loop(model, Broken(model.parameters(), lr=0.1), sample, nn.functional.mse_loss, 5,
                       generator=gen, recorder=run)
    assert store.run_info(run.id)["status"] == "failed"


def test_first_divergence_wins_and_opting_out_keeps_the_run_completed(store):
    with store.start_run("two", {}) as run:
        for lr, expect_marked in ((100.0, False), (100.0, True), (300.0, True)):
            model, sample, gen = _setup()
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            result = train_loop(
                model, opt, sample, nn.functional.mse_loss, 500, generator=gen, recorder=run,
                prefix=f"lr{lr:g}-{expect_marked}/", mark_diverged=expect_marked,
            )
            assert result.status == "diverged"
            if expect_marked and "first" not in locals():
                first = result.diverged_at
    info = store.run_info(run.id)
    assert info["status"] == "diverged" and info["summary"]["diverged_at"] == first
    assert info["error"].startswith("lr100-True/loss ")

    with store.start_run("grid", {}) as grid:
        model, sample, gen = _setup()
        opt = torch.optim.SGD(model.parameters(), lr=100.0)
        train_loop(model, opt, sample, nn.functional.mse_loss, 500, generator=gen, recorder=grid,
                   mark_diverged=False)
    assert store.run_info(grid.id)["status"] == "completed"  # an expected divergence, e.g. an lr grid's top


def test_divergence_without_a_store_needs_nothing():
    model, sample, gen = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=100.0)
    rec = MemoryRecorder()
    result = train_loop(model, opt, sample, nn.functional.mse_loss, 500, generator=gen, recorder=rec)
    assert result.status == "diverged"
    assert rec.series("train/diverged_at")[1].tolist() == [float(result.diverged_at)]


# ------------------------------------------------------------------------ loss explosion (Reliability II, 7)
def _exploding(factor=None, checkpointer=None, steps=30, recorder=None):
    """SGD far above the stability edge: the loss grows geometrically, and stays finite for a while."""
    model, sample, gen = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    return train_loop(
        model,
        opt,
        sample,
        nn.functional.mse_loss,
        steps,
        generator=gen,
        recorder=recorder,
        explode_factor=factor,
        checkpointer=checkpointer,
        checkpoint_every=1 if checkpointer is not None else 0,
    )


def test_a_finite_loss_explosion_is_divergence(store):
    run = store.start_run("explode")
    result = _exploding(recorder=run, factor=1e3)
    run.close()
    assert result.status == "diverged" and math.isfinite(result.last_loss)
    assert "exploded above 1000 x its initial" in result.reason
    info = store.run_info(run.id)
    assert info["status"] == "diverged" and f"at step {result.diverged_at}" in info["error"]
    only_nan = _exploding(factor=math.inf)
    assert only_nan.status == "completed" and math.isfinite(only_nan.last_loss)  # how it used to end


def test_the_explosion_factor_is_configurable_and_checked(monkeypatch):
    default = _exploding(steps=60)
    monkeypatch.setenv("LEARNDYN_DIVERGENCE_FACTOR", "10")
    tight = _exploding(steps=60)
    assert tight.status == "diverged" and "exploded above 10 x" in tight.reason
    assert default.diverged_at is None or tight.diverged_at < default.diverged_at
    monkeypatch.setenv("LEARNDYN_DIVERGENCE_FACTOR", "lots")
    with pytest.raises(ValueError, match=r"^\$LEARNDYN_DIVERGENCE_FACTOR='lots' is not allowed; allowed: "):
        _exploding()
    monkeypatch.delenv("LEARNDYN_DIVERGENCE_FACTOR")
    with pytest.raises(ValueError, match="explode_factor=0.5 is out of range"):
        _exploding(factor=0.5)


def test_a_resumed_loop_compares_with_the_initial_loss_of_its_first_attempt():
    from learndyn.checkpoint import MemoryCheckpointer

    whole = _exploding(factor=1e3)
    ckpt = MemoryCheckpointer(every=1)
    first = _exploding(factor=1e3, checkpointer=ckpt, steps=whole.diverged_at - 1)  # stops before it explodes
    assert first.status == "completed"
    resumed = _exploding(factor=1e3, checkpointer=ckpt)
    assert resumed.resumed_from == whole.diverged_at - 1
    assert (resumed.status, resumed.diverged_at) == ("diverged", whole.diverged_at)
    assert resumed.reason == whole.reason


def test_mlp_teacher_at_lr_1e9_is_diverged_alone_and_in_an_ensemble(cli, store_path):
    from learndyn.phenomena.mlp_teacher import MLPTeacherConfig, run_ensemble
    from learndyn.store import RunStore

    result = cli("run", "mlp-teacher", "--quick", "--set", "optimizer=cgd-diag", "--set", "lr=1e9")
    assert result.exit_code == 0 and "(diverged)" in result.output  # it used to end completed, loss 1.4e18
    (stored,) = RunStore(store_path).runs().to_dict("records")
    assert stored["status"] == "diverged" and "exploded" in stored["error"]
    (member,) = run_ensemble([MLPTeacherConfig(optimizer="cgd-diag", lr=1e9, steps=40, eval_every=10)])
    assert member.status == "diverged" and member.summary["diverged_at"] == stored["summary"]["diverged_at"]


def test_mlp_teacher_honours_checkpoint_every():
    from learndyn.checkpoint import MemoryCheckpointer
    from learndyn.phenomena.mlp_teacher import MLPTeacherConfig, run

    recorder = MemoryRecorder()
    recorder.checkpointer = MemoryCheckpointer(every=5)
    run(MLPTeacherConfig(steps=12, eval_every=0), recorder)
    (state,) = [recorder.checkpointer.load(k) for k in ("main",)]
    assert state is not None and state["step"] == 10  # it used to save nothing: resume retrained from 0
