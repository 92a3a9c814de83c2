"""Helpers shared by phenomena that time stages of learning: crossings of a level, full-batch descent."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learndyn.training import LoopResult, train_loop

MAX_CHECKPOINTS = 20
"""A loop checkpoints at most about this many times: each checkpoint also flushes the run store."""


def first_step(steps: np.ndarray, values: np.ndarray, level: float, *, below: bool = False) -> float:
    """First entry of ``steps`` with ``values ≥ level`` (``below=True``: ``≤ level``); ``nan`` if none."""
    values = np.asarray(values)
    hit = np.nonzero(values <= level if below else values >= level)[0]
    return float(np.asarray(steps)[hit[0]]) if hit.size else math.nan  # one nan object: tables compare equal


def crossing_step(steps: np.ndarray, values: np.ndarray, level: float) -> float:
    """First step at which ``values`` reaches ``level`` (linear interpolation); ``nan`` if it never does."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    above = np.nonzero(values >= level)[0]
    if above.size == 0:
        return float("nan")
    k = int(above[0])
    if k == 0:
        return float(steps[0])
    v0, v1 = values[k - 1], values[k]
    frac = (level - v0) / (v1 - v0) if v1 != v0 else 1.0
    return float(steps[k - 1] + frac * (steps[k] - steps[k - 1]))


def loop_checkpoint_every(checkpointer: Any, steps: int) -> int:
    """Updates between checkpoints for a loop of ``steps`` updates: the checkpointer's ``every`` (0: off), but
    no more often than ``MAX_CHECKPOINTS`` times per loop (these loops are long and each step is cheap)."""
    if checkpointer is None:
        return 0
    every = getattr(checkpointer, "every", None)
    if every == 0:
        return 0
    return max(int(every or 0), -(-steps // MAX_CHECKPOINTS), 1)


def full_batch_descent(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch: tuple[Tensor, Tensor],
    steps: int,
    *,
    seed: int,
    recorder: Any,
    tracker: Any,
    every: int,
    key: str,
    progress: str,
) -> LoopResult:
    """Full-batch descent on ``batch`` with :func:`~learndyn.training.train_loop`: the loss every ``every``
    steps, ``tracker`` (the loop's monitor) after each step, checkpoints under ``key`` at most
    ``MAX_CHECKPOINTS`` times when the recorder has a checkpointer. The caller measures the final state."""
    checkpointer = getattr(recorder, "checkpointer", None)
    return train_loop(
        model,
        optimizer,
        lambda _generator: batch,
        loss_fn,
        steps,
        generator=torch.Generator().manual_seed(seed),
        recorder=recorder,
        monitor=tracker,
        log_every=every,
        checkpointer=checkpointer,
        checkpoint_every=loop_checkpoint_every(checkpointer, steps),
        key=key,
        progress=progress,
    )
