r"""Grokking: delayed generalisation on modular addition (``learndyn run grokking``).

Power, Burda, Edwards, Babuschkin & Misra, "Grokking: generalization beyond overfitting on small algorithmic
datasets" (2022); Nanda, Chan, Lieberum, Smith & Steinhardt, "Progress measures for grokking via mechanistic
interpretability", ICLR 2023.

Task and model
--------------
All ``p²`` pairs ``(a, b) ∈ Z_p × Z_p`` with label ``c = (a + b) mod p``; a random ``train_fraction`` of them
(split by ``seed``) is the training set, the rest the test set. The model is a two-layer MLP on learned token
embeddings,

    logits(a, b) = W_out · ReLU(W_in [E_a ; E_b] + b_in) + b_out,

with one embedding table ``E ∈ R^{p×d}`` (``d = embed_dim``) shared by both operands, ``hidden`` ReLU units
and an unembedding ``W_out ∈ R^{p×hidden}`` (one row per output token). It is trained on the cross-entropy by
AdamW with decoupled weight decay ``weight_decay``, full batch by default (``batch_size=None``).

What happens (the phenomenon)
-----------------------------
The network first *memorises*: training accuracy reaches ~100% within tens to hundreds of steps while the test
accuracy stays at chance (``1/p``) and the test loss even rises. Much later, with the training accuracy at
100% all along, the test accuracy jumps to ~100%: the network *groks*. Nanda et al. explain it for a one-layer
transformer, and the same picture holds for this MLP (its final embedding spectrum is a handful of sharp
frequencies): weight decay slowly trades the memorising solution for a cheaper, generalising *Fourier
circuit* that embeds each token as ``cos(2πka/p), sin(2πka/p)`` for a few key frequencies ``k`` and computes
``a + b`` with trigonometric identities. They split training into three phases: **memorisation**, **circuit
formation** (the Fourier circuit grows inside the memorising network while the test loss barely moves) and
**cleanup** (weight decay removes the memorising components; the test loss collapses, the test accuracy jumps
and the weight norm falls fast). In this MLP, from PyTorch's default initialisation (embedding entries
``N(0, 1)``), the weight norm grows during circuit formation, peaks near its end and falls through cleanup.

The hidden progress measure: Fourier concentration
---------------------------------------------------
For a table ``W ∈ R^{p×n}`` indexed by token (the embedding ``E``, or ``W_out``), the normalised power
``s_k`` of its discrete Fourier transform over the token axis per frequency ``k = 1 … ⌊p/2⌋``
(:func:`~learndyn.probes.fourier.fourier_spectrum`; ``k = 0`` left out: a token-independent offset carries
no information about ``a``) gives two concentrations:

* ``topk`` -- the fraction of power in the ``top_k`` strongest frequencies
  (:func:`~learndyn.probes.fourier.topk_fraction`): about ``top_k / ⌊p/2⌋`` (plus an order-statistics
  excess) for a random table, → 1 for a table built from ``top_k`` or fewer frequencies;
* ``gini`` -- the Gini coefficient of ``s`` (:func:`~learndyn.probes.fourier.gini`),
  ``G = Σ_i (2i − m − 1) s_(i) / (m Σ s)`` over the ``m = ⌊p/2⌋`` frequencies sorted ascending: 0 for a
  flat spectrum, ``1 − 1/m`` for one frequency.

Both are logged for the embedding (``fourier/embed_*``) and the unembedding (``fourier/unembed_*``); the
spectrum of the embedding is logged as the array ``fourier/embed_spectrum`` (index ``k − 1``).

Logged and reported
-------------------
Every ``eval_every`` steps (and after the last update): ``train/loss``, ``train/acc``, ``test/loss``,
``test/acc`` (the whole split, no dropout), the Fourier concentrations, and through the
:class:`~learndyn.probes.Monitor` the :class:`~learndyn.probes.representation.ParameterDistanceProbe`'s
``params/norm`` (``‖θ‖₂`` over all trainable parameters) and ``params/dist_init``; ``loss`` is the
training (mini)batch loss the loop minimises.

Summary: ``memorisation_step`` (first evaluated step with train accuracy ≥ ``memorisation_acc``),
``grokking_step`` (first with test accuracy ≥ ``generalisation_acc``), ``delay_ratio`` = grokking /
memorisation step, the final accuracies and losses, the weight norm (initial, final, and the step of its
maximum after memorisation) and the Fourier concentrations at initialisation, at memorisation and at the end.

Stages: a :class:`~learndyn.probes.stages.StageDetector` (:func:`stage_detector`) is run on the test loss,
the test accuracy and the weight norm, one point per evaluation. For each it reports the first completed
descent after memorisation (a plateau end followed by a drop; for the accuracy a jump up):
``stages/<series>/descent_start`` (the plateau end), ``.../drop`` (steepest descent) and ``.../settled``
(the next plateau; ``nan`` if the series is still moving at the end). The phases in the result's ``table``:

* memorisation: ``[0, memorisation_step]``;
* circuit formation: ``[memorisation_step, cleanup_start)``, where ``cleanup_start_step`` is where the test
  accuracy leaves its plateau (``stages/test_acc/descent_start``; else the weight norm's descent start; never
  after ``grokking_step``);
* cleanup: ``[cleanup_start, cleanup_end]``, ``cleanup_end_step`` being where the test loss settles
  (``stages/test_loss/settled``, else the end of training).

Measured at the defaults (p = 97, 30% of the pairs, d = 64, 128 hidden units, AdamW lr 1e-2, weight decay 1,
full batch, 2500 steps; ~26 s of one CPU core), seeds 0/1/2: memorised at step 50, grokked at 1550/1170/1310
(delay ratio 31/23/26), final test accuracy 1.0, top-5 Fourier concentration of the embedding 0.13 → 0.62/
0.65/0.78 (it starts rising a few hundred steps after memorisation, long before the test accuracy moves).
Seed 0: the test loss climbs from 4.6 to 14 while memorising; the weight norm rises during circuit formation
to a peak at step 840 and falls through cleanup (detected descent start 910, cleanup start 940, test-accuracy
jump 1395, test loss settled 1785). ``--set p=113`` or ``train_fraction=0.5`` work as well; small moduli
(p ≲ 40) generalise gradually rather than suddenly.

The published MLP setting (one-hot operands, two hidden ReLU layers, AdamW, weight decay 1, full batch):
``--set encoding=one_hot --set hidden_layers=2`` (the optimizer, decay and batch are the defaults). Measured
at the quick size (p = 53, 40% of the pairs, 128 units per layer, 2200 steps, seed 0; ~12 s of one core):
memorised at step 40, grokked at 1720 (delay ratio 43), final test accuracy 0.986, top-5 Fourier
concentration of the input table (``W_in``'s columns per token, both operands) 0.21 at initialisation,
0.23 at memorisation, 0.43 at the end. At the default size (p = 97, 2500 steps) it is still mid-cleanup at the
end (test accuracy 0.874, rising since step 1460): give it more ``steps``.

There is **no closed form**: this is a *reproduction check*, not a theory agreement, and it is listed
apart from the theory-vs-simulation figures (``learndyn run --list``, ``learndyn run all``, the report's
"Reproduction checks" verdict, which shows the test accuracy, the delay and the Fourier concentration). Its
figure is the *reproduction shortfall* (:func:`reproduction_shortfall`): ``max(1 − final test accuracy,
max(0, 1 − delay_ratio/min_delay_ratio))``, 0 when the run generalises fully at least ``min_delay_ratio``
(10) times later than it memorised, tested against ``tolerance`` (0.1). It has no theory ingredient to
perturb, so it has no sensitivity test (``tests/test_phenomena_sensitivity.py``).

Resuming: with a checkpointer on the recorder (a stored run's), the loop checkpoints under ``grokking``; the
measured series travel inside the checkpoints, so a resumed run reports the same result.
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

from learndyn.config import check_memory, check_run_fields
from learndyn.phenomena._grokking_report import grokking_figures, grokking_verdict
from learndyn.phenomena._loop_log import LoopLog
from learndyn.phenomena._stepwise import first_step, loop_checkpoint_every
from learndyn.phenomena._threads import threaded
from learndyn.phenomena.registry import Experiment, ExperimentResult, register
from learndyn.probes.fourier import fourier_spectrum, gini, topk_fraction
from learndyn.probes.monitor import Monitor
from learndyn.probes.representation import ParameterDistanceProbe
from learndyn.probes.stages import StageDetector, detect_stages, first_event
from learndyn.store.recorder import Recorder
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

NAME = "grokking"
DESCRIPTION = "Grokking on modular addition: memorise first, generalise much later (Fourier features)"
ENCODINGS = ("embedding", "one_hot")
SPECTRUM_EVERY = 10
"""The embedding spectrum array is logged every this many evaluations (and at the first and last)."""


@dataclass
class GrokkingConfig:
    """Modular addition mod ``p``, the MLP, AdamW and the evaluation schedule (see the module docstring).

    ``p``: the modulus (≥ 3; ``p²`` pairs). ``train_fraction``: share of the pairs trained on (both splits
    must be non-empty). ``embed_dim``, ``hidden``: embedding width ``d`` and ReLU units per layer.
    ``encoding``: ``"embedding"`` (a learned table shared by both operands) or ``"one_hot"`` (one-hot
    operands; ``embed_dim`` is then unused); ``hidden_layers``: ReLU layers (the published MLP setting is
    ``encoding=one_hot``, ``hidden_layers=2`` with AdamW, weight decay 1, full batch).
    ``lr``, ``weight_decay``, ``beta1``, ``beta2``: AdamW's (decoupled weight decay; grokking needs it).
    ``steps``: optimizer updates. ``batch_size``: ``None`` for full batch, else a minibatch drawn without
    replacement each step. ``eval_every``: steps between evaluations. ``top_k``: frequencies in the top-k
    Fourier concentration (≤ ``p // 2``). ``memorisation_acc`` / ``generalisation_acc``: the train / test
    accuracies that define the memorisation and grokking steps. ``seed``: split, initialisation and batches.
    ``threads``: torch intra-op threads while it runs (``None`` leaves torch's setting).
    """

    p: int = 97
    train_fraction: float = 0.3
    embed_dim: int = 64
    hidden: int = 128
    encoding: str = "embedding"
    hidden_layers: int = 1
    lr: float = 1e-2
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    steps: int = 2500
    batch_size: int | None = None
    eval_every: int = 10
    top_k: int = 5
    memorisation_acc: float = 0.99
    generalisation_acc: float = 0.95
    seed: int = 0
    threads: int | None = 1
    min_delay_ratio: float = 10.0
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        owner = "GrokkingConfig"
        n_train = check_modular_addition(self, owner)
        check_int("embed_dim", self.embed_dim, low=1, owner=owner)
        check_int("hidden", self.hidden, low=1, owner=owner)
        check_choice("encoding", self.encoding, ENCODINGS, owner=owner)
        check_int("hidden_layers", self.hidden_layers, low=1, high=8, owner=owner)
        check_grokking_training(self, owner)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, low=1, high=n_train, owner=owner)
        weights = self.p * self.embed_dim + 2 * self.embed_dim * self.hidden + self.hidden * self.p
        check_memory(owner, 4.0 * weights, ("p", "embed_dim", "hidden"))  # a lower bound: the weights

    def n_train(self) -> int:
        """Number of training pairs, ``round(train_fraction · p²)``."""
        return int(round(self.train_fraction * self.p**2))



def check_modular_addition(config: Any, owner: str) -> int:
    """Validate the task fields ``p`` and ``train_fraction`` of ``config`` in place; the number of training
    pairs. Shared by the grokking experiments."""
    check_int("p", config.p, low=3, high=1000, owner=owner)
    config.train_fraction = check_real(
        "train_fraction", config.train_fraction, low=0.0, high=1.0, low_open=True, high_open=True, owner=owner
    )
    n_train = config.n_train()
    if not 1 <= n_train <= config.p**2 - 1:
        raise LearndynValueError(
            f"{owner}.train_fraction={config.train_fraction!r} gives {n_train} of {config.p**2} pairs; "
            "allowed: at least one training and one test pair"
        )
    return n_train


def check_grokking_training(config: Any, owner: str) -> None:
    """Validate AdamW's fields (``lr``, ``weight_decay``, ``beta1``, ``beta2``), the schedule (``steps``,
    ``eval_every``, ``top_k``), the phase thresholds, the run fields and the reproduction figure's
    ``min_delay_ratio`` and ``tolerance`` of ``config`` in place. Shared by the grokking experiments."""
    config.lr = check_real("lr", config.lr, low=0.0, high=1.0, low_open=True, owner=owner)
    config.weight_decay = check_real("weight_decay", config.weight_decay, low=0.0, owner=owner)
    if config.lr * config.weight_decay >= 1.0:
        raise LearndynValueError(
            f"{owner}.weight_decay={config.weight_decay!r} is out of range; "
            f"allowed: lr * weight_decay < 1 (lr={config.lr!r})"
        )
    for name in ("beta1", "beta2"):
        value = check_real(name, getattr(config, name), low=0.0, high=1.0, high_open=True, owner=owner)
        setattr(config, name, value)
    check_int("steps", config.steps, low=1, owner=owner)
    check_int("eval_every", config.eval_every, low=1, owner=owner)
    check_int("top_k", config.top_k, low=1, high=config.p // 2, owner=owner)
    for name in ("memorisation_acc", "generalisation_acc"):
        value = check_real(name, getattr(config, name), low=0.0, high=1.0, low_open=True, owner=owner)
        setattr(config, name, value)
    check_run_fields(config, owner, tolerance=False)  # tolerance: a fraction, below
    config.min_delay_ratio = check_real("min_delay_ratio", config.min_delay_ratio, low=1.0, owner=owner)
    config.tolerance = check_real("tolerance", config.tolerance, low=0.0, high=1.0, owner=owner)


QUICK = {"p": 53, "train_fraction": 0.4, "steps": 2200}
"""The test-size configuration (``--quick``)."""


# ------------------------------------------------------------------------------------------ data and model
def modular_addition_split(config: GrokkingConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: pairs ``(a, b)`` as ``int64 (n, 2)``, labels ``(a + b) mod p``.

    The split is a random permutation of all ``p²`` pairs drawn from ``seed`` (its own generator).
    """
    p = config.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    y = (x[:, 0] + x[:, 1]) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(config.seed))
    train, test = perm[: config.n_train()], perm[config.n_train() :]
    return x[train], y[train], x[test], y[test]


