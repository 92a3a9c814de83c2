"""``'lowrank'``: the group's ``S`` as ``r = min(rank, P)`` eigenpairs plus a diagonal remainder.

Like ``'full'`` over the concatenated parameters of the group, but ``S ≈ U diag(Λ) Uᵀ`` with ``U`` ``(P, r)``
orthonormal (``lowrank_U``, ``lowrank_lam``) and the exact EMA diagonal ``d`` (``lowrank_diag``), updated by
a thin SVD of ``[U Λ^{½} √β, v √(1−β)]`` (:func:`~learndyn.optim.functional.lowrank_ema_`); with the
remainder ``ρ = max(d − diag(U Λ Uᵀ), 0)`` and ``Π = I − U Uᵀ``::

    g⁻¹ = U diag(h(Λ̂)) Uᵀ + Π diag(h(ρ̂)) Π          (never a P × P matrix; rank ≥ P equals 'full')

The spectrum is updated every step (every ``statistics_every``); the coefficients ``h(Λ̂)``, ``h(ρ̂)`` and the
basis they belong to are cached (``lowrank_clam``, ``lowrank_crem``, ``lowrank_Uc``) on the root schedule.
The state is kept in the group's promoted dtype and at least float32 (a basis stored in bfloat16 is not
orthonormal to better than 1e-2, and the projector ``Π`` it defines is not one); the step counter is
``lowrank_step`` in the owner's state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from learndyn.optim import functional as Fn
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
    stat_beta,
    stat_bias_correction,
)


class LowRank(Structure):
    """Top-``rank`` eigenpairs plus a diagonal remainder for the whole group (see the module doc)."""

    name = "lowrank"
    scope = "group"
    group_state_keys = (
        "lowrank_U",
        "lowrank_lam",
        "lowrank_diag",
        "lowrank_Uc",
        "lowrank_clam",
        "lowrank_crem",
    )
    state_floor = torch.float32

    def elements(self, params: Sequence[Tensor], opts: Mapping[str, Any]) -> int:
        P = sum(p.numel() for p in params)
        r = min(opts.get("rank", 1), P)
        return 2 * P * r + 2 * P + 3 * r

    def directions(self, ctx: GroupStep) -> list[Tensor]:
        group = ctx.group
        owner = group_owner(ctx, "lowrank_U")
        dtype = group_dtype(ctx.group_params, self.state_floor)
        if "lowrank_U" not in owner:
            P = sum(p.numel() for p in ctx.group_params)
            r = min(group["rank"], P)
            like = ctx.params[0]
            owner["lowrank_U"] = like.new_zeros((P, r), dtype=dtype)
            owner["lowrank_lam"] = like.new_zeros((r,), dtype=dtype)
            owner["lowrank_diag"] = like.new_zeros((P,), dtype=dtype)
        t = advance_group_step(owner, "lowrank_step")
        if Fn.statistics_update(t, group["statistics_every"]):
            v = flat_group(ctx, ctx.vs, dtype)
            Fn.lowrank_ema_(
                owner["lowrank_U"], owner["lowrank_lam"], owner["lowrank_diag"], v, stat_beta(group)
            )
        if root_due(group, owner, "lowrank_clam", t):
            bc2 = stat_bias_correction(group, t)
            c_lam, c_rem = Fn.lowrank_coefficients(
                owner["lowrank_U"],
                owner["lowrank_lam"] / bc2,
                owner["lowrank_diag"] / bc2,
                group["alpha"],
                group["eps"],
                group["eps_mode"],
                group["eps_root"],
            )
            owner["lowrank_Uc"] = owner["lowrank_U"].clone()
            owner["lowrank_clam"], owner["lowrank_crem"] = c_lam.to(dtype), c_rem.to(dtype)
        F = flat_group(ctx, ctx.directions_in(), dtype)
        d = Fn.lowrank_direction(owner["lowrank_Uc"], owner["lowrank_clam"], owner["lowrank_crem"], F)
        return split_group(ctx, d)

    def upgrade_state(self, st: dict[str, Any]) -> None:
        if (
            "lowrank_U" in st and "lowrank_step" not in st
        ):  # saved when every parameter stepped with its group
            st["lowrank_step"] = st["step"]

    def diagonal(
        self, group: Mapping[str, Any], p: Tensor, state: Mapping[Tensor, dict[str, Any]]
    ) -> Tensor | None:
        """``max(d̂, diag(U Λ̂ Uᵀ))``."""
        return group_diagonal(
            group,
            p,
            state,
            "lowrank_U",
            "lowrank_step",
            lambda st: Fn.lowrank_diagonal(st["lowrank_U"], st["lowrank_lam"], st["lowrank_diag"]),
        )


LOWRANK = LowRank()
