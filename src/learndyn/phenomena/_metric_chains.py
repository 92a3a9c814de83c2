r"""Many independent copies of :class:`~learndyn.optim.CovariantGD` on 2-D linear regression, in lockstep.

The α-stationary law of :mod:`~learndyn.phenomena.regimes` needs the stationary covariance of covariant GD
to a fraction of a percent, i.e. ~10⁶ chain-steps, each with its own EMA statistic and its own matrix
power ``(Ŝ + εI)^{−α}``. A batched ``eigh`` costs ~10 µs per matrix on a CPU, far too slow; in 2-D the power
has a closed form, ``A^{−α} = ½(f₊ + f₋) I + (f₊ − f₋)/(2r) (A − μI)`` with ``μ = tr A/2``,
``r = √(((a − c)/2)² + b²)``, ``f_± = (μ ± r)^{−α}`` (the spectral projectors ``½(I ± (A − μI)/r)``),
which is a dozen elementwise operations on ``(chains,)`` vectors.

Each chain is exactly ``CovariantGD(structure='full', moment='covariance', first_moment=False,
eps_mode='inside', bias_correction=True)`` on ``f(x) = pᵀx`` with loss ``½(f − y)²``
(``tests/test_phenomena_regimes.py`` checks a chain's updates against the optimizer to 1e-12):

    m ← β₁m + (1 − β₁)∇,   v = ∇ − m,   S ← β₂S + (1 − β₂)vvᵀ,   θ ← θ − η (S/(1 − β₂ᵗ) + εI)^{−α} ∇.

The task is :mod:`~learndyn.phenomena._linear_regression`'s near its minimum: ``x = Mz``, ``z ~ N(0, I₂)``,
``M = Q diag(√h)`` (``Q`` a rotation by ``angle``), ``y = xᵀp* + σε``, so in the error ``e = p − p*`` the
minibatch gradient is ``(1/B) Σ_b x_b(x_bᵀe − σε_b)``. Chains start at the minimum (``e = 0``); during
``warmup`` steps the learning rate is 0 (the statistics fill, as with a warm-up schedule). Without it the
first few-sample ``Ŝ`` are nearly singular and their inverse powers heavy-tailed: at α = 1 a few chains are
kicked far out (``|e|²`` up to 5·10⁴ against a median 0.04, 2000 chains) and, since a large ``e`` inflates
``Ŝ`` and so shrinks its own steps, come back only slowly. ``oracle`` replaces the EMA metric
by a fixed inverse metric (the theory's), to separate the statistic's fluctuations from the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

F64 = torch.float64


def inverse_power_2x2(a: Tensor, b: Tensor, c: Tensor, alpha: float, eps: float) -> tuple[Tensor, ...]:
    """``(A + εI)^{−α}`` of symmetric PSD 2×2 matrices ``[[a, b], [b, c]]`` (each ``(N,)``), as its three
    entries ``(a', b', c')``; equal eigenvalues use the derivative ``−α μ^{−α−1}``."""
    a, c = a + eps, c + eps
    mu = 0.5 * (a + c)
    r = torch.sqrt((0.5 * (a - c)).square() + b.square())
    fp = (mu + r).pow(-alpha)
    fm = (mu - r).clamp_min(torch.finfo(F64).tiny).pow(-alpha)
    tied = r <= 1e-12 * mu
    k = torch.where(tied, -alpha * mu.pow(-alpha - 1.0), (fp - fm) / torch.where(tied, 1.0, 2.0 * r))
    s = 0.5 * (fp + fm)
    return s + k * (a - mu), k * b, s + k * (c - mu)


def rotation(angle: float) -> np.ndarray:
    """The 2-D rotation by ``angle`` (radians)."""
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


@dataclass(frozen=True)
class ChainsSetup:
    """The task and the optimizer of every chain (module docstring)."""

    eigenvalues: tuple[float, float]
    angle: float
    noise_std: float
    batch: int
    alpha: float
    lr: float
    beta1: float
    beta2: float
    eps: float

    @property
    def H(self) -> np.ndarray:
        Q = rotation(self.angle)
        return (Q * np.asarray(self.eigenvalues)) @ Q.T


class MetricChains:
    """``chains`` copies of the optimizer's state: ``e`` ``(N, 2)``, first moment ``m``, statistic ``S`` (as
    its entries ``S11, S12, S22``) and the step count ``t``."""

    def __init__(self, setup: ChainsSetup, chains: int, oracle: np.ndarray | None = None) -> None:
        self.setup = setup
        self.e = torch.zeros(chains, 2, dtype=F64)
        self.m = torch.zeros_like(self.e)
        self.S = [torch.zeros(chains, dtype=F64) for _ in range(3)]
        self.t = 0
        self.M = torch.from_numpy(rotation(setup.angle) * np.sqrt(np.asarray(setup.eigenvalues)))
        self.oracle = None if oracle is None else torch.as_tensor(oracle, dtype=F64)

    def gradient(self, gen: torch.Generator) -> Tensor:
        """Every chain's minibatch gradient at its ``e`` (fresh samples): ``(N, 2)``."""
        n, B = self.e.shape[0], self.setup.batch
        # one float32 draw (4x faster than float64 on CPU), used in float64; x = Mz, so the gradient is
        # M · mean_b z_b(z_bᵀMᵀe − σε_b)
        z = torch.randn(n, B, 3, generator=gen, dtype=torch.float32).to(F64)
        u = self.e @ self.M
        residual = (z[..., :2] * u.unsqueeze(1)).sum(-1) - self.setup.noise_std * z[..., 2]
        return (z[..., :2] * residual.unsqueeze(-1)).mean(1) @ self.M.T

    def step(self, grad: Tensor, lr: float) -> Tensor:
        """One optimizer step with gradient ``grad`` and learning rate ``lr``; returns the update ``Δe``."""
        s = self.setup
        self.t += 1
        self.m.lerp_(grad, 1.0 - s.beta1)
        v = grad - self.m
        for S, vv in zip(self.S, (v[:, 0] * v[:, 0], v[:, 0] * v[:, 1], v[:, 1] * v[:, 1]), strict=True):
            S.lerp_(vv, 1.0 - s.beta2)
        if lr == 0.0:
            return torch.zeros_like(grad)
        if self.oracle is not None:
            direction = grad @ self.oracle.T
        elif s.alpha == 0.0:
            direction = grad
        else:
            bc = 1.0 - s.beta2**self.t
            pa, pb, pc = inverse_power_2x2(self.S[0] / bc, self.S[1] / bc, self.S[2] / bc, s.alpha, s.eps)
            g0, g1 = grad[:, 0], grad[:, 1]
            direction = torch.stack((pa * g0 + pb * g1, pb * g0 + pc * g1), dim=-1)
        delta = -lr * direction
        self.e += delta
        return delta


@dataclass(frozen=True)
class ChainsEstimate:
    """The time- and chain-averaged ``E[eeᵀ]`` after the burn-in, and the same per group of chains."""

    second_moment: np.ndarray  # (2, 2)
    groups: np.ndarray  # (G, 2, 2)
    chain_steps: int


def stationary_second_moment(
    setup: ChainsSetup,
    chains: int,
    warmup: int,
    burn_in: int,
    steps: int,
    seed: int,
    groups: int = 10,
    oracle: np.ndarray | None = None,
) -> ChainsEstimate:
    """Run ``warmup`` (lr 0), ``burn_in`` and ``steps`` steps; average ``eeᵀ`` over the last ``steps``."""
    sim = MetricChains(setup, chains, oracle)
    gen = torch.Generator().manual_seed(seed)
    group = torch.arange(chains) % groups
    acc = torch.zeros(groups, 2, 2, dtype=F64)
    for k in range(warmup + burn_in + steps):
        sim.step(sim.gradient(gen), 0.0 if k < warmup else setup.lr)
        if k >= warmup + burn_in:
            acc.index_add_(0, group, sim.e.unsqueeze(-1) * sim.e.unsqueeze(-2))
    counts = torch.bincount(group, minlength=groups).to(F64) * steps
    per_group = (acc / counts.view(-1, 1, 1)).numpy()
    return ChainsEstimate((acc.sum(0) / counts.sum()).numpy(), per_group, chains * steps)
