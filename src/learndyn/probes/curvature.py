"""Loss curvature: top Hessian eigenvalues (Lanczos), Hessian trace (Hutchinson), sharpness vs stability.

Hessian-vector products
-----------------------
``H v`` with ``H = ∇²L(θ)`` (the batch loss, P × P, never formed) is computed by *double backward*: the
gradient ``∇L`` is built once with ``create_graph=True`` and every product is one more backward pass through
that graph, ``H v = ∇_θ ⟨∇L, v⟩``. The alternative, forward-over-reverse ``torch.func.jvp(grad(L))``, redoes
the forward and backward pass for every product; Lanczos and Hutchinson ask for 20-50 products at the same
point, where reusing the graph measured ~4× faster per product on a small MLP (0.5 ms vs 2.0 ms, one CPU
thread; the plain training step was 0.33 ms). The cost is keeping that graph alive for the duration of one
measurement; it is dropped with the step's :class:`~learndyn.probes.base.ProbeContext`. The graph is the
noise probe's when both probes are due (its hooked pass keeps it: one forward/backward pass less), and each
product is one call of the autograd engine from the flattened gradient.

For a plain MLP (an ``nn.Sequential`` of Linear layers with ReLU/Tanh/none between them, mean cross-entropy
or squared error) the products are Pearlmutter's R-operator written out instead
(:mod:`learndyn.stats.mlp_hvp`): the same large products as a training step, none of the engine's
bookkeeping, and the exact Gauss-Newton traces from the same forward pass.

Attention runs on the math backend while the gradient graph is built (fused attention kernels have no
double backward; :mod:`learndyn.stats.attention`).

Estimators
----------
- Lanczos: ``m`` steps from a random unit vector build an orthonormal basis ``Q`` (m × P) of the Krylov space
  and the tridiagonal ``T = Q H Qᵀ``; the extreme eigenvalues of ``T`` (Ritz values) converge first to the
  extreme eigenvalues of ``H``. With ``m ≥ P`` they are exact. In floating point the Lanczos vectors lose
  orthogonality as Ritz values converge, which creates spurious copies of them; ``reorth="full"``
  orthogonalises every new vector against all previous ones (twice, classical Gram-Schmidt: ``4 j P`` flops
  at step ``j``, ~40% of the run on a small MLP), ``reorth="partial"`` (default, Simon's partial
  reorthogonalisation) tracks estimates ``ω_{j+1,k} ≈ q_{j+1}·q_k`` by the recurrence

      β_j ω_{j+1,k} = β_k ω_{j,k+1} + (α_k − α_j) ω_{j,k} + β_{k−1} ω_{j,k−1} − β_{j−1} ω_{j−1,k} ± ε‖H‖

  (``O(j)`` scalar work) and orthogonalises against all previous vectors only on the two steps after some
  ``|ω| > √ε`` -- semi-orthogonality, which keeps the Ritz values accurate to working precision.
- Hutchinson: ``tr H = E[vᵀ H v]`` for Rademacher ``v`` (entries ±1), averaged over ``n`` draws; the reported
  standard error is ``std(vᵀHv)/√n``.
- Exact Gauss-Newton trace (``ggn``): ``tr G`` of ``G = (1/B) Σ_i J_iᵀ H_i J_i`` and its per-module parts by
  structured backpropagation (:mod:`learndyn.stats.ggn`, ``O`` batched backward passes for ``O`` outputs per
  sample, no Hessian-vector product). ``diag G = diag ∇²L`` -- and ``tr G = tr ∇²L`` -- for networks that are
  linear in each single parameter (ReLU MLPs and CNNs); elsewhere ``G`` is the positive semi-definite part
  of the Hessian that second-order methods use. ``ggn=None`` (default) computes it when the loss is a
  function of the outputs and there are at most ``ggn_max_outputs`` outputs per sample.

Random vectors come from a private ``torch.Generator`` seeded at construction: the global RNG is never
touched, and the sequence of measurements is reproducible. ``params`` restricts everything to a block of
the Hessian: the named parameters (or every parameter under the named modules).

Metrics (prefix ``curvature/``): ``top_eigenvalues`` (array, descending), ``lambda_max``, ``lambda_min``
(the smallest Ritz value: exact only once Lanczos has converged; negative values flag saddle directions),
``trace``, ``trace_stderr``, ``ggn_trace`` and ``ggn_trace/<module>``, and with a learning rate
``sharpness = lr · λ_max`` -- gradient descent on the local quadratic is stable while ``lr · λ_max < 2`` --
and ``stability_ratio = lr · λ_max / 2`` (≥ 1: past the edge of stability).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learndyn.probes.base import GRADIENT_GRAPH, LossFn, Measurement, Probe, ProbeContext
from learndyn.probes.noise import share_batch_loss
from learndyn.stats.attention import math_attention
from learndyn.stats.batch import Batch, BatchAdapter
from learndyn.stats.factors import FactorCapture
from learndyn.stats.ggn import GaussNewtonDiagonal, gauss_newton_diagonal
from learndyn.stats.mlp_hvp import MLPHessianVectorProduct
from learndyn.stats.mlp_hvp import supported as mlp_supported
from learndyn.validation import LearndynValueError, check_choice, check_int

MatVec = Callable[[Tensor], Tensor]

REORTH = ("partial", "full")


def resolve_params(model: nn.Module, params: Sequence[str] | None, owner: str) -> list[str]:
    """Trainable parameter names selected by ``params`` (names or module prefixes; ``None``: all)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        return names
    chosen: list[str] = []
    for key in params:
        hit = [n for n in names if n == key or n.startswith(f"{key}.")]
        if not hit:
            raise LearndynValueError(
                f"{owner}.params contains {key!r}, which names no trainable parameter of "
                f"{type(model).__name__}; allowed: names or module prefixes from named_parameters()"
            )
        chosen += [n for n in hit if n not in chosen]
    return [n for n in names if n in chosen]


