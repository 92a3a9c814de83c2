"""Per-sample Jacobians and the empirical NTK by structured derivatives.

For network outputs ``f(x; θ) ∈ R^O`` on ``n`` samples, ``J_i = ∂f(x_i)/∂θ`` (``O × P``) and

    Θ_ij = Σ_a ⟨∂f_a(x_i)/∂θ, ∂f_a(x_j)/∂θ⟩           ("trace", n × n)
    Θ[(i,a),(j,b)] = ⟨∂f_a(x_i)/∂θ, ∂f_b(x_j)/∂θ⟩       ("full", nO × nO, rows sample-major)

*Structured derivatives* (:func:`structured_ntk`): one forward pass with the capture hooks of
:mod:`learndyn.stats.factors` and, per output ``a``, the output gradients ``δ^a_{it} = ∂f_a(x_i)/∂z_{it}`` of
every supported layer, all outputs at once by a batched backward pass (``is_grads_batched``, in chunks of
``chunk_size`` outputs). A Linear layer's contribution is then, without any Jacobian,

    Θ^W_ij = Σ_a Σ_{t,s} (a_it·a_js)(δ^a_it·δ^a_js)  =  (a_i·a_j)(Δ_i·Δ_j)   (T = 1, Δ_i = vec_a δ^a_i)

(``O(n²(d_in + O·d_out))`` instead of ``O(n·O·d_in·d_out)`` for the Jacobian), and likewise for embeddings,
convolutions and norm layers (see :mod:`learndyn.stats.factors`). The remaining parameters (bare
parameters, attention's ``in_proj_weight``, shared weights) use :func:`per_sample_jacobians`, restricted to
them. The result equals the Jacobian contraction ``J Jᵀ`` up to round-off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from learndyn.stats.attention import math_attention
from learndyn.stats.batch import Batch, as_single, batch_size, functional, vmap_dims
from learndyn.stats.factors import CHUNK_ELEMENTS, Contraction, FactorCapture, capture_for, verify

Forward = Callable[[nn.Module, Batch], Tensor]
"""``forward(model, batch) -> outputs`` of shape ``(n, ...)``."""


def _params(model: nn.Module, override: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if override is not None:
        trainable.update({n: override[n].detach() for n in trainable if n in override})
    return trainable


def per_sample_jacobians(
    model: nn.Module,
    forward: Forward,
    batch: Batch,
    names: Sequence[str] | None = None,
    *,
    params: Mapping[str, Tensor] | None = None,
    select: Tensor | None = None,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """``{name: (n, O, *shape)}``: ``∂f_a(x_i)/∂θ`` by ``vmap(jacrev)`` over the samples.

    ``select`` keeps the flattened outputs at those indices (``O = len(select)``); ``params`` overrides
    parameter values by name; ``names`` restricts the parameters (default: all trainable).
    """
    theta = _params(model, params)
    if names is not None:
        theta = {n: theta[n] for n in names}
    f = functional(model, forward)
    dims = vmap_dims(batch)

    def single(p: dict[str, Tensor], sample: Batch) -> Tensor:
        out = f(p, as_single(sample, dims)).reshape(-1)
        return out if select is None else out[select]

    with torch.enable_grad(), math_attention():
        return vmap(jacrev(single), in_dims=(None, dims), chunk_size=chunk_size, randomness="different")(
            theta, batch
        )


def jacobian_gram(jac: Mapping[str, Tensor], outputs: str) -> dict[str, Tensor]:
    """Per-parameter kernels ``J Jᵀ`` from :func:`per_sample_jacobians` (``"trace"`` or ``"full"``)."""
    out = {}
    for name, J in jac.items():
        n, O = J.shape[:2]
        rows = J.reshape(n, -1) if outputs == "trace" else J.reshape(n * O, -1)
        out[name] = rows @ rows.T
    return out


def structured_ntk(
    model: nn.Module,
    forward: Forward,
    batch: Batch,
    *,
    outputs: str = "trace",
    params: Mapping[str, Tensor] | None = None,
    select: Tensor | None = None,
    chunk_size: int | None = None,
    capture: FactorCapture | None = None,
) -> dict[str, Tensor]:
    """Per-parameter empirical NTKs ``{name: Θ^θ}`` by structured derivatives (module docstring).

    Their sum over parameters is the NTK. ``outputs="full"`` needs all output gradients at once
    (``chunk_size`` is then ignored); ``"trace"`` accumulates over chunks of ``chunk_size`` outputs
    (default: as many as keep the batched gradients under ``CHUNK_ELEMENTS`` numbers). ``capture`` reuses a
    :class:`~learndyn.stats.factors.FactorCapture` of ``model`` (its verification of unbatched calls carries
    over between calls).
    """
    cap = capture_for(model) if capture is None else capture
    n = batch_size(batch)
    names = cap.names
    grams: dict[str, Tensor] = {}
    try:
        with torch.enable_grad(), math_attention():
            if params is None:  # the model as it is: its trainable parameters carry the graph
                out = cap.run(n, lambda: forward(model, batch))
            else:
                theta = {k: v.requires_grad_(True) for k, v in _params(model, params).items()}
                out = cap.run(n, lambda: functional(model, forward)(theta, batch))
            flat = out.reshape(n, -1)
            if select is not None:
                flat = flat[:, select]
            O = flat.shape[1]
            layers = cap.active()
            outs = cap.outputs(layers)
            if layers:
                per_cotangent = sum(t.numel() for t in outs)
                chunk = (
                    O if outputs == "full" else chunk_size or max(1, CHUNK_ELEMENTS // max(per_cotangent, 1))
                )
                spec = Contraction(outputs)
                for start in range(0, O, chunk):
                    c = min(chunk, O - start)
                    if O == 1:
                        grads = torch.autograd.grad(
                            flat, outs, torch.ones_like(flat), retain_graph=True, allow_unused=True
                        )
                        grads = tuple(None if g is None else g.unsqueeze(0) for g in grads)
                    else:
                        eye = torch.eye(O, dtype=flat.dtype, device=flat.device)
                        U = eye[start : start + c].unsqueeze(1).expand(c, n, O)
                        grads = torch.autograd.grad(
                            flat, outs, U, retain_graph=True, allow_unused=True, is_grads_batched=True
                        )
                    for name, r in cap.contract(layers, list(grads), spec).items():
                        grams[name] = r["gram"] if name not in grams else grams[name] + r["gram"]
    finally:
        cap.clear()
    pending = [layer for layer in layers if layer.unverified]
    rest = [k for k in names if k not in grams]
    check = [k for layer in pending for k in layer.names.values()]
    if rest or check:
        jac = per_sample_jacobians(model, forward, batch, rest + check, params=params, select=select)
        ref = jacobian_gram(jac, outputs)
        for layer in pending:
            mine = list(layer.names.values())
            if not verify(layer, {k: grams[k] for k in mine}, ref):
                rest += mine
        grams.update({k: ref[k] for k in rest})
    return {k: grams[k].detach() for k in names}
