"""What a metric structure is, and what every structure shares: the step context, schedules, the update.

A *structure* says how the statistic ``S`` is restricted, stored and inverted (``diag``: elementwise,
``kron``: Kronecker factors per matrix, ``block``/``full``: dense matrices, ``lowrank``: eigenpairs plus a
diagonal). In the spirit of optax's ``init``/``update`` transformations, a structure is a small stateless
object; the state lives in the optimizer's per-parameter state dicts (``optimizer.state[p]``), under key names
the structure owns (``kron_L``, ``block_S``, ``full_S`` …), so state dicts, probes and resumes see ordinary
tensors. :class:`~learndyn.optim.CovariantGD` does the rest -- options, moments, dispatch, the update:

1. per parameter with a gradient: ``step``, the first moment ``m`` (``exp_avg``) and ``v`` (``∇`` or
   ``∇ − m``), handed over as a :class:`GroupStep`;
2. parameters the structure does not :meth:`~Structure.covers` (kron's vectors, empty tensors) are
   stepped by ``'diag'``;
3. :meth:`Structure.step` updates the statistics, refreshes cached roots when due
   (:func:`root_due`) and moves the parameters, by default ``q ← q·(1 − lr·wd) − lr·g⁻¹F`` with
   ``g⁻¹F`` from :meth:`Structure.directions`.

Adding a structure is one module with a :class:`Structure` subclass plus one line in
:data:`learndyn.optim.structures.STRUCTURES`.

Time. Per-parameter state counts steps in ``state['step']`` (``t``). A structure with one metric per group
(``scope='group'``) keeps it in the state of one *owner* parameter (the first of the group to have had a
gradient) with its own counter ``{prefix}_step``, as its parameters may step on different counts.
Statistics kept every ``k`` steps decay by ``β₂ᵏ`` per update (:func:`stat_beta`) and are bias-corrected
by ``1 − β₂^{k⌈t/k⌉}`` (:func:`stat_bias_correction`); see :mod:`learndyn.optim.functional`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from learndyn.optim import functional as Fn

Scope = Literal["parameter", "group"]


def real(p: Tensor) -> Tensor:
    """``p`` as the real tensor the structures work on: ``torch.view_as_real(p)`` (shape ``p.shape + (2,)``)
    for a complex ``p`` (as torch's optimizers treat complex parameters), else ``p`` itself."""
    return torch.view_as_real(p) if p.is_complex() else p


@dataclass(frozen=True)
class GroupStep:
    """One parameter group's step as a structure sees it (lists in group order, one entry per parameter).

    ``params`` are the (real views of the) parameters that have a gradient this step, ``grads`` their
    gradients (negated for ``maximize``, plus ``weight_decay·q`` for coupled decay), ``exp_avgs`` the first
    moments (``None`` when neither ``first_moment`` nor ``moment='covariance'`` needs them), ``vs`` the
    vectors whose outer products ``S`` averages and ``states`` their state dicts (``step`` already
    advanced).
    ``keys`` are the parameters themselves (the state keys: stable identities, e.g. for caches).
    ``group_keys``/``group_params``: every parameter of the group, with or without a gradient (the layout of a
    group-wide metric); ``state`` the optimizer's whole state (read with ``.get``: it is a defaultdict).
    ``cache``: scratch space of this structure in this optimizer, not saved (e.g. stacked buffers).
    """

    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor] | None
    vs: list[Tensor]
    states: list[dict[str, Any]]
    keys: list[Tensor]
    group_keys: list[Tensor]
    group_params: list[Tensor]
    state: Mapping[Tensor, dict[str, Any]]
    cache: dict[Any, Any]

    def subset(self, idx: Sequence[int]) -> GroupStep:
        """The same step restricted to the parameters at positions ``idx``."""

        def pick(xs: list | None) -> list | None:
            return None if xs is None else [xs[i] for i in idx]

        return replace(
            self,
            params=pick(self.params),
            grads=pick(self.grads),
            exp_avgs=pick(self.exp_avgs),
            vs=pick(self.vs),
            states=pick(self.states),
            keys=pick(self.keys),
        )

    def directions_in(self) -> list[Tensor]:
        """``F`` per parameter: the bias-corrected first moment ``m/(1−β₁ᵗ)``, or the gradient."""
        group = self.group
        if not group["first_moment"]:
            return self.grads
        assert self.exp_avgs is not None
        beta1 = group["betas"][0]
        return [
            m / Fn.bias_correction(beta1, st["step"], group["bias_correction"])
            for m, st in zip(self.exp_avgs, self.states, strict=True)
        ]


# ------------------------------------------------------------------------------------------ schedules


