"""Import an optional dependency, or fail with the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, needed_by: str | None = None) -> ModuleType:
    """``import module``, or a :class:`ModuleNotFoundError` (an ``ImportError``) saying
    ``pip install "learndyn[extra]"``; ``needed_by`` (e.g. ``"optimizer='po-soap'"``) starts the message."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        who = f"{needed_by}: " if needed_by else ""
        raise ModuleNotFoundError(
            f"{who}{module} is not installed; allowed: install it with pip install \"learndyn[{extra}]\""
        ) from exc
