r"""Saddle-to-saddle learning in deep linear networks (``learndyn run deep-linear``).

Saxe, McClelland & Ganguli, "Exact solutions to the nonlinear dynamics of learning in deep linear neural
networks", ICLR 2014. The closed forms are :mod:`learndyn.theory.deep_linear`; this module trains the actual
network and puts the two side by side.

Setting
-------
A bias-free linear network ``f(x) = W_D ⋯ W_1 x`` (``depth = D``; ``D = 2`` is one hidden layer) is trained by
full-batch gradient descent with learning rate ``lr`` on

    L = 1/(2n) Σ_μ ‖y_μ − f(x_μ)‖²,

``n = n_samples`` pairs built so that the closed form holds exactly:

* whitened inputs, ``XᵀX/n = I`` exactly;
* targets ``y = T x + ε`` with a teacher ``T = U diag(s) Vᵀ`` (``s = singular_values``, random orthonormal
  ``U``, ``V``) and label noise ``ε`` of per-output variance ``noise²`` that is exactly orthogonal to the
  inputs (``Xᵀ E = 0``, ``EᵀE/n = noise² I``). The noise leaves ``Σ_yx = T`` unchanged and adds the
  irreducible loss ``L_res = ½ n_out noise²``, so the last stage ends on a plateau too;
* a decoupled, balanced initialisation with product ``U diag(a0) Vᵀ``, ``a0 = init_scale`` for every mode
  (:func:`~learndyn.theory.deep_linear.decoupled_init`).

Gradient flow (``t = lr · step``) then keeps every mode separate: the strength ``a_i = uᵢᵀ W_D⋯W_1 vᵢ`` obeys
``da/dt = D a^{2−2/D} (s − a)``; for ``D = 2``

    a_i(t) = s_i e^{2 s_i t} / (e^{2 s_i t} − 1 + s_i/a0),

a sigmoid that switches on at the learning time ``t½ = ln(s_i/a0 − 1)/(2 s_i)`` (``≈ (1/s_i) ln(s_i/a0)`` up
to a factor of order one): stronger modes first, each after a plateau whose length grows like
``ln(1/a0)/s_i`` (``D = 2``) or ``a0^{−(1−2/D)}/s_i`` (``D ≥ 3``). The loss
``L = ½ Σ_i (s_i − a_i)² + L_res`` is a staircase: plateaus joined by drops of ``½ s_i²``.

What is measured and compared
-----------------------------
* ``sim/mode<i>`` vs ``theory/mode<i>`` (the mode strengths, ``i = 1 … r`` in the order of
  ``singular_values``) and ``sim/loss`` vs ``theory/loss`` every ``steps/eval_points`` steps. The
  **agreement** is the largest relative error of the mode strengths over the whole trajectory,
  ``max_{t,i} |a_i^sim(t) − a_i^th(t)| / a_i^th(t)``. Gradient descent departs from gradient flow by
  ``O(lr)``: a balanced mode of a 2-layer net follows ``a ← a (1 + lr (s − a))²`` exactly, whose small-``a``
  growth rate ``2 ln(1 + lr s)/lr`` falls short of ``2s`` by ``≈ lr s²``, so the relative error grows to
  ``≈ s² lr t½ ≈ ½ s_max lr ln(s_max/a0)`` by the time the strongest mode is learned (1.1%; measured 0.84% at
  the defaults, 0.95% at the test size). Tolerance: ``tolerance`` (1.5%; it was 2%, which let an initial
  scale 2% too small through: the relative error at ``t = 0`` is then exactly ``1/0.98 − 1 = 2.04%``).
  Sensitivity (``tests/test_phenomena_sensitivity.py``, quick size): with ``s``, ``a0`` or the time
  ``lr·step`` of the theory off by ±2% the figure is 0.18–0.20 (``s``, time) and 0.020–0.028 (``a0``),
  against 0.0095 unperturbed.
* Stages: a :class:`~learndyn.probes.stages.StageProbe` watches the training loss through the
  :class:`~learndyn.probes.Monitor` and reports the steps of its drops. The same detector is run on the
  predicted loss curve; the summary lists, per stage, the detected step, the step the detector finds on the
  theory curve and the predicted learning time ``t½/lr`` of the mode learned in that stage. (The detector
  marks the point of steepest *log*-loss descent, within a few percent of ``t½`` but not at it: compare the
  detected steps with the theory-curve detections, and with ``t½`` for order and scale.) Stages need
  plateaus: with ``s_i/s_{i+1} = 2`` they separate for ``a0 ≲ 1e-5`` (the default 1e-6).

Resuming: with a checkpointer on the recorder (a stored run's), the loop's checkpoints carry the measured
series and the stage detector, so a resumed run ends with the same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from learndyn.config import check_memory, check_run_fields
from learndyn.phenomena._figures import mode_color, run_series, sim_theory_traces
from learndyn.phenomena._stepwise import crossing_step, full_batch_descent
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.probes.monitor import Monitor
from learndyn.probes.stages import StageDetector, StageProbe
from learndyn.store.recorder import Recorder
from learndyn.theory.deep_linear import (
    LinearTeacher,
    decoupled_init,
    deep_linear_loss,
    learning_time,
    make_teacher,
    mode_strength,
)
from learndyn.training.losses import half_squared_error
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

NAME = "deep-linear"
DESCRIPTION = "Saxe et al. deep linear network: sigmoidal mode learning and loss stages vs closed form"


@dataclass
class DeepLinearConfig:
    """A deep linear network learning a linear teacher from small, decoupled initial weights.

    ``singular_values``: the teacher's ``s_i`` (> 0, distinct values give distinct stages).
    ``depth``: number of weight matrices ``D`` (≥ 2; 2 = one hidden layer). ``hidden``: hidden width
    (≥ number of modes). ``n_in``/``n_out``: input and output dimensions (≥ number of modes).
    ``n_samples``: training pairs (≥ ``n_in + n_out``, for exactly whitened inputs and orthogonal noise).
    ``init_scale``: initial strength ``a0`` of every mode (the product of the layers' mode values; deeper
    networks plateau for ``~a0^{−(1−2/D)}/s``, so use e.g. 0.05 for ``D = 3``).
    ``noise``: label-noise standard deviation per output (orthogonal to the inputs; loss floor
    ``½ n_out noise²``). ``lr``: learning rate (the gradient-flow limit needs ``lr · s_max · ln(s/a0) ≪ 1``).
    ``t_end``: gradient-flow time to train for (``None``: 1.25 × the time the weakest mode takes to 99%).
    ``eval_points``: about how many points of each curve are logged and compared.
    ``seed``: teacher, inputs, noise and hidden frames. ``threads``: torch intra-op threads while it runs (the
    matrices are tiny: more threads only cost; ``None`` leaves torch's setting). ``tolerance``: the agreement
    the run must reach.
    """

    singular_values: tuple[float, ...] = (3.0, 1.5, 0.75)
    depth: int = 2
    n_in: int = 8
    n_out: int = 6
    hidden: int = 8
    n_samples: int = 32
    init_scale: float = 1e-6
    noise: float = 0.1
    lr: float = 5e-4
    t_end: float | None = None
    eval_points: int = 400
    seed: int = 0
    threads: int | None = 1
    tolerance: float = 0.015

    def __post_init__(self) -> None:
        owner = "DeepLinearConfig"
        self.singular_values = as_tuple(
            "singular_values", self.singular_values, owner=owner, item=float, low=0.0, low_open=True
        )
        r = len(self.singular_values)
        if r == 0:
            raise LearndynValueError(f"{owner}.singular_values=() is empty; allowed: one or more values > 0")
        check_int("depth", self.depth, low=2, high=8, owner=owner)
        check_int("n_in", self.n_in, low=r, owner=owner)
        check_int("n_out", self.n_out, low=r, owner=owner)
        check_int("hidden", self.hidden, low=r, owner=owner)
        check_int("n_samples", self.n_samples, low=self.n_in + self.n_out, owner=owner)
        self.init_scale = check_real("init_scale", self.init_scale, low=0.0, low_open=True, owner=owner)
        if self.init_scale >= 0.5 * min(self.singular_values):
            raise LearndynValueError(
                f"{owner}.init_scale={self.init_scale!r} is out of range; "
                f"allowed: 0 < init_scale < min(singular_values)/2 = {0.5 * min(self.singular_values):g}"
            )
        self.noise = check_real("noise", self.noise, low=0.0, owner=owner)
        self.lr = check_real("lr", self.lr, low=0.0, high=1.0, low_open=True, owner=owner)
        if self.t_end is not None:
            self.t_end = check_real("t_end", self.t_end, low=0.0, low_open=True, owner=owner)
        check_int("eval_points", self.eval_points, low=10, owner=owner)
        check_run_fields(self, owner)
        # a lower bound (float64 first and last layers), checked before anything is allocated
        edge = self.hidden * (self.n_in + self.n_out) if self.depth >= 2 else self.n_in * self.n_out
        check_memory(owner, 8.0 * edge, ("hidden", "n_in", "n_out"))

    def train_time(self) -> float:
        """Gradient-flow time to train for (``t_end``, or the automatic choice described above)."""
        if self.t_end is not None:
            return self.t_end
        s = np.array(self.singular_values)
        t99 = learning_time(s, self.init_scale, depth=self.depth, fraction=0.99)
        return 1.25 * float(np.max(t99))

    def steps(self) -> int:
        """Number of gradient steps, ``round(t_end / lr)``."""
        return max(1, int(round(self.train_time() / self.lr)))


QUICK = {"singular_values": (3.0, 1.5), "init_scale": 1e-5, "lr": 7e-4}
"""The test-size configuration (``--quick``)."""


def make_data(config: DeepLinearConfig) -> tuple[LinearTeacher, np.ndarray, np.ndarray, float]:
    """Teacher, whitened inputs ``X`` (``n × n_in``), targets ``Y = X Tᵀ + E`` and the loss floor ``L_res``.

    ``X = √n Q_x`` and ``E = noise √n Q_e`` with ``[Q_x Q_e]`` orthonormal columns, so ``XᵀX/n = I``,
    ``XᵀE = 0`` and ``EᵀE/n = noise² I`` hold exactly.
    """
    teacher = make_teacher(config.singular_values, config.n_in, config.n_out, seed=config.seed)
    rng = np.random.default_rng([config.seed, 1])
    n = config.n_samples
    q, r = np.linalg.qr(rng.standard_normal((n, config.n_in + config.n_out)))
    q = q * np.sign(np.diag(r))
    X = np.sqrt(n) * q[:, : config.n_in]
    E = config.noise * np.sqrt(n) * q[:, config.n_in :]
    Y = X @ teacher.matrix.T + E
    residual = 0.5 * config.n_out * config.noise**2
    return teacher, X, Y, residual


class DeepLinearNet(nn.Sequential):
    """``depth`` bias-free ``nn.Linear`` layers named ``layer1 … layerD`` (input to output), float64."""

    def __init__(self, weights: list[np.ndarray]) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for k, w in enumerate(weights, start=1):
            layer = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
            with torch.no_grad():
                layer.weight.copy_(torch.as_tensor(w, dtype=torch.float64))
            layers[f"layer{k}"] = layer
        super().__init__(layers)

    def weights(self) -> list[np.ndarray]:
        """The weight matrices, input to output, as numpy arrays."""
        return [m.weight.detach().cpu().numpy() for m in self]


def mode_strengths(model: DeepLinearNet, teacher: LinearTeacher) -> np.ndarray:
    """``a_i = uᵢᵀ W_D⋯W_1 vᵢ`` of the live network."""
    product = None
    for w in model.weights():
        product = w if product is None else w @ product
    return np.einsum("oi,oj,ji->i", teacher.U, product, teacher.V)


def mode_agreement(sim: np.ndarray, theory: np.ndarray) -> float:
    """The agreement figure: ``max |sim − theory| / theory`` over all times and modes (``nan`` if empty)."""
    sim, theory = np.asarray(sim, dtype=float), np.asarray(theory, dtype=float)
    if sim.size == 0:
        return float("nan")
    return float(np.max(np.abs(sim - theory) / np.abs(theory)))


def stage_detector() -> StageDetector:
    """The detector used on both the simulated and the predicted loss, fed once per logged point.

    Windows of 8 logged points (2% of a run at the default ``eval_points``) resolve the drops; the log-loss
    must fall by at least 0.3 below a plateau for a stage to count.
    """
    return StageDetector(window=8, plateau_tol=0.03, drop_tol=0.1, min_drop=0.3, z=3.0, contrast=3.0)


class _ModeTracker:
    """Passed to ``train_loop`` as its monitor: logs ``sim/*`` and ``theory/*`` every ``every`` steps and
    runs the :class:`Monitor` (the stage probe) on the same schedule; its state goes into checkpoints."""

    def __init__(
        self,
        model: DeepLinearNet,
        teacher: LinearTeacher,
        config: DeepLinearConfig,
        residual: float,
        recorder: Recorder,
        monitor: Monitor,
        stage_probe: StageProbe,
        every: int,
    ) -> None:
        self.model, self.teacher, self.config = model, teacher, config
        self.residual, self.recorder, self.monitor, self.every = residual, recorder, monitor, every
        self.stage_probe = stage_probe
        self._theory: dict[int, tuple[np.ndarray, float]] = {}
        self.steps: list[int] = []
        self.sim: list[np.ndarray] = []
        self.loss: list[float] = []

    def theory(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted mode strengths ``(len(steps), r)`` and loss ``(len(steps),)`` at ``steps``, memoised
        (for ``D ≥ 3`` each evaluation inverts ``t(a)`` by bisection: do it once, vectorised)."""
        steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        todo = np.array(sorted({int(k) for k in steps} - self._theory.keys()), dtype=np.int64)
        if todo.size:
            cfg, s = self.config, self.teacher.s
            t = cfg.lr * todo.astype(float)
            modes = mode_strength(t, s, cfg.init_scale, depth=cfg.depth).reshape(todo.size, s.size)
            loss = deep_linear_loss(t, s, cfg.init_scale, depth=cfg.depth, residual=self.residual)
            self._theory.update({int(k): (m, float(v)) for k, m, v in zip(todo, modes, loss, strict=True)})
        rows = [self._theory[int(k)] for k in steps]
        return np.array([m for m, _ in rows]).reshape(steps.size, -1), np.array([v for _, v in rows])

    def measure(self, step: int, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        a = mode_strengths(self.model, self.teacher)
        a_th, loss_th = (x[0] for x in self.theory(np.array([step])))
        with torch.no_grad():
            loss = float(half_squared_error(self.model(batch[0]), batch[1]))
        metrics = {"sim/loss": loss, "theory/loss": float(loss_th)}
        for i, (x, y) in enumerate(zip(a, a_th, strict=True), start=1):
            metrics[f"sim/mode{i}"] = float(x)
            metrics[f"theory/mode{i}"] = float(y)
        self.recorder.log(step, metrics)
        self.steps.append(step)
        self.sim.append(a)
        self.loss.append(loss)

    def after_step(
        self, step: int, batch: tuple[torch.Tensor, torch.Tensor], metrics: Mapping[str, float] | None = None
    ) -> None:
        if step % self.every == 0:
            self.measure(step, batch)
        self.monitor.after_step(step, batch, metrics)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue: the series so far and the stage detector."""
        return {
            "steps": list(self.steps),
            "sim": [a.copy() for a in self.sim],
            "loss": list(self.loss),
            "detector": copy.deepcopy(self.stage_probe.detector),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = list(state["steps"])
        self.sim = [np.asarray(a) for a in state["sim"]]
        self.loss = list(state["loss"])
        self.stage_probe.detector = copy.deepcopy(state["detector"])


@threaded
def run(config: DeepLinearConfig, recorder: Recorder) -> ExperimentResult:
    """Train the network, log simulated and predicted mode strengths and losses, detect the stages."""
    teacher, X, Y, residual = make_data(config)
    weights = decoupled_init(teacher, config.hidden, config.init_scale, depth=config.depth, seed=config.seed)
    model = DeepLinearNet(weights)
    inputs = torch.as_tensor(X, dtype=torch.float64)
    targets = torch.as_tensor(Y, dtype=torch.float64)
    steps = config.steps()
    every = max(1, steps // config.eval_points)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    stage_probe = StageProbe(every=every, detector=stage_detector())
    monitor = Monitor(model, half_squared_error, probes=[stage_probe], recorder=recorder, optimizer=optimizer)
    tracker = _ModeTracker(model, teacher, config, residual, recorder, monitor, stage_probe, every)
    tracker.theory(np.append(np.arange(0, steps, every), steps))  # every point the run will measure

    batch = (inputs, targets)
    loop = full_batch_descent(
        model, optimizer, half_squared_error, batch, steps, seed=config.seed, recorder=recorder,
        tracker=tracker, every=every, key="deep-linear", progress=NAME,
    )
    if loop.status == "completed":
        tracker.measure(steps, batch)  # the final state, after the last update
    monitor.close()
    detector = stage_probe.detector  # (restored from a checkpoint when the loop resumed)
    detector.finish()
    return _result(config, teacher, tracker, detector, loop.status)


def _result(
    config: DeepLinearConfig,
    teacher: LinearTeacher,
    tracker: _ModeTracker,
    detector: StageDetector,
    status: str,
) -> ExperimentResult:
    s = teacher.s
    steps_arr = np.array(tracker.steps, dtype=float)
    sim = np.array(tracker.sim).reshape(len(tracker.sim), s.size)
    theory, theory_loss = tracker.theory(np.array(tracker.steps, dtype=np.int64))
    agreement = mode_agreement(sim, theory) if status == "completed" else float("inf")

    # the same detector on the predicted loss at the same steps
    ref = stage_detector()
    for k, v in zip(tracker.steps, theory_loss, strict=True):
        ref.update(k, float(v))
    ref.finish()
    detected, predicted_curve = detector.boundaries(), ref.boundaries()
    t_half = learning_time(s, config.init_scale, depth=config.depth)
    order = np.argsort(t_half)  # modes in the order they are learned (largest s first)

    summary: dict[str, float] = {
        "agreement": agreement,
        "final_loss": float(tracker.loss[-1]) if tracker.loss else float("nan"),
        "final_loss_theory": float(theory_loss[-1]) if theory_loss.size else float("nan"),
        "steps": float(config.steps()),
        "stages_detected": float(len(detected)),
        "stages_theory": float(len(predicted_curve)),
    }
    table = []
    for i in range(s.size):
        learn_sim = crossing_step(steps_arr, sim[:, i] / s[i], 0.5) if sim.size else float("nan")
        summary[f"mode{i + 1}/learn_step_theory"] = float(t_half[i] / config.lr)
        summary[f"mode{i + 1}/learn_step_sim"] = learn_sim
        summary[f"mode{i + 1}/max_rel_err"] = mode_agreement(sim[:, i], theory[:, i]) if sim.size else np.nan
    for k, mode in enumerate(order):
        stage = k + 1
        row: dict[str, Any] = {
            "stage": stage,
            "mode": int(mode) + 1,
            "s": float(s[mode]),
            "t_half/lr (theory)": float(t_half[mode] / config.lr),
            "step a=s/2 (sim)": summary[f"mode{mode + 1}/learn_step_sim"],
            "drop step (theory curve)": float(predicted_curve[k]) if k < len(predicted_curve) else None,
            "drop step (detected)": float(detected[k]) if k < len(detected) else None,
        }
        table.append(row)
        if k < len(detected):
            summary[f"stage{stage}/detected_step"] = float(detected[k])
        if k < len(predicted_curve):
            summary[f"stage{stage}/theory_curve_step"] = float(predicted_curve[k])
        summary[f"stage{stage}/learn_step_theory"] = float(t_half[mode] / config.lr)
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


def deep_linear_figures(store: Any, run_id: str) -> list[Any]:
    """Report figures: mode strengths (simulation solid, theory dashed) and the loss with stage markers."""
    import plotly.graph_objects as go

    series = run_series(store, run_id, ["sim/*", "theory/*"])
    summary = store.run_info(run_id)["summary"] or {}
    modes = sorted(
        {n.split("/", 1)[1] for n in series if n.split("/", 1)[1].startswith("mode")},
        key=lambda m: int(m[4:]) if m[4:].isdigit() else 0,
    )
    fig_modes = go.Figure()
    for k, mode in enumerate(modes):
        for trace in sim_theory_traces(series, mode, mode, color=mode_color(k)):
            fig_modes.add_trace(trace)
    fig_modes.update_layout(
        title="Mode strengths a_i: simulation (solid) vs Saxe et al. closed form (dashed)",
        xaxis_title="step",
        yaxis_title="a_i = u_iᵀ W v_i",
        template="plotly_white",
    )
    fig_loss = go.Figure()
    for trace in sim_theory_traces(series, "loss", "loss"):
        fig_loss.add_trace(trace)
    for key, value in sorted(summary.items()):
        if key.endswith("/detected_step"):
            fig_loss.add_vline(
                x=float(value), line_color="firebrick", line_dash="dot", annotation_text=key.split("/")[0]
            )
        elif key.endswith("/learn_step_theory") and key.startswith("stage"):
            fig_loss.add_vline(x=float(value), line_color="gray", line_dash="dash")
    fig_loss.update_yaxes(type="log")
    fig_loss.update_layout(
        title="Loss with detected stage boundaries (red) and predicted t½/lr (gray)",
        xaxis_title="step",
        yaxis_title="loss",
        template="plotly_white",
    )
    return [fig_modes, fig_loss]


EXPERIMENT = register(
    Experiment(NAME, DESCRIPTION, DeepLinearConfig, run, QUICK, figures=(deep_linear_figures,))
)
