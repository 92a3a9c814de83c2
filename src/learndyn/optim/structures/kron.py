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

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from learndyn.optim import functional as Fn
from learndyn.optim.blocking import (
    Side,
    as_matrices,
    left_mul,
    left_statistics_ema_,
    right_mul,
    right_statistics_ema_,
    side_layout,
    stack_padded,
    trace,
)
from learndyn.optim.matfun import COMPUTE_DTYPE, eigh_psd, spectral_coefficients, symmetrize
from learndyn.optim.roots import eigh_float32, inverse_root_float32, refresh_eigenbasis
from learndyn.optim.structures.base import (
    GroupStep,
    Structure,
    apply_directions,
    real,
    root_due,
    stale_bounded,
    stat_beta,
    stat_bias_correction,
)

_MAX_BUCKET_CACHE = 64
"""Distinct buckets whose stacked buffers are kept (more are only seen when gradients come and go)."""


def kron_sides(p: Tensor, max_factor_dim: int | None) -> tuple[int, int, bool, bool]:
    """``(m, n, left_diagonal, right_diagonal)`` of a matrix-shaped parameter ``p``."""
    m = p.shape[0]
    n = p.numel() // m
    mfd = max_factor_dim
    return m, n, mfd is not None and m > mfd, mfd is not None and n > mfd


