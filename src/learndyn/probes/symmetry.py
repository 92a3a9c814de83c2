"""Conserved quantities of continuous parameter symmetries.

If the loss is invariant under a one-parameter group ``θ → exp(εA)θ`` of parameter transformations, its
gradient is orthogonal to the generator ``Aθ`` (Noether: ``⟨∇L, Aθ⟩ = 0``), and every quadratic form
``Q(θ)`` with ``∇Q ∝ Aθ`` is conserved by gradient flow ``θ̇ = −∇L``. Finite steps, weight decay and
adaptive (non-isotropic) optimizers break the conservation in known ways, which is what makes the drift of
these quantities a useful instrument. Four families are detected from the architecture:

**Rescaling** (``kind="rescale"``) between a layer producing units and the layer consuming them, through a
positively homogeneous, unit-wise map ``σ(a x) = a σ(x)`` for ``a > 0`` (ReLU, LeakyReLU, PReLU, identity,
dropout, max/avg pooling). Scaling the incoming weights of unit ``j`` (row ``j`` of ``W₁`` with its bias)
by ``a`` and its outgoing weights (column ``j`` of ``W₂``) by ``1/a`` leaves the function unchanged, so per
unit

    q_j = ‖W₁[j,:]‖² + b₁[j]² − ‖W₂[:,j]‖²          dq/dt = 0 under gradient flow.

For convolutions "row" and "column" are the output-channel slice of the producer and the input-channel
slice of the consumer (a flatten in between maps channel ``c`` to a block of input columns); an affine
normalisation layer can be the producer (its ``γ_j, β_j`` are the incoming weights of unit ``j``).

**Linear pairs** (``kind="linear"``): with no nonlinearity in between, any invertible ``A`` acts,
``W₁ → A W₁, b₁ → A b₁, W₂ → W₂ A⁻¹``, and with ``M₁ = [W₁ b₁]`` (units × fan-in) and ``M₂`` the outgoing
weights arranged units × fan-out (``W₂ᵀ`` for dense layers) the whole matrix

    Q = M₁M₁ᵀ − M₂M₂ᵀ   ( = W₁W₁ᵀ − W₂ᵀW₂ without biases)

is conserved (its diagonal is the rescaling ``q``). Deep linear networks start "balanced" when ``Q ≈ 0``.

**Translation** (``kind="translation"``) of softmax logits: a final dense layer ``z = W h + b`` feeding a
softmax (or cross-entropy) is invariant under ``W → W + 1vᵀ, b → b + s1``, so the class-sum of the gradient
vanishes and ``v = (1ᵀW, 1ᵀb)`` is conserved -- exactly, even by finite GD steps. Weight decay ``λ`` makes it
decay as ``(1 − ηλ)^k`` after ``k`` plain SGD steps, but *not* with momentum: under
``torch.optim.SGD(momentum=μ, weight_decay=λ)`` the charge and its momentum obey an exact gradient-free
2 × 2 linear recursion (:mod:`learndyn.theory.momentum_symmetry`), which for small ``ηλ/(1 − μ)²`` decays as
``(1 − ηλ/(1 − μ))^k`` -- ``1/(1 − μ)`` times faster (10× at ``μ = 0.9``). When the probe sees a
``torch.optim.SGD`` optimizer (``ctx.optimizer``; dampening 0, constant ``lr``) and measures from
``ctx.init_params``, it reports ``translation/<tag>/law_error``, ``‖v_k − v_k^law‖/‖v₀‖`` against that exact
law (round-off, ~1e-12, for a true translation symmetry).

**Scale** (``kind="scale"``) before normalisation: weights ``w_c`` (row with bias) feeding a BatchNorm (per
channel, training mode), GroupNorm (per group) or LayerNorm (all units together) can be scaled freely, so
``∇L ⊥ w`` and ``s = ‖w‖²`` (per normalised group) is conserved by the flow; finite steps make it grow,
``‖w_{t+1}‖² = ‖w_t‖² + η²‖∇_w L‖²``. (BatchNorm in eval mode and a nonzero ``eps`` break it slightly.)

With weight decay ``λ`` (``∇L + λθ``) and no momentum, every quadratic invariant above decays as
``e^{−2λt}`` (``t = η·steps``) and the translation vector as ``e^{−λt}``; heavy-ball momentum ``μ`` turns
the translation vector's rate into ``λ/(1 − μ)`` (above).

Detection (:mod:`learndyn.probes.symmetry_detect`) traces the model with ``torch.fx`` and follows single-use
data paths from each layer; when tracing fails it falls back to the order of ``nn.Sequential`` containers. A
path is accepted only if every step is known to respect the symmetry (anything else -- tanh, GELU, a
residual branch, a reused module, tied or frozen weights -- breaks it). Pairs can also be declared
explicitly.

Metrics (prefix ``symmetry/``; ``<tag>`` is ``<producer>-<consumer>`` for pairs, ``<producer>`` otherwise):

- ``<kind>/<tag>/norm``       ‖quantity‖ (Euclidean; Frobenius for the linear-pair matrix)
- ``<kind>/<tag>/drift``      ‖quantity − quantity₀‖ (quantity₀ from ``ctx.init_params`` or the first
                              measurement)
- ``<kind>/<tag>/rel_drift``  drift over a scale of the reference: ``‖M₁‖² + ‖M₂‖²`` (pairs), ``√C ‖[W b]‖``
                              (translation), ``Σ s`` (scale) -- each bounds ``‖quantity‖``
- ``<kind>/<tag>/value``      the quantity itself (array; ``q``, ``Q``, ``v`` or ``s``)
- ``translation/<tag>/law_error``  ``‖v − v^law‖/‖v₀‖`` against the exact SGD(momentum, weight decay) law
                              (only with a ``torch.optim.SGD`` optimizer and drift measured from init)
- ``scale/<tag>/total``       ``Σ s``, the total squared norm feeding the normalisation
- ``count``, ``max_rel_drift`` number of tracked symmetries and the largest relative drift
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from learndyn.probes.base import LossFn, Measurement, Probe, ProbeContext
from learndyn.probes.symmetry_detect import _CONV, _LAYERS, _NORMS, Symmetry, _units, detect_symmetries
from learndyn.theory.momentum_symmetry import charge_ratio
from learndyn.validation import LearndynValueError, check_choice, check_int

__all__ = [
    "REFERENCES",
    "Symmetry",
    "SymmetryProbe",
    "detect_symmetries",
    "is_cross_entropy",
    "resolve_symmetry",
    "symmetry_quantity",
]

REFERENCES = ("init", "first")

# ----------------------------------------------------------------------------------------------- quantities


def _row_square_sums(ts: Sequence[Tensor], units: int, block: int = 65536) -> Tensor:
    """``Σ_k M[j, k]²`` in float64, ``M`` the ``t.reshape(units, −1)`` of ``ts`` side by side (as
    ``_Spec.m_in``), converted to float64 and reduced ``≈ block`` numbers at a time."""
    width = sum(t.numel() // units for t in ts)
    step = max(1, block // max(width, 1))
    out = torch.empty(units, dtype=torch.float64, device=ts[0].device)
    rows = [t.reshape(units, -1) for t in ts]
    for r in range(0, units, step):
        part = [m[r : r + step].to(torch.float64) for m in rows]
        out[r : r + step] = (torch.cat(part, dim=1) if len(part) > 1 else part[0]).square().sum(1)
    return out


def _incoming_names(name: str, module: nn.Module) -> list[str]:
    return [f"{name}.{p}" for p in ("weight", "bias") if getattr(module, p, None) is not None]


@dataclass(frozen=True)
class _Spec:
    """A symmetry resolved against a model: parameter names and shapes needed to evaluate it."""

    sym: Symmetry
    incoming: tuple[str, ...]  # producer weight[, bias]
    norm_producer: bool  # producer is an affine normalisation: incoming params are vectors (γ, β)
    units: int
    outgoing: str | None  # consumer weight (pairs)

    @property
    def names(self) -> tuple[str, ...]:
        return self.incoming + ((self.outgoing,) if self.outgoing else ())

    def m_in(self, params: Mapping[str, Tensor]) -> Tensor:
        """``M₁``: incoming weights of each unit, ``(units, fan_in [+1])``."""
        ts = [params[n] for n in self.incoming]
        if self.norm_producer:
            return torch.stack(ts, dim=1)
        w = ts[0].reshape(self.units, -1)
        return torch.cat([w, ts[1].reshape(self.units, 1)], dim=1) if len(ts) > 1 else w

    def m_out(self, params: Mapping[str, Tensor]) -> Tensor:
        """``M₂``: outgoing weights of each unit, ``(units, fan_out · block)`` (``W₂ᵀ`` for dense layers)."""
        assert self.outgoing is not None
        w = params[self.outgoing]
        return w.reshape(w.shape[0], self.units, -1).transpose(0, 1).reshape(self.units, -1)

    def quantity(self, params: Mapping[str, Tensor]) -> Tensor:
        kind = self.sym.kind
        if kind == "rescale":
            return self.m_in(params).square().sum(1) - self.m_out(params).square().sum(1)
        if kind == "linear":
            a, b = self.m_in(params), self.m_out(params)
            return a @ a.T - b @ b.T
        if kind == "translation":
            ts = [params[n] for n in self.incoming]
            return torch.cat([ts[0].sum(0), ts[1].sum(0, keepdim=True)]) if len(ts) > 1 else ts[0].sum(0)
        s = self.m_in(params).square().sum(1)
        return s if self.sym.groups is None else s.reshape(self.sym.groups, -1).sum(1)

    def scale(self, params: Mapping[str, Tensor]) -> float:
        """A bound on ``‖quantity‖`` used to make the drift relative."""
        kind = self.sym.kind
        if kind in ("rescale", "linear"):
            return float(self.m_in(params).square().sum() + self.m_out(params).square().sum())
        if kind == "translation":
            sq = sum(params[n].square().sum() for n in self.incoming)
            return math.sqrt(self.units * float(sq))
        return float(self.m_in(params).square().sum())


def _module(model: nn.Module, name: str, owner: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise LearndynValueError(
            f"{owner}={name!r} is not a submodule of {type(model).__name__}; "
            "allowed: a name from named_modules()"
        ) from None


def _bad(sym: Symmetry, why: str) -> LearndynValueError:
    return LearndynValueError(f"Symmetry {sym.kind} {sym.tag!r} is not allowed: {why}")


def resolve_symmetry(model: nn.Module, sym: Symmetry) -> _Spec:
    """Check ``sym`` against ``model``'s modules and shapes; return its evaluator (raise if inconsistent)."""
    prod = _module(model, sym.producer, "Symmetry.producer")
    if sym.kind == "translation":
        if not isinstance(prod, nn.Linear):
            raise _bad(sym, f"producer is {type(prod).__name__}; allowed: nn.Linear")
        return _Spec(sym, tuple(_incoming_names(sym.producer, prod)), False, prod.out_features, None)
    norm_producer = isinstance(prod, _NORMS)
    if sym.kind == "rescale" and norm_producer:
        if _units(prod) is None or getattr(prod, "weight", None) is None:
            raise _bad(sym, "normalisation producer needs affine weights and a 1-d feature shape")
    elif not isinstance(prod, _LAYERS):
        allowed = "nn.Linear, nn.ConvNd" + (" or an affine normalisation" if sym.kind == "rescale" else "")
        raise _bad(sym, f"producer is {type(prod).__name__}; allowed: {allowed}")
    units = _units(prod)
    assert units is not None
    incoming = tuple(_incoming_names(sym.producer, prod))
    if sym.kind == "scale":
        groups = sym.groups
        if sym.consumer is not None:
            norm = _module(model, sym.consumer, "Symmetry.consumer")
            if not isinstance(norm, _NORMS):
                raise _bad(sym, f"consumer is {type(norm).__name__}; allowed: a normalisation module")
            if groups is None and isinstance(norm, nn.LayerNorm):
                groups = 1
            elif groups is None and isinstance(norm, nn.GroupNorm):
                groups = norm.num_groups
        if groups is not None and units % groups:
            raise _bad(sym, f"groups={groups} does not divide the {units} units")
        return _Spec(Symmetry("scale", sym.producer, sym.consumer, groups), incoming, False, units, None)
    assert sym.consumer is not None
    cons = _module(model, sym.consumer, "Symmetry.consumer")
    if not isinstance(cons, _LAYERS):
        raise _bad(sym, f"consumer is {type(cons).__name__}; allowed: nn.Linear or nn.ConvNd")
    fan = cons.in_features if isinstance(cons, nn.Linear) else cons.in_channels
    if isinstance(cons, _CONV) and cons.groups != 1:
        raise _bad(sym, f"consumer has groups={cons.groups}; allowed: groups=1")
    if fan % units:
        raise _bad(sym, f"consumer fan-in {fan} is not a multiple of the producer's {units} units")
    if sym.kind == "linear" and (norm_producer or (isinstance(prod, _CONV) and prod.groups != 1)):
        raise _bad(sym, "a linear pair needs a dense or ungrouped convolutional producer")
    return _Spec(sym, incoming, norm_producer, units, f"{sym.consumer}.weight")


