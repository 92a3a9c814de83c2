"""The ``symmetry`` phenomenon: conservation, e^{−2λt} decay, law of balance and low-rank collapse.

Measured at the quick size (single thread, ~7 s): decay-curve error 0.87% (λ = 0.2, ‖q‖ falls to 4%), drift
without weight decay 0.38%; law of balance 0.8% (leading-order law 34% off); collapsed spectra within 3e-5
of soft-thresholding, ranks 8 and 4 as predicted. Tolerance 5%.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from learndyn.checkpoint import RunCheckpointer
from learndyn.config import apply_overrides
from learndyn.phenomena import registry
from learndyn.phenomena.symmetry import SymmetryConfig, relu_net
from learndyn.store.recorder import MemoryRecorder
from learndyn.theory.symmetry import decay_errors, neuron_balance
from learndyn.validation import LearndynValueError


@pytest.fixture(scope="module")
def quick_result():
    exp = registry.get("symmetry")
    config = SymmetryConfig(**exp.quick_overrides)
    recorder = MemoryRecorder()
    return config, exp.run(config, recorder), recorder


def test_quick_run_agrees_with_theory(quick_result):
    config, result, recorder = quick_result
    s = result.summary
    assert result.passed and result.agreement <= result.tolerance == config.tolerance
    assert s["decay/wd=0/max_rel_drift"] < 1e-3  # conservation under (near) gradient flow
    assert s["decay/wd=0.2/final_ratio"] < 0.05  # and weight decay really broke it
    assert s["balance/final_mean"] < 0.1 * s["balance/q0"]  # SGD noise drove Q towards balance
    assert s["collapse/rank_match"] == 1.0
    assert s["collapse/wd=0.75/rank"] < config.collapse_width == s["collapse/wd=0/rank"]
    assert abs(s["collapse/wd=0.75/erank"] - s["collapse/wd=0.75/erank_theory"]) < 0.01
    # curves for the report: theory and simulation side by side, tagged per loop
    for q in ("balance_norm/wd=0.2", "balance_mean", "hidden_rank/wd=0.75"):
        assert recorder.series(f"sim/{q}")[0].size > 5
        np.testing.assert_array_equal(recorder.series(f"sim/{q}")[0], recorder.series(f"theory/{q}")[0])
    assert "symmetry/rescale/0-2/rel_drift/wd=0" in recorder.scalars
    assert recorder.arrays["collapse/product_sv/wd=0.75"]


def test_wrong_laws_fail(quick_result):
    """The figure can fail: the leading-order law of balance, and a decay rate of λ instead of 2λ."""
    config, result, recorder = quick_result
    assert result.summary["balance/leading_order_error"] > 5 * config.tolerance
    steps, values = zip(*recorder.arrays["symmetry/rescale/0-2/value/wd=0.2"], strict=True)
    q, t = np.stack(values), config.lr * np.array(steps, dtype=float)
    assert decay_errors(q, t, 0.2).max() <= config.tolerance
    assert decay_errors(q, t, 0.2, rate=1.0).max() > 10 * config.tolerance


def test_probe_measures_the_neuron_balance():
    config = SymmetryConfig()
    net = relu_net(config, 3)
    q = neuron_balance(net[0].weight, net[2].weight, net[0].bias)
    assert (q > 0).any() and (q < 0).any()  # the initialisation is unbalanced both ways


TINY = {
    "steps": 60,
    "lr": 0.02,
    "weight_decays": (0.2,),
    "measure_every": 10,
    "balance_steps": 80,
    "balance_chains": 50,
    "balance_every": 20,
    "balance_lr": 0.04,
    "collapse_decays": (0.75,),
    "collapse_steps": 60,
    "collapse_lr": 0.2,
}


class _Crash(Exception):
    pass


class _CrashingCheckpointer(RunCheckpointer):
    """A stored run's checkpointer (one per attempt) whose attempt dies at the save after ``crash_after``."""

    def __init__(self, directory, crash_after):
        super().__init__(directory, every=20)
        self.left = crash_after

    def save(self, key, state):
        if self.left == 0:
            raise _Crash
        self.left -= 1
        super().save(key, state)


def test_resume_after_interruption_gives_the_same_figures(tmp_path):
    exp = registry.get("symmetry")
    config = SymmetryConfig(**TINY)
    whole = exp.run(config, MemoryRecorder())
    # saves per loop: 20, 40, 60 (+1 marked complete); attempt 1 dies in the balance loop after its step-20
    # checkpoint, attempt 2 restores the finished decay loop, resumes the balance loop from step 20 and dies
    # in the collapse loop after its step-20 checkpoint; attempt 3 finishes
    for _ in range(2):
        rec = MemoryRecorder()
        rec.checkpointer = _CrashingCheckpointer(tmp_path, crash_after=5)
        with pytest.raises(_Crash):
            exp.run(config, rec)
    rec = MemoryRecorder()
    rec.checkpointer = RunCheckpointer(tmp_path, every=20)
    resumed = exp.run(config, rec)
    assert resumed.summary == whole.summary
    assert "decay/loss/wd=0.2" not in rec.scalars  # the decay loop was restored, not retrained


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("weight_decays=-0.1", r"weight_decays=-0.1 is out of range"),
        ("balance_init=1,0", r"balance_init=.* two non-zero numbers"),
        ("balance_lr=2.0", r"lr=2.0 is out of range"),
        ("collapse_samples=4", r"collapse_samples=4 is out of range"),
        ("steps=0", r"steps=0 is out of range"),
    ],
)
def test_bad_config_fails_with_one_line(override, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        apply_overrides(SymmetryConfig(), [override], experiment="symmetry")
    assert "\n" not in str(info.value)


def test_config_roundtrip_defaults():
    config = SymmetryConfig()
    assert dataclasses.replace(config) == config
