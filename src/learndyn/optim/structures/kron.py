"""``'kron'``: Kronecker-factored metric per matrix-shaped parameter (Shampoo's at α = ½).

A parameter of shape ``(m, …)`` is the matrix ``(m, n)``, ``n = numel/m`` (conv weights ``(out, in·k·k)``),
with factors ``L = EMA[V Vᵀ]`` ``(m, m)`` and ``R = EMA[Vᵀ V]`` ``(n, n)`` (state ``kron_L``, ``kron_R``)
modelling ``S ≈ L^{½} ⊗ R^{½}``; each factor is raised to ``α/2`` (float64 roots, batched over same-shaped
parameters)::

    inside:   g⁻¹F = (L̂ + εI)^{−α/2} F (R̂ + εI)^{−α/2}              (cached: kron_Linv, kron_Rinv)
    outside:  g⁻¹F = U_L [(U_Lᵀ F U_R) ⊙ C] U_Rᵀ,                       (cached: kron_UL, kron_UR, kron_C)
              C = 1/(λ_L^{α/2} λ_Rᵀ^{α/2} + ε)

A side longer than ``max_factor_dim`` keeps only the diagonal of its factor (a vector). Vectors, scalars
and empty tensors are left to ``'diag'``. Stale roots (``stale_damping='trace'``) are capped through the
largest gain of the bounded metric: ``‖D‖ ≤ G ‖F‖`` (:func:`~learndyn.optim.functional.kron_stale_gain`), with
``tr L``, ``tr R`` and the statistics count at the root kept as ``kron_root_trace``, ``kron_root_count``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from learndyn.optim import functional as Fn
from learndyn.optim.matfun import COMPUTE_DTYPE
from learndyn.optim.structures.base import (
    GroupStep,
    Structure,
    root_due,
    stale_bounded,
    stat_beta,
    stat_bias_correction,
)

_MAX_BUCKET_CACHE = 64
"""Distinct buckets whose stacked buffers are kept (more are only seen when gradients come and go)."""


def _trace(X: Tensor) -> Tensor:
    """Traces of a stack of matrices ``(B, k, k)`` or of diagonal factors ``(B, k)``."""
    return X.diagonal(dim1=-2, dim2=-1).sum(-1) if X.ndim == 3 else X.sum(-1)


def kron_sides(p: Tensor, max_factor_dim: int | None) -> tuple[int, int, bool, bool]:
    """``(m, n, left_diagonal, right_diagonal)`` of a matrix-shaped parameter ``p``."""
    m = p.shape[0]
    n = p.numel() // m
    mfd = max_factor_dim
    return m, n, mfd is not None and m > mfd, mfd is not None and n > mfd


class _Stacks:
    """Persistent stacked ``(B, ...)`` buffers of one bucket of same-shaped ``'kron'`` parameters.

    The per-parameter state entries (``state[p]['kron_L']`` …) are *views* ``buf[j]`` into these, so the
    state dict, probes and resumes see ordinary per-parameter tensors while a step works on the stack
    without copying it. If a state entry is not the view handed out (a fresh ``load_state_dict``, a user's
    assignment), :meth:`stacked` stacks the entries again once and hands out new views. Not saved: an
    optimizer rebuilt from its state dict restacks on its first step.
    """

    __slots__ = ("bufs", "params", "views")

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params  # keeps the ids in the cache key alive
        self.bufs: dict[str, Tensor] = {}
        self.views: dict[str, list[Tensor]] = {}

    def install(self, name: str, buf: Tensor, sts: list[dict]) -> None:
        views = list(buf.unbind(0))
        for s, v in zip(sts, views, strict=True):
            s[name] = v
        self.bufs[name], self.views[name] = buf, views

    def stacked(self, name: str, sts: list[dict]) -> Tensor:
        views = self.views.get(name)
        if views is None or any(s.get(name) is not v for s, v in zip(sts, views, strict=True)):
            self.install(name, torch.stack([s[name] for s in sts]), sts)
        return self.bufs[name]


def _stacks(cache: dict[Any, Any], key: tuple, params: list[Tensor]) -> _Stacks:
    """The persistent stacked buffers of one bucket (same-shaped parameters, in this order)."""
    ck = (key, tuple(id(p) for p in params))
    stk = cache.get(ck)
    if stk is None:
        if len(cache) >= _MAX_BUCKET_CACHE:
            cache.clear()
        stk = cache[ck] = _Stacks(params)
    return stk


class Kron(Structure):
    """Kronecker factors per matrix-shaped parameter (see the module doc)."""

    name = "kron"
    root_power = 0.5

    def covers(self, p: Tensor) -> bool:
        return p.ndim >= 2 and p.numel() > 0

    def elements(self, params: Sequence[Tensor], opts: Mapping[str, Any]) -> int:
        elems, mfd = 0, opts.get("max_factor_dim")
        for p in params:
            m, n, _, _ = kron_sides(p, None)
            side = sum(k if (mfd is not None and k > mfd) else k * k for k in (m, n))
            elems += 2 * side + (m * n if opts.get("eps_mode") == "outside" else 0)
        return elems

    def directions(self, ctx: GroupStep) -> list[Tensor]:
        """``g⁻¹F``, batched per bucket of same-shaped parameters.

        Each bucket's factors, cached roots and eigenbases live in persistent stacked buffers
        (:class:`_Stacks`); the per-parameter state entries are views into them, so a step stacks only
        this step's ``V`` and ``F`` (``m·n`` copies) and never the ``m²``/``n²`` factors.
        """
        group, params, states = ctx.group, ctx.params, ctx.states
        keys = [kron_sides(p, group["max_factor_dim"]) for p in params]
        for p, st, (m, n, ld, rd) in zip(params, states, keys, strict=True):
            if "kron_L" not in st:
                st["kron_L"] = p.new_zeros((m,) if ld else (m, m))
                st["kron_R"] = p.new_zeros((n,) if rd else (n, n))
        buckets: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            buckets.setdefault((*k, params[i].dtype, params[i].device), []).append(i)
        inside = group["eps_mode"] == "inside"
        cache_key = "kron_Linv" if inside else "kron_C"
        every, beta_k = group["statistics_every"], stat_beta(group)
        dirs: list[Tensor | None] = [None] * len(params)
        for key, idx in buckets.items():
            m, n, ld, rd = key[:4]
            sts = [states[i] for i in idx]
            stk = _stacks(ctx.cache, key, [ctx.keys[i] for i in idx])
            L, R = stk.stacked("kron_L", sts), stk.stacked("kron_R", sts)
            # statistics (every k steps): L ← βᵏ L + (1−βᵏ) V Vᵀ, fused into one baddbmm per side
            upd = [j for j, s in enumerate(sts) if Fn.statistics_update(s["step"], every)]
            if upd:
                V = torch.stack([ctx.vs[idx[j]].reshape(m, n) for j in upd])
                if len(upd) == len(idx):
                    Fn.kron_statistics_ema_(L, R, V, beta_k)
                else:  # parameters out of step with each other (some had no gradient on some steps)
                    sel = torch.tensor(upd, device=L.device)
                    Ls, Rs = L.index_select(0, sel), R.index_select(0, sel)
                    Fn.kron_statistics_ema_(Ls, Rs, V, beta_k)
                    L.index_copy_(0, sel, Ls)
                    R.index_copy_(0, sel, Rs)
            # roots (amortised)
            todo = [j for j, s in enumerate(sts) if root_due(group, s, cache_key, s["step"])]
            if todo:
                self._roots(group, stk, sts, todo, L, R, ld, rd, inside, params[idx[0]].dtype)
            # directions
            if group["first_moment"]:
                assert ctx.exp_avgs is not None
                F = torch.stack([ctx.exp_avgs[i].reshape(m, n) for i in idx])
                beta1, enabled = group["betas"][0], group["bias_correction"]
                bc1 = [Fn.bias_correction(beta1, s["step"], enabled) for s in sts]
                if all(b == bc1[0] for b in bc1):
                    if bc1[0] != 1.0:
                        F.div_(bc1[0])
                else:
                    F.div_(torch.tensor(bc1, dtype=F.dtype, device=F.device).view(-1, 1, 1))
            else:
                F = torch.stack([ctx.grads[i].reshape(m, n) for i in idx])
            if inside:
                D = Fn.kron_direction_inside(stk.stacked("kron_Linv", sts), F, stk.stacked("kron_Rinv", sts))
            else:
                D = Fn.kron_direction_outside(
                    stk.stacked("kron_UL", sts), stk.stacked("kron_UR", sts), stk.stacked("kron_C", sts), F
                )
            if stale_bounded(group):
                self._cap_(group, sts, L, R, F, D)
            for i, d in zip(idx, D.unbind(0), strict=True):
                dirs[i] = d.reshape(params[i].shape)
        return dirs  # type: ignore[return-value]

    @staticmethod
    def _roots(
        group: Mapping[str, Any],
        stk: _Stacks,
        sts: list[dict],
        todo: list[int],
        L: Tensor,
        R: Tensor,
        ld: bool,
        rd: bool,
        inside: bool,
        dtype: torch.dtype,
    ) -> None:
        """Recompute the cached roots (inside) or eigenbases (outside) of bucket members ``todo``."""
        alpha, eps, eps_root = group["alpha"], group["eps"], group["eps_root"]
        whole = len(todo) == len(sts)
        sel = None if whole else torch.tensor(todo, device=L.device)
        bc2 = [stat_bias_correction(group, sts[j]["step"]) for j in todo]

        def hat(X: Tensor) -> Tensor:
            Xs = X if sel is None else X.index_select(0, sel)
            if all(b == bc2[0] for b in bc2):
                Xs = Xs / bc2[0]
            else:
                Xs = Xs / torch.tensor(bc2, dtype=X.dtype, device=X.device).view(-1, *[1] * (X.ndim - 1))
            return Fn.relative_damping(Xs, group["eps_rel"], diagonal=Xs.ndim == 2)  # eps_rel, per factor

        if inside:
            method = group["root_method"]
            out = {
                "kron_Linv": Fn.kron_inverse_root_stack(hat(L), alpha, eps, eps_root, method, diagonal=ld),
                "kron_Rinv": Fn.kron_inverse_root_stack(hat(R), alpha, eps, eps_root, method, diagonal=rd),
            }
        else:
            UL, lp = Fn.kron_eigenbasis_stack(hat(L), alpha, eps_root, diagonal=ld)
            UR, rp = Fn.kron_eigenbasis_stack(hat(R), alpha, eps_root, diagonal=rd)
            out = {
                "kron_UL": UL.to(dtype),
                "kron_UR": UR.to(dtype),
                "kron_C": Fn.kron_outside_coefficients(lp, rp, eps).to(dtype),
            }
        for name, buf in out.items():
            if whole:
                stk.install(name, buf, sts)
            else:  # rare: written per parameter, restacked when the bucket next reads them
                for j, x in zip(todo, buf.unbind(0), strict=True):
                    sts[j][name] = x.clone()
        # where the root was taken, for stale_damping='trace': tr L, tr R (raw) and the statistics count
        traces = torch.stack(
            [
                _trace(L if sel is None else L.index_select(0, sel)),
                _trace(R if sel is None else R.index_select(0, sel)),
            ],
            dim=-1,
        )
        for j, tr in zip(todo, traces.unbind(0), strict=True):
            sts[j]["kron_root_trace"] = tr.clone()
            sts[j]["kron_root_count"] = Fn.statistics_count(sts[j]["step"], group["statistics_every"])

    @staticmethod
    def _cap_(group: Mapping[str, Any], sts: list[dict], L: Tensor, R: Tensor, F: Tensor, D: Tensor) -> None:
        """``stale_damping='trace'``, in place on the stacked directions ``D``: on a stale step scale ``D`` to
        at most ``G‖F‖``, ``G`` the gain bound of :func:`~learndyn.optim.functional.kron_stale_gain` from the
        statistics added to each factor since its root (no extra matrix products)."""
        k = group["statistics_every"]
        counts = [Fn.statistics_count(s["step"], k) for s in sts]
        stale = [  # roots cached before this option existed carry no count: left as they are
            j for j, (s, u) in enumerate(zip(sts, counts, strict=True)) if u != s.get("kron_root_count", u)
        ]
        if not stale:
            return
        whole = len(stale) == len(sts)
        sel = None if whole else torch.tensor(stale, device=D.device)

        def pick(X: Tensor) -> Tensor:
            return X if sel is None else X.index_select(0, sel)

        now = torch.stack([_trace(pick(L)), _trace(pick(R))], dim=-1).to(COMPUTE_DTYPE)
        root = torch.stack([sts[j]["kron_root_trace"] for j in stale]).to(COMPUTE_DTYPE)
        beta, enabled = stat_beta(group), group["bias_correction"]
        pairs = {(counts[j], sts[j]["kron_root_count"]) for j in stale}
        if len(pairs) == 1:  # the usual case: the bucket's members are in step
            ((u, u0),) = pairs
            _, tau = Fn.stale_bound(now, root, u, u0, beta, enabled)
        else:  # scalars per member (counts differ within the bucket)
            tau = torch.stack(
                [
                    Fn.stale_bound(now[i], root[i], counts[j], sts[j]["kron_root_count"], beta, enabled)[1]
                    for i, j in enumerate(stale)
                ]
            )
        gain = Fn.kron_stale_gain(
            tau[:, 0], tau[:, 1], group["alpha"], group["eps"], group["eps_mode"], group["eps_root"]
        )
        Ds = pick(D)
        f_norm = torch.linalg.vector_norm(pick(F), dim=(-2, -1)).to(COMPUTE_DTYPE)
        d_norm = torch.linalg.vector_norm(Ds, dim=(-2, -1)).to(COMPUTE_DTYPE)
        scale = torch.where(d_norm > gain * f_norm, gain * f_norm / d_norm, torch.ones_like(d_norm))
        scale = scale.to(D.dtype).view(-1, 1, 1)  # applied without a host sync to test for a binding cap
        if sel is None:
            D.mul_(scale)
        else:
            D.index_copy_(0, sel, Ds * scale)

    def diagonal(
        self, group: Mapping[str, Any], p: Tensor, state: Mapping[Tensor, dict[str, Any]]
    ) -> Tensor | None:
        """The diagonal of ``L̂^{½} ⊗ R̂^{½}``."""
        st = state.get(p, {})
        if "kron_L" not in st:
            return None
        bc2 = stat_bias_correction(group, st["step"])
        return Fn.kron_sqrt_diagonal(st["kron_L"] / bc2, st["kron_R"] / bc2)


KRON = Kron()
