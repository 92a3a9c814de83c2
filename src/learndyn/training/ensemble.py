"""Train many small models of one architecture in one vectorised pass: the ensemble loop beside
:func:`~learndyn.training.train_loop`.

:func:`train_ensemble` stacks ``B`` models of one architecture (``torch.func.stack_module_state``), evaluates
all members' losses on their own minibatches with one ``vmap`` of ``functional_call``, backpropagates once
(members are independent, so the gradient of the summed loss is every member's own gradient) and steps a
stacked optimizer (``step(params, grads)`` on the stacked tensors, e.g. the stacked SGD/Adam/CovariantGD
with per-member hyperparameters). It follows the step semantics of :func:`learndyn.training.train_loop`
member by member -- the loss of step ``s`` is that of the parameters after ``s`` updates, evaluations run at
``s % eval_every == 0`` and after the last update, and a member whose loss or parameters turn non-finite
stops at that step (it is *diverged*; the others go on) -- so a member's numbers equal a separate
``train_loop`` run's up to floating-point rounding.

It is a second loop, not a mode of ``train_loop``, because it trains functions of stacked parameters
(``torch.func``), not an ``nn.Module`` with a ``torch.optim.Optimizer``: no monitor, checkpoints or recorder
(a sweep writes each member as a finished run). Sweeps use it through an experiment's
:class:`~learndyn.phenomena.registry.EnsembleSupport`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from learndyn.training.loop import divergence_factor
from learndyn.validation import check_int

__all__ = ["EnsembleTrace", "StackedStep", "train_ensemble"]

Batch = tuple[Tensor, Tensor]
_EVAL_CHUNK = 64


class StackedStep(Protocol):
    """A stacked optimizer: updates every member's parameters (leading dimension ``B``) in place."""

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None: ...


