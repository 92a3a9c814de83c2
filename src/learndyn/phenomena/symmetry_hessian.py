r"""Symmetry → Hessian (``learndyn run symmetry-hessian``): the second-order Noether identity on two models.

Setting
-------
Two classifiers trained with cross-entropy on the same kind of data (``n_samples`` points of ``classes``
overlapping Gaussian clusters, cluster noise ``noise``, so no class is linearly separable), in float64:

* ``mlp``: ``Linear(inputs, hidden) → ReLU → Linear(hidden, classes)``: a rescaling symmetry per hidden unit
  and the translation symmetry of the softmax logits (``hidden + 1`` generators), trained by full-batch GD
  (``mlp_lr``) and measured at the steps ``mlp_points``;
* ``softmax``: a single ``Linear(softmax_inputs, classes)`` layer (``softmax_inputs + 1`` translation
  generators), measured at its initialisation and at its minimum (damped Newton, the loss is convex).

Theory (:mod:`learndyn.theory.symmetry_hessian`)
------------------------------------------------
For a generator ``ξ(θ) = Aθ + u`` of a symmetry of the loss: ``Hξ = −Aᵀ∇L`` and ``ξᵀHξ = −(Aξ)·∇L``
(issue 15's ``dᵀHd = −(A²θ)·∇L`` with ``d = Aθ``). The probe
(:mod:`learndyn.probes.symmetry_hessian`) evaluates both sides with exact Hessian-vector products.

**Agreement**: the largest relative residual of the two identities over models, measurement points and
generators (``tolerance``, float64 rounding is ~1e-15). The summary also has, at each model's last point, the
number of near-zero Hessian eigenvalues (``|λ| ≤ rtol·max|λ|``), the rank of the symmetry directions and how
many of the near-zero directions they explain, and the largest ``|ξᵀHξ|/(s‖ξ‖²)`` of the rescaling
directions with the gradient norm (both → 0 towards a minimum).

Logged: arrays ``sim/curvature/<model>`` (``ξᵀHξ``), ``theory/curvature/<model>`` (``−(Aξ)·∇L``),
``sim/curvature_scale/<model>`` (``s‖ξ‖²``), ``sim/hessian_eigenvalues/<model>`` (at each point); scalars
``grad_norm/<model>`` and ``sim/rescale_curvature/mlp`` per point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learndyn.config import check_run_fields
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.probes.base import ProbeContext
from learndyn.probes.symmetry import detect_symmetries
from learndyn.probes.symmetry_hessian import full_hessian, generator_terms, symmetry_generators
from learndyn.store.recorder import Recorder
from learndyn.theory.symmetry_hessian import explained_zero_modes, noether_scalar_residual
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

NAME = "symmetry-hessian"
DESCRIPTION = "Symmetry → Hessian: Hξ = −Aᵀ∇L on a ReLU MLP and a softmax layer; zero modes at minima"
MODELS = ("mlp", "softmax")


@dataclass
class SymmetryHessianConfig:
    """The data, the two models and where they are measured.

    ``n_samples`` points in ``classes`` Gaussian clusters (means ``N(0, I)``, spread ``noise``); the MLP has
    ``inputs`` inputs and ``hidden`` ReLU units, trained by GD at ``mlp_lr`` and measured at the steps
    ``mlp_points``; the softmax layer has ``softmax_inputs`` inputs and is measured at init and after
    ``newton_iters`` damped Newton steps. ``rtol``: zero-mode threshold relative to ``max|λ|``.
    ``threads``: torch intra-op threads. ``tolerance``: the largest acceptable identity residual.
    """

    n_samples: int = 200
    classes: int = 3
    noise: float = 3.0
    inputs: int = 3
    hidden: int = 6
    mlp_lr: float = 0.3
    mlp_points: tuple[int, ...] = (0, 10, 30, 100, 300)
    softmax_inputs: int = 4
    newton_iters: int = 12
    rtol: float = 1e-6
    seed: int = 0
    threads: int | None = 1
    tolerance: float = 1e-9

    def __post_init__(self) -> None:
        owner = "SymmetryHessianConfig"
        check_int("n_samples", self.n_samples, low=2, owner=owner)
        check_int("classes", self.classes, low=2, owner=owner)
        self.noise = check_real("noise", self.noise, low=0.0, low_open=True, owner=owner)
        check_int("inputs", self.inputs, low=1, owner=owner)
        check_int("hidden", self.hidden, low=1, owner=owner)
        self.mlp_lr = check_real("mlp_lr", self.mlp_lr, low=0.0, low_open=True, owner=owner)
        self.mlp_points = as_tuple("mlp_points", self.mlp_points, owner=owner, item=int, low=0)
        if not self.mlp_points or list(self.mlp_points) != sorted(set(self.mlp_points)):
            raise LearndynValueError(f"{owner}.mlp_points={self.mlp_points!r}; allowed: increasing steps")
        check_int("softmax_inputs", self.softmax_inputs, low=1, owner=owner)
        check_int("newton_iters", self.newton_iters, low=0, owner=owner)
        self.rtol = check_real("rtol", self.rtol, low=0.0, low_open=True, owner=owner)
        check_run_fields(self, owner)


QUICK = {"n_samples": 120, "mlp_points": (0, 100), "newton_iters": 10}
"""The test-size configuration (``--quick``)."""


def make_data(
    config: SymmetryHessianConfig, dim: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_samples`` points: labels uniform, inputs ``mean[label] + noise·N(0, I)``."""
    y = torch.randint(0, config.classes, (config.n_samples,), generator=g)
    means = torch.randn(config.classes, dim, generator=g, dtype=torch.float64)
    return means[y] + config.noise * torch.randn(config.n_samples, dim, generator=g, dtype=torch.float64), y


