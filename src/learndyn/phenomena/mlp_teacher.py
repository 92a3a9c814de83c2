"""``mlp-teacher``: one small MLP student fitting a random MLP teacher -- the unit of hyperparameter sweeps.

Data (drawn once from ``data_seed``): inputs ``x ~ N(0, I_d)``, ``n_train`` training and ``n_test`` test
points; targets ``y = w₂ᵀ tanh(W₁ x)`` from a random one-hidden-layer teacher (``W₁ ~ N(0, 1/d)``,
``w₂ ~ N(0, 1/k)``), scaled to unit variance on the training set, plus ``noise · N(0, 1)`` on the training
targets. The student is a ``depth``-hidden-layer MLP of ``width`` units (PyTorch's default initialisation
from ``seed``, every parameter then multiplied by ``init_scale``), trained with mean squared error on
minibatches of ``batch_size`` training points drawn with replacement by a generator seeded with ``seed``,
using ``optimizer``: ``sgd`` (with ``momentum``), ``adam`` or ``cgd-diag``
(:class:`~learndyn.optim.CovariantGD`, diagonal metric, power ``alpha``; α = 0 is SGD on the averaged
gradient, α = ½ Adam-like).

Logged: ``loss`` (the minibatch loss, every ``log_every`` steps), ``train_loss`` and ``test_loss`` (full
sets, every ``eval_every`` steps and at the end), ``diverged_at`` if the loss or a parameter turns
non-finite (the run then stops and is marked diverged). Summary: the final losses.

Sweeps train many of these at once: runs that differ only in ``seed``, ``init_scale``, ``lr``, ``alpha``,
``momentum`` or ``weight_decay`` form one vectorised ensemble (:func:`run_ensemble`), whose members give
the numbers of separate runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor, nn

from learndyn.config import check_memory, check_run_fields
from learndyn.optim.spec import build_optimizer
from learndyn.optim.stacked import StackedAdam, StackedCovariantDiag, StackedSGD
from learndyn.phenomena.registry import EnsembleSupport, Experiment, ExperimentResult, MemberOutcome, register
from learndyn.store.recorder import Recorder
from learndyn.training import train_ensemble, train_loop
from learndyn.validation import check_int, check_real

NAME = "mlp-teacher"
DESCRIPTION = "a small MLP student fits a random MLP teacher with SGD/Adam/CovariantGD (sweep unit)"
ENSEMBLE_AXES = ("seed", "init_scale", "lr", "alpha", "momentum", "weight_decay")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MLPTeacherConfig:
    """A student MLP, its optimizer and its teacher task (see the module docstring)."""

    optimizer: Literal["sgd", "adam", "cgd-diag"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    alpha: float = 0.5
    weight_decay: float = 0.0
    init_scale: float = 1.0
    seed: int = 0
    steps: int = 300
    batch_size: int = 32
    width: int = 32
    depth: int = 2
    activation: Literal["tanh", "relu"] = "tanh"
    d_in: int = 8
    teacher_width: int = 16
    n_train: int = 256
    n_test: int = 512
    noise: float = 0.0
    data_seed: int = 0
    eval_every: int = 50
    log_every: int = 1
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        owner = "MLPTeacherConfig"
        if self.optimizer not in ("sgd", "adam", "cgd-diag"):
            raise ValueError(
                f"{owner}.optimizer={self.optimizer!r} is not allowed; allowed: 'sgd', 'adam', 'cgd-diag'"
            )
        self.lr = check_real("lr", self.lr, low=0.0, owner=owner)
        self.momentum = check_real("momentum", self.momentum, low=0.0, high=1.0, high_open=True, owner=owner)
        self.alpha = check_real("alpha", self.alpha, low=0.0, high=1.0, owner=owner)
        self.weight_decay = check_real("weight_decay", self.weight_decay, low=0.0, owner=owner)
        self.init_scale = check_real("init_scale", self.init_scale, low=0.0, owner=owner)
        self.noise = check_real("noise", self.noise, low=0.0, owner=owner)
        check_run_fields(self, owner)
        check_int("data_seed", self.data_seed, low=0, owner=owner)
        check_int("steps", self.steps, low=1, owner=owner)
        check_int("batch_size", self.batch_size, low=1, owner=owner)
        check_int("width", self.width, low=1, owner=owner)
        check_int("depth", self.depth, low=1, owner=owner)
        check_int("d_in", self.d_in, low=1, owner=owner)
        check_int("teacher_width", self.teacher_width, low=1, owner=owner)
        check_int("n_train", self.n_train, low=1, owner=owner)
        check_int("n_test", self.n_test, low=1, owner=owner)
        check_int("eval_every", self.eval_every, low=0, owner=owner)
        check_int("log_every", self.log_every, low=1, owner=owner)
        if self.activation not in ("tanh", "relu"):
            raise ValueError(
                f"{owner}.activation={self.activation!r} is not allowed; allowed: 'tanh', 'relu'"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"{owner}.dtype={self.dtype!r} is not allowed; allowed: 'float32', 'float64'")
        check_memory(owner, self.memory_estimate(), _SIZE_FIELDS)

    def memory_estimate(self) -> float:
        """Bytes one run needs, roughly (an upper estimate, checked before anything is allocated): the data in
        float64, the student with its gradient and up to two optimizer moments, the activations of a full
        evaluation pass."""
        params = self.d_in * self.width + (self.depth - 1) * self.width**2 + (self.depth + 1) * self.width + 1
        data = (self.n_train + self.n_test) * (self.d_in + 1) + self.teacher_width * (self.d_in + 1)
        batch = max(self.batch_size, self.n_train, self.n_test)
        activations = 2 * batch * self.width * self.depth
        item = 8 if self.dtype == "float64" else 4
        return 8.0 * data + item * (4.0 * params + 2.0 * activations)


_SIZE_FIELDS = ("width", "depth", "d_in", "teacher_width", "n_train", "n_test", "batch_size")

QUICK = {"steps": 40, "eval_every": 10}
"""The test-size configuration (``--quick``)."""


# ------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TeacherData:
    """The fixed training and test sets of a teacher task."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


