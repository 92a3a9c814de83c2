"""Hidden representations (effective rank, participation ratio, collapse) and parameter movement.

A representation is the matrix ``H`` (B × d) of a layer's outputs on the probe batch (each sample's output
flattened; captured with forward hooks by :func:`capture_activations`). With its singular values ``σ_k``
(optionally after centring the columns):

- effective rank (Roy & Vetterli 2007): ``erank = exp(H(p))`` with ``p_k = σ_k / Σσ`` and
  ``H(p) = −Σ p_k log p_k`` -- ``r`` for ``r`` equal singular values, between 1 and ``rank(H)`` in general;
- participation ratio: ``PR = (Σλ)² / Σλ²`` with ``λ_k = σ_k²`` (the eigenvalues of ``HᵀH``) -- also ``r``
  for a flat spectrum, more sensitive to the top directions than ``erank``.

:class:`RepresentationProbe` metrics (prefix ``repr/``, per captured layer ``<L>``):

- ``<L>/erank``, ``<L>/erank_frac`` (``erank / min(B, d)``), ``<L>/pr``
- ``<L>/norm``           RMS sample norm ``(mean_i ‖h_i‖²)^{1/2}``
- ``<L>/dead_frac``      fraction of units never positive on the batch (dead ReLUs for ReLU outputs)
- ``<L>/rank_collapse``  1 if ``erank < rank_frac · min(B, d)``
- ``<L>/dead_collapse``  1 if ``dead_frac ≥ dead_frac_max``
- ``<L>/norm_collapse``  1 if ``norm ≤ norm_frac ·`` (norm at the first measurement) or ``norm = 0``
- ``<L>/sv``             singular values, descending (array; with ``spectrum=True``)
- ``collapse``           1 if any layer raised any flag

:class:`ParameterDistanceProbe` metrics (prefix ``params/``): ``norm`` ``‖θ_t‖``, ``dist_init``
``‖θ_t − θ_0‖`` and ``dist_init_rel`` (over ``‖θ_0‖``), ``update`` ``‖θ_t − θ_prev‖`` since the previous
measurement and ``update_rel`` (over ``‖θ_prev‖``; both from the second measurement on), and per parameter
tensor ``<name>/norm``, ``<name>/dist_init``, ``<name>/dist_init_rel``, ``<name>/update``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules import activation as _activation

from learndyn.probes.base import Measurement, Probe, ProbeContext
from learndyn.validation import LearndynValueError, check_choice, check_real

MODES = ("eval", "train")
REFERENCES = ("init", "first")

_NOT_REPRESENTATIONS = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.MultiheadAttention)
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(
    cls
    for cls in (getattr(_activation, n) for n in _activation.__all__)
    if isinstance(cls, type) and issubclass(cls, nn.Module) and not issubclass(cls, _NOT_REPRESENTATIONS)
)
"""Module types whose outputs are hidden representations by default (ReLU, GELU, Tanh, ...)."""


# ------------------------------------------------------------------------------------------ capturing


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run code that calls ``model`` without leaving a trace in it or in the global RNG.

    Restores every module's ``training`` flag and every buffer's value (e.g. BatchNorm running statistics,
    updated by a training-mode forward) and forks the global RNG (CPU, and the CUDA devices the model is on),
    so dropout masks drawn inside do not shift the training loop's random stream.
    """
    flags = [(m, m.training) for m in model.modules()]
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    devices = sorted({t.device.index or 0 for t in [*model.parameters(), *model.buffers()] if t.is_cuda})
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for n, value in saved.items():
                    model.get_buffer(n).copy_(value)
            for m, flag in flags:
                m.training = flag


