"""learndyn.store: the run store and the :class:`Recorder` protocol training loops write to.

``RunStore`` (DuckDB file + arrays folder) and its ``Run`` recorder are imported lazily, so code that only
needs the ``Recorder`` protocol does not pay for importing DuckDB and pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from learndyn.store.recorder import MemoryRecorder, NullRecorder, Recorder

if TYPE_CHECKING:
    from learndyn.store.runstore import (  # noqa: F401
        SCHEMA_VERSION,
        FinishedRun,
        Run,
        RunNotFoundError,
        RunStore,
        StoreError,
        StoreReadOnlyError,
        default_store_path,
    )

_LAZY = {
    "RunStore",
    "Run",
    "FinishedRun",
    "StoreError",
    "RunNotFoundError",
    "default_store_path",
    "SCHEMA_VERSION",
}

__all__ = ["Recorder", "MemoryRecorder", "NullRecorder", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from learndyn.store import runstore

        return getattr(runstore, name)
    raise AttributeError(f"module 'learndyn.store' has no attribute {name!r}")
