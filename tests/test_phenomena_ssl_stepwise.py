"""The ``ssl-stepwise`` phenomenon: linear Barlow Twins trained by gradient descent vs Simon et al.'s curves.

Measured (quick config: γ = (1, .5, .25, .1, .05, .02), d = 2, α = 1e-3, lr = 1e-3): agreement (max absolute
error of the eigenvalues of C over the trajectory) 0.0059; the representation probe's effective rank within
0.002 of the prediction; step times within 0.2%. Tolerance 0.02.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from learndyn.checkpoint import MemoryCheckpointer
from learndyn.phenomena import registry
from learndyn.phenomena.ssl_stepwise import (
    SSLStepwiseConfig,
    eigenvalue_agreement,
    initial_weights,
    make_views,
    run,
)
from learndyn.store.recorder import MemoryRecorder
from learndyn.theory import embedding_eigenvalues, view_correlation
from learndyn.validation import LearndynValueError


def _quick(**changes) -> SSLStepwiseConfig:
    return SSLStepwiseConfig(**{**registry.get("ssl-stepwise").quick_overrides, **changes})


@pytest.fixture(scope="module")
def quick_run():
    # (run() sets torch to one thread itself: config.threads)
    config = _quick()
    assert config.init_scale == 1e-3
    recorder = MemoryRecorder()
    return config, recorder, run(config, recorder)


def _sim(recorder: MemoryRecorder, d: int) -> tuple[np.ndarray, np.ndarray]:
    steps, _ = recorder.series("sim/c1")
    return steps, np.stack([recorder.series(f"sim/c{j + 1}")[1] for j in range(d)], axis=1)


def test_views_are_built_exactly():
    config = SSLStepwiseConfig()
    x1, x2, basis = make_views(config)
    gamma = (basis * np.array(config.eigenvalues)) @ basis.T
    np.testing.assert_allclose(view_correlation(x1, x2), gamma, atol=1e-12)
    single = x1.T @ x1 / x1.shape[0]
    np.testing.assert_allclose(single, gamma + config.view_noise**2 * np.eye(gamma.shape[0]), atol=1e-12)


def test_quick_config_agrees_with_closed_form(quick_run):
    config, recorder, result = quick_run
    assert result.tolerance == 0.02
    assert result.agreement is not None and result.agreement <= result.tolerance
    assert result.passed
    for q in ("c1", "c2", "erank", "learned_dims", "loss"):
        s_steps, _ = recorder.series(f"sim/{q}")
        t_steps, _ = recorder.series(f"theory/{q}")
        assert s_steps.size > 100 and np.array_equal(s_steps, t_steps)
    # the representation probe ran through the Monitor; sim/erank is its measurement
    probe_steps, probe_erank = recorder.series("repr/embed/erank")
    steps, erank = recorder.series("sim/erank")
    np.testing.assert_array_equal(probe_steps, steps)
    np.testing.assert_allclose(probe_erank, erank)
    assert result.summary["erank_max_abs_err"] < 0.02
    # everything learned at the end: d dimensions
    assert result.summary["final_learned_dims"] == config.embed_dim
    assert result.summary["final_erank"] > config.embed_dim - 0.1


def test_steps_and_effective_rank_staircase(quick_run):
    config, recorder, result = quick_run
    for row in result.table:
        assert row["rel. error"] < 0.01
    # eigenvalues are learned one at a time, in order of γ: the step times are well separated
    times = [row["step time t_j/lr (theory)"] for row in result.table]
    assert times[1] > 1.8 * times[0]
    # learned-dimension staircase 0 -> 1 -> 2 and effective rank: isotropic-ish at init, ~1 after the first
    # step, ~2 at the end
    _, dims = recorder.series("sim/learned_dims")
    assert list(np.unique(dims)) == [0.0, 1.0, 2.0] and np.all(np.diff(dims) >= 0)
    steps, erank = recorder.series("sim/erank")
    between = (steps > times[0] * 1.2) & (steps < times[1] * 0.8)
    assert erank[0] > 1.5 and erank[between].min() < 1.3 and erank[-1] > 1.9


def test_agreement_would_fail_with_wrong_theory(quick_run):
    config, recorder, result = quick_run
    steps, sim = _sim(recorder, config.embed_dim)
    t = config.lr * steps
    gamma = np.array(config.eigenvalues[: config.embed_dim])
    x1, x2, _ = make_views(config)
    _, c0 = initial_weights(config, view_correlation(x1, x2))
    assert eigenvalue_agreement(sim, embedding_eigenvalues(t, gamma, c0)) == pytest.approx(result.agreement)
    for wrong in (
        embedding_eigenvalues(t, 1.1 * gamma, c0),  # wrong spectrum
        embedding_eigenvalues(t, gamma, 10 * c0),  # wrong initial scale
        embedding_eigenvalues(t, gamma[::-1].copy(), c0),  # wrong order of learning
    ):
        assert eigenvalue_agreement(sim, wrong) > 5 * result.tolerance


def test_random_initialisation_with_projected_initial_values():
    config = _quick(init="random", eval_points=100)
    result = run(config, MemoryRecorder())
    assert result.agreement is not None and result.agreement <= config.tolerance


def test_deterministic_and_resumes_exactly():
    config = _quick(eval_points=40, lr=4e-3, init_scale=0.01)
    reference = run(config, MemoryRecorder())

    class Interrupting(MemoryRecorder):
        def __init__(self, checkpointer: MemoryCheckpointer, stop_at: int | None) -> None:
            super().__init__()
            self.checkpointer, self.stop_at = checkpointer, stop_at

        def log(self, step, metrics):
            if self.stop_at is not None and step >= self.stop_at:
                raise KeyboardInterrupt
            super().log(step, metrics)

    checkpointer = MemoryCheckpointer(every=100)
    with pytest.raises(KeyboardInterrupt):
        run(config, Interrupting(checkpointer, stop_at=int(reference.summary["steps"]) // 2))
    second = Interrupting(checkpointer, stop_at=None)
    resumed = run(config, second)
    assert second.series("sim/c1")[0][0] > 0  # it continued from a checkpoint
    assert resumed.summary == reference.summary
    assert resumed.table == reference.table


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"eigenvalues": ()}, r"eigenvalues=\(\) is empty"),
        ({"eigenvalues": (1.0, 1.0)}, r"allowed: strictly decreasing values"),
        ({"eigenvalues": (1.0, -0.5)}, r"eigenvalues=-0.5 is out of range"),
        ({"embed_dim": 7}, r"embed_dim=7 is out of range; allowed: 1 <= embed_dim <= 6"),
        ({"n_samples": 10}, r"n_samples=10 is out of range; allowed: 18 <= n_samples"),
        ({"init": "orthogonal"}, r"init='orthogonal' is not allowed; allowed: 'aligned', 'random'"),
        ({"init_scale": 0.0}, r"init_scale=0.0 is out of range"),
        ({"view_noise": -1.0}, r"view_noise=-1.0 is out of range"),
        ({"lr": 2.0}, r"lr=2.0 is out of range"),
    ],
)
def test_config_validation_one_line(changes, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        dataclasses.replace(SSLStepwiseConfig(), **changes)
    assert "\n" not in str(info.value)


def test_string_eigenvalues_from_cli():
    assert SSLStepwiseConfig(eigenvalues="1, 0.5,0.2", embed_dim=2).eigenvalues == (1.0, 0.5, 0.2)
