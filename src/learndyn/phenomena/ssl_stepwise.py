r"""Stepwise learning in joint-embedding self-supervised learning (``learndyn run ssl-stepwise``).

Simon, Knutins, Ziyin, Geisz, Fetterman & Albrecht, "On the stepwise nature of self-supervised learning",
ICML 2023. The closed forms are :mod:`learndyn.theory.ssl`; this module trains the linear model and compares.

Setting
-------
A linear embedding ``f(x) = W x`` (``W ∈ R^{d×m}``, ``d = embed_dim``, ``m = len(eigenvalues)``) is trained
by full-batch gradient descent with learning rate ``lr`` on the Barlow-Twins loss (off-diagonal weight 1)

    L(W) = ‖C − I_d‖_F²,      C = 1/(2n) Σ_i (f(x_i) f(x_i')ᵀ + f(x_i') f(x_i)ᵀ) = W Γ Wᵀ,

over ``n = n_samples`` positive pairs ``x = z + ε``, ``x' = z + ε'`` (two augmentations of one signal ``z``).
The samples are built so that everything below holds exactly rather than on average: ``z``, ``ε`` and ``ε'``
are scaled blocks of one ``n × 3m`` matrix with orthonormal columns, so

    Γ = 1/(2n) Σ_i (x_i x_i'ᵀ + x_i' x_iᵀ) = Σ_z = R diag(γ) Rᵀ,     (1/n) Σ_i x_i x_iᵀ = Σ_z + σ² I,

with ``γ = eigenvalues`` (the signal spectrum, random orthogonal ``R``) and ``σ = view_noise``: the views
share the signal and nothing else.

Theory (:mod:`learndyn.theory.ssl`). From ``W(0) = α U V_dᵀ`` (``init="aligned"``; ``V_d`` the top ``d``
eigenvectors of ``Γ``) the eigenvalues of ``C`` follow decoupled logistic curves (``t = lr · step``)

    c_j(t) = c_j(0) / (c_j(0) + (1 − c_j(0)) e^{−8 γ_j t}),     c_j(0) = γ_j α²,

so they are learned one at a time, each at ``t_j = ln[(1 − c_j(0))/c_j(0)]/(8γ_j) ≈ ln(1/α)/(4γ_j)``: step
times ``∝ (1/γ_j) ln(1/α)``. From a random small ``W(0)`` (``init="random"``, ``W_ij ~ N(0, α²/m)``) the same
curves hold approximately with the Gram–Schmidt initial values ``c_j(0) = γ_j R_jj²``
(:func:`~learndyn.theory.ssl.projected_init`); the neglected terms vanish as ``α → 0``.

The embedding ``Z`` of the stacked views (the ``2n`` training inputs) then has singular values
``σ_j(Z)² = 2n s_j² (γ_j + σ²) = 2n c_j (1 + σ²/γ_j)`` (exact for the aligned init), so its effective rank
``exp(−Σ p_j ln p_j)``, ``p = σ(Z)/Σσ(Z)`` (Roy & Vetterli; what :class:`~learndyn.probes.RepresentationProbe`
measures), climbs a staircase: from near ``d`` at the (isotropic-ish) small init down to ~1 when the first
eigenvalue is learned, then ~2, … ~``d``.

What is measured and compared
-----------------------------
* ``sim/c<j>`` vs ``theory/c<j>``: the eigenvalues of ``C`` (descending) every ``steps/eval_points`` steps.
  The **agreement** is ``max_{t,j} |c_j^sim(t) − c_j^th(t)|`` (absolute: ``c ∈ [0, 1]`` is normalised).
  Gradient descent differs from gradient flow by ``O(lr)`` (about ``γ_1 lr ln(1/c(0))/2`` at a step, 0.7%
  at the defaults); tolerance ``tolerance`` (0.02, which also covers the random-init approximation).
* ``sim/erank`` (the representation probe run by the :class:`~learndyn.probes.Monitor`) vs ``theory/erank``;
  ``sim/learned_dims`` vs ``theory/learned_dims`` (the number of ``c_j ≥ ½``); ``sim/loss`` vs
  ``theory/loss``.
* Summary: per mode the predicted step time ``t_j/lr`` and the measured step where ``c_j`` crosses ½, and the
  largest effective-rank error (reported, not part of the agreement: for ``init="random"`` the embedding is
  not aligned early on and the prediction holds only after the first step).

Resuming: with a checkpointer on the recorder (a stored run's), the loop's checkpoints carry the measured
series, so a resumed run ends with the same result as an uninterrupted one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from learndyn.config import check_memory, check_run_fields
from learndyn.phenomena._figures import mode_color, run_series, sim_theory_traces
from learndyn.phenomena._stepwise import crossing_step, full_batch_descent
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.probes.monitor import Monitor
from learndyn.probes.representation import RepresentationProbe, effective_rank
from learndyn.store.recorder import Recorder
from learndyn.theory import ssl as closed_form
from learndyn.validation import LearndynValueError, as_tuple, check_choice, check_int, check_real

NAME = "ssl-stepwise"
DESCRIPTION = "Linear Barlow Twins: eigenvalues learned one at a time, effective-rank staircase"
INITS = ("aligned", "random")


@dataclass
class SSLStepwiseConfig:
    """Linear Barlow Twins from small initialisation: embedding eigenvalues learned one at a time.

    ``eigenvalues``: the signal spectrum ``γ`` (> 0, strictly decreasing; its length is the input dimension
    ``m``). ``embed_dim``: ``d ≤ m``. ``n_samples``: positive pairs (≥ ``3m``, for the exact construction).
    ``view_noise``: augmentation noise ``σ`` of each view. ``init``: ``"aligned"`` (exact theory) or
    ``"random"`` (approximate, see the module docstring); ``init_scale``: ``α``. ``lr``: learning rate.
    ``t_end``: gradient-flow time (``None``: 1.25 × the time the last mode needs to reach 0.99).
    ``eval_points``: about how many points of each curve are logged and compared.
    ``seed``: data, basis and initialisation. ``threads``: torch intra-op threads while it runs (``None``:
    leave torch's setting). ``tolerance``: the agreement the run must reach.
    """

    eigenvalues: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.05, 0.02)
    embed_dim: int = 3
    n_samples: int = 256
    view_noise: float = 0.5
    init: Literal["aligned", "random"] = "aligned"
    init_scale: float = 1e-3
    lr: float = 1e-3
    t_end: float | None = None
    eval_points: int = 200
    seed: int = 0
    threads: int | None = 1
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        owner = "SSLStepwiseConfig"
        self.eigenvalues = as_tuple(
            "eigenvalues", self.eigenvalues, owner=owner, item=float, low=0.0, low_open=True
        )
        m = len(self.eigenvalues)
        if m == 0:
            raise LearndynValueError(f"{owner}.eigenvalues=() is empty; allowed: one or more values > 0")
        if any(b >= a for a, b in zip(self.eigenvalues, self.eigenvalues[1:], strict=False)):
            raise LearndynValueError(
                f"{owner}.eigenvalues={self.eigenvalues!r} is not allowed; "
                "allowed: strictly decreasing values"
            )
        check_int("embed_dim", self.embed_dim, low=1, high=m, owner=owner)
        check_int("n_samples", self.n_samples, low=3 * m, owner=owner)
        self.view_noise = check_real("view_noise", self.view_noise, low=0.0, owner=owner)
        check_choice("init", self.init, INITS, owner=owner)
        self.init_scale = check_real(
            "init_scale", self.init_scale, low=0.0, high=0.5, low_open=True, owner=owner
        )
        self.lr = check_real("lr", self.lr, low=0.0, high=1.0, low_open=True, owner=owner)
        if self.t_end is not None:
            self.t_end = check_real("t_end", self.t_end, low=0.0, low_open=True, owner=owner)
        check_int("eval_points", self.eval_points, low=10, owner=owner)
        check_run_fields(self, owner)
        # a lower bound: the two float64 views of the data, n_samples × len(eigenvalues) each
        check_memory(owner, 16.0 * self.n_samples * m, ("n_samples", "eigenvalues"))


QUICK = {"embed_dim": 2}
"""The test-size configuration (``--quick``)."""


def make_views(config: SSLStepwiseConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired views ``(x, x')`` (each ``n × m``) and the signal basis ``R`` (columns: ``v_1 … v_m``).

    ``z = √n Q_z diag(√γ) Rᵀ``, ``ε = σ√n Q_ε Rᵀ``, ``ε' = σ√n Q_ε' Rᵀ`` with ``[Q_z Q_ε Q_ε']`` orthonormal,
    so ``Γ = R diag(γ) Rᵀ`` and each view's second moment is ``R diag(γ + σ²) Rᵀ`` exactly.
    """
    m, n = len(config.eigenvalues), config.n_samples
    rng = np.random.default_rng([config.seed, 2])
    q, r = np.linalg.qr(rng.standard_normal((n, 3 * m)))
    q = q * np.sign(np.diag(r))
    basis, rb = np.linalg.qr(rng.standard_normal((m, m)))
    basis = basis * np.sign(np.diag(rb))
    z = np.sqrt(n) * (q[:, :m] * np.sqrt(np.array(config.eigenvalues))) @ basis.T
    noise = config.view_noise * np.sqrt(n)
    x1 = z + noise * q[:, m : 2 * m] @ basis.T
    x2 = z + noise * q[:, 2 * m :] @ basis.T
    return x1, x2, basis


def initial_weights(config: SSLStepwiseConfig, gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W0, c0)``: the initial embedding and the initial eigenvalues the theory starts from."""
    if config.init == "aligned":
        return closed_form.aligned_init(gamma, config.embed_dim, config.init_scale, seed=config.seed)
    rng = np.random.default_rng([config.seed, 3])
    m = gamma.shape[0]
    W0 = config.init_scale * rng.standard_normal((config.embed_dim, m)) / np.sqrt(m)
    return W0, closed_form.projected_init(W0, gamma)


def train_time(config: SSLStepwiseConfig, gamma_top: np.ndarray, c0: np.ndarray) -> float:
    """``t_end``, or 1.25 × the time the slowest of the ``d`` modes needs to reach 0.99."""
    if config.t_end is not None:
        return config.t_end
    return 1.25 * float(np.max(closed_form.ssl_step_times(gamma_top, c0, fraction=0.99)))


def barlow_twins_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``‖C − I‖_F²`` with ``C`` the symmetrised cross-view correlation; ``outputs`` = ``[f(x); f(x')]``.

    ``targets`` is unused (the loss is self-supervised); it is there for the ``loss_fn(outputs, targets)``
    signature of :func:`~learndyn.training.train_loop` and the probes.
    """
    del targets
    n = outputs.shape[0] // 2
    z1, z2 = outputs[:n], outputs[n:]
    cross = z1.T @ z2 / n
    corr = 0.5 * (cross + cross.T)
    eye = torch.eye(corr.shape[0], dtype=corr.dtype, device=corr.device)
    return (corr - eye).square().sum()


def correlation_eigenvalues(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Eigenvalues of ``C`` for the live model, descending."""
    with torch.no_grad():
        out = model(inputs).to(torch.float64)
    n = out.shape[0] // 2
    cross = out[:n].T @ out[n:] / n
    return np.sort(np.linalg.eigvalsh((0.5 * (cross + cross.T)).cpu().numpy()))[::-1]


def predicted_erank(c: np.ndarray, gamma_top: np.ndarray, view_noise: float) -> np.ndarray:
    """Effective rank of the stacked embedding predicted from ``c_j``: ``σ_j ∝ √(c_j (1 + σ²/γ_j))``."""
    sv = np.sqrt(np.clip(c, 0.0, None) * (1.0 + view_noise**2 / gamma_top))
    sv = sv.reshape(-1, gamma_top.size)
    return np.array([effective_rank(row) for row in sv])


def eigenvalue_agreement(sim: np.ndarray, theory: np.ndarray) -> float:
    """The agreement figure: ``max |c_sim − c_theory|`` over all times and modes (``nan`` if empty)."""
    sim, theory = np.asarray(sim, dtype=float), np.asarray(theory, dtype=float)
    return float(np.max(np.abs(sim - theory))) if sim.size else float("nan")


class _Tracker:
    """``train_loop``'s monitor: runs the :class:`Monitor` (representation probe) and, every ``every`` steps,
    logs the measured and predicted eigenvalues, effective rank, learned dimensions and loss. Its state goes
    into the loop's checkpoints."""

    def __init__(
        self,
        model: nn.Module,
        config: SSLStepwiseConfig,
        gamma_top: np.ndarray,
        c0: np.ndarray,
        recorder: Recorder,
        monitor: Monitor,
        probe: RepresentationProbe,
        every: int,
    ) -> None:
        self.model, self.config, self.gamma_top, self.c0 = model, config, gamma_top, c0
        self.recorder, self.monitor, self.probe, self.every = recorder, monitor, probe, every
        self.steps: list[int] = []
        self.sim: list[np.ndarray] = []
        self.erank: list[float] = []

    def measure(self, step: int, batch: tuple[torch.Tensor, torch.Tensor], erank: float) -> None:
        cfg = self.config
        t = cfg.lr * step
        c = correlation_eigenvalues(self.model, batch[0])
        c_th = closed_form.embedding_eigenvalues(t, self.gamma_top, self.c0)
        metrics = {
            "sim/loss": float(np.sum((1.0 - c) ** 2)),
            "theory/loss": float(closed_form.ssl_loss(t, self.gamma_top, self.c0)),
            "sim/erank": erank,
            "theory/erank": float(predicted_erank(c_th, self.gamma_top, cfg.view_noise)[0]),
            "sim/learned_dims": float(np.sum(c >= 0.5)),
            "theory/learned_dims": float(closed_form.learned_dimensions(t, self.gamma_top, self.c0)),
        }
        for j, (x, y) in enumerate(zip(c, c_th, strict=True), start=1):
            metrics[f"sim/c{j}"] = float(x)
            metrics[f"theory/c{j}"] = float(y)
        self.recorder.log(step, metrics)
        self.steps.append(step)
        self.sim.append(c)
        self.erank.append(erank)

    def after_step(
        self, step: int, batch: tuple[torch.Tensor, torch.Tensor], metrics: Mapping[str, float] | None = None
    ) -> None:
        results = self.monitor.after_step(step, batch, metrics)
        if step % self.every == 0:
            self.measure(step, batch, float(results["repr/embed/erank"]))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue: the series so far and the probe's reference norms."""
        return {
            "steps": list(self.steps),
            "sim": [c.copy() for c in self.sim],
            "erank": list(self.erank),
            "probe_norm0": dict(self.probe._norm0),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = list(state["steps"])
        self.sim = [np.asarray(c) for c in state["sim"]]
        self.erank = list(state["erank"])
        self.probe._norm0 = dict(state["probe_norm0"])


@threaded
def run(config: SSLStepwiseConfig, recorder: Recorder) -> ExperimentResult:
    """Train the linear Barlow-Twins model; log measured and predicted eigenvalues and effective rank."""
    x1, x2, basis = make_views(config)
    gamma = (basis * np.array(config.eigenvalues)) @ basis.T
    gamma_top = np.array(config.eigenvalues[: config.embed_dim])
    W0, c0 = initial_weights(config, gamma)
    t_end = train_time(config, gamma_top, c0)
    every = max(1, int(round(t_end / config.lr)) // config.eval_points)
    steps = every * max(
        1, int(np.ceil(t_end / config.lr / every))
    )  # a multiple of every: the end is measured

    embed = nn.Linear(x1.shape[1], config.embed_dim, bias=False, dtype=torch.float64)
    with torch.no_grad():
        embed.weight.copy_(torch.as_tensor(W0))
    model = nn.Sequential(OrderedDict(embed=embed))
    inputs = torch.as_tensor(np.concatenate([x1, x2]), dtype=torch.float64)
    targets = torch.zeros(inputs.shape[0], 1, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    probe = RepresentationProbe(every=every, modules=["embed"])
    monitor = Monitor(model, barlow_twins_loss, probes=[probe], recorder=recorder, optimizer=optimizer)
    tracker = _Tracker(model, config, gamma_top, c0, recorder, monitor, probe, every)

    batch = (inputs, targets)
    loop = full_batch_descent(
        model, optimizer, barlow_twins_loss, batch, steps, seed=config.seed, recorder=recorder,
        tracker=tracker, every=every, key="ssl-stepwise", progress=NAME,
    )
    if loop.status == "completed":
        tracker.after_step(steps, batch)  # the final state, after the last update
    monitor.close()
    return _result(config, gamma_top, c0, tracker, steps, loop.status)


def _result(
    config: SSLStepwiseConfig,
    gamma_top: np.ndarray,
    c0: np.ndarray,
    tracker: _Tracker,
    steps: int,
    status: str,
) -> ExperimentResult:
    steps_arr = np.array(tracker.steps, dtype=float)
    t = config.lr * steps_arr
    sim = np.array(tracker.sim).reshape(len(tracker.sim), gamma_top.size)
    theory = closed_form.embedding_eigenvalues(t, gamma_top, c0).reshape(sim.shape)
    agreement = eigenvalue_agreement(sim, theory) if status == "completed" else float("inf")
    erank_th = predicted_erank(theory, gamma_top, config.view_noise)
    erank_sim = np.array(tracker.erank)
    ok = np.isfinite(erank_sim)
    t_step = closed_form.ssl_step_times(gamma_top, c0)
    summary: dict[str, float] = {
        "agreement": agreement,
        "erank_max_abs_err": float(np.max(np.abs(erank_sim[ok] - erank_th[ok]))) if ok.any() else np.nan,
        "final_erank": float(erank_sim[-1]) if erank_sim.size else float("nan"),
        "final_learned_dims": float(np.sum(sim[-1] >= 0.5)) if sim.size else float("nan"),
        "steps": float(steps),
    }
    table = []
    for j in range(gamma_top.size):
        measured = crossing_step(steps_arr, sim[:, j], 0.5) if sim.size else float("nan")
        predicted = float(t_step[j] / config.lr)
        summary[f"mode{j + 1}/step_theory"] = predicted
        summary[f"mode{j + 1}/step_sim"] = measured
        table.append(
            {
                "mode": j + 1,
                "gamma": float(gamma_top[j]),
                "c0": float(c0[j]),
                "step time t_j/lr (theory)": predicted,
                "step c_j=1/2 (sim)": measured,
                "rel. error": abs(measured - predicted) / predicted if np.isfinite(measured) else None,
            }
        )
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


def ssl_figures(store: Any, run_id: str) -> list[Any]:
    """Report figures: eigenvalues of C and the effective rank, simulation (solid) vs theory (dashed)."""
    from plotly.subplots import make_subplots

    series = run_series(store, run_id, ["sim/*", "theory/*"])
    modes = sorted(
        {
            n.split("/", 1)[1]
            for n in series
            if n.split("/", 1)[1][:1] == "c" and n.split("/", 1)[1][1:].isdigit()
        },
        key=lambda q: int(q[1:]),
    )
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("eigenvalues c_j of C", "effective rank of the embedding")
    )
    for k, mode in enumerate(modes):
        for trace in sim_theory_traces(series, mode, mode, color=mode_color(k)):
            fig.add_trace(trace, row=1, col=1)
    for trace in sim_theory_traces(series, "erank", "erank", color="black"):
        fig.add_trace(trace, row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="eigenvalue c_j of C", row=1, col=1)
    fig.update_yaxes(title_text="effective rank (1)", row=1, col=2)
    fig.update_layout(
        title="Stepwise SSL: simulation (solid) vs Simon et al. closed form (dashed)", template="plotly_white"
    )
    return [fig]


EXPERIMENT = register(Experiment(NAME, DESCRIPTION, SSLStepwiseConfig, run, QUICK, figures=(ssl_figures,)))
