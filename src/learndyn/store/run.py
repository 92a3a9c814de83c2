"""One run of the store as a :class:`~learndyn.store.recorder.Recorder`: buffered rows, batched flushes,
its checkpoints, and how it ends (``completed``, ``diverged``, ``failed``, ``interrupted``)."""

from __future__ import annotations

import atexit
import os
import time
import traceback
import uuid
import warnings
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from learndyn.checkpoint import RunCheckpointer
from learndyn.store.encoding import dumps, jsonable, now
from learndyn.store.errors import StoreError, first_line
from learndyn.store.liveness import checkpoint_dir, mark_finishing, unmark_finishing
from learndyn.store.schema import FINISHED, STATUSES
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

if TYPE_CHECKING:
    from learndyn.store.writer import RunWriting

_OPEN_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()


@atexit.register
def _flush_open_runs() -> None:
    """At interpreter exit, flush runs that were never closed (they stay ``running``)."""
    for run in list(_OPEN_RUNS):
        if run._pid == os.getpid():  # never a parent's buffer from a forked child
            try:
                run.flush()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


class Run:
    """One run in a :class:`~learndyn.store.RunStore`; a :class:`~learndyn.store.recorder.Recorder` and a
    context manager.

    Leaving the ``with`` block marks the run ``completed`` (or ``diverged`` after :meth:`mark_diverged`),
    ``interrupted`` on KeyboardInterrupt/SystemExit, ``failed`` with the error on any other exception (which
    propagates). Everything logged is buffered and written in batches; :attr:`last_flushed_step` tells how far
    the durable part goes. A run never closed is flushed (not closed) at interpreter exit. Not thread-safe:
    log to one run from one thread.

    :attr:`checkpointer` is where the run's training loops keep their checkpoints
    (``train_loop(..., checkpointer=getattr(recorder, "checkpointer", None))``); they are deleted when the
    run completes or diverges and kept otherwise, for ``learndyn resume``.
    """

    def __init__(
        self,
        store: RunWriting,
        run_id: str,
        name: str,
        *,
        flush_every: int = 100,
        flush_seconds: float | None = 10.0,
        checkpoint_every: int | None = None,
    ) -> None:
        self.store = store
        self.id = run_id
        self.name = name
        self.flush_every = check_int("flush_every", flush_every, low=1, owner="Run")
        self.flush_seconds = (
            None
            if flush_seconds is None
            else check_real("flush_seconds", flush_seconds, low=0.0, owner="Run")
        )
        self._rows: list[tuple[int, str, float]] = []
        self._arrays: list[tuple[int, str, np.ndarray]] = []
        self._updates: dict[str, Any] = {}
        self._summary: dict[str, Any] = {}
        self._status = "running"
        self._diverged_reason: str | None = None
        self._steps_since_flush = 0
        self._last_step: int | None = None
        self._max_step: int | None = None
        self._last_flushed_step: int | None = None
        self._last_flush_time = time.monotonic()
        self._file_seq = 0
        self._closed = False
        self._pid = os.getpid()
        self._checkpointer = RunCheckpointer(
            checkpoint_dir(store, run_id), every=checkpoint_every
        )  # validates checkpoint_every now, before any training
        # (step)s per name an earlier attempt of this run wrote (see RunStore.reopen_run); rows logged again
        # at those keys replace the old ones
        self._old_rows: dict[str, set[int]] = {}
        self._old_arrays: dict[str, set[int]] = {}
        _OPEN_RUNS.add(self)

    def __repr__(self) -> str:
        return f"Run(id={self.id[:8]!r}, name={self.name!r}, status={self._status!r})"

    def _repr_html_(self) -> str:
        """Notebook display: status, config, summary and the last values flushed to the store so far."""
        from learndyn.store.display import run_html

        return run_html(self.store, self.id)

    @property
    def status(self) -> str:
        return self._status

    @property
    def last_flushed_step(self) -> int | None:
        """The largest step whose rows are durable in the store (None before the first flush)."""
        return self._last_flushed_step

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    @property
    def checkpointer(self) -> RunCheckpointer:
        """The run's checkpoints (``<store>.arrays/<run id>/checkpoints``), for ``train_loop``."""
        return self._checkpointer

    # ------------------------------------------------------------------ Recorder
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer scalar ``metrics`` at ``step``; flushes every ``flush_every`` distinct steps."""
        self._check_open()
        step = self._step(step)
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise LearndynValueError(f"metric name {name!r} is not allowed; allowed: a non-empty string")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise LearndynValueError(
                    f"metric {name}={value!r} at step {step} is not a number; allowed: a real scalar"
                ) from None
            self._rows.append((step, name, number))

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        """Buffer an array-valued metric (a spectrum, a kernel) at ``step``; stored in an ``.npz`` beside."""
        self._check_open()
        step = self._step(step)
        if not isinstance(name, str) or not name:
            raise LearndynValueError(f"array name {name!r} is not allowed; allowed: a non-empty string")
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        arr = np.array(array, copy=True)
        if arr.dtype == object:
            raise LearndynValueError(
                f"array {name!r} at step {step} has dtype object; allowed: numeric arrays"
            )
        self._arrays.append((step, name, arr))

    def flush(self) -> None:
        """Write everything buffered to the store now (one transaction under the store's write lock)."""
        if not (self._rows or self._arrays or self._updates):
            return
        replace_rows = self._replaced(self._old_rows, ((s, n) for s, n, _ in self._rows))
        replace_arrays = self._replaced(self._old_arrays, ((s, n) for s, n, _ in self._arrays))
        array_rows = self._write_array_file() if self._arrays else []
        self.store._flush(self.id, self._rows, array_rows, self._updates, replace_rows, replace_arrays)
        for old, keys in ((self._old_rows, replace_rows), (self._old_arrays, replace_arrays)):
            for step, name in keys:
                old[name].discard(step)
        if self._max_step is not None:
            self._last_flushed_step = self._max_step
        self._rows, self._arrays, self._updates = [], [], {}
        self._steps_since_flush = 0
        self._last_flush_time = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def set_summary(self, summary: Mapping[str, Any]) -> None:
        """Merge ``summary`` (named scalars and short values) into the run's summary and store it now."""
        if not isinstance(summary, Mapping):
            raise LearndynValueError(f"summary={summary!r} is not allowed; allowed: a mapping")
        self._summary.update(jsonable(dict(summary)))
        self._updates["summary"] = dumps(self._summary)
        self.flush()

    def mark_diverged(self, reason: str | None = None, *, step: int | None = None) -> None:
        """Mark the run as diverged; it is closed with status ``diverged`` instead of ``completed``.

        ``train_loop`` calls this when a loop diverges. The first call wins: its ``reason`` becomes the run's
        error and ``step`` is stored as ``diverged_at`` in the summary (now, so it survives a crash).
        """
        if self._diverged_reason is not None:
            return
        self._diverged_reason = reason or "diverged"
        if step is not None:
            self.set_summary({"diverged_at": int(step)})

    @property
    def diverged(self) -> bool:
        return self._diverged_reason is not None

    @diverged.setter
    def diverged(self, value: bool) -> None:
        self._diverged_reason = "diverged" if value else None

    def close(self, status: str | None = None, error: str | None = None, tb: str | None = None) -> None:
        """Flush and mark the run finished (``completed``, or ``diverged`` if marked; or ``status``).

        If the closing flush raises, the run is not marked: it stays ``running`` (its rows are flushed at
        exit) and becomes ``interrupted`` once this process is gone; only a later ``close()`` that succeeds
        finishes it. A completed or diverged run's checkpoints are deleted; a kill between the commit and the
        deletion is repaired the next time the store is opened (:func:`~learndyn.store.liveness.
        clean_finished_checkpoints`).
        """
        if self._closed:
            return
        if status is None:
            status = "diverged" if self.diverged else "completed"
        check_choice("status", status, STATUSES[1:], owner="Run.close")
        if status == "diverged" and error is None:
            error = self._diverged_reason
        marks = {"status": status, "ended_at": now(), "error": error, "traceback": tb}
        finished = status in FINISHED and self._checkpointer.directory.exists()
        if finished:
            mark_finishing(self.store, self.id)
        self._updates.update(marks)
        try:
            self.flush()
        except BaseException:
            for key in marks:  # a later flush (the one at exit) must not finish the run
                self._updates.pop(key, None)
            if finished:
                unmark_finishing(self.store, self.id)
            raise
        self._status = status
        self._closed = True
        _OPEN_RUNS.discard(self)
        if finished and self._checkpointer.clear():  # nothing will resume it
            unmark_finishing(self.store, self.id)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            self.close()
            return False
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            status = "interrupted"
        else:
            status = "failed"
        message = f"{type(exc).__name__}: {first_line(exc)}" if str(exc) else type(exc).__name__
        trace = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            self.close(status, message, trace)
        except StoreError as store_exc:  # do not mask the original exception
            warnings.warn(f"run {self.id[:8]} could not be marked {status}: {store_exc}", stacklevel=2)
        return False

    # ------------------------------------------------------------------ helpers
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"run {self.id[:8]} ({self.name}) is closed; start a new run to log more")

    def _step(self, step: Any) -> int:
        """Coerce ``step``; when a new step begins, flush first if enough steps or time have passed.

        Flushing before the new step's rows are buffered means an automatic flush never splits a step.
        """
        try:
            step_int = int(step)
        except (TypeError, ValueError):
            raise LearndynValueError(f"step={step!r} is not allowed; allowed: an integer") from None
        if step_int != self._last_step:
            due = self._steps_since_flush >= self.flush_every
            if not due and self.flush_seconds is not None and self._steps_since_flush:
                due = time.monotonic() - self._last_flush_time >= self.flush_seconds
            if due:
                self._auto_flush()
            self._steps_since_flush += 1
            self._last_step = step_int
        if self._max_step is None or step_int > self._max_step:
            self._max_step = step_int
        return step_int

    @staticmethod
    def _replaced(old: dict[str, set[int]], keys: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
        """The (step, name) keys of this batch that an earlier attempt of the run wrote."""
        if not old:
            return []
        out = {(step, name) for step, name in keys if step in old.get(name, ())}
        return sorted(out)

    def _auto_flush(self) -> None:
        """A flush due by step count or time; if the store is busy (lock timeout), keep buffering and retry
        after another ``flush_every`` steps rather than break the training loop (explicit flushes raise)."""
        try:
            self.flush()
        except StoreError as exc:
            warnings.warn(f"run {self.id[:8]}: flush deferred, keeping rows in memory: {exc}", stacklevel=4)
            self._steps_since_flush = 0
            self._last_flush_time = time.monotonic()

    def _write_array_file(self) -> list[tuple[int, str, str, str, str, str]]:
        folder = self.store.arrays_dir / self.id
        self._file_seq += 1
        relative = f"{self.id}/{self._file_seq:06d}-{uuid.uuid4().hex[:6]}.npz"
        payload = {f"a{i}": arr for i, (_, _, arr) in enumerate(self._arrays)}
        target = self.store.arrays_dir / relative
        tmp = target.with_suffix(".tmp")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.savez(fh, **payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:  # a full disk, a lost mount: one line; the rows stay buffered for a retry
            tmp.unlink(missing_ok=True)
            self._file_seq -= 1
            reason = exc.strerror or first_line(exc)
            raise StoreError(
                f"run store {self.store.path}: cannot write array file {tmp}: {reason}"
            ) from None
        return [
            (step, name, relative, f"a{i}", "x".join(str(d) for d in arr.shape), str(arr.dtype))
            for i, (step, name, arr) in enumerate(self._arrays)
        ]
