"""Per-sample gradient factors of standard layers: captured in one forward pass, contracted many ways.

Setting
-------
A batch of ``B`` samples goes through the model once. Backpropagating ``R`` cotangents ``u_r`` of the
network outputs (``R = 1`` and ``u = B ∂L/∂f`` for the loss gradient; one-hot output directions for the
NTK; columns of a square root of the loss Hessian for the Gauss-Newton matrix) gives, at each call of a
layer with output ``z`` (positions ``t``: tokens, pixels; ``T = 1`` for plain vectors),
``δ_{rit} = ∂(u_rᵀ f(x_i))/∂z_{it}`` -- per sample, because samples do not interact. The per-(cotangent,
sample) parameter gradient ``g_{ri}`` then factors through the layer's input features:

=============  ===============================================  ============================
layer          weight                                            bias
=============  ===============================================  ============================
Linear         ``g^W_ri = Σ_t δ_rit a_itᵀ`` (a: layer input)      ``g^b_ri = Σ_t δ_rit``
Embedding      ``g^E_ri = Σ_t e_{k_it} δ_ritᵀ`` (k: token ids)   --
Conv2d         ``g^W_ri = Σ_p δ_rip ⊗ patch_ip`` (p: pixels)      ``Σ_p δ_rip``
LayerNorm,     ``g^γ_ri = Σ_t δ_rit ⊙ x̂_it``                     ``Σ_t δ_rit``
RMSNorm        (x̂: the normalised input)
=============  ===============================================  ============================

(an Embedding is a Linear layer on one-hot inputs: ``e_k·e_l = [k = l]``). The consumers need

    Gram, traced over r   K_ij = Σ_r ⟨g_ri, g_rj⟩ = Σ_{t,s} (a_it·a_js)(Σ_r δ_rit·δ_rjs)   ("ghost" form)
                               = (a_i·a_j)(Δ_i·Δ_j),  Δ_i = (δ_1i, …, δ_Ri)               when T = 1
    full Gram             K[(i,r),(j,s)] = ⟨g_ri, g_sj⟩   (rows sample-major)
    weighted squares      Σ_{r,i} w_ri g_ri ⊙ g_ri        (diagonal of a Gauss-Newton matrix, mean squares)
    weighted norms        Σ_{r,i} w_ri ‖g_ri‖²            (its trace: Σ_{t,s}(a_it·a_is)(δ_rit·δ_ris))

For each layer the cheaper of the ghost form (``O(B²T²(d_in + R d_out))``) and materialising ``g`` (one
``einsum``, ``index_put`` or grouped weight-gradient convolution, ``O(R B T d_in d_out)``) is used.

Capture
-------
Forward hooks store each call's input features (detached) and its output ``z`` (with its graph); one
``torch.autograd.grad`` with respect to the outputs gives every ``δ`` (``is_grads_batched`` for ``R > 1``).
A layer called several times has its calls concatenated along ``t``. A call whose input has no batch
dimension (a position embedding on ``arange(T)``, a layer applied to a parameter) has its output expanded to
``(B, …)`` by the hook -- a view, so the model computes the same thing -- which makes its ``δ`` per sample;
such layers (and embeddings of one index per sample, indistinguishable from an unbatched ``arange(B)``) are
*unverified* until a consumer has compared them once with a reference (vmap or Jacobian) and kept or
dropped them. Parameters of other modules, shared parameters, frozen parts of a layer, calls whose output is
changed in place afterwards, and unsupported options (grouped or non-zero-padded convolutions, embeddings
with ``max_norm``/``scale_grad_by_freq``/``sparse``) are left to the consumer's fallback.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHUNK_ELEMENTS = 1 << 26
"""Default cotangent chunk of batched backward passes: keep the output gradients under this many numbers."""

T_ = TypeVar("T_")

GHOST_MAX = 1 << 24
"""Largest ``(B·T)²`` ghost-form matrix (elements) before a layer's gradients are materialised instead."""


