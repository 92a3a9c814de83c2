"""The ``grokking`` phenomenon: modular addition, memorisation long before generalisation, Fourier features.

Measured (quick config: p = 53, train fraction 0.4, AdamW lr 1e-2, weight decay 1, full batch, 2200 steps,
seed 0; ~10 s of one core): train accuracy ≥ 0.99 at step 30, test accuracy ≥ 0.95 at step 1760 (delay
ratio 59; seeds 1, 2: 36, 34), final test accuracy 0.999; the embedding's top-5 Fourier concentration rises
from 0.22 to 0.52 (Gini 0.06 → 0.55), and is at 0.35 half-way to grokking, before the test accuracy moves.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from learndyn.checkpoint import MemoryCheckpointer
from learndyn.phenomena import registry
from learndyn.phenomena.grokking import (
    NAME,
    GrokkingConfig,
    grokking_figures,
    make_model,
    modular_addition_split,
    reproduction_shortfall,
    run,
)
from learndyn.probes.fourier import fourier_spectrum, gini, topk_fraction
from learndyn.probes.stages import StageEvent, first_event
from learndyn.store import RunStore
from learndyn.store.recorder import MemoryRecorder
from learndyn.validation import LearndynValueError


def _quick() -> GrokkingConfig:
    return GrokkingConfig(**registry.get(NAME).quick_overrides)


@pytest.fixture(scope="module")
def quick_run():
    config = _quick()
    recorder = MemoryRecorder()
    return config, recorder, run(config, recorder)


# --- the phenomenon ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_memorises_long_before_it_generalises(quick_run):
    config, recorder, result = quick_run
    s = result.summary
    t_mem, t_gen = s["memorisation_step"], s["grokking_step"]
    assert math.isfinite(t_mem) and math.isfinite(t_gen)
    assert t_gen >= 10 * t_mem  # delayed generalisation: measured ratio 59
    assert s["delay_ratio"] == pytest.approx(t_gen / t_mem)
    assert s["final_test_acc"] >= 0.9 and s["final_train_acc"] == 1.0
    # at memorisation the test set is at chance level and its loss above the initial one
    steps, test_acc = recorder.series("test/acc")
    assert test_acc[np.searchsorted(steps, t_mem)] < 5.0 / config.p
    assert s["max_test_loss"] > recorder.series("test/loss")[1][0]


@pytest.mark.slow
def test_fourier_concentration_rises(quick_run):
    config, recorder, result = quick_run
    s = result.summary
    m = config.p // 2
    assert s["fourier_topk_init"] < 2.0 * config.top_k / m  # a random embedding: nearly flat spectrum
    assert s["fourier_topk_final"] > s["fourier_topk_init"] + 0.2
    assert s["fourier_gini_final"] > s["fourier_gini_init"] + 0.2
    assert s["unembed_fourier_topk_final"] > s["unembed_fourier_topk_init"] + 0.1
    # the hidden progress measure moves before the test accuracy does
    steps, topk = recorder.series("fourier/embed_topk")
    i_half = np.searchsorted(steps, s["grokking_step"] / 2)
    assert topk[i_half] > s["fourier_topk_memorised"] + 0.03
    spectra = recorder.arrays["fourier/embed_spectrum"]
    assert spectra[-1][0] == config.steps and spectra[-1][1].shape == (m,)


@pytest.mark.slow
def test_phases_are_ordered_and_logged(quick_run):
    config, recorder, result = quick_run
    s = result.summary
    assert 0 < s["memorisation_step"] <= s["cleanup_start_step"] <= s["grokking_step"]
    assert s["cleanup_start_step"] <= s["cleanup_end_step"] <= config.steps
    assert s["stages/test_acc/drops"] >= 1  # the jump of the test accuracy is a detected stage
    assert s["memorisation_step"] < s["stages/test_acc/drop"] <= config.steps
    assert [row["phase"] for row in result.table] == ["memorisation", "circuit formation", "cleanup"]
    assert result.agreement == reproduction_shortfall(s, config) and result.passed is True
    for name in ("loss", "train/loss", "train/acc", "test/loss", "test/acc", "params/norm",
                 "fourier/embed_topk", "fourier/embed_gini", "fourier/unembed_topk"):
        steps, values = recorder.series(name)
        assert steps.size > 10 and np.isfinite(values).all(), name
    assert recorder.series("test/acc")[0][-1] == config.steps  # evaluated after the last update


# --- Fourier measures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [7, 12, 31])
def test_spectrum_of_a_pure_frequency(p):
    a = torch.arange(p, dtype=torch.float64)
    k = 3
    table = torch.stack([torch.cos(2 * math.pi * k * a / p + 0.4), 2 * torch.sin(2 * math.pi * k * a / p)], 1)
    table = table + 5.0  # a constant offset is the k = 0 component: left out
    s = fourier_spectrum(table)
    assert s.shape == (p // 2,)
    assert float(s.sum()) == pytest.approx(1.0)
    assert float(s[k - 1]) == pytest.approx(1.0)
    assert topk_fraction(s, 1) == pytest.approx(1.0)
    assert gini(s) == pytest.approx(1.0 - 1.0 / (p // 2))


def test_spectrum_ignores_token_shift_and_counts_nyquist_once():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(12, 5, generator=g, dtype=torch.float64)
    s = fourier_spectrum(table)
    assert torch.allclose(fourier_spectrum(torch.roll(table, 4, dims=0)), s)  # a ↦ a + 4: phases only
    centred = table - table.mean(0)
    # Parseval: Σ_k P_k = p Σ_a ‖W_a − W̄‖², with the mirrored frequencies and the Nyquist one counted once
    power = torch.fft.fft(centred, dim=0).abs().square().sum(1)
    assert float(power.sum()) == pytest.approx(12 * float(centred.square().sum()))
    expected = torch.cat([power[1:6] + power[7:12].flip(0), power[6:7]])
    assert torch.allclose(s, expected / expected.sum())
    flat = fourier_spectrum(torch.ones(9, 2))  # no power outside k = 0
    assert torch.allclose(flat, torch.full((4,), 0.25, dtype=torch.float64))


def test_concentration_measures():
    flat = np.full(8, 1 / 8)
    assert gini(flat) == pytest.approx(0.0, abs=1e-12)
    assert topk_fraction(flat, 3) == pytest.approx(3 / 8)
    two = np.array([0, 0, 0.5, 0, 0, 0.5])
    assert topk_fraction(two, 2) == pytest.approx(1.0)
    assert gini(two) == pytest.approx((2 * 5 - 7 + 2 * 6 - 7) * 0.5 / 6)
    with pytest.raises(LearndynValueError, match=r"k=9 is out of range"):
        topk_fraction(flat, 9)


# --- data, events, determinism, resume ----------------------------------------------------------------------


def test_split_covers_every_pair_once():
    config = GrokkingConfig(p=11, train_fraction=0.4)
    x_train, y_train, x_test, y_test = modular_addition_split(config)
    assert x_train.shape == (48, 2) and x_test.shape == (121 - 48, 2)
    pairs = torch.cat([x_train, x_test])
    assert len({tuple(r) for r in pairs.tolist()}) == 121
    assert torch.equal(torch.cat([y_train, y_test]), pairs.sum(1) % 11)
    again = modular_addition_split(config)
    assert torch.equal(again[0], x_train)
    assert not torch.equal(modular_addition_split(dataclasses.replace(config, seed=1))[0], x_train)


def test_first_event_needs_a_completed_descent():
    events = [
        StageEvent(5, "plateau_start", 1.0, 0, 10),
        StageEvent(40, "plateau_end", 1.0, 0, 45),  # a false start: back to a plateau, no drop
        StageEvent(50, "plateau_start", 1.0, 0, 55),
        StageEvent(100, "plateau_end", 0.9, 0, 110),
        StageEvent(130, "drop", 0.5, 1, 150),
        StageEvent(170, "plateau_start", 0.1, 1, 180),
    ]
    assert first_event(events, "plateau_end") == 100
    assert first_event(events, "drop") == 130
    assert first_event(events, "plateau_start") == 170
    assert math.isnan(first_event(events, "drop", after=101))
    assert math.isnan(first_event(events[:4], "plateau_end"))


def test_deterministic_and_resumes_exactly():
    config = GrokkingConfig(p=13, train_fraction=0.5, embed_dim=8, hidden=16, steps=120, eval_every=5)
    reference_recorder = MemoryRecorder()
    reference = run(config, reference_recorder)
    again = MemoryRecorder()
    assert run(config, again).summary == pytest.approx(reference.summary, nan_ok=True)
    assert again.scalars == reference_recorder.scalars

    class Interrupting(MemoryRecorder):
        def __init__(self, checkpointer: MemoryCheckpointer, stop_at: int | None) -> None:
            super().__init__()
            self.checkpointer, self.stop_at = checkpointer, stop_at

        def log(self, step, metrics):
            if self.stop_at is not None and step >= self.stop_at:
                raise KeyboardInterrupt
            super().log(step, metrics)

    checkpointer = MemoryCheckpointer(every=40)
    with pytest.raises(KeyboardInterrupt):
        run(config, Interrupting(checkpointer, stop_at=70))
    second = Interrupting(checkpointer, stop_at=None)
    resumed = run(config, second)
    assert second.series("test/acc")[0][0] == 40  # continued from the checkpoint at step 40
    assert resumed.summary == pytest.approx(reference.summary, nan_ok=True)
    assert resumed.table == reference.table


def test_minibatches_and_threads_are_restored():
    before = torch.get_num_threads()
    config = GrokkingConfig(p=11, embed_dim=8, hidden=16, steps=30, batch_size=10, eval_every=10, threads=1)
    recorder = MemoryRecorder()
    result = run(config, recorder)
    assert torch.get_num_threads() == before
    assert recorder.series("loss")[0].tolist() == [0, 10, 20]
    assert result.summary["diverged"] == 0.0


# --- config, registry, report ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"p": 2}, r"p=2 is out of range; allowed: 3 <= p <= 1000"),
        ({"train_fraction": 1.0}, r"train_fraction=1.0 is out of range; allowed: 0 < train_fraction < 1"),
        ({"p": 3, "train_fraction": 0.01}, r"train_fraction=0.01 gives 0 of 9 pairs"),
        ({"lr": 0.0}, r"lr=0.0 is out of range"),
        ({"lr": 0.5, "weight_decay": 2.0}, r"weight_decay=2.0 is out of range; allowed: lr \* weight_decay"),
        ({"beta2": 1.0}, r"beta2=1.0 is out of range"),
        ({"steps": 0}, r"steps=0 is out of range"),
        ({"batch_size": 10**6}, r"batch_size=1000000 is out of range; allowed: 1 <= batch_size <= 2823"),
        ({"top_k": 49}, r"top_k=49 is out of range; allowed: 1 <= top_k <= 48"),
        ({"generalisation_acc": 0.0}, r"generalisation_acc=0.0 is out of range"),
        ({"threads": 0}, r"threads=0 is out of range"),
        ({"hidden": 1.5}, r"hidden=1.5 has type float; allowed: an integer"),
    ],
)
def test_config_validation_one_line(changes, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        dataclasses.replace(GrokkingConfig(), **changes)
    assert "\n" not in str(info.value)


def test_registered_with_quick_size():
    experiment = registry.get(NAME)
    assert experiment.config_cls is GrokkingConfig
    default, quick = GrokkingConfig(), _quick()
    assert default.p == 97 and quick.p < default.p
    assert quick.steps * quick.n_train() < default.steps * default.n_train() / 2


def test_report_figures(tmp_path):
    store = RunStore(tmp_path / "s.duckdb")
    config = GrokkingConfig(p=11, embed_dim=8, hidden=16, steps=200, eval_every=5)
    with store.start_run(NAME, config, seed=config.seed) as stored:
        result = run(config, stored)
        stored.set_summary(result.summary)
    figures = grokking_figures(store, stored.id)
    assert len(figures) == 3
    curves, fourier, spectrum = figures
    assert {t.name for t in curves.data} >= {"train acc", "test acc", "train loss", "test loss"}
    assert curves.layout.xaxis.type == "log"
    assert any(t.name == "embedding top-k fraction" for t in fourier.data)
    assert len(spectrum.data) == 2 and len(spectrum.data[-1].y) == 5


def test_reproduction_shortfall_needs_generalisation_and_delay():
    config = GrokkingConfig()  # min_delay_ratio 10
    assert reproduction_shortfall({"final_test_acc": 1.0, "delay_ratio": 31.0}, config) == 0.0
    assert reproduction_shortfall({"final_test_acc": 0.5, "delay_ratio": 31.0}, config) == 0.5
    assert reproduction_shortfall({"final_test_acc": 1.0, "delay_ratio": 2.5}, config) == 0.75  # no delay
    assert reproduction_shortfall({"final_test_acc": 0.02, "delay_ratio": math.nan}, config) == 1.0
    with pytest.raises(LearndynValueError, match="min_delay_ratio"):
        GrokkingConfig(min_delay_ratio=0.5)


def test_is_a_reproduction_check_not_a_theory_agreement():
    experiment = registry.get(NAME)
    assert experiment.reproduction and not experiment.closed_form
    assert experiment.check == "reproduction check"
    rows = experiment.verdict({"final_test_acc": 0.98, "memorisation_step": 40.0, "grokking_step": 1720.0,
                               "delay_ratio": 43.0, "fourier_topk_init": 0.21, "fourier_topk_memorised": 0.23,
                               "fourier_topk_final": 0.43, "agreement": 0.02, "tolerance": 0.1,
                               "min_delay_ratio": 10.0})
    table = {row["reproduction check"]: row for row in rows}
    assert table["final test accuracy"]["measured"] == 0.98
    assert table["final test accuracy"]["needed"] == "≥ 0.9"
    assert table["delay ratio (grokking / memorisation)"]["needed"] == "≥ 9"
    assert any(row["measured"] == "0.21 → 0.23 → 0.43" for row in rows)
    assert experiment.verdict({}) == []


def test_published_mlp_setting_one_hot_operands_two_hidden_layers():
    """One-hot operands: ``W_in``'s columns are the token embeddings, so the model is an MLP on
    ``[e_a; e_b]`` and its Fourier table ``[W_a | W_b]``; two hidden layers; it trains (AdamW, decay 1,
    full batch)."""
    config = GrokkingConfig(p=11, hidden=16, encoding="one_hot", hidden_layers=2, steps=20, eval_every=10)
    model = make_model(config)
    assert not hasattr(model, "embed") and len(model.deeper) == 1
    pairs = torch.tensor([[3, 7], [10, 0]])
    w, b = model.hidden.weight, model.hidden.bias
    x = torch.zeros(2, 22)
    x[0, 3], x[0, 11 + 7], x[1, 10], x[1, 11] = 1.0, 1.0, 1.0, 1.0
    h = torch.relu(model.deeper[0](torch.relu(x @ w.T + b)))
    torch.testing.assert_close(model(pairs), model.unembed(h))
    table = model.token_table()
    assert table.shape == (11, 32)
    torch.testing.assert_close(table[3], torch.cat([w[:, 3], w[:, 11 + 3]]))
    result = run(config, MemoryRecorder())
    assert math.isfinite(result.summary["fourier_topk_final"]) and result.summary["final_train_acc"] > 0.3
    with pytest.raises(LearndynValueError, match="encoding"):
        GrokkingConfig(encoding="binary")
