"""The ``cgd-paper`` experiment: AdaBelief against its formula element by element, the participation ratio
against an eigendecomposition, the batched members against single-model optimizers, the quick run's
figures and verdict. All tiny and float64 (about 3 s together)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learndyn.config import apply_overrides
from learndyn.optim import CovariantGD
from learndyn.phenomena import registry
from learndyn.phenomena._adabelief import AdaBelief
from learndyn.phenomena._cgd_figures import figures_from_series
from learndyn.phenomena._cgd_problems import Multiplication, RosenbrockStarts
from learndyn.phenomena._members import participation_ratio, train_members
from learndyn.phenomena.cgd_paper import CgdPaperConfig, cgd_paper_verdict, run
from learndyn.store.recorder import MemoryRecorder
from learndyn.theory.covariant import participation_ratio as pr_from_eigenvalues
from learndyn.validation import LearndynValueError


def _adabelief_reference(grads: list[list[float]], lr: float, b1: float, b2: float, eps: float,
                         theta0: list[float]) -> list[float]:
    """Zhuang et al. (2020), Algorithm 2, one scalar at a time in plain Python floats."""
    out = []
    for j, theta in enumerate(theta0):
        m = s = 0.0
        for t, g_t in enumerate(grads, start=1):
            g = g_t[j]
            m = b1 * m + (1 - b1) * g
            s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
            m_hat, s_hat = m / (1 - b1**t), s / (1 - b2**t)
            theta = theta - lr * m_hat / (math.sqrt(s_hat) + eps)
        out.append(theta)
    return out


def test_adabelief_equals_its_formula_per_element():
    gen = torch.Generator().manual_seed(0)
    shapes, lrs = [(3,), (2, 2)], [0.1, 0.03]  # two groups with their own lr
    params = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]
    start = [p.detach().clone() for p in params]
    opt = AdaBelief([{"params": [params[0]], "lr": lrs[0]}, {"params": [params[1]], "lr": lrs[1]}],
                    betas=(0.8, 0.95), eps=1e-3)  # large eps: its two placements are visible
    grads: list[list[torch.Tensor]] = [[], []]
    for _ in range(6):
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            grads[i].append(p.grad.clone())
        opt.step()
    for i, p in enumerate(params):
        ref = _adabelief_reference([g.reshape(-1).tolist() for g in grads[i]], lrs[i], 0.8, 0.95, 1e-3,
                                   start[i].reshape(-1).tolist())
        np.testing.assert_allclose(p.detach().reshape(-1).numpy(), ref, rtol=0, atol=1e-13)


def test_adabelief_rejects_bad_options_in_one_line():
    with pytest.raises(LearndynValueError, match=r"AdaBelief.betas\[1\]=1.0 is out of range") as info:
        AdaBelief([torch.zeros(1, requires_grad=True)], betas=(0.9, 1.0))
    assert "\n" not in str(info.value)


def test_participation_ratio_equals_eigen_computation():
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(4, 7, 3, generator=gen, dtype=torch.float64)
    C = A @ A.transpose(1, 2)  # rank-3 PSD 7x7 matrices
    C[0] = torch.outer(A[0, :, 0], A[0, :, 0])  # rank one: PR = 1
    got = participation_ratio(C).numpy()
    want = [pr_from_eigenvalues(np.linalg.eigvalsh(c)) for c in C.numpy()]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == pytest.approx(1.0, rel=1e-12) and np.all(got <= 3 + 1e-9)
    assert participation_ratio(torch.zeros(2, 3, 3, dtype=torch.float64)).tolist() == [0.0, 0.0]


def test_members_full_cgd_equals_covariant_full_on_one_model():
    """'block' over flat member vectors = CovariantGD(structure='full') on each member alone."""
    problem = Multiplication(width=2, depth=2, batch_size=8)
    lr, steps = 0.05, 6
    trace = train_members(problem, "cgd-full-a0.5", [lr], [3, 4], steps, 1)
    q = torch.nn.Parameter(problem.starts([3, 4])[1, 0].clone())  # seed 4 alone
    opt = CovariantGD([q], lr=lr, alpha=0.5, structure="full", precondition_every=1)
    losses = [float(problem.evaluate(q.detach()[None]))]
    for step in range(1, steps + 1):
        opt.zero_grad()
        # member_seed indexes the problem's seeds (3, 4): this member draws seed 4's batches
        problem.train_losses(q[None], torch.tensor([1]), step).sum().backward()
        opt.step()
        losses.append(float(problem.evaluate(q.detach()[None])))
    np.testing.assert_allclose(trace.loss[0, 1, 0], losses, rtol=1e-10)
    assert not trace.diverged.any()


def test_diverged_members_are_held_and_others_train():
    trace = train_members(RosenbrockStarts(3), "sgd", [1e-3, 0.5], [0], 40, 10)
    assert trace.diverged[1].all() and not trace.diverged[0].any()
    assert np.isinf(trace.loss[1, ..., -1]).all()
    assert np.isfinite(trace.loss[0]).all() and (trace.loss[0, ..., -1] < trace.loss[0, ..., 0]).all()


def test_quick_run_gives_figures_and_a_reproduction_verdict():
    quick = registry.get("cgd-paper").quick_overrides
    config = CgdPaperConfig(**{**quick, "optimizers": ("adam", "cgd-full-a0.5")})
    recorder = MemoryRecorder()
    result = run(config, recorder)
    assert result.agreement is None  # no closed form: a reproduction check, not a theory agreement
    assert not registry.get("cgd-paper").closed_form
    assert {(r["problem"], r["optimizer"]) for r in result.table} == {
        (p, o) for p in ("rosenbrock", "multiplication") for o in ("adam", "cgd-full-a0.5")}
    assert all(math.isfinite(v) for v in result.summary.values())
    rows = cgd_paper_verdict(result.summary)
    kinds = [r["kind"] for r in rows]
    # steps on both problems, PR fall of the updates' covariance and of the metric's statistic
    assert kinds.count("reproduction check (no closed form)") == 4
    assert all(r["reproduced"] in ("yes", "no", "-") for r in rows)
    series = {name: recorder.series(name) for name in recorder.scalars}
    for prefix in ("pr", "metric_pr", "eig1"):
        assert f"{prefix}/multiplication/cgd-full-a0.5" in series
    assert "traj/cgd-full-a0.5/0/x" in series
    figures = figures_from_series(series)
    assert len(figures) == 4 and all(len(f.data) > 0 for f in figures)


def test_bad_config_fails_with_one_line():
    with pytest.raises(LearndynValueError, match=r"optimizers='lbfgs'.*allowed") as info:
        apply_overrides(CgdPaperConfig(), ["optimizers=adam,lbfgs"], experiment="cgd-paper")
    assert "\n" not in str(info.value)
