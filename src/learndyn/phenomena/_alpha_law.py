r"""Parts 4 and 5 of :mod:`~learndyn.phenomena.regimes`: the α-stationary law and loss-scale invariance.

4. The α-stationary law
-----------------------
Near the minimum of 2-D Gaussian linear regression (input covariance ``H`` with eigenvalues
``law_eigenvalues`` in a basis rotated by ``law_angle``, label noise ``σ`` = ``law_noise_std``, minibatch
``B`` = ``law_batch``, so the gradient noise at the minimum is ``C = sH``, ``s = σ²/B``), ``law_chains``
independent copies of ``CovariantGD(full, moment='covariance', first_moment=False)`` with the EMA metric
(:mod:`~learndyn.phenomena._metric_chains`, step for step the optimizer's arithmetic) run from the minimum:
``law_warmup`` steps at learning rate 0 (the statistic fills), a burn-in of ``law_burn_in`` times the slower
of the EMA's time constant ``1/(1 − β₂)`` and the slowest mode's variance relaxation ``1/(2q_min)``, then
``law_steps`` steps over which ``E[eeᵀ]`` is averaged over time and chains. Its eigenvalues (in ``H``'s
eigenbasis) are compared with

* the finite-``η`` closed form :func:`~learndyn.theory.covariant.alpha_stationary` (the discrete Lyapunov
  equation with the metric and SGD's multiplicative noise, the metric being the statistic's stationary
  mean) at the learning rates ``law_lrs`` (one per α; moderate, so the chains mix fast). The **agreement**
  of the experiment is the worst relative error over α and eigenvalues;
* the small-``η`` law ``Σ_α = (η/2) s (γsH)^{−α}`` (:func:`~learndyn.theory.covariant.alpha_law_covariance`,
  ``γ = 2β₁²/(1 + β₁)``) at the smaller ``law_small_lrs``, against the bound ``law_small_tolerance``; the
  finite-``η`` error there is reported too.

With ``law_oracle`` the chains are rerun with the same random numbers and the EMA metric replaced by the
theory's fixed metric: ``law/finite/a=<α>/ema_bias`` is the relative change the statistic's fluctuations
(and their correlation with the state) make to the variances.

5. Loss-scale invariance
------------------------
``L → cL`` scales the gradient by ``c`` and the statistic by ``c²``, so the step ``η(c²Ŝ + εI)^{−α}c∇`` is
the step at scale 1 with learning rate ``c^{1−2α}η`` and damping ``ε/c²``: only α = ½ (with ``ε = 0``) leaves
the trajectory unchanged. For each α and ``c`` in ``scale_factors`` the real optimizer
(:class:`~learndyn.optim.CovariantGD`, ``full``, ``ε = 0``) trains the speed task (condition
``scale_condition``) for ``scale_steps`` steps on the same minibatches at learning rate ``scale_lrs[α]``.
Reported: ``scale/a=<α>/c=<c>/deviation``, the largest distance of the trajectory from the one at scale 1
and the same learning rate (0 only at α = ½), and ``scale/a=<α>/c=<c>/predicted_deviation``, its distance
from the scale-1 trajectory at learning rate ``c^{1−2α}η`` (the prediction: 0 up to rounding), both relative
to ``|p*|``; ``scale/agreement`` is the worst predicted deviation. With ``scale_eps > 0``:
``scale/eps/deviation`` is how far ``ε`` moves α = ½ at ``c = min(scale_factors)`` off the scale-1 run, and
``scale/eps/equivalence`` the distance of that run from the scale-1 run with damping ``ε/c²`` (0 up to
rounding: ε is the only thing that breaks the invariance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from learndyn.optim import CovariantGD, OptimizerSpec
from learndyn.phenomena._figures import mode_color, run_series
from learndyn.phenomena._linear_regression import half_mse, linear_model, make_task
from learndyn.phenomena._loop_log import LoopLog
from learndyn.phenomena._metric_chains import ChainsSetup, stationary_second_moment
from learndyn.store.recorder import Recorder
from learndyn.theory import covariant as cov
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

BETA1 = 0.9
"""The first-moment decay of the regimes optimizers (``betas=(0.9, β₂)``)."""


def law_setup(config: Any, alpha: float, lr: float) -> ChainsSetup:
    e = tuple(float(v) for v in config.law_eigenvalues)
    return ChainsSetup(
        (e[0], e[1]), config.law_angle, config.law_noise_std, config.law_batch, alpha, lr, BETA1,
        config.law_beta2, config.eps,
    )


def check_law_fields(config: Any, owner: str) -> None:
    """Validate (and normalise) the ``law_*`` and ``scale_*`` fields of a regimes config, and that every α has
    a stationary covariance at its ``law_lrs`` and ``law_small_lrs``.

    ``law_eigenvalues`` (2, of ``H``), ``law_angle`` (its eigenbasis's rotation), ``law_noise_std``,
    ``law_batch``, ``law_lrs`` (finite-η check, one per α), ``law_small_lrs`` (small-η law, one per α),
    ``law_beta2``, ``law_chains``/``law_steps`` and ``law_small_chains``/``law_small_steps`` (chains, and
    steps averaged), ``law_warmup`` (steps at lr 0 while the statistic fills), ``law_burn_in`` (in the slower
    of the EMA's and the slowest mode's time constants), ``law_oracle`` (rerun with the theory's metric),
    ``law_small_tolerance``; ``scale_factors``, ``scale_lrs`` (one per α), ``scale_condition``,
    ``scale_steps``, ``scale_eps`` (ε of the ε-breaks-invariance check; the figure uses ε = 0).
    """
    ev = as_tuple(
        "law_eigenvalues", config.law_eigenvalues, owner=owner, item=float, low=0.0, low_open=True
    )
    if len(ev) != 2:
        raise LearndynValueError(f"{owner}.law_eigenvalues has {len(ev)} values; allowed: 2 (a 2-D task)")
    config.law_eigenvalues = ev
    config.law_angle = check_real("law_angle", config.law_angle, owner=owner)
    config.law_noise_std = check_real(
        "law_noise_std", config.law_noise_std, low=0.0, low_open=True, owner=owner
    )
    for name in ("law_batch", "law_chains", "law_steps", "law_small_chains", "law_small_steps",
                 "scale_steps"):
        check_int(name, getattr(config, name), low=2 if "chains" in name else 1, owner=owner)
    check_int("law_warmup", config.law_warmup, low=0, owner=owner)
    config.law_beta2 = check_real(
        "law_beta2", config.law_beta2, low=0.0, high=1.0, high_open=True, owner=owner
    )
    config.law_burn_in = check_real("law_burn_in", config.law_burn_in, low=0.0, owner=owner)
    config.law_small_tolerance = check_real(
        "law_small_tolerance", config.law_small_tolerance, low=0.0, low_open=True, owner=owner
    )
    if not isinstance(config.law_oracle, bool):
        raise LearndynValueError(
            f"{owner}.law_oracle={config.law_oracle!r} is not allowed; allowed: True, False"
        )
    config.scale_factors = as_tuple(
        "scale_factors", config.scale_factors, owner=owner, item=float, nonempty=True, low=0.0,
        low_open=True,
    )
    config.scale_condition = check_real("scale_condition", config.scale_condition, low=1.0, owner=owner)
    config.scale_eps = check_real("scale_eps", config.scale_eps, low=0.0, owner=owner)
    for name in ("law_lrs", "law_small_lrs", "scale_lrs"):
        values = as_tuple(
            name, getattr(config, name), owner=owner, item=float, nonempty=True, low=0.0, low_open=True
        )
        if len(values) != len(config.alphas):
            raise LearndynValueError(
                f"{owner}.{name} has {len(values)} values; allowed: one per alpha ({len(config.alphas)})"
            )
        setattr(config, name, values)
    for name in ("law_lrs", "law_small_lrs"):
        for alpha, lr in zip(config.alphas, getattr(config, name), strict=True):
            try:
                law_theory(config, alpha, lr)
            except LearndynValueError as err:
                raise LearndynValueError(f"{owner}.{name}: at alpha={alpha:g}, {err}") from None


def law_theory(config: Any, alpha: float, lr: float) -> cov.AlphaStationary:
    """The finite-``η`` closed form for the chains (module-level lookups, so tests can perturb them)."""
    return cov.alpha_stationary(
        law_setup(config, alpha, lr).H, lr, alpha, config.law_noise_std**2, config.law_batch,
        moment="covariance", beta1=BETA1, eps=config.eps,
    )


def law_small_eta(config: Any, alpha: float, lr: float, basis: np.ndarray) -> np.ndarray:
    """The small-``η`` law's variances in ``basis`` (columns: ``H``'s eigenvectors, ascending)."""
    H = law_setup(config, alpha, lr).H
    s = config.law_noise_std**2 / config.law_batch
    sigma = cov.alpha_law_covariance(H, s, alpha, lr, cov.covariance_gain(BETA1))
    return np.diag(basis.T @ sigma @ basis)


@dataclass(frozen=True)
class LawRun:
    """One simulated (α, η): the variances in ``H``'s eigenbasis (ascending eigenvalues), their standard
    errors over chain groups, the off-diagonal correlation there, and the chain-steps averaged."""

    alpha: float
    lr: float
    regime: str  # "finite" or "small"
    basis: np.ndarray
    variances: np.ndarray
    stderr: np.ndarray
    correlation: float
    steps: int
    oracle_variances: np.ndarray | None = None


def burn_in_steps(config: Any, alpha: float, lr: float) -> int:
    """``law_burn_in`` × the slower of ``1/(1 − β₂)`` (α > 0) and ``1/(2 q_min)`` steps."""
    th = law_theory(config, alpha, lr)
    q_min = float(np.min(lr * th.inv_metric * th.eigenvalues))
    slow = max(1.0 / (2.0 * q_min), 1.0 / (1.0 - config.law_beta2) if alpha > 0 else 0.0)
    return math.ceil(config.law_burn_in * slow)


def simulate_law(config: Any, alpha: float, lr: float, regime: str, oracle: bool) -> LawRun:
    setup = law_setup(config, alpha, lr)
    th = law_theory(config, alpha, lr)
    chains = config.law_chains if regime == "finite" else config.law_small_chains
    steps = config.law_steps if regime == "finite" else config.law_small_steps
    warmup = config.law_warmup if alpha > 0 else 0
    seed = config.seed * 7919 + 31 + round(1e6 * alpha) + (0 if regime == "finite" else 17)
    args = (setup, chains, warmup, burn_in_steps(config, alpha, lr), steps, seed)
    est = stationary_second_moment(*args)
    V = th.basis
    var = np.diag(V.T @ est.second_moment @ V)
    groups = np.array([np.diag(V.T @ g @ V) for g in est.groups])
    stderr = groups.std(0, ddof=1) / math.sqrt(len(groups)) / var
    off = float((V.T @ est.second_moment @ V)[0, 1] / math.sqrt(var[0] * var[1]))
    oracle_var = None
    if oracle and alpha > 0:
        fixed = (V * th.inv_metric) @ V.T
        o = stationary_second_moment(*args, oracle=fixed)
        oracle_var = np.diag(V.T @ o.second_moment @ V)
    return LawRun(alpha, lr, regime, V, var, stderr, off, est.chain_steps, oracle_var)


def simulate_all(config: Any) -> list[LawRun]:
    """Every α at ``law_lrs`` (finite) and ``law_small_lrs`` (small); the simulation only, no theory."""
    runs = []
    for i, alpha in enumerate(config.alphas):
        runs.append(simulate_law(config, alpha, config.law_lrs[i], "finite", config.law_oracle))
        runs.append(simulate_law(config, alpha, config.law_small_lrs[i], "small", False))
    return runs


def runs_from_summary(config: Any, summary: dict[str, Any]) -> list[LawRun]:
    """The simulated variances of a finished run back as :class:`LawRun` (no oracle), to recompute the
    comparison with another theory (e.g. a deliberately wrong one) without simulating again."""
    runs = []
    for i, alpha in enumerate(config.alphas):
        for regime, lr in (("finite", config.law_lrs[i]), ("small", config.law_small_lrs[i])):
            th = law_theory(config, alpha, lr)
            key = f"law/{regime}/a={alpha:g}"
            var = np.array([summary[f"{key}/sim_var/lambda={lam:g}"] for lam in th.eigenvalues])
            se = np.array([summary[f"{key}/stderr/lambda={lam:g}"] for lam in th.eigenvalues])
            runs.append(LawRun(alpha, lr, regime, th.basis, var, se, summary[f"{key}/correlation"], 0))
    return runs


def law_summary(config: Any, runs: list[LawRun]) -> tuple[dict[str, float], list[dict[str, Any]], float]:
    """Compare ``runs`` with the theory: ``(summary, table rows, agreement)``; the agreement is the worst
    relative error of the finite-``η`` form over the ``finite`` runs (every α, every eigenvalue)."""
    summary: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    worst = 0.0
    for r in runs:
        th = law_theory(config, r.alpha, r.lr)
        law = law_small_eta(config, r.alpha, r.lr, r.basis)
        key = f"law/{r.regime}/a={r.alpha:g}"
        finite_err = np.abs(r.variances / th.variances - 1.0)
        law_err = np.abs(r.variances / law - 1.0)
        if not np.all(np.isfinite(finite_err)):
            finite_err = np.full_like(finite_err, math.inf)
        summary[f"{key}/lr"] = r.lr
        summary[f"{key}/kappa"] = th.kappa
        for lam, v, t, s0, se in zip(th.eigenvalues, r.variances, th.variances, law, r.stderr, strict=True):
            summary[f"{key}/sim_var/lambda={lam:g}"] = float(v)
            summary[f"{key}/theory_var/lambda={lam:g}"] = float(t)
            summary[f"{key}/law_var/lambda={lam:g}"] = float(s0)
            summary[f"{key}/stderr/lambda={lam:g}"] = float(se)
        summary[f"{key}/error"] = float(finite_err.max())
        summary[f"{key}/law_error"] = float(law_err.max())
        summary[f"{key}/correlation"] = r.correlation
        if r.oracle_variances is not None:
            bias = r.variances / r.oracle_variances - 1.0
            summary[f"{key}/ema_bias"] = float(bias[np.argmax(np.abs(bias))])
            summary[f"{key}/oracle_error"] = float(np.max(np.abs(r.oracle_variances / th.variances - 1.0)))
        if r.regime == "finite":
            worst = max(worst, float(finite_err.max()))
        rows.append(
            {
                "part": f"α-law ({'finite η' if r.regime == 'finite' else 'small η'})",
                "optimizer": f"a={r.alpha:g},full",
                "lr": r.lr,
                "measured": " ".join(f"{v:.4g}" for v in r.variances),
                "theory": " ".join(f"{v:.4g}" for v in th.variances),
                "rel_error": float(finite_err.max()),
                "note": f"small-η law off by {law_err.max():.3f} (bound {config.law_small_tolerance:g}); "
                f"s.e. {r.stderr.max():.1e}",
            }
        )
    summary["law/worst_error"] = worst
    small = [summary[f"law/small/a={a:g}/law_error"] for a in config.alphas]
    summary["law/small_law_worst_error"] = float(max(small))
    return summary, rows, worst


# -------------------------------------------------------------------------------- 5. loss-scale invariance


def _scale_optimizer(params: Any, alpha: float, lr: float, beta2: float, eps: float) -> CovariantGD:
    spec = OptimizerSpec.covariant("full", alpha, moment="covariance", first_moment=False)
    return spec.build(params, lr, betas=(BETA1, beta2), eps=eps)  # type: ignore[return-value]


def scale_trajectory(
    config: Any, alpha: float, scale: float, lr: float, eps: float, log: LoopLog | None = None
) -> np.ndarray:
    """The weights ``(scale_steps + 1, dim)`` of CovariantGD on ``scale · L`` (same minibatches every call);
    with ``log``, the excess loss every step as ``scale/excess_loss``."""
    task = make_task(
        config.dim, config.scale_condition, config.dim, config.noise_std, config.batch, config.seed,
        config.rotate,
    )
    model = linear_model(config.dim)
    opt = _scale_optimizer(model.parameters(), alpha, lr, config.beta2, eps)
    gen = torch.Generator().manual_seed(config.seed * 7919 + 41)
    out = [model.weight.detach().reshape(-1).clone()]
    for k in range(config.scale_steps):
        x, y = task.sample(gen)
        opt.zero_grad()
        (scale * half_mse(model(x), y)).backward()
        opt.step()
        out.append(model.weight.detach().reshape(-1).clone())
        if log is not None:
            log.log(k + 1, {"scale/excess_loss": task.excess_loss(model.weight)})
    return torch.stack(out).numpy()


def scale_part(config: Any, recorder: Recorder) -> tuple[dict[str, float], list[dict[str, Any]], float]:
    """Part 5 (module docstring): ``(summary, table rows, worst predicted deviation)``."""
    task = make_task(config.dim, config.scale_condition, config.dim, config.noise_std, config.batch,
                     config.seed, config.rotate)
    norm = float(task.p_star.norm())
    summary: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    worst = 0.0
    for i, alpha in enumerate(config.alphas):
        lr = config.scale_lrs[i]
        base = scale_trajectory(config, alpha, 1.0, lr, 0.0)
        for c in config.scale_factors:
            log = LoopLog(recorder, f"a={alpha:g},c={c:g}")
            traj = scale_trajectory(config, alpha, c, lr, 0.0, log)
            log.flush()
            factor = c ** (1.0 - 2.0 * alpha)
            ref = base if factor == 1.0 else scale_trajectory(config, alpha, 1.0, lr * factor, 0.0)
            dev = float(np.max(np.linalg.norm(traj - base, axis=1)) / norm)
            pred = float(np.max(np.linalg.norm(traj - ref, axis=1)) / norm)
            if not math.isfinite(pred):
                pred = math.inf
            key = f"scale/a={alpha:g}/c={c:g}"
            summary[f"{key}/deviation"] = dev
            summary[f"{key}/predicted_deviation"] = pred
            worst = max(worst, pred)
            rows.append(
                {
                    "part": "loss scale",
                    "optimizer": f"a={alpha:g},full",
                    "lr": lr,
                    "condition": c,
                    "measured": dev,
                    "theory": 0.0 if alpha == 0.5 else None,
                    "rel_error": pred,
                    "note": f"step × c^(1−2α) = {factor:g}: same trajectory as scale 1 at lr×{factor:g}",
                }
            )
    summary["scale/agreement"] = worst
    if config.scale_eps > 0 and 0.5 in config.alphas:
        lr = config.scale_lrs[config.alphas.index(0.5)]
        c, eps = min(config.scale_factors), config.scale_eps
        base = scale_trajectory(config, 0.5, 1.0, lr, eps)
        scaled = scale_trajectory(config, 0.5, c, lr, eps)
        damped = scale_trajectory(config, 0.5, 1.0, lr, eps / c**2)
        summary["scale/eps/deviation"] = float(np.max(np.linalg.norm(scaled - base, axis=1)) / norm)
        summary["scale/eps/equivalence"] = float(np.max(np.linalg.norm(scaled - damped, axis=1)) / norm)
    return summary, rows, worst


# ---------------------------------------------------------------------------------------------- figures


def law_figures(store: Any, run_id: str) -> list[Any]:
    """Stationary variances per α: simulation (markers ± 2 s.e.), finite-``η`` form, small-``η`` law."""
    import plotly.graph_objects as go

    summary = store.run_info(run_id)["summary"] or {}
    figs = []
    for regime in ("finite", "small"):
        fig = go.Figure()
        for kind, style in (("sim_var", "markers"), ("theory_var", "lines"), ("law_var", "lines")):
            xs, ys, err = [], [], []
            for key, value in summary.items():
                parts = key.split("/")
                if len(parts) == 5 and parts[:2] == ["law", regime] and parts[3] == kind:
                    alpha, lam = parts[2].split("=", 1)[1], parts[4].split("=", 1)[1]
                    xs.append(f"α={alpha}, λ={lam}")
                    ys.append(float(value))
                    se = summary.get(f"law/{regime}/a={alpha}/stderr/lambda={lam}", 0.0)
                    err.append(2.0 * float(se) * float(value))
            if not xs:
                continue
            name = {"sim_var": "simulation (EMA metric)", "theory_var": "finite-η closed form",
                    "law_var": "small-η law (η/2)s(γsH)^−α"}[kind]
            trace: dict[str, Any] = {"x": xs, "y": ys, "name": name, "mode": style}
            if kind == "sim_var":
                trace["error_y"] = {"type": "data", "array": err}
            else:
                trace["mode"] = "markers"
                trace["marker"] = {"symbol": "line-ew-open" if kind == "theory_var" else "x", "size": 14}
            fig.add_trace(go.Scatter(**trace))
        fig.update_layout(
            title=f"α-stationary law, {'moderate' if regime == 'finite' else 'small'} η: "
            "eigenvalues of the stationary covariance",
            yaxis_type="log", yaxis_title="variance along H's eigenvector",
        )
        figs.append(fig)
    return figs


def scale_figures(store: Any, run_id: str) -> list[Any]:
    """Excess loss against step for each α and loss scale ``c``: α = ½'s three lines coincide."""
    import plotly.graph_objects as go

    series = run_series(store, run_id, ["scale/excess_loss/*"])
    if not series:
        return []
    fig = go.Figure()
    for k, (name, (x, y)) in enumerate(sorted(series.items())):
        tag = name.split("/", 2)[2]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=tag, line={"color": mode_color(k)}))
    fig.update_layout(
        title="Loss scale L → cL: the step changes by c^(1−2α); α = ½ is unchanged",
        xaxis_title="step", yaxis_title="excess loss (of L)", yaxis_type="log",
    )
    return [fig]
