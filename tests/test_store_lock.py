"""The store lock: first come, first served across processes (checked by order, never by time), a deleted lock
file is survived, and a killed waiter does not block the queue."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from learndyn.store import RunStore
from learndyn.store.lock import LockTimeout, StoreLock, lock_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _tickets_drawn(lock_path: Path) -> int:
    """The lock file's ticket counter (0 if it has none)."""
    try:
        return int.from_bytes(lock_path.read_bytes()[:8].ljust(8, b"\0"), "little")
    except FileNotFoundError:
        return 0


WAITER = """
import sys, time
from learndyn.store.lock import LockTimeout, StoreLock, lock_for
path, name, out, mode = sys.argv[1:5]
print("waiting", flush=True)
with lock_for(path).hold(exclusive=mode == "x", timeout=300):
    with open(out, "a") as f:
        f.write(name + "\\n")
    time.sleep(0.02)
"""


def _queue(lock_path: Path, out: Path, name: str, mode: str, drawn: int) -> subprocess.Popen:
    """Start a process that waits for the lock; return once it has drawn its ticket (is in the queue)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, str(lock_path), name, str(out), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout.readline().strip() == "waiting"
    deadline = time.monotonic() + 60
    while _tickets_drawn(lock_path) < drawn and time.monotonic() < deadline:
        time.sleep(0.005)
    return proc


def test_waiters_take_the_lock_in_the_order_they_came(tmp_path):
    """A writer, a reader, a writer, ... queued behind a holder get the lock in arrival order. (Polling with
    backoff, as before, let the newest waiters, polling fastest, overtake those waiting longest.)"""
    lock_path, out = tmp_path / "s.lock", tmp_path / "order"
    modes = ["x", "s", "x", "s", "x", "x"]
    names = [f"{i}{m}" for i, m in enumerate(modes)]
    procs = []
    with lock_for(lock_path).hold(exclusive=True, timeout=10):
        first = _tickets_drawn(lock_path)
        for i, (name, mode) in enumerate(zip(names, modes, strict=True)):
            procs.append(_queue(lock_path, out, name, mode, first + i + 1))
        time.sleep(0.3)  # long enough for the waiters' polls to back off
    for p in procs:
        assert p.wait(timeout=300) == 0
    assert out.read_text().split() == names


CONTENDER = """
import sys
from learndyn.store.lock import LockTimeout, StoreLock, lock_for
path, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = lock_for(path)
for _ in range(n):
    with lock.hold(exclusive=True, timeout=300):
        with open(out, "a") as f:
            f.write(f"{lock.last_ticket}\\n")
"""


def test_contending_writers_are_served_strictly_in_ticket_order(tmp_path):
    """Four processes take the lock 25 times each as fast as they can: every acquisition is logged (none
    lost) and the tickets, in the order the lock was taken, increase strictly (nobody overtook)."""
    lock_path, out = tmp_path / "s.lock", tmp_path / "log"
    procs = [
        subprocess.Popen([sys.executable, "-c", CONTENDER, str(lock_path), str(out), "25"], env=_env())
        for _ in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    tickets = [int(t) for t in out.read_text().split()]
    assert len(tickets) == 100
    assert all(a < b for a, b in zip(tickets, tickets[1:], strict=False)), tickets


def test_a_killed_waiter_does_not_block_the_queue(tmp_path):
    lock_path, out = tmp_path / "s.lock", tmp_path / "order"
    with lock_for(lock_path).hold(exclusive=True, timeout=10):
        first = _tickets_drawn(lock_path)
        doomed = _queue(lock_path, out, "killed", "x", first + 1)
        after = _queue(lock_path, out, "after", "x", first + 2)
        doomed.kill()
        doomed.wait()
    assert after.wait(timeout=300) == 0
    assert out.read_text().split() == ["after"]


def test_a_waiter_that_times_out_leaves_the_queue(tmp_path):
    lock_path, out = tmp_path / "s.lock", tmp_path / "order"
    with lock_for(lock_path).hold(exclusive=True, timeout=10):
        with pytest.raises(LockTimeout, match="within 0.2 s"):  # a second descriptor of this process waits
            with StoreLock(str(lock_path)).hold(exclusive=True, timeout=0.2):
                pass
        after = _queue(lock_path, out, "after", "x", _tickets_drawn(lock_path) + 1)
    assert after.wait(timeout=300) == 0
    assert out.read_text().split() == ["after"]


HOLDER = """
import sys, time
from learndyn.store import RunStore
store = RunStore(sys.argv[1])
with store._write() as con:  # a long transaction
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    con.execute("UPDATE runs SET name = name")
print("done", flush=True)
"""


def test_a_deleted_lock_file_is_recreated_and_writers_wait_instead_of_failing(tmp_path):
    """Deleting the lock file while a writer is inside its transaction: the next writer recreates it and
    waits for DuckDB's own lock (which the first still holds) instead of failing at once."""
    path = tmp_path / "s.duckdb"
    store = RunStore(path, lock_timeout=120)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), "0.5"], stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert holder.stdout.readline().strip() == "holding"
    lock_path = Path(str(path) + ".lock")
    lock_path.unlink()
    with store.start_run("after-deletion", {}) as run:
        run.log(0, {"loss": 1.0})
    assert holder.wait(timeout=300) == 0 and holder.stdout.read().strip() == "done"
    assert lock_path.exists()
    assert RunStore(path).run_info(run.id)["status"] == "completed"


MANY = """
import sys
from learndyn.store import RunStore
path, worker = sys.argv[1], int(sys.argv[2])
store = RunStore(path, lock_timeout=300)
for r in range(2):
    with store.start_run(f"w{worker}", {"r": r}, flush_every=2, flush_seconds=None) as run:
        for t in range(6):
            run.log(t, {"v": float(t)})
print("done")
"""


def test_writers_survive_the_lock_file_being_deleted_over_and_over(tmp_path):
    path = tmp_path / "s.duckdb"
    RunStore(path)
    lock_path = Path(str(path) + ".lock")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MANY, str(path), str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for w in range(3)
    ]
    while any(p.poll() is None for p in procs):
        lock_path.unlink(missing_ok=True)
        time.sleep(0.02)
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0 and out.strip() == "done", err
    store = RunStore(path)
    assert len(store.runs()) == 6 and set(store.runs()["status"]) == {"completed"}
    assert len(store.sql("SELECT * FROM metrics")) == 6 * 6
