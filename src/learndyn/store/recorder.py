"""What a training loop writes to: the :class:`Recorder` protocol.

The run store's ``Run`` implements it; :class:`MemoryRecorder` keeps everything in memory (tests, notebooks)
and :class:`NullRecorder` drops everything. Experiments and the Monitor only ever talk to a ``Recorder``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Recorder(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record scalar metrics at ``step``."""

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        """Record an array-valued metric (a spectrum, a kernel) at ``step``."""

    def flush(self) -> None:
        """Make everything logged so far durable."""


class NullRecorder:
    """A recorder that keeps nothing."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        pass

    def flush(self) -> None:
        pass


class MemoryRecorder:
    """A recorder that keeps every scalar and array in memory.

    ``scalars[name]`` is a list of ``(step, value)``; ``arrays[name]`` a list of ``(step, array)``.
    """

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.arrays: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.scalars[name].append((int(step), float(value)))

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        self.arrays[name].append((int(step), np.asarray(array).copy()))

    def flush(self) -> None:
        pass

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one scalar metric as arrays."""
        rows = self.scalars.get(name, [])
        return np.array([s for s, _ in rows], dtype=np.int64), np.array([v for _, v in rows], dtype=float)
