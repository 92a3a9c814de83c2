"""``learndyn run all``: every phenomenon with a closed form, one stored run each, a table, one report."""

from __future__ import annotations

import dataclasses

import pytest

import learndyn.phenomena  # noqa: F401  (the built-in experiments, registered before the registry is swapped)
from learndyn.phenomena import registry
from learndyn.phenomena.registry import Experiment, ExperimentResult
from learndyn.store import Recorder, RunStore
from learndyn.validation import check_int


@dataclasses.dataclass
class TheoryConfig:
    steps: int = 20
    error: float = 0.01
    crash: bool = False
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        check_int("steps", self.steps, low=1, owner="TheoryConfig")


def run_theory(config: TheoryConfig, recorder: Recorder) -> ExperimentResult:
    if config.crash:
        raise RuntimeError("broken on purpose")
    for k in range(config.steps):
        recorder.log(k, {"sim/x": 1.0 / (k + 1) * (1 + config.error), "theory/x": 1.0 / (k + 1)})
    recorder.flush()
    return ExperimentResult(
        summary={"steps": config.steps}, agreement=config.error, tolerance=config.tolerance
    )


@dataclasses.dataclass
class NoTheoryConfig:
    steps: int = 3


def run_no_theory(config: NoTheoryConfig, recorder: Recorder) -> ExperimentResult:
    raise AssertionError("run all must not run experiments without a closed form")


def _experiments(**theory_overrides) -> dict[str, Experiment]:
    good = Experiment("tiny-theory", "agrees", TheoryConfig, run_theory, quick_overrides={"steps": 5})
    bad = Experiment(
        "tiny-off", "disagrees", TheoryConfig, run_theory, quick_overrides={"steps": 5, **theory_overrides}
    )
    other = Experiment("tiny-no-theory", "no closed form", NoTheoryConfig, run_no_theory)
    return {e.name: e for e in (good, bad, other)}


def _runs(tmp_path):
    return RunStore(tmp_path / "store.duckdb", create=False).runs()


def test_runs_each_theory_experiment_into_its_own_run(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", _experiments())
    report = tmp_path / "all.html"
    result = cli("run", "all", "--quick", "--report", str(report))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2 phenomena at test size" in out
    assert "tiny-theory" in out and "tiny-off" in out and "yes" in out
    assert "not run (no closed form): tiny-no-theory" in out
    assert report.exists() and "tiny-theory" in report.read_text()
    runs = _runs(tmp_path)
    assert sorted(runs["name"]) == ["tiny-off", "tiny-theory"]
    assert set(runs["status"]) == {"completed"}
    for _, row in runs.iterrows():
        assert row["config"]["steps"] == 5  # the quick size
        assert row["summary"]["agreement"] == 0.01 and row["summary"]["passed"] is True


def test_a_miss_or_a_crash_is_reported_and_exits_1(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", _experiments(error=0.5))
    result = cli("run", "all", "--quick")
    assert result.exit_code == 1
    assert "NO" in result.stdout and "1 of 2 did not pass: tiny-off" in result.stderr
    monkeypatch.setattr(registry, "_REGISTRY", _experiments(crash=True))
    result = cli("run", "all", "--quick")
    assert result.exit_code == 1 and "broken on purpose" in result.stderr
    runs = _runs(tmp_path)
    assert list(runs["status"]).count("failed") == 1 and len(runs) == 4  # the others still ran


def test_reproduction_checks_are_listed_apart_from_the_theory(cli, tmp_path, monkeypatch):
    experiments = _experiments()
    check = Experiment("tiny-check", "reproduces", TheoryConfig, run_theory, reproduction=True)
    assert not check.closed_form and check.check == "reproduction check"
    assert experiments["tiny-theory"].check == "theory vs simulation"
    assert experiments["tiny-no-theory"].check == ""
    monkeypatch.setattr(registry, "_REGISTRY", {**experiments, check.name: check})
    listed = cli("run", "--list").stdout
    assert any("tiny-check" in line and "reproduction check" in line for line in listed.splitlines())
    assert any("tiny-theory" in line and "theory vs simulation" in line for line in listed.splitlines())
    report = tmp_path / "all.html"
    result = cli("run", "all", "--report", str(report))
    assert result.exit_code == 0, result.output
    _, _, tables = result.stdout.partition("Theory vs simulation, 2 phenomena")
    theory, _, checks = tables.partition("Reproduction checks (no closed form), 1 at default size")
    assert "tiny-theory" in theory and "tiny-check" not in theory
    assert "tiny-check" in checks and "shortfall" in checks
    html = report.read_text()
    assert "Reproduction checks (no closed form)" in html and "1 of 1 reproduce" in html


def test_bad_input_is_one_line(cli, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", _experiments())
    result = cli("run", "all", "--set", "steps=3")
    assert result.exit_code == 2 and "--set is not allowed with `run all`" in result.stderr
    result = cli("run", "all", "--show-config")
    assert result.exit_code == 2 and "needs one experiment name" in result.stderr
    monkeypatch.setattr(registry, "_REGISTRY", {"tiny-no-theory": _experiments()["tiny-no-theory"]})
    result = cli("run", "all")
    assert result.exit_code == 2 and "no registered experiment has a closed form" in result.stderr


@pytest.mark.slow
def test_all_builtin_phenomena_pass_at_test_size(cli, tmp_path, monkeypatch):
    builtin = {n: e for n, e in registry._REGISTRY.items() if e.run.__module__.startswith("learndyn.")}
    monkeypatch.setattr(registry, "_REGISTRY", builtin)
    report = tmp_path / "all.html"
    result = cli("run", "all", "--quick", "--report", str(report))
    assert result.exit_code == 0, result.output
    assert "deep-linear" in result.stdout and "ssl-stepwise" in result.stdout and "grokking" in result.stdout
    assert "not run (no closed form): " in result.stdout and "optimizer-comparison" in result.stdout
    assert "not run (too long at test size; run it alone): grokking-transformer" in result.stdout
    runs = _runs(tmp_path)
    assert "grokking-transformer" not in set(runs["name"])
    assert {"deep-linear", "ssl-stepwise", "grokking"} <= set(runs["name"])
    assert all(s["passed"] is True for s in runs["summary"])
    assert report.exists()