# ------------------------------------------------------------------------------------------------ results
@dataclass
class EnsembleTrace:
    """The per-step record of :func:`train_ensemble`.

    ``loss``: ``(steps, B)`` minibatch losses (entries after a member's divergence are meaningless);
    ``eval_steps`` and ``evals[name]`` ``(len(eval_steps), B)``: evaluations; ``diverged_at``: ``(B,)``, the
    step at which each member stopped, ``-1`` for members that completed; ``params``: the final stacked
    parameters; ``seconds``: wall time of the training loop; ``steps``: updates asked for.
    """

    loss: np.ndarray
    eval_steps: list[int]
    evals: dict[str, np.ndarray]
    diverged_at: np.ndarray
    params: dict[str, Tensor]
    seconds: float
    steps: int

    @property
    def members(self) -> int:
        return int(self.diverged_at.shape[0])

    def member_series(
        self, b: int, *, log_every: int = 1, prefix: str = ""
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Member ``b``'s metrics exactly as ``train_loop`` would have logged them (``<prefix>loss``, evals,
        ``<prefix>diverged_at``)."""
        stop = int(self.diverged_at[b])
        last = self.steps - 1 if stop < 0 else stop
        steps = np.arange(0, last + 1, log_every, dtype=np.int64)
        out = {f"{prefix}loss": (steps, self.loss[steps, b].astype(float))}
        keep = [i for i, s in enumerate(self.eval_steps) if (s <= stop if stop >= 0 else True)]
        if keep:
            es = np.asarray([self.eval_steps[i] for i in keep], dtype=np.int64)
            for name, values in self.evals.items():
                out[f"{prefix}{name}"] = (es, values[keep, b].astype(float))
        if stop >= 0:
            out[f"{prefix}diverged_at"] = (np.array([stop], dtype=np.int64), np.array([float(stop)]))
        return out


# --------------------------------------------------------------------------------------------- training
def train_ensemble(
    models: Sequence[nn.Module],
    optimizer: StackedStep | Callable[[list[Tensor]], StackedStep],
    sample: Callable[[int], Batch],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    *,
    evaluate: Callable[[Callable[[Tensor], Tensor]], Mapping[str, Tensor]] | None = None,
    eval_every: int = 0,
    explode_factor: float | None = None,
) -> EnsembleTrace:
    """Train ``B = len(models)`` models of one architecture in lockstep; see the module docstring.

    ``sample(step)`` returns the stacked minibatch ``(inputs (B, n, ...), targets (B, n, ...))`` (member ``b``
    gets row ``b``). ``loss_fn(outputs, targets)`` is one member's loss (mean reduction). ``optimizer`` steps
    the stacked parameters (in ``model.named_parameters()`` order). ``evaluate(forward)`` gets
    ``forward(x) -> (B, n, ...)``, all members applied to a shared input, and returns named ``(B,)``
    tensors; it runs without gradients at steps divisible by ``eval_every`` (0: never) and after the last
    update. The models themselves are not modified. ``explode_factor``: a member whose loss rises above this
    many times its initial loss diverges, as in ``train_loop`` (default :func:`~learndyn.training.loop.
    divergence_factor`).
    """
    factor = divergence_factor(explode_factor)
    check_int("steps", steps, low=0, owner="train_ensemble")
    check_int("eval_every", eval_every, low=0, owner="train_ensemble")
    if not models:
        raise ValueError("train_ensemble needs at least one model")
    params, buffers = stack_module_state(list(models))
    names = list(params)
    plist = [params[n] for n in names]
    base = copy.deepcopy(models[0]).to("meta")
    members = len(models)

    def member_loss(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(base, (p, b), (x,)), y)

    batched_loss = vmap(member_loss)

    def forward_shared(x: Tensor) -> Tensor:
        # Evaluation inputs are large (a whole data set per member): 64 members at a time stay in cache.
        return vmap(lambda p, b: functional_call(base, (p, b), (x,)), chunk_size=_EVAL_CHUNK)(params, buffers)

    def run_eval(step: int) -> None:
        assert evaluate is not None
        with torch.no_grad():
            values = evaluate(forward_shared)
        eval_steps.append(step)
        for name, v in values.items():
            evals.setdefault(name, []).append(v.detach().reshape(members).to(torch.float64))

    opt = optimizer(plist) if callable(optimizer) and not hasattr(optimizer, "step") else optimizer
    loss_hist = torch.empty(steps, members, dtype=torch.float64)
    diverged_at = torch.full((members,), -1, dtype=torch.long)
    alive = torch.ones(members, dtype=torch.bool)
    eval_steps: list[int] = []
    evals: dict[str, list[Tensor]] = {}
    start = time.perf_counter()
    for step in range(steps):
        x, y = sample(step)
        loss = batched_loss(params, buffers, x, y)
        grads = torch.autograd.grad(loss.sum(), plist)
        with torch.no_grad():
            loss = loss.detach()
            loss_hist[step] = loss
            if evaluate is not None and eval_every and step % eval_every == 0:
                run_eval(step)
            finite = torch.isfinite(loss)
            if math.isfinite(factor):  # the loss exploded: above factor x its (positive) initial value
                initial = loss_hist[0]
                finite &= ~((initial > 0) & (loss_hist[step] > factor * initial))
            for p in plist:
                finite &= torch.isfinite(torch.linalg.vector_norm(p.flatten(1), dim=1))
            newly = alive & ~finite
            diverged_at = torch.where(newly, torch.full_like(diverged_at, step), diverged_at)
            alive &= finite
            opt.step(plist, list(grads))  # type: ignore[union-attr]
    if evaluate is not None and eval_every and steps > 0:
        run_eval(steps)
    seconds = time.perf_counter() - start
    stacked = {n: torch.stack(v).numpy() for n, v in evals.items()}
    return EnsembleTrace(
        loss=loss_hist.numpy(),
        eval_steps=eval_steps,
        evals=stacked,
        diverged_at=diverged_at.numpy(),
        params={n: params[n].detach() for n in names},
        seconds=seconds,
        steps=steps,
    )
