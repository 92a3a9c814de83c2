"""Ensembles: stacked optimizers equal torch.optim / CovariantGD member by member, and a vectorised ensemble
of ``mlp-teacher`` runs gives the numbers of separate ``train_loop`` runs
(float64: to rounding; float32: 1e-5),
divergence included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learndyn.optim import CovariantGD
from learndyn.optim.stacked import StackedAdam, StackedCovariantDiag, StackedSGD, per_member
from learndyn.phenomena.mlp_teacher import MLPTeacherConfig, build_student, run, run_ensemble
from learndyn.phenomena.registry import ensemble_support
from learndyn.store import MemoryRecorder
from learndyn.sweep.spec import ensemble_key
from learndyn.training import train_ensemble
from learndyn.validation import LearndynValueError

SHAPES = [(4, 3), (4,), (2, 4)]
B, T = 3, 6


def _trajectory(make_single, make_stacked, dtype=torch.float64):
    """Step B single-model optimizers and one stacked optimizer with the same gradients; return both."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(B, *s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [[torch.randn(B, *s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(T)]
    singles = []
    for b in range(B):
        ps = [torch.nn.Parameter(x[b].clone()) for x in init]
        opt = make_single(ps, b)
        for t in range(T):
            for p, g in zip(ps, grads[t], strict=True):
                p.grad = g[b].clone()
            opt.step()
        singles.append([p.detach() for p in ps])
    stacked = [x.clone() for x in init]
    opt = make_stacked()
    for t in range(T):
        opt.step(stacked, [g.clone() for g in grads[t]])
    return singles, stacked


def _assert_members_equal(singles, stacked, rtol=1e-13, atol=1e-15):
    for b in range(B):
        for single, st in zip(singles[b], stacked, strict=True):
            torch.testing.assert_close(st[b], single, rtol=rtol, atol=atol)


LRS = [0.1, 0.03, 0.3]


@pytest.mark.parametrize("nesterov", [False, True])
def test_stacked_sgd_equals_torch_sgd(nesterov):
    mom, wd = [0.9, 0.5, 0.0], [0.0, 0.01, 0.1]
    if nesterov:
        mom = [0.9, 0.5, 0.7]
    singles, stacked = _trajectory(
        lambda ps, b: torch.optim.SGD(ps, lr=LRS[b], momentum=mom[b], weight_decay=wd[b], nesterov=nesterov),
        lambda: StackedSGD(B, LRS, momentum=mom, weight_decay=wd, nesterov=nesterov),
    )
    _assert_members_equal(singles, stacked)


def test_stacked_sgd_shared_hyperparameters_are_bitwise():
    singles, stacked = _trajectory(
        lambda ps, b: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda: StackedSGD(B, [0.1] * B, momentum=0.9),
    )
    _assert_members_equal(singles, stacked, rtol=0, atol=0)


def test_stacked_adam_equals_torch_adam():
    wd = [0.0, 0.01, 0.1]
    singles, stacked = _trajectory(
        lambda ps, b: torch.optim.Adam(ps, lr=LRS[b], betas=(0.8, 0.99), eps=1e-6, weight_decay=wd[b]),
        lambda: StackedAdam(B, LRS, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd),
    )
    _assert_members_equal(singles, stacked)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"moment": "covariance"},
        {"eps_mode": "outside", "eps": 1e-3},
        {"first_moment": False, "bias_correction": False},
        {"decoupled_weight_decay": False},
        {"eps_root": 1e-4},
    ],
)
def test_stacked_covariant_diag_equals_covariantgd(options):
    alphas, wd = [0.5, 0.25, 1.0], [0.0, 0.01, 0.1]
    singles, stacked = _trajectory(
        lambda ps, b: CovariantGD(
            ps, lr=LRS[b], alpha=alphas[b], structure="diag", weight_decay=wd[b], **options
        ),
        lambda: StackedCovariantDiag(B, LRS, alphas, weight_decay=wd, **options),
    )
    _assert_members_equal(singles, stacked, rtol=1e-12, atol=1e-14)


def test_stacked_covariant_shared_alpha_uses_the_functional_core_bitwise():
    singles, stacked = _trajectory(
        lambda ps, b: CovariantGD(ps, lr=0.1, alpha=0.5, structure="diag"),
        lambda: StackedCovariantDiag(B, 0.1, [0.5] * B),
    )
    _assert_members_equal(singles, stacked, rtol=0, atol=0)


