r"""Many independent small optimisation problems trained as one: the engine of the ``cgd-paper`` experiment.

A *member* is one flat parameter vector ``q ∈ R^P`` (a Rosenbrock point, ``P = 2``, or a whole tanh MLP
flattened, ``P ≈ 100``) with its own learning rate, seed and start. All members of an optimizer run are
separate tensors in one optimizer, one parameter group per learning rate, and the loss that is
differentiated is the *sum* of the members' losses -- so each member's gradient is exactly its own
``∇L_m(q_m)``: members never interact. For the elementwise optimizers (SGD, momentum, RMSProp, Adam,
AdaBelief, CovariantGD ``'diag'``) that is the single-problem update bit for bit. For full-covariance
CovariantGD the members use ``structure='block'`` -- one dense ``(P, P)`` metric per parameter tensor, i.e.
per member, which is CovariantGD's ``'full'`` metric of that member alone, with the eigendecompositions of
equal-sized members batched.

A member whose loss becomes non-finite or exceeds ``DIVERGENCE_FACTOR`` times its initial loss (or whose
gradient is non-finite) is *diverged*: from that step on its gradient is zero, its parameters are held at
their start (so nothing non-finite ever reaches a shared eigendecomposition) and its loss counts as ``inf``.

While training, :func:`train_members` also keeps, per member, the update covariance

    C ← β C + (1−β) Δq Δqᵀ,        Δq = q_t − q_{t−1},

and reports its participation ratio ``PR = (Σλ)²/Σλ² = (tr C)² / ‖C‖_F²`` (:func:`participation_ratio`,
no eigendecomposition needed: ``Σλ = tr C`` and ``Σλ² = tr C² = ‖C‖_F²`` for symmetric ``C``) and, when
asked, its top eigenvalues as fractions of ``tr C``. For full CovariantGD it also reports the PR of the
metric's statistic ``S`` itself (the optimizer's ``block_S``; the spectrum of ``g = (Ŝ+εI)^α`` is a monotone
function of it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learndyn.optim import CovariantGD
from learndyn.phenomena._adabelief import AdaBelief
from learndyn.validation import LearndynValueError

DIVERGENCE_FACTOR = 1e4
"""A member diverges once its training loss exceeds this multiple of its initial loss."""

OPTIMIZERS = (
    "sgd",
    "momentum",
    "rmsprop",
    "adam",
    "adabelief",
    "cgd-diag-a0.5",
    "cgd-diag-a0.5-cov",
    "cgd-diag-a1",
    "cgd-diag-a1-cov",
    "cgd-full-a0.5",
    "cgd-full-a0.5-cov",
    "cgd-full-a1",
    "cgd-full-a1-cov",
)
"""The optimizers the experiment knows: torch's SGD (plain and heavy-ball momentum 0.9), RMSprop and Adam
(torch defaults), :class:`~learndyn.phenomena._adabelief.AdaBelief`, and CovariantGD with a diagonal or full
metric, ``α ∈ {½, 1}``, second moment (no suffix) or covariance (``-cov``) statistics."""

_CGD = re.compile(r"^cgd-(?P<structure>diag|full)-a(?P<alpha>0\.5|1)(?P<cov>-cov)?$")


def is_full(label: str) -> bool:
    """Whether ``label`` is a full-covariance CovariantGD."""
    return label.startswith("cgd-full")


def build_optimizer(label: str, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer ``label`` (one of :data:`OPTIMIZERS`) over parameter ``groups`` (each with its ``lr``).

    CovariantGD runs with its defaults (β = (0.9, 0.999), ε = 1e-8 inside the power, bias correction, the
    first moment) and roots recomputed every step (``precondition_every=1``, as the method is defined);
    ``'full'`` is ``'block'`` over the members (see the module docstring).
    """
    lr = groups[0]["lr"]
    if label == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if label == "momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if label == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr)
    if label == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if label == "adabelief":
        return AdaBelief(groups, lr=lr)
    match = _CGD.match(label)
    if match is None:
        raise LearndynValueError(f"optimizer={label!r} is not known; allowed: {', '.join(OPTIMIZERS)}")
    return CovariantGD(
        groups,
        lr=lr,
        alpha=float(match["alpha"]),
        structure="block" if match["structure"] == "full" else "diag",
        moment="covariance" if match["cov"] else "second",
        precondition_every=1,
    )


def participation_ratio(C: Tensor) -> Tensor:
    """``(tr C)² / ‖C‖_F²`` of symmetric ``C`` (batched over leading dimensions): ``(Σλ)²/Σλ²``; 0 for
    ``C = 0``."""
    trace = C.diagonal(dim1=-2, dim2=-1).sum(-1)
    frob2 = (C * C).sum((-2, -1))
    return torch.where(frob2 > 0, trace**2 / frob2.clamp_min(torch.finfo(C.dtype).tiny), 0.0)