def bias_correction2(group: Mapping[str, Any], step: int) -> float:
    """Bias correction of an elementwise (every-step) second moment: ``1 − β₂ᵗ``."""
    return Fn.bias_correction(group["betas"][1], step, group["bias_correction"])


def stat_bias_correction(group: Mapping[str, Any], step: int) -> float:
    """Bias correction of matrix statistics kept every ``k`` steps: ``1 − β₂^{k⌈t/k⌉}``."""
    return Fn.amortised_bias_correction(
        group["betas"][1], step, group["statistics_every"], group["bias_correction"]
    )


def stat_beta(group: Mapping[str, Any]) -> float:
    """The per-update decay ``β₂ᵏ`` of matrix statistics kept every ``k = statistics_every`` steps."""
    return Fn.amortised_ema_beta(group["betas"][1], group["statistics_every"])


def root_due(group: Mapping[str, Any], st: Mapping[str, Any], cache_key: str, step: int) -> bool:
    """Whether a cached root (the entry ``cache_key`` of ``st``) must be recomputed on step ``t = step``.

    Roots are due on every step ``t ≤ w`` (``w = precondition_warmup``) and on steps ``1, p+1, 2p+1, …``
    (``p = precondition_every``). A due root is skipped when the statistics it is computed from have not
    changed since the previous due step ``t' = max(t − p, min(w, t − 1))`` (``t − 1`` during the warm-up;
    possible with ``statistics_every > 1``): the cached root is then exactly what would come out."""
    if cache_key not in st:
        return True
    t, p, w = step, group["precondition_every"], group["precondition_warmup"]
    if t > w and (t - 1) % p:
        return False
    k = group["statistics_every"]
    previous = t - 1 if t <= w else max(t - p, min(w, t - 1))
    return k == 1 or Fn.statistics_count(t, k) != Fn.statistics_count(previous, k)


def stale_bounded(group: Mapping[str, Any]) -> bool:
    """Whether stale roots are bounded by the statistics added since (``stale_damping='trace'``, α > 0)."""
    return group["stale_damping"] == "trace" and group["alpha"] > 0


def apply_directions(ctx: GroupStep, dirs: list[Tensor], params: list[Tensor] | None = None) -> None:
    """``q ← q·(1 − lr·wd) − lr·d`` (the decay only if decoupled) for every parameter of ``ctx``, or for
    ``params`` (some of them, or views of them shaped like ``dirs``) when given."""
    group = ctx.group
    params = ctx.params if params is None else params
    lr, wd = group["lr"], group["weight_decay"]
    if wd and group["decoupled_weight_decay"]:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    torch._foreach_add_(params, dirs, alpha=-lr)


# ----------------------------------------------------------------------------------- group-wide metrics


