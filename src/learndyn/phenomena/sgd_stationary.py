r"""Stationary SGD fluctuations (``learndyn run sgd-stationary``): exact Lyapunov covariance vs Langevin.

Setting
-------
Linear regression ``y = xᵀw* + ε`` with Gaussian inputs ``x ~ N(0, H)`` (``H`` with the configured eigenvalues
in a random orthonormal basis) and label noise ``ε ~ N(0, σ²)``, trained by online minibatch SGD: every step
draws ``B`` fresh samples and applies ``w ← w − η (1/B) Σ_b x_b(x_bᵀw − y_b)`` (per-sample loss
``½(xᵀw − y)²``). ``chains`` independent SGD chains run at once as the rows of one ``(chains, d)`` weight
tensor trained by :func:`~learndyn.training.train_loop` on the sum of the chains' minibatch losses (the chains
do not interact, so each row follows its own SGD). All chains start at ``w = 0``.

Theory (:mod:`learndyn.theory.sgd_stationary`)
----------------------------------------------
With ``e = w − w*`` the minibatch gradient is ``He + ξ`` with *multiplicative* noise of covariance
``Cov[ξ | e] = (1/B)[H eeᵀ H + (eᵀHe) H + σ² H]`` (Gaussian fourth moments), so the second moment
``S_k = E[e_k e_kᵀ]`` obeys the exact discrete-time recursion

    S_{k+1} = (I − ηH) S_k (I − ηH) + η² C(S_k),      C(S) = (1/B)[H S H + tr(HS) H + σ² H],

(:func:`~learndyn.theory.sgd_second_moment_trajectory`) and the stationary covariance solves the discrete
Lyapunov equation ``Σ = (I − ηH) Σ (I − ηH) + η² C(Σ)``, whose closed form in the eigenbasis
(:func:`~learndyn.theory.sgd_stationary_covariance`) is

    Σ = Q diag[(ησ²/B) / ((1 − κ)(2 − η(1 + 1/B)λ_i))] Qᵀ,      κ = (η/B) Σ_j λ_j/(2 − η(1 + 1/B)λ_j),

finite iff ``κ < 1`` (:func:`~learndyn.theory.sgd_max_stable_lr`). The experiment also solves the Lyapunov
equation numerically (``scipy.linalg.solve_discrete_lyapunov`` iterated on the noise term) as a check on the
closed form (``lyapunov_gap`` in the summary, ~1e−12).

Boltzmann / Langevin limit. For ``η → 0`` the noise is additive, ``C = σ²H/B``, and the SDE
``de = −He dt + √(ηC) dW`` has ``Σ = T·I`` with the temperature ``T = ησ²/(2B)``
(:func:`~learndyn.theory.sgd_temperature`; Mandt, Hoffman & Blei 2017, "Stochastic gradient descent as
approximate Bayesian inference"). The exact result is ``T·I`` times ``1/((1 − κ)(1 − η(1 + 1/B)λ_i/2))
= 1 + O(η)``: the Langevin form is accurate at small ``η`` and increasingly too small at larger ``η``
(about 36% of the trace at ``η = 0.2`` for the default ``H``, ``B = 2``), where the multiplicative
(``HSH + tr(HS)H``) part of the noise and the discreteness of the steps matter. The summary's
``langevin_error/lr=…`` is the Langevin trace's relative error against the simulation.

Measurement. For each learning rate, after a burn-in of ``burn_in`` relaxation times ``1/(η λ_min)`` the
chains' ``e eᵀ`` is averaged over ``samples`` snapshots spread over ``window`` relaxation times. Errors: the
trace's relative error ``|tr Σ̂ − tr Σ|/tr Σ`` (tolerance ``tolerance``, 1.2%) and the largest entry error
relative to ``max|Σ|`` (tolerance ``entry_tolerance``, 3%), each the largest over learning rates; the
``agreement`` is ``tolerance · max(trace_error/tolerance, entry_error/entry_tolerance)``, within
``tolerance`` exactly when both are within their own. Statistical error bars come from ``groups`` disjoint
groups of chains.

Sensitivity (``tests/test_phenomena_sensitivity.py``). The figure must fail when one ingredient of the
theory is off by 2%. Measured at the quick size (``lrs`` 0.05, 0.2; seeds 0–2): unperturbed trace errors
0.0005–0.0048 and entry errors 0.006–0.012; with ``σ²`` ±2% the trace error is 0.0155–0.024 per learning
rate (the largest over them ≥ 0.021), with ``η`` ±2% ≥ 0.020 — both fail against 1.2%. Before, one
tolerance of 3% covered both errors and let any 2% error through. Not caught: ``H`` ±2% (0.0002–0.017):
at small ``η`` the covariance ``≈ ησ²/(2B)·I`` does not depend on ``H`` at all, and at ``η = 0.2`` a 2%
error in ``H`` moves the trace by ~1%, the statistical noise of the entries. ``B`` is an integer; it
enters as ``σ²/B`` and through ``κ``, so a 2% error in it acts like one in ``σ²``.

Logged metrics, tagged ``lr=<η>``: ``sim/second_moment_trace`` and ``theory/second_moment_trace``
(``tr S_k``, the full transient from the start into stationarity), ``sim/excess_loss`` and
``theory/excess_loss`` (``½ tr(H S_k)``), ``loss`` (the minibatch loss summed over chains, from the training
loop) and the arrays ``sim/stationary_covariance`` / ``theory/stationary_covariance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import solve_discrete_lyapunov
from torch import Tensor, nn

from learndyn.config import check_memory, check_run_fields
from learndyn.phenomena._loop_log import LoopLog
from learndyn.phenomena._threads import torch_threads
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.store.recorder import Recorder
from learndyn.theory import (
    sgd_max_stable_lr,
    sgd_noise_covariance,
    sgd_second_moment_trajectory,
    sgd_stationary_covariance,
    sgd_temperature,
)
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

NAME = "sgd-stationary"
DESCRIPTION = "Minibatch SGD on linear regression: stationary covariance (exact Lyapunov vs Langevin)"


@dataclass
class SGDStationaryConfig:
    """The regression problem, the learning rates, and how long and how many chains to simulate.

    ``eigenvalues``: the spectrum of the input covariance ``H`` (its basis is random, from ``seed``).
    ``batch``: samples per SGD step; ``noise_var``: label-noise variance ``σ²``. ``lrs``: learning rates, each
    below the variance-stability threshold ``sgd_max_stable_lr(H, batch)``. ``chains``: independent SGD
    chains simulated together; ``groups``: disjoint chain groups for error bars. ``burn_in`` and ``window``:
    in relaxation times ``1/(lr·λ_min)`` of the slowest mode; ``samples``: snapshots in the window.
    ``checkpoint_every``: updates between checkpoints when the recorder has a checkpointer (``None``: the
    checkpointer's default; 0: never). ``threads``: torch intra-op threads while the experiment runs (the
    tensors are small; ``None`` leaves torch's setting). ``tolerance``: the largest acceptable relative
    error of the trace; ``entry_tolerance``: of the largest entry (relative to ``max|Σ|``).
    """

    eigenvalues: tuple[float, ...] = (2.0, 1.0, 0.5, 0.25)
    batch: int = 2
    noise_var: float = 1.0
    lrs: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.3)
    chains: int = 10000
    groups: int = 10
    burn_in: float = 6.0
    window: float = 20.0
    samples: int = 100
    seed: int = 0
    checkpoint_every: int | None = None
    threads: int | None = 1
    tolerance: float = 0.012
    entry_tolerance: float = 0.03

    def __post_init__(self) -> None:
        owner = "SGDStationaryConfig"
        self.eigenvalues = as_tuple(
            "eigenvalues", self.eigenvalues, owner=owner, item=float, low=0.0, low_open=True
        )
        if not self.eigenvalues:
            raise LearndynValueError(f"{owner}.eigenvalues=() is empty; allowed: one or more values > 0")
        check_int("batch", self.batch, low=1, owner=owner)
        self.noise_var = check_real("noise_var", self.noise_var, low=0.0, low_open=True, owner=owner)
        self.lrs = as_tuple("lrs", self.lrs, owner=owner, item=float, low=0.0, low_open=True)
        if not self.lrs:
            raise LearndynValueError(f"{owner}.lrs=() is empty; allowed: one or more learning rates > 0")
        if len(set(self.lrs)) != len(self.lrs):
            raise LearndynValueError(f"{owner}.lrs={self.lrs!r} repeats a value; allowed: distinct values")
        limit = sgd_max_stable_lr(np.diag(self.eigenvalues), self.batch)
        for lr in self.lrs:
            if lr >= limit:
                raise LearndynValueError(
                    f"{owner}.lrs contains {lr!r}, where the SGD variance diverges; allowed: lr < {limit:.6g}"
                )
        check_int("chains", self.chains, low=2, owner=owner)
        check_int("groups", self.groups, low=2, high=self.chains, owner=owner)
        self.burn_in = check_real("burn_in", self.burn_in, low=0.0, owner=owner)
        self.window = check_real("window", self.window, low=0.0, low_open=True, owner=owner)
        check_int("samples", self.samples, low=1, owner=owner)
        self.entry_tolerance = check_real(
            "entry_tolerance", self.entry_tolerance, low=0.0, low_open=True, owner=owner
        )
        check_run_fields(self, owner)
        check_memory(owner, 8.0 * self.chains * self.batch, ("chains", "batch"))  # a lower bound: one draw


QUICK = {"lrs": (0.05, 0.2), "chains": 4000, "window": 10.0, "samples": 40}
"""The test-size configuration (``--quick``)."""


@dataclass(frozen=True)
class Problem:
    """``H`` (float64, ``d × d``), its Cholesky factor and the teacher ``w*`` (unit norm)."""

    H: np.ndarray
    chol: np.ndarray
    w_star: np.ndarray


def make_problem(config: SGDStationaryConfig) -> Problem:
    """``H = Q diag(eigenvalues) Qᵀ`` (random orthogonal ``Q``) and a random unit teacher, from ``seed``."""
    rng = np.random.default_rng(config.seed)
    d = len(config.eigenvalues)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    H = (q * np.asarray(config.eigenvalues)) @ q.T
    H = 0.5 * (H + H.T)
    w_star = rng.standard_normal(d)
    return Problem(H=H, chol=np.linalg.cholesky(H), w_star=w_star / np.linalg.norm(w_star))


def lyapunov_covariance(
    H: np.ndarray, lr: float, batch: int, noise_var: float, iters: int = 200
) -> np.ndarray:
    """Solve ``Σ = AΣAᵀ + η² C(Σ)`` (``A = I − ηH``) numerically: ``solve_discrete_lyapunov`` on the noise
    term, iterated to its fixed point (a contraction with ratio ``κ`` when ``κ < 1``)."""
    A = np.eye(H.shape[0]) - lr * H
    sigma = np.zeros_like(H)
    for _ in range(iters):
        new = solve_discrete_lyapunov(A, lr**2 * sgd_noise_covariance(H, sigma, noise_var, batch))
        new = 0.5 * (new + new.T)
        if np.max(np.abs(new - sigma)) <= 1e-15 * max(np.max(np.abs(new)), 1e-300):
            return new
        sigma = new
    return sigma


class Chains(nn.Module):
    """``chains`` independent linear models (rows of ``w``) plus the stationary-moment accumulators.

    ``forward(x)`` maps inputs ``(chains, B, d)`` to predictions ``(chains, B)``. The buffers ``moment``
    (``groups × d × d``, the sum of ``e eᵀ`` over snapshots and the group's chains) and ``snapshots`` travel
    with a checkpoint, so a resumed loop continues the average exactly.
    """

    def __init__(self, chains: int, dim: int, groups: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(chains, dim, dtype=torch.float64))
        self.register_buffer("group", torch.arange(chains) % groups)
        self.register_buffer("moment", torch.zeros(groups, dim, dim, dtype=torch.float64))
        self.register_buffer("snapshots", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return torch.bmm(x, self.w.unsqueeze(-1)).squeeze(-1)


def _summed_loss(out: Tensor, y: Tensor) -> Tensor:
    """Σ_chains ½·mean_batch (out − y)²: its gradient in row ``c`` is chain ``c``'s minibatch gradient."""
    return (out - y).square().sum() * (0.5 / out.shape[1])


@dataclass
class Schedule:
    """Steps for one learning rate: snapshots every ``gap`` steps from ``burn`` to ``steps`` (inclusive)."""

    gap: int
    burn: int
    steps: int

    @classmethod
    def for_lr(cls, config: SGDStationaryConfig, lr: float) -> Schedule:
        tau = 1.0 / (lr * min(config.eigenvalues))  # relaxation time of the slowest mode, in steps
        gap = max(1, round(config.window * tau / config.samples))
        burn = gap * math.ceil(config.burn_in * tau / gap)
        return cls(gap=gap, burn=burn, steps=burn + gap * (config.samples - 1))

    def record_steps(self) -> np.ndarray:
        """Where ``train_loop`` evaluates: multiples of ``gap`` below ``steps``, then ``steps``."""
        return np.array([*range(0, self.steps, self.gap), self.steps], dtype=np.int64)


@dataclass
class _LrOutcome:
    lr: float
    steps: int
    trace_sim: float
    trace_stderr: float
    trace_theory: float
    trace_langevin: float
    trace_error: float
    entry_error: float
    langevin_error: float
    lyapunov_gap: float
    status: str


def covariance_errors(estimate: np.ndarray, theory: np.ndarray) -> tuple[float, float]:
    """``(|tr Σ̂ − tr Σ|/tr Σ, max|Σ̂ − Σ|/max|Σ|)``."""
    trace = abs(np.trace(estimate) - np.trace(theory)) / np.trace(theory)
    entry = float(np.max(np.abs(estimate - theory)) / np.max(np.abs(theory)))
    return float(trace), entry


def stationary_agreement(trace_error: float, entry_error: float, config: SGDStationaryConfig) -> float:
    """``tolerance · max(trace_error/tolerance, entry_error/entry_tolerance)`` (``inf`` if either is not
    finite): within ``tolerance`` exactly when each error is within its own tolerance."""
    if not (math.isfinite(trace_error) and math.isfinite(entry_error)):
        return math.inf
    return config.tolerance * max(trace_error / config.tolerance, entry_error / config.entry_tolerance)


def _simulate_lr(
    config: SGDStationaryConfig, problem: Problem, lr: float, recorder: Recorder | None, checkpointer: Any
) -> _LrOutcome:
    d = problem.H.shape[0]
    schedule = Schedule.for_lr(config, lr)
    model = Chains(config.chains, d, config.groups)
    chol_t = torch.from_numpy(problem.chol.T.copy())
    w_star = torch.from_numpy(problem.w_star)
    H_t = torch.from_numpy(problem.H)
    noise_sd = math.sqrt(config.noise_var)

    def sample(g: torch.Generator) -> tuple[Tensor, Tensor]:
        # one float32 draw (6x faster than float64 on CPU), used in float64
        z = torch.randn(config.chains, config.batch, d + 1, generator=g).double()
        x = z[..., :d] @ chol_t
        return x, x @ w_star + noise_sd * z[..., d]

    grid = schedule.record_steps()

    def evaluate(m: nn.Module) -> dict[str, float]:
        step = int(grid[int(m.count)])
        m.count += 1
        e = m.w - w_star
        if step >= schedule.burn:
            outer = torch.einsum("ci,cj->cij", e, e)
            m.moment.index_add_(0, m.group, outer)
            m.snapshots += 1
        return {
            "sim/second_moment_trace": float(e.square().sum(dim=1).mean()),
            "sim/excess_loss": float(0.5 * torch.einsum("ci,ij,cj->c", e, H_t, e).mean()),
        }

    tagged = LoopLog(recorder, f"lr={lr:g}")
    result = train_loop(
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        sample,
        _summed_loss,
        schedule.steps,
        generator=torch.Generator().manual_seed(config.seed * 1_000_003 + round(lr * 1e9) % 1_000_003),
        recorder=tagged,
        log_every=schedule.gap,
        evaluate=evaluate,
        eval_every=schedule.gap,
        checkpointer=checkpointer,
        checkpoint_every=config.checkpoint_every,
        key=f"sgd-stationary-seed{config.seed}-lr{lr:g}",
        prefix="",
    )


    # theory: the exact transient from S_0 = w* w*ᵀ, the stationary closed form, the Langevin limit
    e0 = -problem.w_star
    traj = sgd_second_moment_trajectory(problem.H, lr, config.batch, config.noise_var, np.outer(e0, e0), grid)
    for k, S in zip(grid, traj, strict=True):
        tagged.log(int(k), {
            "theory/second_moment_trace": float(np.trace(S)),
            "theory/excess_loss": float(0.5 * np.trace(problem.H @ S)),
        })
    sigma = sgd_stationary_covariance(problem.H, lr, config.batch, config.noise_var)
    lyap = lyapunov_covariance(problem.H, lr, config.batch, config.noise_var)
    langevin = sgd_temperature(lr, config.batch, config.noise_var) * np.eye(d)

    snapshots = int(model.snapshots)
    per_group_count = snapshots * torch.bincount(model.group, minlength=config.groups).double()
    if snapshots == 0 or result.status != "completed":
        estimate = np.full((d, d), math.nan)
        group_traces = np.full(config.groups, math.nan)
    else:
        estimate = (model.moment.sum(0) / per_group_count.sum()).numpy()
        group_traces = (model.moment.diagonal(dim1=1, dim2=2).sum(-1) / per_group_count).numpy()
    tagged.log_array(schedule.steps, "sim/stationary_covariance", estimate)
    tagged.log_array(schedule.steps, "theory/stationary_covariance", sigma)
    tagged.flush()

    trace_err, entry_err = covariance_errors(estimate, sigma)
    return _LrOutcome(
        lr=lr,
        steps=schedule.steps,
        trace_sim=float(np.trace(estimate)),
        trace_stderr=float(np.std(group_traces, ddof=1) / math.sqrt(config.groups)),
        trace_theory=float(np.trace(sigma)),
        trace_langevin=float(np.trace(langevin)),
        trace_error=trace_err,
        entry_error=entry_err,
        langevin_error=float(abs(np.trace(langevin) - np.trace(estimate)) / np.trace(estimate)),
        lyapunov_gap=float(np.max(np.abs(lyap - sigma)) / np.max(np.abs(sigma))),
        status=result.status,
    )


def run(config: SGDStationaryConfig, recorder: Recorder) -> ExperimentResult:
    """Simulate every learning rate; compare the stationary covariance with the exact and Langevin forms."""
    problem = make_problem(config)
    checkpointer = getattr(recorder, "checkpointer", None)
    with torch_threads(config.threads):
        outcomes = [_simulate_lr(config, problem, lr, recorder, checkpointer) for lr in config.lrs]
    summary: dict[str, float] = {}
    for o in outcomes:
        tag = f"lr={o.lr:g}"
        summary[f"trace_sim/{tag}"] = o.trace_sim
        summary[f"trace_stderr/{tag}"] = o.trace_stderr
        summary[f"trace_theory/{tag}"] = o.trace_theory
        summary[f"trace_langevin/{tag}"] = o.trace_langevin
        summary[f"trace_error/{tag}"] = o.trace_error
        summary[f"entry_error/{tag}"] = o.entry_error
        summary[f"langevin_error/{tag}"] = o.langevin_error
    summary["lyapunov_gap"] = max(o.lyapunov_gap for o in outcomes)
    summary["max_stable_lr"] = sgd_max_stable_lr(problem.H, config.batch)
    trace_error = max(o.trace_error for o in outcomes)
    entry_error = max(o.entry_error for o in outcomes)
    summary["trace_error"], summary["entry_error"] = trace_error, entry_error
    agreement = stationary_agreement(trace_error, entry_error, config)
    table = [
        {
            "lr": o.lr,
            "steps": o.steps,
            "trace_sim": o.trace_sim,
            "trace_stderr": o.trace_stderr,
            "trace_theory": o.trace_theory,
            "trace_langevin": o.trace_langevin,
            "trace_error": o.trace_error,
            "entry_error": o.entry_error,
            "langevin_error": o.langevin_error,
            "status": o.status,
        }
        for o in outcomes
    ]
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


# --- report figure ------------------------------------------------------------------------------------


def _by_lr(summary: dict[str, Any], prefix: str) -> dict[float, float]:
    out = {}
    for key, value in summary.items():
        if key.startswith(prefix + "/lr=") and isinstance(value, int | float):
            try:
                out[float(key.split("=", 1)[1])] = float(value)
            except ValueError:
                continue
    return out


def sgd_stationary_figures(store: Any, run_id: str) -> list[Any]:
    """Stationary ``tr Σ`` against the learning rate: simulation (± 2 s.e.), exact, Langevin ``T·d``."""
    import plotly.graph_objects as go

    summary = store.run_info(run_id).get("summary") or {}
    sim, err = _by_lr(summary, "trace_sim"), _by_lr(summary, "trace_stderr")
    exact, langevin = _by_lr(summary, "trace_theory"), _by_lr(summary, "trace_langevin")
    lrs = sorted(sim)
    if not lrs:
        return []
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=lrs, y=[sim[lr] for lr in lrs], mode="markers", name="simulation",
        error_y={"type": "data", "array": [2 * err.get(lr, 0.0) for lr in lrs]},
    ))
    fig.add_trace(go.Scatter(x=lrs, y=[exact.get(lr) for lr in lrs], mode="lines", name="exact (Lyapunov)"))
    fig.add_trace(go.Scatter(x=lrs, y=[langevin.get(lr) for lr in lrs], mode="lines", line={"dash": "dash"},
                             name="Langevin T·d, T = ησ²/(2B)"))
    fig.update_xaxes(type="log", title="learning rate η")
    fig.update_yaxes(type="log", title="stationary tr Σ")
    fig.update_layout(title="SGD stationary covariance: exact vs Boltzmann (Langevin) limit", height=440,
                      template="plotly_white")
    return [fig]


EXPERIMENT = register(
    Experiment(NAME, DESCRIPTION, SGDStationaryConfig, run, QUICK, figures=(sgd_stationary_figures,))
)
