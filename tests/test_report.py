"""Reports: section planning, the self-contained HTML report, PNG figures, experiment figure hooks."""

from __future__ import annotations

import math
import re

import numpy as np
import plotly.graph_objects as go
import pytest

from learndyn.report import build_html_report, register_figure, save_png_figures, unregister_figure
from learndyn.report.data import load_runs, plan_sections
from learndyn.report.figures import section_figure
from learndyn.report.hooks import figures_for
from learndyn.store import RunStore

EXPERIMENT = "test-report-demo"


def log_demo_run(store: RunStore, rate: float, steps: int = 40, sweep_id: str | None = None) -> str:
    """A run with every kind of series a report draws."""
    rng = np.random.default_rng(int(rate * 100))
    with store.start_run(EXPERIMENT, {"rate": rate, "steps": steps}, seed=1, sweep_id=sweep_id) as run:
        for t in range(steps):
            run.log(
                t,
                {
                    "loss": math.exp(-rate * t) + 1e-4,
                    "test/loss": math.exp(-rate * t) + 2e-4,
                    "theory/decay": math.exp(-rate * t),
                    "sim/decay": math.exp(-rate * t) * (1 + 0.01 * rng.random()),
                    "noise/gns": rng.random(),
                    "noise/snr": 1 + rng.random(),
                    "curvature/top_eig": 10 - rate * t,
                    "symmetry/balance": 2.0 + 1e-3 * t,
                    "lr": 0.1,
                },
            )
            if t % 5 == 0:
                run.log_array(t, "curvature/spectrum", np.sort(rng.random(6))[::-1] * 10 ** (-t / 10) + 1e-6)
        run.log_array(steps - 1, "kernel/ntk", rng.random((5, 5)))
        run.log_array(0, "kernel/ntk", np.eye(5))
        run.set_summary({"final_loss": math.exp(-rate * steps), "agreement": 0.01})
    return run.id


def test_plan_sections_groups_by_rule():
    names = [
        "loss",
        "test/loss",
        "loss/digits/adam",
        "theory/decay",
        "sim/decay",
        "sim/only",
        "noise/gns",
        "noise/snr",
        "curvature/top",
        "symmetry/balance",
        "lr",
        "acc",
    ]
    sections = plan_sections(names)
    by_key = {s.key: s for s in sections}
    assert [s.kind for s in sections][:3] == ["loss", "overlay", "overlay"]
    assert by_key["loss"].metrics == ("loss", "loss/digits/adam", "test/loss")
    assert by_key["theory-decay"].metrics == ("theory/decay", "sim/decay")
    assert by_key["theory-only"].metrics == ("sim/only",)
    assert by_key["group-training"].metrics == ("acc", "lr")
    assert by_key["group-noise"].metrics == ("noise/gns", "noise/snr")
    assert by_key["symmetry"].kind == "drift"
    every = [m for s in sections for m in s.metrics]
    assert sorted(every) == sorted(names)  # each metric drawn exactly once


def test_figures_overlay_theory_with_sim_and_runs(store):
    ids = [log_demo_run(store, 0.1), log_demo_run(store, 0.2)]
    runs = load_runs(store, ids)
    assert [r.label for r in runs] == ["rate=0.1", "rate=0.2"]
    sections = {s.key: s for s in plan_sections(runs[0].series)}
    overlay = section_figure(runs, sections["theory-decay"])
    assert len(overlay.data) == 4  # theory + simulation, per run
    assert {t.line.dash for t in overlay.data} == {"dash", "solid"}
    drift = section_figure(runs[:1], sections["symmetry"])
    assert drift.data[0].y[0] == 0.0 and drift.data[0].y[-1] == pytest.approx(39e-3)
    loss = section_figure(runs, sections["loss"])
    assert len(loss.data) == 4 and loss.layout.yaxis.type == "log"


def test_html_report_is_self_contained_and_complete(store, tmp_path):
    run_id = log_demo_run(store, 0.15)
    mtime = store.path.stat().st_mtime_ns
    out = build_html_report(store, run_id[:8], tmp_path / "rep" / "report.html")
    assert store.path.stat().st_mtime_ns == mtime  # reports only read
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]+src=", html) and not re.search(r"<link[^>]+href=[\"']http", html)
    assert len(html) > 3_000_000  # plotly.js is inlined
    # curated: theory-vs-sim; folded: loss, theory-vs-sim, training, curvature, noise, symmetry, spectrum
    # heatmap, kernel heatmaps -- each figure's JSON once
    assert html.count('class="ld-figure"') == 9
    assert html.count('<script type="application/json" id="ld-fig-') == 9
    for needle in (
        "Theory vs simulation: decay",
        "Conserved quantities",
        "noise/*",
        "curvature/*",
        "curvature/spectrum (array)",
        "kernel/ntk (array)",
        "final_loss",
        "completed",
        "rate",
    ):
        assert needle in html, needle


def test_report_of_a_sweep_overlays_runs(store, tmp_path):
    ids = [log_demo_run(store, r, steps=10, sweep_id="sweep-xyz") for r in (0.1, 0.2, 0.3)]
    out = build_html_report(store, "sweep-xyz", tmp_path / "sweep.html")
    html = out.read_text()
    assert all(i[:8] in html for i in ids)
    assert "rate=0.3" in html and "3 runs" in html
    # a line plot over the one swept field (rate), each run's curated theory-vs-sim figure, six overlaid
    # figures, two heatmaps per run
    assert "Phase diagrams: sweep-xyz" in html
    assert html.count('class="ld-figure"') == 1 + 3 + 6 + 2 * 3


def test_report_of_a_run_without_metrics(store, tmp_path):
    with store.start_run("empty", {}) as run:
        pass
    html = build_html_report(store, run.id, tmp_path / "e.html").read_text()
    assert "logged no metrics" in html


def test_figure_hooks_plug_in(store, tmp_path):
    run_id = log_demo_run(store, 0.1, steps=5)
    seen = []

    @register_figure(EXPERIMENT)
    def custom(st, rid):
        seen.append(rid)
        df = st.metrics(rid, "loss")
        return [go.Figure(go.Scatter(x=df["step"], y=df["value"]), layout={"title": "custom demo figure"})]

    def broken(st, rid):
        raise RuntimeError("hook broke")

    register_figure(EXPERIMENT, broken)
    register_figure(EXPERIMENT, custom)  # re-registering does not duplicate
    try:
        assert figures_for(EXPERIMENT) == [broken, custom]
        with pytest.warns(UserWarning, match="hook broke"):
            html = build_html_report(store, run_id, tmp_path / "h.html").read_text()
        assert seen == [run_id]
        assert "custom demo figure" in html and 'id="figures">Figures' in html and "hook broke" in html
    finally:
        unregister_figure(EXPERIMENT)
    assert figures_for(EXPERIMENT) == []
    with pytest.raises(ValueError):
        register_figure("", custom)


def test_png_figures(store, tmp_path):
    run_id = log_demo_run(store, 0.1, steps=20)
    paths = save_png_figures(store, run_id, tmp_path / "png")
    names = {p.name for p in paths}
    assert names == {
        "figure-1-theory-vs-simulation-decay.png",  # the curated figure
        "loss.png",
        "theory-decay.png",
        "group-training.png",
        "group-curvature.png",
        "group-noise.png",
        "symmetry.png",
        "array-curvature-spectrum.png",
        "array-kernel-ntk.png",
    }
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
