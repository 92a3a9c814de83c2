import math

import pytest

from learndyn.validation import LearndynValueError, check_choice, check_int, check_real


def test_real_in_range_passes_through():
    assert check_real("lr", 0.1, low=0) == 0.1
    assert check_real("alpha", 1, low=0, high=1) == 1.0


@pytest.mark.parametrize(
    "value, match",
    [(1.5, r"alpha=1.5 is out of range; allowed: 0 <= alpha <= 1"),
     (-0.1, r"alpha=-0.1 is out of range"),
     (math.nan, r"not a finite number"),
     (math.inf, r"out of range"),
     ("x", r"has type str; allowed: a real number"),
     (True, r"has type bool")],
)
def test_real_rejects_with_one_line(value, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        check_real("alpha", value, low=0, high=1)
    assert "\n" not in str(info.value)


def test_open_bounds():
    with pytest.raises(ValueError, match=r"0 < lr"):
        check_real("lr", 0.0, low=0, low_open=True)


def test_int_and_choice_messages_name_owner_and_allowed():
    with pytest.raises(ValueError, match=r"CovariantGD.rank=0 is out of range; allowed: 1 <= rank"):
        check_int("rank", 0, low=1, owner="CovariantGD")
    with pytest.raises(ValueError, match=r"structure='foo' is not allowed; allowed: 'diag', 'kron'"):
        check_choice("structure", "foo", ["diag", "kron"])
    with pytest.raises(ValueError, match="has type float"):
        check_int("rank", 2.0)
