"""Sweeps after a kill (Reliability II, 1): a re-run sweep continues its interrupted runs under their own ids
(single runs resume from their checkpoints, ensemble members are replaced), so a config never gets a second
row; an ensemble's members are ``running`` in the store before it trains; pool workers die with their parent.

The end-to-end kill test (real processes, SIGKILL of the parent or of the whole group, ≥ 20 kills across
executors) is ``scripts/sweep_fault_injection.py``; its numbers are in docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from learndyn.lifeline import POLL_SECONDS
from learndyn.phenomena import registry
from learndyn.phenomena.registry import Experiment, ExperimentResult, MemberOutcome
from learndyn.store import Recorder, RunStore
from learndyn.store.liveness import process_alive
from learndyn.sweep import SweepSpec, config_hash, run_sweep
from learndyn.sweep.work import execute_unit

SEEN = "test-sweep-seen"
_SEEN_RUNNING: list[dict[str, str]] = []  # what the ensemble saw in the store before training


@dataclasses.dataclass
class SeenConfig:
    """``seed`` -> a loss curve; ``store`` is where the ensemble looks for its own ``running`` rows."""

    seed: int = 0
    steps: int = 4
    store: str = ""


def _run_seen(config: SeenConfig, recorder: Recorder) -> ExperimentResult:
    for t in range(config.steps):
        recorder.log(t, {"loss": 1.0 / (1 + t + config.seed)})
    return ExperimentResult(summary={"final_loss": 1.0 / (config.steps + config.seed)})


def _run_seen_ensemble(configs: list[SeenConfig]) -> list[MemberOutcome]:
    rows = RunStore(configs[0].store, recover=False).runs(status="running").to_dict("records")
    _SEEN_RUNNING.append({config_hash(r["config"]): r["id"] for r in rows})
    out = []
    for c in configs:
        steps = list(range(c.steps))
        loss = [1.0 / (1 + t + c.seed) for t in steps]
        out.append(MemberOutcome("completed", {"final_loss": loss[-1]}, series={"loss": (steps, loss)}))
    return out


if SEEN not in registry._REGISTRY:
    registry.register(Experiment(SEEN, "records what its ensemble sees in the store", SeenConfig, _run_seen))
    registry.register_ensemble(SEEN, _run_seen_ensemble, axes=("seed",))


def _rows(store: RunStore, sweep_id: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in store.runs(sweep_id=sweep_id).to_dict("records"):
        out.setdefault(config_hash(row["config"]), []).append(row)
    return out


def _interrupted_run(store: RunStore, experiment: str, config, sweep_id: str, steps: int) -> str:
    """A run of ``config`` in the sweep left as a killed worker leaves it: some rows, then ``interrupted``."""
    run = store.start_run(experiment, config, sweep_id=sweep_id)
    for t in range(steps):
        run.log(t, {"loss": 99.0})  # not what a real attempt logs: the rerun must replace these
    run.log_array(0, "old", np.zeros(3))
    run.close("interrupted", "interrupted: killed (simulated)")
    return run.id


@pytest.mark.parametrize("ensemble", [False, True], ids=["single", "ensemble"])
def test_a_rerun_sweep_continues_interrupted_runs_under_their_own_ids(store, tmp_path, ensemble):
    spec = SweepSpec.from_cli(SEEN, ["seed=range(4)"], [f"store={store.path}"])
    plan = spec.expand()
    killed = {p.hash: _interrupted_run(store, SEEN, p.config, plan.sweep_id, 2) for p in plan.points[:2]}
    result = run_sweep(spec, store, executor="serial", ensemble=ensemble)
    assert result.ok and result.counts == {"completed": 4}
    rows = _rows(store, plan.sweep_id)
    assert len(rows) == 4 and all(len(v) == 1 for v in rows.values())  # one row per config, never two
    for h, run_id in killed.items():
        row = rows[h][0]
        assert row["id"] == run_id and row["status"] == "completed" and row["error"] is None
    for (row,) in rows.values():
        metrics = store.metrics(row["id"])
        assert list(metrics["step"]) == [0, 1, 2, 3] and 99.0 not in set(metrics["value"])
        if ensemble:  # an ensemble logs no arrays: the earlier attempt's are gone, rows and files
            assert store.arrays(row["id"], "old").empty
            assert not list((store.arrays_dir / row["id"]).glob("*.npz"))
    again = run_sweep(spec, store, executor="serial", ensemble=ensemble)
    assert again.counts == {} and again.skipped == 4


def test_a_rerun_sweep_continues_failed_runs_under_their_own_ids(store):
    spec = SweepSpec.from_cli(SEEN, ["seed=range(2)"], [f"store={store.path}"])
    plan = spec.expand()
    run = store.start_run(SEEN, plan.points[0].config, sweep_id=plan.sweep_id)
    run.close("failed", "RuntimeError: broke")
    assert run_sweep(spec, store, executor="serial", ensemble=False).counts == {"completed": 2}
    rows = _rows(store, plan.sweep_id)
    assert [r["id"] for r in rows[plan.points[0].hash]] == [run.id]


@pytest.mark.parametrize("ensemble", [False, True], ids=["single", "ensemble"])
def test_a_run_another_process_took_meanwhile_is_skipped_not_doubled(store, ensemble):
    spec = SweepSpec.from_cli(SEEN, ["seed=range(2)"], [f"store={store.path}"])
    plan = spec.expand()
    killed = _interrupted_run(store, SEEN, plan.points[0].config, plan.sweep_id, 2)

    class TakeItFirst:  # between the plan and the unit, someone else (`learndyn resume`) continues the run
        name, workers = "take-it-first", 1

        def run(self, units, on_result, on_lost):
            other = store.reopen_run(killed)
            for unit in units:
                on_result(unit, execute_unit(unit))
            other.close("interrupted")

    result = run_sweep(spec, store, executor=TakeItFirst(), ensemble=ensemble)
    assert result.counts.get("taken elsewhere") == (2 if ensemble else 1)  # an ensemble claims all at once
    rows = _rows(store, plan.sweep_id)
    assert all(len(v) == 1 for v in rows.values()) and rows[plan.points[0].hash][0]["id"] == killed
    assert run_sweep(spec, store, executor="serial", ensemble=ensemble).counts == {
        "completed": 2 if ensemble else 1
    }
    assert all(len(v) == 1 and v[0]["status"] == "completed" for v in _rows(store, plan.sweep_id).values())


@pytest.mark.parametrize("ensemble", [False, True], ids=["single", "ensemble"])
def test_two_sweeps_never_both_start_one_config(store, ensemble):
    spec = SweepSpec.from_cli(SEEN, ["seed=range(2)"], [f"store={store.path}"])
    plan = spec.expand()

    class SecondSweepFirst:  # between this sweep's plan and its unit, a second sweep runs the same configs
        name, workers = "second-sweep-first", 1

        def run(self, units, on_result, on_lost):
            assert run_sweep(spec, store, executor="serial", ensemble=ensemble).counts == {"completed": 2}
            for unit in units:
                on_result(unit, execute_unit(unit))

    result = run_sweep(spec, store, executor=SecondSweepFirst(), ensemble=ensemble)
    assert result.counts == {"taken elsewhere": 2}  # it used to write a second row for each config
    rows = _rows(store, plan.sweep_id)
    assert len(rows) == 2 and all(len(v) == 1 and v[0]["status"] == "completed" for v in rows.values())


def test_an_ensemble_is_running_in_the_store_before_it_trains(store):
    _SEEN_RUNNING.clear()
    spec = SweepSpec.from_cli(SEEN, ["seed=range(3)"], [f"store={store.path}"])
    plan = spec.expand()
    result = run_sweep(spec, store, executor="serial")
    assert result.ensembles == 1 and result.counts == {"completed": 3}
    (seen,) = _SEEN_RUNNING
    assert sorted(seen) == sorted(p.hash for p in plan.points)  # every member, before training
    rows = _rows(store, plan.sweep_id)
    assert {h: v[0]["id"] for h, v in rows.items()} == seen  # the rows it finished are the ones it claimed
    assert all(v[0]["pid"] == os.getpid() for v in rows.values())


def test_an_ensemble_that_raises_marks_its_claimed_rows_failed(store, monkeypatch):
    def broken(configs):
        raise RuntimeError("ensemble broke on purpose")

    monkeypatch.setitem(
        registry._REGISTRY,
        SEEN,
        dataclasses.replace(registry.get(SEEN), ensemble=registry.EnsembleSupport(("seed",), broken, 1024)),
    )
    spec = SweepSpec.from_cli(SEEN, ["seed=range(2)"], [f"store={store.path}"])
    result = run_sweep(spec, store, executor="serial")
    assert result.counts == {"failed": 2}
    rows = store.runs(sweep_id=spec.expand().sweep_id)
    assert len(rows) == 2 and set(rows["status"]) == {"failed"}
    assert all("ensemble broke on purpose" in e for e in rows["error"])


_PARENT = """
import multiprocessing as mp, sys, time
from learndyn.lifeline import die_with_parent

