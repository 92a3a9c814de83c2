r"""Lazy training (``learndyn run ntk-lazy``): wide networks follow their linearisation; small scales do not.

Setting
-------
A one-hidden-layer network in NTK parametrisation with an output scale ``s``,

    f(x; W, v) = s · vᵀ φ(W x / √d) / √m,        W_ij, v_i ~ N(0, 1),

(``m`` the width, ``d`` the input dimension, ``φ`` = tanh, ReLU or erf) is trained by full-batch gradient
descent on ``n`` points with ``L = 1/(2n) Σ_i (f(x_i) − y_i)²`` (targets ``y = sin(Σ_k x_k)``, Gaussian
inputs), with the learning rate a fixed fraction of the linear stability limit, ``η = c · 2n/λ_max(Θ₀)``.

Theory (:mod:`learndyn.theory.ntk`; Jacot, Gabriel & Hongler 2018; Lee et al. 2019, "Wide neural networks of
any depth evolve as linear models under gradient descent"): the linearised model
``f_lin(θ) = f(θ₀) + ∇f(θ₀)(θ − θ₀)`` trained the same way moves its outputs by the empirical NTK at
initialisation ``Θ₀``. After ``k`` steps (exact for the linearised model)

    f_k(X) = y + (I − ηΘ₀/n)^k (f₀(X) − y),
    f_k(X*) = f₀(X*) + Θ₀(X*, X) Θ₀⁻¹ (I − (I − ηΘ₀/n)^k) (y − f₀(X)),

whose gradient-flow limit at ``t = η·k`` is ``f_t = f₀ + (I − e^{−Θ₀t/n})(y − f₀)``. The experiment measures
the network's outputs on the training and held-out points at every ``eval_every`` steps.

The agreement figure is a fit over widths (at ``s = 1``, the NTK parametrisation), of three log-log slopes,
each against its prediction and its own tolerance (the means over ``seeds`` initialisations per width):

* **function deviation** ``D(m) = RMS_{k,i} (f_k(x_i) − f_k^lin(x_i)) / RMS_i (y_i − f₀(x_i))`` (train and
  test points, all recorded steps) ``∝ m^{−1}``, tolerance ``tolerance``;
* **kernel change** ``‖Θ_T − Θ₀‖_F/‖Θ₀‖_F ∝ m^{−1}``, tolerance ``kernel_tolerance``;
* **parameter change** ``‖θ_T − θ₀‖/‖θ₀‖ ∝ m^{−1/2}``, tolerance ``param_tolerance``: each of the ``m(d+1)``
  weights moves ``O(1/√m)`` (``‖θ_T − θ₀‖ = O(1)``) while ``‖θ₀‖ ≈ √(m(d+1))``.

``agreement = tolerance · max_e |slope_e − predicted_e| / tolerance_e``: within ``tolerance`` exactly when
every exponent is within its own. Why a slope and not the deviation at one width: a kernel that is wrong by
a factor ``1 + ε`` adds a width-independent error ``≈ ε·max_j x_j(1 − x_j)^k`` to ``f − f_lin``, which
flattens the deviation's slope; at one width it hides below the finite-width deviation (a kernel 10% wrong
passed the old figure, the deviation at the largest width, with its 0.05 tolerance). Measured at the quick
size (widths 256, 1024, 4096; 2 seeds; data seeds 0–3): deviation slope −1.07, −0.82, −0.79, −0.68 (true
kernel), −0.41, −0.31, −0.44, −0.35 (kernel ×1.1: fails, errors ≥ 0.56 against the tolerance 0.4), −0.94,
−0.71, −0.83, −0.71 (kernel ×1.02: **passes**; a 2% kernel error is below what four widths and two seeds
resolve); kernel slope −0.86 … −0.95; parameter slope −0.47 … −0.50. The expected exponents hold for smooth
activations (``tanh``, ``erf``); with ``relu`` the deviation falls more slowly (slope ≈ −0.67, units switching
at the kink) and the figure is expected to fail.

Width scaling. Lee et al. bound the deviation by ``O(1/√m)``. For the *empirical* kernel used here the
leading correction is smaller: the kernel moves by ``O(1/m)`` during training and so does ``f − f_lin``
(Dyer & Gur-Ari 2020, "Asymptotics of wide networks from Feynman diagrams"; for one hidden layer every
first-order term in the weight change carries an odd power of the zero-mean read-out weights ``v_i`` and
averages out over the ``m`` units). ``O(1/√m)`` is the size of the *initial* kernel's fluctuation around its
infinite-width limit, which the empirical-kernel prediction absorbs. The maximum deviation
``max_k max_i |f_k(x_i) − f_k^lin(x_i)| / max_i |y_i − f₀(x_i)|`` is reported too (``width_exponent``), but
as an extreme statistic it is noisier than the RMS.

Lazy vs rich (Chizat, Oyallon & Bach 2019, "On lazy training in differentiable programming"). At fixed width
the output scale ``s`` interpolates between the NTK parametrisation (``s = 1``) and a mean-field-like one
(``s = 1/√m``, ``f = (1/m) Σ_i v_i φ(w_i·x/√d)``). Because ``η ∝ 1/λ_max(Θ₀) ∝ 1/s²``, every run fits the
data on the same function-space time scale, but the weights must move ``1/s`` times further, so the kernel's
relative change grows like ``1/(s²m)``: :class:`~learndyn.probes.KernelProbe`'s ``distance_from_init``
``‖Θ_t − Θ₀‖_F/‖Θ₀‖_F`` and ``velocity`` are small and flat for ``s = 1`` (lazy) and of order one at
``s ≈ 1/√m`` (rich, feature learning), where the linearised prediction fails.

Logged metrics (the curves of the first seed; statistics use all seeds), tagged ``width=<m>,scale=<s>``:
``sim/train_loss`` and ``theory/train_loss`` (overlaid by the report), ``ntk/deviation`` (the running
maximum deviation, per step), ``kernel/*`` from the KernelProbe and ``loss`` from the training loop.
``summary`` has the deviations (max and RMS), kernel distance and parameter change per width, the deviation
and kernel distance per scale, and ``exponent/<deviation|kernel|parameter>`` with ``/expected``, ``/error``
and ``/tolerance``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learndyn.config import check_memory, check_run_fields
from learndyn.phenomena._loop_log import LoopLog
from learndyn.phenomena._threads import torch_threads
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.probes import KernelProbe, Monitor
from learndyn.probes.base import ProbeContext
from learndyn.probes.kernel import empirical_ntk
from learndyn.store.recorder import Recorder
from learndyn.theory import ntk_max_stable_lr, ntk_predictions_gd, ntk_train_loss
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError, as_tuple, check_choice, check_int, check_real

NAME = "ntk-lazy"
DESCRIPTION = "Wide nets follow their NTK linearisation; a small output scale makes them rich"
ACTIVATIONS = ("tanh", "relu", "erf")


@dataclass
class NTKLazyConfig:
    """Widths and output scales to train, the data, and the training schedule.

    ``widths``: hidden widths trained at output scale 1 (NTK parametrisation); the deviation from the
    linearised dynamics is fitted against them (at least two distinct widths). ``output_scales`` are trained
    at width ``scale_width`` (``1/√scale_width`` is the mean-field-like end). ``lr_fraction``: the learning
    rate as a fraction of the linear stability limit ``2n/λ_max(Θ₀)`` of each network. ``eval_every``: steps
    between output records (the deviations are taken over them); ``kernel_every``: steps between
    KernelProbe measurements. ``seeds``: initialisations averaged per point (seeds ``seed … seed+seeds−1``;
    the data come from ``seed``). ``checkpoint_every``: updates between checkpoints when the recorder has a
    checkpointer (``None``: the checkpointer's default; 0: never). ``threads``: torch intra-op threads while
    the experiment runs (the tensors are small; ``None`` leaves torch's setting). ``tolerance``,
    ``kernel_tolerance``, ``param_tolerance``: the largest acceptable ``|fitted − predicted|`` of the
    width exponents of the function deviation (−1), the kernel change (−1) and the parameter change (−½).
    """

    widths: tuple[int, ...] = (128, 512, 2048, 8192)
    output_scales: tuple[float, ...] = (1.0, 0.25, 0.0625)
    scale_width: int = 256
    activation: str = "tanh"
    n_train: int = 16
    n_test: int = 8
    input_dim: int = 4
    steps: int = 1000
    lr_fraction: float = 0.5
    eval_every: int = 20
    kernel_every: int = 100
    seeds: int = 3
    seed: int = 0
    checkpoint_every: int | None = None
    threads: int | None = 1
    tolerance: float = 0.4
    kernel_tolerance: float = 0.25
    param_tolerance: float = 0.1

    def __post_init__(self) -> None:
        owner = "NTKLazyConfig"
        self.widths = as_tuple("widths", self.widths, owner=owner, item=int, low=1)
        if len(set(self.widths)) < 2:
            raise LearndynValueError(
                f"{owner}.widths={self.widths!r} is not allowed; allowed: at least two distinct widths"
            )
        self.output_scales = as_tuple(
            "output_scales", self.output_scales, owner=owner, item=float, low=0.0, low_open=True
        )
        if not self.output_scales:
            raise LearndynValueError(f"{owner}.output_scales=() is empty; allowed: one or more scales > 0")
        check_int("scale_width", self.scale_width, low=1, owner=owner)
        check_choice("activation", self.activation, ACTIVATIONS, owner=owner)
        check_int("n_train", self.n_train, low=2, owner=owner)
        check_int("n_test", self.n_test, low=1, owner=owner)
        check_int("input_dim", self.input_dim, low=1, owner=owner)
        check_int("steps", self.steps, low=1, owner=owner)
        self.lr_fraction = check_real(
            "lr_fraction", self.lr_fraction, low=0.0, high=1.0, low_open=True, high_open=True, owner=owner
        )
        check_int("eval_every", self.eval_every, low=1, owner=owner)
        check_int("kernel_every", self.kernel_every, low=1, owner=owner)
        check_int("seeds", self.seeds, low=1, high=100, owner=owner)
        for name in ("kernel_tolerance", "param_tolerance"):
            setattr(self, name, check_real(name, getattr(self, name), low=0.0, low_open=True, owner=owner))
        check_run_fields(self, owner)
        # a lower bound: the float64 Jacobian of the widest network on the train and test inputs
        jacobian = 8.0 * (self.n_train + self.n_test) * max(self.widths) * (self.input_dim + 2)
        check_memory(owner, jacobian, ("widths", "n_train", "n_test", "input_dim"))


QUICK = {
    "widths": (256, 1024, 4096),
    "output_scales": (1.0, 0.125),
    "scale_width": 64,
    "steps": 300,
    "eval_every": 20,
    "kernel_every": 100,
    "seeds": 2,
}
"""The test-size configuration (``--quick``)."""


# --- the network --------------------------------------------------------------------------------------


def _activation(name: str) -> Any:
    return {"tanh": torch.tanh, "relu": torch.relu, "erf": torch.erf}[name]


class TwoLayerNet(nn.Module):
    """``f(x) = s · vᵀ φ(W x/√d)/√m`` with ``N(0, 1)`` weights (float64); output shape ``(batch,)``."""

    def __init__(
        self, input_dim: int, width: int, scale: float, activation: str, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.scale = float(scale)
        self.phi = _activation(activation)
        self.w = nn.Parameter(torch.randn(width, input_dim, generator=generator, dtype=torch.float64))
        self.v = nn.Parameter(torch.randn(width, generator=generator, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        m, d = self.w.shape
        return self.scale * (self.phi(x @ self.w.T / math.sqrt(d)) @ self.v) / math.sqrt(m)


class _Tracked(nn.Module):
    """The network plus its output record as buffers, so a checkpoint carries the record (exact resume)."""

    def __init__(self, net: nn.Module, records: int, points: int) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("outputs", torch.full((records, points), math.nan, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_data(config: NTKLazyConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Training inputs ``(n, d)``, targets ``sin(Σ_k x_k)`` ``(n,)`` and test inputs ``(n*, d)``."""
    g = torch.Generator().manual_seed(1_000_003 * config.seed + 17)
    x = torch.randn(config.n_train, config.input_dim, generator=g, dtype=torch.float64)
    x_test = torch.randn(config.n_test, config.input_dim, generator=g, dtype=torch.float64)
    return x, torch.sin(x.sum(dim=1)), x_test


def _loss(out: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (out - y).square().mean()


def record_steps(steps: int, eval_every: int) -> np.ndarray:
    """The steps at which :func:`~learndyn.training.train_loop` calls ``evaluate``: multiples of
    ``eval_every`` below ``steps``, then ``steps``."""
    return np.array([*range(0, steps, eval_every), steps], dtype=np.int64)


@dataclass
class _Outcome:
    width: int
    scale: float
    seed: int
    lr: float
    deviation: float
    deviation_rms: float
    kernel_distance: float
    param_change: float
    train_loss: float
    theory_train_loss: float
    status: str


def _train_one(
    config: NTKLazyConfig,
    width: int,
    scale: float,
    seed: int,
    data: tuple[Tensor, Tensor, Tensor],
    recorder: Recorder | None,
    checkpointer: Any,
) -> _Outcome:
    """Train one network; compare it with its linearisation; measure its kernel's motion."""
    x, y, x_test = data
    n = x.shape[0]
    x_all = torch.cat([x, x_test])
    g = torch.Generator().manual_seed(seed)
    net = TwoLayerNet(config.input_dim, width, scale, config.activation, g)
    steps_grid = record_steps(config.steps, config.eval_every)
    model = _Tracked(net, len(steps_grid), x_all.shape[0])

    # the closed form, from the kernel and outputs at initialisation
    K = empirical_ntk(net, x_all).numpy()
    theta, theta_test = K[:n, :n], K[n:, :n]
    with torch.no_grad():
        f0_all = net(x_all).numpy()
    y_np = y.numpy()
    lr = config.lr_fraction * ntk_max_stable_lr(theta)
    pred = ntk_predictions_gd(theta, y_np, f0_all[:n], lr, steps_grid, theta_test, f0_all[n:])
    theory = np.concatenate([pred.train, pred.test], axis=1)  # (R, n + n*)
    theory_loss = ntk_train_loss(pred, y_np)
    scale_ref = float(np.max(np.abs(y_np - f0_all[:n])))

    tag = f"width={width},scale={scale:g}"
    tagged = LoopLog(recorder, tag)
    init_params = [p.detach().clone() for p in net.parameters()]

    def evaluate(m: nn.Module) -> dict[str, float]:
        r = int(m.count)
        f = m.net(x_all)
        m.outputs[r] = f
        m.count += 1
        dev = float((f - torch.from_numpy(theory[r])).abs().max()) / scale_ref
        return {"sim/train_loss": float(_loss(f[:n], y)), "ntk/deviation": dev}

    probe = KernelProbe(every=config.kernel_every, n_samples=n, probe_inputs=x, probe_targets=y)
    monitor = Monitor(model, _loss, probes=[probe], recorder=tagged)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    result = train_loop(
        model,
        optimizer,
        lambda _g: (x, y),
        _loss,
        config.steps,
        generator=torch.Generator().manual_seed(seed),
        recorder=tagged,
        monitor=monitor,
        log_every=config.eval_every,
        evaluate=evaluate,
        eval_every=config.eval_every,
        checkpointer=checkpointer,
        checkpoint_every=config.checkpoint_every,
        key=f"ntk-lazy-{config.activation}-w{width}-s{scale:g}-seed{seed}",
        prefix="",
    )
    # the kernel at the final parameters (also after a resumed loop, whose probe history is partial)
    final = probe.measure(
        ProbeContext(model=model, loss_fn=_loss, inputs=x, targets=y, step=config.steps,
                     init_params=monitor.init_params)
    )
    distance = float(final["kernel/distance_from_init"])
    tagged.log(config.steps, {"kernel/distance_from_init": distance})
    tagged.log(0, {"ntk/lr": lr})
    for k, loss in zip(steps_grid, theory_loss, strict=True):
        tagged.log(int(k), {"theory/train_loss": float(loss)})
    tagged.flush()

    done = int(model.count)
    sim = model.outputs[:done].numpy()
    deviation = float(np.max(np.abs(sim - theory[:done]))) / scale_ref if done else math.nan
    rms_ref = float(np.sqrt(np.mean((y_np - f0_all[:n]) ** 2)))
    deviation_rms = float(np.sqrt(np.mean((sim - theory[:done]) ** 2))) / rms_ref if done else math.nan
    param_change = parameter_change(net, init_params)
    train_loss = float(_loss(torch.from_numpy(sim[-1, :n]), y)) if done else math.nan
    return _Outcome(width, scale, seed, lr, deviation, deviation_rms, distance, param_change, train_loss,
                    float(theory_loss[-1]), result.status)


def parameter_change(net: nn.Module, init_params: Sequence[Tensor]) -> float:
    """``‖θ − θ₀‖ / ‖θ₀‖`` over all parameters of ``net`` (``init_params`` in ``net.parameters()`` order)."""
    with torch.no_grad():
        pairs = zip(net.parameters(), init_params, strict=True)
        moved = sum(float((p - p0).square().sum()) for p, p0 in pairs)
        size = sum(float(p0.square().sum()) for p0 in init_params)
    return math.sqrt(moved / size) if size > 0 else math.nan


EXPECTED_EXPONENTS = {"deviation": -1.0, "kernel": -1.0, "parameter": -0.5}
"""The width exponents the theory predicts at output scale 1 (smooth activations): ``f − f_lin`` (RMS) and
the kernel's relative motion ``∝ 1/m``, the parameters' relative displacement ``‖θ − θ₀‖/‖θ₀‖ ∝ m^{−1/2}``."""


def exponent_errors(fitted: dict[str, float]) -> dict[str, float]:
    """``|fitted − expected|`` per exponent of :data:`EXPECTED_EXPONENTS` (``inf`` where the fit is NaN)."""
    out = {}
    for key, expected in EXPECTED_EXPONENTS.items():
        value = fitted.get(key, math.nan)
        out[key] = abs(value - expected) if math.isfinite(value) else math.inf
    return out


def exponent_tolerances(config: NTKLazyConfig) -> dict[str, float]:
    """Each exponent's tolerance: ``tolerance`` (deviation), ``kernel_tolerance``, ``param_tolerance``."""
    return {
        "deviation": config.tolerance,
        "kernel": config.kernel_tolerance,
        "parameter": config.param_tolerance,
    }


def exponent_agreement(errors: dict[str, float], tolerances: dict[str, float]) -> float:
    """The verdict's figure ``tolerance_dev · max_i error_i/tolerance_i``: the worst exponent in units of the
    deviation exponent's tolerance: within ``tolerance`` exactly when each exponent is within its own."""
    worst = max(errors[k] / tolerances[k] for k in errors)
    return tolerances["deviation"] * worst


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN with fewer than two usable points)."""
    xs_, ys_ = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    ok = (xs_ > 0) & (ys_ > 0) & np.isfinite(ys_)
    if np.count_nonzero(ok) < 2 or len(np.unique(xs_[ok])) < 2:
        return math.nan
    return float(np.polyfit(np.log(xs_[ok]), np.log(ys_[ok]), 1)[0])


def run(config: NTKLazyConfig, recorder: Recorder) -> ExperimentResult:
    """Train every (width, scale, seed) network, compare with the NTK prediction, fit the width exponent."""
    data = make_data(config)
    checkpointer = getattr(recorder, "checkpointer", None)
    points = [(w, 1.0) for w in config.widths] + [(config.scale_width, s) for s in config.output_scales]
    points = list(dict.fromkeys(points))  # width runs at scale 1 may repeat in the scale sweep
    outcomes: dict[tuple[int, float], list[_Outcome]] = {}
    with torch_threads(config.threads):
        for width, scale in points:
            outcomes[(width, scale)] = [
                _train_one(
                    config, width, scale, config.seed + i, data, recorder if i == 0 else None, checkpointer
                )
                for i in range(config.seeds)
            ]

    def mean(key: tuple[int, float], attr: str) -> float:
        return float(np.mean([getattr(o, attr) for o in outcomes[key]]))

    widths = sorted(set(config.widths))
    dev_w = [mean((w, 1.0), "deviation") for w in widths]
    dist_w = [mean((w, 1.0), "kernel_distance") for w in widths]
    rms_w = [mean((w, 1.0), "deviation_rms") for w in widths]
    par_w = [mean((w, 1.0), "param_change") for w in widths]
    summary: dict[str, float] = {}
    for w, dev, dist in zip(widths, dev_w, dist_w, strict=True):
        summary[f"deviation/width={w}"] = dev
        summary[f"kernel_distance/width={w}"] = dist
    summary["width_exponent"] = fit_exponent(widths, dev_w)  # the max deviation's (reported only)
    fitted = {
        "deviation": fit_exponent(widths, rms_w),
        "kernel": fit_exponent(widths, dist_w),
        "parameter": fit_exponent(widths, par_w),
    }
    summary["kernel_width_exponent"] = fitted["kernel"]
    summary["rms_width_exponent"] = fitted["deviation"]
    summary["param_width_exponent"] = fitted["parameter"]
    for w, a, b in zip(widths, rms_w, par_w, strict=True):
        summary[f"deviation_rms/width={w}"] = a
        summary[f"param_change/width={w}"] = b
    errors = exponent_errors(fitted)
    tolerances = exponent_tolerances(config)
    for key, err in errors.items():
        summary[f"exponent/{key}"] = fitted[key]
        summary[f"exponent/{key}/expected"] = EXPECTED_EXPONENTS[key]
        summary[f"exponent/{key}/error"] = err
        summary[f"exponent/{key}/tolerance"] = tolerances[key]
    for s in config.output_scales:
        summary[f"deviation/scale={s:g}"] = mean((config.scale_width, s), "deviation")
        summary[f"kernel_distance/scale={s:g}"] = mean((config.scale_width, s), "kernel_distance")
    table = [
        {
            "width": w,
            "output_scale": s,
            "lr": mean((w, s), "lr"),
            "deviation": mean((w, s), "deviation"),
            "deviation_rms": mean((w, s), "deviation_rms"),
            "kernel_distance": mean((w, s), "kernel_distance"),
            "param_change": mean((w, s), "param_change"),
            "train_loss": mean((w, s), "train_loss"),
            "theory_train_loss": mean((w, s), "theory_train_loss"),
            "status": ",".join(sorted({o.status for o in outcomes[(w, s)]})),
        }
        for (w, s) in points
    ]
    agreement = exponent_agreement(errors, tolerances)
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


# --- report figures -----------------------------------------------------------------------------------


def _summary_series(summary: dict[str, Any], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = []
    for key, value in summary.items():
        if key.startswith(prefix) and isinstance(value, int | float):
            try:
                pairs.append((float(key[len(prefix):]), float(value)))
            except ValueError:
                continue
    pairs.sort()
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def ntk_lazy_figures(store: Any, run_id: str) -> list[Any]:
    """The three width fits (log-log: deviation, kernel change, parameter change with their slopes and the
    predicted ones) and the lazy → rich sweep over the output scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    summary = store.run_info(run_id).get("summary") or {}
    w, dev = _summary_series(summary, "deviation_rms/width=")
    _, dist = _summary_series(summary, "kernel_distance/width=")
    _, par = _summary_series(summary, "param_change/width=")
    s, dev_s = _summary_series(summary, "deviation/scale=")
    _, dist_s = _summary_series(summary, "kernel_distance/scale=")
    if not len(w) and not len(s):
        return []

    def slope(key: str) -> str:
        value = summary.get(f"exponent/{key}", math.nan)
        return f"{value:.2f}" if isinstance(value, int | float) else "?"

    fig = make_subplots(
        rows=1, cols=2,
        subplot_titles=("Width fits (dotted: predicted slope)", "Lazy → rich: output scale at fixed width"),
    )
    for values, key, label in ((dev, "deviation", "RMS deviation |f − f_lin|"),
                               (dist, "kernel", "kernel change"), (par, "parameter", "parameter change")):
        if len(values) != len(w) or not len(w):
            continue
        fig.add_trace(go.Scatter(x=w, y=values, mode="lines+markers", name=f"{label} (slope {slope(key)})"),
                      row=1, col=1)
        if np.all(values > 0):
            ref = values[0] * (w / w[0]) ** EXPECTED_EXPONENTS[key]
            fig.add_trace(go.Scatter(x=w, y=ref, mode="lines", line={"dash": "dot"}, showlegend=False,
                                     name=f"∝ width^{EXPECTED_EXPONENTS[key]:g}"), row=1, col=1)
    fig.add_trace(go.Scatter(x=s, y=dev_s, mode="lines+markers", name="max deviation (scales)"), row=1, col=2)
    fig.add_trace(go.Scatter(x=s, y=dist_s, mode="lines+markers", name="kernel distance (scale sweep)"),
                  row=1, col=2)
    fig.update_xaxes(type="log", title="width", row=1, col=1)
    fig.update_xaxes(type="log", title="output scale s", row=1, col=2)
    fig.update_yaxes(type="log", title="relative deviation / change", row=1, col=1)
    fig.update_yaxes(type="log", title="relative deviation, kernel distance", row=1, col=2)
    fig.update_layout(height=440, template="plotly_white")
    return [fig]


EXPERIMENT = register(Experiment(NAME, DESCRIPTION, NTKLazyConfig, run, QUICK, figures=(ntk_lazy_figures,)))
