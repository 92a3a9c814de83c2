"""Exact diagonal and trace of the generalised Gauss-Newton matrix, by structured backpropagation.

For the mean loss ``L = (1/B) Σ_i ℓ(f(x_i), y_i)`` with per-sample output Jacobians ``J_i = ∂f(x_i)/∂θ``
(``O × P``) and output Hessians ``H_i = ∂²ℓ/∂f²`` (``O × O``), the Hessian is

    ∇²L = G + (1/B) Σ_i Σ_a (∂ℓ/∂f_a) ∇²_θ f_a(x_i),      G = (1/B) Σ_i J_iᵀ H_i J_i   (Gauss-Newton)

``G`` is what second-order optimisers and most curvature analyses use; it is positive semi-definite for a
convex loss (cross-entropy, squared error). ``∇²L`` and ``G`` have the same *diagonal* -- and so the same
trace -- whenever the network is linear in each single parameter with the others held fixed (piecewise
linear activations: ReLU MLPs and CNNs; linear networks), since then ``∂²f/∂θ_k² = 0``.

With ``H_i = V_i diag(λ_i) V_iᵀ`` (an ``O × O`` eigendecomposition per sample),
``G = Σ_{c,i} s_ci u_ci u_ciᵀ`` for the rows ``u_ci = J_iᵀ v_ic √(|λ_ic|/B)`` and signs
``s_ci = sign λ_ic``. So

    diag G = Σ_{c,i} s_ci u_ci ⊙ u_ci          tr G = Σ_{c,i} s_ci ‖u_ci‖²

and each ``u_ci`` is the gradient of ``(v_ic √(|λ_ic|/B))ᵀ f(x_i)``: ``O`` batched backward passes of the
network outputs (``is_grads_batched``, in chunks), contracted layer by layer with the factors of
:mod:`learndyn.stats.factors` (for a Linear layer with one position, ``diag G^W = Σ_{c,i} s_ci δ_ci² a_i²ᵀ``
and ``tr G^W = Σ_{c,i} s_ci ‖δ_ci‖²‖a_i‖²``) -- no Jacobian, no Hessian-vector product. Other parameters use
per-sample Jacobians (:func:`learndyn.stats.ntk.per_sample_jacobians`). Cost: ``O`` backward passes of the
activations (not the weights), so it is cheap for few outputs (classes) and expensive for many (the
``T·V`` logits of a language model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from learndyn.stats.attention import math_attention
from learndyn.stats.batch import (
    Batch,
    BatchAdapter,
    as_single,
    batch_size,
    is_plain_cross_entropy,
    vmap_dims,
)
from learndyn.stats.factors import CHUNK_ELEMENTS, Contraction, FactorCapture, capture_for, verify
from learndyn.stats.ntk import per_sample_jacobians


@dataclass
class GaussNewtonDiagonal:
    """``diag`` ``{name: diagonal of G restricted to the parameter}`` (parameter shapes; empty when
    computed with ``diagonal=False``); ``traces`` ``{name: its sum}``; ``trace`` their total; ``loss`` the
    batch loss; ``route`` ``{name: "hooks" | "jacobian"}``."""

    diag: dict[str, Tensor]
    traces: dict[str, float]
    trace: float
    loss: float
    route: dict[str, str]


def output_hessians(adapter: BatchAdapter, outputs: Tensor, targets: object) -> Tensor:
    """``(B, O, O)``: ``∂²ℓ_i/∂f_i²`` of each sample's loss (a batch of one) in its flattened outputs."""
    B = outputs.shape[0]
    shape = outputs.shape[1:]
    pair = (outputs.detach(), targets)
    dims = vmap_dims(pair, B)

    def single(pair_i: tuple) -> Tensor:
        o, t = as_single(pair_i, dims)
        return jacrev(jacrev(lambda flat: adapter.loss_of_outputs(flat.reshape(1, *shape), t)))(o.reshape(-1))

    return vmap(single, in_dims=(dims,))(pair)