class ModularMLP(nn.Module):
    """``W_out ReLU(… ReLU(W_in x + b_in) …) + b_out`` on the pair ``(a, b)`` encoded as ``x``.

    ``encoding="embedding"``: ``x = [E_a; E_b]`` with one learned table ``E`` (``embed``) for both operands;
    ``"one_hot"``: ``x = [e_a; e_b] ∈ R^{2p}`` (one-hot operands, so ``W_in``'s columns are the operands'
    embeddings). ``hidden_layers`` ReLU layers of ``hidden`` units (``hidden`` is the first; ``deeper`` the
    rest). :meth:`token_table` (``p × ·``) and ``unembed.weight`` (``p × hidden``) are indexed by token:
    their DFT over dimension 0 is the Fourier picture of the module docstring.
    """

    def __init__(
        self, p: int, embed_dim: int, hidden: int, encoding: str = "embedding", hidden_layers: int = 1
    ) -> None:
        super().__init__()
        self.p, self.encoding = p, encoding
        if encoding == "embedding":
            self.embed = nn.Embedding(p, embed_dim)
            width_in = 2 * embed_dim
        else:
            width_in = 2 * p
        self.hidden = nn.Linear(width_in, hidden)
        self.deeper = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(hidden_layers - 1))
        self.unembed = nn.Linear(hidden, p)

    def encode(self, pairs: Tensor) -> Tensor:
        """The input vector ``x`` of each pair, ``(n, width_in)``."""
        if self.encoding == "embedding":
            return self.embed(pairs).flatten(1)
        return F.one_hot(pairs, self.p).flatten(1).to(self.hidden.weight.dtype)

    def token_table(self) -> Tensor:
        """The input side indexed by token: ``E`` (``p × d``), or for one-hot operands ``[W_a | W_b]``
        (``p × 2·hidden``: the columns of ``W_in`` that operand ``a`` resp. ``b`` selects)."""
        if self.encoding == "embedding":
            return self.embed.weight
        w = self.hidden.weight  # (hidden, 2p)
        return torch.cat([w[:, : self.p].T, w[:, self.p :].T], dim=1)

    def forward(self, pairs: Tensor) -> Tensor:
        h = F.relu(self.hidden(self.encode(pairs)))
        for layer in self.deeper:
            h = F.relu(layer(h))
        return self.unembed(h)


