"""Hessian-vector products, Gauss-Newton traces and the NTK of a plain MLP, written out layer by layer.

For an ``nn.Sequential`` of ``nn.Linear`` layers with pointwise activations ``σ`` between them (ReLU, Tanh,
none), ``z_l = h_{l−1} W_lᵀ + b_l``, ``h_l = σ(z_l)`` (``h_0 = x``), and a mean loss ``L = ℓ(z_L)``
(cross-entropy with class indices, or squared error), the product ``H v`` of the Hessian with a direction
``v = (V_l, c_l)_l`` is the directional derivative ``R{·} = d/dε|₀ (·)(θ + εv)`` of the gradient
(Pearlmutter 1994). Forward:

    R{z_l} = R{h_{l−1}} W_lᵀ + h_{l−1} V_lᵀ + c_l        R{h_l} = σ'(z_l) ⊙ R{z_l}         (R{h_0} = 0)

the output gradient ``g_L = ∂L/∂z_L`` and its derivative ``R{g_L} = ∇²ℓ(z_L) R{z_L}`` (cross-entropy:
``(p ⊙ R − p (p·R))/B`` per sample, ``p`` the softmax; squared error: ``2R/(B·O)``), then backward

    R{∇W_l} = R{g_l}ᵀ h_{l−1} + g_lᵀ R{h_{l−1}}            R{∇b_l} = Σ_i R{g_l}_i
    R{g_{l−1}} = σ'(z_{l−1}) ⊙ (R{g_l} W_l + g_l V_l) + σ''(z_{l−1}) ⊙ R{z_{l−1}} ⊙ (g_l W_l)

with ``g_{l−1} = σ'(z_{l−1}) ⊙ (g_l W_l)``. ``H v = (R{∇W_l}, R{∇b_l})_l`` is exactly the Hessian's product
(Gauss-Newton part and the ``σ''`` and ``g_l V_l`` terms), the same as differentiating the gradient's
autograd graph again, up to round-off. It costs what a training step costs in large products -- ``h_0 V_1ᵀ``
and ``R{g_1}ᵀ h_0`` for the widest layer -- without the autograd engine's bookkeeping, which is ~15% of a
double-backward product on an MLP 784-128-10 (0.66 vs 0.75 ms, one thread).

The empirical NTK (:func:`mlp_ntk`) comes from the same layer factors: with ``δ^a_{L,i} = e_a`` and
``δ^a_{l−1,i} = σ'(z_{l−1,i}) ⊙ (δ^a_{l,i} W_l)``,
``Θ[(i,a),(j,b)] = Σ_l (h_{l−1,i}·h_{l−1,j} + 1_bias) (δ^a_{l,i}·δ^b_{l,j})`` (``outputs="full"``) and its
trace over outputs ``Θ_ij = Σ_a Θ[(i,a),(j,a)]`` -- what :func:`learndyn.stats.ntk.structured_ntk` computes
with hooks and batched backward passes, here with a few small products.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learndyn.stats.batch import bare_function, is_plain_cross_entropy

_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Identity)


def _loss_kind(loss_fn: object) -> str | None:
    if is_plain_cross_entropy(loss_fn):
        return "ce"
    fn = bare_function(loss_fn)
    if fn is F.mse_loss or (isinstance(fn, nn.MSELoss) and fn.reduction == "mean"):
        return "mse"
    return None


def _layers(model: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]] | None:
    """``[(linear, activation after it or None), ...]`` for a supported ``nn.Sequential``, else ``None``."""
    if type(model) is not nn.Sequential or len(model) == 0:  # a subclass may define its own forward
        return None
    out: list[tuple[nn.Linear, nn.Module | None]] = []
    for m in model:
        if isinstance(m, nn.Linear):
            out.append((m, None))
        elif type(m) in _ACTIVATIONS and out and out[-1][1] is None:
            out[-1] = (out[-1][0], m)
        else:
            return None
    if out[-1][1] is not None and not isinstance(out[-1][1], nn.Identity):
        return None
    return out


def _plain_layers(model: nn.Module, inputs: object) -> list[tuple[nn.Linear, nn.Module | None]] | None:
    """:func:`_layers` of ``model`` when the written-out products apply to it and ``inputs`` whatever the
    loss: no hooks (a hook may change what a module returns), every parameter trainable, 2-D float inputs;
    else ``None``."""
    layers = _layers(model)
    if layers is None or not isinstance(inputs, Tensor):
        return None
    if inputs.dim() != 2 or not inputs.is_floating_point():
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None
    if not all(p.requires_grad for p in model.parameters()):
        return None
    return layers


def _forward(
    Ws: list[Tensor], bs: list[Tensor | None], acts: list[nn.Module | None], x: Tensor, second: bool
) -> tuple[list[Tensor], list[Tensor | None], list[Tensor | None], Tensor]:
    """The forward pass ``z_l = h_{l−1} W_lᵀ + b_l``, ``h_l = σ(z_l)`` without a graph: ``(h_0 .. h_{L−1}``
    (each layer's input), ``σ'(z_l)`` (``None``: identity), ``σ''(z_l)`` (``None``: zero, or not asked for
    when not ``second``), the output ``z_L``)."""
    h = x.detach()
    hs: list[Tensor] = []
    d1: list[Tensor | None] = []
    d2: list[Tensor | None] = []
    for W, b, act in zip(Ws, bs, acts, strict=True):
        hs.append(h)
        z = F.linear(h, W, b)
        if isinstance(act, nn.ReLU):
            d1.append((z > 0).to(z.dtype))
            d2.append(None)
            h = torch.relu(z)
        elif isinstance(act, nn.Tanh):
            h = torch.tanh(z)
            d1.append(1 - h * h)
            d2.append(-2 * h * d1[-1] if second else None)
        else:
            d1.append(None)
            d2.append(None)
            h = z
    return hs, d1, d2, h


def supported(model: nn.Module, loss_fn: object, inputs: object, targets: object) -> bool:
    """Whether :class:`MLPHessianVectorProduct` applies: an ``nn.Sequential`` of ``nn.Linear`` layers with
    at most one ReLU/Tanh/Identity after each (none after the last), every parameter trainable, 2-D float
    inputs, and ``F.cross_entropy`` (class indices) or ``F.mse_loss`` with mean reduction."""
    layers = _plain_layers(model, inputs)
    kind = _loss_kind(loss_fn)
    if layers is None or kind is None or not isinstance(targets, Tensor):
        return False
    assert isinstance(inputs, Tensor)
    B = inputs.shape[0]
    out_dim = layers[-1][0].out_features
    if kind == "ce":
        return targets.shape == (B,) and not targets.is_floating_point() and bool((targets >= 0).all())
    return targets.shape == (B, out_dim) and targets.is_floating_point()


class MLPHessianVectorProduct:
    """``v ↦ H v`` of the mean loss of a supported MLP (:func:`supported`) on one batch, by the written-out
    R-operator (module docstring); the forward pass runs once, at construction.

    ``parts(v)`` takes the flat direction (parameters in ``model.parameters()`` order) and returns ``H v``
    per parameter; ``loss`` is the batch loss.
    """

    def __init__(self, model: nn.Module, loss_fn: object, inputs: Tensor, targets: Tensor) -> None:
        layers = _layers(model)
        kind = _loss_kind(loss_fn)
        assert layers is not None and kind is not None
        self.kind = kind
        self.W = [lin.weight.detach() for lin, _ in layers]
        self.b = [None if lin.bias is None else lin.bias.detach() for lin, _ in layers]
        self.params = [p for lin, _ in layers for p in lin.parameters()]
        self.sizes = [p.numel() for p in self.params]
        self.shapes = [p.shape for p in self.params]
        with torch.no_grad():
            # h_0 .. h_{L−1} (the inputs of each layer), σ'(z_l) (None: identity), σ''(z_l) (None: zero)
            self.h, self.d1, self.d2, out = _forward(self.W, self.b, [a for _, a in layers], inputs, True)
            B = out.shape[0]
            if kind == "ce":
                self.p = torch.softmax(out, -1)
                self.loss = float(F.cross_entropy(out, targets))
                g = self.p.clone()
                g[torch.arange(B, device=g.device), targets] -= 1
                g /= B
            else:
                self.scale = 2.0 / out.numel()
                self.loss = float(F.mse_loss(out, targets))
                g = (out - targets) * self.scale
            # output gradients g_l = ∂L/∂z_l and gh_{l−1} = g_l W_l = ∂L/∂h_{l−1}, last layer first
            self.g: list[Tensor] = [g]
            self.gh: list[Tensor] = []
            for k in range(len(layers) - 1, 0, -1):
                gh = g @ self.W[k]
                g = gh if self.d1[k - 1] is None else gh * self.d1[k - 1]
                self.g.insert(0, g)
                self.gh.insert(0, gh)

    def ggn_traces(self) -> list[Tensor]:
        """``tr G`` restricted to each parameter (``model.parameters()`` order; 0-d tensors) of the
        Gauss-Newton matrix ``G = Σ_i J_iᵀ (∂²L/∂z_i²) J_i`` (:mod:`learndyn.stats.ggn`), from the factors
        of this batch's forward pass: with ``∂²L/∂z_{L,i}² = Σ_c u_ic u_icᵀ`` (cross-entropy
        ``u_ic = √(p_ic/B) (e_c − p_i)``, squared error ``u_ic = √(2/(B·O)) e_c``) backpropagated to each
        layer's outputs, ``δ_{l−1,ic} = σ'(z_{l−1,i}) ⊙ (δ_{l,ic} W_l)``,

            tr G^{W_l} = Σ_{i,c} ‖δ_{l,ic}‖² ‖h_{l−1,i}‖²        tr G^{b_l} = Σ_{i,c} ‖δ_{l,ic}‖²

        -- a few products of ``C × B × width`` numbers, no pass through the widest layer's weights."""
        with torch.no_grad():
            if self.kind == "ce":
                p = self.p
                B, C = p.shape
                eye = torch.eye(C, dtype=p.dtype, device=p.device)
                d = (p.T.sqrt() / B**0.5).unsqueeze(-1) * (eye.unsqueeze(1) - p.unsqueeze(0))  # (C, B, C)
            else:
                B, O = self.g[-1].shape
                eye = torch.eye(O, dtype=self.g[-1].dtype, device=self.g[-1].device)
                d = (self.scale**0.5 * eye).unsqueeze(1).expand(O, B, O)
            out: list[Tensor] = []
            for k in range(len(self.W) - 1, -1, -1):
                dd = d.square().sum(-1)  # (C, B): ‖δ_{l,ic}‖²
                a = self.h[k].square().sum(-1)  # (B,): ‖h_{l−1,i}‖²
                layer = [(dd * a).sum()] if self.b[k] is None else [(dd * a).sum(), dd.sum()]
                out = layer + out
                if k > 0:
                    d = d @ self.W[k]
                    if self.d1[k - 1] is not None:
                        d = d * self.d1[k - 1]
        return out

    def parts(self, v: Tensor) -> list[Tensor]:
        """``H v`` per parameter (parameter shapes, ``model.parameters()`` order)."""
        L = len(self.W)
        chunks = [t.view(s) for t, s in zip(v.split(self.sizes), self.shapes, strict=True)]
        V: list[Tensor] = []
        c: list[Tensor | None] = []
        it = iter(chunks)
        for k in range(L):
            V.append(next(it))
            c.append(next(it) if self.b[k] is not None else None)
        with torch.no_grad():
            Rz: list[Tensor] = []
            Rh: list[Tensor | None] = [None]  # R{h_0} = 0
            for k in range(L):
                r = self.h[k] @ V[k].T
                if c[k] is not None:
                    r = r + c[k]
                if Rh[k] is not None:
                    r = r.addmm_(Rh[k], self.W[k].T)
                Rz.append(r)
                if k + 1 < L:
                    Rh.append(r if self.d1[k] is None else r * self.d1[k])
            r = Rz[-1]
            if self.kind == "ce":
                p = self.p
                Rg = (p * r - p * (p * r).sum(-1, keepdim=True)) / p.shape[0]
            else:
                Rg = r * self.scale
            out: list[Tensor] = []
            for k in range(L - 1, -1, -1):
                g = self.g[k]
                RW = Rg.T @ self.h[k]
                if Rh[k] is not None:
                    RW = RW.addmm_(g.T, Rh[k])
                layer = [RW] if self.b[k] is None else [RW, Rg.sum(0)]
                out = layer + out
                if k > 0:
                    Rgh = (Rg @ self.W[k]).addmm_(g, V[k])
                    d1, d2 = self.d1[k - 1], self.d2[k - 1]
                    Rg_prev = Rgh if d1 is None else Rgh * d1
                    if d2 is not None:
                        Rg_prev = Rg_prev + d2 * Rz[k - 1] * self.gh[k - 1]
                    Rg = Rg_prev
        return out


