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



def check_ints(owner: str | None = None, *, low: int | None = None, **values: Any) -> tuple[int, ...]:
    """:func:`check_int` of each ``name=value`` with the same lower bound, in order; the values as a tuple."""
    return tuple(check_int(name, value, low=low, owner=owner) for name, value in values.items())

def one_line(text: Any) -> str:
    """``text`` (anything ``str`` accepts) on one line: runs of white space, newlines included, become one
    space."""
    return " ".join(str(text).split())


def error_text(exc: BaseException) -> str:
    """The exception's message on one line, or its type's name when it has none."""
    return one_line(exc) or type(exc).__name__


def exception_line(exc: BaseException) -> str:
    """``"<ExceptionType>: <message on one line>"``, or just the type when the message is empty."""
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def as_tuple(
    name: str,
    value: Any,
    *,
    owner: str | None = None,
    item: type[float] | type[int] | None = None,
    nonempty: bool = False,
    **bounds: Any,
) -> tuple:
    """``value`` as a tuple, for config fields that hold several values.

    Accepts a comma-separated string (``"0.1, 0.01"``, as ``--set lrs=0.1,0.01`` or a hand-written config
    gives it), one number (``0.1 -> (0.1,)``) or any iterable. ``item=float`` / ``item=int`` parses string
    items as numbers and checks every item with :func:`check_real` / :func:`check_int` within ``bounds``
    (``low``, ``high``, and for reals ``low_open``, ``high_open``); ``item=None`` keeps the items (strings
    stripped). ``nonempty=True`` refuses an empty result. Every failure is one line naming the field.
    """
    where = _where(name, owner)
    if isinstance(value, str):
        items: tuple = tuple(p.strip() for p in value.split(",") if p.strip())
    elif isinstance(value, int | float):
        items = (value,)
    else:
        try:
            items = tuple(value)
        except TypeError:
            raise LearndynValueError(f"{where}={value!r} is not allowed; allowed: a list of values") from None
    if item is not None:
        try:
            items = tuple(item(v) if isinstance(v, str) else v for v in items)
        except ValueError:
            kind = "integers" if item is int else "numbers"
            message = f"{where}={value!r} is not a list of {kind}; allowed: e.g. 3,1,2"
            raise LearndynValueError(message) from None
        check = check_int if item is int else check_real
        items = tuple(check(name, v, owner=owner, **bounds) for v in items)
    if nonempty and not items:
        raise LearndynValueError(f"{where}=() is empty; allowed: one or more values")
    return items
