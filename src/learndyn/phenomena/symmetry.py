r"""Rescaling symmetry: conservation, its breaking by weight decay and SGD noise, and low-rank collapse.

``learndyn run symmetry``. Four parts, each a real network trained with
:func:`~learndyn.training.train_loop` and measured by a probe, beside the closed form of
:mod:`learndyn.theory.symmetry`.

1. Conservation (gradient flow)
-------------------------------
A two-layer ReLU network ``f(x) = W₂ relu(W₁x + b₁) + b₂`` is unchanged by ``(w_j, b_j) → c(w_j, b_j)``,
``a_j → a_j/c`` (``w_j`` row ``j`` of ``W₁``, ``a_j`` column ``j`` of ``W₂``, ``c > 0``). Noether's theorem
for this symmetry (Du, Hu & Lee 2018, "Algorithmic regularization in learning deep homogeneous models";
Kunin et al. 2021, "Neural mechanics") makes the per-neuron balance

    q_j = ‖w_j‖² + b_j² − ‖a_j‖²

constant under gradient flow. Full-batch gradient descent with a small learning rate ``η`` (``t = η·step``)
approximates the flow; the :class:`~learndyn.probes.SymmetryProbe` measures ``q`` and its drift, which must be
``O(η²)`` per step (exactly ``q_{k+1} = q_k + η²Δ_k`` with ``Δ = ‖g_w‖² + g_b² − ‖g_a‖²``).

2. Weight decay breaks it at a known rate
-----------------------------------------
With weight decay ``(λ/2)‖θ‖²`` the flow gives ``dq/dt = −2λq``, so ``q(t) = q₀ e^{−2λt}``
(:func:`~learndyn.theory.symmetry.balance_flow`, exact for the flow; discrete GD differs by ``O(η)``).
The same network is trained at each ``weight_decays`` value (0 is part 1). **Agreement** (part of the
figure): the largest relative error of the decay curve,

    max_t ‖q(t) − q₀e^{−2λt}‖ / (‖q₀‖ e^{−2λt}),

over all measured times and all ``λ``. Logged: ``sim/balance_norm/wd=<λ>`` (``‖q(t)‖``) and
``theory/balance_norm/wd=<λ>`` (``‖q₀‖e^{−2λt}``), and the probe's ``symmetry/rescale/0-2/*/wd=<λ>``.

3. SGD noise drives the balance to a fixed point (law of balance)
-----------------------------------------------------------------
Ziyin, Li & Ueda (2023), "Law of balance and stationary distribution of stochastic gradient descent".
Their scalar model is a two-layer linear network of width one, ``f(x) = u w x``, on ``y = v* x + ε`` with
``x ~ N(0, h)``, ``ε ~ N(0, σ²)``; online SGD with batch ``B`` and learning rate ``η``, started on the
solution manifold ``u w = v*``. Gradient descent would keep ``Q = u² − w²`` there forever; SGD noise
multiplies it by ``1 − η²A_k²`` every step (``A`` the minibatch derivative with respect to ``uw``),
driving it to the balanced point ``Q* = 0``. :func:`~learndyn.theory.symmetry.scalar_balance_sgd`
predicts ``E[Q_k]`` including the ``O(η)`` correction from the fluctuations of ``uw``.
``balance_chains`` independent networks are trained in one vectorised loop (the loss is the sum of their
minibatch losses, so each gets exactly its own SGD step) and a probe reports the mean and standard error
of ``Q`` over them. **Agreement** (part of the figure): ``max_k |Q̄_k − Q_k^th| / Q_k^th``. The
leading-order law ``Q₀(1 − η²σ²h/B)^k`` is reported beside it
(``balance/leading_order_error``): it misses the fluctuation term and is visibly worse. Logged:
``sim/balance_mean`` / ``theory/balance_mean`` and ``sim/product_var`` / ``theory/product_var`` (the variance
of ``uw`` around ``v*``, from the 1-D exact SGD stationary formula at the effective learning rate
``η(u² + w²)``, adiabatic in ``Q``).

4. Symmetry-induced collapse to low rank
----------------------------------------
For a two-layer *linear* network ``W = W₂W₁`` the rescaling symmetry is a full ``GL(m)`` symmetry, and with
weight decay every stationary point is balanced (``W₁W₁ᵀ = W₂ᵀW₂``: the conserved matrix decays as
``e^{−2λt}``). On balanced factors ``½(‖W₁‖² + ‖W₂‖²) = ‖W‖_*`` (the nuclear norm; Srebro, Rennie & Jaakkola
2005), so on whitened inputs (``XᵀX/n = I``) and a teacher ``T = U diag(σ) Vᵀ`` the regularised loss
``½‖W − T‖²_F + λ‖W‖_*`` is minimised by soft-thresholding the teacher's spectrum,

    s_i(W) = max(σ_i − λ, 0)     (the ``width`` largest),

(:func:`~learndyn.theory.symmetry.soft_threshold_spectrum`): the rank drops below the width as ``λ`` passes
the teacher's singular values -- the symmetry plus weight decay creates the low-rank structure (Ziyin & Wang
2024, "Symmetry induces structure and constraint of learning"). The hidden representation ``H = XW₁ᵀ`` has
singular values ``√(n s_i)``; the :class:`~learndyn.probes.RepresentationProbe` measures its effective rank
(predicted: ``erank(√s)``) and spectrum (numerical rank ``#{σ_k > rank_rtol·σ_max}``, predicted ``#{σ_i >
λ}``). Reported: ``collapse/max_sv_error`` (:func:`spectrum_error`: the largest relative error
``|s_i^sim − s_i^th| / s_i^th`` over the values predicted non-zero, and ``s_i^sim / σ_1`` over those
predicted zero; final product spectrum, all ``λ``; part of the figure) and ``collapse/rank_match`` (1 when
every numerical rank equals the prediction).
Logged: ``sim|theory/hidden_rank/wd=<λ>`` and ``sim|theory/hidden_erank/wd=<λ>`` (theory: the ``t → ∞``
value), the final spectra as arrays ``collapse/product_sv`` and ``collapse/product_sv_theory``.

The agreement figure is the largest of the three relative errors (decay curve, balance value, collapsed
spectrum); it passes at ``tolerance`` (3%). Sensitivity (``tests/test_phenomena_sensitivity.py``): with one
ingredient of the theory off by ±2% the figure must fail. Measured (quick size, seeds 0–1 | defaults, seed
0): unperturbed 0.009–0.011 | 0.0025; decay rate ``λ`` ±2%: 0.055–0.072 | 0.039–0.041; noise ``σ²`` of the
law of balance ±2%: 0.047–0.063 | 0.039–0.046, its ``η`` ±2%: ≥ 0.105 | ≥ 0.082, ``h`` +2%: 0.071 | 0.050;
collapse ``λ`` or teacher spectrum ±2%: ≥ 0.09 | ≥ 0.035. What changed for this: the tolerance was 5%, which
let a 2% error in ``σ²`` and (at the defaults) in the decay rate through; the collapse error was
``max_i |s_i^sim − s_i^th|/σ_1``, in which a 2% error in ``λ`` moves the figure by only ``0.02λ/σ_1``
(0.0075). Not caught: ``v*`` ±2% in the law of balance (0.005–0.013): ``v*`` enters only the ``O(η)``
fluctuation correction.

Resuming: with a checkpointer on the recorder (a stored run's ``run.checkpointer``; its ``every`` sets the
interval) each loop checkpoints under its own key (``symmetry-decay-<i>``, ``symmetry-balance``,
``symmetry-collapse-<i>``), and what its probes measured is saved inside the checkpoint too, so a resumed run
computes the same figures as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learndyn.config import check_memory, check_run_fields
from learndyn.phenomena._chains import ChainBalanceProbe, ScalarNetEnsemble, chains_loss
from learndyn.phenomena._loop_log import LoopLog
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.probes.monitor import Monitor
from learndyn.probes.representation import RepresentationProbe, effective_rank, numerical_rank
from learndyn.probes.symmetry import Symmetry, SymmetryProbe
from learndyn.store.recorder import Recorder
from learndyn.theory.symmetry import (
    balance_flow,
    balance_product_variance,
    decay_errors,
    scalar_balance_sgd,
    soft_threshold_spectrum,
)
from learndyn.training import train_loop
from learndyn.training.losses import half_squared_error
from learndyn.validation import LearndynValueError, as_tuple, check_int, check_real

NAME = "symmetry"
DESCRIPTION = "Rescaling symmetry: conservation, e^{-2λt} decay, SGD law of balance, low-rank collapse"
F64 = torch.float64
RESCALE = Symmetry("rescale", "0", "2")  # first layer -> output layer of the ReLU network


@dataclass
class SymmetryConfig:
    """Sizes, learning rates and lengths of the four parts (see the module docstring).

    Parts 1-2 (ReLU network ``input_dim → width → output_dim``, ``samples`` points, full-batch GD):
    ``lr`` (small: the flow limit), ``steps``, ``weight_decays`` (one run each; 0 = conservation),
    ``measure_every`` (probe interval). Part 3 (law of balance): ``balance_lr``, ``balance_batch``,
    ``balance_steps``, ``balance_chains`` (independent networks averaged), ``balance_every``,
    ``balance_init = (u₀, w₀)`` (``v* = u₀w₀``), ``noise_std`` (``σ``), ``input_var`` (``h``).
    Part 4 (collapse): ``collapse_sv`` (teacher singular values; the input/output dimension is their number),
    ``collapse_width``, ``collapse_decays``, ``collapse_lr``, ``collapse_steps``, ``collapse_samples``,
    ``collapse_init`` (initial weight scale), ``rank_rtol``. ``seed``: data, teachers and initial weights.
    ``threads``: torch intra-op threads while it runs (the tensors are tiny: more threads only cost; ``None``
    leaves torch's setting). ``tolerance``: the agreement the run must reach.
    """

    input_dim: int = 4
    width: int = 16
    output_dim: int = 2
    samples: int = 64
    lr: float = 0.01
    steps: int = 1000
    weight_decays: tuple[float, ...] = (0.0, 0.1)
    measure_every: int = 10
    balance_lr: float = 0.02
    balance_batch: int = 1
    balance_steps: int = 5000
    balance_chains: int = 2000
    balance_every: int = 100
    balance_init: tuple[float, float] = (2.0, 0.5)
    noise_std: float = 1.0
    input_var: float = 1.0
    collapse_sv: tuple[float, ...] = (2.0, 1.5, 1.1, 0.9, 0.6, 0.45, 0.3, 0.15)
    collapse_width: int = 8
    collapse_decays: tuple[float, ...] = (0.0, 0.2, 0.75, 1.3)
    collapse_lr: float = 0.1
    collapse_steps: int = 500
    collapse_samples: int = 64
    collapse_init: float = 0.1
    rank_rtol: float = 0.01
    seed: int = 0
    threads: int | None = 1
    tolerance: float = 0.03

    def __post_init__(self) -> None:
        owner = "SymmetryConfig"
        for name in ("input_dim", "width", "output_dim", "collapse_width"):
            check_int(name, getattr(self, name), low=1, owner=owner)
        check_int("samples", self.samples, low=2, owner=owner)
        for name in ("steps", "balance_steps", "collapse_steps"):
            check_int(name, getattr(self, name), low=1, owner=owner)
        for name in ("measure_every", "balance_every"):
            check_int(name, getattr(self, name), low=1, owner=owner)
        check_int("balance_batch", self.balance_batch, low=1, owner=owner)
        check_int("balance_chains", self.balance_chains, low=2, owner=owner)
        check_run_fields(self, owner)
        layers = self.width * (self.input_dim + self.output_dim)  # a lower bound: one network's weights
        check_memory(owner, 4.0 * layers, ("width", "input_dim", "output_dim"))
        for name in (
            "lr",
            "balance_lr",
            "collapse_lr",
            "noise_std",
            "input_var",
            "collapse_init",
        ):
            setattr(self, name, check_real(name, getattr(self, name), low=0.0, low_open=True, owner=owner))
        self.rank_rtol = check_real(
            "rank_rtol", self.rank_rtol, low=0.0, high=1.0, low_open=True, high_open=True, owner=owner
        )
        self.weight_decays = as_tuple(
            "weight_decays", self.weight_decays, owner=owner, item=float, nonempty=True, low=0.0
        )
        self.collapse_decays = as_tuple(
            "collapse_decays", self.collapse_decays, owner=owner, item=float, nonempty=True, low=0.0
        )
        self.collapse_sv = as_tuple(
            "collapse_sv", self.collapse_sv, owner=owner, item=float, nonempty=True, low=0.0, low_open=True
        )
        init = as_tuple("balance_init", self.balance_init, owner=owner, item=float, nonempty=True)
        if len(init) != 2 or init[0] * init[1] == 0:
            raise LearndynValueError(
                f"{owner}.balance_init={self.balance_init!r} is not allowed; "
                "allowed: two non-zero numbers u0,w0"
            )
        self.balance_init = (init[0], init[1])
        if self.lr * max(self.weight_decays) >= 1.0:
            raise LearndynValueError(
                f"{owner}.lr={self.lr!r} is out of range; allowed: lr * max(weight_decays) < 1"
            )
        if self.collapse_lr * max(self.collapse_decays) >= 1.0:
            raise LearndynValueError(
                f"{owner}.collapse_lr={self.collapse_lr!r} is out of range; "
                "allowed: collapse_lr * max(collapse_decays) < 1"
            )
        if self.collapse_samples < len(self.collapse_sv):
            raise LearndynValueError(
                f"{owner}.collapse_samples={self.collapse_samples!r} is out of range; "
                f"allowed: >= len(collapse_sv) = {len(self.collapse_sv)} (whitened inputs)"
            )
        # the law-of-balance prediction checks its own stability conditions (one-line errors)
        scalar_balance_sgd(
            self.balance_init[0] ** 2 - self.balance_init[1] ** 2,
            self.balance_lr,
            [1],
            self.balance_batch,
            self.input_var,
            self.noise_std**2,
            self.balance_init[0] * self.balance_init[1],
        )


QUICK = {
    "steps": 400,
    "lr": 0.02,
    "weight_decays": (0.0, 0.2),
    "measure_every": 20,
    "balance_lr": 0.04,
    "balance_steps": 1500,
    "balance_chains": 1000,
    "balance_every": 100,
    "collapse_decays": (0.0, 0.75),
    "collapse_lr": 0.2,
    "collapse_steps": 250,
}
"""The test-size configuration (``--quick``)."""


# ----------------------------------------------------------------------------------------------- helpers


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64)


def _orthogonal(gen: torch.Generator, d: int) -> Tensor:
    q, r = torch.linalg.qr(_randn(gen, d, d))
    return q * torch.sign(torch.diagonal(r))


# ------------------------------------------------------------------------------------ parts 1-2: decay


def relu_net(config: SymmetryConfig, seed: int) -> nn.Sequential:
    """``Linear(input_dim, width) → ReLU → Linear(width, output_dim)`` in float64.

    ``W₁ ~ N(0, 1/input_dim)``, ``b₁ ~ N(0, 0.01)``, ``W₂ ~ N(0, 1/output_dim)`` (columns of norm ≈ 1, so the
    balances ``q_j`` start with both signs), ``b₂ = 0``. Drawn from ``seed``; the global RNG is untouched.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        net = nn.Sequential(
            nn.Linear(config.input_dim, config.width), nn.ReLU(), nn.Linear(config.width, config.output_dim)
        ).to(F64)
    with torch.no_grad():
        net[0].weight.copy_(_randn(gen, config.width, config.input_dim) / math.sqrt(config.input_dim))
        net[0].bias.copy_(0.1 * _randn(gen, config.width))
        net[2].weight.copy_(_randn(gen, config.output_dim, config.width) / math.sqrt(config.output_dim))
        net[2].bias.zero_()
    return net


def _relu_data(config: SymmetryConfig) -> tuple[Tensor, Tensor]:
    """``x ~ N(0, I)``; ``y_k = sin(a_kᵀx)`` for random directions ``a_k ~ N(0, I)``."""
    gen = torch.Generator().manual_seed(config.seed * 7919 + 1)
    x = _randn(gen, config.samples, config.input_dim)
    a = _randn(gen, config.input_dim, config.output_dim)
    return x, torch.sin(x @ a)


def _decay_run(config: SymmetryConfig, index: int, lam: float, recorder: Recorder) -> dict[str, Any]:
    log = LoopLog(recorder, f"wd={lam:g}")
    net = relu_net(config, config.seed)
    x, y = _relu_data(config)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, weight_decay=lam)
    probe = SymmetryProbe(every=config.measure_every, symmetries=[RESCALE], detect=False)
    monitor = Monitor(net, half_squared_error, probes=[probe], recorder=log, optimizer=opt)
    loop = train_loop(
        net, opt, lambda _g: (x, y), half_squared_error, config.steps,
        generator=torch.Generator().manual_seed(config.seed), recorder=log, monitor=monitor,
        log_every=config.measure_every, checkpointer=log.checkpointer, key=f"symmetry-decay-{index}",
        prefix="decay/", progress=f"{NAME}: decay wd={lam:g}",
    )
    if loop.status == "completed":
        monitor.after_step(config.steps, (x, y))  # the state after the last update (if on the schedule)
    monitor.close()
    key = f"symmetry/rescale/{RESCALE.tag}"
    steps, values = log.array_series(f"{key}/value")
    q = np.stack(values)
    t = config.lr * steps.astype(float)
    theory = balance_flow(q[0], t, lam)
    for k, s in enumerate(steps):
        log.log(
            int(s),
            {
                "sim/balance_norm": float(np.linalg.norm(q[k])),
                "theory/balance_norm": float(np.linalg.norm(theory[k])),
            },
        )
    log.flush()
    err = decay_errors(q, t, lam)
    _, rel_drift = log.series(f"{key}/rel_drift")
    return {
        "error": float(err.max()) if loop.status == "completed" else math.inf,
        "max_rel_drift": float(rel_drift.max()),
        "final_ratio": float(np.linalg.norm(q[-1]) / np.linalg.norm(q[0])),
        "final_ratio_theory": float(math.exp(-2 * lam * t[-1])),
        "status": loop.status,
    }


