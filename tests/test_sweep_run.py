"""Running sweeps into the store: every config once under one sweep id, idempotent resume (failed, interrupted
and killed runs are rerun under their own ids, nothing else), ensembles written like single runs, a local pool
of 2 workers with a worker killed mid-run, and the ``learndyn sweep`` command."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from learndyn.phenomena import registry
from learndyn.phenomena.registry import Experiment, ExperimentResult
from learndyn.store import Recorder, RunStore
from learndyn.sweep import LocalExecutor, SweepSpec, config_hash, run_sweep, sweep_state

FLAKY = "test-sweep-flaky"
HOLD_ENV = "LEARNDYN_TEST_SWEEP_HOLD"


@dataclasses.dataclass
class FlakyConfig:
    """``seed`` -> loss; fails while the file ``fail_file`` exists (for ``seed == bad_seed``); holds (sleeps)
    while the file named by $LEARNDYN_TEST_SWEEP_HOLD exists (for ``seed == hold_seed``)."""

    seed: int = 0
    steps: int = 5
    bad_seed: int = -1
    fail_file: str = ""
    hold_seed: int = -1


def run_flaky(config: FlakyConfig, recorder: Recorder) -> ExperimentResult:
    hold = os.environ.get(HOLD_ENV, "")
    if config.seed == config.hold_seed and hold:
        deadline = time.monotonic() + 60
        while os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.02)
    for t in range(config.steps):
        if config.seed == config.bad_seed and t == 2 and os.path.exists(config.fail_file):
            raise RuntimeError("flaky experiment broke on purpose")
        recorder.log(t, {"loss": 1.0 / (1 + t + config.seed)})
    return ExperimentResult(summary={"final_loss": 1.0 / (config.steps + config.seed)})


if FLAKY not in registry._REGISTRY:
    registry.register(
        Experiment(FLAKY, "a tiny experiment that fails or holds on demand", FlakyConfig, run_flaky)
    )


def _by_hash(store: RunStore, sweep_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in store.runs(sweep_id=sweep_id).to_dict("records"):
        out.setdefault(config_hash(row["config"]), []).append(row["status"])
    return out


# ---------------------------------------------------------------------------------------------- serial
def test_sweep_writes_every_run_once_and_resume_skips_them(store):
    spec = SweepSpec.from_cli("mlp-teacher", ["lr=0.01,0.05", "seed=range(3)"], ["steps=12", "eval_every=5"])
    plan = spec.expand()
    result = run_sweep(spec, store, executor="serial")
    assert result.ok and result.counts == {"completed": 6} and result.ensembles == 1 and result.units == 1
    runs = store.runs(sweep_id=plan.sweep_id)
    assert len(runs) == 6 and set(runs["status"]) == {"completed"}
    assert sorted(config_hash(c) for c in runs["config"]) == sorted(p.hash for p in plan.points)
    assert list(runs["seed"].astype(int)).count(0) == 2 and set(runs["experiment"]) == {"mlp-teacher"}
    again = run_sweep(spec, store, executor="serial")
    assert again.skipped == 6 and again.counts == {} and again.units == 0
    assert len(store.runs(sweep_id=plan.sweep_id)) == 6


def test_ensemble_runs_are_stored_like_single_runs(store):
    common = ["steps=10", "eval_every=4", "dtype=float64"]
    ens = run_sweep(
        SweepSpec.from_cli("mlp-teacher", ["lr=0.01,0.05", "seed=0,1"], common, name="ens"),
        store,
        executor="serial",
    )
    single = run_sweep(
        SweepSpec.from_cli("mlp-teacher", ["lr=0.01,0.05", "seed=0,1"], common, name="single"),
        store,
        executor="serial",
        ensemble=False,
    )
    assert ens.ensembles == 1 and single.ensembles == 0 and single.units == 4
    a = store.runs(sweep_id="ens").sort_values("seed", kind="stable")
    b = store.runs(sweep_id="single").sort_values("seed", kind="stable")
    for ra, rb in zip(a.to_dict("records"), b.to_dict("records"), strict=True):
        if config_hash(ra["config"]) != config_hash(rb["config"]):
            rb = next(
                r for r in b.to_dict("records") if config_hash(r["config"]) == config_hash(ra["config"])
            )
        assert ra["status"] == rb["status"] == "completed" and ra["seed"] == rb["seed"]
        assert ra["summary"].keys() == rb["summary"].keys()
        for k in ra["summary"]:
            assert ra["summary"][k] == pytest.approx(rb["summary"][k], rel=1e-9)
        ma, mb = store.metrics(ra["id"]), store.metrics(rb["id"])
        assert list(ma["name"]) == list(mb["name"]) and list(ma["step"]) == list(mb["step"])
        np.testing.assert_allclose(ma["value"], mb["value"], rtol=1e-9)


def test_failed_runs_are_rerun_exactly_on_resume(store, tmp_path):
    marker = tmp_path / "fail-now"
    marker.touch()
    spec = SweepSpec.from_cli(FLAKY, ["seed=range(4)"], ["bad_seed=2", f"fail_file={marker}"])
    plan = spec.expand()
    first = run_sweep(spec, store, executor="serial")
    assert not first.ok and first.counts == {"completed": 3, "failed": 1}
    assert "flaky experiment broke on purpose" in first.errors[0]
    bad = next(p.hash for p in plan.points if p.config.seed == 2)
    assert _by_hash(store, plan.sweep_id)[bad] == ["failed"]
    failed_id = store.runs(sweep_id=plan.sweep_id, status="failed")["id"].item()
    assert run_sweep(spec, store, executor="serial").counts == {"failed": 1}  # still broken: tried again
    marker.unlink()
    third = run_sweep(spec, store, executor="serial")
    assert third.ok and third.counts == {"completed": 1} and third.skipped == 3
    statuses = _by_hash(store, plan.sweep_id)
    assert statuses[bad] == ["completed"]  # retried under its own id: one row per config
    assert store.run_info(failed_id)["status"] == "completed"
    assert all(v == ["completed"] for h, v in statuses.items() if h != bad)
    assert run_sweep(spec, store, executor="serial").counts == {}


def test_a_live_running_run_counts_as_in_progress(store):
    plan = SweepSpec.from_cli(FLAKY, ["seed=0,1"]).expand()
    live = store.start_run(FLAKY, plan.points[0].config, sweep_id=plan.sweep_id)  # this process: alive
    state = sweep_state(store, plan)
    assert [p.hash for p in state.in_progress] == [plan.points[0].hash]
    assert [p.hash for p in state.to_run] == [plan.points[1].hash]
    live.close("interrupted")
    state = sweep_state(store, plan)
    assert len(state.to_run) == 2 and state.previous_failures == 1


# ------------------------------------------------------------------------------------------ local pool
@pytest.mark.slow  # spawning workers that import torch takes 10-30 s on a busy 2-core machine
def test_local_pool_two_workers_with_a_killed_worker(store, tmp_path, monkeypatch):
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_ENV, str(hold))
    spec = SweepSpec.from_cli(FLAKY, ["seed=range(6)"], ["hold_seed=3"])
    plan = spec.expand()
    held = next(p.hash for p in plan.points if p.config.seed == 3)
    executor = LocalExecutor(workers=2)
    box: dict = {}
    sweep = threading.Thread(
        target=lambda: box.setdefault("result", run_sweep(spec, store, executor=executor))
    )
    sweep.start()
    watcher = RunStore(store.path)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and sweep.is_alive():
        for row in watcher.runs(sweep_id=plan.sweep_id, status="running").to_dict("records"):
            if config_hash(row["config"]) == held:
                victim = row
        time.sleep(0.05)
    assert victim is not None, "the held run never showed up as running"
    assert int(victim["pid"]) in executor.pids and int(victim["pid"]) != os.getpid()
    os.kill(int(victim["pid"]), signal.SIGKILL)
    sweep.join(timeout=120)
    result = box["result"]
    assert result.counts == {"completed": 5, "interrupted": 1} and not result.ok
    assert result.marked_interrupted == [victim["id"]]
    statuses = _by_hash(store, plan.sweep_id)
    assert statuses[held] == ["interrupted"] and len(statuses) == 6
    assert all(v == ["completed"] for h, v in statuses.items() if h != held)  # none lost, none doubled
    pids = set(store.runs(sweep_id=plan.sweep_id)["pid"].astype(int))
    assert len(pids) >= 2 and pids <= set(executor.pids)  # workers wrote them (a replacement may join)
    assert "SIGKILL" in store.run_info(victim["id"])["error"]
    hold.unlink()
    resumed = run_sweep(spec, store, executor="serial")
    assert resumed.counts == {"completed": 1} and resumed.skipped == 5
    assert _by_hash(store, plan.sweep_id)[held] == ["completed"]  # resumed under its own id
    assert store.run_info(victim["id"])["status"] == "completed"


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_sweep_runs_resumes_and_reports(cli, tmp_path):
    args = [
        "sweep",
        "mlp-teacher",
        "-g",
        "lr=logspace(0.01,0.1,2)",
        "-g",
        "seed=range(2)",
        "-g",
        "alpha=0,1",
        "-s",
        "steps=6",
        "-s",
        "optimizer=cgd-diag",
        "-e",
        "serial",
    ]
    dry = cli(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "8 configs of mlp-teacher" in dry.stdout and dry.stdout.count("to run") >= 8
    assert not (tmp_path / "store.duckdb").exists()
    first = cli(*args, "--report", str(tmp_path / "r.html"))
    assert first.exit_code == 0, first.output
    assert "completed" in first.stdout and "8" in first.stdout
    html = (tmp_path / "r.html").read_text()
    assert "Phase diagrams" in html
    again = cli(*args)
    assert again.exit_code == 0 and "8 done" in again.stdout and "nothing to run" in again.stdout
    sweep_id = next(
        line.split()[1].rstrip(":") for line in again.stdout.splitlines() if line.startswith("sweep ")
    )
    runs = RunStore(tmp_path / "store.duckdb").runs(sweep_id=sweep_id)
    assert len(runs) == 8 and set(runs["status"]) == {"completed"}


def test_cli_sweep_spec_file_and_named_sweep(cli, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('experiment = "test-sweep-flaky"\n[grid]\nseed = "range(3)"\n')
    result = cli("sweep", "--spec", str(spec), "--name", "mine", "-e", "serial")
    assert result.exit_code == 0, result.output
    assert len(RunStore(tmp_path / "store.duckdb").runs(sweep_id="mine")) == 3


def test_cli_sweep_failures_exit_1_and_say_how_to_retry(cli, tmp_path):
    marker = tmp_path / "fail"
    marker.touch()
    result = cli(
        "sweep", FLAKY, "-g", "seed=0,1", "-s", "bad_seed=1", "-s", f"fail_file={marker}", "-e", "serial"
    )
    assert result.exit_code == 1
    assert "re-run the same command" in result.stderr and "flaky experiment broke" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["mlp-teacher", "-g", "nope=1,2"], "unknown config key 'nope' for experiment 'mlp-teacher'"),
        (["mlp-teacher", "-g", "lr=fast"], "lr='fast' has the wrong type"),
        (["mlp-teacher", "-g", "lr=0.1", "-e", "spark"], "--executor='spark' is not allowed"),
        (["mlp-teacher", "-g", "lr=0.1", "--address", "auto"], "--address needs --executor ray"),
        (["-g", "lr=0.1"], "missing experiment name"),
        (["nope", "-g", "lr=0.1"], "experiment='nope' is not known"),
        (["mlp-teacher", "--spec", "missing.yaml"], "cannot read sweep spec"),
        (["mlp-teacher", "-g", "lr=0.1", "--workers", "0"], "--workers=0 is out of range"),
        (["mlp-teacher", "-g", "alpha=uniform(0,1)"], "needs --samples"),
    ],
)
def test_cli_sweep_bad_input_is_one_line_exit_2(cli, tmp_path, args, needle):
    result = cli("sweep", *args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert not Path(tmp_path / "store.duckdb").exists()  # nothing ran
