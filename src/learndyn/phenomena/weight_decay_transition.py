r"""Weight decay in deep linear networks (``learndyn run weight-decay-transition``): a first-order transition.

Setting
-------
Depth-``L`` scalar linear networks ``f(x) = w_L ⋯ w_1 x`` trained by full-batch gradient descent on
``n_samples`` whitened inputs (``mean x² = 1`` exactly) with labels ``y = s x`` (``teacher`` ``s``), loss
``½ mean (f(x) − y)²`` plus weight decay ``(γ/2) Σ w_i²`` (autograd of the summed loss of all networks, a
plain gradient step). For each depth in ``depths`` and each ``γ = r·γ*(L)`` with ``r`` in ``ratios``
two networks are trained: from a *small* start ``w_i ≈ small_init · s^{1/L}`` and from a *large* one
``w_i ≈ large_init · s^{1/L}`` (each layer perturbed by a relative ``jitter``, so the starts are not exactly
balanced). All networks of one depth train together as one ``(ratios, 2, L)`` tensor, for ``steps`` steps
at ``lr``.

Theory (:mod:`learndyn.theory.weight_decay_transition`)
-------------------------------------------------------
The minima are balanced with product ``v`` minimising ``g(v) = ½(v − s)² + (γL/2) v^{2/L}``. ``L = 2``:
``v* = max(s − γ, 0)`` (continuous). ``L ≥ 3``: 0 is always a local minimum, the global minimum jumps from
``v_jump = s(L − 2)/(L − 1)`` to 0 at ``γ* = s/(L − 1) · v_jump^{1 − 2/L}``, and a metastable nonzero
minimum survives up to the spinodal ``γ_sp``. Gradient flow from a (nearly) balanced start ends at the
nonzero minimum ``v₊(γ)`` iff it starts above the barrier between the two (``L ≥ 3``) or ``γ < s``
(``L = 2``), else at 0: :func:`~learndyn.theory.weight_decay_transition.flow_limit_product`. So below ``γ*``
small starts
stay at 0 for ``L ≥ 3`` (unless ``γ`` is small enough for the data to win, ``φ(a₀) > γ``) while large
starts reach the global minimum; between ``γ*`` and ``γ_sp`` large starts are stuck in the metastable
minimum.

**Agreement**: ``max |v_sim − v_theory| / s`` over depths, ratios and starts, where ``v_theory`` is the flow
limit from the start's balanced mean; tolerance ``tolerance``. The summary also counts how often the
trained product matches the *global* minimum.

Logged: ``loss/L=<L>`` (training loss summed over the depth's networks), arrays
``sim/product/L=<L>`` and ``theory/product/L=<L>`` (shape ``2 × len(ratios)``: small, large start) and
``theory/global_product/L=<L>`` (``len(ratios)``), at the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learndyn.config import check_run_fields
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.store.recorder import Recorder
from learndyn.theory.weight_decay_transition import (
    critical_weight_decay,
    flow_limit_product,
    global_minimum_product,
    jump_product,
    nonzero_minimum,
    spinodal_weight_decay,
)
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

NAME = "weight-decay-transition"
DESCRIPTION = "Deep linear nets with weight decay: the minimum jumps to 0 at γ* for L ≥ 3 (L = 2: continuous)"
STARTS = ("small", "large")


@dataclass
class WeightDecayTransitionConfig:
    """The networks, the weight decays and the training.

    ``depths``: network depths ``L ≥ 2``; ``teacher``: ``s``; ``ratios``: weight decays in units of each
    depth's ``γ*``; ``small_init``, ``large_init``: starts in units of ``s^{1/L}`` (per layer);
    ``jitter``: relative per-layer perturbation of the starts; ``n_samples``: whitened inputs; ``lr``,
    ``steps``: full-batch GD; ``log_every``: loss logging interval. ``threads``: torch intra-op threads
    (``None``: leave torch's setting). ``tolerance``: the largest acceptable ``|v_sim − v_theory|/s``.
    """

    depths: tuple[int, ...] = (2, 3, 4)
    teacher: float = 1.0
    ratios: tuple[float, ...] = (0.2, 0.5, 0.8, 0.95, 1.05, 1.1, 1.6, 2.5)
    small_init: float = 0.05
    large_init: float = 1.2
    jitter: float = 0.05
    n_samples: int = 32
    lr: float = 0.05
    steps: int = 3000
    log_every: int = 100
    seed: int = 0
    threads: int | None = 1
    tolerance: float = 0.005

    def __post_init__(self) -> None:
        owner = "WeightDecayTransitionConfig"
        self.depths = as_tuple("depths", self.depths, owner=owner, item=int, low=2)
        self.ratios = as_tuple("ratios", self.ratios, owner=owner, item=float, low=0.0, low_open=True)
        for name in ("depths", "ratios"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise LearndynValueError(f"{owner}.{name}={values!r}; allowed: one or more distinct values")
        self.teacher = check_real("teacher", self.teacher, low=0.0, low_open=True, owner=owner)
        self.small_init = check_real("small_init", self.small_init, low=0.0, low_open=True, owner=owner)
        self.large_init = check_real("large_init", self.large_init, low=self.small_init, low_open=True,
                                     owner=owner)
        self.jitter = check_real("jitter", self.jitter, low=0.0, high=0.5, owner=owner)
        check_int("n_samples", self.n_samples, low=2, owner=owner)
        self.lr = check_real("lr", self.lr, low=0.0, low_open=True, owner=owner)
        check_int("steps", self.steps, low=1, owner=owner)
        check_int("log_every", self.log_every, low=1, owner=owner)
        check_run_fields(self, owner)


QUICK = {"depths": (2, 3), "ratios": (0.5, 0.95, 1.1, 1.6), "steps": 1500}
"""The test-size configuration (``--quick``)."""


def _starts(config: WeightDecayTransitionConfig, depth: int, g: torch.Generator) -> Tensor:
    scale = config.teacher ** (1.0 / depth)
    base = torch.tensor([config.small_init, config.large_init], dtype=torch.float64) * scale
    noise = 1.0 + config.jitter * (2 * torch.rand(len(config.ratios), 2, depth, generator=g,
                                                   dtype=torch.float64) - 1)
    return base[None, :, None] * noise


def whitened_inputs(n: int, g: torch.Generator) -> Tensor:
    """``n`` Gaussian inputs rescaled so that ``mean x² = 1`` exactly."""
    x = torch.randn(n, generator=g, dtype=torch.float64)
    return x / x.square().mean().sqrt()


@dataclass(frozen=True)
class DepthOutcome:
    depth: int
    gamma_star: float
    gammas: np.ndarray
    sim: np.ndarray  # (2, n_ratios)
    theory: np.ndarray  # (2, n_ratios) flow limits
    global_min: np.ndarray  # (n_ratios,)
    status: str


def theory_products(config: WeightDecayTransitionConfig, depth: int, starts: np.ndarray,
                    gammas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flow limits from each start's balanced mean ``a₀ = (Π|w_i|)^{1/L}`` (``(2, n)``) and global minima."""
    a0 = np.exp(np.log(np.abs(starts)).mean(-1))  # (n, 2)
    flow = np.array([[flow_limit_product(config.teacher, float(gam), depth, float(a0[j, k]))
                      for j, gam in enumerate(gammas)] for k in range(2)])
    best = np.array([global_minimum_product(config.teacher, float(gam), depth) for gam in gammas])
    return flow, best


def network_loss(weights: Tensor, x: Tensor, y: Tensor, gammas: Tensor) -> Tensor:
    """Summed over networks: ``½ mean_n (v x_n − y_n)² + (γ/2) Σ_i w_i²`` with ``v = Π_i w_i``.

    ``weights``: ``(n_decays, 2, L)``; ``gammas``: ``(n_decays,)``. Each network's weights enter only its own
    term, so the gradient in network ``(j, k)`` is that network's gradient.
    """
    v = weights.prod(dim=-1)  # (n_decays, 2)
    data = 0.5 * (v[..., None] * x - y).square().mean(-1)
    return (data + 0.5 * gammas[:, None] * weights.square().sum(-1)).sum()


def _train_depth(config: WeightDecayTransitionConfig, depth: int, recorder: Recorder) -> DepthOutcome:
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + depth)
    gamma_star = critical_weight_decay(config.teacher, depth)
    gammas = gamma_star * np.asarray(config.ratios)
    starts = _starts(config, depth, g)
    x = whitened_inputs(config.n_samples, g)
    y = config.teacher * x
    gam = torch.from_numpy(gammas)
    weights = starts.clone().requires_grad_(True)
    status = "completed"
    for step in range(config.steps + 1):
        loss = network_loss(weights, x, y, gam)
        if step % config.log_every == 0 or step == config.steps:
            recorder.log(step, {f"loss/L={depth}": float(loss.detach())})
        if not torch.isfinite(loss):
            status = "diverged"
            break
        if step == config.steps:
            break
        (grad,) = torch.autograd.grad(loss, weights)
        with torch.no_grad():
            weights -= config.lr * grad  # full-batch gradient descent
    sim = weights.detach().prod(dim=-1).numpy().T.copy()  # (2, n_ratios)
    flow, best = theory_products(config, depth, starts.numpy(), gammas)
    recorder.log_array(config.steps, f"sim/product/L={depth}", sim)
    recorder.log_array(config.steps, f"theory/product/L={depth}", flow)
    recorder.log_array(config.steps, f"theory/global_product/L={depth}", best)
    recorder.flush()
    return DepthOutcome(depth, gamma_star, gammas, sim, flow, best, status)