def output_factors(adapter: BatchAdapter, outputs: Tensor, targets: object) -> tuple[Tensor, Tensor]:
    """Cotangents ``U`` (``(R, B, *output shape)``) and signs ``W`` (``(R, B)``) with
    ``(1/B) H_i = Σ_r W_ri U_ri U_riᵀ`` for every sample ``i`` (module docstring).

    Cross-entropy with class-index targets (``F.cross_entropy`` or a plain ``nn.CrossEntropyLoss`` on
    ``(B, C)`` logits) has the closed form ``H_i = diag(p_i) − p_i p_iᵀ = Σ_c u_ic u_icᵀ``,
    ``u_ic = √p_ic (e_c − p_i)`` (``p_i`` the softmax): ``R = C``, no eigendecomposition. Any other loss:
    ``H_i`` by ``vmap(jacrev(jacrev))`` and ``eigh``, ``R = O``.
    """
    B = outputs.shape[0]
    with torch.no_grad():
        if (
            adapter.loss_fn is not None
            and is_plain_cross_entropy(adapter.loss_fn)
            and outputs.dim() == 2
            and isinstance(targets, Tensor)
            and targets.shape == (B,)
            and not targets.is_floating_point()
            and bool((targets >= 0).all())
        ):
            p = torch.softmax(outputs, -1)
            C = p.shape[1]
            eye = torch.eye(C, dtype=p.dtype, device=p.device)
            U = (p.T.sqrt() / B**0.5).unsqueeze(-1) * (eye.unsqueeze(1) - p.unsqueeze(0))  # (C, B, C)
            return U, torch.ones(C, B, dtype=p.dtype, device=p.device)
        lam, vec = torch.linalg.eigh(output_hessians(adapter, outputs, targets))  # (B, O), (B, O, O)
        scale = (lam.abs() / B).sqrt()
        U = (vec * scale.unsqueeze(1)).permute(2, 0, 1).reshape(lam.shape[1], B, *outputs.shape[1:])
        return U, lam.sign().T


def gauss_newton_diagonal(
    model: nn.Module,
    adapter: BatchAdapter,
    batch: Batch,
    *,
    chunk_size: int | None = None,
    capture: FactorCapture | None = None,
    diagonal: bool = True,
) -> GaussNewtonDiagonal:
    """Exact ``diag G`` and ``tr G`` of the batch's mean loss (see the module docstring).

    Needs the loss as a function of the outputs (``adapter.has_split``). ``chunk_size``: cotangents per
    batched backward pass (default: as many as keep the output gradients under ~67M numbers).
    ``diagonal=False`` computes the traces only (``diag`` is then empty): for a Linear layer
    ``tr G^W = Σ_{c,i} s_ci ‖δ_ci‖²‖a_i‖²`` needs no ``d_out × d_in`` product, which is most of the cost
    on an MLP (the same numbers; layers still unverified compute their diagonals once for the check).
    """
    if not adapter.has_split:
        raise ValueError("gauss_newton_diagonal needs BatchAdapter(loss_fn=...) or per_sample_loss=")
    cap = capture_for(model) if capture is None else capture
    B = batch_size(batch)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    targets = adapter.targets(batch)
    try:
        with torch.enable_grad(), math_attention():
            out = cap.run(B, lambda: adapter.outputs(model, batch))
            loss = float(adapter.loss_of_outputs(out, targets).detach())
        U_all, W_all = output_factors(adapter, out.detach(), targets)  # (R, B, *shape), (R, B)
        R = U_all.shape[0]
        layers = cap.active()
        outs = cap.outputs(layers)
        acc: dict[str, dict[str, Tensor]] = {}
        want_sq = diagonal or any(layer.unverified for layer in layers)
        if layers:
            chunk = chunk_size or max(1, CHUNK_ELEMENTS // max(sum(t.numel() for t in outs), 1))
            for start in range(0, R, chunk):
                U = U_all[start : start + chunk]
                spec = Contraction(None, sq=want_sq, trace=True, weights=W_all[start : start + chunk])
                with math_attention():
                    grads = torch.autograd.grad(
                        out, outs, U, retain_graph=True, allow_unused=True, is_grads_batched=True
                    )
                for name, r in cap.contract(layers, list(grads), spec).items():
                    got = acc.setdefault(name, {"trace": r["trace"] * 0})
                    if want_sq:
                        got["sq"] = got["sq"] + r["sq"] if "sq" in got else r["sq"]
                    got["trace"] += r["trace"]
    finally:
        cap.clear()
    route = dict.fromkeys(acc, "hooks")
    pending = [layer for layer in layers if layer.unverified]
    rest = [n for n in trainable if n not in acc]
    check = [n for layer in pending for n in layer.names.values()]
    if rest or check:
        jac = per_sample_jacobians(model, adapter.outputs, batch, rest + check)
        ref = {}
        for name, J in jac.items():  # J: (B, O, *shape); rows u_ci = J_iᵀ U[c, i]
            rows = torch.einsum("bo...,cbo->cb...", J, U_all.reshape(R, B, -1))
            w = W_all.reshape(R, B, *([1] * (rows.dim() - 2)))
            sq = (w * rows.square()).sum((0, 1))
            ref[name] = {"sq": sq, "trace": sq.sum()}
        for layer in pending:
            mine = list(layer.names.values())
            if not verify(layer, {n: acc[n]["sq"] for n in mine}, {n: ref[n]["sq"] for n in mine}):
                rest += mine
        for n in rest:
            acc[n] = ref[n]
            route[n] = "jacobian"
    diag = {n: acc[n]["sq"].detach() for n in trainable} if diagonal else {}
    traces = {n: float(acc[n]["trace"]) for n in trainable}
    return GaussNewtonDiagonal(diag, traces, sum(traces.values()), loss, {n: route[n] for n in trainable})