# ------------------------------------------------------------------------------ part 3: law of balance


def _balance_run(config: SymmetryConfig, recorder: Recorder) -> dict[str, Any]:
    log = LoopLog(recorder)
    u0, w0 = config.balance_init
    v_star, h, s2, b = u0 * w0, config.input_var, config.noise_std**2, config.balance_batch
    model = ScalarNetEnsemble(config.balance_chains, u0, w0)
    opt = torch.optim.SGD(model.parameters(), lr=config.balance_lr)
    probe = ChainBalanceProbe(config.balance_every, v_star)
    monitor = Monitor(model, chains_loss, probes=[probe], recorder=log, optimizer=opt)
    shape = (b, config.balance_chains)

    def sample(gen: torch.Generator) -> tuple[Tensor, Tensor]:  # online: fresh samples every step
        x = math.sqrt(h) * torch.randn(*shape, generator=gen, dtype=F64)
        return x, v_star * x + config.noise_std * torch.randn(*shape, generator=gen, dtype=F64)

    gen = torch.Generator().manual_seed(config.seed * 7919 + 2)
    loop = train_loop(
        model, opt, sample, chains_loss, config.balance_steps, generator=gen, recorder=log, monitor=monitor,
        log_every=config.balance_every, checkpointer=log.checkpointer, key="symmetry-balance",
        prefix="balance/", progress=f"{NAME}: law of balance",
    )
    if loop.status == "completed":
        monitor.after_step(config.balance_steps, sample(torch.Generator().manual_seed(0)))
    monitor.close()
    steps, mean = log.series("balance/mean")
    _, sem = log.series("balance/sem")
    _, pvar = log.series("balance/product_var")
    q0 = u0 * u0 - w0 * w0
    theory = scalar_balance_sgd(q0, config.balance_lr, steps, b, h, s2, v_star)
    leading = scalar_balance_sgd(q0, config.balance_lr, steps, b, h, s2, v_star, fluctuation_correction=False)
    lr = config.balance_lr
    pvar_theory = np.array([balance_product_variance(float(q), lr, b, h, s2, v_star) for q in theory])
    for k, s in enumerate(steps):
        log.log(
            int(s),
            {
                "sim/balance_mean": float(mean[k]),
                "theory/balance_mean": float(theory[k]),
                "balance/leading_order_law": float(leading[k]),
                "sim/product_var": float(pvar[k]),
                "theory/product_var": float(pvar_theory[k]),
            },
        )
    log.flush()
    rel = np.abs(mean - theory) / np.abs(theory)
    late = steps >= steps.max() // 2  # the adiabatic product variance holds once uw has equilibrated
    return {
        "error": float(rel.max()) if loop.status == "completed" else math.inf,
        "leading_order_error": float(np.max(np.abs(mean - leading) / np.abs(leading))),
        "final_mean": float(mean[-1]),
        "final_theory": float(theory[-1]),
        "final_sem": float(sem[-1]),
        "q0": q0,
        "product_var_error": float(np.max(np.abs(pvar[late] - pvar_theory[late]) / pvar_theory[late])),
        "status": loop.status,
    }


