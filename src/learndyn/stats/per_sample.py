"""Per-sample gradients and their Gram matrix, by ``torch.func`` or by layer hooks.

Convention
----------
The training loss is the mean of per-sample losses, ``L(θ) = (1/B) Σ_i ℓ_i(θ)`` with
``ℓ_i = loss_fn(f(x_i), y_i)`` evaluated on the single sample ``i`` (a batch of one). The *per-sample
gradient* is ``g_i = ∇_θ ℓ_i`` -- **not** the ``(1/B) ∇ℓ_i`` that sample ``i`` contributes to the batch
gradient -- so the batch gradient is their mean, ``ḡ = ∇L = (1/B) Σ_i g_i``. Inputs of shape
``(B, T, d)`` (sequences) are handled inside each sample: ``ℓ_i`` is whatever ``loss_fn`` makes of the
sample's ``T`` positions, and for a layer applied position-wise the per-sample gradient is the sum over ``T``.
Batches other than ``(inputs, targets)`` pairs (dicts, custom losses) are read through a
:class:`~learndyn.stats.batch.BatchAdapter` (the ``*_of`` functions).

Two routes
----------
``per_sample_grads`` (vmap route) materialises ``g_i`` for every parameter with
``vmap(grad(ℓ_i ∘ functional_call))``: memory ``O(B·P)``, roughly ``B`` single-sample backward passes.

``gradient_gram`` (hook route) runs *one* ordinary forward and backward pass of the batch loss with forward
hooks on the supported layers (:mod:`learndyn.stats.factors`: ``nn.Linear`` on inputs ``(B, …, d_in)``,
``nn.Conv2d``, ``nn.Embedding``, ``nn.LayerNorm``, ``nn.RMSNorm``) and the output gradients
``∂L/∂z_i = (1/B) δ_i`` (so ``δ`` is the captured gradient times ``B``). For a Linear layer

    g_i^W = Σ_t δ_{it} a_{it}ᵀ        (d_out × d_in)        g_i^b = Σ_t δ_{it}
    ⟨g_i^W, g_j^W⟩ = Σ_{t,s} (a_{it}·a_{js}) (δ_{it}·δ_{js})  ⟶  (a_i·a_j)(δ_i·δ_j)  when T = 1

which costs ``O(B² T² (d_in + d_out))`` instead of ``O((B T + B²) d_in d_out)``; per layer the cheaper of
this and materialising ``g_i^W`` (one batched ``einsum``) is used, so long sequences materialise. Embeddings
(a Linear layer on one-hot inputs), convolutions (one grouped weight-gradient convolution) and the affine
parameters of norm layers factor the same way (see :mod:`learndyn.stats.factors`). A layer called several
times in one forward pass (weight reuse) has its calls summed. Parameters of any other module (attention's
bare ``in_proj_weight``, bare parameters, shared weights, grouped or non-zero-padded convolutions) fall back
to the vmap route, restricted to those parameters.

Both routes assume the model treats samples independently (no BatchNorm in training mode); the Monitor runs
probes in eval mode by default for that reason. The vmap route runs attention on the math backend
(:mod:`learndyn.stats.attention`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from learndyn.stats.attention import math_attention
from learndyn.stats.batch import (
    Batch,
    BatchAdapter,
    as_single,
    batch_size,
    functional,
    reduction_problem,
    vmap_dims,
)
from learndyn.stats.factors import Contraction, capture_for, verify
from learndyn.validation import LearndynValueError, check_choice

LossFn = Callable[[Tensor, Tensor], Tensor]

ROUTES = ("hooks", "vmap")


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def per_sample_grads(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Per-sample gradients ``g_i = ∇ℓ_i`` by ``vmap(grad(functional_call))``.

    Returns ``{name: tensor of shape (B, *param.shape)}`` for the trainable parameters in ``names``
    (default: all trainable parameters). Buffers and the other parameters are held fixed. Does not touch
    ``param.grad``; the model's train/eval mode is used as is.
    """
    return per_sample_grads_of(model, BatchAdapter(loss_fn), (inputs, targets), names)


