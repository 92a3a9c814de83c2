"""Import an optional dependency, or fail with the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """``import module``, or an ``ImportError`` saying ``pip install "learndyn[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is not installed; allowed: install it with pip install \"learndyn[{extra}]\""
        ) from exc
