"""``'block'`` and ``'full'``: dense metrics, one ``(n, n)`` matrix per parameter tensor or one ``(P, P)``
matrix for the whole parameter group.

``S ← β₂ S + (1−β₂) v vᵀ`` (state ``block_S`` per parameter, ``full_S`` under the group's owner parameter),
``g⁻¹ = h(Ŝ)`` from :func:`~learndyn.optim.matfun.inverse_metric` (float64 roots, ``'eigh'`` or
``'newton'``), cached as ``{prefix}_Minv`` and reused between roots. With ``stale_damping='trace'`` (and
``root_method='eigh'``) the root is cached instead as the eigenbasis ``Ŝ₀ = U diag(λ₀) Uᵀ``
(``{prefix}_U``, ``{prefix}_lam``, with ``tr S₀`` and the statistics count at the root), and a stale step
uses the spectrum ``h(c λ₀ + τ)`` of the bound ``Ŝ_t ⪯ c Ŝ₀ + τ I`` (:func:`~learndyn.optim.functional.
stale_bound`): ``g⁻¹F = U (h ⊙ UᵀF)``, never larger than the fresh step.

``'full'`` concatenates every parameter of the group (``P = Σ numel``; parameters without a gradient count
as 0 and are not moved), in the group's promoted dtype; its step counter is ``full_step``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from learndyn.optim import functional as Fn
from learndyn.optim.matfun import COMPUTE_DTYPE, batched, eigh_psd, inverse_metric, spectral_coefficients
from learndyn.optim.structures.base import (
    GroupStep,
    Structure,
    advance_group_step,
    flat_group,
    group_diagonal,
    group_dtype,
    group_owner,
    root_due,
    split_group,
    stale_bounded,
    stat_beta,
    stat_bias_correction,
)


def _eigen_cached(group: Mapping[str, Any]) -> bool:
    """Whether roots are cached as eigenbases, bounded on stale steps (``stale_damping``)."""
    return stale_bounded(group) and group["root_method"] == "eigh"


def _inverse_metric(group: Mapping[str, Any], S_hat: Tensor) -> Tensor:
    S_hat = Fn.relative_damping(S_hat, group["eps_rel"])
    return inverse_metric(
        S_hat, group["alpha"], group["eps"], group["eps_mode"], group["eps_root"], group["root_method"]
    )


def _cache_eigenbases(group: Mapping[str, Any], sts: list[dict], steps: list[int], prefix: str) -> None:
    """Cache ``Ŝ₀ = U diag(λ) Uᵀ`` of each state's ``{prefix}_S`` (same shapes) at its step, with ``tr S₀``
    and the statistics count ``u₀`` it was taken at, for :func:`_stale_coefficients`."""
    k = group["statistics_every"]
    S = torch.stack([st[f"{prefix}_S"] for st in sts])
    bc2 = torch.tensor([stat_bias_correction(group, t) for t in steps], dtype=S.dtype, device=S.device)
    lam, U = eigh_psd(S / bc2.view(-1, 1, 1))
    U, lam = U.to(S.dtype), lam.to(S.dtype)  # kept in the statistic's dtype, as load_state_dict casts
    traces = S.diagonal(dim1=-2, dim2=-1).sum(-1)
    for j, (st, t) in enumerate(zip(sts, steps, strict=True)):
        st[f"{prefix}_U"], st[f"{prefix}_lam"] = U[j], lam[j]
        st[f"{prefix}_root_trace"] = traces[j]
        st[f"{prefix}_root_count"] = Fn.statistics_count(t, k)


def _stale_coefficients(group: Mapping[str, Any], st: dict, step: int, prefix: str) -> Tensor:
    """``h(c λ₀ + τ)`` (float64): the cached root's spectrum with the bound ``Ŝ_t ⪯ c Ŝ₀ + τ I`` of
    :func:`~learndyn.optim.functional.stale_bound`; ``h(λ₀)`` while the statistics are unchanged."""
    lam, root_count = st[f"{prefix}_lam"].to(COMPUTE_DTYPE), st[f"{prefix}_root_count"]
    count = Fn.statistics_count(step, group["statistics_every"])
    if count != root_count:
        trace = st[f"{prefix}_S"].diagonal().sum().to(COMPUTE_DTYPE)
        root_trace = st[f"{prefix}_root_trace"].to(COMPUTE_DTYPE)
        c, tau = Fn.stale_bound(
            trace, root_trace, count, root_count, stat_beta(group), group["bias_correction"]
        )
        lam = c * lam + tau
    if group["eps_rel"]:  # ε_rel · tr(Ŝ_t)/n, as the uncached root's relative_damping of Ŝ_t
        trace_hat = st[f"{prefix}_S"].diagonal().sum().to(COMPUTE_DTYPE) / stat_bias_correction(group, step)
        lam = lam + group["eps_rel"] * trace_hat / max(lam.shape[-1], 1)
    return spectral_coefficients(lam, group["alpha"], group["eps"], group["eps_mode"], group["eps_root"])


class Block(Structure):
    """A full ``(n, n)`` matrix per parameter tensor of ``n`` elements (see the module doc)."""

    name = "block"
    exact = True
    root_power = 1.0

    def elements(self, params: Sequence[Tensor], opts: Mapping[str, Any]) -> int:
        return 2 * sum(p.numel() ** 2 for p in params)

    def directions(self, ctx: GroupStep) -> list[Tensor]:
        group, params, states = ctx.group, ctx.params, ctx.states
        beta_k, every = stat_beta(group), group["statistics_every"]
        for p, st in zip(params, states, strict=True):
            if "block_S" not in st:
                st["block_S"] = p.new_zeros((p.numel(), p.numel()))
        buckets: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.numel(), p.dtype, p.device), []).append(i)
        for idx in buckets.values():
            idx = [i for i in idx if Fn.statistics_update(states[i]["step"], every)]
            if not idx:
                continue
            V = torch.stack([ctx.vs[i].reshape(-1) for i in idx])
            Fn.foreach_ema_(
                [states[i]["block_S"] for i in idx], list(V.unsqueeze(-1) * V.unsqueeze(-2)), beta_k
            )
        Fs = ctx.directions_in()
        dirs: list[Tensor | None] = [None] * len(params)
        if _eigen_cached(group):
            for idx in buckets.values():
                todo = [i for i in idx if root_due(group, states[i], "block_U", states[i]["step"])]
                if todo:
                    _cache_eigenbases(
                        group, [states[i] for i in todo], [states[i]["step"] for i in todo], "block"
                    )
                U = torch.stack([states[i]["block_U"] for i in idx])
                h = torch.stack(
                    [_stale_coefficients(group, states[i], states[i]["step"], "block") for i in idx]
                )
                F = torch.stack([Fs[i].reshape(-1) for i in idx])
                for i, d in zip(idx, Fn.eigen_direction(U, h.to(U.dtype), F).unbind(0), strict=True):
                    dirs[i] = d.reshape(params[i].shape)
            return dirs  # type: ignore[return-value]
        todo = [i for i, st in enumerate(states) if root_due(group, st, "block_Minv", st["step"])]
        if todo:
            S_hats = [states[i]["block_S"] / stat_bias_correction(group, states[i]["step"]) for i in todo]
            roots = batched(S_hats, lambda S: _inverse_metric(group, S))
            for i, r in zip(todo, roots, strict=True):
                states[i]["block_Minv"] = r
        for idx in buckets.values():
            M = torch.stack([states[i]["block_Minv"] for i in idx])
            F = torch.stack([Fs[i].reshape(-1) for i in idx])
            for i, d in zip(idx, Fn.matrix_direction(M, F).unbind(0), strict=True):
                dirs[i] = d.reshape(params[i].shape)
        return dirs  # type: ignore[return-value]

    def diagonal(
        self, group: Mapping[str, Any], p: Tensor, state: Mapping[Tensor, dict[str, Any]]
    ) -> Tensor | None:
        st = state.get(p, {})
        if "block_S" not in st:
            return None
        return st["block_S"].diagonal() / stat_bias_correction(group, st["step"])


class Full(Structure):
    """One ``(P, P)`` matrix for all parameters of the group (see the module doc)."""

    name = "full"
    scope = "group"
    exact = True
    root_power = 1.0
    group_state_keys = ("full_S", "full_Minv", "full_U", "full_lam", "full_root_trace")

    def elements(self, params: Sequence[Tensor], opts: Mapping[str, Any]) -> int:
        P = sum(p.numel() for p in params)
        return 2 * P * P

    def directions(self, ctx: GroupStep) -> list[Tensor]:
        group = ctx.group
        owner = group_owner(ctx, "full_S")
        dtype = group_dtype(ctx.group_params)
        if "full_S" not in owner:
            P = sum(p.numel() for p in ctx.group_params)
            owner["full_S"] = ctx.params[0].new_zeros((P, P), dtype=dtype)
        t = advance_group_step(owner, "full_step")
        if Fn.statistics_update(t, group["statistics_every"]):
            Fn.ema_outer_(owner["full_S"], flat_group(ctx, ctx.vs, dtype), stat_beta(group))
        F = flat_group(ctx, ctx.directions_in(), dtype)
        if _eigen_cached(group):
            if root_due(group, owner, "full_U", t):
                _cache_eigenbases(group, [owner], [t], "full")
            h = _stale_coefficients(group, owner, t, "full").to(owner["full_U"].dtype)
            return split_group(ctx, Fn.eigen_direction(owner["full_U"], h, F))
        if root_due(group, owner, "full_Minv", t):
            owner["full_Minv"] = _inverse_metric(group, owner["full_S"] / stat_bias_correction(group, t))
        return split_group(ctx, Fn.matrix_direction(owner["full_Minv"], F))

    def upgrade_state(self, st: dict[str, Any]) -> None:
        if "full_S" in st and "full_step" not in st:  # saved when every parameter stepped with its group
            st["full_step"] = st["step"]

    def diagonal(
        self, group: Mapping[str, Any], p: Tensor, state: Mapping[Tensor, dict[str, Any]]
    ) -> Tensor | None:
        return group_diagonal(group, p, state, "full_S", "full_step", lambda st: st["full_S"].diagonal())


BLOCK = Block()
FULL = Full()
