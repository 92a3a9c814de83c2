r"""Grokking on a one-layer transformer under the full probe preset (``learndyn run grokking-transformer``).

Nanda, Chan, Lieberum, Smith & Steinhardt, "Progress measures for grokking via mechanistic interpretability",
ICLR 2023: modular addition learned by a one-layer transformer memorises first and generalises much later,
through a Fourier circuit. :mod:`learndyn.phenomena.grokking` shows the phenomenon on an MLP; this module is
the setting of the paper, and asks what learndyn's instruments see in each of its three phases.

Task and model
--------------
The data are those of :mod:`~learndyn.phenomena.grokking` (all ``p²`` pairs ``(a, b)``, label
``(a + b) mod p``, a random ``train_fraction`` trained on). Each pair is the sequence ``a b =`` of three
tokens from a vocabulary of ``p + 1`` (token ``p`` is ``=``). The model is the paper's, without LayerNorm:

    x⁰_t = E[token_t] + P_t                                   (E ∈ R^{(p+1)×d}, P ∈ R^{3×d})
    x¹ = x⁰ + W_O · Attn(x⁰)                                  (``heads`` causal heads of width d / heads)
    x² = x¹ + W_out · ReLU(W_in x¹ + b_in) + b_out           (``d_mlp`` hidden units)
    logits = U · x²_{t=3}                                     (U ∈ R^{p×d}, read at the ``=`` position)

with ``Attn`` computed by :func:`torch.nn.functional.scaled_dot_product_attention` (``is_causal=True``): the
probes choose a backend that supports what they need (double backward for curvature) on their own. AdamW with
decoupled weight decay, full batch.

The three phases, and what the probes see
-----------------------------------------
The phases (memorisation, circuit formation, cleanup) and the reproduction figure are those of
:mod:`~learndyn.phenomena.grokking` (:func:`~learndyn.phenomena.grokking.reproduction_shortfall`: the network
must end up generalising at least ``min_delay_ratio`` times later than it memorised). The Fourier
concentrations are taken over the token-indexed tables ``E[:p]`` (``fourier/embed_*``) and ``U``
(``fourier/unembed_*``).

Every ``probe_every`` steps the full preset's instruments measure the full training batch: the gradient noise
(``noise/*``, per-sample Gram by layer hooks over the token axis), the Hessian's top eigenvalue and trace
(``curvature/*``, Lanczos), the empirical NTK on 32 training pairs (``kernel/*``), the conserved quantities of
the model's symmetries (``symmetry/*``) and the effective rank of each block's output (``repr/*``). The
result's table gives, per phase, the median of each headline probe metric over the measurements inside the
phase (``probe/<metric>``), so the phases can be compared by their instruments as well as by their accuracy.

There is no closed form: the experiment is registered as a reproduction check (``reproduction=True``), kept
out of ``learndyn run all`` (``in_run_all=False``: on a CPU it takes minutes to grok; its test size only
memorises).

Measured (defaults: p = 53, half of the pairs, d = 32, 4 heads, d_mlp = 128, AdamW lr 1e-2, weight decay 1,
β = (0.9, 0.98), full batch, seed 0): train accuracy ≥ 0.99 at step 200, test accuracy ≥ 0.95 at
step 3140 (delay ratio 15.7), final test accuracy 1.0; top-5 Fourier concentration of the embedding 0.23 →
0.31 at memorisation → 0.96. ``docs/phenomena/grokking-transformer.md`` has the probes' table per phase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learndyn.config import check_memory
from learndyn.phenomena._figures import run_series
from learndyn.phenomena._loop_log import LoopLog
from learndyn.phenomena._stepwise import loop_checkpoint_every
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.grokking import (
    SPECTRUM_EVERY,
    _result,
    check_grokking_training,
    check_modular_addition,
    fourier_metrics,
    grokking_figures,
    modular_addition_split,
)
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.probes.fourier import fourier_spectrum
from learndyn.probes.monitor import Monitor
from learndyn.probes.presets import PRESETS, make_probe
from learndyn.probes.representation import ParameterDistanceProbe
from learndyn.store.recorder import Recorder
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError, check_int

NAME = "grokking-transformer"
DESCRIPTION = "Grokking on a one-layer transformer (Nanda et al.), the full probe preset in each phase"
PHASE_METRICS = (
    "curvature/lambda_max",
    "curvature/trace",
    "noise/temperature",
    "noise/snr",
    "noise/effective_rank",
    "kernel/effective_rank",
    "kernel/target_alignment",
    "kernel/velocity_per_step",
    "params/norm",
)
"""The probe metrics summarised per phase (median over the measurements inside it), in the summary."""
TABLE_METRICS = ("curvature/lambda_max", "noise/temperature", "kernel/velocity_per_step")
"""The ones also shown as columns of the phase table (the terminal table stays readable)."""


@dataclass
class GrokkingTransformerConfig:
    """Modular addition mod ``p``, the one-layer transformer, AdamW and the schedules (module docstring).

    ``d_model`` must be a multiple of ``heads``. ``eval_every``: steps between evaluations (accuracy, loss,
    Fourier, weight norm). ``probe_every``: steps between full-preset probe measurements (a multiple of
    ``eval_every``). The other fields are those of :class:`~learndyn.phenomena.grokking.GrokkingConfig`.
    """

    p: int = 53
    train_fraction: float = 0.5
    d_model: int = 32
    heads: int = 4
    d_mlp: int = 128
    lr: float = 1e-2
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    steps: int = 4000
    eval_every: int = 20
    probe_every: int = 200
    top_k: int = 5
    memorisation_acc: float = 0.99
    generalisation_acc: float = 0.95
    seed: int = 0
    threads: int | None = 1
    min_delay_ratio: float = 10.0
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        owner = "GrokkingTransformerConfig"
        check_modular_addition(self, owner)
        check_int("heads", self.heads, low=1, high=64, owner=owner)
        check_int("d_model", self.d_model, low=1, high=4096, owner=owner)
        if self.d_model % self.heads:
            raise LearndynValueError(
                f"{owner}.d_model={self.d_model!r} is not allowed; allowed: a multiple of heads={self.heads}"
            )
        check_int("d_mlp", self.d_mlp, low=1, high=16384, owner=owner)
        check_grokking_training(self, owner)
        check_int("steps", self.steps, low=1, high=10_000_000, owner=owner)
        check_int("probe_every", self.probe_every, low=1, owner=owner)
        if self.probe_every % self.eval_every:
            raise LearndynValueError(
                f"{owner}.probe_every={self.probe_every!r} is not allowed; "
                f"allowed: a multiple of eval_every={self.eval_every}"
            )
        # a lower bound: the float32 MLP activations of the full training batch (3 tokens per pair)
        check_memory(owner, 4.0 * self.n_train() * 3 * self.d_mlp, ("p", "train_fraction", "d_mlp"))

    def n_train(self) -> int:
        """Number of training pairs, ``round(train_fraction · p²)``."""
        return int(round(self.train_fraction * self.p**2))


QUICK = {"steps": 400, "probe_every": 100}
"""The test-size configuration (``--quick``): memorisation and the start of circuit formation only."""


class OneLayerTransformer(nn.Module):
    """The attention-plus-MLP block of the module docstring, read out at the ``=`` position.

    Input: ``int64 (n, 2)`` operand pairs; output: ``(n, p)`` logits. ``embed.weight[:p]`` and
    ``unembed.weight`` (``p × d``) are indexed by token.
    """

    def __init__(self, p: int, d_model: int, heads: int, d_mlp: int) -> None:
        super().__init__()
        self.p, self.heads = p, heads
        self.embed = nn.Embedding(p + 1, d_model)
        self.pos = nn.Parameter(torch.randn(3, d_model) / math.sqrt(d_model))
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.attn_out = nn.Linear(d_model, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, p, bias=False)

    def token_table(self) -> Tensor:
        """The embedding rows of the ``p`` operand tokens (``p × d``; the ``=`` token left out): what
        :func:`~learndyn.phenomena.grokking.fourier_metrics` takes the Fourier spectrum of."""
        return self.embed.weight[: self.p]

    def forward(self, pairs: Tensor) -> Tensor:
        n = pairs.shape[0]
        equals = torch.full((n, 1), self.p, dtype=pairs.dtype, device=pairs.device)
        x = self.embed(torch.cat([pairs, equals], dim=1)) + self.pos  # (n, 3, d)
        # (n, 3, 3·d) → 3 × (n, heads, 3, d/heads)
        q, k, v = self.qkv(x).view(n, 3, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(heads.transpose(1, 2).reshape(n, 3, -1))
        x = x + self.mlp_out(F.relu(self.mlp_in(x)))
        return self.unembed(x[:, -1])


def make_model(config: GrokkingTransformerConfig) -> OneLayerTransformer:
    """The transformer with PyTorch's default initialisation drawn from ``seed`` (global RNG left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return OneLayerTransformer(config.p, config.d_model, config.heads, config.d_mlp)


