"""The ``deep-linear`` phenomenon: a trained deep linear network against Saxe et al.'s closed form.

Measured (quick config: s = (3, 1.5), a0 = 1e-5, lr = 7e-4, 9829 full-batch steps): agreement (max relative
error of the mode strengths over the trajectory) 0.95%; both stages detected, at the steps the same detector
finds on the predicted loss curve. Tolerance 2%.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from learndyn.checkpoint import MemoryCheckpointer
from learndyn.phenomena import registry
from learndyn.phenomena.deep_linear import (
    DeepLinearConfig,
    make_data,
    mode_agreement,
    run,
)
from learndyn.store.recorder import MemoryRecorder
from learndyn.theory import learning_time, mode_strength
from learndyn.validation import LearndynValueError


def _quick() -> DeepLinearConfig:
    return DeepLinearConfig(**registry.get("deep-linear").quick_overrides)


@pytest.fixture(scope="module")
def quick_run():
    # (run() sets torch to one thread itself: config.threads)
    config = _quick()
    recorder = MemoryRecorder()
    return config, recorder, run(config, recorder)


def _sim_modes(recorder: MemoryRecorder, r: int) -> tuple[np.ndarray, np.ndarray]:
    steps, _ = recorder.series("sim/mode1")
    return steps, np.stack([recorder.series(f"sim/mode{i + 1}")[1] for i in range(r)], axis=1)


def test_quick_config_agrees_with_closed_form(quick_run):
    config, recorder, result = quick_run
    assert result.tolerance == 0.015
    assert result.agreement is not None and result.agreement <= result.tolerance
    assert result.passed
    # sim/ and theory/ series are logged side by side (the report overlays them)
    for q in ("mode1", "mode2", "loss"):
        s_steps, _ = recorder.series(f"sim/{q}")
        t_steps, _ = recorder.series(f"theory/{q}")
        assert s_steps.size > 100 and np.array_equal(s_steps, t_steps)
    # the final point is after the last update and both modes have been learned
    steps, sim = _sim_modes(recorder, 2)
    assert steps[-1] == config.steps()
    np.testing.assert_allclose(sim[-1], config.singular_values, rtol=0.02)
    # the loss ends at the irreducible part ½ n_out noise²
    _, _, _, residual = make_data(config)
    assert result.summary["final_loss"] == pytest.approx(residual, rel=0.05)


def test_stages_detected_where_predicted(quick_run):
    config, _, result = quick_run
    s = result.summary
    assert s["stages_detected"] == 2 == s["stages_theory"]
    t_half = learning_time(np.array(config.singular_values), config.init_scale) / config.lr
    for stage in (1, 2):
        detected = s[f"stage{stage}/detected_step"]
        # same detector on the predicted loss curve: same step within a few logged points
        assert abs(detected - s[f"stage{stage}/theory_curve_step"]) <= 3 * config.steps() / config.eval_points
        # and close to the predicted learning time t½/lr of the mode learned in that stage (larger s first)
        assert detected == pytest.approx(t_half[stage - 1], rel=0.1)
        # each mode reaches half its strength at t½/lr
        assert s[f"mode{stage}/learn_step_sim"] == pytest.approx(t_half[stage - 1], rel=0.01)
    assert s["stage1/detected_step"] < s["stage2/detected_step"]
    assert [row["mode"] for row in result.table] == [1, 2]


def test_agreement_would_fail_with_wrong_theory(quick_run):
    config, recorder, result = quick_run
    steps, sim = _sim_modes(recorder, 2)
    t = config.lr * steps
    right = mode_strength(t, config.singular_values, config.init_scale)
    assert mode_agreement(sim, right) == pytest.approx(result.agreement, rel=1e-9)
    wrong_s = mode_strength(t, 1.05 * np.array(config.singular_values), config.init_scale)
    wrong_a0 = mode_strength(t, config.singular_values, 3 * config.init_scale)
    wrong_depth = mode_strength(t, config.singular_values, config.init_scale, depth=3)
    for wrong in (wrong_s, wrong_a0, wrong_depth):
        assert mode_agreement(sim, wrong) > 10 * result.tolerance


def test_depth_three_network():
    config = DeepLinearConfig(depth=3, singular_values=(2.0,), init_scale=0.1, lr=2e-3)
    recorder = MemoryRecorder()
    result = run(config, recorder)
    assert result.agreement is not None and result.agreement <= config.tolerance
    steps, values = recorder.series("sim/mode1")
    assert values[0] == pytest.approx(0.1, rel=1e-9)
    assert values[-1] == pytest.approx(2.0, rel=0.01)


def test_deterministic_and_resumes_exactly():
    config = DeepLinearConfig(singular_values=(3.0, 1.0), init_scale=1e-2, lr=4e-3, eval_points=50)
    reference = run(config, MemoryRecorder())
    assert run(config, MemoryRecorder()).summary == reference.summary

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
        run(config, Interrupting(checkpointer, stop_at=config.steps() // 2))
    assert checkpointer.states  # something to resume from
    second = Interrupting(checkpointer, stop_at=None)
    resumed = run(config, second)
    assert second.series("sim/mode1")[0][0] > 0  # it continued from a checkpoint, not from step 0
    assert resumed.summary == reference.summary  # the series and the stage detector came back with it
    assert resumed.table == reference.table


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"singular_values": ()}, r"singular_values=\(\) is empty"),
        ({"singular_values": (1.0, -1.0)}, r"singular_values=-1.0 is out of range"),
        ({"singular_values": "3,x"}, r"singular_values='3,x' is not a list of numbers"),
        ({"depth": 1}, r"depth=1 is out of range; allowed: 2 <= depth <= 8"),
        ({"hidden": 2}, r"hidden=2 is out of range; allowed: 3 <= hidden"),
        ({"n_samples": 10}, r"n_samples=10 is out of range; allowed: 14 <= n_samples"),
        ({"init_scale": 0.5}, r"init_scale=0.5 is out of range; allowed: 0 < init_scale < min"),
        ({"lr": 0.0}, r"lr=0.0 is out of range"),
        ({"t_end": -1.0}, r"t_end=-1.0 is out of range"),
        ({"eval_points": 3}, r"eval_points=3 is out of range"),
    ],
)
def test_config_validation_one_line(changes, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        dataclasses.replace(DeepLinearConfig(), **changes)
    assert "\n" not in str(info.value)


def test_string_singular_values_from_cli():
    assert DeepLinearConfig(singular_values="4, 2,1").singular_values == (4.0, 2.0, 1.0)


def test_registered_with_quick_size():
    experiment = registry.get("deep-linear")
    assert experiment.config_cls is DeepLinearConfig
    assert _quick().steps() < 12_000
