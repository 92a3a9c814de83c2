"""Recorders that send a run's metrics to TensorBoard, Weights & Biases or MLflow (the ``Recorder`` protocol
of :mod:`learndyn.store.recorder`: ``log(step, {name: value})``, ``log_array(step, name, array)``,
``flush()``), and :class:`MultiRecorder` to write to several at once::

    with store.start_run("mlp", config) as run:
        recorder = MultiRecorder(run, TensorBoardRecorder("tb/mlp"))
        monitor = Monitor(model, loss_fn, probes="standard", recorder=recorder, optimizer=opt)

Scalars keep their learndyn names (``noise/temperature``; TensorBoard and W&B group by the prefix). Arrays
(spectra, kernels) become histograms in TensorBoard and W&B and JSON artifacts in MLflow. Each recorder works
offline: TensorBoard writes event files, W&B runs in ``mode="offline"`` unless told otherwise, MLflow logs to
the tracking URI given (a local ``file:`` store or ``sqlite:`` database).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from learndyn.optional import require
from learndyn.store.recorder import Recorder

__all__ = ["MLflowRecorder", "MultiRecorder", "TensorBoardRecorder", "WandbRecorder"]


class MultiRecorder:
    """Sends everything to each of ``recorders`` in turn (e.g. the run store and TensorBoard).

    Attribute lookups it does not have (``checkpointer``, ``mark_diverged``) go to the first recorder, so
    ``MultiRecorder(run, ...)`` can stand in for the store's run in ``train_loop``.
    """

    def __init__(self, *recorders: Recorder) -> None:
        if not recorders:
            raise ValueError("MultiRecorder() needs at least one recorder; allowed: one or more Recorders")
        self.recorders = recorders

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for r in self.recorders:
            r.log(step, metrics)

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        for r in self.recorders:
            r.log_array(step, name, array)

    def flush(self) -> None:
        for r in self.recorders:
            r.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.recorders[0], name)


class TensorBoardRecorder:
    """TensorBoard event files in ``log_dir`` (via ``torch.utils.tensorboard``; needs ``tensorboard``)."""

    def __init__(self, log_dir: str | Path, **writer_kwargs: Any) -> None:
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir), **writer_kwargs)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, float(value), global_step=int(step))

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        values = np.asarray(array, dtype=float).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            self.writer.add_histogram(name, values, global_step=int(step))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbRecorder:
    """A Weights & Biases run: ``run`` if given, else ``wandb.init(mode=mode, **init_kwargs)`` (offline by
    default: nothing leaves the machine until ``wandb sync``). Steps must not decrease (W&B drops such
    rows); the Monitor and ``train_loop`` log in step order."""

    def __init__(self, run: Any = None, *, mode: str = "offline", **init_kwargs: Any) -> None:
        wandb = require("wandb", "wandb")
        self._wandb = wandb
        self.owns_run = run is None
        self.run = run if run is not None else wandb.init(mode=mode, **init_kwargs)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        values = np.asarray(array, dtype=float).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            self.run.log({name: self._wandb.Histogram(values)}, step=int(step))

    def flush(self) -> None:
        pass  # W&B writes in the background; finish() (or close()) makes it durable

    def close(self) -> None:
        if self.owns_run:
            self.run.finish()


class MLflowRecorder:
    """An MLflow run at ``tracking_uri`` (e.g. ``"file:./mlruns"`` or ``"sqlite:///mlflow.db"``): ``run_id``
    to log into an existing run, else a new run in ``experiment``. Scalars are batched and sent on
    :meth:`flush` (every ``flush_every`` rows and at close); arrays are JSON artifacts
    ``arrays/<name>/step-<step>.json``."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str = "learndyn",
        run_id: str | None = None,
        run_name: str | None = None,
        flush_every: int = 1000,
    ) -> None:
        mlflow = require("mlflow", "mlflow")
        from mlflow.entities import Metric as MLMetric
        from mlflow.tracking import MlflowClient

        self._metric = MLMetric
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.owns_run = run_id is None
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.run_id = run_id
        self.flush_every = flush_every
        self._pending: list[Any] = []
        self._mlflow = mlflow

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        now = int(time.time() * 1000)
        for name, value in metrics.items():
            self._pending.append(self._metric(name, float(value), now, int(step)))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        text = json.dumps(np.asarray(array, dtype=float).tolist())
        self.client.log_text(self.run_id, text, f"arrays/{name}/step-{int(step)}.json")

    def flush(self) -> None:
        for i in range(0, len(self._pending), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=self._pending[i : i + 1000])
        self._pending = []

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.owns_run:
            self.client.set_terminated(self.run_id, status)
