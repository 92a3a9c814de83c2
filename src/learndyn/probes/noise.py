"""Gradient noise: covariance spectrum, trace, signal-to-noise ratio, temperature, metric alignment.

With per-sample gradients ``g_i = ∇ℓ_i`` (see :mod:`learndyn.stats.per_sample`) and their mean ``ḡ`` (the
batch gradient), the gradient-noise covariance of one sample is estimated from the batch as

    C = (1/B) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ            (P × P; ``unbiased=True`` divides by B − 1 instead)

and the covariance of the mini-batch gradient is ``C/B``. ``C`` is never formed: with the ``B × B`` Gram
matrix ``K_ij = ⟨g_i, g_j⟩`` and the centring ``H = I − 11ᵀ/B``, ``K̃ = H K H`` is the Gram matrix of the
centred gradients, so (with ``n = B`` or ``B − 1``)

    eig(C) \\ {0} = eig(K̃/n) \\ {0}        tr C = tr K̃ / n        ‖C‖_F = ‖K̃‖_F / n        |ḡ|² = 1ᵀK1 / B².

Metrics (prefix ``noise/``):

- ``trace``            ``tr C``
- ``spectrum``         top-``k`` eigenvalues of ``C``, descending (array)
- ``effective_rank``   ``(tr C)² / ‖C‖_F²`` -- how many directions the noise spreads over (1 … B−1)
- ``grad_norm_sq``     ``|ḡ|²``
- ``snr``              ``|ḡ|² / (tr C / B)``: power of the mini-batch gradient's mean over its noise variance;
                       ``snr/<module>`` the same restricted to one module's parameters. ``snr ≫ 1``: the batch
                       gradient is mostly signal; ``snr ≲ 1``: mostly noise (SGD is diffusing).
- ``temperature``      ``lr · tr C / (2B)`` (when the learning rate is known): the SGD temperature of the
                       Langevin picture ``dθ = −∇L dt + √(lr · C/B) dW`` with time ``t = lr · steps``
                       (diffusion tensor ``D = lr · C/(2B)``, temperature ``tr D``).
- ``metric_alignment`` when ``ctx.optimizer`` exposes ``second_moment_diagonal(p)``
                       (``learndyn.optim.CovariantGD``): cosine similarity between ``diag C`` and the
                       optimizer's tracked ``diag S`` over all parameters -- 1 when the metric's shape
                       follows the gradient noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from learndyn.probes.base import GRADIENT_GRAPH, GRADIENT_GRAPH_WANTED, Measurement, Probe, ProbeContext
from learndyn.probes.representation import WANTED, recording_activations
from learndyn.stats.per_sample import (
    ROUTES,
    GradientGram,
    HookGramCollector,
    gram_from_per_sample_of,
    per_sample_grads_of,
)
from learndyn.validation import check_choice, check_int

_COLLECTORS: weakref.WeakKeyDictionary[nn.Module, HookGramCollector] = weakref.WeakKeyDictionary()


def _collector(model: nn.Module) -> HookGramCollector:
    col = _COLLECTORS.get(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if col is None or col.names != names:
        col = _COLLECTORS[model] = HookGramCollector(model)
    return col


def shared_per_sample_grads(ctx: ProbeContext) -> dict[str, Tensor]:
    """Per-sample gradients ``{name: (B, *shape)}`` by vmap, once per step (key ``per_sample_grads``)."""
    return ctx.shared("per_sample_grads", lambda: per_sample_grads_of(ctx.model, ctx.adapter, ctx.batch))


def shared_gradient_gram(ctx: ProbeContext, route: str = "hooks", need_sq: bool = False) -> GradientGram:
    """The step's :class:`~learndyn.stats.GradientGram`, computed once and shared between probes.

    A cached result with ``sq_mean`` also serves requests without it. ``route="vmap"`` reuses the shared
    per-sample gradients.
    """
    check_choice("route", route, ROUTES, owner="shared_gradient_gram")
    with_sq = f"gradient_gram/{route}/sq"
    if with_sq in ctx.cache:
        return ctx.cache[with_sq]
    key = with_sq if need_sq else f"gradient_gram/{route}"

    def compute() -> GradientGram:
        collector = _collector(ctx.model)
        if route == "hooks":
            keep = bool(ctx.cache.get(GRADIENT_GRAPH_WANTED)) and "hvp" not in ctx.cache
            recorded = _record_wanted_activations(ctx)
            during, outs = (None, {}) if recorded is None else recorded
            stats = collector.collect(  # the mean gradient only where read (metric alignment)
                ctx.adapter, ctx.batch, need_sq, during_forward=during, keep_graph=keep, need_mean=need_sq
            )
            for k, acts in outs.items():
                if acts:
                    ctx.cache.setdefault(k, acts)
            if stats.graph is not None:  # the step's Hessian-vector product differentiates it again
                ctx.cache[GRADIENT_GRAPH] = stats.graph
                stats = dataclasses.replace(stats, graph=None)
            return stats
        collector.check(ctx.adapter, ctx.batch)
        per = shared_per_sample_grads(ctx)
        return gram_from_per_sample_of(ctx.model, ctx.adapter, ctx.batch, need_sq=need_sq, per_sample=per)

    stats = ctx.shared(key, compute)
    share_batch_loss(ctx, stats.loss)
    return stats


def _record_wanted_activations(
    ctx: ProbeContext,
) -> tuple[contextlib.AbstractContextManager, dict[str, dict[str, Tensor]]] | None:
    """Hooks recording the eval-mode activations due probes will read (``representation.WANTED``) during
    the hooked forward pass, when that pass is exactly :func:`capture_activations`' (``model(ctx.inputs)``,
    every module in eval mode); ``None`` otherwise."""
    wanted = {k: v for k, v in ctx.cache.get(WANTED, {}).items() if k not in ctx.cache}
    model = ctx.model
    if not wanted or not ctx.adapter.default_pair or not isinstance(ctx.inputs, Tensor):
        return None
    if any(m.training for m in model.modules()):
        return None
    outs: dict[str, dict[str, Tensor]] = {k: {} for k in wanted}

    @contextlib.contextmanager
    def recording() -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for k, names in wanted.items():
                stack.enter_context(recording_activations(model, names, outs[k]))
            yield

    return recording(), outs


def share_batch_loss(ctx: ProbeContext, loss: float) -> None:
    """Offer the batch loss a probe's forward pass computed anyway (key ``batch_loss/eval``, as read by
    :func:`learndyn.probes.stages.batch_loss`), when the model ran entirely in eval mode."""
    if "batch_loss/eval" not in ctx.cache and not any(m.training for m in ctx.model.modules()):
        ctx.cache["batch_loss/eval"] = loss


def centre_gram(K: Tensor) -> Tensor:
    """``H K H`` with ``H = I − 11ᵀ/B``, for one ``(B, B)`` matrix or a stack ``(..., B, B)``."""
    row = K.mean(-1, keepdim=True)
    col = K.mean(-2, keepdim=True)
    return K - row - col + K.mean((-2, -1), keepdim=True)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


class NoiseProbe(Probe):
    """Gradient-noise covariance statistics from the per-sample gradient Gram matrix (see module docstring).

    ``k``: number of top eigenvalues reported; ``route``: ``"hooks"`` (fast, layer hooks) or ``"vmap"``;
    ``per_layer``: also report ``snr/<module>``; ``unbiased``: divide by ``B − 1`` instead of ``B``.
    """

    name = "noise"
    needs = frozenset({"gradient_gram"})

    def __init__(
        self,
        every: int = 1,
        k: int = 10,
        route: str = "hooks",
        per_layer: bool = True,
        unbiased: bool = False,
    ) -> None:
        super().__init__(every)
        self.k = check_int("k", k, low=1, owner="NoiseProbe")
        self.route = check_choice("route", route, ROUTES, owner="NoiseProbe")
        self.per_layer = bool(per_layer)
        self.unbiased = bool(unbiased)

    def measure(self, ctx: ProbeContext) -> Measurement:
        opt = ctx.optimizer
        align = opt is not None and callable(getattr(opt, "second_moment_diagonal", None))
        stats = shared_gradient_gram(ctx, self.route, need_sq=align)
        B = stats.batch_size
        n = B - 1 if self.unbiased else B
        if n < 1:
            return {}
        K = stats.gram().double()  # centring subtracts large numbers when |ḡ|² dominates: float64
        Kc = centre_gram(K)
        trace = float(Kc.diagonal().sum()) / n
        mean_sq = float(K.sum()) / B**2
        fro_sq = float(Kc.square().sum()) / n**2
        # the spectrum in the gradients' own precision (float32 eigh is ~2x faster; B x B only)
        evals = torch.linalg.eigvalsh((Kc / n).to(stats.grams.dtype)).flip(0)[: self.k].clamp_min(0)
        out: dict[str, float | np.ndarray] = {
            "noise/trace": trace,
            "noise/grad_norm_sq": mean_sq,
            "noise/snr": _ratio(mean_sq, trace / B),
            "noise/effective_rank": _ratio(trace**2, fro_sq),
            "noise/spectrum": evals.detach().cpu().double().numpy(),
        }
        if ctx.lr is not None:
            out["noise/temperature"] = ctx.lr * trace / (2 * B)
        if self.per_layer:
            modules, Km = stats.module_grams()
            Km = Km.double()
            tr_m = centre_gram(Km).diagonal(dim1=-2, dim2=-1).sum(-1) / n
            ms_m = Km.sum((-2, -1)) / B**2
            for mod, t, m in zip(modules, tr_m.tolist(), ms_m.tolist(), strict=True):
                out[f"noise/snr/{mod}"] = _ratio(m, t / B)
        if align:
            cos = self._alignment(ctx, stats, B / n)
            if cos is not None:
                out["noise/metric_alignment"] = cos
        return out

    @staticmethod
    def _alignment(ctx: ProbeContext, stats: GradientGram, scale: float) -> float | None:
        """``cos(diag C, diag S)`` over every parameter the optimizer reports a diagonal for."""
        assert stats.sq_mean is not None and stats.mean is not None
        get = ctx.optimizer.second_moment_diagonal  # type: ignore[union-attr]
        params = dict(ctx.model.named_parameters())
        cs, ss = [], []
        for name in stats.names:
            try:
                s = get(params[name])
            except ValueError:  # not managed by this optimizer
                continue
            if s is None:
                continue
            cs.append(((stats.sq_mean[name] - stats.mean[name].square()) * scale).reshape(-1))
            ss.append(s.detach().reshape(-1).to(cs[-1]))
        if not cs:
            return None
        c, s = torch.cat(cs), torch.cat(ss)
        den = float(c.norm() * s.norm())
        return float(c @ s) / den if den > 0 else None
