"""Argument validation with one-line messages that name the field and the allowed values.

Every public entry point (optimizer arguments, probe options, config fields, CLI options) validates
through these helpers so that bad input fails the same way everywhere::

    ValueError: alpha=1.5 is out of range; allowed: 0 <= alpha <= 1
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class LearndynValueError(ValueError):
    """A bad argument or config value. The message is one line: what, where, what is allowed."""


def _where(name: str, owner: str | None) -> str:
    return f"{owner}.{name}" if owner else name


def check_choice(name: str, value: Any, choices: Iterable[Any], owner: str | None = None) -> Any:
    """Return ``value`` if it is one of ``choices``; raise naming the allowed values otherwise."""
    choices = tuple(choices)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise LearndynValueError(f"{_where(name, owner)}={value!r} is not allowed; allowed: {allowed}")
    return value


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    owner: str | None = None,
) -> float:
    """Return ``value`` as float if it is a finite real in the given (closed by default) interval."""
    where = _where(name, owner)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LearndynValueError(f"{where}={value!r} has type {type(value).__name__}; allowed: a real number")
    value = float(value)
    lo_sym = "<" if low_open else "<="
    hi_sym = "<" if high_open else "<="
    bounds = " ".join(
        s
        for s in (
            f"{low:g} {lo_sym}" if low is not None else "",
            name,
            f"{hi_sym} {high:g}" if high is not None else "",
        )
        if s
    )
    if math.isnan(value):
        raise LearndynValueError(f"{where}={value!r} is not a finite number; allowed: {bounds}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high or math.isinf(value):
        raise LearndynValueError(f"{where}={value!r} is out of range; allowed: {bounds}")
    return value


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, owner: str | None = None
) -> int:
    """Return ``value`` if it is an int in ``[low, high]``; raise naming the allowed range otherwise."""
    where = _where(name, owner)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LearndynValueError(f"{where}={value!r} has type {type(value).__name__}; allowed: an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = f"{low} <= " if low is not None else ""
        hi = f" <= {high}" if high is not None else ""
        raise LearndynValueError(f"{where}={value!r} is out of range; allowed: {lo}{name}{hi}")
    return value