def ntk_supported(model: nn.Module, inputs: object) -> bool:
    """Whether :func:`mlp_ntk` applies: a supported ``nn.Sequential`` (:func:`supported`, any loss), no
    hooks, every parameter trainable, 2-D float inputs."""
    return _plain_layers(model, inputs) is not None


def mlp_ntk(
    model: nn.Module, inputs: Tensor, params: Mapping[str, Tensor] | None = None, outputs: str = "trace"
) -> Tensor:
    """The empirical NTK of a supported MLP (:func:`ntk_supported`) on ``inputs`` (module docstring):
    ``(n, n)`` for ``outputs="trace"``, ``(n·O, n·O)`` (rows sample-major) for ``"full"``. ``params``
    overrides parameters by name (e.g. the initial ones)."""
    layers = _layers(model)
    assert layers is not None
    name = {id(p): n for n, p in model.named_parameters()}
    over = {} if params is None else params

    def get(p: Tensor) -> Tensor:
        return over.get(name[id(p)], p).detach()

    Ws = [get(lin.weight) for lin, _ in layers]
    bs = [None if lin.bias is None else get(lin.bias) for lin, _ in layers]
    with torch.no_grad():
        feats, d1, _, h = _forward(Ws, bs, [a for _, a in layers], inputs, False)  # feats[l]: h_{l−1}
        n, O = h.shape
        D = torch.eye(O, dtype=h.dtype, device=h.device).unsqueeze(1).expand(O, n, O)  # δ^a_{L,i} = e_a
        K = None
        for k in range(len(Ws) - 1, -1, -1):
            width = D.shape[-1]
            if outputs == "trace":
                Dm = D.permute(1, 0, 2).reshape(n, O * width)
                A = feats[k] @ feats[k].T
            else:
                Dm = D.permute(1, 0, 2).reshape(n * O, width)
                A = (feats[k] @ feats[k].T).repeat_interleave(O, 0).repeat_interleave(O, 1)
            DD = Dm @ Dm.T
            term = (A + 1) * DD if bs[k] is not None else A * DD
            K = term if K is None else K + term
            if k > 0:
                D = D @ Ws[k]
                if d1[k - 1] is not None:
                    D = D * d1[k - 1]
    assert K is not None
    return K
