"""The :class:`Task` interface shared by every benchmark task.

A task bundles what an optimizer comparison needs and nothing else:

- ``make_model(seed)`` -- a freshly initialised ``nn.Module``; the same seed gives the same weights;
- ``sample(generator)`` -- one minibatch ``(inputs, targets)`` drawn with a seeded ``torch.Generator``
  (the only source of randomness during training, so a run is a pure function of its seeds);
- ``loss_fn(outputs, targets)`` -- the minibatch loss with mean reduction (the same signature the probes'
  :class:`~learndyn.probes.base.ProbeContext` expects, so a task plugs straight into a ``Monitor``);
- ``evaluate(model)`` -- the full-data (or exact population, or a fixed held-out subset for a language model)
  loss used for curves and time-to-target;
- ``target_loss`` -- the level that defines "time to target": the first evaluation with
  ``evaluate(model) <= target_loss``;
- ``steps`` -- the default training budget;
- optionally ``metrics(model)`` -- the task's final metrics as ``{name: value}`` (test accuracy of a
  classifier, validation bits per character of a language model), with ``metric_name`` the headline key and
  ``higher_is_better`` its direction. Tasks without them (``metrics=None``, the default) have no metric
  beyond ``evaluate``; :meth:`Task.final_metrics` returns ``{}`` for them, so callers need no special case.

Data that belongs to the task (a teacher matrix, an evaluation set) is drawn once from ``data_seed`` when the
task is built, so two tasks built with the same arguments are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from learndyn.validation import LearndynValueError, check_int

Batch = tuple[torch.Tensor, torch.Tensor]
"""``(inputs, targets)``, both with the batch dimension first."""


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with the global CPU RNG seeded to ``seed``, restoring the caller's RNG state afterwards.

    Used for ``nn.Module`` default initialisation, which draws from the global generator.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


@dataclass(frozen=True)
class Task:
    """A benchmark task: model factory, seeded batch sampler, loss, full-data loss and a target.

    ``build_model`` draws its initial weights from the global RNG; call :meth:`make_model` instead, which
    seeds it (and leaves the caller's global RNG state untouched). ``metrics``, ``metric_name`` and
    ``higher_is_better`` are optional (keyword) fields: ``metrics`` and ``metric_name`` are given together,
    and ``metric_name`` must be one of the keys ``metrics`` returns.
    """

    name: str
    description: str
    build_model: Callable[[], nn.Module]
    sample: Callable[[torch.Generator], Batch]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[nn.Module], float]
    target_loss: float
    steps: int
    metrics: Callable[[nn.Module], dict[str, float]] | None = None
    metric_name: str | None = None
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if (self.metrics is None) != (self.metric_name is None):
            raise LearndynValueError(
                f"Task[{self.name}]: metrics and metric_name go together; allowed: both set or both None"
            )

    def make_model(self, seed: int) -> nn.Module:
        """A new model whose initial weights are a deterministic function of ``seed``."""
        check_int("seed", seed, low=0, owner=f"Task[{self.name}].make_model")
        with seeded(seed):
            return self.build_model()

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Minibatch loss ``loss_fn(model(inputs), targets)`` (a scalar tensor with a graph)."""
        inputs, targets = batch
        return self.loss_fn(model(inputs), targets)

    @torch.no_grad()
    def final_metrics(self, model: nn.Module) -> dict[str, float]:
        """``metrics(model)`` in eval mode without gradients (the model's mode is restored); ``{}`` if none.

        Raises if the returned dict lacks ``metric_name``.
        """
        if self.metrics is None:
            return {}
        was_training = model.training
        model.eval()
        try:
            values = {k: float(v) for k, v in self.metrics(model).items()}
        finally:
            model.train(was_training)
        if self.metric_name not in values:
            raise LearndynValueError(
                f"Task[{self.name}].metrics returned no {self.metric_name!r}; allowed: {sorted(values)}"
            )
        return values

    def num_params(self) -> int:
        """Number of trainable parameters of the task's model."""
        return sum(p.numel() for p in self.make_model(0).parameters() if p.requires_grad)


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh, bias: bool = True) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out, bias=bias))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
