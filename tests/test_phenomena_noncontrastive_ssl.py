"""The ``noncontrastive-ssl`` phenomenon: BYOL's predictor aligns with F and reaches the predicted spectrum;
DirectPred matches it; without the predictor or the stop-gradient the representation collapses.

Measured (quick config: σ² = (0, .5, 1, 2, 3, 6), η = 0.05, α_p = 1, EMA 0.9, lr = 0.15, 1000 steps):
agreement 9.4e−4 (BYOL's F spectrum), tolerance 5e−3; 2% errors in α_p or η of the fixed point give 2.1e−2 and
2.7e−2.
"""

from __future__ import annotations

import numpy as np
import pytest

from learndyn.phenomena import noncontrastive_ssl as ncs
from learndyn.phenomena import registry
from learndyn.store import RunStore
from learndyn.store.recorder import MemoryRecorder
from learndyn.theory import predictor_fixed_point
from learndyn.validation import LearndynValueError


@pytest.fixture(scope="module")
def quick_run():
    config = ncs.NoncontrastiveSSLConfig(**registry.get(ncs.NAME).quick_overrides)
    kept = {}
    train_variant = ncs.train_variant

    def keep(config, variant, *args, **kwargs):
        kept[variant] = train_variant(config, variant, *args, **kwargs)
        return kept[variant]

    ncs.train_variant = keep
    try:
        recorder = MemoryRecorder()
        result = ncs.run(config, recorder)
    finally:
        ncs.train_variant = train_variant
    return config, recorder, result, kept


def test_byol_and_directpred_reach_the_fixed_point(quick_run):
    config, recorder, result, _ = quick_run
    assert result.tolerance == 5e-3 and result.passed and result.agreement <= 5e-3
    # one direction (σ² = 6 > 1/(4η) − 1 = 4) collapses, as predicted
    assert result.summary["collapse_threshold"] == pytest.approx(4.0)
    assert result.summary["surviving_directions"] == 5
    for variant in ("byol", "directpred"):
        assert result.summary[f"{variant}/error_collapsed"] < 5e-3
        steps, s1 = recorder.series(f"sim/s1/variant={variant}")
        _, th = recorder.series(f"theory/s1/variant={variant}")
        assert steps.size > 50 and th[-1] == pytest.approx(s1[-1], rel=5e-3)
    # the eigenspaces align: the normalised commutator falls by orders of magnitude
    _, align = recorder.series("sim/alignment/variant=byol")
    assert np.nanmax(align[: align.size // 4]) > 1e-2 and align[-1] < 1e-5
    # the balance law holds up to GD's O(lr) departure from the flow
    assert result.summary["byol/balance_residual_max"] < 0.1


def test_collapse_without_predictor_or_stopgrad(quick_run):
    _, _, result, _ = quick_run
    assert result.summary["no_stopgrad/F_norm_ratio"] < 1e-6
    assert result.summary["no_predictor/F_norm_ratio"] < 1e-3
    assert result.summary["byol/F_norm_ratio"] > 0.1 and result.summary["directpred/F_norm_ratio"] > 0.1


def test_a_two_percent_theory_error_exceeds_the_tolerance(quick_run):
    config, _, result, kept = quick_run
    exact = max(max(ncs.end_errors(config, kept[v]).values()) for v in ("byol", "directpred"))
    assert exact == pytest.approx(result.agreement, rel=1e-12)

    def wrong_alpha(aug, eta, alpha_p):
        return predictor_fixed_point(aug, eta, 1.02 * alpha_p)

    def wrong_decay(aug, eta, alpha_p):
        return predictor_fixed_point(aug, 1.02 * eta, alpha_p)

    for wrong in (wrong_alpha, wrong_decay):
        perturbed = max(ncs.end_errors(config, kept["byol"], fixed_point=wrong).values())
        assert perturbed > 2 * config.tolerance, wrong.__name__


def test_report_figures(tmp_path):
    store = RunStore(tmp_path / "s.duckdb")
    config = ncs.NoncontrastiveSSLConfig(aug_vars=(0.0, 1.0), lr=0.1, steps=60, eval_every=10)
    with store.start_run(ncs.NAME, config, seed=config.seed) as stored:
        result = ncs.run(config, stored)
        stored.set_summary(result.stored_summary())
    figures = ncs.noncontrastive_ssl_figures(store, stored.id)
    assert len(figures) == 4
    byol, directpred, collapse, agreement = figures
    assert {t.name for t in byol.data} == {"s1 (sim)", "s1 (theory)", "s2 (sim)", "s2 (theory)"}
    assert byol.layout.xaxis.title.text.startswith("gradient-flow time")
    assert collapse.layout.yaxis.type == "log" and len(collapse.data) == 5
    assert len(agreement.data[0].y) == 8 and agreement.layout.yaxis.type == "log"


def test_config_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="weight_decay"):
        ncs.NoncontrastiveSSLConfig(weight_decay=0.0)
    with pytest.raises(LearndynValueError, match="aug_vars"):
        ncs.NoncontrastiveSSLConfig(aug_vars=(1.0,))
