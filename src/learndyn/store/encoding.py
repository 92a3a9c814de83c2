"""How the run store encodes values: timestamps (naive UTC) and configs/summaries as JSON text."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from learndyn.validation import LearndynValueError, check_int


def now() -> datetime:
    """The current time as the store keeps it: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def jsonable(value: Any) -> Any:
    """Best-effort conversion of config/summary values to JSON-representable Python values."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()  # a 0-d torch tensor
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    return str(value)


def dumps(value: Any) -> str:
    """``value`` (see :func:`jsonable`) as JSON text."""
    return json.dumps(jsonable(value), sort_keys=False)


def loads(text: str | None) -> Any:
    """Parse JSON text from the store; a missing value (NULL) is ``{}``."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return {}
    return json.loads(text)


def finite_dumps(value: Any, what: str) -> str:
    """``value`` as standard JSON text; a NaN or infinity anywhere in it is refused naming where (``what`` is
    the name of the whole value, e.g. ``config``): JSON has no NaN or Infinity."""
    plain = jsonable(value)
    bad = _non_finite(plain, what)
    if bad is not None:
        raise LearndynValueError(
            f"{bad[0]}={bad[1]!r} is not allowed; allowed: finite numbers (JSON has no NaN or Infinity)"
        )
    return json.dumps(plain, allow_nan=False)


def _non_finite(value: Any, where: str) -> tuple[str, float] | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, value)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


BIGINT = (-(2**63), 2**63 - 1)
"""The range of the store's integer columns (DuckDB BIGINT)."""


def check_seed(seed: Any, owner: str) -> int | None:
    """``seed`` as an int in the BIGINT range (None stays None), or a one-line error naming ``owner``."""
    if seed is None:
        return None
    seed = int(seed) if isinstance(seed, np.integer) else seed
    return check_int("seed", seed, low=BIGINT[0], high=BIGINT[1], owner=owner)
