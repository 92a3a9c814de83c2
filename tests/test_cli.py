"""The ``learndyn`` command line, with a tiny experiment registered by this module."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from learndyn.phenomena import registry
from learndyn.phenomena.registry import Experiment, ExperimentResult
from learndyn.store import Recorder, RunStore
from learndyn.validation import check_int, check_real

TINY = "test-cli-tiny"


@dataclasses.dataclass
class TinyConfig:
    steps: int = 30
    rate: float = 0.1
    lrs: tuple[float, ...] = (0.1, 0.2)
    seed: int = 0
    fail: bool = False
    interrupt: bool = False

    def __post_init__(self) -> None:
        check_int("steps", self.steps, low=1, owner="TinyConfig")
        check_real("rate", self.rate, low=0, low_open=True, owner="TinyConfig")


def run_tiny(config: TinyConfig, recorder: Recorder) -> ExperimentResult:
    """Exponential decay: theory exp(-rate t) against a noisy simulation."""
    rng = np.random.default_rng(config.seed)
    sim = 1.0
    for t in range(config.steps):
        if config.fail and t == 5:
            raise RuntimeError("the tiny experiment broke on purpose")
        if config.interrupt and t == 5:
            raise KeyboardInterrupt
        recorder.log(
            t,
            {
                "loss": sim,
                "sim/decay": sim,
                "theory/decay": math.exp(-config.rate * t),
                "noise/gns": float(rng.random()),
                "symmetry/balance": 1.0 + 1e-3 * t,
            },
        )
        recorder.log_array(t, "spectrum", np.sort(rng.random(4))[::-1] + 0.01)
        sim *= math.exp(-config.rate) * (1 + 1e-3 * rng.standard_normal())
    recorder.flush()
    return ExperimentResult(
        summary={"final_loss": sim, "lrs_seen": len(config.lrs)},
        agreement=0.01,
        tolerance=0.05,
        table=[{"lr": lr, "final": sim * lr} for lr in config.lrs],
    )


if TINY not in registry._REGISTRY:
    registry.register(
        Experiment(
            TINY, "a tiny decay experiment for CLI tests", TinyConfig, run_tiny, quick_overrides={"steps": 7}
        )
    )


def _store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "store.duckdb", create=False)


def _assert_bad_input(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, err


def test_run_list(cli):
    result = cli("run", "--list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert any(line.startswith(TINY) and "tiny decay experiment" in line for line in lines)
    assert all(len(line.split()) >= 2 for line in lines)


def test_run_stores_prints_and_reports(cli, tmp_path):
    report = tmp_path / "out" / "r.html"
    result = cli(
        "run", TINY, "--set", "steps=12", "-s", "lrs=0.3,0.4,0.5", "--set", "seed=4", "--report", str(report)
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Results" in out and "Summary" in out and "final_loss" in out and "PASS" in out
    assert "report:" in out and report.exists()
    runs = _store(tmp_path).runs()
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "completed" and row["name"] == TINY and row["seed"] == 4
    assert row["config"]["steps"] == 12 and row["config"]["lrs"] == [0.3, 0.4, 0.5]
    assert row["summary"]["lrs_seen"] == 3 and row["summary"]["passed"] is True
    assert row["summary"]["agreement"] == 0.01
    assert row["id"] in out and "store.duckdb" in out
    assert len(_store(tmp_path).metrics(row["id"], "loss")) == 12


def test_run_quick_and_explicit_store(cli, tmp_path):
    path = tmp_path / "elsewhere" / "s.duckdb"
    assert cli("run", TINY, "--quick", "--store", str(path)).exit_code == 0
    run = RunStore(path).runs().iloc[0]
    assert run["config"]["steps"] == 7


def test_show_config(cli):
    result = cli("run", TINY, "--show-config")
    assert result.exit_code == 0
    assert "steps" in result.stdout and "comma-separated floats" in result.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "no-such-experiment"], ["no-such-experiment", TINY]),
        (["run"], ["missing experiment name"]),
        (
            ["run", TINY, "--set", "stepz=3"],
            ["'stepz'", TINY, "allowed: fail, interrupt, lrs, rate, seed, steps"],
        ),
        (["run", TINY, "--set", "steps=many"], ["steps='many'", "int"]),
        (["run", TINY, "--set", "steps"], ["key=value"]),
        (["run", TINY, "--set", "steps=0"], ["steps=0", "out of range"]),
        (["show", "nope"], ["no run store"]),
        (["list"], ["no run store"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, args, needles):
    _assert_bad_input(cli(*args), *needles)


def test_missing_run_and_compare_arity(cli):
    assert cli("run", TINY, "--quick").exit_code == 0
    _assert_bad_input(cli("show", "zzzz-missing"), "zzzz-missing")
    _assert_bad_input(cli("compare", TINY), "at least two")
    _assert_bad_input(cli("report", "zzzz-missing", "--out", "x.html"), "zzzz-missing")


def test_failing_experiment_marks_run_failed(cli, tmp_path):
    result = cli("run", TINY, "--set", "fail=true")
    assert result.exit_code == 1
    assert "broke on purpose" in result.stderr and "marked failed" in result.stderr
    assert "Traceback" not in result.output
    info = _store(tmp_path).run_info(TINY)
    assert info["status"] == "failed" and "broke on purpose" in info["error"]
    assert len(_store(tmp_path).metrics(info["id"], "loss")) == 5  # kept what it logged


def test_interrupted_experiment(cli, tmp_path):
    result = cli("run", TINY, "--set", "interrupt=yes")
    assert result.exit_code == 130
    assert _store(tmp_path).run_info(TINY)["status"] == "interrupted"


def test_list_show_compare(cli, tmp_path):
    assert cli("run", TINY, "--quick", "--set", "rate=0.2").exit_code == 0
    assert cli("run", TINY, "--quick", "--set", "rate=0.3").exit_code == 0
    ids = list(_store(tmp_path).runs()["id"])

    listing = cli("list")
    assert listing.exit_code == 0
    assert all(i[:8] in listing.stdout for i in ids) and "completed" in listing.stdout

    shown = cli("show", ids[0][:8])
    assert shown.exit_code == 0
    for needle in ("Config", "rate", "0.2", "Summary", "final_loss", "Metrics", "noise/gns", "spectrum"):
        assert needle in shown.stdout, needle

    compared = cli("compare", ids[0], ids[1][:10])
    assert compared.exit_code == 0
    out = compared.stdout
    assert "config.rate" in out and "0.2" in out and "0.3" in out
    assert "summary.final_loss" in out and "final loss" in out
    assert "config.steps" not in out and "equal config keys hidden" in out
    assert "config.steps" in cli("compare", ids[0], ids[1], "--all").stdout


def test_list_empty_store(cli, tmp_path):
    RunStore(tmp_path / "store.duckdb")
    result = cli("list")
    assert result.exit_code == 0 and "no runs" in result.stdout


def test_report_command_html_and_png(cli, tmp_path):
    assert cli("run", TINY, "--quick").exit_code == 0
    out = tmp_path / "rep" / "report.html"
    pngs = tmp_path / "png"
    result = cli("report", TINY, "--out", str(out), "--png", str(pngs))
    assert result.exit_code == 0, result.output
    assert out.exists() and out.stat().st_size > 1_000_000  # plotly.js inlined
    assert {p.name for p in pngs.iterdir()} >= {"loss.png", "theory-decay.png", "symmetry.png"}


def test_cli_in_a_real_process_exits_2_without_traceback(tmp_path):
    env = dict(os.environ, LEARNDYN_STORE=str(tmp_path / "none.duckdb"), LEARNDYN_PROGRESS="0")
    for args in (["show", "abc"], ["run", "definitely-not-an-experiment"]):
        proc = subprocess.run(
            [sys.executable, "-c", "from learndyn.cli import app; app()", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_open_shows_the_report_in_a_browser_or_says_where_it_is(cli, tmp_path, monkeypatch):
    import webbrowser

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda uri, *a, **k: opened.append(uri) or True)
    report = tmp_path / "r.html"
    result = cli("run", TINY, "--quick", "--report", str(report), "--open")
    assert result.exit_code == 0, result.output
    assert opened == [report.resolve().as_uri()]

    monkeypatch.setattr(webbrowser, "open", lambda uri, *a, **k: False)  # a headless machine
    result = cli("report", TINY, "--out", str(tmp_path / "again.html"), "--open")
    assert result.exit_code == 0, result.output
    said = result.stdout.replace("\n", "")
    assert "no web browser found" in said and (tmp_path / "again.html").resolve().as_uri() in said

    _assert_bad_input(cli("run", TINY, "--quick", "--open"), "--open", "--report")
