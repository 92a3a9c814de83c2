"""Empirical neural tangent kernel on a fixed probe batch: spectrum, target alignment, velocity, drift.

For network outputs ``f(x; θ) ∈ R^O`` and a probe batch ``x_1 … x_n``, the Jacobian ``J`` has rows
``∂f_a(x_i)/∂θ`` (``(n·O) × P``) and the empirical NTK is

    Θ[(i,a), (j,b)] = ⟨∂f_a(x_i)/∂θ, ∂f_b(x_j)/∂θ⟩    ``outputs="full"``:  (n·O) × (n·O), rows sample-major
    Θ_ij = Σ_a Θ[(i,a), (j,a)]                       ``outputs="trace"``: n × n (the default)

The trace over outputs is what most kernel analyses use (for a wide network at init the full kernel is
``Θ_trace/O ⊗ I_O``); it is ``O²`` times smaller.

Three implementations, each exact (they agree to round-off):

- ``method="structured"`` (default, structured derivatives; :mod:`learndyn.stats.ntk`): one forward pass
  with layer hooks and one batched backward pass per chunk of outputs give every supported layer's input
  ``a_it`` and output gradients ``δ^a_it = ∂f_a(x_i)/∂z_it``; a Linear layer contributes
  ``Σ_a Σ_{t,s} (a_it·a_js)(δ^a_it·δ^a_js)`` -- ``(a_i·a_j)(Δ_i·Δ_j)`` for vector inputs -- without forming
  ``J`` (embeddings, convolutions and norm layers likewise; other parameters by the Jacobian method). Cost
  ``≈ O`` backward passes of the batch plus ``O(n²(d_in + O·d_out))`` per layer. The fastest by far for
  MLPs (no ``n·O·P`` Jacobian).
- ``method="jacobian"`` (Jacobian contraction, the reference): ``vmap(jacrev)`` over the samples
  materialises ``J`` (memory ``O(n·O·P)``), then ``Θ = J Jᵀ``. Cost ``≈ n·O`` single-sample backward
  passes plus the contraction, ``O(n²·O·P)`` (trace) or ``O(n²·O²·P)`` (full).
- ``method="ntvp"`` (NTK-vector products): each column ``Θ u = J (Jᵀ u)`` is a ``vjp`` followed by a
  ``jvp`` of the batched network, vectorised over the ``n·O`` basis vectors ``u`` in chunks of
  ``chunk_size``; ``J`` is never stored (memory ``O(chunk·P)`` plus activations), at ``≈ n`` times the
  compute of ``"jacobian"``.

All three run attention on the math backend (forward-mode AD, batched and double backward passes need it).

Many outputs. The trace kernel needs one backward pass per output coordinate, so a language model's
``T·V`` logits per sample are expensive. With more than ``max_outputs`` output coordinates per sample
(default 128) the probe traces over a fixed random subset ``S`` of ``max_outputs`` coordinates (drawn once
from ``seed``) and scales by ``O/|S|``: ``Θ̂_ij = (O/|S|) Σ_{a∈S} ⟨∂f_a(x_i), ∂f_a(x_j)⟩``, an unbiased
estimate of the trace kernel computed exactly for that subset (the same subset at every measurement, so
velocity and distance compare like with like); ``kernel/n_outputs`` reports ``|S|``. ``outputs="full"``
refuses more than ``max_outputs`` outputs. To measure other outputs (the last position, a readout), give
the Monitor a :class:`~learndyn.stats.batch.BatchAdapter` with ``outputs=``.

Metrics (prefix ``kernel/``):

- ``top_eigenvalues`` (array, descending), ``trace``, ``effective_rank = (tr Θ)²/‖Θ‖_F²``
- ``target_alignment`` ``⟨Θ, Y Yᵀ⟩_F / (‖Θ‖_F ‖Y Yᵀ‖_F)``; ``Y`` is the probe targets (class labels become
  one-hot rows when the network has several outputs), ``n × O`` flattened to ``n·O`` for the full kernel.
- ``velocity``  ``‖Θ_t − Θ_prev‖_F / ‖Θ_prev‖_F`` against the previous measurement (``every`` steps ago;
  ``velocity_per_step`` divides by the steps elapsed);
- ``distance_from_init`` ``‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F``, with ``Θ_0`` the kernel at ``ctx.init_params`` when the
  context has them (the Monitor does), else at the first measurement. Small and flat: lazy (kernel) regime;
  growing: rich (feature-learning) regime.
- ``matrix`` the kernel itself (array), only with ``log_kernel=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from learndyn.probes.base import Measurement, Probe, ProbeContext
from learndyn.stats.attention import math_attention
from learndyn.stats.batch import Batch, batch_size, call_model, clone, functional, select
from learndyn.stats.factors import FactorCapture
from learndyn.stats.mlp_hvp import mlp_ntk, ntk_supported
from learndyn.stats.ntk import jacobian_gram, per_sample_jacobians, structured_ntk
from learndyn.validation import LearndynValueError, check_choice, check_int

OUTPUT_MODES = ("trace", "full")
METHODS = ("structured", "jacobian", "ntvp")


def _model_call(model: nn.Module, inputs: Any) -> Tensor:
    return call_model(model, inputs)


def empirical_ntk(
    model: nn.Module,
    inputs: Batch,
    params: Mapping[str, Tensor] | None = None,
    *,
    outputs: str = "trace",
    method: str = "structured",
    chunk_size: int | None = None,
    forward: Callable[[nn.Module, Batch], Tensor] | None = None,
    select: Tensor | None = None,
    capture: FactorCapture | None = None,
) -> Tensor:
    """The empirical NTK of ``model`` on ``inputs`` (``(n, ...)``), see the module docstring.

    ``params`` overrides trainable parameters by name (e.g. the initial ones); the rest come from the
    model. ``forward(model, inputs)`` gives the outputs (default ``model(inputs)``; then ``inputs`` may be any
    batch the forward reads); ``select`` keeps those flattened output coordinates of each sample. Returns
    ``(n, n)`` for ``outputs="trace"`` or ``(n·O, n·O)`` for ``outputs="full"``, in the parameters' dtype.
    """
    check_choice("outputs", outputs, OUTPUT_MODES, owner="empirical_ntk")
    check_choice("method", method, METHODS, owner="empirical_ntk")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, low=1, owner="empirical_ntk")
    forward = _model_call if forward is None else forward
    if method == "structured":
        parts = structured_ntk(
            model,
            forward,
            inputs,
            outputs=outputs,
            params=params,
            select=select,
            chunk_size=chunk_size,
            capture=capture,
        )
        return sum(parts.values())  # type: ignore[return-value]
    if method == "jacobian":
        jac = per_sample_jacobians(
            model, forward, inputs, params=params, select=select, chunk_size=chunk_size
        )
        return sum(jacobian_gram(jac, outputs).values()).detach()  # type: ignore[union-attr]
    return _ntvp(model, forward, inputs, params, outputs, chunk_size, select)


def _ntvp(
    model: nn.Module,
    forward: Callable[[nn.Module, Batch], Tensor],
    inputs: Batch,
    params: Mapping[str, Tensor] | None,
    outputs: str,
    chunk_size: int | None,
    select: Tensor | None,
) -> Tensor:
    """``Θ`` column by column, ``Θ u = J (Jᵀ u)`` by a vjp and a jvp per basis vector ``u``."""
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if params is not None:
        theta.update({n: params[n].detach() for n in theta if n in params})
    f = functional(model, forward)
    n = batch_size(inputs)

    def f_batch(p: dict[str, Tensor]) -> Tensor:
        out = f(p, inputs).reshape(n, -1)
        return out if select is None else out[:, select]

    with torch.enable_grad(), math_attention():
        out, vjp_fn = vjp(f_batch, theta)
        n_out = out.shape[1]
        basis = torch.eye(n * n_out, dtype=out.dtype, device=out.device).reshape(n * n_out, *out.shape)

        def column(u: Tensor) -> Tensor:
            (tangent,) = vjp_fn(u)
            return jvp(f_batch, (theta,), (tangent,))[1].reshape(-1)

        with warnings.catch_warnings():  # torch's first forward-AD call loads jit-scripted decompositions
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            full = vmap(column, chunk_size=chunk_size, randomness="different")(basis)  # (n·O, n·O)
    full = (full + full.T) / 2  # symmetric up to round-off
    if outputs == "full":
        return full.detach()
    return full.reshape(n, n_out, n, n_out).diagonal(dim1=1, dim2=3).sum(-1).detach()


def target_matrix(
    targets: Tensor, n_outputs: int, dtype: torch.dtype, out_shape: tuple[int, ...] = ()
) -> Tensor:
    """``Y`` (``n × d``): one-hot rows for integer labels with several outputs, else ``targets`` flattened.

    Integer targets of shape ``(n, *out_shape[:-1])`` for outputs ``(n, *out_shape)`` (token labels of a
    language model's logits) are one-hot encoded along the last output dimension.
    """
    n = int(targets.shape[0])
    if not targets.is_floating_point() and n_outputs > 1:
        if targets.dim() == 1:
            return F.one_hot(targets.long(), n_outputs).to(dtype)
        if out_shape and tuple(targets.shape[1:]) == tuple(out_shape[:-1]):
            return F.one_hot(targets.long(), out_shape[-1]).reshape(n, -1).to(dtype)
    return targets.reshape(n, -1).to(dtype)


def kernel_target_alignment(K: Tensor, Y: Tensor, outputs: str = "trace") -> float | None:
    """``⟨K, yyᵀ⟩_F / (‖K‖_F ‖yyᵀ‖_F)`` with ``yyᵀ = Y Yᵀ`` (trace kernel) or ``vec Y vec Yᵀ`` (full kernel).

    ``None`` when the targets do not match the kernel's shape or either factor is zero.
    """
    if outputs == "full":
        y = Y.reshape(-1)
        if y.numel() != K.shape[0]:
            return None
        num, den = float(y @ K @ y), float(K.norm() * y.square().sum())
    else:
        T = Y @ Y.T
        num, den = float((K * T).sum()), float(K.norm() * T.norm())
    return num / den if den > 0 else None


class KernelProbe(Probe):
    """Empirical NTK statistics on a fixed probe batch (see module docstring).

    The probe batch is ``probe_inputs``/``probe_targets`` when given (outputs ``model(probe_inputs)``), else
    ``probe_batch`` (read through the Monitor's batch adapter), else the first ``n_samples`` examples of the
    batch seen at the first measurement (copied and kept until :meth:`reset`). ``method``: ``"structured"``
    (default), ``"jacobian"`` or ``"ntvp"``; ``max_outputs`` and ``seed``: the output subset for models with
    many outputs per sample (module docstring).
    """

    name = "kernel"
    state_attrs = ("_x", "_y", "_K0", "_prev", "_n_out", "_select", "_from_batch")

    def __init__(
        self,
        every: int = 1,
        n_samples: int = 32,
        k: int = 5,
        outputs: str = "trace",
        method: str = "structured",
        chunk_size: int | None = None,
        probe_inputs: Tensor | None = None,
        probe_targets: Tensor | None = None,
        log_kernel: bool = False,
        *,
        probe_batch: Batch | None = None,
        max_outputs: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__(every)
        owner = "KernelProbe"
        self.n_samples = check_int("n_samples", n_samples, low=1, owner=owner)
        self.k = check_int("k", k, low=1, owner=owner)
        self.outputs = check_choice("outputs", outputs, OUTPUT_MODES, owner=owner)
        self.method = check_choice("method", method, METHODS, owner=owner)
        self.chunk_size = (
            None if chunk_size is None else check_int("chunk_size", chunk_size, low=1, owner=owner)
        )
        self.max_outputs = check_int("max_outputs", max_outputs, low=1, owner=owner)
        self.seed = check_int("seed", seed, low=0, owner=owner)
        if (probe_inputs is None) != (probe_targets is None):
            raise ValueError("KernelProbe: give both probe_inputs and probe_targets, or neither")
        if probe_inputs is not None and probe_batch is not None:
            raise LearndynValueError("KernelProbe: give probe_inputs/probe_targets or probe_batch, not both")
        self._given = (probe_inputs, probe_targets, probe_batch)
        self.log_kernel = bool(log_kernel)
        self._capture: FactorCapture | None = None
        self.reset()

    def reset(self) -> None:
        x, y, batch = self._given
        self._from_batch = batch is not None
        self._x = clone(batch) if batch is not None else None if x is None else x.detach().clone()
        self._y = None if y is None else y.detach().clone()
        self._K0: Tensor | None = None
        self._prev: tuple[int, Tensor] | None = None
        self._n_out: int | None = None
        self._select: Tensor | None = None
        self._out_shape: tuple[int, ...] | None = None

    def _kernel(self, ctx: ProbeContext, params: Mapping[str, Tensor] | None = None) -> Tensor:
        model = ctx.model
        if self.method == "structured" and self._select is None:  # a plain MLP: its factors written out
            x = self._x[0] if self._from_batch and ctx.adapter.default_pair else self._x
            if (not self._from_batch or ctx.adapter.default_pair) and ntk_supported(model, x):
                return mlp_ntk(model, x, params, self.outputs)
        if self.method == "structured" and (self._capture is None or self._capture.model is not model):
            self._capture = FactorCapture(model)
        K = empirical_ntk(
            model,
            self._x,
            params,
            outputs=self.outputs,
            method=self.method,
            chunk_size=self.chunk_size,
            forward=ctx.adapter.outputs if self._from_batch else None,
            select=self._select,
            capture=self._capture if self.method == "structured" else None,
        )
        if self._select is not None and self._n_out is not None:
            K = K * (self._n_out / len(self._select))
        return K

    def _outputs_once(self, ctx: ProbeContext) -> tuple[int, ...]:
        """Output shape of one sample (one forward pass of the probe batch, the first time); draws the output
        subset when there are too many outputs."""
        if self._out_shape is not None:
            return self._out_shape
        with torch.no_grad():
            out = (
                ctx.adapter.outputs(ctx.model, self._x)
                if self._from_batch
                else _model_call(ctx.model, self._x)
            )
        shape = tuple(out.shape[1:])
        n_out = int(np.prod(shape, dtype=np.int64))
        if self._select is None and n_out > self.max_outputs:
            if self.outputs == "full":
                raise LearndynValueError(
                    f"KernelProbe.outputs='full' with {n_out} outputs per sample (n·O = "
                    f"{n_out * batch_size(self._x)} rows); allowed: at most max_outputs={self.max_outputs} "
                    "outputs, or outputs='trace', or a BatchAdapter(outputs=...) that picks fewer outputs"
                )
            gen = torch.Generator().manual_seed(self.seed)
            pick = torch.randperm(n_out, generator=gen)[: self.max_outputs].sort().values
            self._select = pick.to(out.device)
        self._n_out = n_out
        self._out_shape = shape
        return shape

    def measure(self, ctx: ProbeContext) -> Measurement:
        if self._x is None:
            self._x = clone(select(ctx.batch, slice(0, self.n_samples)))
            self._from_batch = True
        if self._y is None and self._from_batch:
            self._y = ctx.adapter.targets(self._x)
        out_shape = self._outputs_once(ctx)
        K = self._kernel(ctx)
        if self._K0 is None:
            self._K0 = self._kernel(ctx, ctx.init_params) if ctx.init_params is not None else K
        evals = torch.linalg.eigvalsh(K).flip(0)[: self.k]
        fro_sq = float(K.square().sum())
        tr = float(K.trace())
        out: dict[str, float | np.ndarray] = {
            "kernel/top_eigenvalues": evals.cpu().double().numpy(),
            "kernel/trace": tr,
            "kernel/effective_rank": tr**2 / fro_sq if fro_sq > 0 else float("nan"),
        }
        if self._select is not None:
            out["kernel/n_outputs"] = float(len(self._select))
        if isinstance(self._y, Tensor):
            assert self._n_out is not None
            Y = target_matrix(self._y, self._n_out, K.dtype, out_shape)
            if self._select is not None and Y.shape[1] == self._n_out:
                Y = Y[:, self._select.to(Y.device)]
            align = kernel_target_alignment(K, Y, self.outputs)
            if align is not None:
                out["kernel/target_alignment"] = align
        k0_norm = float(self._K0.norm())
        if k0_norm > 0:
            out["kernel/distance_from_init"] = float((K - self._K0).norm()) / k0_norm
        if self._prev is not None:
            step0, Kp = self._prev
            vel = float((K - Kp).norm()) / float(Kp.norm()) if float(Kp.norm()) > 0 else float("nan")
            out["kernel/velocity"] = vel
            if ctx.step > step0:
                out["kernel/velocity_per_step"] = vel / (ctx.step - step0)
        self._prev = (ctx.step, K)
        if self.log_kernel:
            out["kernel/matrix"] = K.cpu().double().numpy()
        return out

    def __repr__(self) -> str:
        return (
            f"KernelProbe(every={self.every}, n_samples={self.n_samples}, outputs={self.outputs!r}, "
            f"method={self.method!r})"
        )
