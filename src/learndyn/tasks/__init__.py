"""Reusable benchmark tasks: seeded data, a model factory, a loss and a target loss.

Every task is a :class:`Task` (see :mod:`learndyn.tasks.base` for the interface). Built-in tasks by name:

- ``rosenbrock-2d``: the 2-D Rosenbrock function; the parameters are the coordinates;
- ``rosenbrock-100d``: the 100-D (chained) Rosenbrock function;
- ``rosenbrock-2d-noisy``: the 2-D Rosenbrock function with additive Gaussian gradient noise;
- ``multiplication``: a tanh MLP learning ``x * y`` on ``[-1, 1]^2``;
- ``digits``: a tanh MLP on scikit-learn's 8x8 digits, cross-entropy;
- ``deep-linear``: a depth-3 linear network fitting a random linear teacher with anisotropic inputs;
- ``mnist1d-mlp``, ``mnist1d-cnn``: MNIST-1D (Greydanus & Kobak 2024) with the authors' MLP and CNN; final
  metric test accuracy, published 68% and 94%;
- ``char-transformer``: a 2-layer character-level GPT on the pydoc topics text shipped with Python; final
  metric validation bits per character.

Tasks with a final metric beyond the loss expose it as ``task.final_metrics(model)`` (see ``Task.metrics``).

``get_task(name, **options)`` builds one (options go to the factory, e.g. ``get_task("rosenbrock-100d",
noise=1.0)``); :mod:`learndyn.tasks.compare` trains optimizers on tasks and compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from learndyn.tasks.base import Batch, Task, make_generator, mlp, seeded
from learndyn.tasks.char_transformer import char_transformer
from learndyn.tasks.deep_linear import deep_linear
from learndyn.tasks.digits import digits
from learndyn.tasks.mnist1d import mnist1d
from learndyn.tasks.multiplication import multiplication
from learndyn.tasks.rosenbrock import rosenbrock
from learndyn.validation import check_choice

TASKS: dict[str, Callable[..., Task]] = {
    "rosenbrock-2d": partial(rosenbrock, 2),
    "rosenbrock-100d": partial(rosenbrock, 100),
    "rosenbrock-2d-noisy": partial(rosenbrock, 2, noise=1.0, batch_size=8, target_loss=1e-2),
    "multiplication": multiplication,
    "digits": digits,
    "deep-linear": deep_linear,
    "mnist1d-mlp": partial(mnist1d, "mlp"),
    "mnist1d-cnn": partial(mnist1d, "cnn"),
    "char-transformer": char_transformer,
}
"""Task factories by name; each accepts keyword overrides of its defaults."""


def task_names() -> list[str]:
    """Names of the built-in tasks."""
    return list(TASKS)


def get_task(name: str, **options: Any) -> Task:
    """Build the built-in task ``name`` with keyword ``options`` passed to its factory."""
    check_choice("task", name, TASKS)
    return TASKS[name](**options)


__all__ = [
    "TASKS",
    "Batch",
    "Task",
    "char_transformer",
    "deep_linear",
    "digits",
    "get_task",
    "make_generator",
    "mlp",
    "mnist1d",
    "multiplication",
    "rosenbrock",
    "seeded",
    "task_names",
]
