"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024; arXiv:2011.14439).

**Data.** Ten 1-D digit templates (12 points each) are padded, dilated, scaled, translated, blurred with
correlated and i.i.d. noise, sheared and resampled to 40 points; 5000 signals (500 per class), shuffled, then
standardised as a whole (mean 0, std 1) and split 4000 train / 1000 test. The data are generated locally by
the authors' own generator, :func:`mnist1d.data.make_dataset` with :func:`mnist1d.data.get_dataset_args`
(seed 42) -- it never touches the network (``get_dataset`` would download a pickle; it is not used). The
generated arrays equal the authors' published ``mnist1d_data.pkl`` to ``1e-15``. The generator draws from
NumPy's and Python's global RNGs; :func:`mnist1d_data` restores both afterwards.

**Models** -- the authors' ``MLPBase`` and ``ConvBase`` (``notebooks/models.py`` of
github.com/greydanus/mnist1d), reimplemented:

- :class:`Mnist1dMLP`: ``h1 = relu(W1 x + b1)`` (40 -> 100), ``h2 = h1 + relu(W2 h1 + b2)`` (100 -> 100,
  residual), logits ``W3 h2 + b3`` (100 -> 10): 15,210 parameters;
- :class:`Mnist1dCNN`: ``Conv1d(1, 25, 5, stride 2, pad 1)`` (40 -> 19 positions), two
  ``Conv1d(25, 25, 3, stride 2, pad 1)`` (19 -> 10 -> 5), each with ReLU, flatten (125) and
  ``Linear(125, 10)``: 5,210 parameters.

**Training (the authors' recipe, ``notebooks/train.py`` and the benchmark notebook):** Adam, learning rate
``1e-2``, no weight decay, batch 100, 6000 steps, cross-entropy. Published test accuracies: logistic
regression 32%, MLP 68%, CNN 94%, GRU 91% (:data:`PUBLISHED_TEST_ACCURACY`). Here minibatches are drawn
with replacement from the 4000 training signals (the authors cycle through them in order).

**Task.** ``evaluate`` is the cross-entropy on all 4000 training signals (an optimisation benchmark, like
``digits``); ``metrics`` reports ``test_accuracy`` (fraction, the headline, higher is better), ``test_loss``
and ``train_accuracy``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from learndyn.tasks.base import Batch, Task
from learndyn.validation import check_choice, check_int, check_real

SOURCE = "Greydanus & Kobak, ICML 2024 (arXiv:2011.14439); github.com/greydanus/mnist1d notebooks/models.py"
PUBLISHED_TEST_ACCURACY = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}
"""Test accuracies the authors report for MNIST-1D (README and paper, Table 1)."""
PUBLISHED_RECIPE = {"optimizer": "Adam", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 100, "steps": 6000}
"""The authors' training settings for those numbers."""


@dataclass(frozen=True)
class Mnist1dData:
    """The default MNIST-1D split: ``x`` ``(4000, 40)`` float32, ``y`` ``(4000,)`` int64, and the test set."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@lru_cache(maxsize=1)
def mnist1d_data() -> Mnist1dData:
    """Generate the default MNIST-1D data with the authors' generator (no download; ~1 s, cached)."""
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 (the generator's RNG)
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)

    def floats(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.float32)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.int64)

    return Mnist1dData(floats(data["x"]), labels(data["y"]), floats(data["x_test"]), labels(data["y_test"]))


class Mnist1dMLP(nn.Module):
    """The authors' ``MLPBase``: ``40 -> 100 -> (+ residual 100 -> 100) -> 10``, ReLU; 15,210 parameters."""

    def __init__(self, d_in: int = 40, hidden: int = 100, n_classes: int = 10) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` of signals ``x`` ``(batch, d_in)``."""
        h = self.linear1(x).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)


class Mnist1dCNN(nn.Module):
    """The authors' ``ConvBase``: three strided ``Conv1d`` + ReLU (40 -> 19 -> 10 -> 5 positions, 25
    channels), then ``Linear(125, 10)``; 5,210 parameters."""

    def __init__(self, length: int = 40, channels: int = 25, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        n = length
        for conv in (self.conv1, self.conv2, self.conv3):
            n = (n + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        self.linear = nn.Linear(channels * n, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` of signals ``x`` ``(batch, length)``."""
        h = x.unsqueeze(1)
        h = self.conv1(h).relu()
        h = self.conv2(h).relu()
        h = self.conv3(h).relu()
        return self.linear(h.flatten(1))


MODELS: dict[str, type[nn.Module]] = {"mlp": Mnist1dMLP, "cnn": Mnist1dCNN}
DEFAULT_TARGET_LOSS = {"mlp": 0.01, "cnn": 0.01}
"""Training cross-entropy defining "steps to target"; see ``benchmarks/bench_tasks_published.py``."""


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit is the target class."""
    return int((logits.argmax(-1) == targets).sum()) / targets.numel()


def mnist1d(
    model: str = "mlp",
    *,
    batch_size: int = 100,
    target_loss: float | None = None,
    steps: int = 6000,
) -> Task:
    """MNIST-1D classification with the authors' ``model`` (``"mlp"`` or ``"cnn"``); see the module doc."""
    owner = "mnist1d"
    model = check_choice("model", model, MODELS, owner=owner)
    batch_size = check_int("batch_size", batch_size, low=1, owner=owner)
    target = DEFAULT_TARGET_LOSS[model] if target_loss is None else target_loss
    target = check_real("target_loss", target, low=0, low_open=True, owner=owner)
    steps = check_int("steps", steps, low=1, owner=owner)
    data = mnist1d_data()
    model_cls = MODELS[model]

    def sample(gen: torch.Generator) -> Batch:
        idx = torch.randint(0, data.x.shape[0], (batch_size,), generator=gen)
        return data.x[idx], data.y[idx]

    @torch.no_grad()
    def evaluate(net: nn.Module) -> float:
        return float(F.cross_entropy(net(data.x), data.y))

    @torch.no_grad()
    def metrics(net: nn.Module) -> dict[str, float]:
        logits = net(data.x_test)
        return {
            "test_accuracy": accuracy(logits, data.y_test),
            "test_loss": float(F.cross_entropy(logits, data.y_test)),
            "train_accuracy": accuracy(net(data.x), data.y),
        }

    return Task(
        name=f"mnist1d-{model}",
        description=f"MNIST-1D (4000 train / 1000 test, 40-dim), the authors' {model.upper()}, cross-entropy",
        build_model=model_cls,
        sample=sample,
        loss_fn=F.cross_entropy,
        evaluate=evaluate,
        target_loss=target,
        steps=steps,
        metrics=metrics,
        metric_name="test_accuracy",
        higher_is_better=True,
    )
