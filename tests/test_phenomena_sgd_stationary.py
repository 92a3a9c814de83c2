"""The ``sgd-stationary`` experiment at its quick size: many SGD chains vs the exact stationary covariance.

Measured at the quick size (4000 chains, lr 0.05 and 0.2, H eigenvalues 2, 1, 0.5, 0.25, B = 2, σ² = 1; seeds
0–5 with 2000 chains): trace errors ≤ 1%, largest-entry errors ≤ 1.6% of max|Σ| (tolerance 3%); the
Langevin form T·I is 8% low at lr 0.05 and 36% low at lr 0.2. A theory fed twice the batch size misses the
trace by ~50%.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from learndyn.config import apply_overrides
from learndyn.phenomena import registry, sgd_stationary
from learndyn.phenomena.sgd_stationary import (
    Schedule,
    SGDStationaryConfig,
    covariance_errors,
    lyapunov_covariance,
    make_problem,
)
from learndyn.store.recorder import MemoryRecorder
from learndyn.theory import sgd_stationary_covariance
from learndyn.validation import LearndynValueError


def _quick(**changes) -> SGDStationaryConfig:
    experiment = registry.get("sgd-stationary")
    return dataclasses.replace(SGDStationaryConfig(), **{**experiment.quick_overrides, **changes})


@pytest.fixture(scope="module")
def quick_run():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recorder = MemoryRecorder()
        config = _quick()
        return config, sgd_stationary.run(config, recorder), recorder
    finally:
        torch.set_num_threads(threads)


def test_stationary_covariance_agrees_with_the_lyapunov_solution(quick_run):
    config, result, _ = quick_run
    assert result.tolerance == config.tolerance
    assert result.agreement is not None and result.agreement <= result.tolerance, result.table
    assert all(row["status"] == "completed" for row in result.table)
    for lr in config.lrs:
        # the simulation is within a few standard errors of the theory (group-of-chains error bars)
        sim, theory = result.summary[f"trace_sim/lr={lr:g}"], result.summary[f"trace_theory/lr={lr:g}"]
        assert abs(sim - theory) <= 5 * result.summary[f"trace_stderr/lr={lr:g}"] + 1e-3 * theory
    assert result.summary["lyapunov_gap"] < 1e-10  # closed form = numerical discrete Lyapunov solution


def test_langevin_limit_is_accurate_only_at_small_lr(quick_run):
    config, result, _ = quick_run
    small, large = min(config.lrs), max(config.lrs)
    err_small = result.summary[f"langevin_error/lr={small:g}"]
    err_large = result.summary[f"langevin_error/lr={large:g}"]
    assert err_small < 0.12 and err_large > 0.3, (err_small, err_large)
    # at small lr the Langevin form is off by about what the exact theory says it should be (O(lr))
    exact = result.summary[f"trace_theory/lr={small:g}"]
    expected = 1 - result.summary[f"trace_langevin/lr={small:g}"] / exact
    assert err_small == pytest.approx(expected, abs=0.02)


def test_logs_transient_curves_and_covariances(quick_run):
    config, _, recorder = quick_run
    problem = make_problem(config)
    for lr in config.lrs:
        tag = f"lr={lr:g}"
        steps_sim, sim = recorder.series(f"sim/second_moment_trace/{tag}")
        steps_th, theory = recorder.series(f"theory/second_moment_trace/{tag}")
        np.testing.assert_array_equal(steps_sim, Schedule.for_lr(config, lr).record_steps())
        np.testing.assert_array_equal(steps_sim, steps_th)
        assert theory[0] == pytest.approx(1.0)  # S_0 = w* w*ᵀ with |w*| = 1
        np.testing.assert_allclose(sim, theory, rtol=0.06)
        (_, estimate), = recorder.arrays[f"sim/stationary_covariance/{tag}"]
        (_, sigma), = recorder.arrays[f"theory/stationary_covariance/{tag}"]
        np.testing.assert_allclose(sigma, sgd_stationary_covariance(problem.H, lr, config.batch, 1.0))
        assert max(covariance_errors(estimate, sigma)) <= config.tolerance


def test_a_wrong_theory_input_fails_by_far(monkeypatch):
    def doubled_batch(H, lr, batch, noise_var):
        return sgd_stationary_covariance(H, lr, 2 * batch, noise_var)

    monkeypatch.setattr(sgd_stationary, "sgd_stationary_covariance", doubled_batch)
    result = sgd_stationary.run(_quick(lrs=(0.2,), chains=1000), MemoryRecorder())
    assert result.agreement > 10 * result.tolerance, result.agreement


def test_resumed_run_reproduces_the_uninterrupted_one(crashing_checkpointer):
    config = _quick(lrs=(0.2, 0.3), chains=200, samples=10)
    reference = sgd_stationary.run(config, MemoryRecorder())
    recorder = MemoryRecorder()
    # crash during the second learning rate
    recorder.checkpointer = crashing_checkpointer(crash_at_save=4, every=50)
    with pytest.raises(crashing_checkpointer.Crash):
        sgd_stationary.run(config, recorder)
    recorder.checkpointer.crash_at_save = 0
    resumed = sgd_stationary.run(config, recorder)
    assert resumed.summary == reference.summary


def test_numerical_lyapunov_solution_is_the_fixed_point_of_the_recursion():
    problem = make_problem(SGDStationaryConfig())
    sigma = lyapunov_covariance(problem.H, 0.3, 2, 1.0)
    A = np.eye(4) - 0.3 * problem.H
    noise = (problem.H @ sigma @ problem.H + np.trace(problem.H @ sigma) * problem.H + problem.H) / 2
    np.testing.assert_allclose(A @ sigma @ A + 0.09 * noise, sigma, atol=1e-13)


def test_schedule_spacing_follows_the_relaxation_time():
    config = SGDStationaryConfig()
    slow, fast = Schedule.for_lr(config, 0.01), Schedule.for_lr(config, 0.1)
    assert slow.gap == pytest.approx(10 * fast.gap, rel=0.05)
    for lr, s in ((0.01, slow), (0.1, fast)):
        tau = 1 / (lr * min(config.eigenvalues))  # steps per relaxation time of the slowest mode
        assert s.burn % s.gap == 0 and s.burn >= config.burn_in * tau
        assert s.steps == s.burn + (config.samples - 1) * s.gap


def test_registered_with_valid_quick_overrides_and_cli_parsing():
    assert registry.get("sgd-stationary").config_cls is SGDStationaryConfig
    config = apply_overrides(SGDStationaryConfig(), ["lrs=0.05,0.1", "batch=4", "eigenvalues=1,0.5"])
    assert config.lrs == (0.05, 0.1) and config.batch == 4 and config.eigenvalues == (1.0, 0.5)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lrs": (0.1, 0.5)}, r"SGDStationaryConfig.lrs contains 0.5, where the SGD variance diverges; "
                              r"allowed: lr < 0.45"),
        ({"lrs": (0.1, 0.1)}, r"SGDStationaryConfig.lrs=\(0.1, 0.1\) repeats a value"),
        ({"eigenvalues": (1.0, 0.0)}, r"SGDStationaryConfig.eigenvalues=0.0 is out of range"),
        ({"batch": 0}, r"SGDStationaryConfig.batch=0 is out of range"),
        ({"chains": 5, "groups": 10}, r"SGDStationaryConfig.groups=10 is out of range; allowed: 2 <="),
        ({"noise_var": 0.0}, r"SGDStationaryConfig.noise_var=0.0 is out of range"),
        ({"samples": 0}, r"SGDStationaryConfig.samples=0 is out of range"),
    ],
)
def test_config_validation_is_one_line(changes, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        SGDStationaryConfig(**changes)
    assert "\n" not in str(info.value)