def child(parent, ready):
    die_with_parent(parent)
    open(ready, "w").close()
    time.sleep(120)

if __name__ == "__main__":
    import os
    p = mp.get_context("spawn").Process(target=child, args=(os.getpid(), sys.argv[1]))
    p.start()
    print(p.pid, flush=True)
    time.sleep(120)
"""


def test_a_worker_dies_with_its_parent(tmp_path):
    ready = tmp_path / "ready"
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    parent = subprocess.Popen(
        [sys.executable, str(script), str(ready)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:  # the watch is set: synchronise on it
            time.sleep(0.01)
        assert ready.exists() and process_alive(child)
        parent.kill()  # SIGKILL: the parent cannot stop its child itself
        parent.wait()
        deadline = time.monotonic() + 60
        while process_alive(child) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_alive(child), "the orphaned worker lived on"
    finally:
        parent.kill()


_DRIVER = """
import subprocess, sys, time
from learndyn.lifeline import start_reaper

# a helper that is not this process's worker and starts a process of its own (as Ray's raylet starts workers)
sleep = "import time; time.sleep(120)"
code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {sleep!r}]); {sleep}"
reaper = start_reaper()  # before the helpers start, as the Ray executor calls it before ray.init
helper = subprocess.Popen([sys.executable, "-c", code])
print(helper.pid, reaper.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_reaper_ends_a_killed_drivers_helpers_and_theirs(tmp_path):
    """A local Ray instance's processes are children of the driver but not learndyn workers: a reaper
    (``start_reaper``, armed by the Ray executor) ends them and their children once the driver is
    SIGKILLed."""
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        helper_pid, reaper_pid = map(int, driver.stdout.readline().split())
        helper = psutil.Process(helper_pid)
        deadline = time.monotonic() + 60
        while not helper.children() and time.monotonic() < deadline:  # the helper's own child has started
            time.sleep(0.01)
        grandchild = helper.children()[0].pid
        time.sleep(5 * POLL_SECONDS)  # the reaper looks at the tree every POLL_SECONDS (a local Ray
        # instance takes seconds to start, so the reaper has long seen it when a driver can be killed)
        driver.kill()  # SIGKILL: no clean shutdown
        driver.wait()
        deadline = time.monotonic() + 60
        while not all(_gone(p) for p in (helper_pid, grandchild, reaper_pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _gone(helper_pid) and _gone(grandchild), "the helpers outlived their driver"
        assert _gone(reaper_pid), "the reaper did not exit after its work"
    finally:
        driver.kill()
