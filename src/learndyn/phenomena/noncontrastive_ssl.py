r"""Non-contrastive SSL with a linear predictor (``learndyn run noncontrastive-ssl``): BYOL's predictor aligns
with the representation's correlation and reaches the predicted spectrum; without the asymmetry it collapses.

Setting
-------
Whitened inputs (``E[xxᵀ] = I``) in ``d`` dimensions and augmentation noise ``E[eeᵀ] = X' = Q diag(σ_j²) Qᵀ``
(``aug_vars``, a random orthonormal ``Q``): each direction of input space is corrupted by the augmentations to
a different degree. Online network ``W`` and predictor ``W_p`` (both ``d × d``), target ``W_a`` an
exponential moving average of ``W`` (``W_a ← ema·W_a + (1 − ema)·W`` every step), trained by full-batch
gradient descent (autograd) on the population loss

    J = ½ E‖W_p W x₁ − StopGrad(W_a x₂)‖²
      = ½ tr(W_p W (I + X') Wᵀ W_pᵀ) − tr(W_p W W_aᵀ) + ½ tr(W_a (I + X') W_aᵀ),

with learning rate ``lr`` for ``W`` and ``α_p·lr`` for ``W_p`` and weight decay ``η`` (Tian et al.'s
convention: ``W_p ← W_p − lr(α_p ∇J + η W_p)``). Four variants:

* ``byol``: as above;
* ``directpred``: ``W_p`` is not trained but set every step from the eigen-decomposition of
  ``F = E[W x (W x)ᵀ] = W Wᵀ`` as ``(α_p F)^{1/2}`` (:func:`~learndyn.theory.directpred_predictor`);
* ``no_stopgrad``: as ``byol`` (trained predictor) but the target is the online network itself, with
  gradients through both branches;
* ``no_predictor``: ``W_p = I`` fixed.

Theory (:mod:`learndyn.theory.noncontrastive`)
----------------------------------------------
The balance law ``W Wᵀ − W_pᵀW_p/α_p = e^{−2ηt}(…)₀`` makes the trained predictor end at ``W_pᵀ W_p = α_p F``;
in the eigen-modes of ``X'`` the fixed points are ``p_j = [1 + √(1 − 4η(1 + σ_j²))]/(2(1 + σ_j²))``,
``s_j = p_j²/α_p`` (``τ = 1`` at the EMA's fixed point), and directions with ``σ_j² > 1/(4η) − 1`` collapse
(``s_j → 0``). Without the predictor or without the stop-gradient, everything collapses (``F → 0``).

Agreement: for ``byol`` and ``directpred`` at the end of training, the largest of the relative errors of the
sorted eigenvalues of ``F`` and of ``W_p`` (real parts) against ``s_j`` and ``p_j`` for surviving directions,
of ``s_j/s_1`` for collapsed ones, and of the alignment ``‖[W_p, F]‖/(‖W_p‖ ‖F‖)``; tolerance 5e−3. See
``docs/phenomena/noncontrastive-ssl.md`` for the measured numbers. The balance law's residual along the
trajectory, ``max_t ‖D(t) − e^{−2ηt}D₀‖_F/‖D₀‖_F``, is GD's departure from gradient flow (``O(lr)`` over a
fixed time; 0 for gradient flow): reported as ``byol/balance_residual_max``, not part of the agreement.

Logged per variant (tag ``variant=<name>``): ``sim/s<j>``, ``sim/p<j>`` (sorted eigenvalues of ``F`` and
``W_p``), ``theory/s<j>``, ``theory/p<j>`` (the fixed point), ``sim/alignment`` (the normalised commutator),
``sim/balance_residual`` and ``sim/F_norm`` (``‖F‖_F``, → 0 on collapse).
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
from learndyn.phenomena._loop_log import LoopLog
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.store.recorder import Recorder
from learndyn.theory.noncontrastive import (
    collapse_threshold,
    commutator_norm,
    predictor_fixed_point,
)
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

NAME = "noncontrastive-ssl"
DESCRIPTION = "BYOL with a linear predictor: eigenspace alignment, predicted spectrum, collapse, DirectPred"
VARIANTS = ("byol", "directpred", "no_stopgrad", "no_predictor")
TRAINED_PREDICTOR = ("byol", "no_stopgrad")


@dataclass
class NoncontrastiveSSLConfig:
    """The augmentations, the optimiser and the schedule.

    ``aug_vars``: the augmentation noise variances ``σ_j²`` (one per input direction: ``d = len(aug_vars)``);
    ``weight_decay``: ``η`` (> 0); ``predictor_lr_ratio``: ``α_p``; ``ema``: the target's moving-average
    factor per step; ``init_scale``: ``W₀ = init_scale · G/√d`` (``G`` Gaussian; ``W_p`` starts at 0);
    ``lr``, ``steps``, ``eval_every``: the GD schedule. ``tolerance``: the largest acceptable end-of-training
    error (relative) of the spectra and the alignment.
    """

    aug_vars: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 6.0)
    weight_decay: float = 0.05
    predictor_lr_ratio: float = 1.0
    ema: float = 0.9
    init_scale: float = 1.0
    lr: float = 0.05
    steps: int = 4000
    eval_every: int = 20
    seed: int = 0
    checkpoint_every: int | None = None
    threads: int | None = 1
    tolerance: float = 5e-3

    def __post_init__(self) -> None:
        owner = "NoncontrastiveSSLConfig"
        self.aug_vars = as_tuple("aug_vars", self.aug_vars, owner=owner, item=float, low=0.0)
        if len(self.aug_vars) < 2:
            raise LearndynValueError(f"{owner}.aug_vars={self.aug_vars!r} is too short; allowed: >= 2 values")
        self.weight_decay = check_real("weight_decay", self.weight_decay, low=0.0, low_open=True, owner=owner)
        self.predictor_lr_ratio = check_real("predictor_lr_ratio", self.predictor_lr_ratio, low=0.0,
                                             low_open=True, owner=owner)
        self.ema = check_real("ema", self.ema, low=0.0, high=1.0, high_open=True, owner=owner)
        self.init_scale = check_real("init_scale", self.init_scale, low=0.0, low_open=True, owner=owner)
        self.lr = check_real("lr", self.lr, low=0.0, high=0.5, low_open=True, owner=owner)
        check_int("steps", self.steps, low=1, owner=owner)
        check_int("eval_every", self.eval_every, low=1, owner=owner)
        check_run_fields(self, owner)


QUICK = {"lr": 0.15, "steps": 1000, "eval_every": 10}
"""The test-size configuration (``--quick``)."""


def make_problem(config: NoncontrastiveSSLConfig) -> tuple[np.ndarray, np.ndarray]:
    """The augmentation covariance ``X' = Q diag(σ²) Qᵀ`` and the initial online weights ``W₀``."""
    d = len(config.aug_vars)
    rng = np.random.default_rng([config.seed, 21])
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    aug_cov = (q * np.array(config.aug_vars)) @ q.T
    W0 = config.init_scale * rng.standard_normal((d, d)) / math.sqrt(d)
    return aug_cov, W0


