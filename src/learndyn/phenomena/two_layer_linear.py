r"""Exact finite-width dynamics of a one-hidden-layer linear network (``learndyn run two-layer-linear``).

Setting
-------
``f(x) = aᵀ W x`` (width ``h``, ``W ∈ R^{h×d}``) trained by full-batch gradient descent with step ``lr``
on ``L = 1/(2n) Σ_μ (f(x_μ) − β*ᵀx_μ)²`` with exactly whitened inputs (``XᵀX/n = I``), ``‖β*‖ = s``. Every
network of the experiment is one member of a batched model (zero-padded to the largest width: padded units
get zero gradient and stay zero, so each member is exactly its own width-``h`` network) trained by
:func:`~learndyn.training.train_loop` with ``torch.optim.SGD``; gradients come from autograd on the data.

Theory (:mod:`learndyn.theory.two_layer_linear`)
------------------------------------------------
The imbalance ``Δ = WWᵀ − aaᵀ`` is conserved by gradient flow, and the end-to-end map ``β = Wᵀa`` moves with
the kernel ``K = ‖a‖² I + WᵀW``; ``(A, S, β) = (‖a‖², WᵀW, β)`` obey the closed ODE

    dA/dt = −2βᵀg,   dS/dt = −(gβᵀ + βgᵀ),   dβ/dt = −(A I + S) g,    g = β − β*,

at every width (``h`` enters only through the initial state). Two families of networks are trained:

* *aligned* (rank-one) networks ``a = α r``, ``W = ω r êᵀ`` with ``αω = u₀`` and ``α² − ω² = λ``, one per
  ``aligned_imbalances``: ``β = u ê`` follows the closed form ``du/dt = √(λ² + 4u²)(s − u)`` (Kunin et al.
  2024), Saxe's sigmoid at ``λ = 0`` (rich) and the linearised model's exponential at ``|λ| ≫ s`` (lazy);
* *random* networks, one per (width, imbalance) in ``widths × imbalances``: ``a`` and ``W`` in uniformly
  random directions with ``‖a‖ ‖W‖_F = init_scale`` and ``‖a‖² − ‖W‖_F² = λ``, compared with the reduced ODE
  integrated from their own ``(A₀, S₀, β₀)``.

Agreement: the largest over networks and recorded steps of ``‖β_GD(k) − β_theory(lr·k)‖/s`` (for the aligned
networks ``β_theory = u(t) ê``). GD differs from gradient flow at first order in ``lr`` (measured at the
default size: 1.4e−3 worst, aligned at ``λ = 8``; quick size, ``lr = 3e−3``: 1.65e−3, random, width 1,
``λ = 0``) and the tolerance (3e−3) is below what a 2% error in the imbalance (aligned networks: 5.9e−3 at
the quick size) or in ``‖a₀‖²`` (random networks: 9.7e−3) produces.

Also reported per network: the kernel's growth ``‖K_T‖_F/‖K_0‖_F`` (aligned: ``K_ê(T)/K_ê(0)``), simulated
and predicted (≈ 1 lazy, ≫ 1 rich), the largest distance of the trajectory from the linearised (NTK)
model ``β* + e^{−K₀t}(β₀ − β*)`` and the drift of ``λ`` (``O(lr)`` under GD). Logged: ``sim/u_lam=<λ>`` and
``theory/u_lam=<λ>`` (aligned), ``sim/err_h=<h>_lam=<λ>``, ``theory/err_h=<h>_lam=<λ>`` (``‖β − β*‖/s``) and
``lazy/err_h=<h>_lam=<λ>`` (the linearised model's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learndyn.config import check_run_fields
from learndyn.phenomena._figures import mode_color, run_series
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.store.recorder import Recorder
from learndyn.theory.two_layer_linear import (
    aligned_kernel,
    aligned_strength,
    lazy_prediction,
    lazy_rich_ratio,
    rank_one_init,
    reduced_flow,
    reduced_state,
)
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

NAME = "two-layer-linear"
DESCRIPTION = "Finite-width 2-layer linear nets: exact reduced ODE; imbalance moves rich (Saxe) to lazy (NTK)"


@dataclass
class TwoLayerLinearConfig:
    """The networks to train and the schedule.

    ``dim``: input dimension ``d``; ``n_samples``: training points (``>= dim``, whitened exactly);
    ``target_norm``: ``s = ‖β*‖``. ``widths`` × ``imbalances``: the random networks (``λ = ‖a‖² − ‖W‖_F²``);
    ``init_scale``: ``‖a₀‖ ‖W₀‖_F`` of the random networks and ``u₀`` of the aligned ones (``< s``);
    ``aligned_imbalances``: the aligned (rank-one) networks' ``λ``, trained at width ``max(widths)``.
    ``lr``: the GD step; ``t_end``: gradient-flow time trained (``round(t_end/lr)`` steps); ``eval_every``:
    steps between records. ``tolerance``: the largest acceptable ``max ‖β_GD − β_theory‖/s``.
    """

    dim: int = 4
    n_samples: int = 16
    target_norm: float = 1.0
    widths: tuple[int, ...] = (1, 4, 32, 256)
    imbalances: tuple[float, ...] = (-2.0, 0.0, 2.0)
    aligned_imbalances: tuple[float, ...] = (0.0, 0.5, 2.0, 8.0)
    init_scale: float = 0.01
    lr: float = 1e-3
    t_end: float = 6.0
    eval_every: int = 50
    seed: int = 0
    checkpoint_every: int | None = None
    threads: int | None = 1
    tolerance: float = 3e-3

    def __post_init__(self) -> None:
        owner = "TwoLayerLinearConfig"
        check_int("dim", self.dim, low=1, owner=owner)
        check_int("n_samples", self.n_samples, low=self.dim, owner=owner)
        self.target_norm = check_real("target_norm", self.target_norm, low=0.0, low_open=True, owner=owner)
        self.widths = as_tuple("widths", self.widths, owner=owner, item=int, low=1)
        self.imbalances = as_tuple("imbalances", self.imbalances, owner=owner, item=float)
        self.aligned_imbalances = as_tuple("aligned_imbalances", self.aligned_imbalances, owner=owner,
                                           item=float)
        if not self.widths or not (self.imbalances or self.aligned_imbalances):
            raise LearndynValueError(
                f"{owner} has no network to train; allowed: widths and at least one of imbalances, "
                "aligned_imbalances non-empty"
            )
        self.init_scale = check_real("init_scale", self.init_scale, low=0.0, low_open=True, owner=owner)
        if self.init_scale >= self.target_norm:
            raise LearndynValueError(
                f"{owner}.init_scale={self.init_scale!r} is out of range; allowed: 0 < init_scale < "
                f"target_norm = {self.target_norm:g}"
            )
        self.lr = check_real("lr", self.lr, low=0.0, high=0.1, low_open=True, owner=owner)
        self.t_end = check_real("t_end", self.t_end, low=0.0, low_open=True, owner=owner)
        check_int("eval_every", self.eval_every, low=1, owner=owner)
        check_run_fields(self, owner)

    def steps(self) -> int:
        """Number of GD steps, ``round(t_end / lr)``."""
        return max(1, int(round(self.t_end / self.lr)))


QUICK = {
    "widths": (1, 4, 64), "aligned_imbalances": (0.0, 0.5, 2.0), "lr": 3e-3, "t_end": 5.0, "eval_every": 20
}
"""The test-size configuration (``--quick``)."""


# --- the networks --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """One network: ``kind`` (``aligned`` or ``random``), its width, imbalance and initial weights."""

    kind: str
    width: int
    lam: float
    a0: np.ndarray
    W0: np.ndarray

    @property
    def label(self) -> str:
        return f"u_lam={self.lam:g}" if self.kind == "aligned" else f"err_h={self.width}_lam={self.lam:g}"


def make_problem(config: TwoLayerLinearConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whitened inputs ``X`` (``n × d``, ``XᵀX/n = I`` exactly), targets ``y = Xβ*`` and ``β*`` (norm
    ``s``)."""
    rng = np.random.default_rng([config.seed, 11])
    q, r = np.linalg.qr(rng.standard_normal((config.n_samples, config.dim)))
    X = math.sqrt(config.n_samples) * q * np.sign(np.diag(r))
    direction = rng.standard_normal(config.dim)
    target = config.target_norm * direction / np.linalg.norm(direction)
    return X, X @ target, target


