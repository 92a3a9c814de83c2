"""``CovariantGD``: the geometric optimizer family as a :class:`torch.optim.Optimizer`.

The math lives in :mod:`learndyn.optim.functional` (moments → metric → power → precondition) and
:mod:`learndyn.optim.matfun` (matrix powers); each metric structure (its state, memory need and
preconditioned direction) is a :class:`~learndyn.optim.structures.base.Structure` in the table
:data:`~learndyn.optim.structures.STRUCTURES`; the options and their checks are :mod:`learndyn.optim.options`.
This module is the thin :class:`torch.optim.Optimizer`: parameter groups, the first moment and the moment
vectors, dispatch to the structure, state-dict compatibility and the probes' interface.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from learndyn.optim import functional as Fn
from learndyn.optim.graft import graft
from learndyn.optim.options import (
    DEFAULT_MAX_BLOCK,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_PRECONDITION_WARMUP,
    LEGACY_DEFAULTS,
    OWNER,
    check_memory,
    validate_options,
)
from learndyn.optim.structures import STRUCTURES
from learndyn.optim.structures.base import GroupStep, Structure, apply_directions, group_dtype, real
from learndyn.optim.structures.diag import DIAG
from learndyn.validation import LearndynValueError


def _eager_under_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.disable(fn)``, made on the first call: decorating at import time would import
    ``torch._dynamo`` with ``learndyn.optim`` (about 3 s; torch's optimizers import it on construction)."""
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(
                fn, reason="CovariantGD's update is host-scheduled; it runs eagerly"
            )
        return disabled(*args, **kwargs)

    return wrapper


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
        ``max_factor_dim`` keeps only its diagonal; a side longer than ``max_block`` (default 64) keeps the
        diagonal blocks of its factor, at most ``max_block`` wide (:mod:`learndyn.optim.blocking`).
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
    every step ``t ≤ w`` (``precondition_warmup=w``) and on steps ``1, k+1, 2k+1, …`` for
    ``precondition_every=k``, and the cached inverse roots (including their bias correction) reused in
    between. Diagonal powers (``'diag'``, kron's vectors) are elementwise and recomputed every step;
    lowrank's factored spectrum is updated every step and its coefficients cached.

    Stale roots. A root reused on steps ``t₀+1 … t₀+k−1`` was computed from ``Ŝ₀ = Ŝ_{t₀}``; the gradients
    since have parts outside the support of ``Ŝ₀``, where its spectrum is ``h(0) = ε^{−α}`` (1e6 at α = ¾,
    ε = 1e-8) instead of about ``|∇|^{−2α}``. With ``Ŝ₀`` of the first steps (rank one at ``t = 1``) this
    amplified the first stale updates by orders of magnitude and training diverged within a few steps
    (kron α ≥ ¾, full α ≥ ½ on the benchmark tasks). Two guards, both on by default:

    * the warm-up ``w = precondition_warmup`` (default 100): roots are never reused before step ``w``, so a
      cached root is built from ≥ ``w`` samples and a stale period adds at most about ``k/(w+k)`` of the
      statistics' weight (for ``t ≪ 1/(1−β₂)``). Enough for ``'kron'`` early on: its factors gain up to
      ``min(m, n)`` rank per step. Otherwise the schedule is unchanged (a root due on a step whose
      statistics did not change since the previous due step, ``t−1`` in the warm-up, is skipped).
    * ``stale_damping='trace'``: a bound on how far the statistics can have moved. Writing ``u`` for the
      number of statistics updates (``u₀`` at the root) and ``b(u) = 1 − β₂ᵘ`` (``β₂ᵏ`` and ``⌈t/k⌉``
      updates when amortised), ``S = β₂^{u−u₀} S₀ + N`` with ``N ⪰ 0`` the outer products added since, and
      ``N ⪯ tr(N) I``; so::

          Ŝ_t ⪯ c Ŝ₀ + τ I,     c = β₂^{u−u₀} b(u₀)/b(u),     τ = (tr S − β₂^{u−u₀} tr S₀)/b(u)

      ``'block'``/``'full'`` (``root_method='eigh'``; their ``S`` gains one rank per step, so stale roots
      meet unseen directions for the first ``P`` steps whatever the warm-up) use on stale steps the metric
      of the bound, ``g = (c Ŝ₀ + (τ+ε_r+ε) I)^α`` (outside ``(c Ŝ₀ + (τ+ε_r) I)^α + εI``): the cached
      eigenbasis ``U₀`` with the spectrum ``h(c λ₀ + τ)``. As ``x ↦ x^α`` is operator monotone for
      ``0 ≤ α ≤ 1`` this ``g`` dominates the fresh metric, so ``⟨F, g⁻¹F⟩`` never exceeds what a root
      recomputed on that step would give. It costs one more ``P``-vector product per step
      (``U₀ (h ⊙ U₀ᵀF)`` instead of ``M F``). The bound is isotropic, so it also shortens stale steps
      along the small-eigenvalue directions of ``Ŝ₀`` (the price of the guarantee).
      ``'kron'`` applies the bound to each factor but only through its largest gain, which would otherwise
      need two more matrix products per step: a stale direction is scaled down to ``‖D‖ ≤ G ‖F‖``,
      ``G = ((τ_L+ε_r+ε)(τ_R+ε_r+ε))^{−α/2}`` (outside ``1/(((τ_L+ε_r)(τ_R+ε_r))^{α/2} + ε)``) ≥ the
      largest gain of the bounded metric. This cap rarely binds; it stops the blow-ups that the warm-up
      alone leaves at large learning rates. ``'lowrank'`` is not affected (its remainder is elementwise).
      On root steps (``u = u₀``) nothing changes; ``'none'`` reuses the plain cached root.

    Amortised statistics (``statistics_every=k``, Shampoo's ``statistics_compute_steps``): the matrix
    statistics -- kron's ``L``, ``R``, block's and full's ``S``, lowrank's factors and diagonal -- are
    updated only on steps ``t = 1, k+1, 2k+1, …``, with the decay raised to the ``k``-th power so that a
    sample ``a`` steps old still weighs ``∝ β₂ᵃ`` (the time constant in *steps* is unchanged)::

        S ← β₂ᵏ S + (1−β₂ᵏ) v vᵀ          (update steps only; after u = ⌈t/k⌉ of them)
        Ŝ = S / (1 − β₂^{k·u})             (the weights (1−β₂ᵏ) β₂^{k(u−j)} sum to 1 − β₂^{ku})

    so ``Ŝ`` stays a normalised weighted average of the sampled ``v vᵀ`` (``k = 1`` is the every-step EMA
    and its ``1 − β₂ᵗ``). It averages ``k`` times fewer samples (about ``2τ/k`` effective ones for
    ``τ = 1/(1−β₂)``) and lags by up to ``k−1`` steps; the first moment and the elementwise second moments
    (``'diag'``, kron's vectors) are still updated every step, so ``statistics_every`` does nothing for
    ``'diag'``. A root due on a recompute step whose statistics have not changed since the previous one
    (``k > precondition_every``) is not recomputed: it would be the cached one. Keep ``k`` fixed during a run
    (the bias correction counts updates as ``⌈t/k⌉``).

    Cost of ``'kron'`` per step, for an ``(m, n)`` weight: ``2(m²n + mn²)`` flops to precondition
    (``L^{-α/2} F R^{-α/2}``), ``2(m²n + mn²)/k`` for the statistics, and two float64 eigendecompositions
    every ``precondition_every`` steps (on a CPU each costs about ten float32 products of its size); a
    forward + backward pass of a linear layer at batch ``B`` is ``6Bmn``. So for square layers (``m = n = d``)
    the preconditioning alone is ``2d/(3B)`` times the layer's forward + backward: ``kron`` costs a small
    multiple of ``'diag'`` only once ``B`` is comparable to ``d``. Same-shaped layers share stacked buffers,
    batched products and decompositions. With blocks of ``b = max_block`` every ``d`` above becomes ``b``
    (preconditioning ``2b/(3B)`` of the forward + backward); measured in docs/optimizers.md, "Cost of kron".

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
        max_block: ``'kron'`` sides are split into block-diagonal factors of at most this size (``None``:
            one full factor); see :mod:`learndyn.optim.blocking` and docs/optimizers.md, "Cost of kron".
        root_dtype: ``'float64'`` or ``'float32'``: the dtype of ``'kron'``'s eigendecompositions
            (``root_method='eigh'``; see :mod:`learndyn.optim.roots`).
        eigh_every: ``'kron'`` decomposes its factors fully on every ``k``-th root only; the roots in between
            refresh the cached eigenbasis by one power-iteration + QR step (SOAP's refresh; 1: always eigh).
        statistics_every: update the matrix statistics every ``k ≥ 1`` steps (see above; 1: every step).
        precondition_warmup: recompute matrix roots on every step ``t ≤ w`` (``w ≥ 0``, default 100; 0: only
            on the ``precondition_every`` schedule). See "Stale roots" above.
        stale_damping: ``'trace'`` (default) or ``'none'``: bound the reused roots of kron/block/full by the
            statistics added since they were computed (see above).
        graft: ``'none'`` (default) or ``'adam'``: keep each parameter tensor's direction ``g⁻¹F`` but give it
            the norm of Adam's update ``F ⊘ (√ŝ + ε)`` from the same moments, per tensor (Distributed
            Shampoo's grafting; :mod:`learndyn.optim.graft`): ``lr`` then means Adam's learning rate for
            every structure and ``α``. Costs one elementwise second moment per parameter.
        eps_rel: ``ε_rel ≥ 0`` (default 0): damping relative to the statistics' scale for the matrix roots of
            ``'kron'`` (each factor), ``'block'`` and ``'full'``: ``Ŝ ← Ŝ + ε_rel·(tr Ŝ/n)·I`` inside the
            power, on top of ``eps``/``eps_root`` (:func:`~learndyn.optim.functional.relative_damping`).
        maximize: ascend instead of descend (the gradient is negated), as in torch.optim.
        foreach, fused: accepted for torch.optim compatibility; the step always runs its multi-tensor
            kernels (``foreach=False``/``fused=True`` warn once and change nothing).
        differentiable, capturable: only ``False`` (the step is neither differentiable nor graph-capturable).

    Parameters may be complex (optimised as their real views ``torch.view_as_real(p)``, as torch's
    optimizers do), of any floating dtype (``'full'``/``'lowrank'`` keep a group's metric in the promoted
    dtype, ``'lowrank'`` at least float32) and empty. Parameters without a gradient are skipped and get no
    state. How this class follows torch.optim's conventions and where it differs: ``docs/optimizers.md``.

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
        max_block: int | None = DEFAULT_MAX_BLOCK,
        root_dtype: str = "float64",
        eigh_every: int = 1,
        statistics_every: int = 1,
        precondition_warmup: int = DEFAULT_PRECONDITION_WARMUP,
        stale_damping: str = "trace",
        graft: str = "none",
        eps_rel: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
        capturable: bool = False,
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
                max_block=max_block,
                root_dtype=root_dtype,
                eigh_every=eigh_every,
                statistics_every=statistics_every,
                precondition_warmup=precondition_warmup,
                stale_damping=stale_damping,
                graft=graft,
                eps_rel=eps_rel,
                maximize=maximize,
                foreach=foreach,
                fused=fused,
                differentiable=differentiable,
                capturable=capturable,
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
                if isinstance(p, Tensor) and not (p.is_floating_point() or p.is_complex()):
                    raise LearndynValueError(
                        f"{OWNER}: a parameter has dtype {p.dtype}; allowed: real floating-point parameters "
                        "or complex ones (optimised as their real views)"
                    )
            structure = opts["structure"]
            tensors = [real(p) for p in ps if isinstance(p, Tensor)]
            if STRUCTURES[structure].scope == "group" and len({p.device for p in tensors}) > 1:
                raise LearndynValueError(
                    f"{OWNER}.structure={structure!r} needs one device per parameter group; "
                    "allowed: put parameters on different devices in separate groups"
                )
            check_memory(structure, tensors, opts)
        super().add_param_group(group)

    # -------------------------------------------------------------------------------------- step

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; returns ``closure()`` if given.

        Under :func:`torch.compile` the closure is traced but the update runs eagerly (see :meth:`_update`).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update()
        return loss

    @_eager_under_compile
    @torch.no_grad()
    def _update(self) -> None:
        """The update of every group, never traced by :func:`torch.compile` (a graph break; it runs eagerly,
        so a compiled step equals the eager one bit for bit). Its schedule (root refreshes, bias
        corrections, buckets) is host logic on the Python step counters: traced, every step would be a new
        graph until dynamo's recompile limit (8), costing 20-100 s of compilation for a 20-step run on a CPU
        and then falling back to eager anyway; the heavy parts (``eigh``, ``svd``) are LAPACK calls that
        compilation does not speed up."""
        for group in self.param_groups:
            self._group_step(group)

    def _group_step(self, group: dict[str, Any]) -> None:
        """Moments for the parameters with a gradient, then the structure's step (``'diag'`` for the
        parameters the structure does not cover)."""
        keys = [p for p in group["params"] if p.grad is not None]
        if not keys:
            return
        if any(p.grad.is_sparse for p in keys):
            raise RuntimeError(f"{OWNER} does not support sparse gradients")
        params = [real(p) for p in keys]
        grads = [real(p.grad) for p in keys]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        states = [self.state[p] for p in keys]
        need_m = group["first_moment"] or group["moment"] == "covariance"
        for p, st in zip(params, states, strict=True):
            if "step" not in st:
                st["step"] = 0
            if need_m and "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1

        wd = group["weight_decay"]
        if wd and not group["decoupled_weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=wd)
        exp_avgs = [st["exp_avg"] for st in states] if need_m else None
        if exp_avgs is not None:
            Fn.foreach_ema_(exp_avgs, grads, group["betas"][0])
        structure = STRUCTURES[group["structure"]]
        ctx = GroupStep(
            group=group,
            params=params,
            grads=grads,
            exp_avgs=exp_avgs,
            vs=Fn.moment_vectors(grads, exp_avgs, group["moment"]),
            states=states,
            keys=keys,
            group_keys=list(group["params"]),
            group_params=[real(p) for p in group["params"]],
            state=self.state,
            cache=self.__dict__.setdefault("_structure_cache", {}).setdefault(structure.name, {}),
        )
        own = [i for i, p in enumerate(params) if structure.covers(p)]
        if group["graft"] != "none":
            self._grafted_step(ctx, structure, own)
            return
        if len(own) < len(params):
            DIAG.step(ctx.subset([i for i, p in enumerate(params) if not structure.covers(p)]))
            ctx = ctx.subset(own)
        if own:
            structure.step(ctx)

    @staticmethod
    def _grafted_step(ctx: GroupStep, structure: Structure, own: list[int]) -> None:
        """``graft != 'none'``: every direction (the structure's; ``'diag'``'s for what it does not cover)
        gets the per-tensor norm of the reference update (:mod:`learndyn.optim.graft`), then one update."""
        dirs: list[Tensor | None] = [None] * len(ctx.params)
        covered = set(own)
        rest = [i for i in range(len(ctx.params)) if i not in covered]
        for idx, s in ((rest, DIAG), (own, structure)):
            if idx:
                for i, d in zip(idx, s.directions(ctx.subset(idx)), strict=True):
                    dirs[i] = d
        apply_directions(ctx, graft(ctx, dirs))  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------ state dicts

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts saved before these options existed resume as run
            for name, value in LEGACY_DEFAULTS.items():
                group.setdefault(name, value)
            structure = STRUCTURES.get(group.get("structure"))
            if structure is not None:
                for p in group["params"]:
                    if p in self.state:
                        structure.upgrade_state(self.state[p])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """:meth:`torch.optim.Optimizer.load_state_dict`, except that a group-wide metric (``'full'``,
        ``'lowrank'``) is cast to the dtype the group's metric is kept in rather than to its owner
        parameter's (torch casts every floating state tensor to its parameter's dtype)."""
        kept = []
        saved_state = state_dict.get("state", {})
        for saved, group in zip(state_dict.get("param_groups", []), self.param_groups, strict=False):
            structure = STRUCTURES.get(saved.get("structure"))
            if structure is None or not structure.group_state_keys:
                continue
            for pid, p in zip(saved["params"], group["params"], strict=False):
                st = saved_state.get(pid, {})
                kept += [(p, k, st[k]) for k in structure.group_state_keys if isinstance(st.get(k), Tensor)]
        super().load_state_dict(state_dict)
        for p, key, value in kept:
            group = self._group_of(p)
            structure = STRUCTURES[group["structure"]]
            dtype = group_dtype([real(q) for q in group["params"]], structure.state_floor)
            self.state[p][key] = value.to(device=p.device, dtype=dtype)

    # ------------------------------------------------------------------------------------ probes

    def _group_of(self, p: Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise LearndynValueError(
            f"{OWNER}.second_moment_diagonal: the parameter is not managed by this optimizer"
        )

    @torch.no_grad()
    def second_moment_diagonal(self, p: Tensor) -> Tensor:
        """The diagonal of the tracked, bias-corrected ``Ŝ`` for parameter ``p``, shaped like ``p`` (like its
        real view for a complex ``p``).

        ``'diag'``: ``Ŝ`` itself; ``'block'``/``'full'``: the diagonal of the matrix; ``'kron'``: the diagonal
        of ``L̂^{½} ⊗ R̂^{½}``; ``'lowrank'``: ``max(d̂, diag(U Λ̂ Uᵀ))``. Zeros before the first step.
        """
        group = self._group_of(p)
        structure = STRUCTURES[group["structure"]]
        rp = real(p)
        if structure.scope == "group" and structure.covers(rp):
            d = structure.diagonal(group, p, self.state)
        else:
            st = self.state.get(p, {})
            if not st.get("step"):
                d = None
            elif "exp_avg_sq" in st:
                d = DIAG.diagonal(group, p, self.state)
            else:
                d = structure.diagonal(group, p, self.state)
        return torch.zeros_like(rp) if d is None else d.reshape(rp.shape)
