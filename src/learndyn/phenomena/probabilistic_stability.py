r"""Probabilistic stability (``learndyn run probabilistic-stability``): SGD converges to saddles GD escapes.

Setting
-------
The two-layer scalar network ``f(x) = u w x`` on inputs ``x = 1`` with two equally likely labels
``y = μ ± σ`` (``mean`` ``μ``, ``noise`` ``σ``), per-sample loss ``½(u w x − y)²``, trained by SGD with
``batch`` samples per step drawn with replacement. ``u = w = 0`` is a saddle of the loss: the direction
``(1, 1)`` has mean curvature ``−μ < 0``, so gradient descent always escapes it.

Theory (:mod:`learndyn.theory.probabilistic_stability`)
-------------------------------------------------------
Linearised at the saddle, SGD multiplies the components along ``(1, ±1)/√2`` by ``1 ± η c̄_t`` (``c̄`` the
minibatch mean of ``c = x y``), so ``(1/T) log‖(u, w)_T‖ → Λ = max(Λ_+, Λ_−)`` with
``Λ_± = E log|1 ± η c̄|`` (Ziyin et al. 2023). ``Λ < 0``: the saddle is attractive (in probability);
``Λ > 0``: repulsive. The experiment maps ``Λ`` over the grid ``lrs × noises`` and contrasts it with the
second-moment rate ``Λ^{(2)} = max_± ½ log E(1 ± η c̄)²`` (which is ``> 0`` wherever the noise is large: the
variance diverges while almost every run converges).

Simulation
----------
For each grid point ``2 × chains`` independent runs of the *nonlinear* SGD update (autograd on the loss
above; each chain's loss is scaled by its own ``η`` and one unit step is taken, which is each chain's SGD
step) start at ``‖θ‖ = 10⁻³⁰``, where the dynamics is linear to relative ``10⁻⁶⁰``: ``chains`` on the line
``u = w`` and ``chains`` on ``u = −w``. Both lines are invariant under the exact SGD update of this model
(``u ↔ ±w`` symmetry), so each set measures one rate, ``Λ_sim± = mean over chains of log(‖θ_T‖/‖θ_0‖)/T``,
and ``Λ_sim = max(Λ_sim+, Λ_sim−)``. (Runs from a random direction measure the same limit, but at finite
``T`` the maximum of two noisy random walks with close drifts is biased: measured 6 standard errors at
``σ = 4.05, η = 0.26`` with ``T = 1100``.) Every ``RENORM_EVERY`` steps each chain is rescaled back to norm
``10⁻³⁰`` and the logarithm of the factor accumulated (the standard way to measure a Lyapunov exponent
without under/overflow; the update is homogeneous to that accuracy). **Agreement**: ``max |Λ_sim − Λ|``
over the grid (per step, absolute); tolerance ``tolerance``. The theory also gives each point's standard
error (``sd(log|1 ± ηc̄|)/√(T·chains)``): ``max_z`` in the summary is the largest ``|Λ_sim − Λ|/s.e.``.

Trajectories. At one attractive point (``example_lr``, ``example_noise``) full-batch GD and ``chains`` SGD
runs start from ``‖θ₀‖ = example_init`` (non-linear regime reached): GD escapes to the minimum
``uw = μ`` while SGD converges to the saddle. Logged: ``sim/norm/gd``, ``sim/norm/sgd`` (median over
chains), ``theory/norm/sgd`` (``‖θ₀‖ e^{Λ t}``, the linearised prediction) and the losses (SGD: median).
The SGD runs that leave the saddle (about 10% at the defaults) diverge: at this noise the minimum
``uw = μ`` is unstable for SGD too.

Logged arrays (step 0): ``sim/rate``, ``theory/rate``, ``theory/moment_rate`` (shape ``noises × lrs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from learndyn.config import check_run_fields
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.store.recorder import Recorder
from learndyn.theory.probabilistic_stability import (
    minibatch_curvatures,
    moment_rate,
    product_saddle_rates,
    two_point_products,
)
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

NAME = "probabilistic-stability"
DESCRIPTION = "SGD at a saddle: rate E log|1 − ηh| over (lr, noise); SGD converges to saddles GD escapes"

RENORM_EVERY = 10
"""Steps between rescalings of the chains back to norm ``START_NORM``."""
START_NORM = 1e-30
"""The chains' norm after each rescaling (the linear regime, to relative ``1e-60``)."""