def per_sample_grads_of(
    model: nn.Module, adapter: BatchAdapter, batch: Batch, names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """:func:`per_sample_grads` of any batch: ``ℓ_i = adapter.loss(model, sample i)``."""
    trainable = _trainable(model)
    names = list(trainable) if names is None else list(names)
    params = {n: trainable[n].detach() for n in names}
    loss = functional(model, adapter.loss)
    B = batch_size(batch)
    dims = vmap_dims(batch, B)

    def single(p: dict[str, Tensor], sample: Batch) -> Tensor:
        return loss(p, as_single(sample, dims))

    with torch.enable_grad(), math_attention():
        return vmap(grad(single), in_dims=(None, dims), randomness="different")(params, batch)


@dataclass
class GradientGram:
    """Second-order statistics of the per-sample gradients of one batch.

    ``names``      trainable parameter names, in ``model.named_parameters()`` order.
    ``grams``      ``(n_params, B, B)``: ``grams[k, i, j] = ⟨g_i, g_j⟩`` restricted to parameter ``names[k]``.
    ``mean``       ``{name: ḡ}`` the batch (mean-loss) gradient, parameter shapes; ``None`` from a hook pass
                   asked for the Grams only (``need_mean=False``).
    ``sq_mean``    ``{name: (1/B) Σ_i g_i ⊙ g_i}`` (elementwise), or ``None`` when not requested.
    ``loss``       the batch loss ``L``.
    ``route``      ``{name: "hooks" | "vmap"}`` -- how each parameter's statistics were obtained.
    ``graph``      with ``keep_graph=True`` (hook route): ``(L, (∇_θ L per parameter, with their autograd
                   graph))`` -- what a Hessian-vector product differentiates again; ``None`` otherwise.
    """

    names: list[str]
    grams: Tensor
    mean: dict[str, Tensor] | None
    sq_mean: dict[str, Tensor] | None
    loss: float
    route: dict[str, str] = field(default_factory=dict)
    graph: tuple[Tensor, tuple[Tensor | None, ...]] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.grams.shape[-1])

    def gram(self) -> Tensor:
        """``(B, B)`` Gram matrix ``K_ij = ⟨g_i, g_j⟩`` over all parameters."""
        return self.grams.sum(0)

    def norms(self) -> Tensor:
        """``(B,)`` per-sample gradient norms ``‖g_i‖``."""
        return self.gram().diagonal().clamp_min(0).sqrt()

    def by_module(self) -> dict[str, Tensor]:
        """``{module name: (B, B) Gram}``, parameters grouped by their owning module (name prefix)."""
        modules, stacked = self.module_grams()
        return dict(zip(modules, stacked.unbind(0), strict=True))

    def module_grams(self) -> tuple[list[str], Tensor]:
        """Module names and their stacked ``(n_modules, B, B)`` Grams (one ``index_add``, no Python loop).

        A parameter ``"a.b.weight"`` belongs to module ``"a.b"``; a bare parameter ``"scale"`` is its own
        group.
        """
        modules, index = _module_index(tuple(self.names))
        out = self.grams.new_zeros((len(modules), *self.grams.shape[1:]))
        return modules, out.index_add_(0, index.to(self.grams.device), self.grams)


_GROUP_CACHE: dict[tuple[str, ...], tuple[list[str], Tensor]] = {}


def _module_index(names: tuple[str, ...]) -> tuple[list[str], Tensor]:
    """Module names (first-seen order) and, per parameter, the index of its module."""
    if names not in _GROUP_CACHE:
        modules: dict[str, int] = {}
        index = [modules.setdefault(n.rpartition(".")[0] or n, len(modules)) for n in names]
        _GROUP_CACHE[names] = (list(modules), torch.tensor(index, dtype=torch.long))
    return _GROUP_CACHE[names]


