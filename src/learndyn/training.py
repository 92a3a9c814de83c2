"""The training loop every experiment uses.

``train_loop`` runs ``steps`` optimizer updates of ``model`` on minibatches drawn by ``sample(generator)``
(a seeded ``torch.Generator`` is the loop's only source of randomness, so a run is a pure function of its
seeds), and at each step ``s = 0 … steps−1``:

1. draws the batch, evaluates the loss ``L_s`` of the parameters after ``s`` updates and logs it as
   ``<prefix>loss`` at step ``s`` (every ``log_every`` steps), with ``evaluate(model)`` metrics every
   ``eval_every`` steps;
2. lets the :class:`~learndyn.probes.Monitor` measure the same state on the same batch;
3. stops the run as *diverged* if ``L_s`` or any parameter is NaN/Inf (everything logged so far is kept);
4. applies the update ``θ_{s+1} = θ_s − step(∇L_s)`` and, every ``checkpoint_every`` updates, saves a
   checkpoint (model, optimizer, scheduler, generator and global RNG states).

When the checkpointer already holds a checkpoint under ``key``, the loop restores it and continues from its
step: the continued run reaches bitwise the same parameters as an uninterrupted one (CPU, deterministic ops).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from learndyn.checkpoint import Checkpointer
from learndyn.progress import progress_bar
from learndyn.store.recorder import NullRecorder, Recorder
from learndyn.validation import check_int

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LoopResult:
    """How a loop ended. ``steps_done`` counts applied updates; ``diverged_at`` is the first bad step."""

    status: Literal["completed", "diverged"]
    steps_done: int
    last_loss: float
    diverged_at: int | None = None
    resumed_from: int | None = None


def _parameters_finite(params: list[torch.Tensor]) -> bool:
    if not params:
        return True
    norms = torch._foreach_norm(params)
    return bool(torch.isfinite(torch.stack(norms)).all())


def loop_state(
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    scheduler: Any | None = None,
) -> dict[str, Any]:
    """Everything needed to continue the loop at ``step`` exactly."""
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def restore_loop_state(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    scheduler: Any | None = None,
) -> int:
    """Load a :func:`loop_state` into live objects; returns the step to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def train_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sample: Callable[[torch.Generator], Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    *,
    generator: torch.Generator,
    recorder: Recorder | None = None,
    monitor: Any | None = None,
    scheduler: Any | None = None,
    log_every: int = 1,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    eval_every: int = 0,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int = 0,
    key: str = "main",
    prefix: str = "train/",
    progress: str | None = None,
) -> LoopResult:
    """Train ``model`` for ``steps`` updates; see the module docstring for the exact step semantics.

    ``evaluate(model)`` returns named metrics (logged with ``prefix``) and runs under ``torch.no_grad``
    at steps divisible by ``eval_every`` and after the last update. ``monitor`` is anything with
    ``after_step(step, batch, metrics=...)`` (a :class:`~learndyn.probes.Monitor`).
    ``progress`` is a bar label.
    """
    check_int("steps", steps, low=0, owner="train_loop")
    check_int("log_every", log_every, low=1, owner="train_loop")
    check_int("eval_every", eval_every, low=0, owner="train_loop")
    check_int("checkpoint_every", checkpoint_every, low=0, owner="train_loop")
    recorder = recorder if recorder is not None else NullRecorder()
    params = [p for p in model.parameters() if p.requires_grad]

    start = 0
    resumed_from = None
    if checkpointer is not None:
        saved = checkpointer.load(key)
        if saved is not None:
            start = restore_loop_state(saved, model, optimizer, generator, scheduler)
            resumed_from = start

    def log_eval(step: int) -> None:
        if evaluate is None:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train(was_training)
        recorder.log(step, {f"{prefix}{k}": float(v) for k, v in metrics.items()})

    last_loss = math.nan
    step = start
    with progress_bar(steps - start, progress or "training") as advance:
        for step in range(start, steps):
            batch = sample(generator)
            inputs, targets = batch
            loss = loss_fn(model(inputs), targets)
            last_loss = float(loss.detach())
            if step % log_every == 0:
                recorder.log(step, {f"{prefix}loss": last_loss})
            if eval_every and step % eval_every == 0:
                log_eval(step)
            if not math.isfinite(last_loss) or not _parameters_finite(params):
                recorder.log(step, {f"{prefix}diverged_at": float(step)})
                recorder.flush()
                return LoopResult("diverged", step, last_loss, diverged_at=step, resumed_from=resumed_from)
            if monitor is not None:
                monitor.after_step(step, batch, metrics={"loss": last_loss})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if checkpointer is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                recorder.flush()
                checkpointer.save(key, loop_state(step + 1, model, optimizer, generator, scheduler))
            advance(1)
    if eval_every and steps > start:
        log_eval(steps)
    recorder.flush()
    return LoopResult("completed", steps, last_loss, resumed_from=resumed_from)