@lru_cache(maxsize=8)
def _teacher_data(
    data_seed: int, d_in: int, teacher_width: int, n_train: int, n_test: int, noise: float, dtype: str
) -> TeacherData:
    gen = torch.Generator().manual_seed(int(data_seed))
    w1 = torch.randn(teacher_width, d_in, generator=gen, dtype=torch.float64) / math.sqrt(d_in)
    w2 = torch.randn(teacher_width, 1, generator=gen, dtype=torch.float64) / math.sqrt(teacher_width)
    x_train = torch.randn(n_train, d_in, generator=gen, dtype=torch.float64)
    x_test = torch.randn(n_test, d_in, generator=gen, dtype=torch.float64)
    y_train, y_test = torch.tanh(x_train @ w1.T) @ w2, torch.tanh(x_test @ w1.T) @ w2
    scale = float(y_train.std()) if n_train > 1 and float(y_train.std()) > 0 else 1.0
    y_train, y_test = y_train / scale, y_test / scale
    if noise:
        y_train = y_train + noise * torch.randn(n_train, 1, generator=gen, dtype=torch.float64)
    dt = _DTYPES[dtype]
    return TeacherData(x_train.to(dt), y_train.to(dt), x_test.to(dt), y_test.to(dt))


def teacher_data(config: MLPTeacherConfig) -> TeacherData:
    """The training and test sets of ``config``'s task (cached; do not modify the tensors)."""
    return _teacher_data(
        config.data_seed,
        config.d_in,
        config.teacher_width,
        config.n_train,
        config.n_test,
        float(config.noise),
        config.dtype,
    )


def build_student(config: MLPTeacherConfig) -> nn.Sequential:
    """The student MLP, initialised from ``config.seed``, scaled by ``init_scale``; global RNG untouched."""
    act = nn.Tanh if config.activation == "tanh" else nn.ReLU
    sizes = [config.d_in] + [config.width] * config.depth + [1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(act())
        model = nn.Sequential(*layers)
    model = model.to(_DTYPES[config.dtype])
    if config.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.init_scale)
    return model


