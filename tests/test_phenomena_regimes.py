"""The ``regimes`` phenomenon: CovariantGD at α = 0, ½, 1 on linear regression.

Measured at the quick size (single thread, ~8 s CPU): stationary SGD covariance trace within 0.2% of the exact
closed form (Langevin T·I off by 6.5%, Gibbs T·H⁻¹ by 75%); steps to target from condition 1 to 100: α = 1
full 172 → 172, α = ½ full 45 → 179, α = 0 8 → 348 (exact expectation 362); update PR near the minimum
(support rank 6): α = ½ full 5.96 (whitened), α = 0 3.74 (theory 3.82), α = 1 3.81 (3.89).
α-stationary law (the agreement figure, tolerance 1.5%): finite-η form within 0.47% / 0.81% / 0.43% at
α = 0 / ½ / 1 (s.e. 0.3–0.5%); small-η law within 2.9% (bound 5%); each 2% theory perturbation gives
1.7–9.2%. Loss scale: every (α, c) equals the scale-1 run at lr·c^{1−2α} to 4e-15. The α-law and loss-scale
parts add ~4 s CPU to the fixture; the tests besides the fixture take < 0.5 s.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learndyn.config import apply_overrides
from learndyn.optim import OptimizerSpec
from learndyn.phenomena import registry
from learndyn.phenomena._alpha_law import law_summary, runs_from_summary
from learndyn.phenomena._metric_chains import ChainsSetup, MetricChains, inverse_power_2x2
from learndyn.phenomena.regimes import RegimesConfig, make_task, stationary_theory
from learndyn.store.recorder import MemoryRecorder
from learndyn.theory import covariant as cov
from learndyn.validation import LearndynValueError


@pytest.fixture(scope="module")
def quick():
    exp = registry.get("regimes")
    config = RegimesConfig(**exp.quick_overrides)
    recorder = MemoryRecorder()
    return config, exp.run(config, recorder), recorder


def test_stationary_covariance_agrees_with_the_exact_closed_form(quick):
    config, result, recorder = quick
    s = result.summary
    assert result.passed and s["stationary/trace_error"] <= 0.05
    assert s["stationary/matrix_error"] < 0.1
    # SGD noise makes the covariance flat in H's eigenbasis (T·I), not the Gibbs T·H⁻¹ (spread = condition)
    assert s["stationary/variance_spread"] < 1.3 < s["stationary/variance_spread_gibbs"]
    steps, _ = recorder.series("sim/weight_cov_trace")
    assert steps.size > 10 and np.array_equal(steps, recorder.series("theory/weight_cov_trace")[0])


def test_wrong_stationary_forms_fail(quick):
    """The figure can fail: the Boltzmann (Gibbs) form T·H⁻¹, and the small-lr Langevin T·I at this lr."""
    config, result, _ = quick
    s = result.summary
    assert s["stationary/gibbs_error"] > 10 * config.tolerance
    assert s["stationary/langevin_error"] > 10 * s["stationary/trace_error"]


def test_alpha_one_is_insensitive_to_conditioning(quick):
    _, result, _ = quick
    s = result.summary
    assert s["speed/a=1,full/slowdown"] == pytest.approx(1.0, abs=0.1)
    assert s["speed/a=0/slowdown"] > 20  # condition 1 -> 100
    assert 1.5 < s["speed/a=0.5,full/slowdown"] < s["speed/a=0/slowdown"]
    measured = s["speed/a=0/kappa=100/steps_to_target"]
    assert measured == pytest.approx(s["speed/a=0/kappa=100/steps_to_target_theory"], rel=0.1)
    assert (
        measured > s["speed/a=1,full/kappa=100/steps_to_target"]
    )  # α = 0 is the slowest when ill-conditioned


def test_alpha_half_whitens_the_updates(quick):
    config, result, recorder = quick
    s, r = result.summary, config.stat_rank
    assert s["updates/a=0.5,full/pr"] >= 0.95 * r and s["updates/a=0.5,full/support_spread"] < 1.5
    assert s["updates/a=0.5,full/off_support"] < 1e-10  # on the support of the noise only
    assert s["updates/a=0/pr"] < 0.7 * r and s["updates/a=1,full/pr"] < 0.7 * r
    for label in ("a=0", "a=0.5,full", "a=1,full"):
        assert s[f"updates/{label}/pr"] == pytest.approx(s[f"updates/{label}/pr_theory"], rel=0.05)
    assert recorder.series("sim/update_pr/a=0.5,full,stationary")[0].size > 3
    assert recorder.series("updates/pr/a=1,full,kappa=100")[0].size > 3  # the PR over time while learning


def test_task_is_a_reparametrised_isotropic_problem():
    task = make_task(5, 100.0, 5, 0.1, 4, seed=3, rotate=True)
    M = task.M
    np.testing.assert_allclose(np.linalg.eigvalsh(task.H), np.sort(task.h.numpy()), rtol=1e-12)
    assert task.excess_loss(task.p_star) < 1e-28
    p = torch.randn(5, dtype=torch.float64)
    assert task.excess_loss(p) == pytest.approx(0.5 * float(((M.T @ p) - task.w_z).square().sum()))
    theory = stationary_theory(task, 0.05)
    assert np.trace(theory["gibbs"]) > 10 * np.trace(theory["langevin"])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("alphas=0.5,1", r"alphas=.* including 0"),
        ("lrs=0.1,0.2", r"lrs has 2 values; allowed: one per alpha"),
        ("structures=kron", r"structures='kron' is not allowed"),
        ("stat_lrs=2,0.05,0.02", r"stat_lrs\[alpha=0\]=2.0 is out of range"),
        ("stat_rank=9", r"stat_rank=9 is out of range"),
        ("law_eigenvalues=1,2,3", r"law_eigenvalues has 3 values; allowed: 2"),
        ("law_lrs=5,0.09,0.025", r"law_lrs: at alpha=0, lr=5.0 is out of range"),
        ("scale_lrs=0.1", r"scale_lrs has 1 values; allowed: one per alpha"),
    ],
)
def test_bad_config_fails_with_one_line(override, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        apply_overrides(RegimesConfig(), [override], experiment="regimes")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ the α-stationary law (part 4)


def test_alpha_law_agrees_at_every_alpha(quick):
    """The figure is the worst over α = 0, ½, 1 of the finite-η form; the small-η law within its bound."""
    config, result, _ = quick
    s = result.summary
    errors = [s[f"law/finite/a={a:g}/error"] for a in config.alphas]
    assert result.agreement == s["law/worst_error"] == max(errors) <= config.tolerance
    for a in config.alphas:
        assert s[f"law/small/a={a:g}/law_error"] <= config.law_small_tolerance
        assert abs(s[f"law/finite/a={a:g}/correlation"]) < 0.03  # diagonal in H's eigenbasis
        # the shape Σ ∝ H^{−α}: the variance ratio of the two modes (eigenvalues 1 and ¼) is 4^α
        ratio = s[f"law/small/a={a:g}/sim_var/lambda=0.25"] / s[f"law/small/a={a:g}/sim_var/lambda=1"]
        assert ratio == pytest.approx(4.0**a, rel=0.06)
    # at the moderate learning rates the small-η law is far off: the finite-η form is needed
    assert s["law/finite/a=0/law_error"] > 0.3


def _perturbed_agreement(quick, monkeypatch, target, name, wrap):
    config, result, _ = quick
    monkeypatch.setattr(target, name, wrap(getattr(target, name)))
    _, _, worst = law_summary(config, runs_from_summary(config, result.summary))
    return config, worst


def test_unperturbed_recomputation_reproduces_the_figure(quick):
    config, result, _ = quick
    _, _, worst = law_summary(config, runs_from_summary(config, result.summary))
    assert worst == pytest.approx(result.agreement, rel=1e-12)


PERTURBATIONS = {
    "kappa factor ×1.02": (cov, "kappa_factor", lambda f: lambda k: 1.02 * f(k)),
    "kappa factor removed": (cov, "kappa_factor", lambda f: lambda k: 1.0),
    "exponent ×1.02": (cov, "metric_power", lambda f: lambda s, eps, alpha: f(s, eps, 1.02 * alpha)),
    "noise σ²/B ×1.02": (
        cov, "alpha_stationary", lambda f: lambda H, lr, alpha, s2, B, **k: f(H, lr, alpha, 1.02 * s2, B, **k)
    ),
    "learning rate ×1.02": (
        cov, "metric_sgd_variances", lambda f: lambda lam, p, lr, *a: f(lam, p, 1.02 * lr, *a)
    ),
    "covariance gain γ ×1.02": (cov, "covariance_gain", lambda f: lambda b: 1.02 * f(b)),
}


@pytest.mark.parametrize("which", list(PERTURBATIONS))
def test_a_two_percent_error_in_any_ingredient_fails_the_figure(quick, monkeypatch, which):
    target, name, wrap = PERTURBATIONS[which]
    config, worst = _perturbed_agreement(quick, monkeypatch, target, name, wrap)
    assert worst > config.tolerance


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_chains_take_covariant_gds_steps(alpha):
    """A chain of the vectorised simulation against CovariantGD itself, fed the same gradients (warm-up
    steps at learning rate 0 included)."""
    setup = ChainsSetup((1.0, 0.25), 0.7, 1.0, 4, alpha, 0.05, 0.9, 0.99, 1e-10)
    sim = MetricChains(setup, 1)
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    spec = OptimizerSpec.covariant("full", alpha, moment="covariance", first_moment=False)
    opt = spec.build([p], 0.05, betas=(0.9, 0.99), eps=1e-10)
    gen = torch.Generator().manual_seed(3)
    for k in range(40):
        grad = sim.gradient(gen)
        lr = 0.0 if k < 5 else 0.05
        opt.param_groups[0]["lr"] = lr
        before = p.detach().clone()
        p.grad = grad[0].clone()
        opt.step()
        delta = sim.step(grad, lr)[0]
        torch.testing.assert_close(p.detach() - before, delta, rtol=1e-9, atol=1e-14)


def test_closed_form_2x2_power_is_the_eigendecomposition():
    A = torch.randn(50, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    S = A @ A.mT
    S[0] = torch.eye(2, dtype=torch.float64)  # tied eigenvalues
    for alpha in (0.5, 1.0):
        a, b, c = inverse_power_2x2(S[:, 0, 0], S[:, 0, 1], S[:, 1, 1], alpha, 1e-10)
        lam, U = torch.linalg.eigh(S + 1e-10 * torch.eye(2, dtype=torch.float64))
        ref = (U * lam.pow(-alpha).unsqueeze(-2)) @ U.mT
        got = torch.stack([a, b, c], -1)
        torch.testing.assert_close(got, ref[:, [0, 0, 1], [0, 1, 1]], rtol=1e-9, atol=0)


# ------------------------------------------------------------------------- loss-scale invariance (part 5)


def test_loss_scale_changes_the_step_by_c_to_the_one_minus_two_alpha(quick):
    config, result, recorder = quick
    s = result.summary
    assert s["scale/agreement"] < 1e-12  # every (α, c): the scale-1 run at lr·c^{1−2α}, to rounding
    for c in config.scale_factors:
        assert s[f"scale/a=0.5/c={c:g}/deviation"] < 1e-12  # α = ½: the very same trajectory
        if c != 1.0:
            assert s[f"scale/a=0/c={c:g}/deviation"] > 1e-3
            assert s[f"scale/a=1/c={c:g}/deviation"] > 1e-3
    # ε breaks it, and only as ε/c²
    assert s["scale/eps/deviation"] > 1e-4 and s["scale/eps/equivalence"] < 1e-12
    assert recorder.series("scale/excess_loss/a=0.5,c=100")[0].size == config.scale_steps