class HessianVectorProduct:
    """``v ↦ H v`` on flat vectors of length ``dim`` (the trainable parameters in ``names``, default all,
    in model order).

    Builds ``∇L`` with ``create_graph=True`` once; each call is one backward pass through it (double
    backward). Does not touch ``param.grad``. ``adapter``/``batch`` read any batch (default: the
    ``(inputs, targets)`` pair with ``loss_fn``). ``gradients``: ``(L, ∇_θ L per trainable parameter)``
    already built with their graph by another pass over the same batch (the noise probe's,
    :data:`~learndyn.probes.base.GRADIENT_GRAPH`), used instead of a pass of its own (all trainable
    parameters only: ``names`` must be ``None``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | None,
        inputs: Any = None,
        targets: Any = None,
        *,
        names: Sequence[str] | None = None,
        adapter: BatchAdapter | None = None,
        batch: Batch = None,
        gradients: tuple[Tensor, Sequence[Tensor | None]] | None = None,
    ) -> None:
        adapter = BatchAdapter(loss_fn) if adapter is None else adapter
        batch = (inputs, targets) if batch is None else batch
        named = dict(model.named_parameters())
        chosen = resolve_params(model, names, "HessianVectorProduct")
        self.names = chosen
        self.params = [named[n] for n in chosen]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        first = self.params[0] if self.params else next(iter(named.values()), torch.zeros(()))
        self.dtype, self.device = first.dtype, first.device
        self._structured: MLPHessianVectorProduct | None = None
        if names is None and adapter.default_pair and isinstance(batch, tuple | list) and len(batch) == 2:
            x, y = batch
            if mlp_supported(model, adapter.loss_fn, x, y):  # the written-out R-operator (mlp_hvp)
                self._structured = MLPHessianVectorProduct(model, adapter.loss_fn, x, y)
                self.loss = self._structured.loss
                self._flat_grad = None
                return
        if gradients is not None:
            if names is not None or len(gradients[1]) != len(self.params):
                raise LearndynValueError(
                    "HessianVectorProduct.gradients must hold one gradient per trainable parameter; allowed: "
                    "names=None"
                )
            loss, grads = gradients[0], tuple(gradients[1])
        else:
            with torch.enable_grad(), math_attention():
                loss = adapter.loss(model, batch)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.loss = float(loss.detach())
        # only gradients that still depend on the parameters contribute to H v; they are flattened into
        # one vector inside the graph, so each product is one backward pass from one output
        self._live = [k for k, g in enumerate(grads) if g is not None and g.requires_grad]
        self._all_live = len(self._live) == len(self.params)
        self._flat_grad = torch.cat([grads[k].reshape(-1) for k in self._live]) if self._live else None
        self._inputs = tuple(self.params)

    def __call__(self, v: Tensor) -> Tensor:
        return torch.cat([h.reshape(-1) for h in self.parts(v)])

    def ggn_traces(self) -> dict[str, float] | None:
        """``{name: tr G restricted to it}`` of the Gauss-Newton matrix from the written-out MLP's factors
        (:meth:`learndyn.stats.mlp_hvp.MLPHessianVectorProduct.ggn_traces`), or ``None`` for other models."""
        if self._structured is None:
            return None
        return dict(zip(self.names, (float(t) for t in self._structured.ggn_traces()), strict=True))

    def parts(self, v: Tensor) -> list[Tensor]:
        """``H v`` per parameter (parameter shapes, ``names`` order), before flattening: a caller that
        combines ``H v`` with other vectors anyway (Lanczos) writes the combination straight into its own
        buffer, saving the copy of :meth:`__call__`'s concatenation."""
        if v.shape != (self.dim,):
            raise LearndynValueError(
                f"HessianVectorProduct: v has shape {tuple(v.shape)}; allowed: ({self.dim},), the flat "
                "trainable parameters"
            )
        if self._structured is not None:
            return self._structured.parts(v)
        if self._flat_grad is None:
            return [v.new_zeros(p.shape) for p in self.params]
        if self._all_live:
            cot = v
        else:
            split = v.split(self.sizes)
            cot = torch.cat([split[k] for k in self._live])
        with torch.enable_grad():
            hv = _backward(self._flat_grad, cot, self._inputs)
        return [h if h is not None else v.new_zeros(p.shape) for h, p in zip(hv, self.params, strict=True)]