def symmetry_quantity(model: nn.Module, sym: Symmetry, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """The conserved quantity of ``sym`` (``q``, ``Q``, ``v`` or ``s``; see the module doc), differentiable.

    ``params`` maps parameter names to tensors (default: the model's own parameters), so the quantity can
    be evaluated at stored parameters or differentiated with ``torch.func``.
    """
    spec = resolve_symmetry(model, sym)
    return spec.quantity(dict(model.named_parameters()) if params is None else params)


def is_cross_entropy(loss_fn: LossFn | None) -> bool:
    """Whether ``loss_fn`` is (a partial of) cross-entropy, i.e. the model's outputs are softmax logits."""
    fn: Any = loss_fn
    while isinstance(fn, functools.partial):
        fn = fn.func
    return isinstance(fn, nn.CrossEntropyLoss) or fn is F.cross_entropy


# ----------------------------------------------------------------------------------------------- the probe


class SymmetryProbe(Probe):
    """Tracks the conserved quantities of the model's parameter symmetries and their drift.

    Args:
        every: measure every ``every`` steps.
        symmetries: symmetries to track besides the detected ones: :class:`Symmetry` objects or
            ``(producer, consumer)`` tuples (a rescaling pair).
        detect: detect symmetries from the architecture (:func:`detect_symmetries`) on first use.
        softmax: whether the model output feeds a softmax outside the model; ``None`` decides from
            ``ctx.loss_fn`` (cross-entropy → yes).
        reference: ``"init"`` measures drift from ``ctx.init_params`` when given (else from the first
            measurement); ``"first"`` always from the first measurement.
        max_matrix: report the linear-pair matrix ``Q`` as an array only up to this many units.
        arrays: report the ``value`` arrays at all.

    Quantities are computed in float64 from the detached parameters; the model is never run.
    """

    name = "symmetry"

    def __init__(
        self,
        every: int = 1,
        *,
        symmetries: Iterable[Symmetry | tuple[str, str]] = (),
        detect: bool = True,
        softmax: bool | None = None,
        reference: str = "init",
        max_matrix: int = 256,
        arrays: bool = True,
    ) -> None:
        super().__init__(every)
        owner = type(self).__name__
        self.declared = [self._as_symmetry(s) for s in symmetries]
        self.detect = bool(detect)
        if softmax is not None and not isinstance(softmax, bool):
            raise LearndynValueError(
                f"{owner}.softmax={softmax!r} is not allowed; allowed: True, False, None"
            )
        self.softmax = softmax
        self.reference = check_choice("reference", reference, REFERENCES, owner=owner)
        self.max_matrix = check_int("max_matrix", max_matrix, low=0, owner=owner)
        self.arrays = bool(arrays)
        self.reset()

    @staticmethod
    def _as_symmetry(s: Symmetry | tuple[str, str]) -> Symmetry:
        if isinstance(s, Symmetry):
            return s
        if isinstance(s, tuple) and len(s) == 2:
            return Symmetry("rescale", s[0], s[1])
        raise LearndynValueError(
            f"SymmetryProbe.symmetries entry {s!r} is not allowed; allowed: Symmetry or (producer, consumer)"
        )

    def reset(self) -> None:
        self._model_id: int | None = None
        self.specs: list[_Spec] = []
        self._refs: dict[Symmetry, tuple[Tensor, float]] = {}
        self._restored_refs: dict[Symmetry, tuple[Tensor, float]] = {}

    def state_dict(self) -> dict[str, Any]:
        """The reference quantity of each tracked symmetry (what drift is measured against)."""
        refs = self._refs or self._restored_refs
        return {"refs": {sym: (q.detach().cpu().clone(), scale) for sym, (q, scale) in refs.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the references; they are matched to the model's symmetries at the next measurement."""
        if set(state) != {"refs"}:
            raise ValueError(f"SymmetryProbe.load_state_dict: state keys {sorted(state)}; allowed: refs")
        self._model_id = None
        self._refs = {}
        self._restored_refs = {sym: (q.clone(), float(scale)) for sym, (q, scale) in state["refs"].items()}

    def symmetries(self) -> list[Symmetry]:
        """The symmetries tracked (after the first measurement)."""
        return [s.sym for s in self.specs]

    def _resolve(self, ctx: ProbeContext) -> None:
        softmax = is_cross_entropy(ctx.loss_fn) if self.softmax is None else self.softmax
        syms = detect_symmetries(ctx.model, softmax_output=softmax) if self.detect else []
        seen = {(s.kind, s.producer, s.consumer) for s in syms}
        syms += [s for s in self.declared if (s.kind, s.producer, s.consumer) not in seen]
        self.specs = [resolve_symmetry(ctx.model, s) for s in syms]
        device = next((p.device for p in ctx.model.parameters()), torch.device("cpu"))
        self._refs = {  # references restored from a checkpoint, else measured afresh
            sym: (q.to(device), scale) for sym, (q, scale) in self._restored_refs.items()
        }
        self._restored_refs = {}
        self._model_id = id(ctx.model)

    @staticmethod
    def _float64(params: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
        return {n: params[n].detach().to(torch.float64) for n in names}

    def _reference(
        self, spec: _Spec, ctx: ProbeContext, params: Mapping[str, Tensor]
    ) -> tuple[Tensor, float]:
        ref = self._refs.get(spec.sym)
        if ref is None:
            init = ctx.init_params if self.reference == "init" else None
            src = self._float64(params, spec.names)
            if init is not None and all(n in init for n in spec.names):
                device = params[spec.names[0]].device
                src = {n: t.to(device) for n, t in self._float64(init, spec.names).items()}
            ref = self._refs[spec.sym] = (spec.quantity(src), spec.scale(src))
        return ref

    def _quantity64(self, spec: _Spec, params: Mapping[str, Tensor]) -> Tensor:
        """``spec.quantity`` of the parameters in float64. A unit's squared incoming norm (rescale and scale
        symmetries) is summed a block of rows at a time, each converted on its own: the same numbers as
        converting the whole weight first (each row is reduced alone), without a float64 copy of the
        widest layer (800 KB for 784 × 128, whose first touch cost more than the sums)."""
        kind = spec.sym.kind
        if kind not in ("rescale", "scale") or spec.norm_producer:
            return spec.quantity(self._float64(params, spec.names))
        s = _row_square_sums([params[n].detach() for n in spec.incoming], spec.units)
        if kind == "scale":
            return s if spec.sym.groups is None else s.reshape(spec.sym.groups, -1).sum(1)
        assert spec.outgoing is not None
        return s - spec.m_out(self._float64(params, [spec.outgoing])).square().sum(1)

    def measure(self, ctx: ProbeContext) -> Measurement:
        if self._model_id != id(ctx.model):
            self._resolve(ctx)
        params = dict(ctx.model.named_parameters())
        out: dict[str, float | np.ndarray] = {}
        worst = 0.0
        with torch.no_grad():
            for spec in self.specs:
                q = self._quantity64(spec, params)
                q0, scale0 = self._reference(spec, ctx, params)
                drift = float(torch.linalg.vector_norm(q - q0))
                rel = drift / scale0 if scale0 > 0 else (0.0 if drift == 0 else math.inf)
                worst = max(worst, rel)
                key = f"{self.name}/{spec.sym.kind}/{spec.sym.tag}"
                out[f"{key}/norm"] = float(torch.linalg.vector_norm(q))
                out[f"{key}/drift"] = drift
                out[f"{key}/rel_drift"] = rel
                if spec.sym.kind == "scale":
                    out[f"{key}/total"] = float(q.sum())
                if spec.sym.kind == "translation":
                    law = self._translation_law(spec, ctx, params, q0)
                    if law is not None:
                        size = float(torch.linalg.vector_norm(q0))
                        err = float(torch.linalg.vector_norm(q - law))
                        out[f"{key}/law_error"] = err / size if size > 0 else err
                if self.arrays and (spec.sym.kind != "linear" or spec.units <= self.max_matrix):
                    out[f"{key}/value"] = q.cpu().numpy()
        out[f"{self.name}/count"] = float(len(self.specs))
        out[f"{self.name}/max_rel_drift"] = worst
        return out

    def _translation_law(
        self, spec: _Spec, ctx: ProbeContext, params: Mapping[str, Tensor], q0: Tensor
    ) -> Tensor | None:
        """The charge ``v_k`` the exact SGD law predicts from ``v₀`` after ``ctx.step`` updates, or ``None``
        when it does not apply (not ``torch.optim.SGD``, dampening, parameters split over groups, or drift
        not measured from the initial parameters)."""
        opt = ctx.optimizer
        init = ctx.init_params
        if not isinstance(opt, torch.optim.SGD) or self.reference != "init" or init is None:
            return None
        if not all(n in init for n in spec.names):
            return None
        ids = {id(params[n]) for n in spec.names}
        groups = [g for g in opt.param_groups if ids & {id(p) for p in g["params"]}]
        if len(groups) != 1 or not ids <= {id(p) for p in groups[0]["params"]}:
            return None
        g = groups[0]
        if float(g.get("dampening", 0.0)) != 0.0 or g.get("maximize", False):
            return None
        ratio = charge_ratio(
            float(g["lr"]), [ctx.step], float(g["weight_decay"]), float(g["momentum"]), bool(g["nesterov"])
        )
        return q0 * float(ratio[0])

    def __repr__(self) -> str:
        return f"SymmetryProbe(every={self.every}, declared={len(self.declared)}, detect={self.detect})"
