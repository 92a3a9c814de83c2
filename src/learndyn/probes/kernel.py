"""Empirical neural tangent kernel on a fixed probe batch: spectrum, target alignment, velocity, drift.

For network outputs ``f(x; θ) ∈ R^O`` and a probe batch ``x_1 … x_n``, the Jacobian ``J`` has rows
``∂f_a(x_i)/∂θ`` (``(n·O) × P``) and the empirical NTK is

    Θ[(i,a), (j,b)] = ⟨∂f_a(x_i)/∂θ, ∂f_b(x_j)/∂θ⟩    ``outputs="full"``:  (n·O) × (n·O), rows sample-major
    Θ_ij = Σ_a Θ[(i,a), (j,a)]                       ``outputs="trace"``: n × n (the default)

The trace over outputs is what most kernel analyses use (for a wide network at init the full kernel is
``Θ_trace/O ⊗ I_O``); it is ``O²`` times smaller.

Two implementations (as in neural-tangents, with the same trade-off):

- ``method="jacobian"`` (Jacobian contraction): ``vmap(jacrev)`` over the samples materialises ``J``
  (memory ``O(n·O·P)``), then ``Θ = J Jᵀ``. Cost ``≈ n·O`` single-sample backward passes plus the
  contraction, ``O(n²·O·P)`` (trace) or ``O(n²·O²·P)`` (full). Fastest while ``J`` fits in memory.
- ``method="ntvp"`` (NTK-vector products): each column ``Θ u = J (Jᵀ u)`` is a ``vjp`` followed by a
  ``jvp`` of the batched network, vectorised over the ``n·O`` basis vectors ``u`` in chunks of
  ``chunk_size``; ``J`` is never stored (memory ``O(chunk·P)`` plus activations), at ``≈ n`` times the
  compute of ``"jacobian"``. Use it when ``n·O·P`` numbers do not fit.

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
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from learndyn.probes.base import Measurement, Probe, ProbeContext
from learndyn.validation import check_choice, check_int

OUTPUT_MODES = ("trace", "full")
METHODS = ("jacobian", "ntvp")


def _split_state(
    model: nn.Module, params: Mapping[str, Tensor] | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if params is not None:
        trainable.update({n: params[n].detach() for n in trainable if n in params})
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in trainable}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})
    return trainable, frozen


def empirical_ntk(
    model: nn.Module,
    inputs: Tensor,
    params: Mapping[str, Tensor] | None = None,
    *,
    outputs: str = "trace",
    method: str = "jacobian",
    chunk_size: int | None = None,
) -> Tensor:
    """The empirical NTK of ``model`` on ``inputs`` (``(n, ...)``), see the module docstring.

    ``params`` overrides trainable parameters by name (e.g. the initial ones); the rest come from the
    model. Returns ``(n, n)`` for ``outputs="trace"`` or ``(n·O, n·O)`` for ``outputs="full"``, in the
    parameters' dtype.
    """
    check_choice("outputs", outputs, OUTPUT_MODES, owner="empirical_ntk")
    check_choice("method", method, METHODS, owner="empirical_ntk")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, low=1, owner="empirical_ntk")
    theta, frozen = _split_state(model, params)
    n = int(inputs.shape[0])
    with torch.enable_grad():
        if method == "jacobian":

            def f_single(p: dict[str, Tensor], x: Tensor) -> Tensor:
                return functional_call(model, {**frozen, **p}, (x.unsqueeze(0),)).reshape(-1)

            jac = vmap(jacrev(f_single), in_dims=(None, 0), chunk_size=chunk_size, randomness="different")(
                theta, inputs
            )
            K: Tensor | None = None
            for J in jac.values():  # one contraction per parameter tensor, J: (n, O, *shape)
                rows = J.reshape(n, -1) if outputs == "trace" else J.reshape(n * J.shape[1], -1)
                part = rows @ rows.T
                K = part if K is None else K + part
            assert K is not None
            return K.detach()

        def f_batch(p: dict[str, Tensor]) -> Tensor:
            return functional_call(model, {**frozen, **p}, (inputs,))

        out, vjp_fn = vjp(f_batch, theta)
        n_out = out[0].numel()
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


def target_matrix(targets: Tensor, n_outputs: int, dtype: torch.dtype) -> Tensor:
    """``Y`` (``n × d``): one-hot rows for integer labels with several outputs, else ``targets`` flattened."""
    n = int(targets.shape[0])
    if not targets.is_floating_point() and targets.dim() == 1 and n_outputs > 1:
        return F.one_hot(targets.long(), n_outputs).to(dtype)
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

    The probe batch is ``probe_inputs``/``probe_targets`` when given, else the first ``n_samples`` examples of
    the batch seen at the first measurement (copied and kept until :meth:`reset`).
    """

    name = "kernel"
    state_attrs = ("_x", "_y", "_K0", "_prev", "_n_out")

    def __init__(
        self,
        every: int = 1,
        n_samples: int = 32,
        k: int = 5,
        outputs: str = "trace",
        method: str = "jacobian",
        chunk_size: int | None = None,
        probe_inputs: Tensor | None = None,
        probe_targets: Tensor | None = None,
        log_kernel: bool = False,
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
        if (probe_inputs is None) != (probe_targets is None):
            raise ValueError("KernelProbe: give both probe_inputs and probe_targets, or neither")
        self._given = (probe_inputs, probe_targets)
        self.log_kernel = bool(log_kernel)
        self.reset()

    def reset(self) -> None:
        x, y = self._given
        self._x = None if x is None else x.detach().clone()
        self._y = None if y is None else y.detach().clone()
        self._K0: Tensor | None = None
        self._prev: tuple[int, Tensor] | None = None
        self._n_out: int | None = None

    def _kernel(self, model: nn.Module, params: Mapping[str, Tensor] | None = None) -> Tensor:
        return empirical_ntk(
            model, self._x, params, outputs=self.outputs, method=self.method, chunk_size=self.chunk_size
        )

    def measure(self, ctx: ProbeContext) -> Measurement:
        if self._x is None:
            self._x = ctx.inputs[: self.n_samples].detach().clone()
            self._y = ctx.targets[: self.n_samples].detach().clone()
        K = self._kernel(ctx.model)
        if self._K0 is None:
            self._K0 = self._kernel(ctx.model, ctx.init_params) if ctx.init_params is not None else K
        evals = torch.linalg.eigvalsh(K).flip(0)[: self.k]
        fro_sq = float(K.square().sum())
        tr = float(K.trace())
        out: dict[str, float | np.ndarray] = {
            "kernel/top_eigenvalues": evals.cpu().double().numpy(),
            "kernel/trace": tr,
            "kernel/effective_rank": tr**2 / fro_sq if fro_sq > 0 else float("nan"),
        }
        assert self._y is not None
        if self._n_out is None:
            with torch.no_grad():
                self._n_out = int(ctx.model(self._x[:1]).reshape(-1).numel())
        align = kernel_target_alignment(K, target_matrix(self._y, self._n_out, K.dtype), self.outputs)
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
