r"""The Hessian along symmetry directions: the second-order Noether identity, measured.

For every detected continuous symmetry (:func:`~learndyn.probes.symmetry.detect_symmetries`) the probe builds
its generators ``ξ(θ) = Aθ + u`` (below) and checks, with exact Hessian-vector products on the batch loss,

    Hξ = −Aᵀ∇L      and      ξᵀHξ = −(Aξ)·∇L                 (:mod:`learndyn.theory.symmetry_hessian`)

so at a critical point every symmetry direction is a zero mode. Generators per symmetry kind:

* ``rescale`` (pair, ``units`` generators): unit ``j``'s incoming weights (row ``j`` and bias, or ``γ_j, β_j``
  of an affine normalisation) ``+1``, its outgoing weights (the consumer's input block ``j``) ``−1``;
* ``linear`` (pair, ``units²`` generators ``E_ij``, up to ``max_generators``): ``M₁ → E M₁``, ``M₂ → −Eᵀ M₂``
  (``M₂``: outgoing weights, units × fan-out);
* ``scale`` (one per normalised group): the projection on the group's incoming weights;
* ``translation`` (``fan_in + 1`` constant generators): one column of the final weight (``W[:, k] += 1``) or
  the bias (``b += 1``), with ``A = 0``.

Metrics (prefix ``hessian_symmetry/``; ``<kind>/<tag>`` as in the symmetry probe):

- ``<kind>/<tag>/residual``         max over the generators of ``‖Hξ + Aᵀ∇L‖ / (s‖ξ‖ + ‖Aᵀ∇L‖)``
- ``<kind>/<tag>/scalar_residual``  max of ``|ξᵀHξ + (Aξ)·∇L| / (s‖ξ‖² + |(Aξ)·∇L|)``
- ``<kind>/<tag>/curvature``        max of ``|ξᵀHξ| / (s‖ξ‖²)``: how far the directions are from zero modes
- ``<kind>/<tag>/generators``       number of generators checked
- ``max_residual``, ``grad_norm``   the largest residual of all; ``‖∇L‖``
- ``zero_modes``, ``symmetry_rank``, ``explained`` (models with at most ``full_hessian_max`` parameters): the
  full Hessian's eigenvalues with ``|λ| ≤ rtol·max|λ|``, the rank of all generators' directions, and the
  dimension of their span inside that near-null space (:func:`~learndyn.theory.explained_zero_modes`)

``s = ‖Hr‖`` for a fixed random unit vector ``r``: the scale of ``H`` the residuals are relative to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from learndyn.probes.base import Measurement, Probe, ProbeContext
from learndyn.probes.curvature import shared_hvp
from learndyn.probes.symmetry import Symmetry, detect_symmetries, is_cross_entropy, resolve_symmetry
from learndyn.theory.symmetry_hessian import explained_zero_modes
from learndyn.validation import check_int, check_real

Tensors = dict[str, Tensor]


@dataclass(frozen=True)
class Generator:
    """One generator ``ξ(θ) = A θ + u`` of a symmetry: ``linear(T)`` applies ``A`` and ``transpose(T)``
    applies ``Aᵀ`` to a dict of parameter-shaped tensors (names absent from the result are 0); ``offset`` is
    ``u``."""

    sym: Symmetry
    label: str
    linear: Callable[[Tensors], Tensors]
    transpose: Callable[[Tensors], Tensors]
    offset: Tensors | None = None

    def xi(self, params: Tensors) -> Tensors:
        out = self.linear(params)
        for name, u in (self.offset or {}).items():
            out[name] = out.get(name, torch.zeros_like(u)) + u
        return out


def _rows(t: Tensor, rows: list[int], src: list[int], sign: float = 1.0) -> Tensor:
    """``out[rows[k]] = sign·t[src[k]]`` along dim 0, zero elsewhere."""
    out = torch.zeros_like(t)
    out[rows] = sign * t[src]
    return out


def _cols(t: Tensor, units: int, cols: list[int], src: list[int], sign: float = 1.0) -> Tensor:
    """The consumer weight as ``(out, units, block)``: ``out[:, cols[k]] = sign·t[:, src[k]]``."""
    view = t.reshape(t.shape[0], units, -1)
    out = torch.zeros_like(view)
    out[:, cols] = sign * view[:, src]
    return out.reshape(t.shape)


def _pair_generator(sym: Symmetry, incoming: tuple[str, ...], outgoing: str, units: int, i: int, j: int
                    ) -> Generator:
    """``E_ij`` of a pair: ``M₁[i] ← M₁[j]``, ``M₂[j] ← −M₂[i]``; its transpose ``G₁[j] ← G₁[i]``,
    ``G₂[i] ← −G₂[j]``."""

    def linear(t: Tensors) -> Tensors:
        out = {n: _rows(t[n], [i], [j]) for n in incoming}
        out[outgoing] = _cols(t[outgoing], units, [j], [i], -1.0)
        return out

    def transpose(t: Tensors) -> Tensors:
        out = {n: _rows(t[n], [j], [i]) for n in incoming}
        out[outgoing] = _cols(t[outgoing], units, [i], [j], -1.0)
        return out

    label = f"unit{i}" if i == j else f"E{i},{j}"
    return Generator(sym, label, linear, transpose)


def symmetry_generators(model: torch.nn.Module, sym: Symmetry, max_generators: int = 4096) -> list[Generator]:
    """The generators of ``sym`` on ``model`` (see the module doc); at most ``max_generators``."""
    spec = resolve_symmetry(model, sym)
    params = dict(model.named_parameters())
    gens: list[Generator] = []
    if sym.kind == "rescale":
        assert spec.outgoing is not None
        gens = [_pair_generator(sym, spec.incoming, spec.outgoing, spec.units, j, j)
                for j in range(spec.units)]
    elif sym.kind == "linear":
        assert spec.outgoing is not None
        gens = [_pair_generator(sym, spec.incoming, spec.outgoing, spec.units, i, j)
                for i in range(spec.units) for j in range(spec.units)]
    elif sym.kind == "scale":
        groups = spec.units if sym.groups is None else sym.groups
        size = spec.units // groups
        for k in range(groups):
            rows = list(range(k * size, (k + 1) * size))

            def project(t: Tensors, rows: list[int] = rows) -> Tensors:
                return {n: _rows(t[n], rows, rows) for n in spec.incoming}

            gens.append(Generator(sym, f"group{k}", project, project))
    else:  # translation of the logits: constant generators
        weight = params[spec.incoming[0]]

        def zero(t: Tensors) -> Tensors:
            return {}

        for k in range(weight.shape[1]):
            u = torch.zeros_like(weight.detach())
            u[:, k] = 1.0
            gens.append(Generator(sym, f"col{k}", zero, zero, {spec.incoming[0]: u}))
        if len(spec.incoming) > 1:
            bias = params[spec.incoming[1]].detach()
            gens.append(Generator(sym, "bias", zero, zero, {spec.incoming[1]: torch.ones_like(bias)}))
    return gens[:max_generators]


@dataclass(frozen=True)
class GeneratorTerms:
    """Per generator (arrays of length ``k``): ``ξᵀHξ``, the prediction ``−(Aξ)·∇L``, ``s‖ξ‖²`` and the
    vector-identity residual; ``directions`` ``(k, P)``; ``hessian_scale`` ``s``; ``grad_norm``; the
    generators."""

    curvature: np.ndarray
    predicted: np.ndarray
    scale: np.ndarray
    residual: np.ndarray
    directions: np.ndarray
    hessian_scale: float
    grad_norm: float
    generators: list[Generator]


def generator_terms(ctx: ProbeContext, generators: list[Generator], seed: int = 0) -> GeneratorTerms:
    """Evaluate both sides of the identities for every generator at the state in ``ctx``."""
    hvp = shared_hvp(ctx)
    names = hvp.names
    named = dict(ctx.model.named_parameters())
    with torch.enable_grad():
        loss = ctx.adapter.loss(ctx.model, ctx.batch)
        grads = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True)
    grad = {n: (g.detach() if g is not None else torch.zeros_like(named[n])) for n, g in zip(names, grads,
                                                                                              strict=True)}
    theta = {n: named[n].detach() for n in names}

    def flat(t: Tensors) -> Tensor:
        return torch.cat([t[n].reshape(-1) if n in t else torch.zeros_like(theta[n]).reshape(-1)
                          for n in names])

    g_flat = flat(grad)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    r = torch.randn(hvp.dim, generator=gen, dtype=torch.float64).to(hvp.dtype)
    s = float(torch.linalg.vector_norm(hvp(r / torch.linalg.vector_norm(r))))
    curv, pred, scale, resid, dirs = [], [], [], [], []
    with torch.no_grad():
        for g in generators:
            xi_t = g.xi(theta)
            xi = flat(xi_t)
            hxi = hvp(xi)
            atg = flat(g.transpose(grad))
            axi = flat(g.linear(xi_t))
            xi_norm = float(torch.linalg.vector_norm(xi))
            curv.append(float(xi @ hxi))
            pred.append(-float(axi @ g_flat))
            scale.append(s * xi_norm**2)
            denom = s * xi_norm + float(torch.linalg.vector_norm(atg))
            num = float(torch.linalg.vector_norm(hxi + atg))
            resid.append(num / denom if denom > 0 else 0.0)
            dirs.append(xi.double().cpu().numpy())
    return GeneratorTerms(
        curvature=np.array(curv), predicted=np.array(pred), scale=np.array(scale), residual=np.array(resid),
        directions=np.array(dirs).reshape(len(generators), hvp.dim), hessian_scale=s,
        grad_norm=float(torch.linalg.vector_norm(g_flat)), generators=generators,
    )


def full_hessian(ctx: ProbeContext) -> np.ndarray:
    """The batch loss's Hessian ``(P, P)`` from ``P`` Hessian-vector products (symmetrised), float64."""
    hvp = shared_hvp(ctx)
    eye = torch.eye(hvp.dim, dtype=hvp.dtype, device=hvp.device)
    with torch.no_grad():
        H = torch.stack([hvp(eye[k]) for k in range(hvp.dim)]).double().cpu().numpy()
    return 0.5 * (H + H.T)