def full_preset_probes() -> list[Any]:
    """The full preset's probes, each due whenever called, without ``parameters`` (measured at every
    evaluation instead) and ``stages`` (the phases are found on the evaluated series)."""
    skip = {"parameters", "stages"}
    return [make_probe(name, **{**kw, "every": 1}) for name, kw in PRESETS["full"] if name not in skip]


class _Probes:
    """``train_loop``'s monitor: weight norm every evaluation, the full preset every ``probe_every`` steps,
    the embedding spectrum every ``SPECTRUM_EVERY`` evaluations."""

    def __init__(self, model: OneLayerTransformer, light: Monitor, full: Monitor, log: LoopLog,
                 config: GrokkingTransformerConfig) -> None:
        self.model, self.light, self.full, self.log, self.config = model, light, full, log, config

    def measure(self, step: int, batch: tuple[Tensor, Tensor]) -> None:
        self.light.after_step(step, batch)
        if step % self.config.probe_every == 0 or step == self.config.steps:
            self.full.after_step(step, batch)
        if step % (SPECTRUM_EVERY * self.config.eval_every) == 0 or step == self.config.steps:
            spectrum = fourier_spectrum(self.model.token_table()).numpy()
            self.log.log_array(step, "fourier/embed_spectrum", spectrum)

    def after_step(
        self, step: int, batch: tuple[Tensor, Tensor], metrics: Mapping[str, float] | None = None
    ) -> None:
        if step % self.config.eval_every == 0:
            self.measure(step, batch)


