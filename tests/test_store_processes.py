"""Run store across real processes: a writer killed with SIGKILL keeps what it flushed; concurrent writers
lose and duplicate nothing; readers work while writers run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from learndyn.store import RunStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock and SIGKILL are POSIX")

# Logs forever; prints the last durable step whenever it advances.
KILL_WRITER = """
import sys
import numpy as np
from learndyn.store import RunStore

store = RunStore(sys.argv[1])
run = store.start_run("killed", {"flush_every": int(sys.argv[2])}, flush_every=int(sys.argv[2]),
                      flush_seconds=None)
print("RUN", run.id, flush=True)
last = None
step = 0
while True:
    run.log(step, {"loss": 1.0 / (step + 1), "x": float(step)})
    if step % 7 == 0:
        run.log_array(step, "spectrum", np.arange(4.0) * step)
    if run.last_flushed_step != last:
        last = run.last_flushed_step
        print("FLUSHED", last, flush=True)
    step += 1
"""

# Writes `runs` complete runs of `steps` steps, flushing every 5 steps (many flushes contend for the lock).
WRITER = """
import sys
import numpy as np
from learndyn.store import RunStore

path, worker, runs, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = RunStore(path)
print("READY", flush=True)
sys.stdin.readline()  # start together
for r in range(runs):
    with store.start_run(f"w{worker}", {"worker": worker, "r": r}, seed=r, sweep_id="concurrent",
                         flush_every=5, flush_seconds=None) as run:
        for step in range(steps):
            run.log(step, {"loss": worker + r + step / steps, "a": float(step), "b": float(worker)})
            if step % 10 == 0:
                run.log_array(step, "spectrum", np.full(3, worker * 1000 + step, dtype=float))
        run.set_summary({"worker": worker, "r": r})
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kill_after(path, flush_every: int, min_flushed: int, extra_sleep: float) -> tuple[str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_WRITER, str(path), str(flush_every)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        first = proc.stdout.readline().split()
        assert first and first[0] == "RUN", proc.stderr.read()
        run_id, reported = first[1], -1
        deadline = time.monotonic() + 60
        while reported < min_flushed and time.monotonic() < deadline:
            line = proc.stdout.readline().split()
            assert line, proc.stderr.read()
            reported = int(line[1])
        time.sleep(extra_sleep)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return run_id, reported


@pytest.mark.parametrize("extra_sleep", [0.0, 0.137])
def test_sigkill_keeps_every_flushed_row(tmp_path, extra_sleep):
    path = tmp_path / "s.duckdb"
    RunStore(path)
    run_id, reported = _kill_after(path, flush_every=5, min_flushed=60, extra_sleep=extra_sleep)

    store = RunStore(path)  # the store still opens (no corruption, no stale lock)
    info = store.run_info(run_id)
    assert info["status"] == "interrupted"  # its process is dead: the next open marks it
    df = store.metrics(run_id)
    assert not df.duplicated(["step", "name"]).any()
    for name in ("loss", "x"):
        steps = df[df.name == name]["step"].to_numpy()
        # every step up to the last one reported durable is there, contiguous from 0 (whole flushes only)
        assert steps.max() >= reported
        np.testing.assert_array_equal(steps, np.arange(len(steps)))
    arrays = store.arrays(run_id, "spectrum")
    assert arrays["step"].tolist() == list(range(0, arrays["step"].max() + 1, 7))
    assert arrays["step"].max() >= reported - 6
    for step, arr in zip(arrays["step"], arrays["array"], strict=True):
        np.testing.assert_array_equal(arr, np.arange(4.0) * step)

    with store.start_run("after", {}) as run:  # and it takes new writes
        run.log(0, {"loss": 1.0})
    assert len(store.metrics(run.id)) == 1


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "s.duckdb"
    RunStore(path)
    workers, runs, steps = 3, 2, 80
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(w), str(runs), str(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for w in range(workers)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "READY", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        reader = RunStore(path)
        reads = 0
        while any(p.poll() is None for p in procs):  # read while they write
            df = reader.runs()
            assert set(df["status"]) <= {"running", "completed"}
            reads += 1
            time.sleep(0.02)
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert reads > 0

    store = RunStore(path)
    df = store.runs(sweep_id="concurrent")
    assert len(df) == workers * runs and set(df["status"]) == {"completed"}
    total = store.sql("SELECT count(*) AS n FROM metrics").iloc[0, 0]
    assert total == workers * runs * steps * 3
    for row in df.itertuples():
        m = store.metrics(row.id)
        assert len(m) == steps * 3 and not m.duplicated(["step", "name"]).any()
        worker = row.config["worker"]
        assert set(m[m.name == "b"]["value"]) == {float(worker)}  # rows landed in their own run
        arrays = store.arrays(row.id, "spectrum")
        assert arrays["step"].tolist() == list(range(0, steps, 10))
        assert all(a[0] == worker * 1000 + s for s, a in zip(arrays["step"], arrays["array"], strict=True))
        assert row.summary == {"worker": worker, "r": row.config["r"]}


def test_unclosed_run_is_flushed_at_exit(tmp_path):
    path = tmp_path / "s.duckdb"
    code = (
        "import sys\nfrom learndyn.store import RunStore\n"
        "run = RunStore(sys.argv[1]).start_run('unclosed', {}, flush_every=1000)\n"
        "[run.log(t, {'loss': 1.0}) for t in range(7)]\nprint(run.id)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    store = RunStore(path, recover=False)
    run_id = proc.stdout.strip()
    assert len(store.metrics(run_id)) == 7 and store.run_info(run_id)["status"] == "running"
    assert RunStore(path).run_info(run_id)["status"] == "interrupted"  # its process is gone
