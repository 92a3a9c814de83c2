"""The structure table (one module + one registration per structure), group-wide metrics, and the factory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from learndyn.optim import STRUCTURES, CovariantGD, OptimizerSpec, build_optimizer, memory_requirement
from learndyn.optim.structures.base import GroupStep, Structure
from learndyn.optim.structures.diag import DIAG
from learndyn.phenomena import regimes
from learndyn.tasks import compare
from learndyn.validation import LearndynValueError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _train(model, opt, steps=6, drop=lambda t: []):
    g = torch.Generator().manual_seed(1)
    out = []
    for t in range(1, steps + 1):
        x = torch.randn(8, 3, generator=g, dtype=torch.float64)
        y = torch.randn(8, 2, generator=g, dtype=torch.float64)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        for p in drop(t):
            p.grad = None
        opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(out)


# ------------------------------------------------------------------------------------- the table


class _DiagByDirections(Structure):
    """A structure written against the interface only: ``'diag'``'s directions, the default update."""

    name = "diag-directions"

    def elements(self, params, opts):
        return DIAG.elements(params, opts)

    def directions(self, ctx: GroupStep) -> list[torch.Tensor]:
        return DIAG.directions(ctx)

    def diagonal(self, group, p, state):
        return DIAG.diagonal(group, p, state)


def test_a_new_structure_is_one_class_and_one_registration(monkeypatch):
    """Registered in the table, a structure is accepted, listed in errors, budgeted and stepped; here it is
    ``'diag'`` through :meth:`Structure.directions` and the default update, equal to ``'diag'``'s
    fused update to round-off."""
    monkeypatch.setitem(STRUCTURES, "diag-directions", _DiagByDirections())
    kw = dict(lr=0.05, alpha=0.75, eps=1e-6, weight_decay=0.1)
    new = _train(m := _model(), CovariantGD(m.parameters(), structure="diag-directions", **kw))
    ref = _train(m2 := _model(), CovariantGD(m2.parameters(), structure="diag", **kw))
    torch.testing.assert_close(new, ref, rtol=1e-13, atol=1e-15)
    with pytest.raises(LearndynValueError, match=r"'lowrank', 'diag-directions'"):
        CovariantGD(m.parameters(), structure="nope")
    assert memory_requirement("diag-directions", list(m.parameters()), {}) == 26 * 8
    assert torch.equal(
        CovariantGD(m.parameters(), structure="diag-directions").second_moment_diagonal(m[0].weight),
        torch.zeros(4, 3, dtype=torch.float64),
    )


def test_the_table_is_what_everything_reads():
    assert list(STRUCTURES) == ["diag", "kron", "block", "full", "lowrank"]
    assert all(s.name == k for k, s in STRUCTURES.items())
    assert regimes.STRUCTURES == ("diag", "block", "full")  # the exact metrics its closed forms cover
    assert not hasattr(compare, "STRUCTURES")
    with pytest.raises(
        LearndynValueError, match=r"structure='dense' is not allowed; allowed: 'diag', 'kron'"
    ):
        OptimizerSpec.parse("cgd-dense")


# ------------------------------------------------------------------------------ group-wide metrics


@pytest.mark.parametrize("structure", ["full", "lowrank"])
def test_group_metric_lives_under_the_first_parameter_with_a_gradient(structure):
    """The first parameter has no gradient for three steps: the metric goes under the next one, counts every
    group step (``{structure}_step``) and the first parameter gets state only once it has a gradient."""
    m = _model()
    w0 = m[0].weight
    opt = CovariantGD(m.parameters(), structure=structure, lr=0.05, eps=1e-3, rank=3)
    _train(m, opt, steps=3, drop=lambda t: [w0])
    assert w0 not in opt.state
    owner = opt.state[m[0].bias]
    key = "full_S" if structure == "full" else "lowrank_U"
    assert key in owner and owner[f"{structure}_step"] == 3
    _train(m, opt, steps=2)
    assert opt.state[w0]["step"] == 2 and key not in opt.state[w0]
    assert owner[f"{structure}_step"] == 5 and owner["step"] == 5
    d = opt.second_moment_diagonal(w0)
    assert d.shape == w0.shape and (d > 0).all()


