"""The training loop every experiment uses: one model, one optimizer, seeded minibatches.

``train_loop`` runs ``steps`` optimizer updates of ``model`` on minibatches drawn by ``sample(generator)``
(a seeded ``torch.Generator`` is the loop's only source of randomness, so a run is a pure function of its
seeds), and at each step ``s = 0 … steps−1``:

1. draws the batch, evaluates the loss ``L_s`` of the parameters after ``s`` updates and logs it as
   ``<prefix>loss`` at step ``s`` (every ``log_every`` steps), with ``evaluate(model)`` metrics every
   ``eval_every`` steps;
2. lets the :class:`~learndyn.probes.Monitor` measure the same state on the same batch;
3. stops the run as *diverged* if ``L_s`` or any parameter is NaN/Inf, if ``L_s`` exploded (above
   ``explode_factor`` × ``L_0``, the loop's initial loss, when ``L_0 > 0``; default 1e6, see
   :func:`divergence_factor`), if the optimizer raises on a
   NaN/Inf gradient, or if ``diverged_if(metrics)`` gives a reason after an evaluation (everything logged so
   far is kept, ``<prefix>diverged_at`` is logged, and a recorder with ``mark_diverged`` -- a stored run --
   is marked diverged with the reason and step);
4. applies the update ``θ_{s+1} = θ_s − step(∇L_s)`` and, every ``checkpoint_every`` updates, saves a
   checkpoint (model, optimizer, scheduler, generator and global RNG states, and the monitor's state when it
   has ``state_dict``); with a stored run's checkpointer a completed loop also saves one marked complete.

When the checkpointer already holds a checkpoint under ``key``, the loop restores it and continues from its
step: the continued run reaches bitwise the same parameters as an uninterrupted one (CPU, deterministic ops).
A loop restored from a checkpoint marked complete does no work and returns its recorded result. With a stored
run's checkpointer (``checkpointer=getattr(recorder, "checkpointer", None)``) each loop of an experiment gets
its own key, and ``checkpoint_every`` defaults to the checkpointer's ``every``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from learndyn.checkpoint import Checkpointer, default_checkpoint_every
from learndyn.progress import progress_bar
from learndyn.store.recorder import NullRecorder, Recorder
from learndyn.validation import LearndynValueError, check_int, check_real

Batch = tuple[torch.Tensor, torch.Tensor]

DIVERGENCE_FACTOR = 1e6
"""A loss above this many times its initial value is a divergence (``$LEARNDYN_DIVERGENCE_FACTOR``)."""


def divergence_factor(value: float | None = None) -> float:
    """The loss-explosion factor: ``value``, else ``$LEARNDYN_DIVERGENCE_FACTOR``, else
    :data:`DIVERGENCE_FACTOR` (``inf`` or ``0``: only NaN/Inf count). One-line error for anything but a
    real ``>= 1``, ``inf`` or 0."""
    if value is None:
        text = os.environ.get("LEARNDYN_DIVERGENCE_FACTOR", "").strip()
        if not text:
            return DIVERGENCE_FACTOR
        try:
            value = float(text)
        except ValueError:
            raise LearndynValueError(
                f"$LEARNDYN_DIVERGENCE_FACTOR={text!r} is not allowed; allowed: a number >= 1, inf or 0"
            ) from None
    if value == 0 or value == math.inf:
        return math.inf
    return check_real("explode_factor", value, low=1.0, owner="train_loop")


@dataclass
class LoopResult:
    """How a loop ended. ``steps_done`` counts applied updates; ``diverged_at`` is the first bad step and
    ``reason`` what was bad there."""

    status: Literal["completed", "diverged"]
    steps_done: int
    last_loss: float
    diverged_at: int | None = None
    resumed_from: int | None = None
    reason: str | None = None


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
    monitor: Any | None = None,
) -> dict[str, Any]:
    """Everything needed to continue the loop at ``step`` exactly."""
    state_dict = getattr(monitor, "state_dict", None)
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "monitor": state_dict() if callable(state_dict) else None,
    }


def restore_loop_state(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    scheduler: Any | None = None,
    monitor: Any | None = None,
) -> int:
    """Load a :func:`loop_state` into live objects; returns the step to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    load = getattr(monitor, "load_state_dict", None)
    if callable(load) and state.get("monitor") is not None:
        load(state["monitor"])
    return int(state["step"])


@contextmanager
def _no_bar() -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


