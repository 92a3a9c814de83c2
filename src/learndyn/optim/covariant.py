"""``CovariantGD``: the geometric optimizer family as a :class:`torch.optim.Optimizer`.

The math lives in :mod:`learndyn.optim.functional` (moments → metric → power → precondition) and
:mod:`learndyn.optim.matfun` (matrix powers); this module owns the state, the parameter groups, the
amortisation of matrix roots and the argument checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from learndyn.optim import functional as Fn
from learndyn.optim.matfun import fractional_exponent, inverse_metric
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

STRUCTURES = ("diag", "kron", "block", "full", "lowrank")
MOMENTS = ("second", "covariance")
EPS_MODES = ("inside", "outside")
ROOT_METHODS = ("eigh", "newton")
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""2 GiB: the most the metric state of one parameter group may take before construction refuses."""

_OWNER = "CovariantGD"


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError  # pragma: no cover


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise LearndynValueError(f"{_OWNER}.{name}={value!r} is not allowed; allowed: True, False")
    return value


def validate_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Check every ``CovariantGD`` option of one parameter group and return them normalised.

    Raises:
        LearndynValueError: one line naming the option, the bad value and what is allowed.
    """
    o = dict(opts)
    o["lr"] = check_real("lr", o["lr"], low=0.0, owner=_OWNER)
    o["alpha"] = check_real("alpha", o["alpha"], low=0.0, high=1.0, owner=_OWNER)
    check_choice("structure", o["structure"], STRUCTURES, owner=_OWNER)
    check_choice("moment", o["moment"], MOMENTS, owner=_OWNER)
    check_choice("eps_mode", o["eps_mode"], EPS_MODES, owner=_OWNER)
    check_choice("root_method", o["root_method"], ROOT_METHODS, owner=_OWNER)
    betas = o["betas"]
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise LearndynValueError(
            f"{_OWNER}.betas={betas!r} is not allowed; allowed: a pair (beta1, beta2) with 0 <= beta < 1"
        )
    o["betas"] = tuple(
        check_real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True, owner=_OWNER)
        for i, b in enumerate(betas)
    )
    o["eps"] = check_real("eps", o["eps"], low=0.0, owner=_OWNER)
    o["eps_root"] = check_real("eps_root", o["eps_root"], low=0.0, owner=_OWNER)
    o["weight_decay"] = check_real("weight_decay", o["weight_decay"], low=0.0, owner=_OWNER)
    for name in ("first_moment", "bias_correction", "decoupled_weight_decay"):
        _check_bool(name, o[name])
    check_int("precondition_every", o["precondition_every"], low=1, owner=_OWNER)
    check_int("rank", o["rank"], low=1, owner=_OWNER)
    if o["max_factor_dim"] is not None:
        check_int("max_factor_dim", o["max_factor_dim"], low=1, owner=_OWNER)
    if o["memory_budget"] is not None:
        o["memory_budget"] = check_real("memory_budget", o["memory_budget"], low=0.0, owner=_OWNER)
    if o["root_method"] == "newton" and o["structure"] != "diag" and o["alpha"] > 0:
        if o["structure"] == "lowrank":
            pass  # lowrank's powers are elementwise on its factored spectrum; no matrix root is taken
        elif o["eps_mode"] != "inside":
            raise LearndynValueError(
                f"{_OWNER}.eps_mode={o['eps_mode']!r} is not allowed with root_method='newton'; "
                "allowed: 'inside' (or root_method='eigh')"
            )
        elif o["eps"] + o["eps_root"] == 0.0:
            raise LearndynValueError(
                f"{_OWNER}.eps=0.0 is not allowed with root_method='newton'; allowed: eps > 0 "
                "(the iteration needs S + eps*I positive definite), or root_method='eigh'"
            )
        else:
            exponent = o["alpha"] / 2 if o["structure"] == "kron" else o["alpha"]
            fractional_exponent(exponent, name=f"{_OWNER}.alpha" + ("/2" if o["structure"] == "kron" else ""))
    return o


def memory_requirement(structure: str, params: list[Tensor], opts: dict[str, Any]) -> int:
    """Bytes of metric state (statistic + cached inverse root) a group of ``params`` needs."""
    if not params:
        return 0
    item = params[0].element_size()
    P = sum(p.numel() for p in params)
    if structure == "full":
        elems = 2 * P * P
    elif structure == "block":
        elems = 2 * sum(p.numel() ** 2 for p in params)
    elif structure == "kron":
        elems, mfd = 0, opts.get("max_factor_dim")
        for p in params:
            if p.ndim >= 2:
                m, n = p.shape[0], p.numel() // p.shape[0]
                side = sum(k if (mfd is not None and k > mfd) else k * k for k in (m, n))
                elems += 2 * side + (m * n if opts.get("eps_mode") == "outside" else 0)
            else:
                elems += p.numel()
    elif structure == "lowrank":
        r = min(opts.get("rank", 1), P)
        elems = 2 * P * r + 2 * P + 3 * r
    else:
        elems = P
    return elems * item


class CovariantGD(Optimizer):
    r"""Covariant gradient descent ``q ← q − lr · g⁻¹ F`` with the metric ``g = (Ŝ + εI)^α``.

    Per step ``t`` (per parameter group; ``∇`` the gradient, plus ``weight_decay·q`` when
    ``decoupled_weight_decay=False``)::

        m  ← β₁ m + (1−β₁) ∇                               (if first_moment or moment='covariance')
        v  = ∇            (moment='second')   or   ∇ − m   (moment='covariance', AdaBelief-style)
        S  ← β₂ S + (1−β₂) v vᵀ                            (restricted to `structure`)
        Ŝ  = S/(1−β₂ᵗ),  F = m/(1−β₁ᵗ) (first_moment) or ∇  (no division if bias_correction=False)
        g  = (Ŝ + (ε_r+ε) I)^α  (eps_mode='inside')   or   (Ŝ + ε_r I)^α + ε I  ('outside')
        q  ← q·(1 − lr·weight_decay)                        (if decoupled_weight_decay, AdamW-style)
        q  ← q − lr · g⁻¹ F

    ``ε_r`` is ``eps_root`` (0 by default). The metric structures (exact formulas in
    :mod:`learndyn.optim.functional`):

    ``'diag'``
        elementwise ``S``; α = ½, ``eps_mode='outside'``: Adam/AdamW (RMSprop without first moment and bias
        correction); ``moment='covariance'``: AdaBelief; α = 0: SGD.
    ``'kron'``
        per matrix-shaped parameter (conv weights as ``(out, in·k·k)``) Kronecker factors ``L = EMA[V Vᵀ]``,
        ``R = EMA[Vᵀ V]`` with ``S ≈ L^{½} ⊗ R^{½}``, each factor raised to ``α/2`` (Shampoo's ¼ at α = ½);
        ``ε`` damps each factor for ``'inside'``. Vectors and scalars use ``'diag'``. A side longer than
        ``max_factor_dim`` keeps only its diagonal.
    ``'block'``
        a full ``(n, n)`` matrix per parameter tensor of ``n`` elements.
    ``'full'``
        one ``(P, P)`` matrix for all parameters of the *parameter group* (groups never share a metric;
        put the whole model in one group for a whole-model metric). Gradients that are ``None`` count as 0.
    ``'lowrank'``
        like ``'full'`` but ``S`` kept as ``rank`` eigenpairs ``U (P×r)`` plus a diagonal remainder,
        ``g⁻¹ = U h(Λ̂) Uᵀ + Π h(ρ̂) Π`` with ``Π = I − UUᵀ``; never a ``P × P`` matrix. ``rank ≥ P`` equals
        ``'full'``.

    Matrix roots (kron/block/full) are eigendecompositions (``root_method='eigh'``) or a matmul-only coupled
    Newton iteration (``'newton'``; needs ``eps_mode='inside'``, ``eps > 0`` and ``α`` (kron: ``α/2``) a
    fraction with denominator ≤ 64), in float64, batched over same-shaped matrices; they are recomputed on
    steps ``1, k+1, 2k+1, …`` for ``precondition_every=k`` and the cached inverse roots (including their
    bias correction) reused in between. Diagonal powers (``'diag'``, kron's vectors) are elementwise and
    recomputed every step; lowrank's factored spectrum is updated every step and its coefficients cached.

    Args:
        params: parameters or parameter groups (dicts; any option below may be set per group).
        lr: learning rate ``≥ 0``.
        alpha: metric power in ``[0, 1]``: 0 = SGD, ½ = Adam-like (scale-free), 1 = natural-gradient-like.
        structure: ``'diag' | 'kron' | 'block' | 'full' | 'lowrank'``.
        moment: ``'second'`` (``E[∇∇ᵀ]``) or ``'covariance'`` (``E[∇∇ᵀ] − E[∇]E[∇]ᵀ``).
        betas: ``(β₁, β₂)`` in ``[0, 1)``, EMA coefficients of first and second moment (``β = τ/(1+τ)``).
        eps: damping ``ε ≥ 0``, placed by ``eps_mode``.
        eps_mode: ``'inside'``: ``g = (Ŝ+εI)^α`` (the design's definition, default);
            ``'outside'``: ``g = Ŝ^α + εI`` (Adam's placement).
        first_moment: ``F = m̂`` (True) or the raw gradient (False).
        bias_correction: divide the EMAs by ``1 − βᵗ``.
        weight_decay: ``≥ 0``; decoupled (AdamW) by default, see ``decoupled_weight_decay``.
        precondition_every: recompute matrix roots every ``k ≥ 1`` steps.
        root_method: ``'eigh'`` or ``'newton'``.
        rank: ``r ≥ 1`` eigenpairs kept by ``'lowrank'``.
        memory_budget: bytes the metric state of one group may take (``None``: no limit); construction
            raises ``ValueError`` naming the parameter count and the need when exceeded.
        decoupled_weight_decay: AdamW-style decay (True) or L2 added to the gradient (False, torch Adam/SGD).
        eps_root: extra damping ``ε_r ≥ 0`` added to ``Ŝ`` inside the power in both modes (optax's
            ``eps_root``; AdaBelief's accumulated ε is ``eps_root = eps/(1−β₂)``).
        max_factor_dim: ``'kron'`` sides longer than this keep a diagonal factor (``None``: never).

    Example::

        opt = CovariantGD(model.parameters(), lr=1e-3, alpha=0.5, structure="kron")
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        alpha: float = 0.5,
        structure: str = "diag",
        moment: str = "second",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eps_mode: str = "inside",
        first_moment: bool = True,
        bias_correction: bool = True,
        weight_decay: float = 0.0,
        precondition_every: int = 1,
        root_method: str = "eigh",
        rank: int = 8,
        memory_budget: float | None = DEFAULT_MEMORY_BUDGET,
        *,
        decoupled_weight_decay: bool = True,
        eps_root: float = 0.0,
        max_factor_dim: int | None = None,
    ) -> None:
        defaults = validate_options(
            dict(
                lr=lr,
                alpha=alpha,
                structure=structure,
                moment=moment,
                betas=betas,
                eps=eps,
                eps_mode=eps_mode,
                first_moment=first_moment,
                bias_correction=bias_correction,
                weight_decay=weight_decay,
                precondition_every=precondition_every,
                root_method=root_method,
                rank=rank,
                memory_budget=memory_budget,
                decoupled_weight_decay=decoupled_weight_decay,
                eps_root=eps_root,
                max_factor_dim=max_factor_dim,
            )
        )
        super().__init__(params, defaults)

    # ------------------------------------------------------------------------------------ groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after validating its options and its metric's memory need (see the class doc)."""
        group = dict(param_group)
        ps = group["params"]
        if isinstance(ps, Tensor):
            ps = [ps]
        elif not isinstance(ps, set):  # a set is left for torch to reject (unordered)
            ps = list(ps)
        group["params"] = ps
        opts = validate_options({**self.defaults, **{k: v for k, v in group.items() if k != "params"}})
        group.update({k: opts[k] for k in group if k != "params"})
        if not isinstance(ps, set):
            for p in ps:
                if isinstance(p, Tensor) and (p.is_complex() or not p.is_floating_point()):
                    raise LearndynValueError(
                        f"{_OWNER}: a parameter has dtype {p.dtype}; allowed: real floating-point parameters"
                    )
            structure = opts["structure"]
            tensors = [p for p in ps if isinstance(p, Tensor)]
            if structure in ("full", "lowrank") and len({(p.dtype, p.device) for p in tensors}) > 1:
                raise LearndynValueError(
                    f"{_OWNER}.structure={structure!r} needs one dtype and device per parameter group; "
                    "allowed: put parameters of different dtype/device in separate groups"
                )
            budget = opts["memory_budget"]
            need = memory_requirement(structure, tensors, opts)
            if budget is not None and need > budget:
                P = sum(p.numel() for p in tensors)
                raise LearndynValueError(
                    f"{_OWNER}.structure={structure!r} for {P:,} parameters needs {need:,} bytes "
                    f"({_human(need)}) of metric state, more than memory_budget={int(budget):,} bytes "
                    f"({_human(budget)}); allowed: a cheaper structure ('diag', 'kron', 'lowrank'), "
                    "max_factor_dim for 'kron', or a larger memory_budget"
                )
        super().add_param_group(group)

    # -------------------------------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._group_step(group)
        return loss

    def _group_step(self, group: dict[str, Any]) -> None:
        structure = group["structure"]
        if structure in ("full", "lowrank"):
            params = list(group["params"])
            if all(p.grad is None for p in params):
                return
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        else:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                return
            grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"{_OWNER} does not support sparse gradients")
        states = [self.state[p] for p in params]
        need_m = group["first_moment"] or group["moment"] == "covariance"
        for p, st in zip(params, states, strict=True):
            if "step" not in st:
                st["step"] = 0
            if need_m and "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1

        lr, wd = group["lr"], group["weight_decay"]
        beta1 = group["betas"][0]
        if wd and not group["decoupled_weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=wd)
        exp_avgs = [st["exp_avg"] for st in states] if need_m else None
        if exp_avgs is not None:
            Fn.foreach_ema_(exp_avgs, grads, beta1)
        vs = Fn.moment_vectors(grads, exp_avgs, group["moment"])

        if structure == "diag":
            self._diag_update(group, params, grads, exp_avgs, vs, states)
            return
        if structure == "kron":
            mat = [i for i, p in enumerate(params) if p.ndim >= 2]
            vec = [i for i, p in enumerate(params) if p.ndim < 2]
            if vec:
                sub = lambda xs: [xs[i] for i in vec] if xs is not None else None  # noqa: E731
                self._diag_update(group, sub(params), sub(grads), sub(exp_avgs), sub(vs), sub(states))
            if not mat:
                return
            params, grads, vs, states = ([xs[i] for i in mat] for xs in (params, grads, vs, states))
            exp_avgs = [exp_avgs[i] for i in mat] if exp_avgs is not None else None
        Fs = self._direction_inputs(group, grads, exp_avgs, states)
        if structure == "kron":
            dirs = self._kron_directions(group, params, vs, Fs, states)
        elif structure == "block":
            dirs = self._block_directions(group, params, vs, Fs, states)
        elif structure == "full":
            dirs = self._full_directions(group, params, vs, Fs, states)
        else:
            dirs = self._lowrank_directions(group, params, vs, Fs, states)
        if structure in ("full", "lowrank"):  # parameters without gradient are not moved
            keep = [i for i, p in enumerate(params) if p.grad is not None]
            params, dirs = [params[i] for i in keep], [dirs[i] for i in keep]
        if wd and group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        torch._foreach_add_(params, dirs, alpha=-lr)

    def _direction_inputs(
        self, group: dict[str, Any], grads: list[Tensor], exp_avgs: list[Tensor] | None, states: list[dict]
    ) -> list[Tensor]:
        """``F`` per parameter: ``m/(1−β₁ᵗ)`` or the gradient."""
        if not group["first_moment"]:
            return grads
        assert exp_avgs is not None
        beta1 = group["betas"][0]
        return [
            m / Fn.bias_correction(beta1, st["step"], group["bias_correction"])
            for m, st in zip(exp_avgs, states, strict=True)
        ]

    @staticmethod
    def _recompute(group: dict[str, Any], st: dict[str, Any], cache_key: str) -> bool:
        return cache_key not in st or (st["step"] - 1) % group["precondition_every"] == 0

    def _bc2(self, group: dict[str, Any], step: int) -> float:
        return Fn.bias_correction(group["betas"][1], step, group["bias_correction"])

    # ---------------------------------------------------------------------------------- structures

    def _diag_update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor] | None,
        vs: list[Tensor],
        states: list[dict],
    ) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        for st, p in zip(states, params, strict=True):
            if "exp_avg_sq" not in st:
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buckets: dict[int, list[int]] = {}
        for i, st in enumerate(states):
            buckets.setdefault(st["step"], []).append(i)
        for step, idx in buckets.items():
            ps = [params[i] for i in idx]
            sq = [states[i]["exp_avg_sq"] for i in idx]
            Fn.foreach_ema_square_(sq, [vs[i] for i in idx], beta2)
            metric = Fn.foreach_diag_metric(
                sq,
                bc2=self._bc2(group, step),
                alpha=group["alpha"],
                eps=group["eps"],
                eps_mode=group["eps_mode"],
                eps_root=group["eps_root"],
            )
            if group["first_moment"]:
                assert exp_avgs is not None
                F = [exp_avgs[i] for i in idx]
                step_size = lr / Fn.bias_correction(beta1, step, group["bias_correction"])
            else:
                F, step_size = [grads[i] for i in idx], lr
            if wd and group["decoupled_weight_decay"]:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            Fn.foreach_diag_precondition_(ps, F, metric, step_size)

    def _kron_sides(self, group: dict[str, Any], p: Tensor) -> tuple[int, int, bool, bool]:
        m = p.shape[0]
        n = p.numel() // m
        mfd = group["max_factor_dim"]
        return m, n, mfd is not None and m > mfd, mfd is not None and n > mfd

    def _kron_directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        vs: list[Tensor],
        Fs: list[Tensor],
        states: list[dict],
    ) -> list[Tensor]:
        beta2, alpha, eps = group["betas"][1], group["alpha"], group["eps"]
        keys = [self._kron_sides(group, p) for p in params]
        for p, st, (m, n, ld, rd) in zip(params, states, keys, strict=True):
            if "kron_L" not in st:
                st["kron_L"] = p.new_zeros((m,) if ld else (m, m))
                st["kron_R"] = p.new_zeros((n,) if rd else (n, n))
        buckets: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            buckets.setdefault((*k, params[i].dtype, params[i].device), []).append(i)
        # statistics: one batched Gram product per bucket of same-shaped parameters
        for (m, n, ld, rd, *_), idx in buckets.items():
            V = torch.stack([vs[i].reshape(m, n) for i in idx])
            left, right = Fn.kron_statistics(V, ld, rd)
            Fn.foreach_ema_([states[i]["kron_L"] for i in idx], list(left.unbind(0)), beta2)
            Fn.foreach_ema_([states[i]["kron_R"] for i in idx], list(right.unbind(0)), beta2)
        # roots (amortised), batched over same-shaped factors
        inside = group["eps_mode"] == "inside"
        cache_key = "kron_Linv" if inside else "kron_C"
        todo = [i for i, st in enumerate(states) if self._recompute(group, st, cache_key)]
        if todo:
            factors: list[Tensor] = []
            for i in todo:
                bc2 = self._bc2(group, states[i]["step"])
                factors += [states[i]["kron_L"] / bc2, states[i]["kron_R"] / bc2]
            if inside:
                roots = Fn.kron_inverse_roots(factors, alpha, eps, group["eps_root"], group["root_method"])
                for j, i in enumerate(todo):
                    states[i]["kron_Linv"], states[i]["kron_Rinv"] = roots[2 * j], roots[2 * j + 1]
            else:
                bases = Fn.kron_eigenbasis(factors, alpha, group["eps_root"])
                for j, i in enumerate(todo):
                    (UL, lp), (UR, rp) = bases[2 * j], bases[2 * j + 1]
                    dt = params[i].dtype
                    states[i]["kron_UL"], states[i]["kron_UR"] = UL.to(dt), UR.to(dt)
                    states[i]["kron_C"] = Fn.kron_outside_coefficients(lp, rp, eps).to(dt)
        # directions, batched per bucket
        dirs: list[Tensor | None] = [None] * len(params)
        for (m, n, *_), idx in buckets.items():
            F = torch.stack([Fs[i].reshape(m, n) for i in idx])
            st = [states[i] for i in idx]
            if inside:
                L = torch.stack([s["kron_Linv"] for s in st])
                R = torch.stack([s["kron_Rinv"] for s in st])
                D = Fn.kron_direction_inside(L, F, R)
            else:
                UL = torch.stack([s["kron_UL"] for s in st])
                UR = torch.stack([s["kron_UR"] for s in st])
                C = torch.stack([s["kron_C"] for s in st])
                D = Fn.kron_direction_outside(UL, UR, C, F)
            for i, d in zip(idx, D.unbind(0), strict=True):
                dirs[i] = d.reshape(params[i].shape)
        return dirs  # type: ignore[return-value]

    def _inverse_metric(self, group: dict[str, Any], S_hat: Tensor) -> Tensor:
        return inverse_metric(
            S_hat, group["alpha"], group["eps"], group["eps_mode"], group["eps_root"], group["root_method"]
        )

    def _block_directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        vs: list[Tensor],
        Fs: list[Tensor],
        states: list[dict],
    ) -> list[Tensor]:
        beta2 = group["betas"][1]
        for p, st in zip(params, states, strict=True):
            if "block_S" not in st:
                st["block_S"] = p.new_zeros((p.numel(), p.numel()))
        buckets: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.numel(), p.dtype, p.device), []).append(i)
        for idx in buckets.values():
            V = torch.stack([vs[i].reshape(-1) for i in idx])
            Fn.foreach_ema_(
                [states[i]["block_S"] for i in idx], list(V.unsqueeze(-1) * V.unsqueeze(-2)), beta2
            )
        todo = [i for i, st in enumerate(states) if self._recompute(group, st, "block_Minv")]
        if todo:
            S_hats = [states[i]["block_S"] / self._bc2(group, states[i]["step"]) for i in todo]
            roots = Fn.batched(S_hats, lambda S: self._inverse_metric(group, S))
            for i, r in zip(todo, roots, strict=True):
                states[i]["block_Minv"] = r
        dirs: list[Tensor | None] = [None] * len(params)
        for idx in buckets.values():
            M = torch.stack([states[i]["block_Minv"] for i in idx])
            F = torch.stack([Fs[i].reshape(-1) for i in idx])
            for i, d in zip(idx, Fn.matrix_direction(M, F).unbind(0), strict=True):
                dirs[i] = d.reshape(params[i].shape)
        return dirs  # type: ignore[return-value]

    @staticmethod
    def _split(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
        return [
            c.reshape(p.shape) for c, p in zip(flat.split([p.numel() for p in params]), params, strict=True)
        ]

    def _full_directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        vs: list[Tensor],
        Fs: list[Tensor],
        states: list[dict],
    ) -> list[Tensor]:
        owner = states[0]
        v = torch.cat([x.reshape(-1) for x in vs])
        if "full_S" not in owner:
            owner["full_S"] = v.new_zeros((v.numel(), v.numel()))
        Fn.ema_outer_(owner["full_S"], v, group["betas"][1])
        if self._recompute(group, owner, "full_Minv"):
            owner["full_Minv"] = self._inverse_metric(
                group, owner["full_S"] / self._bc2(group, owner["step"])
            )
        F = torch.cat([x.reshape(-1) for x in Fs])
        return self._split(Fn.matrix_direction(owner["full_Minv"], F), params)

    def _lowrank_directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        vs: list[Tensor],
        Fs: list[Tensor],
        states: list[dict],
    ) -> list[Tensor]:
        owner = states[0]
        v = torch.cat([x.reshape(-1) for x in vs])
        P = v.numel()
        if "lowrank_U" not in owner:
            r = min(group["rank"], P)
            owner["lowrank_U"] = v.new_zeros((P, r))
            owner["lowrank_lam"] = v.new_zeros((r,))
            owner["lowrank_diag"] = v.new_zeros((P,))
        Fn.lowrank_ema_(owner["lowrank_U"], owner["lowrank_lam"], owner["lowrank_diag"], v, group["betas"][1])
        if self._recompute(group, owner, "lowrank_clam"):
            bc2 = self._bc2(group, owner["step"])
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
            owner["lowrank_clam"], owner["lowrank_crem"] = c_lam.to(v.dtype), c_rem.to(v.dtype)
        F = torch.cat([x.reshape(-1) for x in Fs])
        d = Fn.lowrank_direction(owner["lowrank_Uc"], owner["lowrank_clam"], owner["lowrank_crem"], F)
        return self._split(d, params)

    # ------------------------------------------------------------------------------------ probes

    def _group_of(self, p: Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise LearndynValueError(
            f"{_OWNER}.second_moment_diagonal: the parameter is not managed by this optimizer"
        )

    @torch.no_grad()
    def second_moment_diagonal(self, p: Tensor) -> Tensor:
        """The diagonal of the tracked, bias-corrected ``Ŝ`` for parameter ``p``, shaped like ``p``.

        ``'diag'``: ``Ŝ`` itself; ``'block'``/``'full'``: the diagonal of the matrix; ``'kron'``: the diagonal
        of ``L̂^{½} ⊗ R̂^{½}``; ``'lowrank'``: ``max(d̂, diag(U Λ̂ Uᵀ))``. Zeros before the first step.
        """
        group = self._group_of(p)
        structure = group["structure"]
        if structure in ("full", "lowrank"):
            owner = self.state.get(group["params"][0], {})
            key = "full_S" if structure == "full" else "lowrank_U"
            if key not in owner:
                return torch.zeros_like(p)
            if structure == "full":
                diag = owner["full_S"].diagonal()
            else:
                diag = Fn.lowrank_diagonal(owner["lowrank_U"], owner["lowrank_lam"], owner["lowrank_diag"])
            start = 0
            for q in group["params"]:
                if q is p:
                    break
                start += q.numel()
            return diag[start : start + p.numel()].reshape(p.shape) / self._bc2(group, owner["step"])
        st = self.state.get(p, {})
        if "step" not in st or st["step"] == 0:
            return torch.zeros_like(p)
        bc2 = self._bc2(group, st["step"])
        if "exp_avg_sq" in st and (structure == "diag" or p.ndim < 2):
            return st["exp_avg_sq"] / bc2
        if structure == "kron" and "kron_L" in st:
            return Fn.kron_sqrt_diagonal(st["kron_L"] / bc2, st["kron_R"] / bc2).reshape(p.shape)
        if structure == "block" and "block_S" in st:
            return (st["block_S"].diagonal() / bc2).reshape(p.shape)
        return torch.zeros_like(p)