class SymmetryHessianProbe(Probe):
    """Checks the second-order Noether identity for every symmetry; counts the zero modes it explains.

    Args:
        every: measure every ``every`` steps.
        softmax: whether the model output feeds a softmax outside the model (``None``: decided from
            ``ctx.loss_fn``, cross-entropy → yes), which adds the translation symmetry.
        max_generators: at most this many generators per symmetry (linear pairs have ``units²``).
        full_hessian_max: compute the full Hessian (zero-mode counts) only up to this many parameters.
        rtol: eigenvalues with ``|λ| ≤ rtol·max|λ|`` count as zero modes.
    """

    name = "hessian_symmetry"
    needs = frozenset({"hvp"})

    def __init__(self, every: int = 1, *, softmax: bool | None = None, max_generators: int = 256,
                 full_hessian_max: int = 400, rtol: float = 1e-6) -> None:
        super().__init__(every)
        owner = type(self).__name__
        self.softmax = softmax
        self.max_generators = check_int("max_generators", max_generators, low=1, owner=owner)
        self.full_hessian_max = check_int("full_hessian_max", full_hessian_max, low=0, owner=owner)
        self.rtol = check_real("rtol", rtol, low=0.0, owner=owner)

    def generators(self, ctx: ProbeContext) -> list[Generator]:
        """All generators of the symmetries detected on ``ctx.model``."""
        softmax = is_cross_entropy(ctx.loss_fn) if self.softmax is None else self.softmax
        syms = detect_symmetries(ctx.model, softmax_output=softmax)
        return [g for s in syms for g in symmetry_generators(ctx.model, s, self.max_generators)]

    def measure(self, ctx: ProbeContext) -> Measurement:
        gens = self.generators(ctx)
        terms = generator_terms(ctx, gens, seed=ctx.step)
        out: dict[str, float] = {}
        worst = 0.0
        for sym in dict.fromkeys(g.sym for g in gens):
            idx = [k for k, g in enumerate(gens) if g.sym == sym]
            key = f"{self.name}/{sym.kind}/{sym.tag}"
            scalar = np.abs(terms.curvature[idx] - terms.predicted[idx]) / np.maximum(
                terms.scale[idx] + np.abs(terms.predicted[idx]), 1e-300)
            out[f"{key}/residual"] = float(terms.residual[idx].max())
            out[f"{key}/scalar_residual"] = float(scalar.max())
            out[f"{key}/curvature"] = float(np.max(np.abs(terms.curvature[idx]) / np.maximum(terms.scale[idx],
                                                                                           1e-300)))
            out[f"{key}/generators"] = float(len(idx))
            worst = max(worst, out[f"{key}/residual"], out[f"{key}/scalar_residual"])
        out[f"{self.name}/max_residual"] = worst
        out[f"{self.name}/grad_norm"] = terms.grad_norm
        if terms.directions.shape[1] <= self.full_hessian_max:
            counts = explained_zero_modes(full_hessian(ctx), terms.directions, rtol=self.rtol)
            out.update({f"{self.name}/{k}": float(v) for k, v in counts.items()})
        return out

    def __repr__(self) -> str:
        return f"SymmetryHessianProbe(every={self.every}, max_generators={self.max_generators})"
