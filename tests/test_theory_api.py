"""The public surface of learndyn.theory and its time convention."""

from __future__ import annotations

import numpy as np
import pytest

import learndyn.theory as theory
from learndyn.theory import gradient_flow_time, mode_strength, steps_for_time
from learndyn.validation import LearndynValueError


def test_exports_resolve():
    for name in theory.__all__:
        assert getattr(theory, name) is not None, name


def test_time_convention_round_trip():
    np.testing.assert_allclose(gradient_flow_time([0, 10, 2500], lr=0.004), [0.0, 0.04, 10.0])
    np.testing.assert_array_equal(steps_for_time([0.0, 0.04, 10.0], lr=0.004), [0, 10, 2500])
    # t = lr·step with tau = 1 equals steps with tau = 1/lr
    steps = np.array([0, 100, 1000])
    np.testing.assert_allclose(
        mode_strength(gradient_flow_time(steps, 0.01), 2.0, 1e-3),
        mode_strength(steps, 2.0, 1e-3, tau=100.0),
        rtol=1e-13,
    )


def test_time_validation():
    with pytest.raises(LearndynValueError, match="lr"):
        gradient_flow_time([1], lr=0.0)
    with pytest.raises(LearndynValueError, match="steps has an element"):
        gradient_flow_time([-1], lr=0.1)