@dataclass(frozen=True)
class Contraction:
    """What to compute from ``δ`` of shape ``(R, B, …)``.

    ``gram``: ``"trace"`` (``B × B``, summed over r), ``"full"`` (``BR × BR``, rows ``i·R + r``) or ``None``;
    ``sq``/``trace``: the weighted squares / norms with weights ``weights`` (``(R, B)``, default 1).
    """

    gram: str | None = "trace"
    sq: bool = False
    trace: bool = False
    weights: Tensor | None = None


Result = dict[str, dict[str, Tensor]]
"""``{parameter name: {"gram" | "sq" | "trace": tensor}}``."""


def _weights(spec: Contraction, R: int, B: int, like: Tensor) -> Tensor:
    return like.new_ones((R, B)) if spec.weights is None else spec.weights.to(like)


def rows_reduce(rows: Tensor, spec: Contraction, shape: torch.Size) -> dict[str, Tensor]:
    """The requested contractions of materialised gradients ``rows`` (``(R, B, *shape)``)."""
    R, B = rows.shape[:2]
    flat = rows.reshape(R, B, -1)
    out: dict[str, Tensor] = {}
    if spec.gram == "trace":
        X = flat.transpose(0, 1).reshape(B, -1)
        out["gram"] = X @ X.T
    elif spec.gram == "full":
        X = flat.transpose(0, 1).reshape(B * R, -1)
        out["gram"] = X @ X.T
    if spec.sq or spec.trace:
        w = _weights(spec, R, B, flat)
        sq = flat.square()
        if spec.sq:
            out["sq"] = torch.einsum("rb,rbp->p", w, sq).reshape(shape)
        if spec.trace:
            out["trace"] = (w * sq.sum(-1)).sum()
    return out


def _delta_gram(d: Tensor, gram: str) -> Tensor:
    """``Σ_r δ_ri·δ_rj`` (``"trace"``, B × B) or ``δ_ri·δ_sj`` (``"full"``, rows ``i·R + r``) of ``d``."""
    R, B, width = d.shape
    D = (
        d.permute(1, 0, 2).reshape(B, R * width)
        if gram == "trace"
        else d.permute(1, 0, 2).reshape(B * R, width)
    )
    return D @ D.T


def _outer_t1(
    A: Tensor | None,
    d: Tensor,
    spec: Contraction,
    sq_fn: Callable[[Tensor], Tensor],
    feat_sq: Tensor,
    shape: torch.Size,
    DD: Tensor | None = None,
) -> dict[str, Tensor]:
    """Contractions of ``g_ri = δ_ri ⊗ φ_i`` (one position) from ``A_ij = φ_i·φ_j`` and ``d`` (R, B, d_out).

    ``sq_fn(Σ_r w_r δ_r²)`` gives the weighted squares; ``feat_sq`` is ``(‖φ_i‖²)_i``; ``A = None`` means
    ``φ_i = 1`` (a bias); ``DD`` is :func:`_delta_gram` of ``d`` if already computed.
    """
    R, B, _ = d.shape
    out: dict[str, Tensor] = {}
    if spec.gram is not None:
        DD = _delta_gram(d, spec.gram) if DD is None else DD
        if A is None:
            out["gram"] = DD
        elif spec.gram == "trace":
            out["gram"] = A * DD
        else:
            out["gram"] = A.repeat_interleave(R, 0).repeat_interleave(R, 1) * DD
    if spec.sq or spec.trace:
        w = _weights(spec, R, B, d)
        if spec.sq:
            out["sq"] = sq_fn((w.unsqueeze(-1) * d.square()).sum(0)).reshape(shape)
        if spec.trace:
            out["trace"] = (w * d.square().sum(-1) * feat_sq).sum()
    return out


