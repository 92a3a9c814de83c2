"""The ``regimes`` phenomenon: CovariantGD at α = 0, ½, 1 on linear regression.

Measured at the quick size (single thread, ~8 s CPU): stationary SGD covariance trace within 0.2% of the exact
closed form (Langevin T·I off by 6.5%, Gibbs T·H⁻¹ by 75%); steps to target from condition 1 to 100: α = 1
full 172 → 172, α = ½ full 45 → 179, α = 0 8 → 348 (exact expectation 362); update PR near the minimum
(support rank 6): α = ½ full 5.96 (whitened), α = 0 3.74 (theory 3.82), α = 1 3.81 (3.89). Tolerance 5%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learndyn.config import apply_overrides
from learndyn.phenomena import registry
from learndyn.phenomena.regimes import RegimesConfig, make_task, stationary_theory
from learndyn.store.recorder import MemoryRecorder
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
    assert result.passed and result.agreement == s["stationary/trace_error"] <= config.tolerance
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
    ],
)
def test_bad_config_fails_with_one_line(override, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        apply_overrides(RegimesConfig(), [override], experiment="regimes")
    assert "\n" not in str(info.value)
