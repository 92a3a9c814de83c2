"""Divergence: a NaN/Inf loss, parameter or gradient stops the loop cleanly, keeps everything logged, and
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
        result = train_loop(model, opt, sample, nn.functional.mse_loss, 500, generator=gen, recorder=run)
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
    assert info["error"].startswith("lr100-True/loss is")

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
