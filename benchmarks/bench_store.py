"""Run store: lock fairness with 8 writer processes (wait per transaction) and the integrity check's cost.

Lock: 8 processes each run ``n`` write transactions on one DuckDB file (take the lock exclusively, connect,
insert 100 rows, commit, close, release), as fast as they can, first with the store's FIFO ticket lock
(:mod:`learndyn.store.lock`), then with the polling ``flock`` it replaced (non-blocking tries, sleeping 1 ms
doubling to 50 ms, re-created here as the baseline). The wait of a transaction is the time from asking for
the lock to holding it. Reported: median, p99 and max wait, the number of waits over 1 s, the median hold and
the throughput. Integrity: per write transaction, the cheap check (compare the file with the seal of the last
write) and the seal, against a whole ``RunStore`` flush; and the full check (a scan of every table) on a
store of 1 million metric rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAME = "store"

WORKER = r"""
import fcntl, json, os, sys, time
import duckdb
from learndyn.store.lock import StoreLock

class PollingLock:  # the lock before the FIFO ticket lock: flock polled with exponential back-off
    def __init__(self, path):
        self.path = path
    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
    def release(self, fd):
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

db, kind, n, out, worker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
lock_path = db + ".lock"
waits, holds = [], []
fifo = StoreLock(lock_path)
polling = PollingLock(lock_path)
for i in range(n):
    asked = time.perf_counter()
    if kind == "fifo":
        ctx = fifo.hold(exclusive=True, timeout=600)
        ctx.__enter__()
    else:
        fd = polling.acquire()
    got = time.perf_counter()
    con = duckdb.connect(db)
    con.execute("INSERT INTO t SELECT ?, range, random() FROM range(100)", [worker * 100000 + i])
    con.close()
    done = time.perf_counter()
    if kind == "fifo":
        ctx.__exit__(None, None, None)
    else:
        polling.release(fd)
    waits.append(got - asked)
    holds.append(done - got)
with open(out, "w") as f:
    json.dump({"waits": waits, "holds": holds}, f)
"""


def _lock_run(kind: str, writers: int, n: int, folder: Path) -> dict:
    import duckdb

    db = folder / f"{kind}.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t (tx BIGINT, i BIGINT, v DOUBLE)")
    con.close()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db), kind, str(n), str(folder / f"{kind}-{w}.json"), str(w)],
            env=env,
        )
        for w in range(writers)
    ]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"a {kind} writer failed")
    seconds = time.perf_counter() - start
    waits, holds = [], []
    for w in range(writers):
        data = json.loads((folder / f"{kind}-{w}.json").read_text())
        waits += data["waits"]
        holds += data["holds"]
    waits_ms = np.array(waits) * 1e3
    return {
        "lock": "FIFO tickets (new)" if kind == "fifo" else "polling flock (before)",
        "writers": writers,
        "transactions": len(waits),
        "wait median ms": float(np.median(waits_ms)),
        "wait p99 ms": float(np.percentile(waits_ms, 99)),
        "wait max ms": float(waits_ms.max()),
        "waits > 1 s": int((waits_ms > 1000).sum()),
        "hold median ms": float(np.median(holds) * 1e3),
        "transactions/s": len(waits) / seconds,
    }


def _integrity_rows(folder: Path, quick: bool) -> list[dict]:
    from learndyn.store import FinishedRun, RunStore, integrity
    from learndyn.store.encoding import now

    path = folder / "integrity.duckdb"
    store = RunStore(path)
    rows = 100_000 if quick else 1_000_000
    per_run = rows // 10
    series = {"loss": (np.arange(per_run), np.linspace(1.0, 0.0, per_run))}
    store.write_finished_runs(
        FinishedRun("r", {"i": i}, "completed", now(), series=series) for i in range(10)
    )
    run = store.start_run("timed", {}, flush_every=10**9, flush_seconds=None)
    reps = 50 if quick else 200
    flush = []
    for i in range(reps):
        run.log(i, {"loss": 1.0, "acc": 0.5})
        t0 = time.perf_counter()
        run.flush()
        flush.append(time.perf_counter() - t0)
    run.close()
    cheap, sealing = [], []
    with store._locked(exclusive=True):
        for _ in range(reps):
            t0 = time.perf_counter()
            assert integrity.sealed(store)
            t1 = time.perf_counter()
            integrity.seal(store)
            cheap.append(t1 - t0)
            sealing.append(time.perf_counter() - t1)
    full = []
    for _ in range(3):
        with store._connection(write=True) as con:
            t0 = time.perf_counter()
            integrity.verify(store, con)
            full.append(time.perf_counter() - t0)
    flush_ms, cheap_ms, seal_ms = (float(np.median(x) * 1e3) for x in (flush, cheap, sealing))
    size_mb = os.path.getsize(path) / 1e6
    return [
        {"check": "cheap check (compare with the seal), per write", "ms": cheap_ms},
        {"check": "seal after the write, per write", "ms": seal_ms},
        {"check": "RunStore flush of 2 rows (includes both)", "ms": flush_ms},
        {"check": "cheap check + seal / flush", "ms": (cheap_ms + seal_ms) / flush_ms},
        {"check": f"full check, {rows} metric rows ({size_mb:.0f} MB)", "ms": float(np.median(full) * 1e3)},
    ]


def run(quick: bool) -> dict:
    writers, n = 8, (25 if quick else 200)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lock_rows = [_lock_run(kind, writers, n, folder) for kind in ("polling", "fifo")]
        integrity_rows = _integrity_rows(folder, quick)
    fifo, polling = lock_rows[1], lock_rows[0]
    return {
        "rows": lock_rows,
        "integrity": integrity_rows,
        "notes": [
            f"{writers} writer processes x {n} transactions each (insert 100 rows into one DuckDB file).",
            "wait = time from asking for the lock to holding it; both locks in this one run, same machine.",
            "FIFO: a waiter waits only for those that came before it; polling lets new arrivals overtake.",
        ],
        "checks": [
            {
                "check": "FIFO max wait < polling max wait",
                "value": fifo["wait max ms"],
                "target": f"< {polling['wait max ms']:.0f} ms",
                "passed": fifo["wait max ms"] < polling["wait max ms"],
            }
        ],
    }