def kron_layout(p: Tensor, max_factor_dim: int | None, max_block: int | None) -> tuple[int, int, Side, Side]:
    """``(m, n, left, right)``: the matrix shape of ``p`` and the :class:`~learndyn.optim.blocking.Side` of
    each factor (diagonal beyond ``max_factor_dim``, blocks of at most ``max_block``, else full)."""
    m = p.shape[0]
    n = p.numel() // m
    return m, n, side_layout(m, max_factor_dim, max_block), side_layout(n, max_factor_dim, max_block)


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
        elems = 0
        for p in params:
            _, _, left, right = kron_layout(p, opts.get("max_factor_dim"), opts.get("max_block"))
            elems += 2 * (left.elements() + right.elements())
            if opts.get("eps_mode") == "outside":
                elems += left.padded * right.padded
        return elems

    def directions(self, ctx: GroupStep) -> list[Tensor]:
        """``g⁻¹F``, batched per bucket of same-shaped parameters (see :meth:`_bucket_directions`)."""
        dirs: list[Tensor | None] = [None] * len(ctx.params)
        for idx, D in self._bucket_directions(ctx, reuse=False):
            for i, d in zip(idx, D.unbind(0), strict=True):
                dirs[i] = d.reshape(ctx.params[i].shape)
        return dirs  # type: ignore[return-value]

    def step(self, ctx: GroupStep) -> None:
        """``q ← q·(1 − lr·wd) − lr·g⁻¹F`` bucket by bucket, as soon as each bucket's directions are known,
        so that they can live in the scratch buffers shared by all buckets (no allocation per step), with
        :func:`~learndyn.optim.structures.base.apply_directions` per bucket."""
        for idx, D in self._bucket_directions(ctx, reuse=True):
            targets, ds = [], []
            for i, d in zip(idx, D.unbind(0), strict=True):
                p = ctx.params[i]  # its (m, n) view; a non-contiguous p takes a reshaped copy of d instead
                targets.append(p.view(D.shape[1:]) if p.is_contiguous() else p)
                ds.append(d if p.is_contiguous() else d.reshape(p.shape))
            apply_directions(ctx, ds, targets)

    def _bucket_directions(self, ctx: GroupStep, reuse: bool) -> Iterator[tuple[list[int], Tensor]]:
        """Per bucket of same-shaped parameters: their positions in ``ctx`` and the stacked ``g⁻¹F``
        ``(B, m, n)`` (a view into a scratch buffer that the next bucket overwrites if ``reuse``, else a
        tensor of its own).

        Each bucket's factors, cached roots and eigenbases live in persistent stacked buffers
        (:class:`_Stacks`); the per-parameter state entries are views into them, so a step stacks only
        this step's ``V`` (and ``F`` when padded or without first moment) into scratch space and never the
        ``m²``/``n²`` factors. The intermediate products go to two scratch buffers ``(B, m_padded,
        n_padded)`` per dtype and device, shared by all buckets (:func:`_scratch`): a step allocates no
        tensor of the parameters' size. Blocked sides (``max_block``) work on the zero-padded ``V``/``F``
        with one batched product over all blocks.
        """
        group, params, states = ctx.group, ctx.params, ctx.states
        mfd, mb = group["max_factor_dim"], group.get("max_block")
        keys = [kron_layout(p, mfd, mb) for p in params]
        for p, st, (_, _, left, right) in zip(params, states, keys, strict=True):
            if "kron_L" not in st:
                st["kron_L"] = p.new_zeros(left.factor_shape())
                st["kron_R"] = p.new_zeros(right.factor_shape())
        buckets: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            buckets.setdefault((*k, params[i].dtype, params[i].device), []).append(i)
        inside = group["eps_mode"] == "inside"
        cache_key = "kron_Linv" if inside else "kron_C"
        every, beta_k = group["statistics_every"], stat_beta(group)
        for key, idx in buckets.items():
            m, n, left, right = key[:4]
            sts = [states[i] for i in idx]
            stk = _stacks(ctx.cache, key, [ctx.keys[i] for i in idx])
            like = params[idx[0]]
            slots = [_scratch(ctx.cache, s, (len(idx), left.padded, right.padded), like) for s in (0, 1)]
            L, R = stk.stacked("kron_L", sts), stk.stacked("kron_R", sts)
            # statistics (every k steps): L ← βᵏ L + (1−βᵏ) V Vᵀ, fused into one baddbmm per side
            upd = [j for j, s in enumerate(sts) if Fn.statistics_update(s["step"], every)]
            if upd:
                V = stack_padded([ctx.vs[idx[j]] for j in upd], m, n, left, right, slots[0][: len(upd)])
                work = slots[1][: len(upd)]
                if len(upd) == len(idx):
                    left_statistics_ema_(L, V, left, beta_k)
                    right_statistics_ema_(R, V, right, beta_k, work)
                else:  # parameters out of step with each other (some had no gradient on some steps)
                    sel = torch.tensor(upd, device=L.device)
                    Ls, Rs = L.index_select(0, sel), R.index_select(0, sel)
                    left_statistics_ema_(Ls, V, left, beta_k)
                    right_statistics_ema_(Rs, V, right, beta_k, work)
                    L.index_copy_(0, sel, Ls)
                    R.index_copy_(0, sel, Rs)
            # roots (amortised)
            todo = [j for j, s in enumerate(sts) if root_due(group, s, cache_key, s["step"])]
            if todo:
                self._roots(group, stk, sts, todo, L, R, left, right, inside, like.dtype)
            # directions
            # F: the first moments, kept in a stacked buffer (state views, updated in place by the
            # optimizer), so no copy; their bias correction 1/(1−β₁ᵗ) is applied to D (linear in F)
            scale: Tensor | float = 1.0
            if group["first_moment"]:
                F = stk.stacked("exp_avg", sts).view(len(idx), m, n)
                beta1, enabled = group["betas"][0], group["bias_correction"]
                bc1 = [Fn.bias_correction(beta1, s["step"], enabled) for s in sts]
                if all(b == bc1[0] for b in bc1):
                    scale = 1.0 / bc1[0]
                else:
                    scale = 1.0 / torch.tensor(bc1, dtype=F.dtype, device=F.device).view(-1, 1, 1)
                Fp = F if F.shape[-2:] == slots[0].shape[-2:] else stack_padded(
                    list(F.unbind(0)), m, n, left, right, slots[0]
                )
            else:
                Fp = stack_padded([ctx.grads[i] for i in idx], m, n, left, right, slots[0])
                F = Fp[:, :m, :n]
            stale = self._stale(group, sts) if stale_bounded(group) else {}
            f_norm = torch.linalg.vector_norm(F, dim=(-2, -1)) if stale else None  # before Fp is overwritten
            if inside:
                Linv, Rinv = stk.stacked("kron_Linv", sts), stk.stacked("kron_Rinv", sts)
                T = left_mul(Linv, Fp, left, out=_other(slots, Fp))
                D = right_mul(T, Rinv, right, out=_other(slots, T))
            else:
                UL, UR = stk.stacked("kron_UL", sts), stk.stacked("kron_UR", sts)
                D = _direction_outside(UL, UR, stk.stacked("kron_C", sts), Fp, left, right, slots)
            if D.shape[-2:] != (m, n):
                D = D[:, :m, :n]
            if stale:
                assert f_norm is not None
                cap = self._cap(group, sts, stale, L, R, f_norm, D)
                if cap is not None:
                    scale = cap * scale
            if isinstance(scale, Tensor) or scale != 1.0:
                D = D.mul_(scale) if _in_scratch(slots, D) else D * scale
            if not reuse and _in_scratch(slots, D):
                D = D.clone()
            yield idx, D

    @staticmethod
    def _roots(
        group: Mapping[str, Any],
        stk: _Stacks,
        sts: list[dict],
        todo: list[int],
        L: Tensor,
        R: Tensor,
        left: Side,
        right: Side,
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

        single = group.get("root_dtype", "float64") == "float32"
        every = group.get("eigh_every", 1)
        amortised = every > 1 and (not inside or group["root_method"] == "eigh")
        basis_keys = ("kron_QL", "kron_QR") if inside else ("kron_UL", "kron_UR")
        # amortised roots: a full eigendecomposition on every `eigh_every`-th root, else a refresh of the
        # cached eigenbasis (whole buckets that have one only; members of a bucket are normally in step)
        refresh = (
            amortised
            and whole
            and sts[0].get("kron_root_index", 0) % every != 0
            and all(k in s for s in sts for k in basis_keys)
        )

        def decompose(X: Tensor, name: str) -> tuple[Tensor, Tensor]:
            """``(λ, Q)`` of a stack of (blocked) factors: eigh, or one refresh of the cached basis."""
            mats = as_matrices(X)
            if refresh:
                Q0 = stk.stacked(name, sts)
                Q0 = as_matrices(Q0).to(torch.float32 if single else COMPUTE_DTYPE)
                return refresh_eigenbasis(mats, Q0)
            if single:
                return eigh_float32(mats)
            return eigh_psd(mats)

        out: dict[str, Tensor] = {}
        if inside:
            method = group["root_method"]

            def inv_root(X: Tensor, side: Side, name: str) -> Tensor:
                Xh = hat(X)
                if side.kind == "diag":
                    return Fn.kron_inverse_root_stack(Xh, alpha, eps, eps_root, method, diagonal=True)
                if amortised:
                    lam, Q = decompose(Xh, name)
                    out[name] = Q.view(Xh.shape)
                    h = spectral_coefficients(lam, alpha / 2, eps, "inside", eps_root).to(Q.dtype)
                    return symmetrize((Q * h.unsqueeze(-2)) @ Q.mT).to(Xh.dtype).view_as(Xh)
                if single and method == "eigh":
                    return inverse_root_float32(as_matrices(Xh), alpha / 2, eps, eps_root).view_as(Xh)
                return Fn.kron_inverse_root_stack(as_matrices(Xh), alpha, eps, eps_root, method).view_as(Xh)

            out["kron_Linv"] = inv_root(L, left, "kron_QL")
            out["kron_Rinv"] = inv_root(R, right, "kron_QR")
        else:

            def basis(X: Tensor, side: Side, name: str) -> tuple[Tensor, Tensor]:
                Xh = hat(X)
                if side.kind == "diag":
                    return Fn.kron_eigenbasis_stack(Xh, alpha, eps_root, diagonal=True)
                if amortised or single:
                    lam, U = decompose(Xh, name)
                    return U.view(Xh.shape), (lam + eps_root).pow(alpha / 2).reshape(Xh.shape[0], -1)
                U, lp = Fn.kron_eigenbasis_stack(as_matrices(Xh), alpha, eps_root)
                return U.view(Xh.shape), lp.reshape(Xh.shape[0], -1)

            UL, lp = basis(L, left, "kron_UL")
            UR, rp = basis(R, right, "kron_UR")
            out = {
                "kron_UL": UL.to(dtype),
                "kron_UR": UR.to(dtype),
                "kron_C": Fn.kron_outside_coefficients(lp, rp, eps).to(dtype),
            }
        if amortised:
            for j in todo:
                sts[j]["kron_root_index"] = sts[j].get("kron_root_index", 0) + 1
        for name, buf in out.items():
            if whole:
                stk.install(name, buf, sts)
            else:  # rare: written per parameter, restacked when the bucket next reads them
                for j, x in zip(todo, buf.unbind(0), strict=True):
                    sts[j][name] = x.clone()
        # where the root was taken, for stale_damping='trace': tr L, tr R (raw) and the statistics count
        traces = torch.stack(
            [
                trace(L if sel is None else L.index_select(0, sel)),
                trace(R if sel is None else R.index_select(0, sel)),
            ],
            dim=-1,
        )
        for j, tr in zip(todo, traces.unbind(0), strict=True):
            sts[j]["kron_root_trace"] = tr.clone()
            sts[j]["kron_root_count"] = Fn.statistics_count(sts[j]["step"], group["statistics_every"])

    @staticmethod
    def _stale(group: Mapping[str, Any], sts: list[dict]) -> dict[int, int]:
        """Bucket members whose cached roots are stale (statistics added since the root), with their
        statistics count now."""
        k = group["statistics_every"]
        return {  # roots cached before this option existed carry no count: left as they are
            j: u
            for j, s in enumerate(sts)
            if (u := Fn.statistics_count(s["step"], k)) != s.get("kron_root_count", u)
        }

    @staticmethod
    def _cap(
        group: Mapping[str, Any],
        sts: list[dict],
        stale: dict[int, int],
        L: Tensor,
        R: Tensor,
        f_norm: Tensor,
        D: Tensor,
    ) -> Tensor | None:
        """``stale_damping='trace'``: the factors ``(B, 1, 1)`` that scale the stacked directions ``D`` of the
        ``stale`` members (:meth:`_stale`: member → statistics count) to at most ``G‖F‖`` (1 elsewhere;
        ``f_norm``: ``‖F‖`` of every member), ``G`` the gain bound of
        :func:`~learndyn.optim.functional.kron_stale_gain` from the statistics added to each factor since its
        root (no extra matrix products); ``None`` when nothing is to be scaled."""
        whole = len(stale) == len(sts)
        sel = None if whole else torch.tensor(list(stale), device=D.device)

        def pick(X: Tensor) -> Tensor:
            return X if sel is None else X.index_select(0, sel)

        now = torch.stack([trace(pick(L)), trace(pick(R))], dim=-1).to(COMPUTE_DTYPE)
        root = torch.stack([sts[j]["kron_root_trace"] for j in stale]).to(COMPUTE_DTYPE)
        beta, enabled = stat_beta(group), group["bias_correction"]
        pairs = {(u, sts[j]["kron_root_count"]) for j, u in stale.items()}
        if len(pairs) == 1:  # the usual case: the bucket's members are in step
            ((u, u0),) = pairs
            _, tau = Fn.stale_bound(now, root, u, u0, beta, enabled)
        else:  # scalars per member (counts differ within the bucket)
            tau = torch.stack(
                [
                    Fn.stale_bound(now[i], root[i], u, sts[j]["kron_root_count"], beta, enabled)[1]
                    for i, (j, u) in enumerate(stale.items())
                ]
            )
        gain = Fn.kron_stale_gain(
            tau[:, 0], tau[:, 1], group["alpha"], group["eps"], group["eps_mode"], group["eps_root"]
        )
        f_norm = pick(f_norm).to(COMPUTE_DTYPE)
        d_norm = torch.linalg.vector_norm(pick(D), dim=(-2, -1)).to(COMPUTE_DTYPE)
        binding = d_norm > gain * f_norm
        if D.device.type == "cpu" and not bool(binding.any()):  # a free test on a CPU: skip the product
            return None
        scale = torch.where(binding, gain * f_norm / d_norm, torch.ones_like(d_norm)).to(D.dtype)
        if sel is not None:
            scale = torch.ones(D.shape[0], dtype=D.dtype, device=D.device).index_copy_(0, sel, scale)
        return scale.view(-1, 1, 1)

    def diagonal(
        self, group: Mapping[str, Any], p: Tensor, state: Mapping[Tensor, dict[str, Any]]
    ) -> Tensor | None:
        """The diagonal of ``L̂^{½} ⊗ R̂^{½}`` (blocked factors: of their block-diagonal matrices)."""
        st = state.get(p, {})
        if "kron_L" not in st:
            return None
        bc2 = stat_bias_correction(group, st["step"])
        m, n, _, _ = kron_sides(real(p), None)  # complex p: its real view, as the step sees it
        left, right = _sqrt_diagonal(st["kron_L"] / bc2, m), _sqrt_diagonal(st["kron_R"] / bc2, n)
        return (left.unsqueeze(-1) * right.unsqueeze(-2)).to(st["kron_L"].dtype)


def _sqrt_diagonal(X: Tensor, k: int) -> Tensor:
    """``diag(X^{½})`` (float64, length ``k``) of one factor: a diagonal ``(k,)``, a matrix ``(k, k)`` or
    blocks ``(nb, b, b)`` (each block on its own: ``diag(blockdiag(X_i)^{½})``, padding dropped)."""
    if X.ndim == 1:
        return X.to(COMPUTE_DTYPE).clamp_min(0).sqrt()
    evals, evecs = eigh_psd(X)
    return (evecs.square() * evals.sqrt().unsqueeze(-2)).sum(-1).reshape(-1)[:k]


def _direction_outside(
    UL: Tensor, UR: Tensor, C: Tensor, F: Tensor, left: Side, right: Side, slots: list[Tensor]
) -> Tensor:
    """``g⁻¹F = U_L [(U_Lᵀ F U_R) ⊙ C] U_Rᵀ`` for stacks of (blocked) eigenbases; a diagonal side has an
    empty basis (the identity). The products alternate between the two scratch buffers ``slots``."""
    X = F
    if left.kind != "diag":
        X = left_mul(UL.mT, X, left, out=_other(slots, X))
    if right.kind != "diag":
        X = right_mul(X, UR, right, out=_other(slots, X))
    X = X.mul_(C) if _in_scratch(slots, X) else X * C
    if left.kind != "diag":
        X = left_mul(UL, X, left, out=_other(slots, X))
    if right.kind != "diag":
        X = right_mul(X, UR.mT, right, out=_other(slots, X))
    return X


def _scratch(cache: dict[Any, Any], slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A reusable contiguous buffer of ``shape`` (``slot`` 0 or 1) of ``like``'s dtype and device, shared by
    all buckets of one optimizer: grown when a bucket needs more, never shrunk. Scratch memory is two
    buffers the size of the largest bucket (padded), the transients a step would otherwise allocate."""
    store = cache.setdefault("scratch", {})
    key = (slot, like.dtype, like.device)
    numel = math.prod(shape)
    buf = store.get(key)
    if buf is None or buf.numel() < numel:
        buf = store[key] = like.new_empty(numel)
    return buf[:numel].view(shape)


def _in_scratch(slots: list[Tensor], X: Tensor) -> bool:
    return any(X.data_ptr() == s.data_ptr() for s in slots)


def _other(slots: list[Tensor], X: Tensor) -> Tensor:
    """The scratch buffer that ``X`` does not live in (``slots[0]`` if ``X`` is in neither)."""
    return slots[1] if X.data_ptr() == slots[0].data_ptr() else slots[0]


KRON = Kron()