@dataclass
class ProbabilisticStabilityConfig:
    """The grid, the data, and how long and how many chains to simulate.

    ``mean`` ``μ`` and the grid of ``noises`` ``σ``: the labels are ``μ ± σ``; ``lrs``: learning rates;
    ``batch``: samples per SGD step. ``chains``: runs per grid point and direction; ``steps``: SGD steps
    ``T``. ``example_lr``, ``example_noise``, ``example_init``, ``example_steps``: the GD vs
    SGD trajectories from ``‖θ₀‖ = example_init``. ``threads``: torch intra-op threads. ``tolerance``: the
    largest acceptable ``|Λ_sim − Λ|`` (per step).
    """

    mean: float = 1.0
    lrs: tuple[float, ...] = (0.05, 0.08, 0.12, 0.18, 0.26, 0.35, 0.45, 0.57, 0.7, 0.85)
    noises: tuple[float, ...] = (0.0, 0.7, 1.4, 2.1, 2.6, 3.1, 3.55, 4.05, 4.6, 5.3, 6.1)
    batch: int = 1
    chains: int = 200
    steps: int = 1200
    example_lr: float = 0.3
    example_noise: float = 3.5
    example_init: float = 0.05
    example_steps: int = 300
    seed: int = 0
    threads: int | None = 1
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        owner = "ProbabilisticStabilityConfig"
        self.mean = check_real("mean", self.mean, low=0.0, low_open=True, owner=owner)
        self.lrs = as_tuple("lrs", self.lrs, owner=owner, item=float, low=0.0, low_open=True)
        self.noises = as_tuple("noises", self.noises, owner=owner, item=float, low=0.0)
        for name in ("lrs", "noises"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise LearndynValueError(f"{owner}.{name}={values!r}; allowed: one or more distinct values")
        check_int("batch", self.batch, low=1, high=64, owner=owner)
        check_int("chains", self.chains, low=2, owner=owner)
        check_int("steps", self.steps, low=2, owner=owner)
        self.example_lr = check_real("example_lr", self.example_lr, low=0.0, low_open=True, owner=owner)
        self.example_noise = check_real("example_noise", self.example_noise, low=0.0, owner=owner)
        self.example_init = check_real("example_init", self.example_init, low=0.0, low_open=True, owner=owner)
        check_int("example_steps", self.example_steps, low=1, owner=owner)
        check_run_fields(self, owner)


QUICK = {
    "lrs": (0.05, 0.12, 0.26, 0.35, 0.57, 0.85),
    "noises": (0.0, 1.4, 2.6, 3.55, 4.6, 6.1),
    "chains": 200,
    "steps": 800,
    "example_steps": 200,
}
"""The test-size configuration (``--quick``)."""


@dataclass(frozen=True)
class Theory:
    """``Λ``, ``Λ^{(2)}`` and the predicted standard error of ``Λ_sim``, each ``(noises, lrs)``."""

    rate: np.ndarray
    moment_rate: np.ndarray
    stderr: np.ndarray


def theory_grid(config: ProbabilisticStabilityConfig) -> Theory:
    """The closed forms on the grid; ``stderr`` is that of the chains' mean along the larger rate."""
    shape = (len(config.noises), len(config.lrs))
    rate, moment, stderr = np.empty(shape), np.empty(shape), np.empty(shape)
    lrs = np.asarray(config.lrs)
    for i, noise in enumerate(config.noises):
        products = two_point_products(config.mean, noise)
        plus, minus = product_saddle_rates(lrs, products, config.batch)
        rate[i] = np.maximum(plus, minus)
        values, probs = minibatch_curvatures(products, config.batch)
        moment[i] = np.maximum(moment_rate(lrs, -values, probs), moment_rate(lrs, values, probs))
        sign = np.where(plus >= minus, 1.0, -1.0)
        with np.errstate(divide="ignore"):
            logs = np.log(np.abs(1.0 + sign[:, None] * lrs[:, None] * values[None]))
        var = np.sum(probs * logs**2, axis=1) - np.sum(probs * logs, axis=1) ** 2
        stderr[i] = np.sqrt(np.maximum(var, 0.0) / (config.steps * config.chains))
    return Theory(rate=rate, moment_rate=moment, stderr=stderr)


def _draw_products(
    products: torch.Tensor, shape: tuple[int, ...], batch: int, g: torch.Generator
) -> torch.Tensor:
    """Minibatch means of ``batch`` uniform draws (with replacement) from ``products``, of shape ``shape``."""
    idx = torch.randint(0, products.numel(), (*shape, batch), generator=g)
    return products[idx].mean(-1)


def _sgd_step(theta: torch.Tensor, lr: torch.Tensor, target: torch.Tensor) -> None:
    """One SGD step of ``½(u w − ȳ)²`` per chain (``theta[..., 0] = u``, ``theta[..., 1] = w``), by autograd:
    the gradient of ``Σ η ½(uw − ȳ)²`` in a chain is that chain's ``η ∇ℓ``."""
    theta.requires_grad_(True)
    loss = 0.5 * (lr * (theta[..., 0] * theta[..., 1] - target).square()).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    with torch.no_grad():
        theta.sub_(grad)
    theta.requires_grad_(False)


def simulate_rates(config: ProbabilisticStabilityConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(Λ_sim+, Λ_sim−)`` on the grid ``(noises, lrs)``: the chains' mean of ``log(‖θ_T‖/‖θ_0‖)/T`` for
    runs started on the invariant lines ``u = w`` and ``u = −w``."""
    g = torch.Generator().manual_seed(config.seed)
    shape = (2, len(config.noises), len(config.lrs), config.chains)
    signs = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    noise = torch.tensor(config.noises, dtype=torch.float64)[None, :, None, None]
    lr = torch.tensor(config.lrs, dtype=torch.float64)[None, None, :, None].expand(shape)
    # line 0: θ ∝ (1, 1); line 1: θ ∝ (1, −1) (each invariant under the SGD update of this model)
    theta = torch.zeros(*shape, 2, dtype=torch.float64)
    theta[..., 0] = START_NORM / math.sqrt(2.0)
    theta[..., 1] = START_NORM / math.sqrt(2.0)
    theta[1, ..., 1] *= -1.0
    log_scale = torch.zeros(shape, dtype=torch.float64)
    for step in range(1, config.steps + 1):
        target = config.mean + noise * _draw_products(signs, shape, config.batch, g)
        _sgd_step(theta, lr, target)
        if step % RENORM_EVERY == 0 or step == config.steps:
            norm = theta.norm(dim=-1)
            log_scale += torch.log(norm / START_NORM)
            theta *= (START_NORM / norm)[..., None]
    rates = (log_scale / config.steps).mean(-1).numpy()
    return rates[0], rates[1]


@dataclass(frozen=True)
class Trajectories:
    """GD and SGD from ``‖θ₀‖ = example_init``: steps, norms and losses (SGD: medians over chains, a
    diverged chain counting as ``inf``), GD's final ``uw``, and the fractions of SGD chains that end at the
    saddle (``‖θ‖ < 10⁻⁶``) and that diverged (non-finite or ``‖θ‖ > 10⁶``)."""

    steps: np.ndarray
    gd_norm: np.ndarray
    sgd_norm: np.ndarray
    gd_loss: np.ndarray
    sgd_loss: np.ndarray
    gd_product: float
    sgd_at_saddle: float
    sgd_diverged: float


def simulate_trajectories(config: ProbabilisticStabilityConfig) -> Trajectories:
    """Non-linear GD (full batch: target ``μ``) and SGD at ``(example_lr, example_noise)``; the loss is the
    full-data loss ``½(uw − μ)² + ½σ²``. An SGD run that leaves the saddle may diverge (the minimum
    ``uw = μ`` can itself be unstable for SGD at large noise)."""
    g = torch.Generator().manual_seed(config.seed + 1)
    chains = config.chains
    theta0 = torch.randn(chains, 2, generator=g, dtype=torch.float64)
    theta0 *= config.example_init / theta0.norm(dim=-1, keepdim=True)
    sgd, gd = theta0.clone(), theta0[:1].clone()
    lr = torch.full((chains,), config.example_lr, dtype=torch.float64)
    signs = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    mu, s2 = config.mean, config.example_noise**2

    def full_loss(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * (t[..., 0] * t[..., 1] - mu).square() + 0.5 * s2

    def finite(x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isfinite(x), x, torch.full_like(x, math.inf))

    rows = []
    for step in range(config.example_steps + 1):
        rows.append((step, float(gd.norm()), float(finite(sgd.norm(dim=-1)).median()),
                     float(full_loss(gd).mean()), float(finite(full_loss(sgd)).median())))
        if step == config.example_steps:
            break
        target = mu + config.example_noise * _draw_products(signs, (chains,), config.batch, g)
        _sgd_step(sgd, lr, target)
        _sgd_step(gd, lr[:1], torch.full((1,), mu, dtype=torch.float64))
    arr = np.array(rows)
    norm = finite(sgd.norm(dim=-1))
    return Trajectories(
        steps=arr[:, 0].astype(np.int64), gd_norm=arr[:, 1], sgd_norm=arr[:, 2], gd_loss=arr[:, 3],
        sgd_loss=arr[:, 4], gd_product=float(gd[0, 0] * gd[0, 1]),
        sgd_at_saddle=float((norm < 1e-6).double().mean()),
        sgd_diverged=float((norm > 1e6).double().mean()),
    )


def rate_agreement(sim: np.ndarray, theory: np.ndarray) -> float:
    """``max |Λ_sim − Λ|`` over the grid (``inf`` if either is not finite somewhere)."""
    diff = np.abs(np.asarray(sim) - np.asarray(theory))
    return float(diff.max()) if np.all(np.isfinite(diff)) else math.inf


@threaded
def run(config: ProbabilisticStabilityConfig, recorder: Recorder) -> ExperimentResult:
    """The phase diagram (simulated vs theoretical ``Λ``) and the GD vs SGD trajectories at one point."""
    theory = theory_grid(config)
    sim_plus, sim_minus = simulate_rates(config)
    sim = np.maximum(sim_plus, sim_minus)
    recorder.log_array(0, "sim/rate", sim)
    recorder.log_array(0, "theory/rate", theory.rate)
    recorder.log_array(0, "theory/moment_rate", theory.moment_rate)
    traj = simulate_trajectories(config)
    plus, minus = product_saddle_rates(
        config.example_lr, two_point_products(config.mean, config.example_noise), config.batch
    )
    example_rate = float(max(plus, minus))
    for k, step in enumerate(traj.steps):
        recorder.log(int(step), {
            "sim/norm/gd": traj.gd_norm[k],
            "sim/norm/sgd": traj.sgd_norm[k],
            "theory/norm/sgd": config.example_init * math.exp(example_rate * step),
            "sim/loss/gd": traj.gd_loss[k],
            "sim/loss/sgd_median": traj.sgd_loss[k],
        })
    recorder.flush()

    agreement = rate_agreement(sim, theory.rate)
    z = np.abs(sim - theory.rate) / np.maximum(theory.stderr, 1e-9)
    attractive_sim, attractive_theory = sim < 0, theory.rate < 0
    summary: dict[str, float] = {
        "max_abs_rate_error": agreement,
        "max_z": float(z.max()),
        "attractive_points_sim": float(attractive_sim.sum()),
        "attractive_points_theory": float(attractive_theory.sum()),
        "phase_mismatches": float((attractive_sim != attractive_theory).sum()),
        "attractive_with_divergent_variance": float((attractive_theory & (theory.moment_rate > 0)).sum()),
        "example/rate_theory": float(example_rate),
        "example/gd_final_product": traj.gd_product,
        "example/sgd_fraction_at_saddle": traj.sgd_at_saddle,
        "example/sgd_fraction_diverged": traj.sgd_diverged,
    }
    table = [
        {"lr": lr, "noise": noise, "rate_sim": float(sim[i, j]), "rate_theory": float(theory.rate[i, j]),
         "moment_rate": float(theory.moment_rate[i, j]),
         "phase": "attractive" if theory.rate[i, j] < 0 else "repulsive"}
        for i, noise in enumerate(config.noises) for j, lr in enumerate(config.lrs)
    ]
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


# --- report figures -----------------------------------------------------------------------------------


def _last_array(store: Any, run_id: str, name: str) -> np.ndarray | None:
    _, stack = store.array_stack(run_id, name)
    return stack[-1] if stack.size else None


def probabilistic_stability_figures(store: Any, run_id: str) -> list[Any]:
    """The phase diagram (theory heatmap, simulated signs as markers), ``Λ`` against ``η`` per noise level
    (theory lines, simulation markers, ``Λ^{(2)}`` dotted), and the GD vs SGD trajectories."""
    import plotly.graph_objects as go

    from learndyn.phenomena._figures import run_series

    config = store.run_info(run_id).get("config") or {}
    sim, theory = _last_array(store, run_id, "sim/rate"), _last_array(store, run_id, "theory/rate")
    moment = _last_array(store, run_id, "theory/moment_rate")
    lrs, noises = list(config.get("lrs") or []), list(config.get("noises") or [])
    figures = []
    if sim is not None and theory is not None and sim.shape == (len(noises), len(lrs)):
        # the theory on a fine grid (log-spaced η) as the background, the simulated signs as markers
        fine_lr = np.geomspace(min(lrs), max(lrs), 90)
        fine_noise = np.linspace(min(noises), max(noises), 90)
        fine = np.array([np.maximum(*product_saddle_rates(fine_lr, two_point_products(
            float(config.get("mean", 1.0)), float(s)), int(config.get("batch", 1)))) for s in fine_noise])
        heat = go.Figure(go.Heatmap(x=fine_lr, y=fine_noise, z=np.clip(fine, -0.5, 0.5), zmid=0, zmin=-0.5,
                                    zmax=0.5, colorscale="RdBu_r", colorbar={"title": "Λ theory"}))
        ii, jj = np.meshgrid(np.arange(len(noises)), np.arange(len(lrs)), indexing="ij")
        for mask, symbol, label in ((sim < 0, "circle-open", "simulation: attractive (Λ < 0)"),
                                    (sim >= 0, "x-thin-open", "simulation: repulsive (Λ ≥ 0)")):
            heat.add_trace(go.Scatter(x=[lrs[j] for j in jj[mask]], y=[noises[i] for i in ii[mask]],
                                      mode="markers", name=label,
                                      marker={"symbol": symbol, "color": "black", "size": 10,
                                              "line": {"width": 2, "color": "black"}}))
        heat.update_xaxes(type="log", title="learning rate η")
        heat.update_yaxes(title="label noise σ (labels μ ± σ)")
        heat.update_layout(title="Saddle of uw: Λ = max± E log|1 ± η c̄| (SGD attracted where Λ < 0)",
                           template="plotly_white", height=460, legend={"orientation": "h", "y": -0.2})
        figures.append(heat)
        lines = go.Figure()
        for i, noise in enumerate(noises):
            color = f"hsl({(i * 67) % 360},70%,45%)"
            lines.add_trace(go.Scatter(x=lrs, y=theory[i], mode="lines", line={"color": color},
                                       name=f"σ={noise:g} theory"))
            lines.add_trace(go.Scatter(x=lrs, y=sim[i], mode="markers", marker={"color": color},
                                       name=f"σ={noise:g} sim"))
            if moment is not None:
                lines.add_trace(go.Scatter(x=lrs, y=moment[i], mode="lines", name=f"σ={noise:g} Λ⁽²⁾",
                                           line={"color": color, "dash": "dot"}, visible="legendonly"))
        lines.add_hline(y=0.0, line={"color": "gray"})
        lines.update_xaxes(type="log", title="learning rate η")
        lines.update_yaxes(title="rate Λ per step")
        lines.update_layout(title="Lyapunov rate of SGD at the saddle: theory (lines), simulation (markers)",
                            template="plotly_white", height=460)
        figures.append(lines)
    series = run_series(store, run_id, ["sim/norm/*", "theory/norm/*"])
    if series:
        traj = go.Figure()
        for name, label, dash in (("sim/norm/gd", "GD", "solid"), ("sim/norm/sgd", "SGD (median)", "solid"),
                                  ("theory/norm/sgd", "‖θ₀‖e^{Λt} (theory)", "dash")):
            if name in series:
                x, y = series[name]
                traj.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, line={"dash": dash}))
        traj.update_xaxes(title="step")
        traj.update_yaxes(type="log", title="distance from the saddle ‖(u, w)‖")
        traj.update_layout(title="GD escapes the saddle, SGD converges to it", template="plotly_white",
                           height=420)
        figures.append(traj)
    return figures


EXPERIMENT = register(
    Experiment(NAME, DESCRIPTION, ProbabilisticStabilityConfig, run, QUICK,
               figures=(probabilistic_stability_figures,))
)
