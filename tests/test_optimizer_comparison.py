"""The comparison loop (learndyn.tasks.compare), the optimizer-comparison experiment and its figure."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from learndyn.phenomena import registry
from learndyn.phenomena.optimizer_comparison import (
    OptimizerComparisonConfig,
    comparison_curves,
    comparison_figure,
)
from learndyn.store.recorder import MemoryRecorder
from learndyn.tasks import get_task
from learndyn.tasks.compare import (
    DEFAULT_LRS,
    TUNE_SEED,
    Comparison,
    OptimizerSpec,
    RunResult,
    compare,
    default_lr,
    margin,
    train,
    tune_lr,
)
from learndyn.validation import LearndynValueError


def _has_covariant_gd() -> bool:
    try:
        from learndyn.optim import CovariantGD  # noqa: F401
    except ImportError:
        return False
    return True


needs_cgd = pytest.mark.skipif(not _has_covariant_gd(), reason="learndyn.optim.CovariantGD not available")


# --- optimizer labels ---------------------------------------------------------------------------------


def test_labels_parse_with_documented_defaults():
    assert OptimizerSpec.parse("adam").family == "adam"
    diag = OptimizerSpec.parse("cgd-diag")
    assert (diag.family, diag.structure, diag.alpha, diag.precondition_every) == ("cgd", "diag", 0.5, 1)
    kron = OptimizerSpec.parse("cgd-kron-a0.75-k5")
    assert (kron.structure, kron.alpha, kron.precondition_every) == ("kron", 0.75, 5)
    assert OptimizerSpec.parse("cgd-full-a1").precondition_every == 10


@pytest.mark.parametrize(
    "label, match",
    [("rmsprop", r"optimizer='rmsprop' is not a known label; allowed: 'sgd'"),
     ("cgd-dense", r"structure='dense' is not allowed; allowed: 'diag'"),
     ("cgd-diag-a1.5", r"alpha=1.5 is out of range; allowed: 0 <= alpha <= 1"),
     ("cgd-diag-a1..5", r"bad alpha")],
)
def test_bad_labels_fail_with_one_line(label, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        OptimizerSpec.parse(label)
    assert "\n" not in str(info.value)


# --- the training loop --------------------------------------------------------------------------------


def test_train_is_deterministic_and_measures_time_to_target():
    task = get_task("deep-linear")
    a = train(task, "adam", 0.01, seed=1, steps=150, eval_every=10)
    b = train(task, "adam", 0.01, seed=1, steps=150, eval_every=10)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.status == "ok" and list(a.eval_steps[:3]) == [0, 10, 20] and a.eval_steps[-1] == 150
    assert a.final_loss < a.losses[0]
    c = train(task, "adam", 0.01, seed=2, steps=150, eval_every=10)
    assert not np.array_equal(a.losses, c.losses)
    easy = dataclasses.replace(task, target_loss=float(a.losses[5]) * 1.0000001)
    d = train(easy, "adam", 0.01, seed=1, steps=150, eval_every=10)
    assert d.steps_to_target == 50 and 0 < d.time_to_target <= d.wall_time


def test_train_stops_diverging_runs():
    result = train(get_task("rosenbrock-2d"), "sgd", 1.0, seed=0, steps=500)
    assert result.status == "diverged" and result.final_loss == math.inf and result.steps_done < 500
    assert result.steps_to_target is None


class _Broken(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("linalg.eigh: failed to converge\nsecond line")


def test_train_reports_an_optimizer_that_raises_on_finite_parameters(monkeypatch):
    monkeypatch.setattr(OptimizerSpec, "build", lambda self, params, lr: _Broken(params, lr=lr))
    result = train(get_task("deep-linear"), "cgd-kron", 1e-3, steps=20)
    assert result.status == "error" and result.steps_done == 0
    assert result.message == "step 1: RuntimeError: linalg.eigh: failed to converge"
    comp = Comparison(runs=[result], tuning=[], lrs={}, targets={}, tuned=False)
    (row,) = comp.rows()
    assert row["status"] == "error 1/1" and "eigh" in row["note"] and row["rank"] is None


def test_train_skips_full_structure_on_large_models_without_training():
    result = train(get_task("digits"), "cgd-full", 1e-3, steps=10, max_full_params=100)
    assert result.status == "skipped" and "2410 parameters" in result.message and not result.ran


def test_tune_lr_picks_the_best_of_the_grid_on_the_held_out_seed():
    task = get_task("rosenbrock-2d", steps=200)
    best, runs = tune_lr(task, "adam", grid=(1e-3, 1e-2, 1e-1))
    assert {r.lr for r in runs} == {1e-3, 1e-2, 1e-1} and all(r.seed == TUNE_SEED for r in runs)
    assert best == min(runs, key=lambda r: r.score()).lr


def test_tune_lr_reuses_the_runs_it_is_given_and_runs_only_the_rest():
    task = get_task("rosenbrock-2d", steps=200)
    first_best, first = tune_lr(task, "adam", grid=(1e-3, 1e-2))
    best, runs = tune_lr(task, "adam", grid=(1e-3, 1e-2, 1e-1), tried=first)
    assert runs[:2] == first and [r.lr for r in runs[2:]] == [1e-1]  # the same objects: not run again
    full_best, _ = tune_lr(task, "adam", grid=(1e-3, 1e-2, 1e-1))
    assert best == full_best and first_best in (1e-3, 1e-2)


def test_default_lr_uses_the_tuned_table_with_canonical_labels_then_the_family():
    task = get_task("digits")
    tuned = DEFAULT_LRS[("digits", "cgd-kron-a0.5")]
    assert default_lr(task, "cgd-kron") == default_lr(task, "cgd-kron-a0.5") == tuned
    assert default_lr(task, "cgd-kron-k3") == 1e-3  # a non-default refresh period was never tuned
    assert default_lr(get_task("rosenbrock-2d", steps=5), "cgd-diag-a0.3") == 1e-3
    assert default_lr(task, "momentum") == DEFAULT_LRS[("digits", "momentum")]


def _run(task, opt, seed, losses, reach=None, status="ok"):
    return RunResult(task=task, optimizer=opt, seed=seed, lr=0.1, status=status,
                     eval_steps=np.arange(len(losses)) * 10, losses=np.asarray(losses, float), steps_done=10,
                     steps_to_target=reach, time_to_target=None if reach is None else reach / 100,
                     wall_time=1.0)


def test_rows_take_medians_and_rank_by_steps_then_loss():
    runs = [
        _run("t", "a", 0, [1, 0.1], 10), _run("t", "a", 1, [1, 0.2], 30), _run("t", "a", 2, [1, 0.3]),
        _run("t", "b", 0, [1, 0.01], 20), _run("t", "b", 1, [1, 0.02], 20), _run("t", "b", 2, [1, 0.03], 20),
        _run("t", "c", 0, [1, 0.5]), _run("t", "c", 1, [1, 0.5]), _run("t", "c", 2, [1], status="diverged"),
    ]
    comp = Comparison(runs=runs, tuning=[], lrs={}, targets={"t": 0.2}, tuned=False)
    rows = {r["optimizer"]: r for r in comp.rows()}
    assert rows["a"]["steps_to_target"] == 30 and rows["a"]["reached"] == "2/3"
    assert rows["a"]["final_loss"] == pytest.approx(0.2)
    assert rows["b"]["steps_to_target"] == 20 and rows["b"]["rank"] == 1 and rows["a"]["rank"] == 2
    assert rows["c"]["steps_to_target"] is None and rows["c"]["status"] == "diverged 1/3"
    assert rows["c"]["final_loss"] == 0.5  # median of (0.5, 0.5, inf)
    steps, curve = comp.curve("t", "c")
    assert list(curve) == [1.0, 0.5]
    (win,) = comp.winners()
    assert win["winner"] == "b" and win["runner_up"] == "a"
    assert win["vs_runner_up"] == {"ratio": 1.5, "on": "steps_to_target"}
    assert comp.summary()["steps_to_target/t/b"] == 20


def test_margin_falls_back_to_final_loss_when_either_never_reaches():
    win = {"steps_to_target": None, "final_loss": 0.1, "status": "ok"}
    other = {"steps_to_target": None, "final_loss": 0.4, "status": "ok"}
    assert margin(win, other) == {"ratio": pytest.approx(4.0), "on": "final_loss"}
    assert margin({**win, "steps_to_target": 5}, other)["ratio"] == math.inf


def test_compare_logs_median_curves_and_targets():
    rec = MemoryRecorder()
    tasks = [get_task("rosenbrock-2d", steps=40), get_task("deep-linear", steps=40)]
    comp = compare(tasks, ["sgd", "adam"], seeds=(0, 1), lr=1e-3, eval_every=10, recorder=rec)
    assert len(comp.runs) == 8 and comp.lrs[("deep-linear", "adam")] == 1e-3
    steps, values = rec.series("loss/deep-linear/adam")
    assert list(steps) == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(values, comp.curve("deep-linear", "adam")[1])
    assert rec.series("target/rosenbrock-2d")[1][0] == pytest.approx(1e-3)


def test_compare_validates_its_inputs():
    with pytest.raises(LearndynValueError, match="no tasks or no optimizers"):
        compare([], ["adam"])
    with pytest.raises(LearndynValueError, match="seeds=\\(\\) is empty"):
        compare([get_task("rosenbrock-2d")], ["adam"], seeds=())


# --- the experiment -----------------------------------------------------------------------------------


def test_experiment_is_registered_with_a_quick_config():
    exp = registry.get("optimizer-comparison")
    assert exp.config_cls is OptimizerComparisonConfig
    config = dataclasses.replace(exp.config_cls(), **exp.quick_overrides)
    assert config.steps <= 100


@pytest.mark.parametrize(
    "kwargs, match",
    [({"tasks": ("mnist",)}, r"tasks='mnist' is not allowed"),
     ({"tasks": ()}, r"tasks=\(\) is empty"),
     ({"optimizers": ("adam", "adam")}, r"repeat"),
     ({"optimizers": ("lbfgs",)}, r"optimizer='lbfgs' is not a known label"),
     ({"seeds": 0}, r"seeds=0 is out of range"),
     ({"lr": -1.0}, r"lr=-1.0 is out of range"),
     ({"steps": 0}, r"steps=0 is out of range"),
     ({"lr_grid": (0.1, 0.0)}, r"lr_grid=0.0 is out of range"),
     ({"num_threads": 0}, r"num_threads=0 is out of range")],
)
def test_config_validation(kwargs, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        OptimizerComparisonConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_config_accepts_comma_separated_strings():
    config = OptimizerComparisonConfig(tasks="digits, deep-linear", optimizers="adam,sgd")
    assert config.tasks == ("digits", "deep-linear") and config.optimizers == ("adam", "sgd")


def test_tiny_experiment_returns_a_table_summary_and_logs_curves():
    exp = registry.get("optimizer-comparison")
    config = OptimizerComparisonConfig(tasks=("multiplication", "deep-linear"), optimizers=("sgd", "adam"),
                                       steps=30, seeds=1, eval_every=10)
    rec = MemoryRecorder()
    threads = torch.get_num_threads()
    result = exp.run(config, rec)
    assert torch.get_num_threads() == threads
    assert len(result.table) == 4
    row = result.table[0]
    assert {"task", "optimizer", "rank", "final_loss", "steps_to_target", "time_to_target_s", "run_time_s",
            "metric", "metric_name", "clock"} <= set(row)
    assert list(row).index("time_to_target_s") == list(row).index("steps_to_target") + 1  # side by side
    assert {r["rank"] for r in result.table if r["task"] == "deep-linear"} == {1, 2}
    assert set(result.summary) >= {"final_loss/multiplication/adam", "final_loss/deep-linear/sgd"}
    assert result.passed is None
    curves = comparison_curves(rec)
    assert set(curves) == {"multiplication", "deep-linear"}
    assert set(curves["deep-linear"]) == {"sgd", "adam"}


@needs_cgd
def test_tiny_experiment_runs_covariant_gd():
    config = OptimizerComparisonConfig(tasks=("deep-linear",), optimizers=("adam", "cgd-diag", "cgd-kron"),
                                       steps=20, seeds=1)
    result = registry.get("optimizer-comparison").run(config, MemoryRecorder())
    assert all(r["status"] == "ok" for r in result.table), result.table


# --- the figure ---------------------------------------------------------------------------------------


def _long_frame():
    rows = [(0, "target/t1", 0.01)]
    for opt, scale in (("adam", 1.0), ("sgd", 2.0)):
        rows += [(s, f"loss/t1/{opt}", scale / (1 + s)) for s in (0, 10, 20)]
        rows += [(s, f"loss/t2/{opt}", scale * 0.5 / (1 + s)) for s in (0, 10, 20)]
    return pd.DataFrame(rows, columns=["step", "name", "value"])


def test_figure_from_a_store_frame_has_one_trace_per_task_and_optimizer():
    fig = comparison_figure(_long_frame())
    assert len(fig.data) == 4
    assert [t.name for t in fig.data if t.showlegend] == ["adam", "sgd"]  # one legend entry per optimizer
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    colors = {(t.name, t.line.color) for t in fig.data}
    assert len(colors) == 2  # an optimizer keeps its colour across subplots
    assert any(getattr(s, "y0", None) == 0.01 for s in fig.layout.shapes)  # target line


def test_figure_reads_a_mapping_and_rejects_sources_without_curves():
    fig = comparison_figure({"loss/t/adam": ([0, 1], [1.0, 0.5])}, tasks=["t"])
    assert len(fig.data) == 1
    with pytest.raises(ValueError, match="no 'loss/<task>/<optimizer>' metrics"):
        comparison_figure(pd.DataFrame({"step": [0], "name": ["x"], "value": [1.0]}))
    with pytest.raises(ValueError, match="have no loss curves"):
        comparison_figure(_long_frame(), tasks=["t3"])


def test_report_of_a_stored_comparison_run_shows_the_loss_curves(tmp_path):
    from learndyn.report.html import build_html_report
    from learndyn.store import RunStore

    store = RunStore(tmp_path / "s.duckdb")
    config = OptimizerComparisonConfig(tasks=("deep-linear",), optimizers=("sgd", "adam"), steps=20, seeds=1,
                                       eval_every=10)
    with store.start_run("optimizer-comparison", config) as run:
        registry.get("optimizer-comparison").run(config, run)
    html = build_html_report(store, [run.id], tmp_path / "r.html").read_text()
    assert "Optimizer comparison: full-data loss" in html


def test_verdict_shows_time_to_target_beside_steps_and_the_time_margin():
    from learndyn.phenomena.optimizer_comparison import comparison_verdict

    summary = {"final_loss/t/adamw": 0.1, "steps_to_target/t/adamw": 200.0, "time_to_target/t/adamw": 3.0,
               "final_loss/t/muon": 0.1, "steps_to_target/t/muon": 100.0, "time_to_target/t/muon": 2.0,
               "test_accuracy/t/muon": 0.9}
    (row,) = comparison_verdict(summary)
    assert row["winner"] == "muon" and row["time to target (s)"] == 2.0
    assert row["margin"] == "2.00× fewer steps to target, 1.50× less time"


def test_config_checks_the_clock():
    assert OptimizerComparisonConfig(clock="cpu").clock == "cpu"
    with pytest.raises(LearndynValueError, match="clock='gpu' is not allowed"):
        OptimizerComparisonConfig(clock="gpu")
