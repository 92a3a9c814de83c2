"""The probe interface: one class per measured quantity, run by a :class:`~learndyn.probes.Monitor`.

A probe reads a :class:`ProbeContext` (model, loss, the current batch and lazily computed shared
intermediates such as per-sample gradients) and returns a :data:`Measurement`: a flat mapping from
metric name to either a float (a scalar series, stored per step) or a numpy array (a spectrum, a kernel:
stored beside the scalars). Probes never write files and never change the model, its parameters, the
optimizer state or the global RNG state as seen by the training loop.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from learndyn.stats.batch import Batch, BatchAdapter
from learndyn.validation import check_int

Measurement = Mapping[str, float | np.ndarray]
"""Metric name -> scalar (float) or array (np.ndarray). Names are ``"<probe>/<quantity>"``."""

_GENERATOR_STATE = "__torch_generator_state__"

GRADIENT_GRAPH = "gradient_graph"
"""Cache key of ``(L, ∇_θ L per trainable parameter)`` kept with their autograd graph by a gradient pass
that ran anyway (the noise probe's hooked pass), for the step's Hessian-vector product to differentiate
again instead of making a forward/backward pass of its own. A pass keeps its graph only when
:data:`GRADIENT_GRAPH_WANTED` is set (by the Monitor, when a probe due at this step says so with
``wants_gradient_graph(ctx)``)."""

GRADIENT_GRAPH_WANTED = "gradient_graph/wanted"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(outputs, targets) -> scalar`` with mean reduction over the batch."""


@dataclass
class ProbeContext:
    """Everything a probe may look at for one measurement.

    ``inputs`` has shape ``(B, ...)`` and ``targets`` ``(B, ...)``; ``loss_fn`` must use mean reduction.
    ``batch`` is the training loop's batch as given (default ``(inputs, targets)``) and ``adapter`` the
    :class:`~learndyn.stats.batch.BatchAdapter` that reads it (default: ``(inputs, targets)`` pairs with
    ``loss_fn``): probes that differentiate the loss or the outputs go through ``adapter.loss(model, batch)``
    and ``adapter.outputs(model, batch)``, so dict batches and custom losses work; ``inputs``, ``targets``
    and ``loss_fn`` are what the adapter reads from the batch (``loss_fn`` may be ``None`` for an adapter
    given ``loss(model, batch)``).
    ``shared(key, fn)`` memoises intermediates for this step, so per-sample gradients (or a Hessian-vector
    product closure, or hidden activations) are computed once and read by every probe that needs them;
    ``providers`` maps cache keys to functions that compute them instead of the probe's own (the Monitor
    provides ``batch_loss/<mode>`` through the adapter).
    """

    model: nn.Module
    loss_fn: LossFn | None
    inputs: Any
    targets: Any
    step: int
    lr: float | None = None
    optimizer: torch.optim.Optimizer | None = None
    init_params: Mapping[str, torch.Tensor] | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    batch: Batch = None
    adapter: BatchAdapter = None  # type: ignore[assignment]
    providers: dict[str, Callable[[], Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.adapter is None:
            if self.loss_fn is None:
                raise ValueError("ProbeContext needs loss_fn or adapter")
            self.adapter = BatchAdapter(self.loss_fn)
        if self.batch is None:
            self.batch = (self.inputs, self.targets)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """Return the cached value for ``key``, computing it with ``compute()`` on first use."""
        if key not in self.cache:
            self.cache[key] = self.providers.get(key, compute)()
        return self.cache[key]

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Trainable parameters by qualified name (detached views; do not modify)."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}


class Probe(abc.ABC):
    """Base class of all probes.

    Subclasses set ``name`` (the metric prefix), optionally ``needs`` (names of shared intermediates they
    read, for documentation and presets) and implement :meth:`measure`. ``every`` is how many optimizer
    steps pass between two measurements; a probe runs at step ``s`` when ``s % every == 0``.
    """

    name: ClassVar[str] = "probe"
    needs: ClassVar[frozenset[str]] = frozenset()
    state_attrs: ClassVar[tuple[str, ...]] = ()
    """Attributes holding what the probe remembers between measurements (previous kernel, references,
    detector windows, RNG); :meth:`state_dict` saves them so a resumed run measures what an uninterrupted
    one would."""

    def __init__(self, every: int = 1) -> None:
        self.every = check_int("every", every, low=1, owner=type(self).__name__)

    def should_run(self, step: int) -> bool:
        return step % self.every == 0

    @abc.abstractmethod
    def measure(self, ctx: ProbeContext) -> Measurement:
        """Return this probe's metrics for the state in ``ctx`` (names prefixed ``f"{self.name}/"``)."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget state kept between measurements (e.g. the previous kernel). Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """A copy of the attributes named in ``state_attrs`` (a ``torch.Generator`` as its state tensor)."""
        state: dict[str, Any] = {}
        for attr in self.state_attrs:
            value = getattr(self, attr)
            if isinstance(value, torch.Generator):
                state[attr] = {_GENERATOR_STATE: value.get_state()}
            else:
                state[attr] = copy.deepcopy(value)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from a probe of the same class and settings)."""
        unknown = sorted(set(state) - set(self.state_attrs))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: unknown state {unknown}; "
                f"allowed: {', '.join(self.state_attrs) or 'none'}"
            )
        for attr, value in state.items():
            current = getattr(self, attr, None)
            if isinstance(value, dict) and _GENERATOR_STATE in value and isinstance(current, torch.Generator):
                current.set_state(value[_GENERATOR_STATE])
            else:
                setattr(self, attr, copy.deepcopy(value))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(every={self.every})"
