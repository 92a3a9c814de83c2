"""The ``probabilistic-stability`` experiment at its quick size: SGD's Lyapunov rate at a saddle, 6 × 6 grid.

Measured at the quick size (seeds 0–2): max |Λ_sim − Λ| = 0.0032–0.0040 per step (tolerance 0.01), no phase
mismatch, 5 attractive grid points (each with a divergent second moment); with a 2% error in η the theory
misses by 0.033–0.037, with a 2% error in σ by 0.029–0.033. At the example point (η 0.3, σ 3.5,
Λ = −0.245) GD escapes to uw = 1 and ~90% of SGD runs converge to the saddle (the rest diverge).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from learndyn.phenomena import probabilistic_stability as ps
from learndyn.phenomena import registry
from learndyn.validation import LearndynValueError


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import torch

    from learndyn.store import RunStore

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = RunStore(tmp_path_factory.mktemp("ps") / "s.duckdb")
        experiment = registry.get(ps.NAME)
        config = ps.ProbabilisticStabilityConfig(**experiment.quick_overrides)
        with store.start_run(ps.NAME, config, seed=config.seed) as stored:
            result = ps.run(config, stored)
            stored.set_summary(result.stored_summary())
        return config, result, store, stored.id
    finally:
        torch.set_num_threads(threads)


def _sim(store, run_id):
    _, stack = store.array_stack(run_id, "sim/rate")
    return stack[-1]


def test_rates_agree_with_theory_and_phases_match(quick):
    config, result, store, run_id = quick
    assert result.tolerance == config.tolerance == registry.get(ps.NAME).tolerance
    assert result.agreement <= result.tolerance, result.summary
    s = result.summary
    assert s["phase_mismatches"] == 0 and s["attractive_points_theory"] >= 3
    # probabilistically stable, yet the second moment diverges there
    assert s["attractive_with_divergent_variance"] == s["attractive_points_theory"]
    assert s["max_z"] < 5  # within the theory's own standard errors
    theory = ps.theory_grid(config)
    np.testing.assert_allclose(store.array_stack(run_id, "theory/rate")[1][-1], theory.rate)
    assert _sim(store, run_id).shape == (len(config.noises), len(config.lrs))
    # σ = 0 is gradient descent on the saddle: always repelled, rate log(1 + ημ)
    np.testing.assert_allclose(theory.rate[0], np.log1p(np.asarray(config.lrs) * config.mean))


def test_a_two_percent_theory_error_exceeds_the_tolerance(quick):
    config, result, store, run_id = quick
    sim = _sim(store, run_id)
    assert ps.rate_agreement(sim, ps.theory_grid(config).rate) == pytest.approx(result.agreement)
    for wrong in (
        dataclasses.replace(config, lrs=tuple(1.02 * lr for lr in config.lrs)),
        dataclasses.replace(config, noises=tuple(1.02 * s for s in config.noises)),
    ):
        assert ps.rate_agreement(sim, ps.theory_grid(wrong).rate) > 2 * config.tolerance


def test_gd_escapes_the_saddle_sgd_converges_to_it(quick):
    config, result, store, run_id = quick
    s = result.summary
    assert s["example/rate_theory"] < -0.2
    assert s["example/gd_final_product"] == pytest.approx(config.mean, rel=1e-6)
    assert s["example/sgd_fraction_at_saddle"] > 0.8
    series = {n: g["value"].to_numpy() for n, g in store.metrics(run_id, ["sim/norm/*"]).groupby("name")}
    assert series["sim/norm/sgd"][-1] < 1e-12 < 1.0 < series["sim/norm/gd"][-1]


def test_figures_have_labelled_axes(quick):
    _, _, store, run_id = quick
    figures = ps.probabilistic_stability_figures(store, run_id)
    assert len(figures) == 3
    for fig in figures:
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_config_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="lrs"):
        ps.ProbabilisticStabilityConfig(lrs=(0.1, 0.1))
    with pytest.raises(LearndynValueError, match="mean"):
        ps.ProbabilisticStabilityConfig(mean=-1.0)