def product_agreement(sim: np.ndarray, theory: np.ndarray, teacher: float) -> float:
    """``max |v_sim − v_theory| / s`` (``inf`` where the simulation is not finite)."""
    diff = np.abs(np.asarray(sim) - np.asarray(theory)) / teacher
    return float(diff.max()) if np.all(np.isfinite(diff)) else math.inf


@threaded
def run(config: WeightDecayTransitionConfig, recorder: Recorder) -> ExperimentResult:
    """Train every depth's networks; compare their products with the theory's flow limits."""
    outcomes = [_train_depth(config, depth, recorder) for depth in config.depths]
    summary: dict[str, float] = {}
    table = []
    for o in outcomes:
        tag = f"L={o.depth}"
        summary[f"gamma_star/{tag}"] = o.gamma_star
        summary[f"gamma_spinodal/{tag}"] = spinodal_weight_decay(config.teacher, o.depth)
        summary[f"jump_product/{tag}"] = jump_product(config.teacher, o.depth)
        summary[f"max_error/{tag}"] = product_agreement(o.sim, o.theory, config.teacher)
        summary[f"global_matches/{tag}"] = float(np.sum(np.abs(o.sim - o.global_min[None]) / config.teacher
                                                        <= config.tolerance))
        for j, ratio in enumerate(config.ratios):
            for k, start in enumerate(STARTS):
                table.append({
                    "depth": o.depth, "gamma/gamma*": ratio, "gamma": float(o.gammas[j]), "start": start,
                    "product_sim": float(o.sim[k, j]), "product_theory": float(o.theory[k, j]),
                    "global_min": float(o.global_min[j]), "status": o.status,
                })
    errors = [summary[f"max_error/L={o.depth}"] for o in outcomes]
    agreement = max(errors) if all(o.status == "completed" for o in outcomes) else math.inf
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


