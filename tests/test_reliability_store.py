"""Store integrity: damaged and foreign files are refused in one line; old schemas are migrated or refused;
concurrent processes never lose or duplicate a run; a resumed run replaces, never duplicates, its rows."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

from learndyn.cli import app
from learndyn.store import RunStore, StoreError
from learndyn.store import schema as rs

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _filled_store(path: Path, runs: int = 3, steps: int = 200) -> RunStore:
    store = RunStore(path)
    for i in range(runs):
        with store.start_run("r", {"i": i}, seed=i) as run:
            for t in range(steps):
                run.log(t, {"loss": 1.0 / (t + 1), "x": float(t)})
            run.log_array(0, "spectrum", np.arange(3.0))
    return store


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert text and "\n" not in text, text
    return text


# ---------------------------------------------------------------------------------------- damaged files
def _damage(kind: str, data: bytes) -> bytes:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
    return {
        "truncated-half": data[: len(data) // 2],
        "truncated-4k": data[:4096],
        "truncated-100b": data[:100],
        "header-only": data[:12],
        "zeros-after-header": data[:4096] + bytes(len(data) - 4096),
        "garbage-after-header": data[:4096] + noise[4096:],
        "garbage-after-magic": data[:12] + noise[12:],
        "all-garbage": noise,
        "all-zeros": bytes(len(data)),
    }[kind]


DAMAGE = [
    "truncated-half",
    "truncated-4k",
    "truncated-100b",
    "header-only",
    "zeros-after-header",
    "garbage-after-header",
    "garbage-after-magic",
    "all-garbage",
    "all-zeros",
]


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "s.duckdb"
    _filled_store(path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_store_file_is_refused_in_one_line(tmp_path, good_bytes, kind):
    path = tmp_path / "s.duckdb"
    path.write_bytes(_damage(kind, good_bytes))
    with pytest.raises(StoreError) as exc:
        store = RunStore(path)
        store.runs()  # a damage DuckDB only notices when it reads the tables
        store.sql("SELECT count(*) FROM metrics")
    assert str(path) in _one_line(exc)
    result = CliRunner().invoke(app, ["list", "--store", str(path)], catch_exceptions=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["sqlite", "parquet", "json", "empty-duckdb-with-table"])
def test_foreign_files_are_refused(tmp_path, kind):
    path = tmp_path / "s.duckdb"
    if kind == "sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE runs (id TEXT)")
        con.commit()
        con.close()
    elif kind == "parquet":
        duckdb.sql(f"COPY (SELECT 1 AS a) TO '{path}' (FORMAT parquet)")
    elif kind == "json":
        path.write_text('{"runs": []}')
    else:
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE schema_version (format VARCHAR, version INTEGER)")
        con.execute("INSERT INTO schema_version VALUES ('someone-else', 1)")
        con.close()
    with pytest.raises(StoreError, match="not a learndyn run store") as exc:
        RunStore(path)
    _one_line(exc)


def test_a_garbage_write_ahead_log_does_not_lose_the_store(tmp_path):
    path = tmp_path / "s.duckdb"
    _filled_store(path, runs=2, steps=10)
    garbage = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    Path(str(path) + ".wal").write_bytes(garbage)
    store = RunStore(path)
    assert len(store.runs()) == 2 and len(store.metrics(store.runs()["id"].iloc[0])) == 20
    with store.start_run("after", {}) as run:
        run.log(0, {"loss": 1.0})
    assert len(RunStore(path).runs()) == 3


# ---------------------------------------------------------------------------------------- schema versions
V1_SCHEMA = rs._SCHEMA  # what version 1 stores contain


def _v1_store(path: Path) -> None:
    """A store as learndyn with schema version 1 writes it, one run in it."""
    store = RunStore(path)
    with store.start_run("old", {"a": 1}) as run:
        run.log(0, {"loss": 2.0})


def test_pre_versioning_v0_store_is_refused_clearly(tmp_path):
    path = tmp_path / "v0.duckdb"
    con = duckdb.connect(str(path))  # runs and metrics, but no schema_version table
    con.execute("CREATE TABLE runs (id VARCHAR, name VARCHAR, status VARCHAR, config VARCHAR)")
    con.execute("CREATE TABLE metrics (run_id VARCHAR, step BIGINT, name VARCHAR, value DOUBLE)")
    con.close()
    with pytest.raises(StoreError) as exc:
        RunStore(path)
    message = _one_line(exc)
    assert "before schema versions (version 0)" in message and f"1..{rs.SCHEMA_VERSION}" in message


def test_older_schema_is_migrated_in_place(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    _v1_store(path)
    calls = []

    def add_notes(con):  # a v1 -> v2 migration: a new column with a default
        calls.append(1)
        con.execute("ALTER TABLE runs ADD COLUMN notes VARCHAR DEFAULT ''")

    monkeypatch.setattr(rs, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(rs, "_MIGRATIONS", {1: add_notes})
    store = RunStore(path)
    assert calls == [1]
    assert store.sql("SELECT version FROM schema_version").iloc[0, 0] == 2
    assert store.sql("SELECT name, notes FROM runs").values.tolist() == [["old", ""]]
    assert store.metrics("old")["value"].tolist() == [2.0]  # data kept
    RunStore(path)
    assert calls == [1]  # migrated once


def test_missing_or_failing_migration_refuses_and_leaves_the_store_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    _v1_store(path)
    monkeypatch.setattr(rs, "SCHEMA_VERSION", 3)

    def v1_to_v2(con):
        con.execute("ALTER TABLE runs ADD COLUMN notes VARCHAR")

    monkeypatch.setattr(rs, "_MIGRATIONS", {1: v1_to_v2})  # no 2 -> 3
    with pytest.raises(StoreError) as exc:
        RunStore(path)
    assert "no migration from version 2" in _one_line(exc)

    def broken(con):  # runs after v1_to_v2 in the same transaction
        con.execute("ALTER TABLE runs ADD COLUMN more VARCHAR")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(rs, "_MIGRATIONS", {1: v1_to_v2, 2: broken})
    with pytest.raises(StoreError) as exc:
        RunStore(path)
    assert "migration from schema version 1 to 3 failed (store unchanged): disk on fire" in _one_line(exc)
    monkeypatch.setattr(rs, "SCHEMA_VERSION", 1)
    store = RunStore(path)  # rolled back: still a valid version-1 store
    assert store.sql("SELECT version FROM schema_version").iloc[0, 0] == 1
    assert not {"notes", "more"} & set(store.sql("SELECT * FROM runs").columns)


# ---------------------------------------------------------------------------------------- concurrency
MANY_RUNS = """
import sys
from learndyn.store import RunStore
path, worker, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for r in range(runs):
    store = RunStore(path)  # every open also runs crash recovery, concurrently with the other writers
    with store.start_run(f"w{worker}", {"worker": worker, "r": r}, flush_every=3, flush_seconds=None) as run:
        for t in range(7):
            run.log(t, {"v": worker * 1000 + r * 10 + t})
