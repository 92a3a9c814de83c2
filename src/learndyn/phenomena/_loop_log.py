"""One training loop's view of an experiment run: tagged metrics, kept in memory, saved with its checkpoints.

Experiments such as ``symmetry`` and ``regimes`` run several training loops into one run. A :class:`LoopLog`
sits between a loop (``train_loop``, the :class:`~learndyn.probes.Monitor`) and the run's recorder:

* every metric name gets ``/<tag>`` appended (``symmetry/rescale/0-2/norm/wd=0.1``), so the loops' series stay
  apart in the store while the report still groups them by their first name component;
* every scalar and array is also kept in memory under its *untagged* name, so the experiment computes its
  agreement from what the probes measured without reading the store back;
* :attr:`checkpointer` wraps the run's checkpointer (``recorder.checkpointer``, when the run has one): the
  kept series are saved inside each of the loop's checkpoints and restored with them, so a resumed loop --
  or one that had already finished -- still has its whole measured history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from learndyn.store.recorder import NullRecorder, Recorder

_STATE_KEY = "learndyn_loop_log"


class LoopLog:
    """Forward metrics to ``recorder`` with ``/<tag>`` appended (no tag: unchanged) and keep them.

    ``recorder=None`` forwards nothing. Re-logging a step (after a resume) replaces the kept value.
    """

    def __init__(self, recorder: Recorder | None, tag: str | None = None) -> None:
        self.recorder: Recorder = recorder if recorder is not None else NullRecorder()
        self.tag = tag
        self.scalars: dict[str, dict[int, float]] = defaultdict(dict)
        self.arrays: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        inner = getattr(recorder, "checkpointer", None)
        self.checkpointer: _LoopCheckpointer | None = (
            _LoopCheckpointer(inner, self) if inner is not None else None
        )

    def name(self, metric: str) -> str:
        """The stored name of ``metric``."""
        return f"{metric}/{self.tag}" if self.tag else metric

    # ------------------------------------------------------------------------------------ Recorder
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.scalars[key][int(step)] = float(value)
        self.recorder.log(step, {self.name(k): float(v) for k, v in metrics.items()})

    def keep(self, step: int, metrics: Mapping[str, float]) -> None:
        """Keep scalars in memory (and in checkpoints) without sending them to the recorder."""
        for key, value in metrics.items():
            self.scalars[key][int(step)] = float(value)

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        self.arrays[name][int(step)] = np.array(array, copy=True)
        self.recorder.log_array(step, self.name(name), array)

    def flush(self) -> None:
        self.recorder.flush()

    # ------------------------------------------------------------------------------------ reading
    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of a kept scalar, sorted by step (empty arrays if never logged)."""
        rows = sorted(self.scalars.get(name, {}).items())
        return np.array([s for s, _ in rows], dtype=np.int64), np.array([v for _, v in rows], dtype=float)

    def array_series(self, name: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(steps, arrays)`` of a kept array metric, sorted by step."""
        rows = sorted(self.arrays.get(name, {}).items())
        return np.array([s for s, _ in rows], dtype=np.int64), [a for _, a in rows]

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "scalars": {k: dict(v) for k, v in self.scalars.items()},
            "arrays": {k: dict(v) for k, v in self.arrays.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scalars = defaultdict(dict, {k: dict(v) for k, v in state["scalars"].items()})
        self.arrays = defaultdict(dict, {k: dict(v) for k, v in state["arrays"].items()})


class _LoopCheckpointer:
    """A checkpointer that stores the :class:`LoopLog`'s series inside the loop's checkpoint.

    Everything else (``every``, ``loop_key``, ``save_completed`` of a stored run's checkpointer) is the
    wrapped checkpointer's.
    """

    def __init__(self, inner: Any, log: LoopLog) -> None:
        self.inner = inner
        self.log = log

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "log"):  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load(self, key: str) -> dict[str, Any] | None:
        state = self.inner.load(key)
        if state is None:
            return None
        state = dict(state)
        saved = state.pop(_STATE_KEY, None)
        if saved is not None:
            self.log.load_state_dict(saved)
        return state

    def save(self, key: str, state: dict[str, Any]) -> None:
        self.inner.save(key, {**state, _STATE_KEY: self.log.state_dict()})