@dataclass(frozen=True)
class Point:
    """One measurement: the generator terms and the zero-mode counts."""

    model: str
    step: int
    curvature: np.ndarray
    predicted: np.ndarray
    scale: np.ndarray
    residual: float
    scalar_residual: float
    rescale_curvature: float
    grad_norm: float
    eigenvalues: np.ndarray
    counts: dict[str, int]


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, step: int, rtol: float) -> Point:
    """Both sides of the identities for every generator of the symmetries detected on ``model``."""
    ctx = ProbeContext(model, F.cross_entropy, x, y, step=step)
    syms = detect_symmetries(model, softmax_output=True)
    gens = [gen for s in syms for gen in symmetry_generators(model, s)]
    terms = generator_terms(ctx, gens, seed=step)
    H = full_hessian(ctx)
    scalar = noether_scalar_residual(terms.curvature, terms.predicted, terms.scale)
    rescale = [k for k, gen in enumerate(gens) if gen.sym.kind == "rescale"]
    rc = float(np.max(np.abs(terms.curvature[rescale]) / terms.scale[rescale])) if rescale else 0.0
    return Point(
        model=name, step=step, curvature=terms.curvature, predicted=terms.predicted, scale=terms.scale,
        residual=float(terms.residual.max()), scalar_residual=float(scalar.max()), rescale_curvature=rc,
        grad_norm=terms.grad_norm, eigenvalues=np.linalg.eigvalsh(H),
        counts=explained_zero_modes(H, terms.directions, rtol=rtol),
    )


def _flat_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    return torch.cat([t.reshape(-1) for t in grads])


def newton_minimise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int) -> None:
    """Damped Newton steps ``θ ← θ − (H + μI)⁻¹∇L`` (``μ`` adapted so the loss never rises) on the
    cross-entropy of ``model``, in place (``H`` from :func:`full_hessian`)."""
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    mu = 1e-2

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    def assign(v: torch.Tensor) -> None:
        with torch.no_grad():
            for p, t in zip(params, v.split(sizes), strict=True):
                p.copy_(t.reshape(p.shape))

    for _ in range(iters):
        g = _flat_grad(model, x, y)
        if float(g.norm()) < 1e-14:
            break
        H = torch.from_numpy(full_hessian(ProbeContext(model, F.cross_entropy, x, y, step=0)))
        theta = torch.cat([p.detach().reshape(-1) for p in params])
        before = loss()
        while mu < 1e12:
            assign(theta - torch.linalg.solve(H + mu * torch.eye(theta.numel(), dtype=H.dtype), g))
            if loss() <= before:
                mu = max(mu / 3.0, 1e-12)
                break
            mu *= 4.0
        else:
            assign(theta)
            break