def _ghost(Phi: Tensor, phi_diag: Tensor, d: Tensor, spec: Contraction) -> dict[str, Tensor]:
    """Ghost-form Gram / norms from ``Phi[(i,t),(j,s)] = φ_it·φ_js`` (``BT × BT``; ``phi_diag`` its
    per-sample blocks ``(B, T, T)``) and ``d`` ``(R, B, T, d_out)``."""
    R, B, T, d_out = d.shape
    out: dict[str, Tensor] = {}
    if spec.gram == "trace":
        D = d.permute(1, 2, 0, 3).reshape(B * T, R * d_out)
        out["gram"] = (Phi * (D @ D.T)).reshape(B, T, B, T).sum((1, 3))
    if spec.trace:
        w = _weights(spec, R, B, d)
        dd = torch.einsum("rbto,rbso->rbts", d, d)
        out["trace"] = (w * (dd * phi_diag).sum((-2, -1))).sum()
    return out


class _Call:
    __slots__ = ("feat", "out", "version")

    def __init__(self, feat: Tensor, out: Tensor) -> None:
        self.feat = feat
        self.out = out
        self.version = out._version


class LayerFactors:
    """Capture state and contraction rules of one supported module (see the module docstring)."""

    min_dim = 1  # a batched input has more dimensions than this, and the batch on dim 0

    def __init__(self, module: nn.Module, names: dict[str, str]) -> None:
        self.module = module
        self.names = names  # role ("weight", "bias") -> parameter name
        self.calls: list[_Call] = []
        self.bad = False  # this pass: a call could not be factored
        self.expanded = False  # this pass: an unbatched call's output was expanded to the batch
        self.trusted: set[str] = set()  # kinds of non-batched calls ("expand", "ambiguous") verified so far
        self.pending: set[str] = set()  # kinds seen since, not yet compared with a reference
        self.dropped = False  # failed verification: always left to the fallback

    # -- capture
    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def batched(self, x: Tensor, B: int) -> bool | None:
        """True: batched; False: no batch dimension (expand); None: ambiguous (batched, verify)."""
        return x.dim() > self.min_dim and x.shape[0] == B

    def hook(self, B: int) -> Callable[[nn.Module, tuple, object], object]:
        def forward_hook(module: nn.Module, args: tuple, output: object) -> object:
            x = args[0] if args else None
            if (
                self.bad
                or not isinstance(x, Tensor)
                or not isinstance(output, Tensor)
                or not output.requires_grad
            ):
                self.bad = True
                return None
            batched = self.batched(x, B)
            if batched is None and "expand" in self.trusted and "ambiguous" not in self.trusted:
                batched = False  # known to be unbatched (e.g. arange(T)); now T happens to equal B
            expand = batched is False
            if expand:
                x = x.expand(B, *x.shape)
                output = output.expand(B, *output.shape)
                self.expanded = True
            if batched is not True:
                kind = "expand" if expand else "ambiguous"
                if kind not in self.trusted:
                    self.pending.add(kind)
            self.calls.append(_Call(self.features(x.detach()), output))
            return output if expand else None

        return forward_hook

    @property
    def unverified(self) -> bool:
        """Whether this layer's last pass had non-batched calls of a kind not yet verified."""
        return bool(self.pending)

    def clear(self) -> None:
        self.calls.clear()
        self.bad = False
        self.expanded = False

    def usable(self) -> bool:
        if self.bad or self.dropped or not self.calls:
            return False
        return all(c.out._version == c.version for c in self.calls)

    # -- contraction
    def contract(self, deltas: list[Tensor], spec: Contraction) -> dict[str, dict[str, Tensor]]:
        """``{role: contractions}`` from ``δ`` of every call, each ``(R, B, *output shape)``."""
        raise NotImplementedError

    def param(self, role: str) -> Tensor:
        return getattr(self.module, role)


def _cat_positions(feats: list[Tensor], deltas: list[Tensor], width: int) -> tuple[Tensor, Tensor]:
    """Features ``(B, T, ·)`` and ``δ`` ``(R, B, T, width)`` of all calls, concatenated along ``T``."""
    R, B = deltas[0].shape[:2]
    ds = [dl.reshape(R, B, -1, width) for dl in deltas]
    fs = [ft.reshape(B, -1, *ft.shape[2:]) for ft in feats]
    if len(ds) == 1:
        return fs[0], ds[0]
    return torch.cat(fs, 1), torch.cat(ds, 2)


