"""The task of :mod:`~learndyn.phenomena.regimes`: online linear regression seen through ``x = Mz``.

``x = M z`` with ``z ~ N(0, I_r)`` and ``M = V diag(√h)`` (``V``: ``d × r`` orthonormal columns, random if
``rotate`` else the first ``r`` axes; ``h`` geometric from 1 down to ``1/condition``), ``y = zᵀw_z + σε``
(``|w_z| = 1``, ``ε ~ N(0, 1)``); a bias-free linear model ``f(x) = pᵀx`` from ``p = 0``, loss
``½(f − y)²``, fresh minibatches of ``B`` samples each step. The excess loss is exact:
``L(p) − σ²/2 = ½|Mᵀp − w_z|²`` (:meth:`LinearTask.excess_loss`), and :class:`ExcessTracker` records it
every step of a :func:`~learndyn.training.train_loop`. The closed forms of :mod:`learndyn.theory` for
this task: :func:`alpha0_expected_excess` (SGD's expected learning curve) and :func:`stationary_theory`
(SGD's stationary weight covariance, three ways).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learndyn.phenomena._loop_log import LoopLog
from learndyn.theory.sgd_stationary import sgd_excess_loss_trajectory, sgd_stationary_forms

F64 = torch.float64


def spectrum(rank: int, condition: float) -> np.ndarray:
    """``h``: ``rank`` input variances spaced geometrically from 1 down to ``1/condition``."""
    return np.logspace(0.0, -math.log10(condition), rank) if rank > 1 else np.ones(1)


@dataclass(frozen=True)
class LinearTask:
    """Online linear regression ``x = Mz``, ``y = zᵀw_z + σε`` (module docstring); ``M = V diag(√h)``."""

    V: Tensor  # (d, r) orthonormal columns
    h: Tensor  # (r,)
    w_z: Tensor  # (r,)
    noise_std: float
    batch: int

    @property
    def M(self) -> Tensor:
        return self.V * self.h.sqrt()

    @property
    def H(self) -> np.ndarray:
        """Input covariance ``MMᵀ`` (``d × d``)."""
        return (self.M @ self.M.T).numpy()

    @property
    def p_star(self) -> Tensor:
        """The minimum-norm minimiser ``p* = V diag(h^{−½}) w_z``."""
        return self.V @ (self.w_z / self.h.sqrt())

    def excess_loss(self, p: Tensor) -> float:
        """``L(p) − σ²/2 = ½|Mᵀp − w_z|²`` (exact population value)."""
        r = self.M.T @ p.detach().reshape(-1).to(F64) - self.w_z
        return 0.5 * float(r @ r)

    def sample(self, gen: torch.Generator, lead: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
        """``B`` fresh samples (``lead`` adds dimensions after the batch, e.g. chains): ``x (B, *lead, d)``,
        ``y (B, *lead, 1)`` for a single model or ``(B, *lead)`` with chains."""
        z = torch.randn(self.batch, *lead, self.h.numel(), generator=gen, dtype=F64)
        noise = torch.randn(self.batch, *lead, generator=gen, dtype=F64)
        y = z @ self.w_z + self.noise_std * noise
        return z @ self.M.T, (y if lead else y[:, None])


def make_task(
    dim: int, condition: float, rank: int, noise_std: float, batch: int, seed: int, rotate: bool
) -> LinearTask:
    """The task of the module docstring; ``V`` and ``w_z`` from ``seed`` (the same for every condition)."""
    gen = torch.Generator().manual_seed(seed * 7919 + 11)
    basis = torch.randn(dim, dim, generator=gen, dtype=F64)
    w_z = torch.randn(rank, generator=gen, dtype=F64)
    if rotate:
        q, r = torch.linalg.qr(basis)
        V = (q * torch.sign(torch.diagonal(r)))[:, :rank]
    else:
        V = torch.eye(dim, dtype=F64)[:, :rank]
    h = torch.as_tensor(spectrum(rank, condition), dtype=F64)
    return LinearTask(V, h, w_z / w_z.norm(), float(noise_std), int(batch))


def half_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """``1/(2B) Σ_b (f(x_b) − y_b)²``."""
    return 0.5 * (outputs - targets).square().mean()


def linear_model(dim: int, init: Tensor | None = None) -> nn.Linear:
    """``f(x) = pᵀx`` (``nn.Linear(dim, 1, bias=False)``, float64), ``p = init`` or 0."""
    with torch.random.fork_rng(devices=[]):
        model = nn.Linear(dim, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(init.reshape(1, dim) if init is not None else torch.zeros(1, dim, dtype=F64))
    return model


class ExcessTracker:
    """``train_loop``'s monitor: keeps the exact excess loss every step, logs it every ``log_every`` steps
    (as ``name``), then runs the :class:`~learndyn.probes.Monitor` ``monitor``."""

    def __init__(
        self, task: LinearTask, model: nn.Linear, monitor: Any, log: LoopLog, log_every: int, name: str
    ) -> None:
        self.task, self.model, self.monitor, self.log = task, model, monitor, log
        self.log_every, self.name = log_every, name

    def after_step(
        self, step: int, batch: tuple[Tensor, Tensor], metrics: Mapping[str, float] | None = None
    ) -> None:
        excess = self.task.excess_loss(self.model.weight)
        self.log.keep(step, {"excess": excess})
        if step % self.log_every == 0:
            self.log.log(step, {self.name: excess})
        self.monitor.after_step(step, batch, metrics)

    def state_dict(self) -> Any:
        """The wrapped monitor's state (``None`` if it keeps none), saved with the loop's checkpoints."""
        fn = getattr(self.monitor, "state_dict", None)
        return fn() if callable(fn) else None

    def load_state_dict(self, state: Any) -> None:
        fn = getattr(self.monitor, "load_state_dict", None)
        if callable(fn):
            fn(state)


# ------------------------------------------------------------------------------- closed forms of the task
def alpha0_expected_excess(task: LinearTask, lr: float, steps: np.ndarray) -> np.ndarray:
    """Exact ``E[L_k] − σ²/2`` of SGD from ``p = 0`` on ``task``
    (:func:`~learndyn.theory.sgd_stationary.sgd_excess_loss_trajectory` on the support of ``H``)."""
    e0 = -(task.V.T @ task.p_star).numpy()
    return sgd_excess_loss_trajectory(task.h.numpy(), e0, lr, task.batch, task.noise_std**2, steps)


def stationary_theory(task: LinearTask, lr: float) -> dict[str, np.ndarray]:
    """Exact, Langevin (``T·I`` on the support) and Gibbs (``T·H⁺``) stationary covariances (``d × d``) of
    SGD on ``task`` (:func:`~learndyn.theory.sgd_stationary.sgd_stationary_forms`)."""
    return sgd_stationary_forms(task.V.numpy(), task.h.numpy(), lr, task.batch, task.noise_std**2)