def random_init(width: int, dim: int, scale: float, lam: float, rng: np.random.Generator) -> tuple[
    np.ndarray, np.ndarray
]:
    """``a = √A₀ r``, ``W = √B₀ Z/‖Z‖_F`` (``r``, ``Z`` Gaussian directions) with ``A₀ B₀ = scale²`` and
    ``A₀ − B₀ = lam``: ``A₀ = (lam + √(lam² + 4 scale²))/2``."""
    A0 = 0.5 * (lam + math.sqrt(lam**2 + 4.0 * scale**2))
    B0 = max(A0 - lam, 0.0)
    r = rng.standard_normal(width)
    Z = rng.standard_normal((width, dim))
    return math.sqrt(A0) * r / np.linalg.norm(r), math.sqrt(B0) * Z / np.linalg.norm(Z)


def make_members(config: TwoLayerLinearConfig, target: np.ndarray) -> list[Member]:
    """The aligned networks (width ``max(widths)``), then the random ones in ``widths × imbalances`` order."""
    rng = np.random.default_rng([config.seed, 12])
    members = []
    width = max(config.widths)
    for k, lam in enumerate(config.aligned_imbalances):
        a, W = rank_one_init(width, config.dim, config.init_scale, lam, target, seed=config.seed * 1009 + k)
        members.append(Member("aligned", width, lam, a, W))
    for h in config.widths:
        for lam in config.imbalances:
            a, W = random_init(h, config.dim, config.init_scale, lam, rng)
            members.append(Member("random", h, lam, a, W))
    return members