class LinearFactors(LayerFactors):
    def features(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def contract(self, deltas: list[Tensor], spec: Contraction) -> dict[str, dict[str, Tensor]]:
        W = self.param("weight")
        a, d = _cat_positions([c.feat for c in self.calls], deltas, W.shape[0])
        R, B, T, d_out = d.shape
        d_in = a.shape[-1]
        a = a.to(d.dtype)
        out: dict[str, dict[str, Tensor]] = {}
        if T == 1:
            a0, d0 = a[:, 0], d[:, :, 0]
            a_sq = a0.square() if spec.sq or spec.trace else a0
            DD = _delta_gram(d0, spec.gram) if spec.gram else None  # shared by weight and bias
            A = a0 @ a0.T if spec.gram else None
            out["weight"] = _outer_t1(
                A, d0, spec, lambda s: s.T @ a_sq, a_sq.sum(-1) if spec.trace else a_sq, W.shape, DD
            )
            if "bias" in self.names:
                shape = self.param("bias").shape
                out["bias"] = _outer_t1(None, d0, spec, lambda s: s.sum(0), a0.new_ones(B), shape, DD)
            return out
        if "bias" in self.names:
            out["bias"] = rows_reduce(d.sum(2), spec, self.param("bias").shape)
        mat = R * B * T * d_in * d_out + R * B * B * d_in * d_out
        ghost_gram = B * B * T * T * (d_in + R * d_out)
        ghost_tr = B * T * T * (d_in + R * d_out)
        use_ghost = (
            not spec.sq
            and spec.gram != "full"
            and (spec.gram is None or (ghost_gram <= mat and (B * T) ** 2 <= GHOST_MAX))
            and (not spec.trace or ghost_tr <= mat)
        )
        if use_ghost:
            flat = a.reshape(B * T, d_in)
            Phi = flat @ flat.T if spec.gram else flat.new_zeros(0)
            diag = torch.einsum("bti,bsi->bts", a, a) if spec.trace else a.new_zeros(0)
            out["weight"] = _ghost(Phi, diag, d, spec)
        else:
            rows = torch.einsum("rbto,bti->rboi", d, a)
            out["weight"] = rows_reduce(rows, spec, W.shape)
        return out


class EmbeddingFactors(LayerFactors):
    min_dim = 0

    def batched(self, x: Tensor, B: int) -> bool | None:
        if x.dim() == 0 or x.shape[0] != B:
            return False
        return True if x.dim() > 1 else None  # (B,) may be one token per sample or an unbatched arange(B)

    def features(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def contract(self, deltas: list[Tensor], spec: Contraction) -> dict[str, dict[str, Tensor]]:
        E = self.module.weight
        V, dim = E.shape
        idx, d = _cat_positions([c.feat for c in self.calls], deltas, dim)
        pad = self.module.padding_idx
        if pad is not None:
            d = d * (idx != pad).to(d.dtype)[None, :, :, None]
        R, B, T, _ = d.shape
        if T == 1:
            i0 = idx[:, 0]
            A = (i0[:, None] == i0[None, :]).to(d.dtype)

            def sq_fn(s: Tensor) -> Tensor:
                return s.new_zeros(V, dim).index_add_(0, i0, s)

            return {"weight": _outer_t1(A, d[:, :, 0], spec, sq_fn, d.new_ones(B), E.shape)}
        mat = R * B * (V * dim + T * dim) + R * B * B * V * dim
        ghost_gram = B * B * T * T * (1 + R * dim)
        use_ghost = (
            not spec.sq
            and spec.gram != "full"
            and (spec.gram is None or (ghost_gram <= mat and (B * T) ** 2 <= GHOST_MAX))
            and (not spec.trace or B * T * T * (1 + R * dim) <= mat)
        )
        if use_ghost:
            flat = idx.reshape(-1)
            Phi = (flat[:, None] == flat[None, :]).to(d.dtype) if spec.gram else d.new_zeros(0)
            diag = (idx[:, :, None] == idx[:, None, :]).to(d.dtype) if spec.trace else d.new_zeros(0)
            return {"weight": _ghost(Phi, diag, d, spec)}
        rows = d.new_zeros(R * B, V, dim)
        which = torch.arange(R * B, device=d.device).repeat_interleave(T)
        tokens = idx.expand(R, B, T).reshape(-1)
        rows.index_put_((which, tokens), d.reshape(-1, dim), accumulate=True)
        return {"weight": rows_reduce(rows.reshape(R, B, V, dim), spec, E.shape)}


class Conv2dFactors(LayerFactors):
    min_dim = 3

    def features(self, x: Tensor) -> Tensor:
        return x

    def contract(self, deltas: list[Tensor], spec: Contraction) -> dict[str, dict[str, Tensor]]:
        m = self.module
        W = m.weight
        rows = bias_rows = None
        for call, d in zip(self.calls, deltas, strict=True):
            a = call.feat.to(d.dtype)
            R, B, O = d.shape[:3]
            _, C, H, Wd = a.shape
            per = torch.nn.grad.conv2d_weight(
                a.unsqueeze(0).expand(R, -1, -1, -1, -1).reshape(1, R * B * C, H, Wd),
                (R * B * O, C, *m.kernel_size),
                d.reshape(1, R * B * O, *d.shape[3:]),
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                groups=R * B,
            ).reshape(R, B, *W.shape)
            b = d.sum((-2, -1))
            rows = per if rows is None else rows + per
            bias_rows = b if bias_rows is None else bias_rows + b
        assert rows is not None and bias_rows is not None
        out = {"weight": rows_reduce(rows, spec, W.shape)}
        if "bias" in self.names:
            out["bias"] = rows_reduce(bias_rows, spec, m.bias.shape)
        return out


class NormFactors(LayerFactors):
    """LayerNorm and RMSNorm: ``z = γ ⊙ x̂ + β`` over the trailing ``normalized_shape`` dimensions."""

    def __init__(self, module: nn.Module, names: dict[str, str]) -> None:
        super().__init__(module, names)
        self.min_dim = len(module.normalized_shape)
        self.width = math.prod(module.normalized_shape)

    def features(self, x: Tensor) -> Tensor:
        m = self.module
        if isinstance(m, nn.LayerNorm):
            xh = F.layer_norm(x, m.normalized_shape, eps=m.eps)
        else:
            xh = F.rms_norm(x, m.normalized_shape, eps=m.eps)
        return xh.reshape(x.shape[0], -1, self.width)

    def contract(self, deltas: list[Tensor], spec: Contraction) -> dict[str, dict[str, Tensor]]:
        xh, d = _cat_positions([c.feat for c in self.calls], deltas, self.width)
        out = {"weight": rows_reduce((d * xh.to(d.dtype)).sum(2), spec, self.module.weight.shape)}
        if "bias" in self.names:
            out["bias"] = rows_reduce(d.sum(2), spec, self.module.bias.shape)
        return out


def _factors_for(module: nn.Module) -> type[LayerFactors] | None:
    kind = type(module)
    if kind is nn.Linear:
        return LinearFactors
    if kind is nn.Conv2d:
        ok = module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
        return Conv2dFactors if ok else None
    if kind is nn.Embedding:
        ok = module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
        return EmbeddingFactors if ok else None
    if kind in (nn.LayerNorm, nn.RMSNorm):
        return NormFactors if module.elementwise_affine else None
    return None


class FactorCapture:
    """The supported layers of one model and their capture hooks (module analysis done once).

    ``names`` are the trainable parameters in model order; ``covered`` those a layer here can factor.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.names = list(trainable)
        owners: dict[int, int] = {}
        for mod in model.modules():
            for p in mod.parameters(recurse=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
        name_of = {id(p): n for n, p in trainable.items()}
        self.layers: list[LayerFactors] = []
        for _, mod in model.named_modules():
            kind = _factors_for(mod)
            if kind is None:
                continue
            params = {role: p for role, p in mod.named_parameters(recurse=False) if p is not None}
            if not params or any(id(p) not in name_of or owners[id(p)] != 1 for p in params.values()):
                continue
            self.layers.append(kind(mod, {role: name_of[id(p)] for role, p in params.items()}))

    @property
    def covered(self) -> list[str]:
        """Parameter names a layer here factors (not counting layers dropped after verification)."""
        got = {n for layer in self.layers if not layer.dropped for n in layer.names.values()}
        return [n for n in self.names if n in got]

    @contextlib.contextmanager
    def recording(self, batch: int) -> Iterator[None]:
        """Hooks on every layer not dropped, for one forward pass of ``batch`` samples."""
        for layer in self.layers:
            layer.clear()
        handles = [
            layer.module.register_forward_hook(layer.hook(batch))
            for layer in self.layers
            if not layer.dropped
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def run(self, batch: int, forward: Callable[[], T_]) -> T_:
        """``forward()`` (one forward pass of ``batch`` samples) with the capture hooks. A pass that fails
        after an unverified unbatched call was expanded (the model did not broadcast it) runs again with
        those layers dropped, i.e. left to the fallback."""
        try:
            with self.recording(batch):
                return forward()
        except Exception:
            expanded = [layer for layer in self.layers if layer.expanded and "expand" not in layer.trusted]
            if not expanded:
                raise
            for layer in expanded:
                layer.dropped = True
                layer.pending.clear()
            with self.recording(batch):
                return forward()

    def active(self) -> list[LayerFactors]:
        """Layers whose calls of the last pass can be contracted."""
        return [layer for layer in self.layers if layer.usable()]

    def outputs(self, layers: list[LayerFactors]) -> list[Tensor]:
        """The captured outputs of ``layers`` (call order), to differentiate with respect to."""
        return [c.out for layer in layers for c in layer.calls]

    def contract(self, layers: list[LayerFactors], deltas: list[Tensor | None], spec: Contraction) -> Result:
        """``{name: contractions}`` for ``layers`` from the gradients w.r.t. :meth:`outputs` (``(R, B, …)``;
        ``None`` for an output the target does not depend on)."""
        R = next((d.shape[0] for d in deltas if d is not None), 1)
        result: Result = {}
        k = 0
        for layer in layers:
            ds = []
            for call in layer.calls:
                d = deltas[k]
                k += 1
                ds.append(d if d is not None else call.out.new_zeros(R, *call.out.shape))
            for role, value in layer.contract(ds, spec).items():
                result[layer.names[role]] = value
        return result

    def clear(self) -> None:
        for layer in self.layers:
            layer.clear()


_CAPTURES: weakref.WeakKeyDictionary[nn.Module, FactorCapture] = weakref.WeakKeyDictionary()


def capture_for(model: nn.Module) -> FactorCapture:
    """The model's shared :class:`FactorCapture` (rebuilt when its trainable parameters change), so module
    analysis and the verification of unbatched calls happen once per model."""
    cap = _CAPTURES.get(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if cap is None or cap.names != names:
        cap = _CAPTURES[model] = FactorCapture(model)
    return cap


def verify(layer: LayerFactors, got: dict[str, Tensor], ref: dict[str, Tensor]) -> bool:
    """Compare a layer's hook results with a reference (same keys); keep or drop the layer for good."""
    ok = True
    for name, value in got.items():
        r = ref[name].to(value)
        tol = 1e3 * torch.finfo(value.dtype).eps * max(float(r.abs().max()), 1e-30)
        ok &= bool(((value - r).abs() <= tol).all())
    if ok:
        layer.trusted |= layer.pending
    layer.dropped = not ok
    layer.pending.clear()
    return ok
