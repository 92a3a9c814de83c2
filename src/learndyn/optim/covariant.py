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
from learndyn.optim.matfun import (
    COMPUTE_DTYPE,
    eigh_psd,
    fractional_exponent,
    inverse_metric,
    spectral_coefficients,
)
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

STRUCTURES = ("diag", "kron", "block", "full", "lowrank")
MOMENTS = ("second", "covariance")
EPS_MODES = ("inside", "outside")
ROOT_METHODS = ("eigh", "newton")
STALE_DAMPINGS = ("trace", "none")
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""2 GiB: the most the metric state of one parameter group may take before construction refuses."""
DEFAULT_PRECONDITION_WARMUP = 100
"""Steps at the start of training on which matrix roots are recomputed every step (see ``CovariantGD``)."""

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
    check_choice("stale_damping", o["stale_damping"], STALE_DAMPINGS, owner=_OWNER)
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
    check_int("statistics_every", o["statistics_every"], low=1, owner=_OWNER)
    check_int("precondition_warmup", o["precondition_warmup"], low=0, owner=_OWNER)
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


_MAX_BUCKET_CACHE = 64
"""Distinct buckets whose stacked buffers are kept (more are only seen when gradients come and go)."""


def _trace(X: Tensor) -> Tensor:
    """Traces of a stack of matrices ``(B, k, k)`` or of diagonal factors ``(B, k)``."""
    return X.diagonal(dim1=-2, dim2=-1).sum(-1) if X.ndim == 3 else X.sum(-1)


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
    batched products and decompositions.

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
        statistics_every: update the matrix statistics every ``k ≥ 1`` steps (see above; 1: every step).
        precondition_warmup: recompute matrix roots on every step ``t ≤ w`` (``w ≥ 0``, default 100; 0: only
            on the ``precondition_every`` schedule). See "Stale roots" above.
        stale_damping: ``'trace'`` (default) or ``'none'``: bound the reused roots of kron/block/full by the
            statistics added since they were computed (see above).

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
        statistics_every: int = 1,
        precondition_warmup: int = DEFAULT_PRECONDITION_WARMUP,
        stale_damping: str = "trace",
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
                statistics_every=statistics_every,
                precondition_warmup=precondition_warmup,
                stale_damping=stale_damping,
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
            dirs = self._kron_directions(group, params, grads, exp_avgs, vs, states)
            if wd and group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, dirs, alpha=-lr)
            return
        Fs = self._direction_inputs(group, grads, exp_avgs, states)
        if structure == "block":
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
        """Whether a cached matrix root must be recomputed on this step.

        Roots are due on every step ``t ≤ w`` (``w = precondition_warmup``) and on steps ``1, p+1, 2p+1, …``
        (``p = precondition_every``). A due root is skipped when the statistics it is computed from have not
        changed since the previous due step ``t' = max(t − p, min(w, t − 1))`` (``t − 1`` during the warm-up;
        possible with ``statistics_every > 1``): the cached root is then exactly what would come out."""
        if cache_key not in st:
            return True
        t, p, w = st["step"], group["precondition_every"], group["precondition_warmup"]
        if t > w and (t - 1) % p:
            return False
        k = group["statistics_every"]
        previous = t - 1 if t <= w else max(t - p, min(w, t - 1))
        return k == 1 or Fn.statistics_count(t, k) != Fn.statistics_count(previous, k)

    def _bc2(self, group: dict[str, Any], step: int) -> float:
        """Bias correction of the elementwise (every-step) second moment: ``1 − β₂ᵗ``."""
        return Fn.bias_correction(group["betas"][1], step, group["bias_correction"])

    def _stat_bc2(self, group: dict[str, Any], step: int) -> float:
        """Bias correction of the matrix statistics kept every ``k`` steps: ``1 − β₂^{k⌈t/k⌉}``."""
        return Fn.amortised_bias_correction(
            group["betas"][1], step, group["statistics_every"], group["bias_correction"]
        )

    @staticmethod
    def _stat_beta(group: dict[str, Any]) -> float:
        return Fn.amortised_ema_beta(group["betas"][1], group["statistics_every"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts saved before these options existed resume as run
            group.setdefault("statistics_every", 1)
            group.setdefault("precondition_warmup", 0)
            group.setdefault("stale_damping", "none")

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
        grads: list[Tensor],
        exp_avgs: list[Tensor] | None,
        vs: list[Tensor],
        states: list[dict],
    ) -> list[Tensor]:
        """``g⁻¹F`` for the matrix-shaped parameters, batched per bucket of same-shaped parameters.

        Each bucket's factors, cached roots and eigenbases live in persistent stacked buffers
        (:class:`_Stacks`); the per-parameter state entries are views into them, so a step stacks only
        this step's ``V`` and ``F`` (``m·n`` copies) and never the ``m²``/``n²`` factors.
        """
        keys = [self._kron_sides(group, p) for p in params]
        for p, st, (m, n, ld, rd) in zip(params, states, keys, strict=True):
            if "kron_L" not in st:
                st["kron_L"] = p.new_zeros((m,) if ld else (m, m))
                st["kron_R"] = p.new_zeros((n,) if rd else (n, n))
        buckets: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            buckets.setdefault((*k, params[i].dtype, params[i].device), []).append(i)
        inside = group["eps_mode"] == "inside"
        cache_key = "kron_Linv" if inside else "kron_C"
        every, beta_k = group["statistics_every"], self._stat_beta(group)
        dirs: list[Tensor | None] = [None] * len(params)
        for key, idx in buckets.items():
            m, n, ld, rd = key[:4]
            sts = [states[i] for i in idx]
            stk = self._stacks(key, [params[i] for i in idx])
            L, R = stk.stacked("kron_L", sts), stk.stacked("kron_R", sts)
            # statistics (every k steps): L ← βᵏ L + (1−βᵏ) V Vᵀ, fused into one baddbmm per side
            upd = [j for j, s in enumerate(sts) if Fn.statistics_update(s["step"], every)]
            if upd:
                V = torch.stack([vs[idx[j]].reshape(m, n) for j in upd])
                if len(upd) == len(idx):
                    Fn.kron_statistics_ema_(L, R, V, beta_k)
                else:  # parameters out of step with each other (some had no gradient on some steps)
                    sel = torch.tensor(upd, device=L.device)
                    Ls, Rs = L.index_select(0, sel), R.index_select(0, sel)
                    Fn.kron_statistics_ema_(Ls, Rs, V, beta_k)
                    L.index_copy_(0, sel, Ls)
                    R.index_copy_(0, sel, Rs)
            # roots (amortised)
            todo = [j for j, s in enumerate(sts) if self._recompute(group, s, cache_key)]
            if todo:
                self._kron_roots(group, stk, sts, todo, L, R, ld, rd, inside, params[idx[0]].dtype)
            # directions
            if group["first_moment"]:
                assert exp_avgs is not None
                F = torch.stack([exp_avgs[i].reshape(m, n) for i in idx])
                beta1, enabled = group["betas"][0], group["bias_correction"]
                bc1 = [Fn.bias_correction(beta1, s["step"], enabled) for s in sts]
                if all(b == bc1[0] for b in bc1):
                    if bc1[0] != 1.0:
                        F.div_(bc1[0])
                else:
                    F.div_(torch.tensor(bc1, dtype=F.dtype, device=F.device).view(-1, 1, 1))
            else:
                F = torch.stack([grads[i].reshape(m, n) for i in idx])
            if inside:
                D = Fn.kron_direction_inside(stk.stacked("kron_Linv", sts), F, stk.stacked("kron_Rinv", sts))
            else:
                D = Fn.kron_direction_outside(
                    stk.stacked("kron_UL", sts), stk.stacked("kron_UR", sts), stk.stacked("kron_C", sts), F
                )
            if group["stale_damping"] == "trace" and group["alpha"] > 0:
                self._kron_cap_(group, sts, L, R, F, D)
            for i, d in zip(idx, D.unbind(0), strict=True):
                dirs[i] = d.reshape(params[i].shape)
        return dirs  # type: ignore[return-value]

    def _kron_roots(
        self,
        group: dict[str, Any],
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
        bc2 = [self._stat_bc2(group, sts[j]["step"]) for j in todo]

        def hat(X: Tensor) -> Tensor:
            Xs = X if sel is None else X.index_select(0, sel)
            if all(b == bc2[0] for b in bc2):
                return Xs / bc2[0]
            return Xs / torch.tensor(bc2, dtype=X.dtype, device=X.device).view(-1, *[1] * (X.ndim - 1))

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

    def _kron_cap_(
        self, group: dict[str, Any], sts: list[dict], L: Tensor, R: Tensor, F: Tensor, D: Tensor
    ) -> None:
        """``stale_damping='trace'`` for kron, in place on the stacked directions ``D``: on a stale step scale
        ``D`` to at most ``G‖F‖``, ``G`` the gain bound of :func:`~learndyn.optim.functional.kron_stale_gain`
        from the statistics added to each factor since its root (no extra matrix products)."""
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
        beta, enabled = self._stat_beta(group), group["bias_correction"]
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

    def _stacks(self, key: tuple, params: list[Tensor]) -> _Stacks:
        """The persistent stacked buffers of one bucket (same-shaped parameters, in this order)."""
        cache: dict[tuple, _Stacks] | None = self.__dict__.get("_kron_stacks")
        if cache is None:
            cache = self.__dict__["_kron_stacks"] = {}
        ck = (key, tuple(id(p) for p in params))
        stk = cache.get(ck)
        if stk is None:
            if len(cache) >= _MAX_BUCKET_CACHE:
                cache.clear()
            stk = cache[ck] = _Stacks(params)
        return stk

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
        beta_k, every = self._stat_beta(group), group["statistics_every"]
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
            V = torch.stack([vs[i].reshape(-1) for i in idx])
            Fn.foreach_ema_(
                [states[i]["block_S"] for i in idx], list(V.unsqueeze(-1) * V.unsqueeze(-2)), beta_k
            )
        dirs: list[Tensor | None] = [None] * len(params)
        if self._bounded(group):
            for idx in buckets.values():
                todo = [i for i in idx if self._recompute(group, states[i], "block_U")]
                if todo:
                    self._cache_eigenbases(group, [states[i] for i in todo], "block")
                U = torch.stack([states[i]["block_U"] for i in idx])
                h = torch.stack([self._stale_coefficients(group, states[i], "block") for i in idx])
                F = torch.stack([Fs[i].reshape(-1) for i in idx])
                for i, d in zip(idx, Fn.eigen_direction(U, h.to(U.dtype), F).unbind(0), strict=True):
                    dirs[i] = d.reshape(params[i].shape)
            return dirs  # type: ignore[return-value]
        todo = [i for i, st in enumerate(states) if self._recompute(group, st, "block_Minv")]
        if todo:
            S_hats = [states[i]["block_S"] / self._stat_bc2(group, states[i]["step"]) for i in todo]
            roots = Fn.batched(S_hats, lambda S: self._inverse_metric(group, S))
            for i, r in zip(todo, roots, strict=True):
                states[i]["block_Minv"] = r
        for idx in buckets.values():
            M = torch.stack([states[i]["block_Minv"] for i in idx])
            F = torch.stack([Fs[i].reshape(-1) for i in idx])
            for i, d in zip(idx, Fn.matrix_direction(M, F).unbind(0), strict=True):
                dirs[i] = d.reshape(params[i].shape)
        return dirs  # type: ignore[return-value]

    @staticmethod
    def _bounded(group: dict[str, Any]) -> bool:
        """Whether block/full roots are cached as eigenbases, bounded on stale steps (``stale_damping``)."""
        return group["stale_damping"] == "trace" and group["root_method"] == "eigh" and group["alpha"] > 0

    def _cache_eigenbases(self, group: dict[str, Any], sts: list[dict], prefix: str) -> None:
        """Cache ``Ŝ₀ = U diag(λ) Uᵀ`` of each state's ``{prefix}_S`` (same shapes), with ``tr S₀`` and the
        statistics count ``u₀`` it was taken at, for :meth:`_stale_coefficients`."""
        k = group["statistics_every"]
        S = torch.stack([st[f"{prefix}_S"] for st in sts])
        bc2 = torch.tensor([self._stat_bc2(group, st["step"]) for st in sts], dtype=S.dtype, device=S.device)
        lam, U = eigh_psd(S / bc2.view(-1, 1, 1))
        U, lam = U.to(S.dtype), lam.to(S.dtype)  # kept in the parameters' dtype, as load_state_dict casts
        traces = S.diagonal(dim1=-2, dim2=-1).sum(-1)
        for j, st in enumerate(sts):
            st[f"{prefix}_U"], st[f"{prefix}_lam"] = U[j], lam[j]
            st[f"{prefix}_root_trace"] = traces[j]
            st[f"{prefix}_root_count"] = Fn.statistics_count(st["step"], k)

    def _stale_coefficients(self, group: dict[str, Any], st: dict, prefix: str) -> Tensor:
        """``h(c λ₀ + τ)`` (float64): the cached root's spectrum with the bound ``Ŝ_t ⪯ c Ŝ₀ + τ I`` of
        :func:`~learndyn.optim.functional.stale_bound`; ``h(λ₀)`` while the statistics are unchanged."""
        lam, root_count = st[f"{prefix}_lam"].to(COMPUTE_DTYPE), st[f"{prefix}_root_count"]
        count = Fn.statistics_count(st["step"], group["statistics_every"])
        if count != root_count:
            trace = st[f"{prefix}_S"].diagonal().sum().to(COMPUTE_DTYPE)
            root_trace = st[f"{prefix}_root_trace"].to(COMPUTE_DTYPE)
            c, tau = Fn.stale_bound(
                trace, root_trace, count, root_count, self._stat_beta(group), group["bias_correction"]
            )
            lam = c * lam + tau
        return spectral_coefficients(lam, group["alpha"], group["eps"], group["eps_mode"], group["eps_root"])

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
        if "full_S" not in owner:
            P = sum(x.numel() for x in vs)
            owner["full_S"] = vs[0].new_zeros((P, P))
        if Fn.statistics_update(owner["step"], group["statistics_every"]):
            v = torch.cat([x.reshape(-1) for x in vs])
            Fn.ema_outer_(owner["full_S"], v, self._stat_beta(group))
        F = torch.cat([x.reshape(-1) for x in Fs])
        if self._bounded(group):
            if self._recompute(group, owner, "full_U"):
                self._cache_eigenbases(group, [owner], "full")
            h = self._stale_coefficients(group, owner, "full").to(owner["full_U"].dtype)
            return self._split(Fn.eigen_direction(owner["full_U"], h, F), params)
        if self._recompute(group, owner, "full_Minv"):
            owner["full_Minv"] = self._inverse_metric(
                group, owner["full_S"] / self._stat_bc2(group, owner["step"])
            )
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
        P = sum(x.numel() for x in vs)
        dtype = vs[0].dtype
        if "lowrank_U" not in owner:
            r = min(group["rank"], P)
            owner["lowrank_U"] = vs[0].new_zeros((P, r))
            owner["lowrank_lam"] = vs[0].new_zeros((r,))
            owner["lowrank_diag"] = vs[0].new_zeros((P,))
        if Fn.statistics_update(owner["step"], group["statistics_every"]):
            v = torch.cat([x.reshape(-1) for x in vs])
            Fn.lowrank_ema_(
                owner["lowrank_U"], owner["lowrank_lam"], owner["lowrank_diag"], v, self._stat_beta(group)
            )
        if self._recompute(group, owner, "lowrank_clam"):
            bc2 = self._stat_bc2(group, owner["step"])
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
            return diag[start : start + p.numel()].reshape(p.shape) / self._stat_bc2(group, owner["step"])
        st = self.state.get(p, {})
        if "step" not in st or st["step"] == 0:
            return torch.zeros_like(p)
        if "exp_avg_sq" in st and (structure == "diag" or p.ndim < 2):
            return st["exp_avg_sq"] / self._bc2(group, st["step"])
        bc2 = self._stat_bc2(group, st["step"])
        if structure == "kron" and "kron_L" in st:
            return Fn.kron_sqrt_diagonal(st["kron_L"] / bc2, st["kron_R"] / bc2).reshape(p.shape)
        if structure == "block" and "block_S" in st:
            return (st["block_S"].diagonal() / bc2).reshape(p.shape)
        return torch.zeros_like(p)
