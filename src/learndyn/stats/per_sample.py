"""Per-sample gradients and their Gram matrix, by ``torch.func`` or by layer hooks.

Convention
----------
The training loss is the mean of per-sample losses, ``L(θ) = (1/B) Σ_i ℓ_i(θ)`` with
``ℓ_i = loss_fn(f(x_i), y_i)`` evaluated on the single sample ``i`` (a batch of one). The *per-sample
gradient* is ``g_i = ∇_θ ℓ_i`` -- **not** the ``(1/B) ∇ℓ_i`` that sample ``i`` contributes to the batch
gradient -- so the batch gradient is their mean, ``ḡ = ∇L = (1/B) Σ_i g_i``. Inputs of shape
``(B, T, d)`` (sequences) are handled inside each sample: ``ℓ_i`` is whatever ``loss_fn`` makes of the
sample's ``T`` positions, and for a layer applied position-wise the per-sample gradient is the sum over ``T``.

Two routes
----------
``per_sample_grads`` (vmap route) materialises ``g_i`` for every parameter with
``vmap(grad(ℓ_i ∘ functional_call))``: memory ``O(B·P)``, roughly ``B`` single-sample backward passes.

``gradient_gram`` (hook route) never materialises ``g_i`` for ``nn.Linear`` weights. A forward hook stores
each layer's input ``a_i`` (shape ``(B, T, d_in)``; ``T = 1`` for plain vectors, ``T`` = sequence length)
and a tensor hook on its output stores ``δ_i = ∂ℓ_i/∂z_i`` (shape ``(B, T, d_out)``) during *one* ordinary
backward pass of the batch loss. Since ``∂L/∂z_i = (1/B) ∂ℓ_i/∂z_i``, the captured output gradient is
multiplied by ``B``. Then

    g_i^W = Σ_t δ_{it} a_{it}ᵀ        (d_out × d_in)        g_i^b = Σ_t δ_{it}
    ⟨g_i^W, g_j^W⟩ = Σ_{t,s} (a_{it}·a_{js}) (δ_{it}·δ_{js})  ⟶  (a_i·a_j)(δ_i·δ_j)  when T = 1
    ⟨g_i^b, g_j^b⟩ = (Σ_t δ_{it}) · (Σ_s δ_{js})

which costs ``O(B² T² (d_in + d_out))`` instead of ``O((B T + B²) d_in d_out)``; per layer the cheaper of
this and materialising ``g_i^W`` (one batched ``einsum``) is used, so long sequences materialise. For
``nn.Conv2d`` (``T`` = number of patches, usually large) the per-sample weight gradients are materialised
by a single grouped weight-gradient convolution with the batch folded into the channels, from the same
captured ``a`` and ``δ``. A layer called several times in one forward pass (weight reuse) has its calls
summed (concatenated along ``T``). Parameters of any other module (norm layers, embeddings, bare parameters,
shared weights, grouped or non-zero-padded convolutions) fall back to the vmap route, restricted to those
parameters.

Both routes assume the model treats samples independently (no BatchNorm in training mode); the Monitor runs
probes in eval mode by default for that reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from learndyn.validation import LearndynValueError, check_choice

LossFn = Callable[[Tensor, Tensor], Tensor]

ROUTES = ("hooks", "vmap")


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _single_sample_loss(
    model: nn.Module, loss_fn: LossFn, frozen: Mapping[str, Tensor]
) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]:
    """``ℓ(params, x_i, y_i)`` for one sample (a batch of one), the other tensors held fixed."""

    def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**frozen, **params}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return loss


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
    trainable = _trainable(model)
    names = list(trainable) if names is None else list(names)
    params = {n: trainable[n].detach() for n in names}
    frozen = {n: t.detach() for n, t in model.named_parameters() if n not in params}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})
    loss = _single_sample_loss(model, loss_fn, frozen)
    with torch.enable_grad():
        return vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, inputs, targets)


@dataclass
class GradientGram:
    """Second-order statistics of the per-sample gradients of one batch.

    ``names``      trainable parameter names, in ``model.named_parameters()`` order.
    ``grams``      ``(n_params, B, B)``: ``grams[k, i, j] = ⟨g_i, g_j⟩`` restricted to parameter ``names[k]``.
    ``mean``       ``{name: ḡ}`` the batch (mean-loss) gradient, parameter shapes.
    ``sq_mean``    ``{name: (1/B) Σ_i g_i ⊙ g_i}`` (elementwise), or ``None`` when not requested.
    ``loss``       the batch loss ``L``.
    ``route``      ``{name: "hooks" | "vmap"}`` -- how each parameter's statistics were obtained.
    """

    names: list[str]
    grams: Tensor
    mean: dict[str, Tensor]
    sq_mean: dict[str, Tensor] | None
    loss: float
    route: dict[str, str] = field(default_factory=dict)

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


def _supported(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    if type(module) is nn.Conv2d:
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    return False


class _Layer:
    """Hook state of one supported layer: inputs and output gradients of each call, in call order."""

    __slots__ = ("module", "weight", "bias", "acts", "grads")

    def __init__(self, module: nn.Module, weight: str, bias: str | None) -> None:
        self.module = module
        self.weight = weight
        self.bias = bias
        self.acts: list[Tensor] = []
        self.grads: list[Tensor | None] = []

    def forward_hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        slot = len(self.acts)
        self.acts.append(args[0].detach())
        self.grads.append(None)
        if output.requires_grad:

            def store(g: Tensor) -> None:
                self.grads[slot] = g.detach()

            output.register_hook(store)

    def clear(self) -> None:
        self.acts.clear()
        self.grads.clear()

    def stats(
        self, scale: float, need_sq: bool
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None] | None:
        """Weight Gram, bias Gram and (optionally) elementwise mean squares; ``None`` if never used."""
        pairs = [(a, d * scale) for a, d in zip(self.acts, self.grads, strict=True) if d is not None]
        if not pairs:
            return None
        m = self.module
        if isinstance(m, nn.Conv2d):
            if pairs[0][0].dim() != 4:  # an unbatched conv input is not a batch of samples
                return None
            return _conv_stats(m, pairs, need_sq)
        if len(pairs) == 1:
            a, d = pairs[0]
            a, d = a.reshape(a.shape[0], -1, a.shape[-1]), d.reshape(d.shape[0], -1, d.shape[-1])
        else:  # several calls: concatenate along T
            a = torch.cat([a.reshape(a.shape[0], -1, a.shape[-1]) for a, _ in pairs], 1)
            d = torch.cat([d.reshape(d.shape[0], -1, d.shape[-1]) for _, d in pairs], 1)
        return _linear_stats(a, d, need_sq)


def _conv_stats(
    m: nn.Conv2d, pairs: list[tuple[Tensor, Tensor]], need_sq: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per-sample conv weight gradients by one grouped weight-gradient convolution per call.

    With the batch folded into channels (``groups = B``), ``conv2d_weight`` returns every sample's
    ``Σ_patches δ_{i,l} a_{i,l}ᵀ`` at once, shape ``(B·C_out, C_in, kh, kw)`` -- several times faster on CPU
    than ``unfold`` followed by a batched matmul.
    """
    g = None
    bias_rows = None
    for a, d in pairs:
        B, C, H, W = a.shape
        O = d.shape[1]
        per = torch.nn.grad.conv2d_weight(
            a.reshape(1, B * C, H, W),
            (B * O, C, *m.kernel_size),
            d.reshape(1, B * O, *d.shape[2:]),
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=B,
        ).reshape(B, -1)
        rows = d.sum((2, 3))
        g = per if g is None else g + per
        bias_rows = rows if bias_rows is None else bias_rows + rows
    assert g is not None and bias_rows is not None
    gram_w = g @ g.T
    gram_b = bias_rows @ bias_rows.T
    if not need_sq:
        return gram_w, gram_b, None, None
    return gram_w, gram_b, g.square().mean(0), bias_rows.square().mean(0)