print("done")
"""


def test_concurrent_processes_never_lose_or_duplicate_a_run(tmp_path):
    path = tmp_path / "s.duckdb"
    RunStore(path)
    workers, runs = 4, 8
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MANY_RUNS, str(path), str(w), str(runs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for w in range(workers)
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and out.strip() == "done", err
    store = RunStore(path)
    df = store.runs()
    assert len(df) == workers * runs and df["id"].is_unique
    assert set(df["status"]) == {"completed"}  # recovery never touched a live writer's run
    pairs = sorted((c["worker"], c["r"]) for c in df["config"])
    assert pairs == [(w, r) for w in range(workers) for r in range(runs)]
    m = store.sql("SELECT run_id, step, name, value FROM metrics")
    assert len(m) == workers * runs * 7 and not m.duplicated(["run_id", "step", "name"]).any()


REOPEN = """
import sys
from learndyn.store import RunStore, StoreError
try:
    run = RunStore(sys.argv[1]).reopen_run(sys.argv[2])
except StoreError as exc:
    print("REFUSED", exc)
else:
    print("TOOK", run.id)
    sys.stdout.flush()
    sys.stdin.readline()  # hold the run (alive) until told
    run.close()
"""


def test_only_one_process_can_resume_a_run(tmp_path):
    path = tmp_path / "s.duckdb"
    store = RunStore(path)
    run = store.start_run("r", {})
    run.log(0, {"loss": 1.0})
    run.close("interrupted")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REOPEN, str(path), run.id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for _ in range(3)
    ]
    try:
        firsts = [p.stdout.readline().split()[0] for p in procs]
        assert sorted(firsts) == ["REFUSED", "REFUSED", "TOOK"], [p.stderr.read() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.write("\n")
                p.stdin.flush()
            p.wait(timeout=120)
    assert RunStore(path).run_info(run.id)["status"] == "completed"


# ---------------------------------------------------------------------------------------- resumed rows
def test_a_resumed_run_replaces_the_rows_it_logs_again_and_keeps_the_rest(tmp_path):
    store = RunStore(tmp_path / "s.duckdb")
    run = store.start_run("r", {"x": 1}, flush_every=2)
    for t in range(10):
        run.log(t, {"loss": float(t), "other": -1.0})
        run.log_array(t, "spec", np.full(2, t, dtype=float))
    run.set_summary({"kept": 1})
    run.flush()
    run.close("interrupted")  # as if killed after flushing step 9

    again = store.reopen_run(run.id[:6], flush_every=3)
    assert store.run_info(run.id)["status"] == "running" and again.summary == {"kept": 1}
    for t in range(6, 12):  # the resumed loop restarts at its checkpoint, step 6
        again.log(t, {"loss": 100.0 + t})
        again.log_array(t, "spec", np.full(2, 100 + t, dtype=float))
    again.log(11, {"loss": 999.0})  # a second row at one key in one attempt is kept, as a fresh run would
    again.close()

    info = store.run_info(run.id)
    assert info["status"] == "completed" and info["error"] is None and info["ended_at"] is not None
    loss = store.metrics(run.id, "loss")
    assert loss["step"].tolist() == [*range(12), 11]
    assert loss["value"].tolist() == [*map(float, range(6)), *(100.0 + t for t in range(6, 12)), 999.0]
    assert len(store.metrics(run.id, "other")) == 10  # not logged again: kept
    spec = store.arrays(run.id, "spec")
    assert spec["step"].tolist() == list(range(12))
    assert [a[0] for a in spec["array"]] == [*map(float, range(6)), *(100.0 + t for t in range(6, 12))]


def test_completed_and_diverged_runs_are_not_resumable(tmp_path):
    store = RunStore(tmp_path / "s.duckdb")
    with store.start_run("done", {}) as run:
        run.log(0, {"a": 1.0})
    with store.start_run("bad", {}) as bad:
        bad.mark_diverged("loss is nan at step 3", step=3)
    for ref, status in ((run.id, "completed"), (bad.id, "diverged")):
        with pytest.raises(StoreError, match=f"is {status}; allowed to resume: interrupted, failed"):
            store.reopen_run(ref)


def test_checkpoints_live_beside_the_run_and_go_when_it_completes(tmp_path):
    store = RunStore(tmp_path / "s.duckdb")
    run = store.start_run("r", {}, checkpoint_every=7)
    ckpt = run.checkpointer
    assert ckpt.every == 7 and ckpt.directory == store.arrays_dir / run.id / "checkpoints"
    keys = [ckpt.loop_key("main"), ckpt.loop_key("main"), ckpt.loop_key("probe")]
    assert keys == ["main-0", "main-1", "probe-0"]
    ckpt.save("main-0", {"step": 3})
    run.close("interrupted")
    assert ckpt.load("main-0") == {"step": 3}  # kept for `learndyn resume`
    again = store.reopen_run(run.id)
    assert again.checkpointer.load("main-0") == {"step": 3}
    assert again.checkpointer.loop_key("main") == "main-0"  # a new attempt counts its loops afresh
    again.close()
    assert not ckpt.directory.exists()
    with pytest.raises(ValueError, match="checkpoint_every=-1 is out of range"):
        store.start_run("r", {}, checkpoint_every=-1)
    assert len(store.runs()) == 1  # refused before a run was opened


# ---------------------------------------------------------------------------------------- input at the store
def test_a_seed_outside_bigint_is_refused_in_one_line_before_a_run_exists(tmp_path):
    from learndyn.store import FinishedRun
    from learndyn.store.encoding import now
    from learndyn.validation import LearndynValueError

    store = RunStore(tmp_path / "s.duckdb")
    for seed in (2**63, 2**64, -(2**63) - 1, 10**40):
        with pytest.raises(LearndynValueError) as exc:
            store.start_run("r", {"x": 1}, seed=seed)
        assert f"start_run.seed={seed}" in _one_line(exc) and "9223372036854775807" in _one_line(exc)
        with pytest.raises(LearndynValueError) as exc:
            store.write_finished_runs([FinishedRun("r", {}, "completed", now(), seed=seed)])
        assert "seed" in _one_line(exc)
    assert store.runs().empty
    for ok in (2**63 - 1, -(2**63), 0):
        with store.start_run("r", {}, seed=ok) as run:
            pass
        assert store.run_info(run.id)["seed"] == ok


def test_learndyn_run_with_a_huge_seed_is_one_line_exit_2(tmp_path):
    from test_reliability_crash import TRAIN

    path = tmp_path / "s.duckdb"
    result = CliRunner().invoke(app, ["run", TRAIN, "--store", str(path), "--set", f"seed={2**64}"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "seed" in result.stderr and "Conversion Error" not in result.stderr
    assert RunStore(path).runs().empty


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"a": float("nan")}, "config['a']=nan"),
        ({"lrs": [0.1, float("inf")]}, "config['lrs'][1]=inf"),
        ({"deep": {"x": -float("inf")}}, "config['deep']['x']=-inf"),
        ({"np": np.float32("nan")}, "config['np']=nan"),
    ],
)
def test_non_finite_config_values_are_refused_naming_the_key(tmp_path, config, where):
    from learndyn.store import FinishedRun
    from learndyn.store.encoding import now
    from learndyn.validation import LearndynValueError

    store = RunStore(tmp_path / "s.duckdb")
    with pytest.raises(LearndynValueError) as exc:
        store.start_run("r", config)
    assert _one_line(exc).startswith(f"{where} is not allowed; allowed: finite numbers")
    with pytest.raises(LearndynValueError):
        store.write_finished_runs([FinishedRun("r", config, "completed", now())])
    assert store.runs().empty
    with store.start_run("r", {"a": 1.5, "b": [1e308]}) as run:  # finite values: standard JSON
        run.set_summary({"loss": float("nan")})  # summaries keep NaN (a diverged run's loss)
    raw = store.sql("SELECT config FROM runs").iloc[0, 0]
    assert raw == '{"a": 1.5, "b": [1e+308]}'


# ---------------------------------------------------------------------------------------- closing
def test_a_run_whose_close_raised_is_never_marked_completed_by_the_exit_flush(tmp_path, monkeypatch):
    from learndyn.store.run import _flush_open_runs

    store = RunStore(tmp_path / "s.duckdb")
    run = store.start_run("r", {}, flush_every=1000)
    run.log(0, {"loss": 1.0})
    real_flush = store._flush

    def busy(*args, **kwargs):
        raise StoreError(f"run store {store.path}: could not take the exclusive lock (busy)")

    monkeypatch.setattr(store, "_flush", busy)
    with pytest.raises(StoreError):
        run.close()
    monkeypatch.setattr(store, "_flush", real_flush)  # the store works again before the process exits
    _flush_open_runs()  # what the interpreter does at exit
    info = store.run_info(run.id)
    assert info["status"] == "running" and info["ended_at"] is None  # interrupted once this process is gone
    assert store.metrics(run.id)["value"].tolist() == [1.0]  # the rows are kept


KILLED_AFTER_COMMIT = """
import os, sys
from learndyn.checkpoint import RunCheckpointer
from learndyn.store import RunStore
from learndyn.store.liveness import mark_finishing
store = RunStore(sys.argv[1])
resumable = store.start_run("resumable", {}, checkpoint_every=5)  # killed while closing, before its commit
resumable.checkpointer.save("main-0", {"step": 5})
mark_finishing(store, resumable.id)
done = store.start_run("done", {}, checkpoint_every=5)
done.checkpointer.save("main-0", {"step": 5})
done.log(0, {"loss": 1.0})
print(resumable.id, done.id, flush=True)
RunCheckpointer.clear = lambda self: os._exit(0)  # killed between the completion commit and the clean-up
done.close()
"""


def test_a_kill_between_completion_and_checkpoint_cleanup_is_repaired_on_open(tmp_path):
    path = tmp_path / "s.duckdb"
    RunStore(path)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_COMMIT, str(path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    resumable, done = proc.stdout.split()
    arrays = path.with_name("s.arrays")
    assert (arrays / done / "checkpoints" / "main-0.pt").exists()  # the orphan
    store = RunStore(path)  # opening repairs
    assert store.run_info(done)["status"] == "completed"
    assert not (arrays / done / "checkpoints").exists()  # nothing will resume a finished run
    assert store.run_info(resumable)["status"] == "interrupted"
    assert (arrays / resumable / "checkpoints" / "main-0.pt").exists()  # kept for `learndyn resume`
    assert not list(arrays.glob(".finishing/*"))  # no markers left


def test_a_full_disk_on_array_writes_is_one_clear_line(tmp_path, monkeypatch):
    import errno

    store = RunStore(tmp_path / "s.duckdb")
    run = store.start_run("r", {}, flush_every=1000)
    run.log(0, {"loss": 1.0})
    run.log_array(0, "spectrum", np.arange(4.0))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(StoreError) as exc:
        run.flush()
    message = _one_line(exc)
    assert str(store.arrays_dir) in message and "No space left on device" in message
    assert not list(store.arrays_dir.rglob("*.tmp"))  # no half-written file left
    with pytest.raises(StoreError):
        run.close()
    assert store.run_info(run.id)["status"] == "running"  # not acknowledged as completed
    monkeypatch.undo()  # space freed: the buffered rows and arrays are written, nothing was lost
    run.close()
    assert store.run_info(run.id)["status"] == "completed"
    assert store.metrics(run.id)["value"].tolist() == [1.0]
    assert store.arrays(run.id, "spectrum")["array"][0].tolist() == [0.0, 1.0, 2.0, 3.0]


# ---------------------------------------------------------------------------------- damaged store, writes
def _live_metrics_byte(path: Path) -> int:
    """The offset of a byte inside a block that holds rows of the metrics table."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        block_size = int(con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0])
        blocks = con.execute("SELECT DISTINCT block_id FROM pragma_storage_info('metrics')").fetchall()
        block = min(int(b) for (b,) in blocks if b is not None and b >= 0)
    finally:
        con.close()
    return 3 * 4096 + block * block_size + 1000  # DuckDB's three 4 KiB headers, then the blocks