class Networks(nn.Module):
    """``B`` networks ``f_b(x) = a_bᵀ W_b x`` zero-padded to one width (float64); ``forward(X) -> (B, n)``.

    Buffers ``beta`` and ``kernel`` hold each record's ``β_b`` and ``K_b = ‖a_b‖² I + W_bᵀW_b`` so that a
    checkpoint carries the record (exact resume).
    """

    def __init__(self, members: list[Member], records: int) -> None:
        super().__init__()
        B, H, d = len(members), max(m.width for m in members), members[0].W0.shape[1]
        a, W = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, d, dtype=torch.float64)
        for b, m in enumerate(members):
            a[b, : m.width] = torch.from_numpy(m.a0)
            W[b, : m.width] = torch.from_numpy(m.W0)
        self.a, self.W = nn.Parameter(a), nn.Parameter(W)
        self.register_buffer("beta", torch.full((records, B, d), math.nan, dtype=torch.float64))
        self.register_buffer("kernel", torch.full((records, B, d, d), math.nan, dtype=torch.float64))
        self.register_buffer("lam", torch.full((records, B), math.nan, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        beta = torch.einsum("bhd,bh->bd", self.W, self.a)
        return beta @ x.T

    def record(self) -> None:
        r = int(self.count)
        self.beta[r] = torch.einsum("bhd,bh->bd", self.W, self.a)
        eye = torch.eye(self.W.shape[-1], dtype=torch.float64)
        A = self.a.square().sum(1)
        self.kernel[r] = A[:, None, None] * eye + self.W.transpose(1, 2) @ self.W
        self.lam[r] = A - self.W.square().sum((1, 2))
        self.count += 1


def _summed_loss(out: Tensor, y: Tensor) -> Tensor:
    """Σ_b 1/(2n) Σ_μ (f_b(x_μ) − y_μ)²: member ``b``'s gradient is its own network's."""
    return 0.5 * (out - y).square().sum() / out.shape[1]


def record_steps(steps: int, eval_every: int) -> np.ndarray:
    """Where ``train_loop`` evaluates: multiples of ``eval_every`` below ``steps``, then ``steps``."""
    return np.array([*range(0, steps, eval_every), steps], dtype=np.int64)


@dataclass
class Simulation:
    """What GD produced: the record ``steps``, ``beta (R, B, d)``, ``kernel (R, B, d, d)``, the imbalance
    ``lam (R, B)`` and the loop's status."""

    steps: np.ndarray
    beta: np.ndarray
    kernel: np.ndarray
    lam: np.ndarray
    status: str


def simulate(config: TwoLayerLinearConfig, members: list[Member], X: np.ndarray, y: np.ndarray,
             recorder: Recorder | None) -> Simulation:
    """Train every member by full-batch GD (one batched model) and return its records."""
    steps = config.steps()
    grid = record_steps(steps, config.eval_every)
    model = Networks(members, len(grid))
    x_t, y_t = torch.from_numpy(X), torch.from_numpy(y)

    def evaluate(m: nn.Module) -> dict[str, float]:
        m.record()
        return {}

    result = train_loop(
        model,
        torch.optim.SGD(model.parameters(), lr=config.lr),
        lambda _g: (x_t, y_t),
        _summed_loss,
        steps,
        generator=torch.Generator().manual_seed(config.seed),
        recorder=recorder,
        log_every=config.eval_every,
        evaluate=evaluate,
        eval_every=config.eval_every,
        checkpointer=getattr(recorder, "checkpointer", None),
        checkpoint_every=config.checkpoint_every,
        key=f"two-layer-linear-seed{config.seed}",
        prefix="",
        progress=NAME,
    )
    done = int(model.count)
    return Simulation(grid[:done], model.beta[:done].numpy().copy(), model.kernel[:done].numpy().copy(),
                      model.lam[:done].numpy().copy(), result.status)


# --- theory beside simulation -------------------------------------------------------------------------
@dataclass
class Comparison:
    """Per member: the theory trajectory ``beta (R, d)``, its error against GD, the kernel growth (simulated
    and predicted), the distance of the theory from the linearised model (relative to ``s``) and the largest
    drift of the imbalance ``λ`` under GD."""

    theory_beta: list[np.ndarray]
    lazy_beta: list[np.ndarray]
    error: np.ndarray
    kernel_growth_sim: np.ndarray
    kernel_growth_theory: np.ndarray
    lazy_distance: np.ndarray
    lam_drift: np.ndarray


def compare(
    config: TwoLayerLinearConfig,
    members: list[Member],
    target: np.ndarray,
    sim: Simulation,
    *,
    flow: Callable[..., Any] = reduced_flow,
    aligned: Callable[..., np.ndarray] = aligned_strength,
) -> Comparison:
    """The theory at the recorded steps beside the simulation (``flow`` and ``aligned`` replaceable, e.g. by a
    perturbed theory in a test)."""
    s = config.target_norm
    e = target / s
    t = config.lr * sim.steps.astype(float)
    th_beta, lz_beta, err, g_sim, g_th, lazy_d, drift = [], [], [], [], [], [], []
    for b, m in enumerate(members):
        A0, S0, beta0 = reduced_state(m.a0, m.W0)
        lazy = lazy_prediction(t, A0, S0, beta0, target)
        K = sim.kernel[:, b]
        if m.kind == "aligned":
            u = np.asarray(aligned(t, s, m.lam, config.init_scale))
            beta = np.outer(u, e)
            g_th.append(float(aligned_kernel(u[-1], m.lam) / aligned_kernel(config.init_scale, m.lam)))
            g_sim.append(float(e @ K[-1] @ e / (e @ K[0] @ e)))
        else:
            traj = flow(t, A0, S0, beta0, target)
            beta = traj.beta
            g_th.append(float(np.linalg.norm(traj.kernel[-1]) / np.linalg.norm(traj.kernel[0])))
            g_sim.append(float(np.linalg.norm(K[-1]) / np.linalg.norm(K[0])))
        th_beta.append(beta)
        lz_beta.append(lazy)
        err.append(float(np.max(np.linalg.norm(sim.beta[:, b] - beta, axis=1))) / s if t.size else math.nan)
        lazy_d.append(float(np.max(np.linalg.norm(lazy - beta, axis=1))) / s if t.size else math.nan)
        drift.append(float(np.max(np.abs(sim.lam[:, b] - m.lam))) if t.size else math.nan)
    return Comparison(th_beta, lz_beta, np.array(err), np.array(g_sim), np.array(g_th), np.array(lazy_d),
                      np.array(drift))


@threaded
def run(config: TwoLayerLinearConfig, recorder: Recorder) -> ExperimentResult:
    """Train the aligned and random networks by GD; compare with the closed form and the reduced ODE."""
    X, y, target = make_problem(config)
    members = make_members(config, target)
    sim = simulate(config, members, X, y, recorder)
    cmp = compare(config, members, target, sim)
    s = config.target_norm
    for b, m in enumerate(members):
        for r, k in enumerate(sim.steps):
            if m.kind == "aligned":
                e = target / s
                row = {
                    f"sim/{m.label}": float(sim.beta[r, b] @ e),
                    f"theory/{m.label}": float(cmp.theory_beta[b][r] @ e),
                    f"lazy/{m.label}": float(cmp.lazy_beta[b][r] @ e),
                }
            else:
                row = {
                    f"sim/{m.label}": float(np.linalg.norm(sim.beta[r, b] - target)) / s,
                    f"theory/{m.label}": float(np.linalg.norm(cmp.theory_beta[b][r] - target)) / s,
                    f"lazy/{m.label}": float(np.linalg.norm(cmp.lazy_beta[b][r] - target)) / s,
                }
            recorder.log(int(k), row)
    return _result(config, members, sim, cmp)


def _result(
    config: TwoLayerLinearConfig, members: list[Member], sim: Simulation, cmp: Comparison
) -> ExperimentResult:
    agreement = float(np.max(cmp.error)) if sim.status == "completed" and sim.steps.size else math.inf
    summary: dict[str, float] = {"agreement": agreement, "steps": float(config.steps()),
                                 "init_scale": config.init_scale, "target_norm": config.target_norm,
                                 "imbalance_drift": float(np.max(cmp.lam_drift)) if members else math.nan}
    table = []
    for b, m in enumerate(members):
        key = f"{m.kind}/{m.label}"
        summary[f"error/{key}"] = float(cmp.error[b])
        summary[f"kernel_growth_sim/{key}"] = float(cmp.kernel_growth_sim[b])
        summary[f"kernel_growth_theory/{key}"] = float(cmp.kernel_growth_theory[b])
        summary[f"lazy_distance/{key}"] = float(cmp.lazy_distance[b])
        table.append({
            "kind": m.kind, "width": m.width, "λ": m.lam, "max‖β_GD − β_th‖/s": float(cmp.error[b]),
            "kernel growth (GD)": float(cmp.kernel_growth_sim[b]),
            "kernel growth (theory)": float(cmp.kernel_growth_theory[b]),
            "max‖β_th − β_lazy‖/s": float(cmp.lazy_distance[b]),
        })
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


# --- report figures -----------------------------------------------------------------------------------
def _by_prefix(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: float(v) for k, v in summary.items()
            if k.startswith(prefix) and isinstance(v, int | float)}


def two_layer_linear_figures(store: Any, run_id: str) -> list[Any]:
    """The aligned networks' ``u(t)`` (GD, closed form, linearised model); the random networks' residual
    (GD vs reduced ODE); the lazy/rich phase diagram with the trained networks on it; the agreement."""
    import plotly.graph_objects as go

    info = store.run_info(run_id)
    summary, config = info.get("summary") or {}, info.get("config") or {}
    series = run_series(store, run_id, ["sim/*", "theory/*", "lazy/*"])
    lr = float(config.get("lr", 1.0))
    figs = []

    aligned = sorted({n.split("/", 1)[1] for n in series if n.startswith("sim/u_lam=")},
                     key=lambda q: float(q.split("=", 1)[1]))
    if aligned:
        fig = go.Figure()
        for k, q in enumerate(aligned):
            color = mode_color(k)
            for kind, dash in (("sim", "solid"), ("theory", "dash"), ("lazy", "dot")):
                if f"{kind}/{q}" in series:
                    x, yv = series[f"{kind}/{q}"]
                    name = {"sim": "GD", "theory": "closed form (2)", "lazy": "linearised (NTK)"}[kind]
                    fig.add_trace(go.Scatter(
                        x=lr * x, y=yv, mode="lines", name=f"λ={q.split('=')[1]}: {name}",
                        line={"color": color, "dash": dash, "width": 2},
                    ))
        fig.update_layout(title="Aligned networks: u = β·ê from rich (λ = 0, Saxe sigmoid) to lazy (|λ| ≫ s)",
                          xaxis_title="gradient-flow time t = lr·step", yaxis_title="u(t) = β(t)·ê",
                          template="plotly_white")
        figs.append(fig)

    random_q = sorted({n.split("/", 1)[1] for n in series if n.startswith("sim/err_h=")})
    if random_q:
        fig = go.Figure()
        for k, q in enumerate(random_q):
            color = mode_color(k)
            label = q[len("err_"):].replace("_", ", ")
            for kind, dash in (("sim", "solid"), ("theory", "dash")):
                if f"{kind}/{q}" in series:
                    x, yv = series[f"{kind}/{q}"]
                    name = "GD" if kind == "sim" else "reduced ODE"
                    fig.add_trace(go.Scatter(x=lr * x, y=yv, mode="lines", name=f"{label}: {name}",
                                             line={"color": color, "dash": dash, "width": 2}))
        fig.update_yaxes(type="log")
        fig.update_layout(title="Random finite-width networks: GD (solid) vs the exact reduced ODE (dashed)",
                          xaxis_title="gradient-flow time t = lr·step", yaxis_title="‖β(t) − β*‖ / s",
                          template="plotly_white")
        figs.append(fig)

    s = float(summary.get("target_norm", config.get("target_norm", 1.0)))
    u0 = float(summary.get("init_scale", config.get("init_scale", 0.01)))
    lam_grid = np.logspace(-3, 2, 101)
    u_grid = np.logspace(-4, -0.05, 81)
    ratio = lazy_rich_ratio(s, lam_grid[None, :] * s, u_grid[:, None] * s)
    fig = go.Figure(go.Heatmap(x=lam_grid, y=u_grid, z=np.log10(ratio), colorscale="Viridis",
                               colorbar={"title": "log₁₀ K(T)/K(0)"}))
    fig.add_trace(go.Contour(x=lam_grid, y=u_grid, z=np.log10(ratio), contours={
        "start": math.log10(2), "end": math.log10(2), "coloring": "none", "showlabels": False},
        line={"color": "white", "dash": "dash"}, showscale=False, name="growth 2 (lazy | rich)"))
    grown = _by_prefix(summary, "kernel_growth_sim/aligned/u_lam=")
    if grown:
        lams = np.array([max(abs(float(k)) / s, lam_grid[0]) for k in grown])
        fig.add_trace(go.Scatter(x=lams, y=np.full(lams.size, u0 / s), mode="markers+text",
                                 text=[f"{v:.3g}" for v in grown.values()], textposition="top center",
                                 marker={"color": "red", "size": 9}, name="GD: measured growth"))
    fig.update_xaxes(type="log", title="imbalance |λ| / s  (λ = 0 drawn at the left edge)")
    fig.update_yaxes(type="log", title="initial strength u₀ / s")
    fig.update_layout(title="Lazy/rich phase diagram: the kernel's growth √(λ² + 4s²)/√(λ² + 4u₀²)",
                      template="plotly_white")
    figs.append(fig)

    errors = _by_prefix(summary, "error/")
    if errors:
        fig = go.Figure(go.Bar(x=list(errors), y=list(errors.values()), name="max ‖β_GD − β_theory‖/s"))
        tol = summary.get("tolerance")
        if isinstance(tol, int | float):
            fig.add_hline(y=float(tol), line_dash="dash", line_color="firebrick", annotation_text="tolerance")
        fig.update_layout(title="Agreement per network (GD vs exact theory)", xaxis_title="network",
                          yaxis_title="max over time of ‖β_GD − β_theory‖ / s", template="plotly_white")
        figs.append(fig)
    return figs


EXPERIMENT = register(
    Experiment(NAME, DESCRIPTION, TwoLayerLinearConfig, run, QUICK, figures=(two_layer_linear_figures,))
)
