"""Batches as the statistics and probes read them, and :class:`BatchAdapter` for any training loop.

A *batch* is whatever the training loop holds: a tensor, an ``(inputs, targets)`` pair, a dict of tensors
(Hugging Face style), or any nesting of tuples, lists and dicts. Its *per-sample leaves* are the tensors whose
first dimension is the batch size ``B`` (the first tensor leaf's first dimension); other leaves (a shared
mask, a scalar, a string) are passed whole to every sample. Sample ``i`` of a batch is the same structure with
every per-sample leaf ``t`` replaced by ``t[i:i+1]`` (a batch of one).

A :class:`BatchAdapter` says how to get, from a batch,

- the *network outputs* ``f(batch) ∈ R^{B × ...}`` -- what the kernel and the Gauss-Newton matrix
  differentiate -- by default ``model(inputs)`` with ``inputs = batch[0]`` (``model(*inputs)`` for a tuple,
  ``model(**inputs)`` for a dict);
- the *loss* ``L = (1/B) Σ_i ℓ_i``, the mean over samples of per-sample losses, by default
  ``loss_fn(outputs, targets)`` with ``targets = batch[1]``.

Every probe measures that ``L``. A loss summed over the batch (``reduction="sum"``) is ``B`` times larger:
its gradient noise, Hessian and sharpness differ by ``B`` from the mean's, so
:meth:`BatchAdapter.check_reduction` refuses it with a message naming the fix (``per_sample_loss=``
makes the reduction explicit).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap
from torch.utils import _pytree as pytree

from learndyn.validation import LearndynValueError

Batch = Any
"""A training batch: a tensor or nested tuple/list/dict whose per-sample tensors have the samples on dim 0."""

LossFn = Callable[[Tensor, Tensor], Tensor]


def bare_function(fn: Any) -> Any:
    """``fn`` without the ``functools.partial`` wrappers that bind nothing (to recognise a loss function)."""
    while isinstance(fn, functools.partial) and not fn.args and not fn.keywords:
        fn = fn.func
    return fn


def is_plain_cross_entropy(fn: Any) -> bool:
    """Whether ``fn`` is the mean cross-entropy of class indices with nothing added: ``F.cross_entropy``, or
    an ``nn.CrossEntropyLoss`` without class weights, label smoothing or an ``ignore_index`` a target could
    take, reducing by the mean -- the loss whose output Hessian ``diag(p) − p pᵀ`` (per sample, over ``B``)
    the closed forms use."""
    fn = bare_function(fn)
    if fn is F.cross_entropy:
        return True
    return (
        isinstance(fn, nn.CrossEntropyLoss)
        and fn.weight is None
        and fn.label_smoothing == 0
        and fn.reduction == "mean"
        and fn.ignore_index < 0
    )


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``; ``model(*inputs)`` for a tuple and ``model(**inputs)`` for a dict of inputs."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def batch_size(batch: Batch) -> int:
    """``B``: the first dimension of the batch's first tensor leaf."""
    for leaf in pytree.tree_leaves(batch):
        if isinstance(leaf, Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    raise LearndynValueError(
        f"batch of type {type(batch).__name__} holds no tensor with a batch dimension; "
        "allowed: a tensor or a tuple/list/dict of tensors with the samples on dim 0"
    )


def _per_sample(leaf: Any, B: int) -> bool:
    return isinstance(leaf, Tensor) and leaf.dim() > 0 and leaf.shape[0] == B


def select(batch: Batch, index: Any, size: int | None = None) -> Batch:
    """The batch restricted to samples ``index`` (a slice or index tensor): per-sample leaves indexed."""
    B = batch_size(batch) if size is None else size
    return pytree.tree_map(lambda t: t[index] if _per_sample(t, B) else t, batch)


def vmap_dims(batch: Batch, size: int | None = None) -> Any:
    """``in_dims`` for ``vmap`` over the samples of ``batch``: 0 for per-sample leaves, ``None`` otherwise."""
    B = batch_size(batch) if size is None else size
    return pytree.tree_map(lambda t: 0 if _per_sample(t, B) else None, batch)


def as_single(sample: Batch, dims: Any) -> Batch:
    """Inside ``vmap``: give the per-sample leaves (``dims == 0``) their batch dimension of one back."""
    leaves, spec = pytree.tree_flatten(sample)
    flat_dims = spec.flatten_up_to(dims) if not isinstance(dims, int | type(None)) else [dims] * len(leaves)
    return pytree.tree_unflatten(
        [t.unsqueeze(0) if d == 0 else t for t, d in zip(leaves, flat_dims, strict=True)], spec
    )


def detach(batch: Batch) -> Batch:
    """The batch with every tensor leaf detached."""
    return pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, batch)


