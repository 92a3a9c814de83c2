"""Sweeps on Ray: a local Ray instance with 2 CPUs runs a real small sweep (ensembles and single runs)
into the store; a Ray worker killed mid-run leaves its run ``interrupted`` and a resume reruns exactly it."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'learndyn[ray]')")

from learndyn.store import RunStore  # noqa: E402
from learndyn.sweep import RayExecutor, SweepSpec, config_hash, run_sweep  # noqa: E402

pytestmark = pytest.mark.slow  # starting Ray takes 10-20 s on a busy 2-core machine

RAY_INIT = {"include_dashboard": False, "object_store_memory": 100 * 1024**2}


def test_ray_sweep_starts_a_local_instance_and_resumes(store):
    assert not ray.is_initialized()
    spec = SweepSpec.from_cli("mlp-teacher", ["lr=0.01,0.1", "seed=range(3)", "width=8,16"], ["steps=15"])
    plan = spec.expand()
    executor = RayExecutor(workers=2, init_kwargs=RAY_INIT)
    result = run_sweep(spec, store, executor=executor)
    assert not ray.is_initialized()  # it started Ray, so it stopped it
    assert result.ok and result.counts == {"completed": 12} and result.executor == "ray"
    assert result.ensembles == 4  # two width groups of 6, split over the 2 workers
    runs = store.runs(sweep_id=plan.sweep_id)
    assert len(runs) == 12 and set(runs["status"]) == {"completed"}
    assert sorted(config_hash(c) for c in runs["config"]) == sorted(p.hash for p in plan.points)
    assert os.getpid() not in set(runs["pid"].astype(int))  # written by Ray workers
    again = run_sweep(spec, store, executor="serial")
    assert again.skipped == 12 and again.counts == {}


@pytest.fixture
def ray_cluster():
    ray.init(num_cpus=2, log_to_driver=False, **RAY_INIT)
    yield
    ray.shutdown()


def test_ray_killed_worker_run_is_interrupted_and_resumed(store, ray_cluster):
    spec = SweepSpec.from_cli("mlp-teacher", ["seed=range(3)", "steps=10,3000"], ["eval_every=0"])
    plan = spec.expand()
    long = [p.hash for p in plan.points if p.config.steps == 3000]
    box: dict = {}

    def go() -> None:
        box["result"] = run_sweep(spec, store, executor="ray", ensemble=False)

    sweep = threading.Thread(target=go)
    sweep.start()
    watcher = RunStore(store.path)
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline and sweep.is_alive():
        for row in watcher.runs(sweep_id=plan.sweep_id, status="running").to_dict("records"):
            if config_hash(row["config"]) in long:
                victim = row
                break
        time.sleep(0.05)
    assert victim is not None, "no long run showed up as running"
    os.kill(int(victim["pid"]), signal.SIGKILL)
    sweep.join(timeout=300)
    assert ray.is_initialized()  # an already running Ray is left running
    result = box["result"]
    assert result.counts == {"completed": 5, "interrupted": 1}, result
    assert result.marked_interrupted == [victim["id"]] and "Ray task failed" in result.errors[0]
    killed = config_hash(victim["config"])
    rows = store.runs(sweep_id=plan.sweep_id)
    assert len(rows) == 6 and (rows["status"] == "interrupted").sum() == 1
    resumed = run_sweep(spec, store, executor="serial")
    assert resumed.counts == {"completed": 1} and resumed.skipped == 5
    new = store.runs(sweep_id=plan.sweep_id, status="completed")
    assert sum(config_hash(c) == killed for c in new["config"]) == 1
