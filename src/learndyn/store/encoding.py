"""How the run store encodes values: timestamps (naive UTC) and configs/summaries as JSON text."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np


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