class LinearSSL(nn.Module):
    """Online ``W``, predictor ``W_p`` (a parameter for ``byol`` and ``no_stopgrad``, a buffer otherwise),
    EMA target ``W_a``.

    ``forward(S1)`` with ``S1 = I + X'`` returns the population loss ``J`` (updating the EMA target first, so
    that the target of step ``k`` includes ``W(k)``; ``directpred`` sets ``W_p`` from ``F = WWᵀ`` there too).
    Buffers hold the records (exact resume from a checkpoint).
    """

    def __init__(self, variant: str, W0: np.ndarray, alpha_p: float, ema: float, records: int) -> None:
        super().__init__()
        d = W0.shape[0]
        self.variant, self.alpha_p, self.ema = variant, alpha_p, ema
        self.W = nn.Parameter(torch.from_numpy(W0.copy()))
        Wp0 = torch.eye(d, dtype=torch.float64) if variant == "no_predictor" else torch.zeros(d, d,
                                                                                              dtype=torch.float64)
        if variant in TRAINED_PREDICTOR:
            self.Wp = nn.Parameter(Wp0)
        else:
            self.register_buffer("Wp", Wp0)
        self.register_buffer("Wa", torch.from_numpy(W0.copy()))
        self.register_buffer("F_rec", torch.full((records, d, d), math.nan, dtype=torch.float64))
        self.register_buffer("Wp_rec", torch.full((records, d, d), math.nan, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def predictor(self) -> Tensor:
        if self.variant == "directpred":
            with torch.no_grad():
                F = self.W @ self.W.T
                if not bool(torch.isfinite(F).all()):  # diverged: let the training loop see it
                    self.Wp = torch.full_like(F, math.nan)
                    return self.Wp
                evals, evecs = torch.linalg.eigh(0.5 * (F + F.T))
                # a new tensor, not an in-place copy: the previous one may be in the current step's graph
                self.Wp = (evecs * (self.alpha_p * evals.clamp(min=0.0)).sqrt()) @ evecs.T
        return self.Wp

    def forward(self, S1: Tensor) -> Tensor:
        Wp = self.predictor()
        if self.variant == "no_stopgrad":
            target = self.W
        else:
            with torch.no_grad():
                self.Wa.mul_(self.ema).add_(self.W.detach(), alpha=1.0 - self.ema)
            target = self.Wa
        M = Wp @ self.W
        return (0.5 * torch.trace(M @ S1 @ M.T) - torch.trace(M @ target.T)
                + 0.5 * torch.trace(target @ S1 @ target.T))

    def record(self) -> None:
        r = int(self.count)
        self.F_rec[r] = self.W @ self.W.T
        self.Wp_rec[r] = self.predictor()
        self.count += 1


def record_steps(steps: int, eval_every: int) -> np.ndarray:
    """Where ``train_loop`` evaluates: multiples of ``eval_every`` below ``steps``, then ``steps``."""
    return np.array([*range(0, steps, eval_every), steps], dtype=np.int64)


@dataclass
class Trained:
    """One variant's records: ``steps``, ``F (R, d, d)``, ``Wp (R, d, d)`` and the loop's status."""

    variant: str
    steps: np.ndarray
    F: np.ndarray
    Wp: np.ndarray
    status: str


def train_variant(config: NoncontrastiveSSLConfig, variant: str, aug_cov: np.ndarray, W0: np.ndarray,
                  recorder: Recorder | None) -> Trained:
    """Train one variant by GD (``train_loop``; the predictor's step is ``α_p·lr`` and its weight decay
    ``η/α_p`` in torch's convention, i.e. ``W_p ← W_p − lr(α_p ∇J + η W_p)``)."""
    d = W0.shape[0]
    grid = record_steps(config.steps, config.eval_every)
    model = LinearSSL(variant, W0, config.predictor_lr_ratio, config.ema, len(grid))
    S1 = torch.eye(d, dtype=torch.float64) + torch.from_numpy(aug_cov)
    groups: list[dict[str, Any]] = [
        {"params": [model.W], "lr": config.lr, "weight_decay": config.weight_decay}
    ]
    if variant in TRAINED_PREDICTOR:
        a = config.predictor_lr_ratio
        groups.append({"params": [model.Wp], "lr": a * config.lr, "weight_decay": config.weight_decay / a})

    def evaluate(m: nn.Module) -> dict[str, float]:
        m.record()
        return {}

    result = train_loop(
        model,
        torch.optim.SGD(groups),
        lambda _g: (S1, S1),
        lambda out, _y: out,
        config.steps,
        generator=torch.Generator().manual_seed(config.seed),
        recorder=recorder,
        log_every=config.eval_every,
        evaluate=evaluate,
        eval_every=config.eval_every,
        checkpointer=getattr(recorder, "checkpointer", None),
        checkpoint_every=config.checkpoint_every,
        key=f"noncontrastive-ssl-{variant}-seed{config.seed}",
        prefix="",
        progress=f"{NAME} {variant}",
        mark_diverged=False,
    )
    done = int(model.count)
    F, Wp = model.F_rec[:done].numpy().copy(), model.Wp_rec[:done].numpy().copy()
    return Trained(variant, grid[:done], F, Wp, result.status)


# --- theory beside simulation -------------------------------------------------------------------------
def _spectra(F: np.ndarray, Wp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (descending) eigenvalues of ``F`` and real parts of those of ``W_p``."""
    s = np.sort(np.linalg.eigvalsh(0.5 * (F + F.T)))[::-1]
    p = np.sort(np.linalg.eigvals(Wp).real)[::-1]
    return s, p


def end_errors(
    config: NoncontrastiveSSLConfig,
    trained: Trained,
    *,
    fixed_point: Callable[..., tuple[np.ndarray, np.ndarray]] = predictor_fixed_point,
) -> dict[str, float]:
    """End-of-training errors of ``trained`` against the fixed point (``fixed_point`` replaceable, e.g. by a
    perturbed theory in a test): spectra of ``F`` and ``W_p`` (relative, surviving directions), collapsed
    directions (``s_j/s_1``), and the alignment."""
    p_th, s_th = fixed_point(np.array(config.aug_vars), config.weight_decay, config.predictor_lr_ratio)
    order = np.argsort(-s_th, kind="stable")
    p_th, s_th = p_th[order], s_th[order]
    if trained.status != "completed" or not trained.steps.size:
        return {"spectrum_F": math.inf, "spectrum_Wp": math.inf, "collapsed": math.inf, "alignment": math.inf}
    s, p = _spectra(trained.F[-1], trained.Wp[-1])
    live = s_th > 0
    scale = float(s_th[live].max()) if live.any() else 1.0
    return {
        "spectrum_F": float(np.max(np.abs(s[live] - s_th[live]) / s_th[live])) if live.any() else 0.0,
        "spectrum_Wp": float(np.max(np.abs(p[live] - p_th[live]) / p_th[live])) if live.any() else 0.0,
        "collapsed": float(np.max(np.abs(s[~live])) / scale) if (~live).any() else 0.0,
        "alignment": commutator_norm(trained.Wp[-1], trained.F[-1]),
    }


def balance_residual(config: NoncontrastiveSSLConfig, trained: Trained) -> np.ndarray:
    """``‖D(t) − e^{−2ηt} D₀‖_F / ‖D₀‖_F`` at each record (``D = F − W_pᵀW_p/α_p``)."""
    D = trained.F - np.swapaxes(trained.Wp, 1, 2) @ trained.Wp / config.predictor_lr_ratio
    t = config.lr * trained.steps.astype(float)
    pred = np.exp(-2.0 * config.weight_decay * t)[:, None, None] * D[0]
    return np.linalg.norm(D - pred, axis=(1, 2)) / np.linalg.norm(D[0])


@threaded
def run(config: NoncontrastiveSSLConfig, recorder: Recorder) -> ExperimentResult:
    """Train the four variants; compare BYOL's and DirectPred's end state with the fixed point."""
    aug_cov, W0 = make_problem(config)
    aug = np.array(config.aug_vars)
    p_th, s_th = predictor_fixed_point(aug, config.weight_decay, config.predictor_lr_ratio)
    order = np.argsort(-s_th, kind="stable")
    summary: dict[str, float] = {
        "collapse_threshold": collapse_threshold(config.weight_decay),
        "surviving_directions": float(np.count_nonzero(s_th > 0)),
    }
    table, agreement = [], 0.0
    for variant in VARIANTS:
        tagged = LoopLog(recorder, f"variant={variant}")
        trained = train_variant(config, variant, aug_cov, W0, tagged)
        residual = balance_residual(config, trained) if trained.steps.size else np.array([math.nan])
        for r, k in enumerate(trained.steps):
            s, p = _spectra(trained.F[r], trained.Wp[r])
            row = {"sim/alignment": commutator_norm(trained.Wp[r], trained.F[r]),
                   "sim/F_norm": float(np.linalg.norm(trained.F[r]))}
            if variant == "byol":
                row["sim/balance_residual"] = float(residual[r])
            for j in range(s.size):
                row[f"sim/s{j + 1}"] = float(s[j])
                row[f"sim/p{j + 1}"] = float(p[j])
                if variant in ("byol", "directpred"):
                    row[f"theory/s{j + 1}"] = float(s_th[order][j])
                    row[f"theory/p{j + 1}"] = float(p_th[order][j])
            tagged.log(int(k), row)
        tagged.flush()
        errors = end_errors(config, trained)
        F_end = float(np.linalg.norm(trained.F[-1])) if trained.steps.size else math.nan
        F_start = float(np.linalg.norm(trained.F[0])) if trained.steps.size else math.nan
        summary[f"{variant}/F_norm_ratio"] = F_end / F_start
        summary[f"{variant}/alignment"] = errors["alignment"]
        if variant in ("byol", "directpred"):
            for key, value in errors.items():
                summary[f"{variant}/error_{key}"] = value
            agreement = max(agreement, *errors.values())
        if variant == "byol":
            summary["byol/balance_residual_max"] = float(np.nanmax(residual))
        s_end, p_end = _spectra(trained.F[-1], trained.Wp[-1]) if trained.steps.size else (np.array([]),) * 2
        table.append({
            "variant": variant, "status": trained.status, "‖F_T‖/‖F_0‖": F_end / F_start,
            "alignment ‖[W_p,F]‖": errors["alignment"],
            "eig F (end)": ", ".join(f"{v:.4g}" for v in s_end),
            "eig W_p (end)": ", ".join(f"{v:.4g}" for v in p_end),
        })
    table.append({
        "variant": "theory (fixed point)",
        "eig F (end)": ", ".join(f"{v:.4g}" for v in s_th[order]),
        "eig W_p (end)": ", ".join(f"{v:.4g}" for v in p_th[order]),
    })
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


# --- report figures -----------------------------------------------------------------------------------
def noncontrastive_ssl_figures(store: Any, run_id: str) -> list[Any]:
    """BYOL's and DirectPred's eigenvalues against the fixed point; the alignment and the ablations' collapse;
    the agreement per quantity against the tolerance."""
    import plotly.graph_objects as go

    info = store.run_info(run_id)
    config = info.get("config") or {}
    lr = float(config.get("lr", 1.0))
    series = run_series(store, run_id, ["sim/*", "theory/*"])
    figs = []
    titles = (("byol", "BYOL: eigenvalues of F = WWᵀ (solid) and their fixed points (dashed)"),
              ("directpred", "DirectPred: eigenvalues of F (solid) and the fixed points (dashed)"))
    for variant, title in titles:
        fig = go.Figure()
        j = 1
        while f"sim/s{j}/variant={variant}" in series:
            for kind, dash in (("sim", "solid"), ("theory", "dash")):
                name = f"{kind}/s{j}/variant={variant}"
                if name in series:
                    x, y = series[name]
                    fig.add_trace(go.Scatter(x=lr * x, y=y, mode="lines", name=f"s{j} ({kind})",
                                             line={"color": mode_color(j - 1), "dash": dash, "width": 2}))
            j += 1
        if fig.data:
            fig.update_layout(title=title, xaxis_title="gradient-flow time t = lr·step",
                              yaxis_title="eigenvalue of F", template="plotly_white")
            figs.append(fig)
    fig = go.Figure()
    for k, variant in enumerate(VARIANTS):
        name = f"sim/alignment/variant={variant}"
        if name in series and variant in ("byol",):
            x, y = series[name]
            fig.add_trace(go.Scatter(x=lr * x, y=y, mode="lines", name=f"{variant}: ‖[W_p, F]‖/(‖W_p‖‖F‖)",
                                     line={"color": mode_color(k)}))
        name = f"sim/F_norm/variant={variant}"
        if name in series:
            x, y = series[name]
            fig.add_trace(go.Scatter(x=lr * x, y=y, mode="lines", name=f"{variant}: ‖F‖",
                                     line={"color": mode_color(k), "dash": "dot"}))
    if fig.data:
        fig.update_yaxes(type="log")
        fig.update_layout(title="Eigenspace alignment (BYOL) and collapse without predictor or stop-gradient",
                          xaxis_title="gradient-flow time t = lr·step",
                          yaxis_title="normalised commutator; ‖F‖_F", template="plotly_white")
        figs.append(fig)
    summary = info.get("summary") or {}
    errors = {k: float(v) for k, v in summary.items() if "/error_" in k and isinstance(v, int | float)}
    if errors:
        fig = go.Figure(go.Bar(x=list(errors), y=[max(v, 1e-17) for v in errors.values()], name="error"))
        tol = summary.get("tolerance")
        if isinstance(tol, int | float):
            fig.add_hline(y=float(tol), line_dash="dash", line_color="firebrick", annotation_text="tolerance")
        fig.update_yaxes(type="log")
        fig.update_layout(title="Agreement at the end of training: spectra, collapsed direction, alignment",
                          xaxis_title="variant / quantity", yaxis_title="relative error (log)",
                          template="plotly_white")
        figs.append(fig)
    return figs


EXPERIMENT = register(
    Experiment(NAME, DESCRIPTION, NoncontrastiveSSLConfig, run, QUICK, figures=(noncontrastive_ssl_figures,))
)