# --- report figure ------------------------------------------------------------------------------------


def weight_decay_figures(store: Any, run_id: str) -> list[Any]:
    """``v/s`` against ``γ/γ*`` per depth: global minimum (solid), metastable branch (dotted), trained
    networks from small (open) and large (filled) starts."""
    import plotly.graph_objects as go

    info = store.run_info(run_id)
    config = info.get("config") or {}
    teacher = float(config.get("teacher", 1.0))
    ratios = np.asarray(config.get("ratios") or [], dtype=float)
    names = set(store.array_names(run_id)["name"]) if len(ratios) else set()
    fig = go.Figure()
    for i, depth in enumerate(config.get("depths") or []):
        name = f"sim/product/L={depth}"
        if name not in names:
            continue
        color = f"hsl({(i * 97) % 360},70%,45%)"
        gamma_star = critical_weight_decay(teacher, depth)
        fine = np.linspace(0.0, max(ratios.max(), 1.0) * 1.05, 161)[1:]
        best = [global_minimum_product(teacher, r * gamma_star, depth) / teacher for r in fine]
        meta = [nonzero_minimum(teacher, r * gamma_star, depth) for r in fine]
        meta_y = [m / teacher if m is not None and r >= 1.0 else None
                  for m, r in zip(meta, fine, strict=True)]
        xs: list[float | None] = []
        ys: list[float | None] = []
        for r, v in zip(fine, best, strict=True):
            if ys and ys[-1] is not None and abs(v - ys[-1]) > 0.05:
                xs.append(None)  # break the line at the jump
                ys.append(None)
            xs.append(float(r))
            ys.append(float(v))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": color},
                                 name=f"L={depth}: global minimum"))
        if depth >= 3:  # L = 2 has no metastable branch
            fig.add_trace(go.Scatter(x=fine, y=meta_y, mode="lines", line={"color": color, "dash": "dot"},
                                     name=f"L={depth}: metastable minimum"))
        _, sim = store.array_stack(run_id, name)
        sim = sim[-1]
        for k, (start, symbol) in enumerate((("small", "circle-open"), ("large", "circle"))):
            fig.add_trace(go.Scatter(
                x=ratios, y=sim[k] / teacher, mode="markers", name=f"L={depth}: {start} init",
                marker={"color": color, "symbol": symbol, "size": 9 if k == 0 else 6},
            ))
    fig.update_xaxes(title="weight decay γ / γ*(L)")
    fig.update_yaxes(title="trained product v / s (v = w_L⋯w_1)")
    fig.update_layout(title="Weight decay: v jumps to 0 at γ* for L ≥ 3, soft thresholding at L = 2",
                      template="plotly_white", height=460)
    return [fig] if fig.data else []


EXPERIMENT = register(
    Experiment(NAME, DESCRIPTION, WeightDecayTransitionConfig, run, QUICK, figures=(weight_decay_figures,))
)