def make_optimizer(config: MLPTeacherConfig, params) -> torch.optim.Optimizer:
    """The single-run optimizer of the label ``config.optimizer`` (:func:`learndyn.optim.build_optimizer`):
    ``torch.optim.SGD`` (with ``momentum``), ``Adam`` or ``CovariantGD(structure='diag', alpha=alpha)``."""
    options: dict[str, float] = {"weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        options["momentum"] = config.momentum
    elif config.optimizer == "cgd-diag":
        options["alpha"] = config.alpha
    return build_optimizer(params, config.optimizer, config.lr, **options)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error (mean over the batch)."""
    return ((outputs - targets) ** 2).mean()


def _batch_generator(seed: int) -> torch.Generator:
    # Offset from the init seed so that batch order and initialisation are different streams.
    return torch.Generator().manual_seed(int(seed) + 7919)


def _summary(
    status: str,
    last_loss: float,
    train: float | None,
    test: float | None,
    steps: int,
    diverged_at: int | None,
) -> dict[str, float]:
    out: dict[str, float] = {"steps_done": float(steps), "diverged": float(status == "diverged")}
    if status == "diverged":
        out["diverged_at"] = float(diverged_at if diverged_at is not None else steps)
        return out
    out["final_loss"] = float(last_loss)
    if train is not None:
        out["final_train_loss"] = float(train)
    if test is not None:
        out["final_test_loss"] = float(test)
    return out


# ---------------------------------------------------------------------------------------------- one run
def run(config: MLPTeacherConfig, recorder: Recorder) -> ExperimentResult:
    """Train one student with :func:`~learndyn.training.train_loop`; see the module docstring."""
    data = teacher_data(config)
    model = build_student(config)
    optimizer = make_optimizer(config, model.parameters())
    n, bs = config.n_train, config.batch_size

    def sample(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(n, (bs,), generator=gen)
        return data.x_train[idx], data.y_train[idx]

    final: dict[str, float] = {}

    def evaluate(m: nn.Module) -> dict[str, float]:
        final["train_loss"] = float(mse(m(data.x_train), data.y_train))
        final["test_loss"] = float(mse(m(data.x_test), data.y_test))
        return dict(final)

    result = train_loop(
        model,
        optimizer,
        sample,
        mse,
        config.steps,
        generator=_batch_generator(config.seed),
        recorder=recorder,
        log_every=config.log_every,
        evaluate=evaluate if config.eval_every else None,
        eval_every=config.eval_every,
        prefix="",
        checkpointer=getattr(recorder, "checkpointer", None),  # --checkpoint-every; resume continues
    )
    if result.status == "diverged" and hasattr(recorder, "mark_diverged"):
        recorder.mark_diverged(result.reason or f"diverged at step {result.diverged_at}")
    summary = _summary(
        result.status,
        result.last_loss,
        final.get("train_loss"),
        final.get("test_loss"),
        result.steps_done,
        result.diverged_at,
    )
    return ExperimentResult(summary=summary)


# ---------------------------------------------------------------------------------------------- ensemble
def _stacked_optimizer(configs: list[MLPTeacherConfig]):
    c0 = configs[0]
    B = len(configs)

    def col(name: str) -> list[float]:
        return [float(getattr(c, name)) for c in configs]

    if c0.optimizer == "sgd":
        return StackedSGD(B, col("lr"), momentum=col("momentum"), weight_decay=col("weight_decay"))
    if c0.optimizer == "adam":
        return StackedAdam(B, col("lr"), weight_decay=col("weight_decay"))
    return StackedCovariantDiag(B, col("lr"), col("alpha"), weight_decay=col("weight_decay"))


def run_ensemble(configs: list[MLPTeacherConfig]) -> list[MemberOutcome]:
    """Train configs that differ only in :data:`ENSEMBLE_AXES` as one vectorised ensemble.

    Each member's numbers are those of :func:`run` on its config (to floating-point rounding): the same
    initialisation, the same minibatches (each member's own generator), the same optimizer arithmetic.
    """
    if not configs:
        return []
    c0 = configs[0]
    data = teacher_data(c0)
    models = [build_student(c) for c in configs]
    n, bs, steps = c0.n_train, c0.batch_size, c0.steps
    gens = [_batch_generator(c.seed) for c in configs]
    chunk = max(1, min(steps, 65536 // max(bs, 1)))
    block: dict[str, Tensor] = {}

    def sample(step: int) -> tuple[Tensor, Tensor]:
        # Draw each member's indices a block of steps at a time: the generator yields the same stream.
        j = step % chunk
        if j == 0:
            rows = min(chunk, steps - step)
            block["idx"] = torch.stack([torch.randint(n, (rows, bs), generator=g) for g in gens], dim=1)
        idx = block["idx"][j]
        return data.x_train[idx], data.y_train[idx]

    x_eval = torch.cat([data.x_train, data.x_test])  # one forward pass for both sets
    y_eval = torch.cat([data.y_train, data.y_test])

    def evaluate(forward) -> dict[str, Tensor]:
        sq = (forward(x_eval) - y_eval) ** 2
        return {"train_loss": sq[:, :n].mean(dim=(1, 2)), "test_loss": sq[:, n:].mean(dim=(1, 2))}

    trace = train_ensemble(
        models,
        _stacked_optimizer(configs),
        sample,
        mse,
        steps,
        evaluate=evaluate if c0.eval_every else None,
        eval_every=c0.eval_every,
    )
    outcomes = []
    for b in range(len(configs)):
        stop = int(trace.diverged_at[b])
        status = "diverged" if stop >= 0 else "completed"
        train = float(trace.evals["train_loss"][-1, b]) if trace.evals else None
        test = float(trace.evals["test_loss"][-1, b]) if trace.evals else None
        last = float(trace.loss[(stop if stop >= 0 else steps - 1), b])
        summary = _summary(
            status, last, train, test, stop if stop >= 0 else steps, stop if stop >= 0 else None
        )
        outcomes.append(
            MemberOutcome(
                status=status,
                summary=summary,
                series=trace.member_series(b, log_every=c0.log_every),
                error=f"non-finite or exploded loss, or non-finite parameters, at step {stop}"
                if stop >= 0
                else None,
            )
        )
    return outcomes


ENSEMBLE = EnsembleSupport(ENSEMBLE_AXES, run_ensemble)
EXPERIMENT = register(Experiment(NAME, DESCRIPTION, MLPTeacherConfig, run, QUICK, ensemble=ENSEMBLE))