def clone(batch: Batch) -> Batch:
    """A detached copy of every tensor leaf (probe batches kept between steps)."""
    return pytree.tree_map(lambda t: t.detach().clone() if isinstance(t, Tensor) else t, batch)


class BatchAdapter:
    """How probes read a training batch: network outputs and the mean loss (see the module docstring).

    Give the loss in one of three ways:

    - ``loss_fn(outputs, targets)`` -- the mean over the batch (``reduction="mean"``), as in
      ``Monitor(model, F.cross_entropy)``;
    - ``per_sample_loss(outputs, targets)`` returning the ``(B,)`` per-sample losses ``ℓ_i``
      (e.g. ``functools.partial(F.cross_entropy, reduction="none")``); the loss is their mean;
    - ``loss(model, batch)`` returning the mean loss of any batch (e.g. ``model(**batch).loss``). Probes
      that need the split into outputs and a loss (the Gauss-Newton curvature) are then skipped, and the
      kernel probe needs ``outputs``.

    and optionally

    - ``inputs_of(batch)``: what the model is called with (default ``batch[0]``, or the batch itself when
      it is a tensor); probes that capture activations call ``model(inputs_of(batch))``;
    - ``targets_of(batch)`` (default ``batch[1]``);
    - ``outputs(model, batch)``: the network function the kernel probe differentiates (default
      ``model(inputs_of(batch))``); for a language model e.g. the logits, ``model(**batch).logits``.
    """

    def __init__(
        self,
        loss_fn: LossFn | None = None,
        *,
        per_sample_loss: LossFn | None = None,
        loss: Callable[[nn.Module, Batch], Tensor] | None = None,
        inputs_of: Callable[[Batch], Any] | None = None,
        targets_of: Callable[[Batch], Any] | None = None,
        outputs: Callable[[nn.Module, Batch], Tensor] | None = None,
    ) -> None:
        given = [
            n for n, f in (("loss_fn", loss_fn), ("per_sample_loss", per_sample_loss), ("loss", loss)) if f
        ]
        if len(given) != 1:
            raise LearndynValueError(
                f"BatchAdapter got {', '.join(given) or 'no loss'}; "
                "allowed: exactly one of loss_fn, per_sample_loss, loss"
            )
        for name, fn in (
            ("loss_fn", loss_fn),
            ("per_sample_loss", per_sample_loss),
            ("loss", loss),
            ("inputs_of", inputs_of),
            ("targets_of", targets_of),
            ("outputs", outputs),
        ):
            if fn is not None and not callable(fn):
                raise LearndynValueError(f"BatchAdapter.{name}={fn!r} is not callable; allowed: a function")
        self.loss_fn = loss_fn
        self.per_sample_loss = per_sample_loss
        self._loss = loss
        self._inputs_of = inputs_of
        self._targets_of = targets_of
        self._outputs = outputs

    @property
    def has_split(self) -> bool:
        """Whether the loss is a function of the network outputs (``loss_fn`` or ``per_sample_loss``)."""
        return self._loss is None

    @property
    def default_pair(self) -> bool:
        """Whether batches are read as ``(inputs, targets)`` pairs (no ``inputs_of``/``targets_of``)."""
        return self._inputs_of is None and self._targets_of is None and self._loss is None

    def check_batch(self, batch: Batch, owner: str = "Monitor.after_step") -> None:
        """Raise a one-line error when the default ``(inputs, targets)`` reading does not fit ``batch``."""
        if not self.default_pair:
            return
        if isinstance(batch, tuple | list) and len(batch) == 2:
            return
        kind = type(batch).__name__
        shape = (
            f" with keys {sorted(map(str, batch))}"
            if isinstance(batch, Mapping)
            else (f" of length {len(batch)}" if isinstance(batch, Sequence) else "")
        )
        raise LearndynValueError(
            f"{owner} batch is a {kind}{shape}; allowed: an (inputs, targets) pair, or describe the batch "
            "with BatchAdapter(inputs_of=..., targets_of=..., loss=... or per_sample_loss=...)"
        )

    def inputs(self, batch: Batch) -> Any:
        """What the model is called with."""
        if self._inputs_of is not None:
            return self._inputs_of(batch)
        if isinstance(batch, Tensor):
            return batch
        if isinstance(batch, tuple | list) and batch:
            return batch[0]
        raise LearndynValueError(
            f"BatchAdapter cannot find the model inputs in a {type(batch).__name__}; allowed: give inputs_of="
        )

    def targets(self, batch: Batch) -> Any:
        """The targets the loss compares the outputs with (``None`` when there are none)."""
        if self._targets_of is not None:
            return self._targets_of(batch)
        if isinstance(batch, tuple | list) and len(batch) > 1:
            return batch[1]
        return None

    def raw_outputs(self, model: nn.Module, batch: Batch) -> Any:
        """What ``outputs`` gives, of any type (what ``loss_fn`` receives)."""
        if self._outputs is not None:
            return self._outputs(model, batch)
        return call_model(model, self.inputs(batch))

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """Network outputs ``f(batch)``, a tensor of shape ``(B, ...)``."""
        out = self.raw_outputs(model, batch)
        if not isinstance(out, Tensor):
            raise LearndynValueError(
                f"the model returned a {type(out).__name__}; allowed: a tensor -- give "
                "BatchAdapter(outputs=lambda model, batch: ...) to pick the outputs (e.g. .logits)"
            )
        return out

    def loss_of_outputs(self, outputs: Tensor, targets: Any) -> Tensor:
        """The mean loss as a function of the outputs (only when :attr:`has_split`)."""
        if self.per_sample_loss is not None:
            per = self.per_sample_loss(outputs, targets)
            if per.dim() != 1 or per.shape[0] != outputs.shape[0]:
                raise LearndynValueError(
                    f"per_sample_loss returned shape {tuple(per.shape)}; allowed: ({outputs.shape[0]},), "
                    "one loss per sample"
                )
            return per.mean()
        if self.loss_fn is None:
            raise LearndynValueError("this BatchAdapter gives loss(model, batch) only; allowed: loss_fn=")
        return self.loss_fn(outputs, targets)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The mean loss ``L`` of the batch (a scalar tensor with its graph)."""
        if self._loss is not None:
            return self._loss(model, batch)
        return self.loss_of_outputs(self.raw_outputs(model, batch), self.targets(batch))

    def per_sample_losses(self, model: nn.Module, batch: Batch, outputs: Any = None) -> Tensor:
        """``(B,)`` per-sample losses ``ℓ_i`` (the loss of each sample as a batch of one), no graph.

        With the loss a function of tensor outputs, ``outputs`` (default: computed) are reused and the
        per-sample losses come from one ``vmap``; otherwise from one call per sample.
        """
        B = batch_size(batch)
        with torch.no_grad():
            if self.has_split:
                outputs = self.raw_outputs(model, batch) if outputs is None else outputs
            if not self.has_split or not isinstance(outputs, Tensor):
                return torch.stack(
                    [self.loss(model, select(batch, slice(i, i + 1), B)).detach() for i in range(B)]
                )
            targets = self.targets(batch)
            if self.per_sample_loss is not None:
                return self.per_sample_loss(outputs, targets).detach()
            pair = (outputs, targets)
            dims = vmap_dims(pair, B)
            try:
                return vmap(lambda s: self.loss_of_outputs(*as_single(s, dims)), in_dims=(dims,))(pair)
            except Exception:  # a loss vmap cannot batch: one call per sample
                return torch.stack(
                    [self.loss_of_outputs(*select(pair, slice(i, i + 1), B)) for i in range(B)]
                )

    def check_reduction(self, model: nn.Module, batch: Batch, owner: str = "Monitor") -> None:
        """Raise unless the batch loss is the mean of the per-sample losses (once per Monitor).

        A sum-reduced loss (batch loss = ``Σ_i ℓ_i``) gets its own message: the probes would report a
        ``B``-times larger Hessian and a noise scale that does not match the loop's updates.
        """
        if self.per_sample_loss is not None:
            return  # the mean is taken here: nothing to get wrong
        with torch.no_grad():
            if self.has_split:  # one forward pass: the same outputs (and dropout draws) for both
                outputs = self.raw_outputs(model, batch)
                total = float(self.loss_of_outputs(outputs, self.targets(batch)))
                per = self.per_sample_losses(model, batch, outputs)
            else:
                total = float(self.loss(model, batch))
                per = self.per_sample_losses(model, batch)
        problem = reduction_problem(total, per, owner)
        if problem:
            raise LearndynValueError(problem)

    def __repr__(self) -> str:
        parts = [
            f"{k}={getattr(v, '__name__', v)!r}"
            for k, v in (
                ("loss_fn", self.loss_fn),
                ("per_sample_loss", self.per_sample_loss),
                ("loss", self._loss),
                ("inputs_of", self._inputs_of),
                ("targets_of", self._targets_of),
                ("outputs", self._outputs),
            )
            if v is not None
        ]
        return f"BatchAdapter({', '.join(parts)})"


def reduction_problem(batch_loss: float, per_sample: Tensor, owner: str) -> str | None:
    """``None`` if ``batch_loss`` is the mean of the ``(B,)`` ``per_sample`` losses, else the error message
    (a sum-reduced loss named as such)."""
    B = int(per_sample.shape[0])
    mean, summed = float(per_sample.mean()), float(per_sample.sum())

    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6 * max(1.0, abs(b)))

    if close(batch_loss, mean):
        return None
    if B > 1 and close(batch_loss, summed):
        return (
            f"{owner}: the loss sums over the batch (batch loss {batch_loss:.6g} = sum of the {B} per-sample "
            "losses); allowed: a mean over samples (reduction='mean'), or per_sample_loss= with "
            "reduction='none' (with a summed loss in training, scale lr by B to compare)"
        )
    return (
        f"{owner}: the batch loss {batch_loss:.6g} is not the mean of the per-sample losses ({mean:.6g}); "
        "allowed: a loss that is the mean over samples of per-sample losses (reduction='mean')"
    )


class _Bound(nn.Module):
    """``fn(model, batch)`` as a module owning ``model`` (so ``functional_call`` can swap its parameters)."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Batch], Any]) -> None:
        super().__init__()
        self.m = model
        self.fn = fn

    def forward(self, batch: Batch) -> Any:
        return self.fn(self.m, batch)


def functional(
    model: nn.Module, fn: Callable[[nn.Module, Batch], Any]
) -> Callable[[Mapping[str, Tensor], Batch], Any]:
    """``(params, batch) ↦ fn(model with params, batch)`` for ``torch.func`` transforms.

    ``params`` replaces the named parameters; every other parameter and buffer is used detached, so
    transforms differentiate with respect to ``params`` only. ``fn`` may call the model however it likes
    (it receives the model object whose parameters are swapped for the call).
    """
    bound = _Bound(model, fn)
    rest = {f"m.{n}": t.detach() for n, t in model.named_parameters()}
    rest.update({f"m.{n}": t.detach() for n, t in model.named_buffers()})

    def call(params: Mapping[str, Tensor], batch: Batch) -> Any:
        swapped = {**rest, **{f"m.{n}": p for n, p in params.items()}}
        return torch.func.functional_call(bound, swapped, (batch,))

    return call