class Problem:
    """A family of independent problems on flat parameter vectors (see the module docstring).

    ``dim``: ``P``. ``starts(seeds)``: initial points ``(len(seeds), K, P)`` (``K`` starts per seed).
    ``train_losses(X, member_seed, step)``: per-member training loss ``(M,)`` of points ``X (M, P)``, member
    ``m`` drawing its data from seed index ``member_seed[m]``. ``evaluate(X)``: per-member full loss.
    """

    dim: int

    def starts(self, seeds: Sequence[int]) -> Tensor:
        raise NotImplementedError

    def train_losses(self, X: Tensor, member_seed: Tensor, step: int) -> Tensor:
        raise NotImplementedError

    def evaluate(self, X: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass
class MemberTrace:
    """What :func:`train_members` measured, members indexed ``(lr, seed, start)``.

    ``eval_steps (E,)``; ``loss (L, S, K, E)`` full losses (``inf`` once diverged); ``pr (L, S, K, E)`` and
    ``top_eigs (L, S, K, E, k)`` (fractions of ``tr C``) of the update covariance, or ``None``;
    ``metric_pr (L, S, K, E)``: PR of full CovariantGD's statistic ``S``, or ``None``;
    ``traj_steps (T,)`` and ``traj (L, S, K, T, P)`` the points at those steps, or ``None``;
    ``diverged (L, S, K)``; ``seconds``: training wall time.
    """

    eval_steps: np.ndarray
    loss: np.ndarray
    pr: np.ndarray | None
    top_eigs: np.ndarray | None
    metric_pr: np.ndarray | None
    traj_steps: np.ndarray | None
    traj: np.ndarray | None
    diverged: np.ndarray
    seconds: float


def train_members(
    problem: Problem,
    label: str,
    lrs: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    eval_every: int,
    *,
    pr_beta: float | None = None,
    top_k: int = 0,
    traj_steps: Sequence[int] | None = None,
    progress: Callable[[], None] | None = None,
) -> MemberTrace:
    """Train every ``(lr, seed, start)`` member of ``problem`` with ``label`` for ``steps`` steps.

    The full loss is evaluated at steps ``0, eval_every, …`` and ``steps``; with ``pr_beta`` the update
    covariance's PR (and ``top_k`` eigenvalue fractions) at the same steps; with ``traj_steps`` the points.
    """
    import time

    init = problem.starts(seeds).to(torch.float64)  # (S, K, P)
    S, K, P = init.shape
    L = len(lrs)
    start_rows = init.unsqueeze(0).expand(L, S, K, P).reshape(-1, P)
    member_seed = torch.arange(S).view(1, S, 1).expand(L, S, K).reshape(-1)
    params = [torch.nn.Parameter(row.clone()) for row in start_rows]
    per_lr = S * K
    groups = [{"params": params[i * per_lr : (i + 1) * per_lr], "lr": float(lr)} for i, lr in enumerate(lrs)]
    opt = build_optimizer(label, groups)
    M = len(params)

    eval_at = sorted(set(range(0, steps + 1, eval_every)) | {steps})
    traj_at = sorted({int(s) for s in traj_steps if 0 <= s <= steps}) if traj_steps is not None else []
    losses, prs, eigs, metric_prs, traj = [], [], [], [], []
    full = is_full(label)
    alive = torch.ones(M, dtype=torch.bool)
    limit: Tensor | None = None
    C = torch.zeros(M, P, P, dtype=torch.float64) if pr_beta is not None else None

    def record(step: int, X: Tensor) -> None:
        if step in eval_at:
            with torch.no_grad():
                value = problem.evaluate(X)
            losses.append(torch.where(alive & torch.isfinite(value), value, math.inf).numpy().copy())
            if C is not None:
                prs.append(participation_ratio(C).numpy().copy())
                if top_k:
                    lam = torch.linalg.eigvalsh(C).flip(-1)[:, :top_k].clamp_min(0)
                    trace = C.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
                    eigs.append((lam / trace.clamp_min(1e-300)).numpy().copy())
            if full and pr_beta is not None:
                stats = [opt.state[p].get("block_S") for p in params]
                if all(s is not None for s in stats):
                    metric_prs.append(participation_ratio(torch.stack(stats)).numpy().copy())
                else:  # before the first step: no statistics yet
                    metric_prs.append(np.full(M, np.nan))
        if step in traj_at:
            traj.append(X.numpy().copy())

    began = time.perf_counter()
    X = torch.stack([p.detach() for p in params])
    record(0, X)
    for step in range(1, steps + 1):
        X = torch.stack(list(params))
        value = problem.train_losses(X, member_seed, step)
        if limit is None:
            limit = DIVERGENCE_FACTOR * value.detach().abs().clamp_min(1e-12)
        fresh = alive & ~(torch.isfinite(value.detach()) & (value.detach() <= limit))
        total = torch.where(alive & ~fresh, value, torch.zeros_like(value)).sum()
        opt.zero_grad(set_to_none=False)
        total.backward()
        with torch.no_grad():
            G = torch.stack([p.grad for p in params])
            fresh |= alive & ~torch.isfinite(G).all(1)
            if bool(fresh.any()):
                alive &= ~fresh
                for m in fresh.nonzero().flatten().tolist():
                    params[m].grad.zero_()
                    params[m].copy_(start_rows[m])
            before = X.detach()
            opt.step()
            X = torch.stack([p.detach() for p in params])
            dead = (~alive).nonzero().flatten().tolist()
            for m in dead:
                params[m].copy_(start_rows[m])
            if dead:
                X = torch.stack([p.detach() for p in params])
            if C is not None:
                dq = torch.where(alive.unsqueeze(1), X - before, 0.0)
                C.mul_(pr_beta).add_(dq.unsqueeze(2) * dq.unsqueeze(1), alpha=1 - pr_beta)
        record(step, X)
        if progress is not None:
            progress()
    seconds = time.perf_counter() - began

    shape = (L, S, K)
    return MemberTrace(
        eval_steps=np.array(eval_at),
        loss=np.stack(losses, -1).reshape(*shape, -1),
        pr=np.stack(prs, -1).reshape(*shape, -1) if prs else None,
        top_eigs=np.stack(eigs, 1).reshape(*shape, len(eval_at), -1) if eigs else None,
        metric_pr=np.stack(metric_prs, -1).reshape(*shape, -1) if metric_prs else None,
        traj_steps=np.array(traj_at) if traj else None,
        traj=np.stack(traj, 1).reshape(*shape, len(traj_at), P) if traj else None,
        diverged=(~alive).numpy().reshape(shape),
        seconds=seconds,
    )