@threaded
def run(config: SymmetryHessianConfig, recorder: Recorder) -> ExperimentResult:
    """Measure both identities on the MLP along GD and on the softmax layer at init and at its minimum."""
    g = torch.Generator().manual_seed(config.seed)
    points: list[Point] = []
    x, y = make_data(config, config.inputs, g)
    torch.manual_seed(config.seed)
    mlp = nn.Sequential(nn.Linear(config.inputs, config.hidden), nn.ReLU(),
                        nn.Linear(config.hidden, config.classes)).double()
    for step in range(config.mlp_points[-1] + 1):
        if step in config.mlp_points:
            points.append(measure(mlp, x, y, "mlp", step, config.rtol))
        grads = torch.autograd.grad(F.cross_entropy(mlp(x), y), list(mlp.parameters()))
        with torch.no_grad():  # full-batch gradient descent
            for p, grad in zip(mlp.parameters(), grads, strict=True):
                p -= config.mlp_lr * grad
    xs, ys = make_data(config, config.softmax_inputs, g)
    layer = nn.Sequential(nn.Linear(config.softmax_inputs, config.classes)).double()
    points.append(measure(layer, xs, ys, "softmax", 0, config.rtol))
    newton_minimise(layer, xs, ys, config.newton_iters)
    points.append(measure(layer, xs, ys, "softmax", max(config.newton_iters, 1), config.rtol))

    for p in points:
        recorder.log_array(p.step, f"sim/curvature/{p.model}", p.curvature)
        recorder.log_array(p.step, f"theory/curvature/{p.model}", p.predicted)
        recorder.log_array(p.step, f"sim/curvature_scale/{p.model}", p.scale)
        recorder.log_array(p.step, f"sim/hessian_eigenvalues/{p.model}", p.eigenvalues)
        recorder.log(p.step, {f"grad_norm/{p.model}": p.grad_norm})
        if p.model == "mlp":
            recorder.log(p.step, {"sim/rescale_curvature/mlp": p.rescale_curvature})
    recorder.flush()

    summary: dict[str, float] = {}
    table = []
    for p in points:
        table.append({"model": p.model, "step": p.step, "generators": len(p.curvature),
                      "residual": p.residual, "scalar_residual": p.scalar_residual, "grad_norm": p.grad_norm,
                      "rescale_curvature": p.rescale_curvature, **p.counts})
    for name in MODELS:
        last = [p for p in points if p.model == name][-1]
        summary[f"{name}/max_residual"] = max(max(p.residual, p.scalar_residual) for p in points
                                              if p.model == name)
        summary[f"{name}/grad_norm"] = last.grad_norm
        for key, value in last.counts.items():
            summary[f"{name}/{key}"] = float(value)
    summary["mlp/rescale_curvature"] = [p for p in points if p.model == "mlp"][-1].rescale_curvature
    agreement = max(summary[f"{m}/max_residual"] for m in MODELS)
    if not math.isfinite(agreement):
        agreement = math.inf
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


# --- report figures -----------------------------------------------------------------------------------


def symmetry_hessian_figures(store: Any, run_id: str) -> list[Any]:
    """Measured ``ξᵀHξ`` against the prediction ``−(Aξ)·∇L`` for every generator and point (on the diagonal),
    and the Hessian spectra ``|λ|`` at each model's last point with the zero-mode threshold."""
    import plotly.graph_objects as go

    names = set(store.array_names(run_id)["name"])
    config = store.run_info(run_id).get("config") or {}
    scatter, spectrum = go.Figure(), go.Figure()
    lo, hi = 0.0, 0.0
    for i, model in enumerate(MODELS):
        if f"sim/curvature/{model}" not in names:
            continue
        steps, sim = store.array_stack(run_id, f"sim/curvature/{model}")
        _, theory = store.array_stack(run_id, f"theory/curvature/{model}")
        for k, step in enumerate(steps):
            scatter.add_trace(go.Scatter(x=theory[k], y=sim[k], mode="markers", name=f"{model}, step {step}",
                                         marker={"symbol": ("circle", "square")[i], "size": 8}))
            lo, hi = min(lo, float(np.nanmin(theory[k]))), max(hi, float(np.nanmax(theory[k])))
        _, eig = store.array_stack(run_id, f"sim/hessian_eigenvalues/{model}")
        mags = np.sort(np.abs(eig[-1]))
        spectrum.add_trace(go.Scatter(x=np.arange(1, mags.size + 1), y=np.maximum(mags, 1e-300),
                                      mode="markers+lines", name=f"{model} (step {steps[-1]})"))
        spectrum.add_hline(y=float(config.get("rtol", 1e-6)) * mags[-1], line={"dash": "dot"})
    if not scatter.data:
        return []
    scatter.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dash", "color": "gray"},
                                 name="ξᵀHξ = −(Aξ)·∇L"))
    scatter.update_xaxes(title="prediction −(Aξ)·∇L")
    scatter.update_yaxes(title="measured ξᵀHξ (Hessian-vector product)")
    scatter.update_layout(title="Second-order Noether identity: one marker per symmetry generator",
                          template="plotly_white", height=440)
    spectrum.update_xaxes(title="eigenvalue index (sorted by |λ|)")
    spectrum.update_yaxes(type="log", title="|λ| of the loss Hessian")
    spectrum.update_layout(title="Hessian spectrum, last point (dotted: zero-mode threshold rtol·max|λ|)",
                           template="plotly_white", height=440)
    return [scatter, spectrum]


EXPERIMENT = register(
    Experiment(NAME, DESCRIPTION, SymmetryHessianConfig, run, QUICK, figures=(symmetry_hessian_figures,))
)