def _grads_finite(params: list[torch.Tensor]) -> bool:
    return _parameters_finite([p.grad for p in params if p.grad is not None])


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
    checkpoint_every: int | None = None,
    key: str = "main",
    prefix: str = "train/",
    progress: str | bool | None = None,
    mark_diverged: bool = True,
    diverged_if: Callable[[Mapping[str, float]], str | None] | None = None,
    explode_factor: float | None = None,
) -> LoopResult:
    """Train ``model`` for ``steps`` updates; see the module docstring for the exact step semantics.

    ``evaluate(model)`` returns named metrics (logged with ``prefix``) and runs under ``torch.no_grad``
    at steps divisible by ``eval_every`` and after the last update. ``monitor`` is anything with
    ``after_step(step, batch, metrics=...)`` (a :class:`~learndyn.probes.Monitor`). ``progress`` is a bar
    label (``False``: no bar, e.g. inside a caller's own). ``diverged_if(metrics)``, called with each
    evaluation's metrics, returns a reason to stop the run as diverged at that step, or ``None``.

    ``checkpoint_every``: updates between checkpoints (0: none); default the checkpointer's ``every``
    (``$LEARNDYN_CHECKPOINT_EVERY``, else 100). ``mark_diverged=False`` keeps a divergence of this loop from
    marking the stored run diverged (for loops expected to diverge, e.g. the top of a learning-rate grid).
    ``explode_factor``: a loss above this many times the loop's initial loss is a divergence (default
    :func:`divergence_factor`; ``inf``: only NaN/Inf).
    """
    factor = divergence_factor(explode_factor)
    check_int("steps", steps, low=0, owner="train_loop")
    check_int("log_every", log_every, low=1, owner="train_loop")
    check_int("eval_every", eval_every, low=0, owner="train_loop")
    if checkpoint_every is None:
        every = getattr(checkpointer, "every", None) if checkpointer is not None else 0
        checkpoint_every = default_checkpoint_every() if every is None else every
    check_int("checkpoint_every", checkpoint_every, low=0, owner="train_loop")
    recorder = recorder if recorder is not None else NullRecorder()
    params = [p for p in model.parameters() if p.requires_grad]

    start = 0
    resumed_from = None
    initial_loss: float | None = None  # L_0 of this loop (from its checkpoint when it resumes)
    if checkpointer is not None:
        loop_key = getattr(checkpointer, "loop_key", None)
        if callable(loop_key):
            key = loop_key(key)
        saved = checkpointer.load(key)
        if saved is not None:
            start = restore_loop_state(saved, model, optimizer, generator, scheduler, monitor)
            resumed_from = start
            initial_loss = saved.get("initial_loss")
            if saved.get("completed") and start == steps:
                last = float(saved.get("last_loss", math.nan))
                return LoopResult("completed", start, last, resumed_from=resumed_from)

    def diverged(step: int, reason: str, loss: float) -> LoopResult:
        why = f"{reason} at step {step}"
        recorder.log(step, {f"{prefix}diverged_at": float(step)})
        recorder.flush()
        mark = getattr(recorder, "mark_diverged", None)
        if mark_diverged and callable(mark):
            mark(why, step=step)
        return LoopResult("diverged", step, loss, diverged_at=step, resumed_from=resumed_from, reason=why)

    def save(step: int, **extra: Any) -> None:
        recorder.flush()  # the rows up to the checkpoint are durable before it is
        state = loop_state(step, model, optimizer, generator, scheduler, monitor)
        state.update(last_loss=last_loss, **extra)
        if initial_loss is not None:
            state["initial_loss"] = initial_loss
        checkpointer.save(key, state)

    def log_eval(step: int) -> str | None:
        """Evaluate and log; the reason to stop as diverged, if ``diverged_if`` gives one."""
        if evaluate is None:
            return None
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train(was_training)
        recorder.log(step, {f"{prefix}{k}": float(v) for k, v in metrics.items()})
        return diverged_if(metrics) if diverged_if is not None else None

    last_loss = math.nan
    step = start
    bar = progress_bar(steps - start, progress or "training") if progress is not False else _no_bar()
    with bar as advance:
        for step in range(start, steps):
            batch = sample(generator)
            inputs, targets = batch
            loss = loss_fn(model(inputs), targets)
            last_loss = float(loss.detach())
            if step % log_every == 0:
                recorder.log(step, {f"{prefix}loss": last_loss})
            if eval_every and step % eval_every == 0:
                reason = log_eval(step)
                if reason is not None:
                    return diverged(step, reason, last_loss)
            if not math.isfinite(last_loss):
                return diverged(step, f"{prefix}loss is {last_loss}", last_loss)
            if step == 0:
                initial_loss = last_loss
            if initial_loss is not None and 0 < initial_loss and last_loss > factor * initial_loss:
                return diverged(
                    step,
                    f"{prefix}loss {last_loss:.3g} exploded above {factor:g} x its initial "
                    f"{initial_loss:.3g}",
                    last_loss,
                )
            if not _parameters_finite(params):
                return diverged(step, "a parameter is NaN/Inf", last_loss)
            if monitor is not None:
                monitor.after_step(step, batch, metrics={"loss": last_loss})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            try:
                optimizer.step()
            except Exception:
                if _grads_finite(params):
                    raise
                return diverged(step, "a gradient is NaN/Inf", last_loss)
            if scheduler is not None:
                scheduler.step()
            if checkpointer is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                save(step + 1)
            advance(1)
    if eval_every:  # also after a restore at the last step from a checkpoint not yet marked complete
        reason = log_eval(steps)
        if reason is not None:
            return diverged(steps, reason, last_loss)
    recorder.flush()
    if checkpointer is not None and checkpoint_every:
        if getattr(checkpointer, "save_completed", False):
            save(steps, completed=True)
    return LoopResult("completed", steps, last_loss, resumed_from=resumed_from)
