"""A PyTorch Lightning callback that runs the learndyn :class:`~learndyn.probes.Monitor` (needs
``lightning``: ``pip install "learndyn[lightning]"``)::

    callback = MonitorCallback(F.cross_entropy, probes="standard", recorder=run)
    trainer = lightning.Trainer(max_steps=1000, callbacks=[callback])
    trainer.fit(module, loader)

After every optimizer step the Monitor measures the LightningModule on the batch that produced the step
(``batch_to_xy(batch) -> (inputs, targets)``; default: the batch's first two entries), at step
``trainer.global_step - 1`` (the index of the update just applied, as in ``train_loop``). Scalars go to
``recorder`` (default: a :class:`~learndyn.store.MemoryRecorder`, ``callback.recorder``) and, with
``to_logger=True``, to the trainer's loggers too (TensorBoard, W&B, MLflow, CSV: whatever is configured).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from learndyn.optional import require
from learndyn.probes import Monitor, Probe
from learndyn.probes.base import LossFn
from learndyn.store.recorder import MemoryRecorder, Recorder

_pl = require("lightning.pytorch", "lightning")

__all__ = ["MonitorCallback"]


def first_two(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch that is a tuple/list ``(x, y, ...)`` or a dict with ``x``/``y``."""
    if isinstance(batch, Mapping):
        return batch["x"], batch["y"]
    return batch[0], batch[1]


class _LoggerRecorder:
    """Scalars to the trainer's loggers (arrays are left to the learndyn recorder)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for logger in self.trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(step))

    def log_array(self, step: int, name: str, array: np.ndarray) -> None:
        pass

    def flush(self) -> None:
        for logger in self.trainer.loggers:
            logger.save()


class MonitorCallback(_pl.Callback):
    """Run a Monitor after every optimizer step of ``Trainer.fit`` (see the module docstring)."""

    def __init__(
        self,
        loss_fn: LossFn,
        probes: str | Sequence[Probe | str] = "light",
        recorder: Recorder | None = None,
        *,
        batch_to_xy: Callable[[Any], tuple[Any, Any]] = first_two,
        to_logger: bool = False,
        mode: str = "eval",
    ) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.probes = probes
        self.recorder: Recorder = recorder if recorder is not None else MemoryRecorder()
        self.batch_to_xy = batch_to_xy
        self.to_logger = to_logger
        self.mode = mode
        self.monitor: Monitor | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from learndyn.integrations.recorders import MultiRecorder

        recorder = MultiRecorder(self.recorder, _LoggerRecorder(trainer)) if self.to_logger else self.recorder
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.monitor = Monitor(pl_module, self.loss_fn, self.probes, recorder, optimizer=optimizer,
                               mode=self.mode)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is None or trainer.global_step < 1:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        metrics = {"loss": float(loss.detach())} if hasattr(loss, "detach") else None
        x, y = self.batch_to_xy(batch)
        self.monitor.after_step(trainer.global_step - 1, (x, y), metrics)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