def test_per_member_validation():
    assert per_member("lr", [0.1, 0.1], 2) == 0.1
    assert torch.equal(
        per_member("lr", torch.tensor([0.1, 0.2], dtype=torch.float64), 2),
        torch.tensor([0.1, 0.2], dtype=torch.float64),
    )
    with pytest.raises(LearndynValueError, match="3 values for 2 members"):
        per_member("lr", [0.1, 0.2, 0.3], 2)
    with pytest.raises(LearndynValueError, match="out of range"):
        StackedCovariantDiag(2, 0.1, [0.5, 1.5])


# --------------------------------------------------------------------------------------- whole ensembles
def _members(**common):
    grid = [  # seed, lr, alpha, init_scale, momentum
        (0, 0.05, 0.5, 1.0, 0.0),
        (1, 0.02, 0.25, 0.5, 0.5),
        (2, 0.03, 0.75, 1.5, 0.9),
        (3, 0.01, 0.0, 1.0, 0.0),
    ]
    return [
        MLPTeacherConfig(seed=s, lr=lr, alpha=a, init_scale=sc, momentum=m, steps=40, eval_every=15, **common)
        for s, lr, a, sc, m in grid
    ]


def _compare(configs, rtol):
    outcomes = run_ensemble(configs)
    assert len(outcomes) == len(configs)
    for config, outcome in zip(configs, outcomes, strict=True):
        rec = MemoryRecorder()
        result = run(config, rec)
        assert set(outcome.series) == set(rec.scalars)
        for name, (steps, values) in outcome.series.items():
            ref_steps, ref_values = rec.series(name)
            np.testing.assert_array_equal(steps, ref_steps)
            np.testing.assert_allclose(values, ref_values, rtol=rtol, atol=rtol * 1e-3)
        assert outcome.status == ("diverged" if result.summary["diverged"] else "completed")
        assert outcome.summary.keys() == result.summary.keys()
        for k, v in result.summary.items():
            assert outcome.summary[k] == pytest.approx(v, rel=rtol, abs=rtol * 1e-3), k
    return outcomes


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "cgd-diag"])
def test_ensemble_equals_separate_runs_float64(optimizer):
    _compare(_members(optimizer=optimizer, dtype="float64"), rtol=1e-9)


@pytest.mark.parametrize("optimizer", ["sgd", "cgd-diag"])
def test_ensemble_equals_separate_runs_float32(optimizer):
    _compare(_members(optimizer=optimizer, dtype="float32", activation="relu"), rtol=1e-5)


def test_ensemble_divergence_matches_train_loop():
    configs = [
        MLPTeacherConfig(seed=s, lr=lr, steps=40, eval_every=10, dtype="float64", log_every=3)
        for s, lr in [(0, 0.05), (1, 1000.0), (2, 2.0)]
    ]
    outcomes = _compare(configs, rtol=1e-9)
    statuses = [o.status for o in outcomes]
    assert statuses[0] == "completed" and "diverged" in statuses[1:]
    bad = outcomes[statuses.index("diverged")]
    assert "diverged_at" in bad.series and bad.summary["diverged"] == 1.0


def test_train_ensemble_generic_api_and_does_not_touch_models():
    configs = _members(dtype="float64")[:2]
    models = [build_student(c) for c in configs]
    before = [p.detach().clone() for p in models[0].parameters()]
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    y = torch.randn(2, 8, 1, dtype=torch.float64)
    trace = train_ensemble(
        models,
        StackedSGD(2, [0.1, 0.0]),
        lambda step: (x, y),
        lambda out, tgt: ((out - tgt) ** 2).mean(),
        5,
        evaluate=lambda forward: {"norm": forward(x[0]).abs().mean(dim=(1, 2))},
        eval_every=2,
    )
    assert trace.loss.shape == (5, 2) and trace.eval_steps == [0, 2, 4, 5]
    assert trace.evals["norm"].shape == (4, 2) and (trace.diverged_at == -1).all()
    assert trace.loss[0, 1] == trace.loss[-1, 1]  # lr 0: the second member never moves
    assert trace.loss[-1, 0] < trace.loss[0, 0]
    for p, q in zip(models[0].parameters(), before, strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="at least one model"):
        train_ensemble([], StackedSGD(1, 0.1), lambda s: (x, y), torch.nn.functional.mse_loss, 1)


def test_ensemble_registry_and_keys():
    support = ensemble_support("mlp-teacher")
    assert support is not None and {"seed", "lr", "alpha", "init_scale"} <= set(support.axes)
    assert ensemble_support("symmetry") is None
    a, b, c = MLPTeacherConfig(seed=1, lr=0.1), MLPTeacherConfig(seed=2, lr=0.3), MLPTeacherConfig(width=8)
    assert ensemble_key(a, support.axes) == ensemble_key(b, support.axes) != ensemble_key(c, support.axes)