@threaded
def run(config: GrokkingTransformerConfig, recorder: Recorder) -> ExperimentResult:
    """Train the transformer on modular addition; evaluate, probe, find the phases, summarise the probes."""
    x_train, y_train, x_test, y_test = modular_addition_split(config)  # type: ignore[arg-type]
    model = make_model(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    log = LoopLog(recorder)

    def evaluate(net: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        with torch.no_grad():
            for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
                logits = net(x)
                out[f"{split}/loss"] = float(F.cross_entropy(logits, y))
                out[f"{split}/acc"] = float((logits.argmax(dim=1) == y).double().mean())
            out.update(fourier_metrics(model, config.top_k)[0])
        return out

    light = Monitor(model, F.cross_entropy, probes=[ParameterDistanceProbe(every=1, per_param=False)],
                    recorder=log, optimizer=optimizer)
    full = Monitor(model, F.cross_entropy, probes=full_preset_probes(), recorder=log, optimizer=optimizer)
    probes = _Probes(model, light, full, log, config)
    checkpointer = log.checkpointer
    loop = train_loop(
        model,
        optimizer,
        lambda gen: (x_train, y_train),
        F.cross_entropy,
        config.steps,
        generator=torch.Generator().manual_seed(config.seed + 1),
        recorder=log,
        monitor=probes,
        log_every=config.eval_every,
        evaluate=evaluate,
        eval_every=config.eval_every,
        checkpointer=checkpointer,
        checkpoint_every=loop_checkpoint_every(checkpointer, config.steps),
        key=NAME,
        prefix="",
        progress=NAME,
    )
    if loop.status == "completed":  # the state after the last update (train_loop evaluated it already)
        probes.measure(config.steps, (x_train, y_train))
    light.close()
    full.close()
    base = _result(config, log, loop.status)  # type: ignore[arg-type]
    return _with_probe_phases(base, log)


def _with_probe_phases(base: ExperimentResult, log: LoopLog) -> ExperimentResult:
    """Add the median over the full-preset measurements inside each phase of every :data:`PHASE_METRICS` to
    the summary (``<phase>/<metric>``), and of :data:`TABLE_METRICS` to the table (``probe/<metric>``)."""
    series = {name: log.series(name) for name in PHASE_METRICS}
    table = []
    summary = dict(base.summary)
    for row in base.table:
        start, stop = float(row["start_step"]), float(row["end_step"])
        row = dict(row)
        for name, (x, y) in series.items():
            inside = (x >= start) & (x <= stop) if math.isfinite(start) and math.isfinite(stop) else x < 0
            value = float(np.median(y[inside])) if inside.any() else math.nan
            if name in TABLE_METRICS:
                row[f"probe/{name}"] = value
            key = str(row["phase"]).replace(" ", "_")
            summary[f"{key}/{name}"] = value
        table.append(row)
    return ExperimentResult(summary=summary, table=table, agreement=base.agreement, tolerance=base.tolerance)


def probe_figures(store: Any, run_id: str) -> list[Any]:
    """The full preset's headline metrics over training (log step), with the phase boundaries marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    series = run_series(store, run_id, list(PHASE_METRICS))
    summary = store.run_info(run_id)["summary"] or {}
    shown = [name for name in PHASE_METRICS if name in series and np.asarray(series[name][0]).size]
    if not shown:
        return []
    fig = make_subplots(rows=len(shown), cols=1, shared_xaxes=True, vertical_spacing=0.02,
                        subplot_titles=shown)
    for row, name in enumerate(shown, start=1):
        x, y = (np.asarray(a, dtype=float) for a in series[name])
        keep = x > 0
        fig.add_trace(go.Scatter(x=x[keep], y=y[keep], mode="lines+markers", name=name, showlegend=False),
                      row=row, col=1)
        fig.update_yaxes(title_text=name.split("/")[-1], row=row, col=1)
        for key, color in (("memorisation_step", "royalblue"), ("cleanup_start_step", "darkorange"),
                           ("grokking_step", "firebrick")):
            value = summary.get(key)
            if isinstance(value, int | float) and math.isfinite(value) and value > 0:
                fig.add_vline(x=value, line_dash="dot", line_color=color, row=row, col=1)
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="step", row=len(shown), col=1)
    fig.update_layout(
        title="The full probe preset through grokking (dotted: memorised, cleanup start, grokked)",
        template="plotly_white", height=170 * len(shown) + 120,
    )
    return [fig]


EXPERIMENT = register(
    Experiment(NAME, DESCRIPTION, GrokkingTransformerConfig, run, QUICK,
               figures=(grokking_figures, probe_figures), reproduction=True, in_run_all=False)
)