def make_model(config: GrokkingConfig) -> ModularMLP:
    """The MLP with PyTorch's default initialisation drawn from ``seed`` (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ModularMLP(config.p, config.embed_dim, config.hidden, config.encoding, config.hidden_layers)


# ------------------------------------------------------------------------------------------ Fourier measures
def fourier_metrics(model: nn.Module, top_k: int) -> tuple[dict[str, float], Tensor]:
    """``fourier/{embed,unembed}_{topk,gini}`` of the model, and the embedding's spectrum: of its
    ``token_table()`` and ``unembed.weight`` (both ``p × ·``, indexed by token; both grokking models)."""
    out: dict[str, float] = {}
    embed_spectrum = fourier_spectrum(model.token_table())
    for name, spectrum in (("embed", embed_spectrum), ("unembed", fourier_spectrum(model.unembed.weight))):
        out[f"fourier/{name}_topk"] = topk_fraction(spectrum, top_k)
        out[f"fourier/{name}_gini"] = gini(spectrum)
    return out, embed_spectrum


# ------------------------------------------------------------------------------------------ stage detection
def stage_detector(quantity: str) -> StageDetector:
    """The detector for one evaluated series (one point per evaluation), with log-time windows.

    Windows cover the last 20% of the elapsed steps (at least 8 evaluations): they lengthen with the stages.

    * ``"test_loss"``, ``"test_acc"``: on the values themselves (``log=False``; accuracy as an increase); a
      plateau ends when the metric moves by more than 0.2 across a window, a stage must move it by 0.5.
    * ``"weight_norm"``: on ``log ‖θ‖`` with tolerances a tenth of those (the norm changes by ~10%).
    """
    if quantity == "weight_norm":
        return StageDetector(window=8, horizon=0.2, plateau_tol=0.005, drop_tol=0.02, min_drop=0.03)
    if quantity not in ("test_loss", "test_acc"):
        raise LearndynValueError(
            f"stage_detector: quantity={quantity!r} is not allowed; allowed: 'test_loss', 'test_acc', "
            "'weight_norm'"
        )
    return StageDetector(
        window=8,
        horizon=0.2,
        plateau_tol=0.05,
        drop_tol=0.2,
        min_drop=0.5,
        log=False,
        direction="increase" if quantity == "test_acc" else "decrease",
    )


# ------------------------------------------------------------------------------------------ the experiment
class _Probes:
    """``train_loop``'s monitor: at evaluation steps runs the :class:`Monitor` (weight norm, distance from
    initialisation) and, every ``SPECTRUM_EVERY`` evaluations, logs the embedding's Fourier spectrum."""

    def __init__(self, model: ModularMLP, monitor: Monitor, log: LoopLog, every: int) -> None:
        self.model, self.monitor, self.log, self.every = model, monitor, log, every

    def measure(self, step: int, batch: tuple[Tensor, Tensor], spectrum: bool = True) -> None:
        self.monitor.after_step(step, batch)
        if spectrum:
            spectrum_k = fourier_spectrum(self.model.token_table()).numpy()
            self.log.log_array(step, "fourier/embed_spectrum", spectrum_k)

    def after_step(
        self, step: int, batch: tuple[Tensor, Tensor], metrics: Mapping[str, float] | None = None
    ) -> None:
        if step % self.every == 0:
            self.measure(step, batch, spectrum=step % (SPECTRUM_EVERY * self.every) == 0)