def _linear_stats(a: Tensor, d: Tensor, need_sq: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Weight Gram, bias Gram, and (optionally) the elementwise mean squares of weight and bias gradients.

    ``a``: ``(B, T, d_in)``, ``d``: ``(B, T, d_out)`` (already per-sample scaled).
    """
    B, T, d_in = a.shape
    d_out = d.shape[-1]
    bias_rows = d.sum(1)  # (B, d_out)
    sq_w = sq_b = None
    if need_sq:
        sq_b = bias_rows.square().mean(0)
    if T == 1:
        a2, d2 = a[:, 0], d[:, 0]
        gram_b = d2 @ d2.T
        gram_w = (a2 @ a2.T) * gram_b
        if need_sq:
            sq_w = (d2.square().T @ a2.square()) / B
        return gram_w, gram_b, sq_w, sq_b
    gram_b = bias_rows @ bias_rows.T
    if not need_sq and B * T * T * (d_in + d_out) <= (T + B) * d_in * d_out:
        aa = torch.einsum("bti,csi->btcs", a, a)
        dd = torch.einsum("bto,cso->btcs", d, d)
        gram_w = (aa * dd).sum((1, 3))
    else:
        g = torch.einsum("bto,bti->boi", d, a).reshape(B, -1)  # materialised per-sample weight gradients
        gram_w = g @ g.T
        if need_sq:
            sq_w = g.square().mean(0).reshape(d_out, d_in)
    return gram_w, gram_b, sq_w, sq_b


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
    mean = float(per.mean())
    if not math.isclose(mean, batch_loss, rel_tol=1e-4, abs_tol=1e-6 * max(1.0, abs(batch_loss))):
        raise LearndynValueError(
            f"loss_fn gives batch loss {batch_loss:.6g} but per-sample losses averaging {mean:.6g}; "
            "allowed: a loss that is the mean of per-sample losses (reduction='mean')"
        )


class HookGramCollector:
    """Reusable hook-route Gram computation for one model (module analysis is done once).

    ``collector(loss_fn, inputs, targets, need_sq=False) -> GradientGram``. See the module docstring.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        trainable = _trainable(model)
        self.names = list(trainable)
        owners: dict[int, int] = {}
        for mod in model.modules():
            for p in mod.parameters(recurse=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
        self.layers: list[_Layer] = []
        covered: set[str] = set()
        name_of = {id(p): n for n, p in trainable.items()}
        for _, mod in model.named_modules():
            if not _supported(mod):
                continue
            w = mod.weight
            b = mod.bias
            if id(w) not in name_of or owners[id(w)] != 1:
                continue
            if b is not None and (id(b) not in name_of or owners[id(b)] != 1):
                continue
            wname = name_of[id(w)]
            bname = name_of[id(b)] if b is not None else None
            self.layers.append(_Layer(mod, wname, bname))
            covered.add(wname)
            if bname is not None:
                covered.add(bname)
        self.fallback = [n for n in self.names if n not in covered]
        self._checked = False

    def __call__(
        self, loss_fn: LossFn, inputs: Tensor, targets: Tensor, need_sq: bool = False
    ) -> GradientGram:
        model = self.model
        trainable = _trainable(model)
        if list(trainable) != self.names:
            raise RuntimeError("the model's trainable parameters changed since this collector was built")
        B = int(inputs.shape[0])
        handles = [layer.module.register_forward_hook(layer.forward_hook) for layer in self.layers]
        try:
            with torch.enable_grad():
                out = model(inputs)
                loss = loss_fn(out, targets)
                params = list(trainable.values())
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        if not self._checked:
            check_mean_reduction(loss_fn, out.detach(), targets, float(loss.detach()))
            self._checked = True
        mean = {
            n: (g.detach() if g is not None else torch.zeros_like(p))
            for (n, p), g in zip(trainable.items(), grads, strict=True)
        }
        zeros = inputs.new_zeros((B, B), dtype=params[0].dtype) if params else inputs.new_zeros((B, B))
        grams: dict[str, Tensor] = {}
        sq: dict[str, Tensor] = {}
        route: dict[str, str] = {}
        fallback = list(self.fallback)
        for layer in self.layers:
            got = layer.stats(float(B), need_sq)
            layer.clear()
            if got is None:
                fallback += [layer.weight] + ([layer.bias] if layer.bias else [])
                continue
            gw, gb, sw, sb = got
            grams[layer.weight] = gw
            route[layer.weight] = "hooks"
            if sw is not None:
                sq[layer.weight] = sw.reshape(trainable[layer.weight].shape)
            if layer.bias is not None:
                grams[layer.bias] = gb
                route[layer.bias] = "hooks"
                if sb is not None:
                    sq[layer.bias] = sb
        if fallback:
            per = per_sample_grads(model, loss_fn, inputs, targets, names=fallback)
            for n, g in per.items():
                flat = g.reshape(B, -1)
                grams[n] = flat @ flat.T
                route[n] = "vmap"
                if need_sq:
                    sq[n] = g.square().mean(0)
        stacked = torch.stack([grams.get(n, zeros) for n in self.names]) if self.names else zeros[None]
        return GradientGram(
            names=list(self.names),
            grams=stacked.detach(),
            mean=mean,
            sq_mean={n: sq[n] for n in self.names} if need_sq else None,
            loss=float(loss.detach()),
            route=route,
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

    ``route="hooks"`` uses layer hooks for ``nn.Linear``/``nn.Conv2d`` and vmap for the rest;
    ``route="vmap"`` materialises every per-sample gradient (the reference). ``need_sq`` also returns the
    elementwise mean square ``(1/B) Σ_i g_i²`` of every parameter (what a diagonal metric tracks).
    """
    check_choice("route", route, ROUTES, owner="gradient_gram")
    if route == "hooks":
        return HookGramCollector(model)(loss_fn, inputs, targets, need_sq=need_sq)
    return gram_from_per_sample(model, loss_fn, inputs, targets, need_sq=need_sq)


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
    trainable = _trainable(model)
    names = list(trainable)
    if per_sample is None:
        per_sample = per_sample_grads(model, loss_fn, inputs, targets)
    B = int(inputs.shape[0])
    flats = [per_sample[n].reshape(B, -1) for n in names]
    grams = torch.stack([f @ f.T for f in flats]) if names else inputs.new_zeros((1, B, B))
    mean = {n: per_sample[n].mean(0) for n in names}
    sq = {n: per_sample[n].square().mean(0) for n in names} if need_sq else None
    with torch.no_grad():
        loss = float(loss_fn(model(inputs), targets))
    return GradientGram(names, grams.detach(), mean, sq, loss, route={n: "vmap" for n in names})
