r"""The three regimes of covariant gradient descent: α = 0 (SGD), ½ (scale-free, whitening), 1 (covariant).

``learndyn run regimes``. :class:`~learndyn.optim.CovariantGD` updates ``θ ← θ − lr·g⁻¹∇̂`` with
``g = (Ŝ + εI)^α`` and ``Ŝ`` the EMA covariance of the minibatch gradients (``moment='covariance'``,
``first_moment=False``; structures ``diag`` and ``full`` -- for these one-tensor models ``block`` is
``full``).
All tasks are linear regression on Gaussian inputs, where everything is known in closed form.

The task
--------
Online linear regression ``y = zᵀw_z + σε`` seen through ``x = Mz``, ``M = V diag(√h)``
(:mod:`~learndyn.phenomena._linear_regression`): a bias-free linear model ``f(x) = pᵀx`` from ``p = 0``,
loss ``½(f − y)²``, fresh minibatches of ``B`` samples each step. The input covariance ``H = MMᵀ`` has
condition number ``condition`` on its support; the excess loss ``½|Mᵀp − w_z|²`` is exact.

The key fact: with ``q = Mᵀp`` this is the *isotropic* problem in ``q``, seen through the linear
reparametrisation ``p = M^{−T}q`` (for ``r = d``). Gradient statistics transform as ``S_p = M S_q Mᵀ``, and
for α = 1 the full-structure update is covariant (the same ``q``-trajectory for every invertible ``M``, once
``Ŝ`` has full rank), so its learning speed does not depend on the condition number at all; α = 0 (SGD) is
not covariant and slows down ``∝ condition``; ``diag`` at α = 1 is covariant only for diagonal ``M``
(``rotate=False``). Loss scaling ``H → cH`` scales the update by ``c^{1−2α}``: α = ½ is the scale-free point.

1. Learning speed
-----------------
For each ``condition`` in ``conditions`` and each (α, structure), the steps until the excess loss first falls
below ``target`` times its initial value ``½`` (the same minibatches for every run: ``z`` and ``ε`` are drawn
from the same seed). Learning rates ``lrs`` are one per α, chosen on the isotropic problem and then kept
fixed. Reported: ``speed/<label>/kappa=<c>/steps_to_target`` and ``speed/<label>/slowdown`` (steps at the
largest over the smallest condition: ≈ 1 for α = 1 full, ≈ the condition ratio for α = 0). For α = 0 the
expected loss is exact, ``½ tr(H S_k)`` with ``S_k`` from
:func:`~learndyn.theory.sgd_stationary.sgd_second_moment_trajectory`: ``sim/excess_loss/a=0,kappa=<c>``
against ``theory/excess_loss/a=0,kappa=<c>``, and the predicted steps to target in the summary.

2. Stationary distribution of the weights (α = 0)
-------------------------------------------------
Near the minimum, SGD's weights fluctuate with the exact stationary covariance
(:func:`~learndyn.theory.sgd_stationary.sgd_stationary_covariance`, on the support of ``H``)

    Σ = V diag[(ησ²/B) / ((1 − κ)(2 − η(1 + 1/B)h_i))] Vᵀ,     κ = (η/B) Σ_j h_j/(2 − η(1 + 1/B)h_j),

the fixed point of the exact second-moment recursion ``S ← (I − ηH)S(I − ηH) + (η²/B)[HSH + tr(HS)H + σ²H]``
(a discrete Lyapunov equation). The small-``η`` (Langevin) limit solves ``HΣ + ΣH = ηC`` with SGD's noise
``C = σ²H/B``: ``Σ = T·I`` (on the support), ``T = ησ²/(2B)`` -- *not* the Gibbs/Boltzmann covariance
``T·H⁻¹``, which would need isotropic noise (Mandt, Hoffman & Blei 2017, "SGD as approximate Bayesian
inference"; Yaida 2019, "Fluctuation-dissipation relations for SGD"). ``chains`` independent models (one
vectorised loop; each gets exactly its own SGD step) start at the minimum; a probe measures their second
moment ``E[(p − p*)(p − p*)ᵀ]`` over time, against the exact trajectory (``sim|theory/weight_cov_trace``).
``stationary/trace_error`` is the relative error of the trace of the time-averaged second moment after
``burn_in`` steps, ``|tr Σ̂ − tr Σ| / tr Σ``; the summary adds the relative Frobenius error of the whole
matrix and the trace errors of the Langevin (``T·I``) and Gibbs (``T·H⁻¹``) forms. (α = 0 only; part 4
covers all three α.)

3. The update covariance and its effective dimension
----------------------------------------------------
With ``Ŝ ≈ C = Cov(∇̂)`` the update ``u = g⁻¹∇̂`` has covariance ``C^{1−2α}`` (full structure, on the
support of ``C``): α = 0 keeps the noise's anisotropy, α = ½ *whitens* it (``g⁻¹Cg⁻¹ = Π``, the projector
on the support of ``C``), α = 1 inverts it. ``diag`` at α = ½ whitens only the variances:
``D^{−½}CD^{−½}`` (the correlation matrix, ``D = diag C``). A probe keeps the last ``window`` updates
``u_k = (θ_k − θ_{k+1})/lr`` and reports the participation ratio ``PR = (Σλ)²/Σλ²`` of their covariance (the
effective dimension of the update subspace: ``r`` for a whitened update) over time, ``updates/pr/<run>``.
Near the minimum (``stat_*`` settings, support rank ``stat_rank < dim``) the measured PR is compared with the
prediction from ``C = σ²H/B`` (leading order in ``η``; for α = 0 the exact ``Cov(∇̂) = HΣH + (1/B)[HΣH +
tr(HΣ)H + σ²H]``): ``sim|theory/update_pr/<run>``, and for α = ½ full the whitening is reported as the
spread ``max/min`` of the update covariance's eigenvalues on the support and the fraction of update variance
outside it.

4. The α-stationary law, and 5. loss-scale invariance
-----------------------------------------------------
:mod:`~learndyn.phenomena._alpha_law`: near a minimum with noise ``C = sH`` the EMA-metric optimizer's
stationary covariance is ``(η/2) s (γsH)^{−α}`` for small ``η``, :func:`~learndyn.theory.covariant.
alpha_stationary` exactly; ``L → cL`` is ``L`` at learning rate ``c^{1−2α}η`` and damping ``ε/c²``. The
**agreement** is the worst relative error, over α = 0, ½, 1 and the covariance's eigenvalues, of the
finite-``η`` form against the simulation (``law/worst_error``, tolerance 1.5%).

Resuming: with a checkpointer on the recorder (a stored run's ``run.checkpointer``; its ``every`` sets the
interval) every loop checkpoints under its own key (``regimes-speed-<i>``, ``regimes-stationary-<i>``,
``regimes-chains``); the measured series travel inside the checkpoints.
The update-covariance window restarts empty after a resume; parts 4 and 5 are not checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learndyn.config import check_memory, check_run_fields
from learndyn.optim import STRUCTURES as OPTIM_STRUCTURES
from learndyn.optim import CovariantGD, OptimizerSpec
from learndyn.phenomena._alpha_law import (
    check_law_fields,
    law_figures,
    law_summary,
    scale_figures,
    scale_part,
)
from learndyn.phenomena._alpha_law import simulate_all as simulate_law
from learndyn.phenomena._chains import ChainLinear, ChainSecondMomentProbe, chains_loss
from learndyn.phenomena._linear_regression import (
    ExcessTracker,
    LinearTask,
    alpha0_expected_excess,
    half_mse,
    linear_model,
    make_task,
    spectrum,
    stationary_theory,
)
from learndyn.phenomena._loop_log import LoopLog
from learndyn.phenomena._stepwise import first_step
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.probes.monitor import Monitor
from learndyn.probes.updates import UpdateCovarianceProbe
from learndyn.store.recorder import Recorder
from learndyn.theory.covariant import participation_ratio, update_covariance
from learndyn.theory.sgd_stationary import (
    sgd_gradient_covariance,
    sgd_max_stable_lr,
    sgd_second_moment_trajectory,
)
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError, as_tuple, check_choice, check_int, check_real

NAME = "regimes"
DESCRIPTION = "CovariantGD at α = 0, ½, 1: conditioning, the α-stationary law Σ ∝ H^−α, whitening, loss scale"
F64 = torch.float64
STRUCTURES = tuple(name for name, s in OPTIM_STRUCTURES.items() if s.exact)
"""The structures whose metric is the exact statistic (``diag``, ``block``, ``full``): closed forms here."""


@dataclass
class RegimesConfig:
    """Sizes, learning rates and lengths of the three parts (see the module docstring).

    Shared: ``dim`` (``d``), ``alphas`` (must contain 0), ``structures`` (for α > 0; ``diag``, ``block``,
    ``full``), ``eps`` (metric damping), ``rotate`` (random eigenbasis of ``H``; ``False``: axis-aligned).
    Learning speed: ``conditions``, ``lrs`` (one per α), ``batch``, ``noise_std``, ``steps``, ``target``
    (fraction of the initial excess loss), ``beta2``, ``pr_window`` (updates in the PR window).
    Near the minimum: ``stat_condition``, ``stat_rank`` (support of ``H``), ``stat_noise_std``,
    ``stat_batch``, ``stat_lrs`` (one per α), ``stat_steps``, ``stat_window``, ``stat_beta2``; α = 0
    ensemble: ``chains``, ``chain_steps``, ``chain_every``, ``burn_in``. ``law_*`` (the α-law) and
    ``scale_*`` (loss scale): :func:`~learndyn.phenomena._alpha_law.check_law_fields`. ``seed``,
    ``tolerance`` (of the α-law figure).
    ``threads``: torch intra-op threads while it runs (the tensors are tiny: more threads only cost; ``None``
    leaves torch's setting).
    """

    dim: int = 8
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0)
    structures: tuple[str, ...] = ("diag", "full")
    eps: float = 1e-10
    rotate: bool = True
    conditions: tuple[float, ...] = (1.0, 10.0, 100.0)
    lrs: tuple[float, ...] = (0.5, 0.02, 1e-3)
    batch: int = 16
    noise_std: float = 0.05
    steps: int = 1000
    target: float = 0.01
    beta2: float = 0.99
    pr_window: int = 100
    stat_condition: float = 10.0
    stat_rank: int = 6
    stat_noise_std: float = 1.0
    stat_batch: int = 4
    stat_lrs: tuple[float, ...] = (0.1, 0.05, 0.02)
    stat_steps: int = 2000
    stat_window: int = 1500
    stat_beta2: float = 0.999
    chains: int = 1000
    chain_steps: int = 1000
    chain_every: int = 10
    burn_in: int = 300
    law_eigenvalues: tuple[float, ...] = (1.0, 0.25)
    law_angle: float = 0.7
    law_noise_std: float = 1.0
    law_batch: int = 4
    law_lrs: tuple[float, ...] = (0.4, 0.09, 0.025)
    law_small_lrs: tuple[float, ...] = (0.03, 0.012, 0.005)
    law_beta2: float = 0.99
    law_chains: int = 4000
    law_steps: int = 1000
    law_small_chains: int = 4000
    law_small_steps: int = 1000
    law_warmup: int = 100
    law_burn_in: float = 5.0
    law_oracle: bool = True
    law_small_tolerance: float = 0.05
    scale_factors: tuple[float, ...] = (0.01, 1.0, 100.0)
    scale_lrs: tuple[float, ...] = (0.005, 0.02, 1e-5)
    scale_condition: float = 10.0
    scale_steps: int = 100
    scale_eps: float = 1e-8
    seed: int = 0
    threads: int | None = 1
    tolerance: float = 0.015

    def __post_init__(self) -> None:
        owner = "RegimesConfig"
        check_int("dim", self.dim, low=1, high=64, owner=owner)
        self.alphas = as_tuple(
            "alphas", self.alphas, owner=owner, item=float, nonempty=True, low=0.0, high=1.0
        )
        if 0.0 not in self.alphas or len(set(self.alphas)) != len(self.alphas):
            raise LearndynValueError(
                f"{owner}.alphas={self.alphas!r} is not allowed; "
                "allowed: distinct values in [0, 1] including 0"
            )
        self.structures = as_tuple("structures", self.structures, owner=owner, nonempty=True)
        for s in self.structures:
            check_choice("structures", s, STRUCTURES, owner=owner)
        if len(set(self.structures)) != len(self.structures):
            raise LearndynValueError(
                f"{owner}.structures={self.structures!r} repeats; allowed: distinct names"
            )
        self.eps = check_real("eps", self.eps, low=0.0, owner=owner)
        if not isinstance(self.rotate, bool):
            raise LearndynValueError(f"{owner}.rotate={self.rotate!r} is not allowed; allowed: True, False")
        self.conditions = as_tuple(
            "conditions", self.conditions, owner=owner, item=float, nonempty=True, low=1.0
        )
        for name in ("lrs", "stat_lrs"):
            values = as_tuple(
                name, getattr(self, name), owner=owner, item=float, nonempty=True, low=0.0, low_open=True
            )
            if len(values) != len(self.alphas):
                raise LearndynValueError(
                    f"{owner}.{name} has {len(values)} values; allowed: one per alpha ({len(self.alphas)})"
                )
            setattr(self, name, values)
        for name in ("batch", "stat_batch", "steps", "stat_steps", "chain_steps", "chain_every"):
            check_int(name, getattr(self, name), low=1, owner=owner)
        check_int("chains", self.chains, low=2, owner=owner)
        check_int("pr_window", self.pr_window, low=2, high=self.steps, owner=owner)
        check_int("stat_window", self.stat_window, low=2, high=self.stat_steps, owner=owner)
        check_int("stat_rank", self.stat_rank, low=1, high=self.dim, owner=owner)
        check_int("burn_in", self.burn_in, low=0, high=self.chain_steps - self.chain_every, owner=owner)
        check_run_fields(self, owner)
        check_memory(owner, 8.0 * self.chains * self.dim**2, ("chains", "dim"))  # a lower bound
        for name in ("noise_std", "stat_noise_std"):
            setattr(self, name, check_real(name, getattr(self, name), low=0.0, low_open=True, owner=owner))
        self.stat_condition = check_real("stat_condition", self.stat_condition, low=1.0, owner=owner)
        self.target = check_real(
            "target", self.target, low=0.0, high=1.0, low_open=True, high_open=True, owner=owner
        )
        for name in ("beta2", "stat_beta2"):
            value = check_real(name, getattr(self, name), low=0.0, high=1.0, high_open=True, owner=owner)
            setattr(self, name, value)
        check_law_fields(self, owner)
        h = spectrum(self.stat_rank, self.stat_condition)
        lr0 = self.stat_lrs[self.alphas.index(0.0)]
        if lr0 >= sgd_max_stable_lr(np.diag(h), self.stat_batch):
            raise LearndynValueError(
                f"{owner}.stat_lrs[alpha=0]={lr0!r} is out of range; "
                f"allowed: < {sgd_max_stable_lr(np.diag(h), self.stat_batch):.4g} (SGD variance diverges)"
            )


QUICK = {
    "structures": ("full",),
    "conditions": (1.0, 100.0),
    "steps": 600,
    "stat_steps": 1200,
    "stat_window": 1000,
    "chains": 500,
    "chain_steps": 800,
    "law_chains": 2000,
    "law_steps": 500,
    "law_small_chains": 1000,
    "law_small_steps": 500,
    "law_oracle": False,
    "scale_steps": 50,
}
"""The test-size configuration (``--quick``)."""


def make_optimizer(
    params: Any, alpha: float, structure: str, lr: float, beta2: float, eps: float
) -> CovariantGD:
    """CovariantGD with the covariance moment and no first moment: ``θ ← θ − lr (Ŝ + εI)^{−α} ∇̂``."""
    spec = OptimizerSpec.covariant(structure, alpha, moment="covariance", first_moment=False)
    return spec.build(params, lr, betas=(0.9, beta2), eps=eps)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- 1. learning speed


def run_label(alpha: float, structure: str) -> str:
    """``a=<α>`` for α = 0 (the structure does not matter), ``a=<α>,<structure>`` otherwise."""
    return f"a={alpha:g}" if alpha == 0.0 else f"a={alpha:g},{structure}"


def _runs(config: RegimesConfig) -> list[tuple[float, str, int]]:
    """(α, structure, index of α) of every optimizer: α = 0 once (``diag``), others per structure."""
    out = []
    for i, alpha in enumerate(config.alphas):
        for structure in ("diag",) if alpha == 0.0 else config.structures:
            out.append((alpha, structure, i))
    return out


def _speed_run(
    config: RegimesConfig,
    index: int,
    alpha: float,
    structure: str,
    lr: float,
    condition: float,
    recorder: Recorder,
) -> dict[str, Any]:
    label = run_label(alpha, structure)
    tag = f"{label},kappa={condition:g}"
    log = LoopLog(recorder, tag)
    task = make_task(
        config.dim, condition, config.dim, config.noise_std, config.batch, config.seed, config.rotate
    )
    model = linear_model(config.dim)
    opt = make_optimizer(model.parameters(), alpha, structure, lr, config.beta2, config.eps)
    every = max(1, config.steps // 100)
    probe = UpdateCovarianceProbe(config.pr_window, every)
    monitor = Monitor(model, half_mse, probes=[probe], recorder=log, optimizer=opt)
    name = "sim/excess_loss" if alpha == 0.0 else "speed/excess_loss"
    tracker = ExcessTracker(task, model, monitor, log, every, name)
    # the same batches for every run
    loop = train_loop(
        model, opt, task.sample, half_mse, config.steps,
        generator=torch.Generator().manual_seed(config.seed * 7919 + 12), recorder=log, monitor=tracker,
        log_every=every, checkpointer=log.checkpointer, key=f"regimes-speed-{index}", prefix="speed/",
        progress=f"{NAME}: speed {tag}",
    )
    if loop.status == "completed":
        excess = task.excess_loss(model.weight)
        log.keep(config.steps, {"excess": excess})
        log.log(config.steps, {name: excess})
    monitor.close()
    steps, excess = log.series("excess")
    level = config.target * 0.5
    out: dict[str, Any] = {
        "label": label,
        "condition": condition,
        "lr": lr,
        "status": loop.status,
        "steps_to_target": first_step(steps, excess, level, below=True),
        "final_excess": float(excess[-1]),
    }
    _, pr = log.series("updates/pr")
    out["final_pr"] = float(pr[-1]) if pr.size else float("nan")
    if alpha == 0.0:
        logged, _ = log.series(name)
        theory = alpha0_expected_excess(task, lr, logged)
        for s, v in zip(logged, theory, strict=True):
            log.log(int(s), {"theory/excess_loss": float(v)})
        full = alpha0_expected_excess(task, lr, np.arange(config.steps + 1))
        out["steps_to_target_theory"] = first_step(np.arange(config.steps + 1), full, level, below=True)
    log.flush()
    return out


# ------------------------------------------------------------------------- 2. stationary covariance (α = 0)


def _stationary_task(config: RegimesConfig) -> LinearTask:
    """The task near the minimum (parts 2 and 3): ``stat_condition`` on a rank-``stat_rank`` support."""
    args = (config.stat_condition, config.stat_rank, config.stat_noise_std, config.stat_batch)
    return make_task(config.dim, *args, config.seed, config.rotate)


def _chain_run(config: RegimesConfig, recorder: Recorder) -> dict[str, Any]:
    log = LoopLog(recorder)
    lr = config.stat_lrs[config.alphas.index(0.0)]
    task = _stationary_task(config)
    model = ChainLinear(config.chains, task.p_star)
    opt = make_optimizer(model.parameters(), 0.0, "diag", lr, config.stat_beta2, config.eps)
    probe = ChainSecondMomentProbe(config.chain_every, task.p_star)
    monitor = Monitor(model, chains_loss, probes=[probe], recorder=log, optimizer=opt)

    def sample(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return task.sample(gen, (config.chains,))

    loop = train_loop(
        model, opt, sample, chains_loss, config.chain_steps,
        generator=torch.Generator().manual_seed(config.seed * 7919 + 13), recorder=log, monitor=monitor,
        log_every=config.chain_every, checkpointer=log.checkpointer, key="regimes-chains", prefix="chains/",
        progress=f"{NAME}: stationary covariance",
    )
    if loop.status == "completed":
        monitor.after_step(config.chain_steps, sample(torch.Generator().manual_seed(0)))
    monitor.close()
    steps, moments = log.array_series("chains/second_moment")
    V, h = task.V.numpy(), task.h.numpy()
    trajectory = sgd_second_moment_trajectory(
        np.diag(h), lr, task.batch, task.noise_std**2, np.zeros((h.size, h.size)), steps
    )
    trace_theory = np.einsum("tii->t", trajectory)
    _, trace_sim = log.series("chains/trace")
    for k, s in enumerate(steps):
        log.log(
            int(s),
            {"sim/weight_cov_trace": float(trace_sim[k]), "theory/weight_cov_trace": float(trace_theory[k])},
        )
    log.flush()
    late = steps >= config.burn_in
    estimate = np.mean(np.stack(moments)[late], axis=0)
    forms = stationary_theory(task, lr)
    exact = forms["exact"]
    tr = float(np.trace(exact))
    out: dict[str, Any] = {
        "trace": float(np.trace(estimate)),
        "trace_theory": tr,
        "trace_error": abs(float(np.trace(estimate)) - tr) / tr if loop.status == "completed" else math.inf,
        "matrix_error": float(np.linalg.norm(estimate - exact) / np.linalg.norm(exact)),
        "trace_langevin": float(np.trace(forms["langevin"])),
        "trace_gibbs": float(np.trace(forms["gibbs"])),
        "lr": lr,
        "status": loop.status,
    }
    out["langevin_error"] = abs(out["trace"] - out["trace_langevin"]) / out["trace_langevin"]
    out["gibbs_error"] = abs(out["trace"] - out["trace_gibbs"]) / out["trace_gibbs"]
    # the shape: in H's eigenbasis the variances are flat (T·I), not ∝ 1/h (Gibbs)
    variances = np.einsum("di,de,ei->i", V, estimate, V)
    out["variance_spread"] = float(variances.max() / variances.min())
    out["variance_spread_theory"] = float(np.max(np.diag(V.T @ exact @ V)) / np.min(np.diag(V.T @ exact @ V)))
    out["variance_spread_gibbs"] = float(h.max() / h.min())
    return out


# --------------------------------------------------------------------- 3. update covariance near the minimum


def _stationary_run(
    config: RegimesConfig, index: int, alpha: float, structure: str, lr: float, recorder: Recorder
) -> dict[str, Any]:
    label = run_label(alpha, structure)
    log = LoopLog(recorder, f"{label},stationary")
    task = _stationary_task(config)
    model = linear_model(config.dim, task.p_star)
    opt = make_optimizer(model.parameters(), alpha, structure, lr, config.stat_beta2, config.eps)
    every = max(1, config.stat_steps // 50)
    probe = UpdateCovarianceProbe(config.stat_window, every)
    monitor = Monitor(model, half_mse, probes=[probe], recorder=log, optimizer=opt)
    loop = train_loop(
        model, opt, task.sample, half_mse, config.stat_steps,
        generator=torch.Generator().manual_seed(config.seed * 7919 + 14 + index), recorder=log,
        monitor=monitor, log_every=every, checkpointer=log.checkpointer, key=f"regimes-stationary-{index}",
        prefix="stationary/", progress=f"{NAME}: updates {label}",
    )
    if loop.status == "completed":
        monitor.after_step(config.stat_steps, task.sample(torch.Generator().manual_seed(0)))
    monitor.close()
    sigma = stationary_theory(task, lr)["exact"] if alpha == 0.0 else None
    C = sgd_gradient_covariance(task.H, sigma, task.noise_std**2, task.batch)  # sigma None: leading order
    predicted = update_covariance(C, alpha, structure)
    pr_theory = participation_ratio(np.linalg.eigvalsh(predicted))
    steps, pr = log.series("updates/pr")
    for s, v in zip(steps, pr, strict=True):
        log.log(int(s), {"sim/update_pr": float(v), "theory/update_pr": pr_theory})
    log.flush()
    _, eigs = log.array_series("updates/cov_eigs")
    r = config.stat_rank
    final = eigs[-1] if eigs else np.full(config.dim, np.nan)
    return {
        "label": label,
        "pr": float(pr[-1]) if pr.size else float("nan"),
        "pr_theory": pr_theory,
        "support_spread": float(final[0] / final[r - 1]),
        "off_support": float(np.sum(final[r:]) / np.sum(final)) if r < final.size else 0.0,
        "status": loop.status,
    }


# ------------------------------------------------------------------------------------------------------ run


@threaded
def run(config: RegimesConfig, recorder: Recorder) -> ExperimentResult:
    """Learning speed, stationary covariance and update covariance (module docstring); agreement = part 2."""
    summary: dict[str, float] = {}
    table: list[dict[str, Any]] = []
    runs = _runs(config)
    index = 0
    for alpha, structure, i in runs:
        by_condition = []
        for condition in config.conditions:
            r = _speed_run(config, index, alpha, structure, config.lrs[i], condition, recorder)
            index += 1
            by_condition.append(r)
            key = f"speed/{r['label']}/kappa={condition:g}"
            summary[f"{key}/steps_to_target"] = r["steps_to_target"]
            summary[f"{key}/final_update_pr"] = r["final_pr"]
            row = {
                "part": "speed",
                "optimizer": r["label"],
                "lr": r["lr"],
                "condition": condition,
                "steps_to_target": r["steps_to_target"],
                "final_excess": r["final_excess"],
                "update_pr": r["final_pr"],
                "status": r["status"],
            }
            if "steps_to_target_theory" in r:
                summary[f"{key}/steps_to_target_theory"] = r["steps_to_target_theory"]
                row["theory"] = r["steps_to_target_theory"]
            table.append(row)
        first, last = by_condition[0]["steps_to_target"], by_condition[-1]["steps_to_target"]
        summary[f"speed/{run_label(alpha, structure)}/slowdown"] = last / first if first > 0 else float("nan")

    chains = _chain_run(config, recorder)
    summary.update({f"stationary/{k}": float(v) for k, v in chains.items() if k != "status"})
    table.append(
        {
            "part": "stationary Σ (α=0)",
            "optimizer": "a=0",
            "lr": chains["lr"],
            "measured": chains["trace"],
            "theory": chains["trace_theory"],
            "rel_error": chains["trace_error"],
            "note": f"Langevin T·I off by {chains['langevin_error']:.3f}, Gibbs T·H⁻¹ by "
            f"{chains['gibbs_error']:.3f}",
        }
    )

    for k, (alpha, structure, i) in enumerate(runs):
        u = _stationary_run(config, k, alpha, structure, config.stat_lrs[i], recorder)
        key = f"updates/{u['label']}"
        summary[f"{key}/pr"] = u["pr"]
        summary[f"{key}/pr_theory"] = u["pr_theory"]
        summary[f"{key}/support_spread"] = u["support_spread"]
        summary[f"{key}/off_support"] = u["off_support"]
        table.append(
            {
                "part": "update PR",
                "optimizer": u["label"],
                "lr": config.stat_lrs[i],
                "measured": u["pr"],
                "theory": u["pr_theory"],
                "rel_error": abs(u["pr"] - u["pr_theory"]) / u["pr_theory"],
                "note": f"eig max/min on support {u['support_spread']:.2f}, "
                f"off support {u['off_support']:.1e}",
            }
        )

    law, rows, agreement = law_summary(config, simulate_law(config))
    summary.update(law)
    table.extend(rows)
    scale, rows, _ = scale_part(config, recorder)
    summary.update(scale)
    table.extend(rows)
    summary["agreement"] = agreement
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


def regimes_figures(store: Any, run_id: str) -> list[Any]:
    """Report figure: steps to target against the condition number, one line per optimizer (log-log)."""
    import plotly.graph_objects as go

    summary = store.run_info(run_id)["summary"] or {}
    curves: dict[str, list[tuple[float, float]]] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if (
            len(parts) == 4
            and parts[0] == "speed"
            and parts[3] in ("steps_to_target", "steps_to_target_theory")
        ):
            label = parts[1] + (" (theory)" if parts[3].endswith("theory") else "")
            if isinstance(value, int | float) and math.isfinite(value):
                curves.setdefault(label, []).append((float(parts[2].split("=", 1)[1]), float(value)))
    fig = go.Figure()
    for label, points in sorted(curves.items()):
        points.sort()
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                name=label,
                mode="lines+markers",
                line={"dash": "dash" if "theory" in label else "solid"},
            )
        )
    fig.update_layout(
        title="Steps to target vs condition number (α = 1 full: flat; α = 0: ∝ condition)",
        xaxis_title="condition number",
        yaxis_title="steps to target",
        xaxis_type="log",
        yaxis_type="log",
    )
    return [fig]


EXPERIMENT = register(
    Experiment(
        NAME, DESCRIPTION, RegimesConfig, run, QUICK, figures=(regimes_figures, law_figures, scale_figures)
    )
)