@pytest.mark.parametrize("damage", ["truncated-half", "flipped-byte"])
@pytest.mark.parametrize("lock_file", ["kept", "gone"], ids=["sealed-lock-file", "no-lock-file"])
def test_a_damaged_store_refuses_writes_before_acknowledging_them(tmp_path, damage, lock_file):
    """A damaged file may still open (the damage is in a block no query has read yet); the store checks
    itself before a write and refuses it in one line: `learndyn run` exits 2 instead of reporting a stored
    run that `show` then cannot read."""
    from learndyn.store import FinishedRun
    from learndyn.store.encoding import now
    from test_reliability_crash import TRAIN

    path = tmp_path / "s.duckdb"
    store = _filled_store(path, runs=1, steps=10)
    series = {"loss": (np.arange(40_000), np.linspace(0, 1, 40_000))}
    store.write_finished_runs(FinishedRun("r", {"i": i}, "completed", now(), series=series) for i in range(8))
    with store.start_run("last", {}) as run:  # 7 MB, laid out so that the old store acknowledged a write
        run.log(0, {"loss": 1.0})  # to it once truncated to half: the damage misses what a write reads
    data = bytearray(path.read_bytes())
    if damage == "truncated-half":
        data = data[: len(data) // 2]
    else:
        data[_live_metrics_byte(path)] ^= 0x10
    path.write_bytes(bytes(data))
    if lock_file == "gone":
        Path(str(path) + ".lock").unlink()
    with pytest.raises(StoreError) as exc:
        RunStore(path).start_run("after-damage", {})
    message = _one_line(exc)
    assert str(path) in message and ("damaged" in message or "Corrupt" in message), message
    result = CliRunner().invoke(app, ["run", TRAIN, "--store", str(path), "--set", "steps=20"])
    assert result.exit_code == 2 and "stored" not in result.stdout, result.output
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def test_the_full_check_runs_only_when_the_file_changed_outside_the_store(tmp_path):
    """The per-transaction check is a comparison with the seal of the last write; the full scan runs on the
    first write to an unsealed store and after something else touched the file, not on every write."""
    path = tmp_path / "s.duckdb"
    _filled_store(path, runs=2, steps=50)
    store = RunStore(path)
    for i in range(3):
        with store.start_run("more", {"i": i}, flush_every=10, flush_seconds=None) as run:
            for t in range(40):
                run.log(t, {"loss": float(t)})
    assert store.full_checks == 0  # 3 x (1 start + 4 flushes + 1 close): all sealed
    with open(path, "r+b") as fh:  # another program rewrites a byte with the value it had
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(byte)
    with store.start_run("after", {}) as run:
        run.log(0, {"loss": 1.0})
    assert store.full_checks == 1  # checked once, then sealed again
    Path(str(path) + ".lock").unlink()  # a lost lock file loses the seal: one full check
    with store.start_run("after-lock-loss", {}):
        pass
    assert store.full_checks == 2 and len(store.runs()) == 7


# ---------------------------------------------------------------------------------------- read-only stores
def _store_to_read(path: Path) -> str:
    """A store holding a completed run with arrays, a run whose process is gone (recovery would write) and a
    finishing marker (clean-up would write); returns the completed run's id."""
    store = _filled_store(path, runs=1, steps=20)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = store.start_run("dead", {})
    with store._write() as con:
        con.execute("UPDATE runs SET pid = ? WHERE id = ?", [dead.pid, run.id])
    (store.arrays_dir / ".finishing").mkdir(parents=True, exist_ok=True)
    (store.arrays_dir / ".finishing" / run.id).touch()
    return store.runs(name="r")["id"].iloc[0]


def _read_everything(path: Path, run_id: str, out: Path, report: bool = True) -> None:
    store = RunStore(path)
    assert set(store.runs()["status"]) == {"completed", "running"}  # nothing was recovered (written)
    assert len(store.metrics(run_id)) == 40 and store.arrays(run_id, "spectrum")["array"][0].tolist() == [
        0,
        1,
        2,
    ]
    with pytest.raises(StoreError, match="read-only") as exc:
        store.start_run("new", {})
    _one_line(exc)
    commands = [["list"], ["show", run_id]] + [["report", run_id, "--out", str(out / "r.html")]] * report
    for args in commands:
        result = CliRunner().invoke(app, [*args, "--store", str(path)])
        assert result.exit_code == 0, (args, result.output)
    assert (out / "r.html").exists() == report


@pytest.mark.parametrize("lock_file", ["present", "absent"])
def test_a_read_only_store_is_readable(tmp_path, monkeypatch, lock_file):
    """list/show/report work on a store whose folder cannot be written (simulated: opening the lock file for
    writing fails with EROFS and the folder is not writable), with or without a lock file; writes are refused
    in one line and opening writes nothing (no recovery, no clean-up)."""
    import errno
    import os

    from learndyn.store import lock as lock_module

    path = tmp_path / "ro" / "s.duckdb"
    run_id = _store_to_read(path)
    if lock_file == "absent":
        Path(str(path) + ".lock").unlink()
    real_open, real_access = os.open, os.access
    folder = str(path.parent)

    def read_only_open(file, flags, *args, **kwargs):
        if str(file).startswith(folder) and flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, flags, *args, **kwargs)

    def read_only_access(file, mode, *args, **kwargs):
        if str(file).startswith(folder) and mode & os.W_OK:
            return False
        return real_access(file, mode, *args, **kwargs)

    monkeypatch.setattr(lock_module.os, "open", read_only_open)
    monkeypatch.setattr(lock_module.os, "access", read_only_access)
    _read_everything(path, run_id, tmp_path)


READ_ONLY_MOUNT = """
set -e
mount --bind -o ro "$1" "$2" || exit 97
shift 2
exec "$@"
"""
READ_EVERYTHING = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_reliability_store import _read_everything
mnt, out = Path(sys.argv[1]), Path(sys.argv[2])
for name, run_id in zip(("with-lock", "without-lock"), sys.argv[3:], strict=True):
    _read_everything(mnt / name / "s.duckdb", run_id, out, report=False)
print("read")
"""


def test_a_store_on_a_read_only_mount_is_readable(tmp_path):
    """The same on a real read-only file system, with and without a lock file (a read-only bind mount in a
    private mount namespace; skipped where this user cannot make one)."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    mnt.mkdir()
    ids = [_store_to_read(src / name / "s.duckdb") for name in ("with-lock", "without-lock")]
    Path(str(src / "without-lock" / "s.duckdb") + ".lock").unlink()
    script = READ_EVERYTHING.format(tests=str(Path(__file__).resolve().parent))
    command = [sys.executable, "-c", script, str(mnt), str(tmp_path), *ids]
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, "sh", str(src), str(mnt), *command],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    if proc.returncode == 97 or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("read"), proc.stdout + proc.stderr