def default_representation_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs count as hidden representations when none are given.

    The activation modules (:data:`ACTIVATION_TYPES`); if there are none (activations applied functionally),
    every ``nn.Linear``/``nn.ConvNd`` except the last one.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    acts = [n for n, m in named if isinstance(m, ACTIVATION_TYPES)]
    if acts:
        return acts
    layers = [n for n, m in named if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    return layers[:-1]


def _check_modules(model: nn.Module, modules: Sequence[str] | None, owner: str) -> list[str]:
    if modules is None:
        return default_representation_modules(model)
    if isinstance(modules, str):
        modules = [modules]
    known = dict(model.named_modules())
    for n in modules:
        if not isinstance(n, str) or n not in known:
            raise LearndynValueError(
                f"{owner}.modules contains {n!r}, not a submodule of {type(model).__name__}; "
                "allowed: names from named_modules()"
            )
    return list(modules)


def capture_activations(
    model: nn.Module, inputs: Tensor, modules: Sequence[str] | None = None, *, mode: str = "eval"
) -> dict[str, Tensor]:
    """Outputs of ``modules`` on ``inputs``, each flattened per sample to ``(B, d)``, in call order.

    ``modules``: module names (default :func:`default_representation_modules`). A module called ``k > 1``
    times yields ``name``, ``name.call1``, ... (tuple outputs: the first tensor). ``mode``: run the forward
    pass in ``"eval"`` mode (deterministic; BatchNorm uses running statistics) or ``"train"`` mode (batch
    statistics, dropout). Either way the model's modes, buffers, parameters, gradients and the global RNG
    are left as they were, and every hook is removed. Captured tensors are detached copies.
    """
    check_choice("mode", mode, MODES, owner="capture_activations")
    names = _check_modules(model, modules, "capture_activations")
    out: dict[str, Tensor] = {}
    with recording_activations(model, names, out), preserved_state(model), torch.no_grad():
        model.train(mode == "train")
        model(inputs)
    return out


@contextlib.contextmanager
def recording_activations(model: nn.Module, names: Sequence[str], out: dict[str, Tensor]) -> Iterator[None]:
    """Forward hooks filling ``out`` as :func:`capture_activations` does (``out`` is emptied at the start
    of every call of ``model``, so it holds the last forward pass); removed on exit. Records whatever
    forward pass runs inside, in whatever mode: :func:`capture_activations` and the noise probe's hooked
    pass (:func:`learndyn.probes.noise.shared_gradient_gram`) use it."""

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            while isinstance(output, tuple | list):
                output = output[0]
            if not isinstance(output, Tensor):
                return
            key, k = name, 0
            while key in out:
                k += 1
                key = f"{name}.call{k}"
            out[key] = output.detach().reshape(output.shape[0], -1).clone()

        return hook

    handles = [model.register_forward_pre_hook(lambda *_: out.clear())]
    handles += [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def shared_activations(
    ctx: ProbeContext, modules: Sequence[str] | None = None, mode: str = "eval"
) -> dict[str, Tensor]:
    """:func:`capture_activations` on ``ctx.inputs``, computed once per step and shared between probes.

    Cache key ``activations/<mode>/<comma-joined names or *>``.
    """
    key, names = activations_key(ctx, modules, mode)
    return ctx.shared(key, lambda: capture_activations(ctx.model, ctx.inputs, names, mode=mode))


def activations_key(
    ctx: ProbeContext, modules: Sequence[str] | None = None, mode: str = "eval"
) -> tuple[str, list[str] | None]:
    """The cache key of :func:`shared_activations` and the checked module names (``None``: default)."""
    check_choice("mode", mode, MODES, owner="shared_activations")
    names = None if modules is None else _check_modules(ctx.model, modules, "shared_activations")
    return f"activations/{mode}/{'*' if names is None else ','.join(names)}", names


WANTED = "activations/wanted"
"""Cache key of ``{activations key: module names}`` that probes due at this step will read in eval mode
(set by the Monitor from :meth:`RepresentationProbe.wanted_activations`): a probe making an eval-mode
forward pass of ``ctx.inputs`` anyway (the noise probe's hooked pass) records them on the way, saving
:func:`capture_activations` its own pass. The values are the same: the same forward pass, in the same mode."""


# ------------------------------------------------------------------------------------------ spectra


def singular_values(h: Tensor | np.ndarray, center: bool = False) -> Tensor:
    """Singular values of ``h`` (B × d), descending, in float64; columns centred first if ``center``."""
    x = torch.as_tensor(h).detach().to(torch.float64)
    if x.dim() != 2:
        x = x.reshape(x.shape[0], -1)
    if center:
        x = x - x.mean(0, keepdim=True)
    return torch.linalg.svdvals(x)


def effective_rank(sv: Tensor | np.ndarray) -> float:
    """Roy–Vetterli effective rank ``exp(−Σ p_k log p_k)``, ``p = σ/Σσ`` (``0 log 0 = 0``; 0 if ``σ = 0``)."""
    s = torch.as_tensor(sv, dtype=torch.float64).clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


def numerical_rank(sv: Tensor | np.ndarray, rtol: float) -> int:
    """``#{σ_k > rtol · σ_max}``: how many singular values exceed a fraction of the largest (0 if none)."""
    sv = np.asarray(sv, dtype=float)
    return int(np.sum(sv > rtol * sv.max())) if sv.size and sv.max() > 0 else 0


def participation_ratio(sv: Tensor | np.ndarray) -> float:
    """``(Σλ)² / Σλ²`` with ``λ = σ²`` (0 for ``σ = 0``)."""
    lam = torch.as_tensor(sv, dtype=torch.float64).square()
    den = lam.square().sum()
    return float(lam.sum().square() / den) if den > 0 else 0.0


# ------------------------------------------------------------------------------------------ probes


class RepresentationProbe(Probe):
    """Effective rank, participation ratio, norm and collapse flags of hidden representations.

    Args:
        every: measure every ``every`` steps.
        modules: names of the modules whose outputs to analyse (default
            :func:`default_representation_modules`).
        mode: forward pass in ``"eval"`` or ``"train"`` mode (see :func:`capture_activations`).
        center: centre each unit over the batch before the SVD (removes the mean direction).
        rank_frac: rank-collapse flag when ``erank < rank_frac · min(B, d)``.
        dead_frac_max: dead-unit flag when at least this fraction of units is never positive.
        norm_frac: norm-collapse flag when the RMS norm falls to ``norm_frac`` of its first measured value.
        spectrum: also report the singular values (array).

    The activations come from :func:`shared_activations`, so other probes on the same step reuse them.
    """

    name = "repr"
    state_attrs = ("_norm0",)
    needs = frozenset({"activations"})

    def __init__(
        self,
        every: int = 1,
        *,
        modules: Sequence[str] | None = None,
        mode: str = "eval",
        center: bool = False,
        rank_frac: float = 0.1,
        dead_frac_max: float = 0.5,
        norm_frac: float = 0.01,
        spectrum: bool = False,
    ) -> None:
        super().__init__(every)
        owner = type(self).__name__
        if modules is not None and (isinstance(modules, str) or not all(isinstance(m, str) for m in modules)):
            raise LearndynValueError(
                f"{owner}.modules={modules!r} is not allowed; allowed: a list of module names"
            )
        self.modules = None if modules is None else list(modules)
        self.mode = check_choice("mode", mode, MODES, owner=owner)
        self.center = bool(center)
        self.rank_frac = check_real("rank_frac", rank_frac, low=0, high=1, low_open=True, owner=owner)
        self.dead_frac_max = check_real(
            "dead_frac_max", dead_frac_max, low=0, high=1, low_open=True, owner=owner
        )
        self.norm_frac = check_real(
            "norm_frac", norm_frac, low=0, high=1, low_open=True, high_open=True, owner=owner
        )
        self.spectrum = bool(spectrum)
        self.reset()

    def reset(self) -> None:
        self._norm0: dict[str, float] = {}

    def wanted_activations(self, ctx: ProbeContext) -> dict[str, list[str]]:
        """``{cache key: module names}`` of the eval-mode activations :meth:`measure` will read (for
        :data:`WANTED`); nothing in train mode (its dropout draws stay its own)."""
        if self.mode != "eval":
            return {}
        key, names = activations_key(ctx, self.modules, self.mode)
        return {key: names if names is not None else default_representation_modules(ctx.model)}

    def measure(self, ctx: ProbeContext) -> Measurement:
        acts = shared_activations(ctx, self.modules, self.mode)
        out: dict[str, float | np.ndarray] = {}
        any_flag = 0.0
        for layer, h in acts.items():
            b, d = h.shape
            sv = singular_values(h, self.center)
            erank = effective_rank(sv)
            norm = math.sqrt(float(h.to(torch.float64).square().sum()) / max(b, 1))
            dead = float((h > 0).sum(0).eq(0).to(torch.float64).mean()) if d else 0.0
            norm0 = self._norm0.setdefault(layer, norm)
            flags = {
                "rank_collapse": erank < self.rank_frac * min(b, d),
                "dead_collapse": dead >= self.dead_frac_max,
                "norm_collapse": norm == 0.0 or norm <= self.norm_frac * norm0,
            }
            key = f"{self.name}/{layer}"
            out[f"{key}/erank"] = erank
            out[f"{key}/erank_frac"] = erank / min(b, d) if min(b, d) else 0.0
            out[f"{key}/pr"] = participation_ratio(sv)
            out[f"{key}/norm"] = norm
            out[f"{key}/dead_frac"] = dead
            for flag, on in flags.items():
                out[f"{key}/{flag}"] = float(on)
                any_flag = max(any_flag, float(on))
            if self.spectrum:
                out[f"{key}/sv"] = sv.cpu().numpy()
        out[f"{self.name}/collapse"] = any_flag
        return out

    def __repr__(self) -> str:
        return f"RepresentationProbe(every={self.every}, modules={self.modules}, mode={self.mode!r})"


def _norms(ts: Sequence[Tensor]) -> Tensor:
    """Euclidean norms of a list of tensors, in float64, as one vector."""
    if not ts:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in ts]).cpu()


