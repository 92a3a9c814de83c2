"""A Hugging Face ``transformers.TrainerCallback`` that runs the learndyn :class:`~learndyn.probes.Monitor`
(needs ``transformers``: ``pip install "learndyn[transformers]"``)::

    callback = MonitorTrainerCallback(probe_batch=(input_ids, labels), loss_fn=logits_loss, recorder=run)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback]).train()

A ``TrainerCallback`` never sees the training batch, so the Monitor measures the model on a fixed
``probe_batch = (inputs, targets)`` after the optimizer steps where a probe is due (each probe's ``every``;
the step is ``state.global_step - 1``, the index of the update just applied). The model is called as
``model(inputs)`` and ``loss_fn(outputs, targets)`` must turn its output (a ``ModelOutput``) into a scalar,
e.g. ``cross_entropy(out.logits, y)`` (:func:`logits_cross_entropy`). Probes that take per-sample gradients
need a model that ``torch.func`` can ``vmap``; the ``"light"`` preset (parameters, stages) works with any
model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from learndyn.optional import require
from learndyn.probes import Monitor, Probe
from learndyn.probes.base import LossFn
from learndyn.store.recorder import MemoryRecorder, Recorder

_transformers = require("transformers", "transformers")

__all__ = ["MonitorTrainerCallback", "logits_cross_entropy"]


def logits_cross_entropy(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a model output's ``logits`` (``(B, C)``, or ``(B, T, C)`` against ``(B, T)``)."""
    logits = outputs.logits if hasattr(outputs, "logits") else outputs
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class MonitorTrainerCallback(_transformers.TrainerCallback):
    """Run a Monitor on ``probe_batch`` during ``Trainer.train`` (see the module docstring)."""

    def __init__(
        self,
        probe_batch: tuple[torch.Tensor, torch.Tensor],
        loss_fn: LossFn = logits_cross_entropy,
        probes: str | Sequence[Probe | str] = "light",
        recorder: Recorder | None = None,
        *,
        mode: str = "eval",
    ) -> None:
        self.probe_batch = probe_batch
        self.loss_fn = loss_fn
        self.probes = probes
        self.recorder: Recorder = recorder if recorder is not None else MemoryRecorder()
        self.mode = mode
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.monitor = Monitor(model, self.loss_fn, self.probes, self.recorder, optimizer=optimizer,
                               mode=self.mode)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step - 1
        if self.monitor is None or step < 0 or not self.monitor.due(step):
            return
        device = next(model.parameters()).device
        x, y = (t.to(device) for t in self.probe_batch)
        self.monitor.after_step(step, (x, y))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