def group_dtype(params: Sequence[Tensor], floor: torch.dtype | None = None) -> torch.dtype:
    """The dtype of a metric over ``params``: their promoted dtype, at least ``floor``."""
    dtype = params[0].dtype
    for p in params[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    if floor is not None and torch.finfo(dtype).bits < torch.finfo(floor).bits:
        dtype = floor
    return dtype


def group_owner(ctx: GroupStep, key: str) -> dict[str, Any]:
    """The state dict that holds the group's metric (the first of the group's parameters whose state has
    ``key``), or, before it exists, the state of the first parameter with a gradient this step."""
    for p in ctx.group_keys:
        st = ctx.state.get(p)
        if st is not None and key in st:
            return st
    return ctx.states[0]


def advance_group_step(owner: dict[str, Any], counter: str) -> int:
    """Advance and return the group metric's step counter ``owner[counter]``."""
    owner[counter] = owner.get(counter, 0) + 1
    return owner[counter]


def flat_group(ctx: GroupStep, xs: list[Tensor], dtype: torch.dtype) -> Tensor:
    """The concatenation over *all* parameters of the group of ``xs`` (given for ``ctx.params``), zeros for
    parameters without a gradient, in ``dtype``: a vector of length ``P = Σ numel``."""
    given = {id(k): x for k, x in zip(ctx.keys, xs, strict=True)}
    parts = []
    for k, p in zip(ctx.group_keys, ctx.group_params, strict=True):
        x = given.get(id(k))
        parts.append(p.new_zeros(p.numel(), dtype=dtype) if x is None else x.reshape(-1).to(dtype))
    return torch.cat(parts)


def split_group(ctx: GroupStep, flat: Tensor) -> list[Tensor]:
    """Inverse of :func:`flat_group` for the parameters of ``ctx`` (shaped and typed like them)."""
    chunks = flat.split([p.numel() for p in ctx.group_params])
    where = {id(k): c for k, c in zip(ctx.group_keys, chunks, strict=True)}
    return [where[id(k)].reshape(p.shape).to(p.dtype) for k, p in zip(ctx.keys, ctx.params, strict=True)]


def group_diagonal(
    group: Mapping[str, Any],
    p: Tensor,
    state: Mapping[Tensor, dict[str, Any]],
    key: str,
    counter: str,
    diagonal: Callable[[dict[str, Any]], Tensor],
) -> Tensor | None:
    """``diag(Ŝ)`` of a group-wide metric restricted to ``p``: ``diagonal(owner_state)`` ``(P,)`` sliced at
    ``p``'s offset in the group, divided by the bias correction of the metric's step counter ``counter``;
    ``None`` before the metric (state ``key``) exists."""
    keys = list(group["params"])
    owner = next((state[q] for q in keys if q in state and key in state[q]), None)
    if owner is None:
        return None
    start = 0
    for q in keys:
        if q is p:
            break
        start += q.numel() * (2 if q.is_complex() else 1)
    rp = real(p)
    d = diagonal(owner)[start : start + rp.numel()].reshape(rp.shape)
    return (d / stat_bias_correction(group, owner[counter])).to(rp.dtype)


# ------------------------------------------------------------------------------------------ interface


class Structure:
    """A metric structure: its state, memory need and preconditioned direction ``g⁻¹F``.

    Subclasses set the class attributes and implement :meth:`directions`, :meth:`elements` and
    :meth:`diagonal`; they may override :meth:`step` (e.g. ``'diag'``'s fused Adam update), :meth:`covers`,
    :meth:`validate` and :meth:`upgrade_state`. Structures are stateless singletons; everything they keep
    goes into ``ctx.states``/``ctx.cache``.

    Attributes:
        name: the ``structure=`` value.
        scope: ``'parameter'`` (a metric per parameter tensor) or ``'group'`` (one metric for the whole
            parameter group, kept under an owner parameter; needs one device per group).
        exact: the metric is a function of the restricted statistic itself (``diag``, ``block``, ``full``),
            not of a factored or truncated model of it (``kron``, ``lowrank``).
        root_power: matrix roots are of power ``root_power·α`` (``None``: no matrix root is taken, so
            ``root_method`` has nothing to do); ``root_method='newton'`` needs that to be a small fraction.
        group_state_keys: state keys of a ``'group'`` metric; a loaded state dict keeps them in the metric's
            dtype (which may differ from the owner parameter's).
        state_floor: lowest dtype the metric state of a ``'group'`` structure is kept in (``None``: the
            parameters' dtype).
    """

    name: ClassVar[str]
    scope: ClassVar[Scope] = "parameter"
    exact: ClassVar[bool] = False
    root_power: ClassVar[float | None] = None
    group_state_keys: ClassVar[tuple[str, ...]] = ()
    state_floor: ClassVar[torch.dtype | None] = None

    def covers(self, p: Tensor) -> bool:
        """Whether this structure handles (the real view of) parameter ``p``; others are stepped by
        ``'diag'``. By default every non-empty tensor."""
        return p.numel() > 0

    def validate(self, opts: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Structure-specific option checks (raise :class:`~learndyn.validation.LearndynValueError`)."""

    def elements(self, params: Sequence[Tensor], opts: Mapping[str, Any]) -> int:
        """Elements of metric state (statistic + cached root) for the covered ``params`` of one group."""
        raise NotImplementedError

    def memory(self, params: Sequence[Tensor], opts: Mapping[str, Any]) -> int:
        """Bytes of metric state for the covered ``params`` of one group."""
        if not params:
            return 0
        dtype = group_dtype(params, self.state_floor) if self.scope == "group" else params[0].dtype
        return self.elements(params, opts) * torch.empty((), dtype=dtype).element_size()

    def directions(self, ctx: GroupStep) -> list[Tensor]:
        """Update the statistics, refresh cached roots when due (:func:`root_due`) and return ``g⁻¹F`` for
        every parameter of ``ctx`` (shaped like it)."""
        raise NotImplementedError

    def step(self, ctx: GroupStep) -> None:
        """Move the parameters of ``ctx``: ``q ← q·(1 − lr·wd) − lr·g⁻¹F``."""
        apply_directions(ctx, self.directions(ctx))

    def upgrade_state(self, st: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Bring one loaded state dict of a previous version up to date (in place)."""

    def diagonal(
        self, group: Mapping[str, Any], p: Tensor, state: Mapping[Tensor, dict[str, Any]]
    ) -> Tensor | None:
        """The diagonal of the bias-corrected ``Ŝ`` for parameter ``p`` (shaped like its real view), or
        ``None`` before the structure has statistics for it."""
        raise NotImplementedError