def _diff_norms(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``_norms([x - y for x, y in zip(a, b)])`` with one batched subtraction (``torch._foreach_sub``)."""
    if not a:
        return torch.zeros(0, dtype=torch.float64)
    return _norms(torch._foreach_sub(list(a), list(b)))


class ParameterDistanceProbe(Probe):
    """Weight norms, update sizes and the distance travelled from initialisation.

    ``θ_0`` is ``ctx.init_params`` when given (``reference="init"``) and the first measured parameters
    otherwise; ``θ_prev`` the parameters at the previous measurement (the probe keeps one copy of each).
    Only trainable parameters count. ``per_param`` adds the per-tensor metrics.
    """

    name = "params"
    state_attrs = ("_init", "_prev")

    def __init__(self, every: int = 1, *, per_param: bool = True, reference: str = "init") -> None:
        super().__init__(every)
        self.per_param = bool(per_param)
        self.reference = check_choice("reference", reference, REFERENCES, owner=type(self).__name__)
        self.reset()

    def reset(self) -> None:
        self._init: dict[str, Tensor] | None = None
        self._prev: dict[str, Tensor] | None = None
        # norms of the fixed reference and of the previous measurement's parameters, computed once
        # (the same float64 norms as recomputing them; not part of the saved state)
        self._norm_init: tuple[dict[str, Tensor], Tensor] | None = None
        self._norm_prev: tuple[dict[str, Tensor], Tensor] | None = None

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        super().load_state_dict(state)
        self._norm_init = self._norm_prev = None

    @staticmethod
    def _cached_norms(
        cache: tuple[dict[str, Tensor], Tensor] | None, ref: dict[str, Tensor], names: list[str]
    ) -> tuple[dict[str, Tensor], Tensor]:
        if cache is not None and cache[0] is ref:
            return cache
        return ref, _norms([ref[n] for n in names])

    @staticmethod
    def _copy(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in params.items()}

    def measure(self, ctx: ProbeContext) -> Measurement:
        params = ctx.params
        names = list(params)
        if self._init is None or set(self._init) != set(names):
            init = ctx.init_params if self.reference == "init" else None
            if init is not None and all(n in init for n in names):
                self._init = {n: init[n].detach().to(params[n].device).clone() for n in names}
            else:
                self._init = self._copy(params)
            self._prev = None
        cur = [params[n] for n in names]
        with torch.no_grad():
            norm = _norms(cur)
            dist = _diff_norms(cur, [self._init[n] for n in names])
            self._norm_init = self._cached_norms(self._norm_init, self._init, names)
            norm0 = self._norm_init[1]
            update = norm_prev = None
            if self._prev is not None:
                update = _diff_norms(cur, [self._prev[n] for n in names])
                self._norm_prev = self._cached_norms(self._norm_prev, self._prev, names)
                norm_prev = self._norm_prev[1]

        def total(v: Tensor) -> float:
            return float(v.square().sum().sqrt())

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else (0.0 if a == 0 else math.inf)

        p = self.name
        out: dict[str, float | np.ndarray] = {
            f"{p}/norm": total(norm),
            f"{p}/dist_init": total(dist),
            f"{p}/dist_init_rel": ratio(total(dist), total(norm0)),
        }
        if update is not None and norm_prev is not None:
            out[f"{p}/update"] = total(update)
            out[f"{p}/update_rel"] = ratio(total(update), total(norm_prev))
        if self.per_param:
            norm_l, dist_l, norm0_l = norm.tolist(), dist.tolist(), norm0.tolist()
            update_l = None if update is None else update.tolist()
            for i, n in enumerate(names):
                out[f"{p}/{n}/norm"] = norm_l[i]
                out[f"{p}/{n}/dist_init"] = dist_l[i]
                out[f"{p}/{n}/dist_init_rel"] = ratio(dist_l[i], norm0_l[i])
                if update_l is not None:
                    out[f"{p}/{n}/update"] = update_l[i]
        self._prev = self._copy(params)
        self._norm_prev = (self._prev, norm)  # ‖θ_prev‖ of the next measurement is this ‖θ_t‖
        return out

    def __repr__(self) -> str:
        return f"ParameterDistanceProbe(every={self.every}, per_param={self.per_param})"
