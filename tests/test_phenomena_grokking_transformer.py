"""The ``grokking-transformer`` phenomenon: the one-layer transformer, the full preset per phase, figures.

The model is checked against attention written out by hand (float64); the run on a tiny configuration
(p = 7, 40 steps) checks the wiring: every full-preset probe measures the transformer, the phase table carries
the probe medians, the figures build. Grokking itself takes thousands of steps (docs/phenomena page).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learndyn.phenomena import registry
from learndyn.phenomena.grokking_transformer import (
    NAME,
    PHASE_METRICS,
    TABLE_METRICS,
    GrokkingTransformerConfig,
    fourier_metrics,
    make_model,
    probe_figures,
    run,
)
from learndyn.store import RunStore
from learndyn.validation import LearndynValueError

TINY = {"p": 7, "train_fraction": 0.6, "d_model": 8, "heads": 2, "d_mlp": 16, "steps": 40, "eval_every": 5,
        "top_k": 2, "probe_every": 20}


def _manual_forward(model, pairs: torch.Tensor) -> torch.Tensor:
    """The transformer of the module docstring with attention as explicit softmax(QKᵀ/√d_h + causal mask)V."""
    n, p, h = pairs.shape[0], model.p, model.heads
    tokens = torch.cat([pairs, torch.full((n, 1), p)], dim=1)
    x = model.embed.weight[tokens] + model.pos
    d = x.shape[-1]
    wq, wk, wv = model.qkv.weight.split(d, dim=0)
    out = torch.zeros_like(x)
    dh = d // h
    for head in range(h):
        rows = slice(head * dh, (head + 1) * dh)
        q, k, v = x @ wq[rows].T, x @ wk[rows].T, x @ wv[rows].T
        scores = q @ k.transpose(1, 2) / math.sqrt(dh)
        scores = scores.masked_fill(torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), -math.inf)
        out[..., rows] = torch.softmax(scores, dim=-1) @ v
    x = x + out @ model.attn_out.weight.T
    hidden = F.relu(x @ model.mlp_in.weight.T + model.mlp_in.bias)
    x = x + hidden @ model.mlp_out.weight.T + model.mlp_out.bias
    return x[:, -1] @ model.unembed.weight.T


def test_model_equals_attention_written_out():
    config = GrokkingTransformerConfig(p=11, d_model=12, heads=3, d_mlp=20)
    model = make_model(config).double()
    pairs = torch.randint(0, 11, (17, 2), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(pairs), _manual_forward(model, pairs), rtol=1e-12, atol=1e-12)
    # the same seed gives the same model; the global RNG is left alone
    state = torch.random.get_rng_state()
    again = make_model(config).double()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_fourier_metrics_use_the_token_rows_only():
    config = GrokkingTransformerConfig(p=11, d_model=8, heads=2, d_mlp=8)
    model = make_model(config)
    with torch.no_grad():
        a = torch.arange(11, dtype=torch.float32)
        model.embed.weight[:11] = torch.stack([torch.cos(2 * math.pi * 2 * a / 11)] * 8, 1)
        model.embed.weight[11] = 100.0  # the "=" token: not part of the token-indexed table
    metrics, spectrum = fourier_metrics(model, top_k=1)
    assert spectrum.shape == (5,) and metrics["fourier/embed_topk"] == pytest.approx(1.0)


def test_tiny_run_measures_every_probe_and_summarises_phases(tmp_path):
    config = GrokkingTransformerConfig(**TINY)
    store = RunStore(tmp_path / "s.duckdb")
    with store.start_run(NAME, config, seed=config.seed) as stored:
        result = run(config, stored)
        stored.set_summary(result.summary)
    assert [row["phase"] for row in result.table] == ["memorisation", "circuit formation", "cleanup"]
    for name in TABLE_METRICS:
        assert f"probe/{name}" in result.table[0]
    for name in PHASE_METRICS:
        assert f"memorisation/{name}" in result.summary  # nan here: 40 steps do not memorise
    frame = store.metrics(stored.id)
    names = set(frame["name"])
    for prefix in ("noise/", "curvature/", "kernel/", "symmetry/", "repr/", "params/norm", "fourier/"):
        assert any(n.startswith(prefix) for n in names), prefix
    lam = frame[frame["name"] == "curvature/lambda_max"]
    assert list(lam["step"]) == [0, 20, 40] and np.isfinite(lam["value"]).all()
    assert result.agreement == 1.0  # 40 steps: no grokking (reported, not hidden)
    figures = probe_figures(store, stored.id)
    assert len(figures) == 1 and len(figures[0].data) == len(PHASE_METRICS)


def test_registered_as_a_reproduction_check():
    experiment = registry.get(NAME)
    assert experiment.config_cls is GrokkingTransformerConfig and experiment.closed_form is False
    assert experiment.reproduction and not experiment.in_run_all
    quick = GrokkingTransformerConfig(**experiment.quick_overrides)
    assert quick.steps < GrokkingTransformerConfig().steps


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"d_model": 10, "heads": 4}, r"d_model=10 is not allowed; allowed: a multiple of heads=4"),
        ({"probe_every": 30}, r"probe_every=30 is not allowed; allowed: a multiple of eval_every=20"),
        ({"train_fraction": 1.0}, r"train_fraction=1.0 is out of range"),
        ({"lr": 0.5, "weight_decay": 2.0}, r"lr \* weight_decay < 1"),
        ({"steps": 10**12}, r"steps=1000000000000 is out of range"),
    ],
)
def test_config_validation_one_line(changes, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        dataclasses.replace(GrokkingTransformerConfig(), **changes)
    assert "\n" not in str(info.value)