def test_full_statistic_counts_missing_gradients_as_zero():
    """``S`` is the EMA of ``v vᵀ`` with zero blocks where a parameter had no gradient (brute force)."""
    m = _model()
    ps = list(m.parameters())
    beta2 = 0.9
    opt = CovariantGD(ps, structure="full", lr=0.05, eps=1e-3, betas=(0.9, beta2), first_moment=False)
    S = torch.zeros(26, 26, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    for t in range(1, 6):
        x, y = (
            torch.randn(8, 3, generator=g, dtype=torch.float64),
            torch.randn(8, 2, generator=g, dtype=torch.float64),
        )
        opt.zero_grad()
        nn.functional.mse_loss(m(x), y).backward()
        if t in (2, 3):
            ps[2].grad = None
        v = torch.cat(
            [
                torch.zeros(p.numel(), dtype=torch.float64) if p.grad is None else p.grad.reshape(-1)
                for p in ps
            ]
        )
        S = beta2 * S + (1 - beta2) * torch.outer(v, v)
        opt.step()
    torch.testing.assert_close(opt.state[ps[0]]["full_S"], S, rtol=1e-14, atol=1e-16)
    assert opt.state[ps[2]]["step"] == 3 and opt.state[ps[0]]["full_step"] == 5


@pytest.mark.parametrize("structure", ["full", "lowrank"])
def test_state_dict_without_the_group_step_counter_resumes(structure):
    """State dicts from before ``{structure}_step`` existed: the counter is the owner's ``step``."""
    kw = dict(structure=structure, lr=0.05, eps=1e-3, rank=3, precondition_every=2, precondition_warmup=0)
    m = _model()
    opt = CovariantGD(m.parameters(), **kw)
    _train(m, opt, steps=3)
    sd = copy.deepcopy(opt.state_dict())
    model_sd = copy.deepcopy(m.state_dict())
    straight = _train(m, opt)
    for st in sd["state"].values():
        st.pop(f"{structure}_step", None)
    m2 = _model()
    m2.load_state_dict(model_sd)
    opt2 = CovariantGD(m2.parameters(), **kw)
    opt2.load_state_dict(sd)
    assert torch.equal(straight, _train(m2, opt2))


# ------------------------------------------------------------------------------------- the factory


def test_labels_build_the_optimizers_they_name():
    ps = list(_model().parameters())
    assert isinstance(build_optimizer(ps, "adamw", 1e-3, weight_decay=0.1), torch.optim.AdamW)
    sgd = build_optimizer(ps, "sgd", 0.1, momentum=0.5)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5
    assert build_optimizer(ps, "momentum", 0.1).param_groups[0]["momentum"] == 0.9
    cgd = build_optimizer(ps, "cgd-kron-a0.75-k5", 1e-3, eps=1e-4)
    g = cgd.param_groups[0]
    assert (g["structure"], g["alpha"], g["precondition_every"], g["eps"]) == ("kron", 0.75, 5, 1e-4)
    g = build_optimizer(ps, "cgd-diag", 1e-3, alpha=1.0, structure="block").param_groups[0]
    assert (g["structure"], g["alpha"], g["precondition_every"]) == ("block", 1.0, 1)


def test_covariant_spec_has_the_optimizers_own_defaults():
    spec = OptimizerSpec.covariant("full", 0.25, moment="covariance")
    assert spec.label == "cgd-full-a0.25-k1" and spec.precondition_every == 1
    g = spec.build(_model().parameters(), 0.1, eps=1e-3).param_groups[0]
    assert (g["moment"], g["eps"], g["precondition_every"]) == ("covariance", 1e-3, 1)
    assert OptimizerSpec.parse("cgd-full").precondition_every == 10  # the labels' default
    with pytest.raises(LearndynValueError, match=r"OptimizerSpec.covariant.structure='x' is not allowed"):
        OptimizerSpec.covariant("x")
    with pytest.raises(LearndynValueError, match=r"'adamw'"):
        OptimizerSpec.parse("rmsprop")