def _backward(output: Tensor, cotangent: Tensor, inputs: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
    """``∂⟨output, cotangent⟩/∂inputs`` (``None`` where unused), keeping the graph.

    ``torch.autograd.grad`` checks and normalises its arguments in Python on every call (~50 µs, 0.07 of
    a plain step of the benchmark MLP, paid by each of Lanczos' 20 products); the shapes here are fixed
    at construction and checked by the caller, so the autograd engine is called directly when this
    torch exposes it (the same call ``torch.autograd.grad`` ends in), else through ``torch.autograd.grad``.
    """
    engine = getattr(torch.autograd.Variable, "_execution_engine", None)
    if engine is not None and output.shape == cotangent.shape and output.dtype == cotangent.dtype:
        return engine.run_backward((output,), (cotangent,), True, False, inputs, True, False)
    return torch.autograd.grad(output, inputs, grad_outputs=cotangent, retain_graph=True, allow_unused=True)


def shared_hvp(ctx: ProbeContext, names: Sequence[str] | None = None) -> HessianVectorProduct:
    """The step's Hessian-vector product (the gradient graph is built once per step and parameter block,
    key ``hvp`` or ``hvp/<names>``)."""
    key = "hvp" if names is None else "hvp/" + ",".join(names)

    def build() -> HessianVectorProduct:
        graph = ctx.cache.pop(GRADIENT_GRAPH, None) if names is None else None
        return HessianVectorProduct(
            ctx.model, ctx.loss_fn, names=names, adapter=ctx.adapter, batch=ctx.batch, gradients=graph
        )

    hvp = ctx.shared(key, build)
    share_batch_loss(ctx, hvp.loss)
    return hvp


def lanczos(
    matvec: MatVec,
    dim: int,
    iters: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    reorth: str = "partial",
    workspace: dict[str, Tensor] | None = None,
) -> Tensor:
    """Ritz values (ascending, float64) of a symmetric operator after ``min(iters, dim)`` Lanczos steps.

    ``reorth="full"`` orthogonalises every new Lanczos vector against all previous ones (twice, classical
    Gram-Schmidt), keeping ``Q`` orthonormal to working precision; ``"partial"`` (default) does so only when
    the estimated loss of orthogonality exceeds ``√ε`` (module docstring), keeping ``Q`` semi-orthogonal:
    same Ritz values to working precision, a fraction of the cost. Either way no spurious copies of
    converged eigenvalues appear. Stops early on an invariant subspace (``β_j ≈ 0``), in which case the Ritz
    values are exact eigenvalues.

    ``workspace``: a dict the caller keeps between calls, in which the ``m × dim`` basis buffer is kept
    (when at most :data:`WORKSPACE_BYTES`) instead of being allocated afresh: a fresh buffer of megabytes
    is new memory whose first writes page-fault, ~40 µs per 10⁵ floats (half a plain step of the benchmark
    MLP per Lanczos run).
    """
    m = min(check_int("iters", iters, low=1, owner="lanczos"), dim)
    check_choice("reorth", reorth, REORTH, owner="lanczos")
    # drawn in the working dtype (a float64 draw of ~10⁵ entries cost ~2 plain steps of a small MLP)
    start = torch.randn(dim, generator=generator, dtype=dtype).to(device=device)
    # the Lanczos vectors live in one contiguous buffer: q_j is the row Q[j] (written in place by the
    # normalisation of the previous step), w one work vector updated in place -- no per-step copies
    # rows padded to 64 bytes: each starts aligned, as a fresh tensor would, so reductions over q_j round
    # exactly as on a separately allocated vector; rows beyond the current step are never read
    Q = _basis_buffer(m, -(-dim // 16) * 16, dtype, torch.device(device), workspace)[:m, :dim]
    torch.div(start, start.norm(), out=Q[0])
    work = torch.empty(dim, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    eps = torch.finfo(dtype).eps
    omega = _Omega(m, eps)  # ω_{j,k} ≈ q_j·q_k (partial reorthogonalisation)
    force = False  # reorthogonalise this step too (the step after a triggered one)
    # H v per parameter, combined with the previous vector straight into the work buffer (no flat copy)
    by_parts = isinstance(matvec, HessianVectorProduct) and reorth == "partial"
    if by_parts:
        assert isinstance(matvec, HessianVectorProduct)
        work_parts = work.split(matvec.sizes)
        prev_parts = Q[0].split(matvec.sizes)
    for j in range(m):
        q = Q[j]
        if by_parts and j > 0:
            assert isinstance(matvec, HessianVectorProduct)
            for h, dst, prev in zip(matvec.parts(q), work_parts, prev_parts, strict=True):
                torch.sub(h.reshape(-1), prev, alpha=betas[-1], out=dst)
            prev_parts = q.split(matvec.sizes)
            w = work
        else:
            w = matvec(q)  # the caller's tensor: read, never written
        if reorth == "full":
            alpha = float(w @ q)
            basis = Q[: j + 1]
            for _ in range(2):
                w = torch.sub(w, torch.mv(basis.T, torch.mv(basis, w)), out=work)
            beta = float(w.norm())
        else:
            if j > 0 and not by_parts:
                w = torch.sub(w, Q[j - 1], alpha=betas[-1], out=work)
            alpha = float(torch.dot(w, q))
            w = torch.sub(w, q, alpha=alpha, out=work)
            beta = float(torch.linalg.vector_norm(w))
            scale = max(scale, abs(alpha), beta)
            worst = omega.step(alpha, beta, eps * scale)
            if force or (j > 0 and worst > math.sqrt(eps)):
                basis = Q[: j + 1]
                for _ in range(2):
                    w.sub_(torch.mv(basis.T, torch.mv(basis, w)))
                beta = float(w.norm())
                omega.reset_last(eps)
                force = not force
            omega.accept(alpha, beta)
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        if j == m - 1 or beta <= 1e3 * eps * max(scale, 1e-300):
            break
        betas.append(beta)
        torch.div(w, beta, out=Q[j + 1])
    a = torch.tensor(alphas, dtype=torch.float64)
    T = torch.diag(a)
    if betas:
        b = torch.tensor(betas, dtype=torch.float64)
        T = T + torch.diag(b, 1) + torch.diag(b, -1)
    return torch.linalg.eigvalsh(T)


WORKSPACE_BYTES = 2**26
"""Largest Lanczos basis (bytes) kept in a caller's ``workspace`` between calls."""


def _basis_buffer(
    m: int, width: int, dtype: torch.dtype, device: torch.device, workspace: dict[str, Tensor] | None
) -> Tensor:
    """An uninitialised ``(≥ m, width)`` buffer: the workspace's when it fits, else a new one (kept there
    when small enough)."""
    if workspace is None:
        return torch.empty(m, width, dtype=dtype, device=device)
    buf = workspace.get("basis")
    if (
        buf is not None
        and buf.shape[0] >= m
        and buf.shape[1] == width
        and buf.dtype == dtype
        and buf.device == device
    ):
        return buf
    buf = torch.empty(m, width, dtype=dtype, device=device)
    if buf.numel() * buf.element_size() <= WORKSPACE_BYTES:
        workspace["basis"] = buf
    return buf


class _Omega:
    """Simon's estimates ``ω_{j,k} ≈ q_j·q_k`` (module docstring), advanced one Lanczos step at a time.

    Keeps ``α``/``β`` and the two latest rows of ``ω`` in preallocated arrays (``m`` steps at most), so a
    step is a handful of vector operations on ``j`` numbers.
    """

    def __init__(self, m: int, eps: float) -> None:
        self.a = np.zeros(m + 1)  # α_0..α_{j−1}
        self.b = np.zeros(m + 1)  # β_0..β_{j−1}
        self.prev = np.zeros(m + 2)  # ω_{j−1,·}
        self.cur = np.zeros(m + 2)  # ω_{j,·}
        self.cur[0] = 1.0
        self.next = np.zeros(m + 2)  # ω_{j+1,·}
        self.j = 0

    def step(self, alpha: float, beta: float, noise: float) -> float:
        """Compute ``ω_{j+1,·}`` from ``α_j, β_j`` and the rounding model ``noise`` (``ε‖H‖``); return
        ``max_{k<j} |ω_{j+1,k}|`` (0 for ``j = 0``)."""
        j = self.j
        out = self.next
        out[j] = np.finfo(np.float64).eps if noise == 0 else noise / max(beta, 1e-300)
        out[j + 1] = 1.0
        if j == 0 or beta == 0:
            out[:j] = 0.0
            return 0.0
        a, b, omega, omega_prev = self.a[:j], self.b[:j], self.cur, self.prev
        t = b * omega[1 : j + 1] + (a - alpha) * omega[:j] - b[-1] * omega_prev[:j]
        t[1:] += b[:-1] * omega[: j - 1]
        out[:j] = (t + np.where(t >= 0, noise, -noise)) / beta
        return float(np.abs(out[:j]).max())

    def reset_last(self, eps: float) -> None:
        """``ω_{j+1,k} = ε`` for ``k ≤ j``: ``q_{j+1}`` was just orthogonalised against all previous."""
        self.next[: self.j + 1] = eps

    def accept(self, alpha: float, beta: float) -> None:
        """Move on to the next step with the final ``α_j, β_j`` (``β_j`` after any reorthogonalisation)."""
        j = self.j
        self.a[j], self.b[j] = alpha, beta
        self.prev, self.cur, self.next = self.cur, self.next, self.prev
        self.j = j + 1


_BITS = 2 ** torch.arange(8, dtype=torch.uint8)


def rademacher(n: int, dim: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(n, dim)`` matrix of independent ±1 entries from ``generator`` (eight signs per random byte)."""
    nbytes = -(-dim // 8)
    raw = torch.randint(0, 256, (n, nbytes), generator=generator, dtype=torch.uint8)
    bits = (raw.unsqueeze(-1) & _BITS).ne_(0).reshape(n, nbytes * 8)[:, :dim]
    return bits.to(dtype).mul_(2).sub_(1)


def hutchinson_trace(
    matvec: MatVec, dim: int, samples: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """``(estimate, standard error)`` of ``tr A`` from ``samples`` Rademacher quadratic forms ``vᵀ A v``."""
    samples = check_int("samples", samples, low=1, owner="hutchinson_trace")
    V = rademacher(samples, dim, generator=generator, dtype=dtype).to(device=device)
    quad = torch.stack([v @ matvec(v) for v in V]).double()
    err = float(quad.std() / math.sqrt(samples)) if samples > 1 else math.nan
    return float(quad.mean()), err


class CurvatureProbe(Probe):
    """Hessian spectrum edge, trace and sharpness of the batch loss (see module docstring).

    ``k``: top eigenvalues reported; ``lanczos_iters``: Krylov dimension (≥ k; more is more accurate);
    ``hutchinson_samples``: Rademacher draws for the trace (0 disables it); ``seed``: the private generator;
    ``reorth``: Lanczos reorthogonalisation, ``"partial"`` (default) or ``"full"``; ``params``: parameter
    names or module prefixes spanning the Hessian block measured (default: all trainable parameters);
    ``ggn``: the exact Gauss-Newton trace, ``True``/``False``, or ``None`` (default) for "when the loss is a
    function of at most ``ggn_max_outputs`` outputs per sample".
    """

    name = "curvature"
    state_attrs = ("_gen",)
    needs = frozenset({"hvp"})

    def __init__(
        self,
        every: int = 1,
        k: int = 3,
        lanczos_iters: int = 20,
        hutchinson_samples: int = 10,
        seed: int = 0,
        *,
        reorth: str = "partial",
        params: Sequence[str] | None = None,
        ggn: bool | None = None,
        ggn_max_outputs: int = 64,
    ) -> None:
        super().__init__(every)
        self.k = check_int("k", k, low=1, owner="CurvatureProbe")
        self.lanczos_iters = check_int("lanczos_iters", lanczos_iters, low=k, owner="CurvatureProbe")
        self.hutchinson_samples = check_int(
            "hutchinson_samples", hutchinson_samples, low=0, owner="CurvatureProbe"
        )
        self.seed = check_int("seed", seed, low=0, owner="CurvatureProbe")
        self.reorth = check_choice("reorth", reorth, REORTH, owner="CurvatureProbe")
        if isinstance(params, str):
            params = [params]
        if params is not None and not all(isinstance(n, str) for n in params):
            raise LearndynValueError(
                f"CurvatureProbe.params={params!r} is not allowed; allowed: parameter names or module "
                "prefixes"
            )
        self.params = None if params is None else list(params)
        self.ggn = check_choice("ggn", ggn, (None, True, False), owner="CurvatureProbe")
        self.ggn_max_outputs = check_int("ggn_max_outputs", ggn_max_outputs, low=1, owner="CurvatureProbe")
        self._capture: FactorCapture | None = None
        self._checked = False
        self._n_out: int | None = None
        self._workspace: dict[str, Tensor] = {}  # Lanczos' basis buffer, reused between measurements
        self.reset()

    def reset(self) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)

    def measure(self, ctx: ProbeContext) -> Measurement:
        names = None if self.params is None else resolve_params(ctx.model, self.params, "CurvatureProbe")
        hvp = shared_hvp(ctx, names)
        if hvp.dim == 0:
            return {}
        kw = {"generator": self._gen, "dtype": hvp.dtype, "device": hvp.device}
        ritz = lanczos(hvp, hvp.dim, self.lanczos_iters, reorth=self.reorth, workspace=self._workspace, **kw)
        top = ritz.flip(0)[: self.k]
        lam_max = float(top[0])
        out: dict[str, float | np.ndarray] = {
            "curvature/top_eigenvalues": top.numpy(),
            "curvature/lambda_max": lam_max,
            "curvature/lambda_min": float(ritz[0]),
        }
        if self._want_ggn(ctx):
            out.update(self._ggn(ctx, hvp))
        if "curvature/ggn_trace" in out and piecewise_linear(ctx.model):  # tr ∇²L = tr G exactly
            out["curvature/trace"] = out["curvature/ggn_trace"]
            out["curvature/trace_stderr"] = 0.0
        elif self.hutchinson_samples:
            tr, err = hutchinson_trace(hvp, hvp.dim, self.hutchinson_samples, **kw)
            out["curvature/trace"] = tr
            out["curvature/trace_stderr"] = err
        if ctx.lr is not None:
            out["curvature/sharpness"] = ctx.lr * lam_max
            out["curvature/stability_ratio"] = ctx.lr * lam_max / 2
        return out

    def wants_gradient_graph(self, ctx: ProbeContext) -> bool:
        """Whether this step's Hessian-vector product would differentiate a gradient graph (all parameters,
        and not an MLP that :mod:`learndyn.stats.mlp_hvp` handles without one): the Monitor then asks a
        gradient pass made anyway to keep its graph (:data:`~learndyn.probes.base.GRADIENT_GRAPH`)."""
        if self.params is not None:
            return False
        loss_fn = ctx.adapter.loss_fn if ctx.adapter.default_pair else None
        return not mlp_supported(ctx.model, loss_fn, ctx.inputs, ctx.targets)

    def _want_ggn(self, ctx: ProbeContext) -> bool:
        if self.ggn is not None:
            if self.ggn and not ctx.adapter.has_split:
                raise LearndynValueError(
                    "CurvatureProbe.ggn=True needs the loss as a function of the outputs; allowed: a Monitor "
                    "loss_fn, or BatchAdapter(loss_fn=...) / per_sample_loss=..."
                )
            return self.ggn
        if not ctx.adapter.has_split or _batch_coupled(ctx.model):
            return False
        if self._n_out is None:
            with torch.no_grad():
                self._n_out = int(ctx.adapter.outputs(ctx.model, ctx.batch)[0].numel())
        return self._n_out <= self.ggn_max_outputs

    def _ggn(self, ctx: ProbeContext, hvp: HessianVectorProduct) -> dict[str, float]:
        """``ggn_trace`` (over ``hvp.names``) and ``ggn_trace/<module>``, exact (module docstring)."""
        names = hvp.names
        if not self._checked:
            ctx.adapter.check_reduction(ctx.model, ctx.batch, owner="CurvatureProbe.ggn")
            self._checked = True
        if self._capture is None or self._capture.model is not ctx.model:
            self._capture = FactorCapture(ctx.model)
        traces = hvp.ggn_traces()  # an MLP's, from the factors of the HVP's forward pass
        if traces is not None:
            route = dict.fromkeys(traces, "mlp")
            got = GaussNewtonDiagonal({}, traces, sum(traces.values()), hvp.loss, route)
        else:
            got = ctx.cache.get("ggn_diagonal")  # a diagonal computed for another probe has the traces too
        if got is None:
            got = ctx.shared(
                "ggn_trace",
                lambda: gauss_newton_diagonal(
                    ctx.model, ctx.adapter, ctx.batch, capture=self._capture, diagonal=False
                ),
            )
        out = {"curvature/ggn_trace": sum(got.traces[n] for n in names)}
        modules: dict[str, float] = {}
        for n in names:
            mod = n.rpartition(".")[0] or n
            modules[mod] = modules.get(mod, 0.0) + got.traces[n]
        out.update({f"curvature/ggn_trace/{m}": v for m, v in modules.items()})
        return out

    def __repr__(self) -> str:
        return (
            f"CurvatureProbe(every={self.every}, k={self.k}, lanczos_iters={self.lanczos_iters}, "
            f"hutchinson_samples={self.hutchinson_samples}, reorth={self.reorth!r})"
        )


_PIECEWISE_LINEAR = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Identity,
)  # fmt: skip


def piecewise_linear(model: nn.Module) -> bool:
    """Whether ``model`` is provably linear in each single parameter with the others held fixed: an
    ``nn.Sequential`` (nested) of linear/convolutional layers, piecewise-linear activations, pooling,
    reshaping, and dropout or batch normalisation in eval mode. Then ``∂²f/∂θ_k² = 0`` and the Hessian's
    diagonal is the Gauss-Newton diagonal."""
    if isinstance(model, nn.Sequential):
        return all(piecewise_linear(m) for m in model)
    if isinstance(model, nn.modules.dropout._DropoutNd | nn.modules.batchnorm._BatchNorm):
        return not model.training
    return type(model) in _PIECEWISE_LINEAR


def _batch_coupled(model: nn.Module) -> bool:
    """Whether samples interact in the forward pass (batch normalisation in training mode)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
