"""Phase diagrams of a sweep: aggregation over seeds (mean, spread, counts, diverged), the figure's panels and
hover, metric selection, random sweeps as scatters, one swept field as a line, and the HTML report section."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import plotly.graph_objects as go
import pytest

from learndyn.phenomena import registry
from learndyn.phenomena.registry import Experiment, ExperimentResult, MemberOutcome, register_ensemble
from learndyn.report.html import build_html_report
from learndyn.report.phase import (
    phase_diagram_figure,
    phase_figures,
    phase_table,
    sweep_frame,
    swept_fields,
)
from learndyn.store import MemoryRecorder, Recorder, RunStore
from learndyn.sweep import SweepSpec, run_sweep
from learndyn.validation import LearndynValueError

GRID = "test-sweep-grid"


@dataclasses.dataclass
class GridConfig:
    a: float = 0.0
    b: float = 0.0
    seed: int = 0
    mode: str = "x"


def run_grid(config: GridConfig, recorder: Recorder) -> ExperimentResult:
    """loss = a + 10 b + seed at the last step; runs with a >= 100 diverge."""
    value = config.a + 10 * config.b + config.seed
    recorder.log(0, {"loss": 2 * value, "accuracy": 0.5})
    recorder.log(1, {"loss": value})
    if config.a >= 100:
        recorder.log(1, {"loss": math.inf})
        if hasattr(recorder, "mark_diverged"):
            recorder.mark_diverged("blew up")
        return ExperimentResult(summary={"diverged": 1.0})
    return ExperimentResult(summary={"final_value": value, "diverged": 0.0})


def run_grid_members(configs: list[GridConfig]) -> list[MemberOutcome]:
    """The same runs as an 'ensemble' (so the whole sweep is written in one store transaction)."""
    if any(c.mode == "boom" for c in configs):
        raise RuntimeError("the ensemble broke on purpose")
    out = []
    for c in configs:
        rec = MemoryRecorder()
        result = run_grid(c, rec)
        series = {name: rec.series(name) for name in rec.scalars}
        status = "diverged" if c.a >= 100 else "completed"
        out.append(MemberOutcome(status, result.summary, series, "blew up" if status == "diverged" else None))
    return out


if GRID not in registry._REGISTRY:
    registry.register(
        Experiment(GRID, "a grid of known values for phase-diagram tests", GridConfig, run_grid)
    )
    register_ensemble(GRID, run_grid_members, axes=("a", "b", "seed"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("phase") / "s.duckdb")
    spec = SweepSpec.from_cli(GRID, ["a=1,2,100", "b=0.5,1.5", "seed=0,1,2"], name="grid")
    result = run_sweep(spec, store, executor="serial")  # one ensemble, written in one transaction
    assert result.counts == {"completed": 12, "diverged": 6} and result.ensembles == 1
    return store


def test_sweep_frame_and_phase_table(swept):
    frame = sweep_frame(swept, "grid")
    assert len(frame) == 18 and swept_fields(frame) == ["a", "b"]
    assert swept_fields(frame, include_replicates=True) == ["a", "b", "seed"]
    table = phase_table(frame, "a", "b", "final_value").set_index(["x", "y"])
    cell = table.loc[(2.0, 1.5)]
    assert cell["mean"] == pytest.approx(2 + 15 + 1) and cell["std"] == pytest.approx(1.0)
    assert cell["n"] == 3 and cell["diverged"] == 0 and cell["min"] == 17 and cell["max"] == 19
    div = table.loc[(100.0, 0.5)]
    assert math.isnan(div["mean"]) and div["n"] == 0 and div["diverged"] == 3
    # a final metric value (the loss at its last step) works too; diverged runs give no value
    loss = phase_table(frame, "a", "b", "loss").set_index(["x", "y"])
    assert loss.loc[(1.0, 0.5), "mean"] == pytest.approx(7.0) and loss.loc[(100.0, 1.5), "n"] == 0


def test_phase_diagram_figure_panels_hover_and_labels(swept):
    fig = phase_diagram_figure(swept, "grid", "a", "b", "final_value")
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    mean, spread = fig.data
    assert mean.type == spread.type == "heatmap"
    assert list(mean.x) == ["1", "2", "100"] and list(mean.y) == ["0.5", "1.5"]
    z = np.array(mean.z, dtype=float)
    assert z.shape == (2, 3) and z[1, 1] == pytest.approx(18.0) and np.isnan(z[0, 2])
    assert np.array(spread.z, dtype=float)[0, 0] == pytest.approx(1.0)
    assert np.array(mean.text)[0, 2] == "div"  # every run of that cell diverged
    hover = np.array(mean.customdata)[1, 1]
    assert "final_value: 18 ± 1 (n = 3)" in hover and "a = 2" in hover
    assert "seed" in fig.layout.title.text  # says what it aggregated over


def test_metric_dropdown_and_bad_names(swept):
    fig = phase_diagram_figure(swept, "grid", "b", "a", ["final_value", "loss", "accuracy"])
    assert len(fig.data) == 6 and [t.visible for t in fig.data] == [True, True] + [False] * 4
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["final_value", "loss", "accuracy"]
    assert buttons[1].args[0]["visible"] == [False, False, True, True, False, False]
    with pytest.raises(LearndynValueError, match="metric='nope' is not stored.*allowed: .*final_value"):
        phase_diagram_figure(swept, "grid", "a", "b", "nope")
    with pytest.raises(LearndynValueError, match="field='c' is not a config field"):
        phase_diagram_figure(swept, "grid", "a", "c", "loss")
    with pytest.raises(LearndynValueError, match="no finished runs"):
        phase_diagram_figure(swept, "nope", "a", "b", "loss")


def test_phase_figures_and_html_report(swept, tmp_path):
    figs = phase_figures(swept, "grid")
    assert len(figs) == 1 and len(figs[0].data) >= 4  # loss-like metrics first, switchable
    assert figs[0].layout.updatemenus[0].buttons[0].label in ("final_value", "loss")
    out = build_html_report(swept, ["grid"], tmp_path / "r.html")
    html = out.read_text()
    assert "Phase diagrams: grid" in html and 'id="phase-grid"' in html


def test_random_sweep_scatter_and_single_field_line(tmp_path):
    store = RunStore(tmp_path / "s.duckdb")
    spec = SweepSpec.from_cli(GRID, ["a=loguniform(0.01, 10)", "b=uniform(0, 1)"], samples=40, name="rnd")
    assert run_sweep(spec, store, executor="serial").ensembles == 1  # one bulk write
    fig = phase_diagram_figure(store, "rnd", "a", "b", "final_value")
    assert [t.type for t in fig.data] == ["scatter", "scatter"] and len(fig.data[0].x) == 40
    assert fig.layout.xaxis.type == "log"
    run_sweep(SweepSpec.from_cli(GRID, ["a=1,2,3", "seed=0,1"], name="line"), store, executor="serial")
    (line,) = phase_figures(store, "line")
    assert line.data[0].type == "scatter" and list(line.data[0].y) == pytest.approx([1.5, 2.5, 3.5])
    run_sweep(SweepSpec.from_cli(GRID, ["seed=0,1"], name="seeds"), store, executor="serial")
    assert phase_figures(store, "seeds") == []  # only seeds varied: nothing to draw
    single = run_sweep(
        SweepSpec.from_cli(GRID, ["a=1,100"], name="single"), store, executor="serial", ensemble=False
    )
    assert single.counts == {"completed": 1, "diverged": 1} and single.ensembles == 0
    table = phase_table(sweep_frame(store, "single"), "a", None, "loss")
    assert list(table["diverged"]) == [0, 1] and np.isnan(table["mean"].iloc[1])


def test_a_failing_ensemble_marks_every_member_failed_and_reruns(tmp_path):
    store = RunStore(tmp_path / "s.duckdb")
    spec = SweepSpec.from_cli(GRID, ["a=1,2,3"], ["mode=boom"], name="boom")
    first = run_sweep(spec, store, executor="serial")
    assert first.ensembles == 1 and first.counts == {"failed": 3} and not first.ok
    assert "RuntimeError: the ensemble broke on purpose" in first.errors[0]
    runs = store.runs(sweep_id="boom")
    assert set(runs["status"]) == {"failed"} and all("broke on purpose" in t for t in runs["traceback"])
    again = run_sweep(spec, store, executor="serial")
    assert again.counts == {"failed": 3} and again.skipped == 0
    assert sorted(store.runs(sweep_id="boom")["id"]) == sorted(runs["id"])  # retried under the same ids
