"""The ``two-layer-linear`` phenomenon: finite-width GD beside the exact reduced ODE and the closed form.

Measured (quick config: widths 1, 4, 64; λ ∈ {−2, 0, 2} random and {0, .5, 2} aligned; lr = 3e−3, t = 5):
agreement 1.65e−3 (random, width 1, λ = 0; GD's first-order discretisation error), tolerance 3e−3. A 2% error
in the imbalance λ of the closed form gives 5.9e−3, in ‖a₀‖² of the reduced ODE 9.7e−3.
"""

from __future__ import annotations

import numpy as np
import pytest

from learndyn.phenomena import registry
from learndyn.phenomena import two_layer_linear as tll
from learndyn.store import RunStore
from learndyn.store.recorder import MemoryRecorder
from learndyn.validation import LearndynValueError


@pytest.fixture(scope="module")
def quick_run():
    config = tll.TwoLayerLinearConfig(**registry.get(tll.NAME).quick_overrides)
    kept = {}
    simulate = tll.simulate

    def keep(*args, **kwargs):
        kept["sim"] = simulate(*args, **kwargs)
        return kept["sim"]

    tll.simulate = keep
    try:
        recorder = MemoryRecorder()
        result = tll.run(config, recorder)
    finally:
        tll.simulate = simulate
    X, y, target = tll.make_problem(config)
    return config, recorder, result, kept["sim"], tll.make_members(config, target), target


def test_quick_run_agrees_within_tolerance(quick_run):
    config, recorder, result, sim, members, _ = quick_run
    assert result.tolerance == 3e-3 and result.passed and result.agreement <= 3e-3
    assert len(result.table) == len(members) == 3 + 3 * 3
    for m in members:
        s_steps, _ = recorder.series(f"sim/{m.label}")
        t_steps, _ = recorder.series(f"theory/{m.label}")
        assert s_steps.size > 80 and np.array_equal(s_steps, t_steps)
    # λ = ‖a‖² − ‖W‖² is conserved up to GD's O(lr) drift
    assert result.summary["imbalance_drift"] < 5 * config.lr
    # every kernel growth is predicted (the rich networks' by a factor ~100)
    for row in result.table:
        assert row["kernel growth (GD)"] == pytest.approx(row["kernel growth (theory)"], rel=2e-3)


def test_rich_and_lazy_ends(quick_run):
    _, _, result, _, _, _ = quick_run
    aligned = {row["λ"]: row for row in result.table if row["kind"] == "aligned"}
    # balanced: rich (the kernel grows ~ s/u0 = 100) and far from the linearised model
    assert aligned[0.0]["kernel growth (GD)"] > 50 and aligned[0.0]["max‖β_th − β_lazy‖/s"] > 0.5
    # the distance from the linearised (NTK) model falls monotonically with the imbalance
    lazy = [aligned[lam]["max‖β_th − β_lazy‖/s"] for lam in sorted(aligned)]
    assert all(b < a for a, b in zip(lazy, lazy[1:], strict=False)) and lazy[-1] < 0.05
    # random networks: balanced ones are rich at every width, λ = 2 ones nearly lazy
    for row in result.table:
        if row["kind"] == "random" and row["λ"] == 0.0:
            assert row["kernel growth (GD)"] > 50
        if row["kind"] == "random" and row["λ"] == 2.0:
            assert row["kernel growth (GD)"] < 1.5 and row["max‖β_th − β_lazy‖/s"] < 0.05


def test_a_two_percent_theory_error_exceeds_the_tolerance(quick_run):
    config, _, result, sim, members, target = quick_run
    exact = tll.compare(config, members, target, sim)
    assert np.max(exact.error) == pytest.approx(result.agreement, rel=1e-12)

    def wrong_lambda(t, s, lam, u0):
        return tll.aligned_strength(t, s, 1.02 * lam, u0)

    def wrong_readout(t, A0, S0, beta0, target):
        return tll.reduced_flow(t, 1.02 * A0, S0, beta0, target)

    for changes in ({"aligned": wrong_lambda}, {"flow": wrong_readout}):
        perturbed = tll.compare(config, members, target, sim, **changes)
        assert np.max(perturbed.error) > 1.5 * config.tolerance, changes


def test_report_figures(tmp_path):
    store = RunStore(tmp_path / "s.duckdb")
    config = tll.TwoLayerLinearConfig(widths=(1, 3), imbalances=(0.0,), aligned_imbalances=(0.0, 2.0),
                                      lr=0.01, t_end=1.0, eval_every=10, init_scale=0.1)
    with store.start_run(tll.NAME, config, seed=config.seed) as stored:
        result = tll.run(config, stored)
        stored.set_summary(result.stored_summary())
    figures = tll.two_layer_linear_figures(store, stored.id)
    assert len(figures) == 4
    aligned, random_nets, phase, agreement = figures
    assert {t.name for t in aligned.data} >= {"λ=0: GD", "λ=0: closed form (2)", "λ=2: linearised (NTK)"}
    assert aligned.layout.xaxis.title.text.startswith("gradient-flow time")
    assert len(random_nets.data) == 4 and random_nets.layout.yaxis.type == "log"
    assert phase.layout.xaxis.type == "log" and phase.data[-1].name == "GD: measured growth"
    assert len(agreement.data[0].y) == 4


def test_config_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="init_scale"):
        tll.TwoLayerLinearConfig(init_scale=2.0)
    with pytest.raises(LearndynValueError, match="no network to train"):
        tll.TwoLayerLinearConfig(imbalances=(), aligned_imbalances=())
    with pytest.raises(LearndynValueError, match="n_samples"):
        tll.TwoLayerLinearConfig(n_samples=2)
