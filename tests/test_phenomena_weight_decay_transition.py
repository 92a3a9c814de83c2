"""The ``weight-decay-transition`` experiment at its quick size: depths 2 and 3, γ/γ* = 0.5, 0.95, 1.1, 1.6.

Measured at the quick size: max |v_sim − v_theory|/s = 4.9e-4 (depth 2 at γ/γ* = 0.95, where GD converges
slowest; tolerance 0.005); with a 2% error in γ the theory misses by 0.019 (L = 2) and 0.023 (L = 3), with a
2% error in s by 0.020 and 0.036.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from learndyn.phenomena import registry
from learndyn.phenomena import weight_decay_transition as wdt
from learndyn.theory.weight_decay_transition import critical_weight_decay, jump_product
from learndyn.validation import LearndynValueError


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import torch

    from learndyn.store import RunStore

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = RunStore(tmp_path_factory.mktemp("wdt") / "s.duckdb")
        config = wdt.WeightDecayTransitionConfig(**registry.get(wdt.NAME).quick_overrides)
        with store.start_run(wdt.NAME, config, seed=config.seed) as stored:
            result = wdt.run(config, stored)
            stored.set_summary(result.stored_summary())
        return config, result, store, stored.id
    finally:
        torch.set_num_threads(threads)


def _arrays(store, run_id, depth):
    return {
        kind: store.array_stack(run_id, f"{kind}/product/L={depth}")[1][-1] for kind in ("sim", "theory")
    }


def test_trained_products_match_the_flow_limits(quick):
    config, result, store, run_id = quick
    assert result.tolerance == config.tolerance == registry.get(wdt.NAME).tolerance
    assert result.agreement <= result.tolerance, result.table
    rows = {(r["depth"], r["gamma/gamma*"], r["start"]): r["product_sim"] for r in result.table}
    s = config.teacher
    # L = 2: soft thresholding from either start, continuous at γ* = s
    for start in wdt.STARTS:
        assert rows[(2, 0.95, start)] == pytest.approx(0.05 * s, abs=0.005)
        assert rows[(2, 1.1, start)] == pytest.approx(0.0, abs=0.005)
    # L = 3: large starts sit on the nonzero branch up to the spinodal (γ/γ* = 1.1 is metastable), small
    # starts stay at 0 (a local minimum for every γ > 0), and just below γ* the product is ≈ v_jump = s/2
    assert rows[(3, 0.95, "large")] > 0.9 * jump_product(s, 3)
    assert rows[(3, 1.1, "large")] > 0.4 * s
    assert rows[(3, 1.6, "large")] == pytest.approx(0.0, abs=1e-6)
    assert all(abs(rows[(3, r, "small")]) < 1e-6 for r in config.ratios)
    assert result.summary["gamma_star/L=3"] == pytest.approx(critical_weight_decay(s, 3))


def test_a_two_percent_theory_error_exceeds_the_tolerance(quick):
    config, result, store, run_id = quick
    for depth in config.depths:
        arrays = _arrays(store, run_id, depth)
        starts = wdt._starts(config, depth, _generator(config, depth)).numpy()
        gammas = critical_weight_decay(config.teacher, depth) * np.asarray(config.ratios)
        right, _ = wdt.theory_products(config, depth, starts, gammas)
        np.testing.assert_allclose(right, arrays["theory"])
        wrong_gamma, _ = wdt.theory_products(config, depth, starts, 1.02 * gammas)
        wrong_s, _ = wdt.theory_products(dataclasses.replace(config, teacher=1.02), depth, starts, gammas)
        for wrong in (wrong_gamma, wrong_s):
            assert wdt.product_agreement(arrays["sim"], wrong, config.teacher) > 3 * config.tolerance


def _generator(config, depth):
    import torch

    return torch.Generator().manual_seed(config.seed * 1_000_003 + depth)


def test_figure_has_labelled_axes(quick):
    _, _, store, run_id = quick
    (fig,) = wdt.weight_decay_figures(store, run_id)
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert sum("init" in (t.name or "") for t in fig.data) == 4  # 2 depths × 2 starts


def test_config_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="depths"):
        wdt.WeightDecayTransitionConfig(depths=(1, 3))
    with pytest.raises(LearndynValueError, match="large_init"):
        wdt.WeightDecayTransitionConfig(small_init=0.5, large_init=0.1)