# ----------------------------------------------------------------------------------- part 4: collapse


def _collapse_data(config: SymmetryConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher ``T = U diag(σ) Vᵀ``, whitened inputs ``X`` (``XᵀX/n = I`` exactly) and targets ``Y = XTᵀ``."""
    gen = torch.Generator().manual_seed(config.seed * 7919 + 3)
    d, n = len(config.collapse_sv), config.collapse_samples
    sv = torch.tensor(config.collapse_sv, dtype=F64)
    teacher = _orthogonal(gen, d) @ torch.diag(sv) @ _orthogonal(gen, d).T
    q, r = torch.linalg.qr(_randn(gen, n, d))
    x = math.sqrt(n) * q * torch.sign(torch.diagonal(r))
    return teacher, x, x @ teacher.T


def linear_net(d: int, width: int, init: float, seed: int) -> nn.Sequential:
    """``Linear(d, width) → Linear(width, d)`` without biases, weights ``N(0, init²/fan_in)``, float64."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        net = nn.Sequential(nn.Linear(d, width, bias=False), nn.Linear(width, d, bias=False)).to(F64)
    with torch.no_grad():
        net[0].weight.copy_(init * _randn(gen, width, d) / math.sqrt(d))
        net[1].weight.copy_(init * _randn(gen, d, width) / math.sqrt(width))
    return net


def spectrum_error(measured: np.ndarray, predicted: np.ndarray, scale: float) -> float:
    """``max(max_{s_i^th > 0} |s_i − s_i^th|/s_i^th, max_{s_i^th = 0} |s_i|/scale)``: relative where the
    theory predicts a non-zero singular value (so an error of ``ε`` in ``λ`` or in ``σ_i`` shows as
    ``≥ ε·λ/(σ_i − λ)`` resp. ``ε·σ_i/(σ_i − λ)``), relative to ``scale`` (the top teacher value) where it
    predicts zero."""
    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    alive = predicted > 0
    rel = np.abs(measured[alive] - predicted[alive]) / predicted[alive]
    dead = np.abs(measured[~alive]) / scale
    return float(max(rel.max(initial=0.0), dead.max(initial=0.0)))


def _collapse_run(config: SymmetryConfig, index: int, lam: float, recorder: Recorder) -> dict[str, Any]:
    log = LoopLog(recorder, f"wd={lam:g}")
    teacher, x, y = _collapse_data(config)
    d, m = len(config.collapse_sv), config.collapse_width
    net = linear_net(d, m, config.collapse_init, config.seed + 1)
    opt = torch.optim.SGD(net.parameters(), lr=config.collapse_lr, weight_decay=lam)
    every = max(1, config.collapse_steps // 50)
    probe = RepresentationProbe(every=every, modules=["0"], spectrum=True)
    monitor = Monitor(net, half_squared_error, probes=[probe], recorder=log, optimizer=opt)
    loop = train_loop(
        net, opt, lambda _g: (x, y), half_squared_error, config.collapse_steps,
        generator=torch.Generator().manual_seed(config.seed), recorder=log, monitor=monitor, log_every=every,
        checkpointer=log.checkpointer, key=f"symmetry-collapse-{index}", prefix="collapse/",
        progress=f"{NAME}: collapse wd={lam:g}",
    )
    if loop.status == "completed":
        monitor.after_step(config.collapse_steps, (x, y))  # the final state (if on the schedule)
    monitor.close()
    s_th = soft_threshold_spectrum(config.collapse_sv, lam, m)
    rank_th = int(np.sum(s_th > 0))
    erank_th = effective_rank(np.sqrt(s_th))
    steps, svs = log.array_series("repr/0/sv")
    ranks = [numerical_rank(sv, config.rank_rtol) for sv in svs]
    _, erank = log.series("repr/0/erank")
    for k, s in enumerate(steps):
        log.log(
            int(s),
            {
                "sim/hidden_rank": float(ranks[k]),
                "theory/hidden_rank": float(rank_th),
                "sim/hidden_erank": float(erank[k]),
                "theory/hidden_erank": erank_th,
            },
        )
    with torch.no_grad():
        product = (net[1].weight @ net[0].weight).numpy()
    s_sim = np.linalg.svd(product, compute_uv=False)[: s_th.size]
    log.log_array(config.collapse_steps, "collapse/product_sv", s_sim)
    log.log_array(config.collapse_steps, "collapse/product_sv_theory", s_th)
    log.flush()
    err = spectrum_error(s_sim, s_th, max(config.collapse_sv))
    return {
        "error": err if loop.status == "completed" else math.inf,
        "rank": ranks[-1],
        "rank_theory": rank_th,
        "erank": float(erank[-1]),
        "erank_theory": erank_th,
        "sv": s_sim,
        "sv_theory": s_th,
        "status": loop.status,
    }


# -------------------------------------------------------------------------------------------------- run


def _row(part: str, weight_decay: float, measured: float, theory: float, error: float, note: str) -> dict:
    """One row of the result table."""
    return {
        "part": part,
        "weight_decay": weight_decay,
        "measured": measured,
        "theory": theory,
        "max_rel_error": error,
        "note": note,
    }


@threaded
def run(config: SymmetryConfig, recorder: Recorder) -> ExperimentResult:
    """Train the four parts, log ``sim/*`` and ``theory/*`` curves, return the agreement (see module doc)."""
    summary: dict[str, float] = {}
    table: list[dict[str, Any]] = []
    decay_err = 0.0
    for i, lam in enumerate(config.weight_decays):
        r = _decay_run(config, i, lam, recorder)
        decay_err = max(decay_err, r["error"])
        tag = f"decay/wd={lam:g}"
        summary[f"{tag}/max_rel_error"] = r["error"]
        summary[f"{tag}/max_rel_drift"] = r["max_rel_drift"]
        summary[f"{tag}/final_ratio"] = r["final_ratio"]
        summary[f"{tag}/final_ratio_theory"] = r["final_ratio_theory"]
        note = "‖q(t_end)‖/‖q₀‖ vs e^{-2λt}"
        table.append(_row("decay", lam, r["final_ratio"], r["final_ratio_theory"], r["error"], note))

    b = _balance_run(config, recorder)
    summary.update({f"balance/{k}": float(v) for k, v in b.items() if k != "status"})
    note = f"E[u²−w²] from {b['q0']:g}; leading order off by {b['leading_order_error']:.3f}"
    table.append(_row("law of balance", 0.0, b["final_mean"], b["final_theory"], b["error"], note))

    collapse_err, rank_match = 0.0, True
    for i, lam in enumerate(config.collapse_decays):
        c = _collapse_run(config, i, lam, recorder)
        collapse_err = max(collapse_err, c["error"])
        rank_match &= c["rank"] == c["rank_theory"]
        tag = f"collapse/wd={lam:g}"
        summary[f"{tag}/rank"] = float(c["rank"])
        summary[f"{tag}/rank_theory"] = float(c["rank_theory"])
        summary[f"{tag}/erank"] = c["erank"]
        summary[f"{tag}/erank_theory"] = c["erank_theory"]
        summary[f"{tag}/sv_error"] = c["error"]
        note = f"rank of W₁ (width {config.collapse_width}); erank {c['erank']:.3f} vs "
        note += f"{c['erank_theory']:.3f}"
        table.append(_row("collapse", lam, float(c["rank"]), float(c["rank_theory"]), c["error"], note))
    summary["collapse/max_sv_error"] = collapse_err
    summary["collapse/rank_match"] = float(rank_match)
    summary["decay/max_rel_error"] = decay_err
    agreement = max(decay_err, b["error"], collapse_err)
    summary["agreement"] = agreement
    return ExperimentResult(summary=summary, agreement=agreement, tolerance=config.tolerance, table=table)


def symmetry_figures(store: Any, run_id: str) -> list[Any]:
    """Report figure: the final product spectrum per weight decay (markers) over soft-thresholding (lines)."""
    import plotly.graph_objects as go

    names = set(store.array_names(run_id)["name"])
    fig = go.Figure()
    for name in sorted(n for n in names if n.startswith("collapse/product_sv/")):
        tag = name.rsplit("/", 1)[-1]
        _, sim = store.array_stack(run_id, name)
        theory_name = f"collapse/product_sv_theory/{tag}"
        if sim.size:
            idx = np.arange(1, sim.shape[1] + 1)
            fig.add_trace(go.Scatter(x=idx, y=sim[-1], mode="markers", name=f"{tag} (sim)"))
            if theory_name in names:
                _, th = store.array_stack(run_id, theory_name)
                fig.add_trace(
                    go.Scatter(
                        x=idx, y=th[-1], mode="lines", line={"dash": "dash"}, name=f"{tag} (max(σ−λ, 0))"
                    )
                )
    fig.update_layout(
        title="Low-rank collapse: singular values of W₂W₁ vs soft-thresholded teacher",
        xaxis_title="index i",
        yaxis_title="s_i",
    )
    return [fig]


EXPERIMENT = register(Experiment(NAME, DESCRIPTION, SymmetryConfig, run, QUICK, figures=(symmetry_figures,)))