def check_mean_reduction(loss_fn: LossFn, outputs: Tensor, targets: Tensor, batch_loss: float) -> None:
    """Raise ``ValueError`` unless ``loss_fn(outputs, targets)`` is the mean of the per-sample losses.

    The hook route rescales captured output gradients by ``B`` on that assumption. The per-sample losses are
    evaluated on the given outputs (no extra forward pass) with ``vmap``; losses ``vmap`` cannot run are not
    checked.
    """
    try:
        with torch.no_grad():
            per = vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(outputs, targets)
    except Exception:  # a loss vmap cannot batch: nothing to check with
        return
    problem = reduction_problem(batch_loss, per, "loss_fn")
    if problem:
        raise LearndynValueError(problem)


class HookGramCollector:
    """Reusable hook-route Gram computation for one model (module analysis is done once).

    ``collector(loss_fn, inputs, targets, need_sq=False) -> GradientGram``, or
    ``collector.collect(adapter, batch, need_sq)`` for any batch. See the module docstring.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.capture = capture_for(model)
        self.names = self.capture.names
        self._checked = False

    @property
    def fallback(self) -> list[str]:
        """Trainable parameters the vmap route handles."""
        covered = set(self.capture.covered)
        return [n for n in self.names if n not in covered]

    def check(self, adapter: BatchAdapter, batch: Batch) -> None:
        """Refuse a loss that is not the mean of per-sample losses (checked on the first batch only)."""
        if not self._checked:
            adapter.check_reduction(self.model, batch, owner="gradient_gram")
            self._checked = True

    def __call__(
        self, loss_fn: LossFn, inputs: Tensor, targets: Tensor, need_sq: bool = False
    ) -> GradientGram:
        return self.collect(BatchAdapter(loss_fn), (inputs, targets), need_sq=need_sq)

    def collect(
        self,
        adapter: BatchAdapter,
        batch: Batch,
        need_sq: bool = False,
        *,
        during_forward: contextlib.AbstractContextManager | None = None,
        keep_graph: bool = False,
        need_mean: bool = True,
    ) -> GradientGram:
        """The :class:`GradientGram` of ``batch`` (one forward/backward pass plus the fallback).

        ``during_forward`` (optional) is entered around the hooked forward pass only (not the vmap
        fallback), e.g. to record activations other probes read from the same pass. ``keep_graph``: the
        backward pass builds its own graph (``create_graph``, attention on the math backend, which has a
        double backward) and the result's ``graph`` holds the loss and the parameter gradients, so a
        Hessian-vector product needs no forward/backward pass of its own; the statistics are the same.
        ``need_mean=False`` (and no ``keep_graph``): the backward pass stops at the layer outputs, skipping
        the weight gradients (a ``d_out × d_in`` product per layer: a third of a plain step on an MLP
        784-128-10), and ``mean`` is ``None``."""
        model = self.model
        trainable = _trainable(model)
        if list(trainable) != self.names:
            raise RuntimeError("the model's trainable parameters changed since this collector was built")
        self.check(adapter, batch)
        B = batch_size(batch)
        cap = self.capture
        params = list(trainable.values())
        try:
            with torch.enable_grad(), math_attention(keep_graph), during_forward or contextlib.nullcontext():
                loss = cap.run(B, lambda: adapter.loss(model, batch))
            layers = cap.active()
            outs = cap.outputs(layers)
            wrt = params if need_mean or keep_graph else []
            grads: tuple[Tensor | None, ...] = ()
            if wrt or outs:
                with torch.enable_grad(), math_attention(keep_graph):
                    grads = torch.autograd.grad(
                        loss, wrt + outs, allow_unused=True, create_graph=keep_graph
                    )
            deltas = [None if d is None else (d.detach() * B).unsqueeze(0) for d in grads[len(wrt) :]]
            res = cap.contract(layers, deltas, Contraction("trace", sq=need_sq))
        finally:
            cap.clear()
        mean = (
            {
                n: (g.detach() if g is not None else torch.zeros_like(p))
                for (n, p), g in zip(trainable.items(), grads[: len(params)], strict=True)
            }
            if wrt
            else None
        )
        grams = {n: r["gram"] for n, r in res.items()}
        sq = {n: r["sq"] / B for n, r in res.items()} if need_sq else {}
        route = dict.fromkeys(res, "hooks")
        pending = [layer for layer in layers if layer.unverified]
        fallback = [n for n in self.names if n not in res]
        if pending or fallback:
            check = [n for layer in pending for n in layer.names.values()]
            per = per_sample_grads_of(model, adapter, batch, names=fallback + check)
            ref = {n: g.reshape(B, -1) @ g.reshape(B, -1).T for n, g in per.items()}
            for layer in pending:
                mine = list(layer.names.values())
                if not verify(layer, {n: grams[n] for n in mine}, ref):
                    fallback += mine
            for n in fallback:
                grams[n] = ref[n]
                route[n] = "vmap"
                if need_sq:
                    sq[n] = per[n].square().mean(0)
        zeros = params[0].new_zeros((B, B)) if params else torch.zeros(B, B)
        stacked = torch.stack([grams.get(n, zeros) for n in self.names]) if self.names else zeros[None]
        return GradientGram(
            names=list(self.names),
            grams=stacked.detach(),
            mean=mean,
            sq_mean={n: sq[n] for n in self.names} if need_sq else None,
            loss=float(loss.detach()),
            route=route,
            graph=(loss, tuple(grads[: len(wrt)])) if keep_graph else None,
        )


def gradient_gram(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    route: str = "hooks",
    need_sq: bool = False,
) -> GradientGram:
    """Per-sample gradient Gram matrices of one batch (see the module docstring for the convention).

    ``route="hooks"`` uses layer hooks for the layers of :mod:`learndyn.stats.factors` and vmap for the rest;
    ``route="vmap"`` materialises every per-sample gradient (the reference). ``need_sq`` also returns the
    elementwise mean square ``(1/B) Σ_i g_i²`` of every parameter (what a diagonal metric tracks).
    """
    return gradient_gram_of(model, BatchAdapter(loss_fn), (inputs, targets), route=route, need_sq=need_sq)


def gradient_gram_of(
    model: nn.Module, adapter: BatchAdapter, batch: Batch, *, route: str = "hooks", need_sq: bool = False
) -> GradientGram:
    """:func:`gradient_gram` of any batch read through ``adapter``."""
    check_choice("route", route, ROUTES, owner="gradient_gram")
    if route == "hooks":
        return HookGramCollector(model).collect(adapter, batch, need_sq=need_sq)
    return gram_from_per_sample_of(model, adapter, batch, need_sq=need_sq)


def gram_from_per_sample(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    need_sq: bool = False,
    per_sample: Mapping[str, Tensor] | None = None,
) -> GradientGram:
    """:class:`GradientGram` from materialised per-sample gradients (computed by vmap unless given)."""
    return gram_from_per_sample_of(
        model, BatchAdapter(loss_fn), (inputs, targets), need_sq=need_sq, per_sample=per_sample
    )


def gram_from_per_sample_of(
    model: nn.Module,
    adapter: BatchAdapter,
    batch: Batch,
    *,
    need_sq: bool = False,
    per_sample: Mapping[str, Tensor] | None = None,
) -> GradientGram:
    """:func:`gram_from_per_sample` of any batch read through ``adapter``."""
    trainable = _trainable(model)
    names = list(trainable)
    if per_sample is None:
        per_sample = per_sample_grads_of(model, adapter, batch)
    B = batch_size(batch)
    flats = [per_sample[n].reshape(B, -1) for n in names]
    grams = torch.stack([f @ f.T for f in flats]) if names else torch.zeros((1, B, B))
    mean = {n: per_sample[n].mean(0) for n in names}
    sq = {n: per_sample[n].square().mean(0) for n in names} if need_sq else None
    with torch.no_grad():
        loss = float(adapter.loss(model, batch))
    return GradientGram(names, grams.detach(), mean, sq, loss, route={n: "vmap" for n in names})
