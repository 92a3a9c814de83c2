"""The ``symmetry-hessian`` experiment at its quick size (MLP at GD steps 0 and 100, softmax layer at init
and at its minimum).

Measured at the quick size: largest identity residual 1.0e-16 (tolerance 1e-9); the softmax layer's minimum
(‖∇L‖ 8e-15) has exactly 5 near-zero Hessian eigenvalues, all 5 explained by the translation generators; the
MLP's rescaling directions have curvature |ξᵀHξ|/(s‖ξ‖²) 0.78 → 0.017 as ‖∇L‖ falls 1.08 → 0.041. A 2%
error in the identity's coefficient gives residuals ~1e-2; the sign-flipped form ~1.
"""

from __future__ import annotations

import numpy as np
import pytest

from learndyn.phenomena import registry
from learndyn.phenomena import symmetry_hessian as sh
from learndyn.theory.symmetry_hessian import noether_scalar_residual
from learndyn.validation import LearndynValueError


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import torch

    from learndyn.store import RunStore

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = RunStore(tmp_path_factory.mktemp("sh") / "s.duckdb")
        config = sh.SymmetryHessianConfig(**registry.get(sh.NAME).quick_overrides)
        with store.start_run(sh.NAME, config, seed=config.seed) as stored:
            result = sh.run(config, stored)
            stored.set_summary(result.stored_summary())
        return config, result, store, stored.id
    finally:
        torch.set_num_threads(threads)


def test_identity_holds_and_symmetries_explain_the_softmax_zero_modes(quick):
    config, result, _, _ = quick
    assert result.tolerance == config.tolerance == registry.get(sh.NAME).tolerance
    assert result.agreement <= result.tolerance, result.table
    s = result.summary
    assert s["softmax/grad_norm"] < 1e-10
    translations = config.softmax_inputs + 1
    assert s["softmax/zero_modes"] == s["softmax/symmetry_rank"] == s["softmax/explained"] == translations
    assert s["mlp/explained"] >= config.hidden + 1  # the translations (null everywhere) at least
    rows = [r for r in result.table if r["model"] == "mlp"]
    # towards a minimum the rescaling directions flatten with the gradient (|ξᵀHξ| ≤ ‖Aξ‖‖∇L‖)
    assert rows[-1]["grad_norm"] < rows[0]["grad_norm"]
    assert rows[-1]["rescale_curvature"] < rows[0]["rescale_curvature"]


def test_a_two_percent_error_in_the_identity_exceeds_the_tolerance(quick):
    config, result, store, run_id = quick
    _, sim = store.array_stack(run_id, "sim/curvature/mlp")
    _, theory = store.array_stack(run_id, "theory/curvature/mlp")
    _, scale = store.array_stack(run_id, "sim/curvature_scale/mlp")
    right = noether_scalar_residual(sim[0], theory[0], scale[0])
    assert right.max() <= config.tolerance
    for coefficient in (1.02, -1.0):  # 2% off, and the sign-flipped form
        wrong = noether_scalar_residual(sim[0], theory[0], scale[0], coefficient=coefficient)
        assert wrong.max() > 1e3 * config.tolerance


def test_figures_have_labelled_axes(quick):
    _, _, store, run_id = quick
    figures = sh.symmetry_hessian_figures(store, run_id)
    assert len(figures) == 2
    for fig in figures:
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_config_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="mlp_points"):
        sh.SymmetryHessianConfig(mlp_points=(10, 5))
    assert np.isfinite(sh.SymmetryHessianConfig().tolerance)