@threaded
def run(config: GrokkingConfig, recorder: Recorder) -> ExperimentResult:
    """Train the MLP on modular addition; log accuracies, losses, Fourier concentration; find the phases."""
    x_train, y_train, x_test, y_test = modular_addition_split(config)
    model = make_model(config)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(config.beta1, config.beta2),
    )
    generator = torch.Generator().manual_seed(config.seed + 1)
    log = LoopLog(recorder)
    every = config.eval_every
    n_train = x_train.shape[0]

    def sample(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        if config.batch_size is None:
            return x_train, y_train
        idx = torch.randperm(n_train, generator=gen)[: config.batch_size]
        return x_train[idx], y_train[idx]

    def evaluate(net: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            logits = net(x)
            out[f"{split}/loss"] = float(F.cross_entropy(logits, y))
            out[f"{split}/acc"] = float((logits.argmax(dim=1) == y).double().mean())
        out.update(fourier_metrics(model, config.top_k)[0])
        return out

    monitor = Monitor(
        model,
        F.cross_entropy,
        probes=[ParameterDistanceProbe(every=1, per_param=False)],
        recorder=log,
        optimizer=optimizer,
    )
    probes = _Probes(model, monitor, log, every)
    checkpointer = log.checkpointer
    loop = train_loop(
        model,
        optimizer,
        sample,
        F.cross_entropy,
        config.steps,
        generator=generator,
        recorder=log,
        monitor=probes,
        log_every=every,
        evaluate=evaluate,
        eval_every=every,
        checkpointer=checkpointer,
        checkpoint_every=loop_checkpoint_every(checkpointer, config.steps),
        key=NAME,
        prefix="",
        progress=NAME,
    )
    if loop.status == "completed":  # the state after the last update (train_loop evaluated it already)
        probes.measure(config.steps, (x_train, y_train))
    monitor.close()
    return _result(config, log, loop.status)


def _result(config: GrokkingConfig, log: LoopLog, status: str) -> ExperimentResult:
    names = {
        "train_acc": "train/acc",
        "test_acc": "test/acc",
        "train_loss": "train/loss",
        "test_loss": "test/loss",
        "norm": "params/norm",
        "topk": "fourier/embed_topk",
        "gini": "fourier/embed_gini",
        "unembed_topk": "fourier/unembed_topk",
    }
    series = {key: log.series(name) for key, name in names.items()}

    def at(key: str, step: float) -> float:
        """The value of a series at the first evaluation at or after ``step``."""
        x, y = series[key]
        if not math.isfinite(step) or y.size == 0:
            return math.nan
        i = int(np.searchsorted(x, step))
        return float(y[min(i, y.size - 1)])

    def first(key: str) -> float:
        return float(series[key][1][0]) if series[key][1].size else math.nan

    def final(key: str) -> float:
        return float(series[key][1][-1]) if series[key][1].size else math.nan

    t_mem = first_step(*series["train_acc"], config.memorisation_acc)
    t_gen = first_step(*series["test_acc"], config.generalisation_acc)
    events = {
        "test_loss": detect_stages(*series["test_loss"], stage_detector("test_loss")),
        "test_acc": detect_stages(*series["test_acc"], stage_detector("test_acc")),
        "weight_norm": detect_stages(*series["norm"], stage_detector("weight_norm")),
    }
    after = t_mem if math.isfinite(t_mem) else -math.inf
    boundaries = {
        f"stages/{name}/{label}": first_event(evs, kind, after)
        for name, evs in events.items()
        for label, kind in (("descent_start", "plateau_end"), ("drop", "drop"), ("settled", "plateau_start"))
    }
    # cleanup starts where the test accuracy leaves its plateau for the jump (else where the weight norm
    # starts to fall), and no later than the grokking step
    candidates = (boundaries["stages/test_acc/descent_start"], boundaries["stages/weight_norm/descent_start"])
    cleanup = next((v for v in candidates if math.isfinite(v)), t_gen)
    cleanup = min(cleanup, t_gen) if math.isfinite(t_gen) else cleanup
    steps = series["test_acc"][0]
    end = float(steps[-1]) if steps.size else math.nan
    settled = boundaries["stages/test_loss/settled"]
    cleanup_end = settled if math.isfinite(settled) and settled >= cleanup else end
    norm_steps, norm = series["norm"]
    later = norm_steps >= after  # the norm's peak after memorisation (the initial norm may be larger)
    peak_step = float(norm_steps[later][int(np.argmax(norm[later]))]) if later.any() else math.nan
    summary: dict[str, float] = {
        "memorisation_step": t_mem,
        "grokking_step": t_gen,
        "delay_ratio": t_gen / t_mem if math.isfinite(t_gen) and t_mem > 0 else math.nan,
        "cleanup_start_step": cleanup,
        "cleanup_end_step": cleanup_end,
        "final_train_acc": final("train_acc"),
        "final_test_acc": final("test_acc"),
        "final_train_loss": final("train_loss"),
        "final_test_loss": final("test_loss"),
        "max_test_loss": float(series["test_loss"][1].max()) if series["test_loss"][1].size else math.nan,
        "weight_norm_init": first("norm"),
        "weight_norm_peak_step": peak_step,
        "weight_norm_final": final("norm"),
        "fourier_topk_init": first("topk"),
        "fourier_topk_memorised": at("topk", t_mem),
        "fourier_topk_final": final("topk"),
        "fourier_gini_init": first("gini"),
        "fourier_gini_final": final("gini"),
        "unembed_fourier_topk_init": first("unembed_topk"),
        "unembed_fourier_topk_final": final("unembed_topk"),
        "diverged": float(status == "diverged"),
        "min_delay_ratio": config.min_delay_ratio,
    }
    summary.update(boundaries)
    for name, evs in events.items():
        summary[f"stages/{name}/drops"] = float(sum(e.kind == "drop" for e in evs))
    phases = [
        ("memorisation", 0.0, t_mem),
        ("circuit formation", t_mem, cleanup),
        ("cleanup", cleanup, cleanup_end),
    ]
    table = [
        {
            "phase": phase,
            "start_step": start,
            "end_step": stop,
            "train_acc_end": at("train_acc", stop),
            "test_acc_end": at("test_acc", stop),
            "test_loss_end": at("test_loss", stop),
            "weight_norm_end": at("norm", stop),
            "fourier_topk_end": at("topk", stop),
        }
        for phase, start, stop in phases
    ]
    shortfall = reproduction_shortfall(summary, config)
    return ExperimentResult(summary=summary, table=table, agreement=shortfall, tolerance=config.tolerance)


def reproduction_shortfall(summary: dict[str, float], config: GrokkingConfig) -> float:
    """How far a run falls short of the published phenomenon, in ``[0, 1]`` (0: fully reproduced).

    ``max(1 − final test accuracy, max(0, 1 − delay_ratio / min_delay_ratio))``: the network must end up
    generalising *and* do so at least ``min_delay_ratio`` times later than it memorised; a run that never
    memorised or never generalised scores 1. With the default tolerance 0.1 that is test accuracy ≥ 0.9
    and a delay ratio ≥ 0.9 · ``min_delay_ratio``.
    """
    acc, delay = summary["final_test_acc"], summary["delay_ratio"]
    if not (math.isfinite(acc) and math.isfinite(delay)):
        return 1.0
    return float(max(1.0 - acc, max(0.0, 1.0 - delay / config.min_delay_ratio)))


EXPERIMENT = register(
    Experiment(
        NAME, DESCRIPTION, GrokkingConfig, run, QUICK, figures=(grokking_figures,), verdict=grokking_verdict,
        reproduction=True,
    )
)
