"""Run store: schema checks, run lifecycle, batching, queries (one process; see test_store_processes.py)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import duckdb
import numpy as np
import pytest

from learndyn.store import MemoryRecorder, Recorder, RunNotFoundError, RunStore, StoreError
from learndyn.store.runstore import SCHEMA_VERSION
from learndyn.validation import LearndynValueError


@dataclasses.dataclass
class Cfg:
    steps: int = 10
    lrs: tuple[float, ...] = (0.1, 0.01)
    name: str = "x"


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs" / "store.duckdb")


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------ opening and schema
def test_new_store_has_schema_version_and_reopens(tmp_path):
    path = tmp_path / "a" / "s.duckdb"
    RunStore(path)
    assert path.exists()
    again = RunStore(path)
    assert again.sql("SELECT format, version FROM schema_version").iloc[0].tolist() == [
        "learndyn-run-store",
        SCHEMA_VERSION,
    ]
    assert again.runs().empty


def test_missing_store_without_create(tmp_path):
    with pytest.raises(StoreError) as exc:
        RunStore(tmp_path / "nope.duckdb", create=False)
    assert "no run store" in _one_line(exc)


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("hello, this is not a database\n" * 10)
    with pytest.raises(StoreError) as exc:
        RunStore(path)
    assert "not a DuckDB database file" in _one_line(exc)


def test_foreign_duckdb_is_refused(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customers (id INTEGER, name VARCHAR)")
    con.close()
    with pytest.raises(StoreError) as exc:
        RunStore(path)
    assert "not a learndyn run store" in _one_line(exc)


def test_empty_duckdb_becomes_a_store(tmp_path):
    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    store = RunStore(path)
    assert store.runs().empty


@pytest.mark.parametrize(
    ("version", "needle"), [(SCHEMA_VERSION + 1, "newer than this learndyn"), (0, "unknown schema version")]
)
def test_newer_or_unknown_schema_is_refused(tmp_path, version, needle):
    path = tmp_path / "s.duckdb"
    RunStore(path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE schema_version SET version = ?", [version])
    con.close()
    with pytest.raises(StoreError) as exc:
        RunStore(path)
    assert needle in _one_line(exc)


def test_corrupted_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "s.duckdb"
    store = RunStore(path)
    with store.start_run("r", {}) as run:
        run.log(0, {"loss": 1.0})
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    data[12288:] = rng.integers(0, 256, len(data) - 12288, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as exc:
        RunStore(path).runs()
    assert str(path) in _one_line(exc)


def test_directory_path_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        RunStore(tmp_path)


# ------------------------------------------------------------------ lifecycle
def test_run_is_a_recorder_and_completes(store):
    with store.start_run("exp", Cfg(), seed=3, sweep_id="sw1") as run:
        assert isinstance(run, Recorder)
        assert store.run_info(run.id)["status"] == "running"  # visible at once
        for step in range(5):
            run.log(step, {"loss": 1.0 / (step + 1), "acc": step / 5})
        run.set_summary({"final_loss": 0.2})
    info = store.run_info(run.id)
    assert info["status"] == "completed" and run.status == "completed"
    assert info["config"] == {"steps": 10, "lrs": [0.1, 0.01], "name": "x"}
    assert info["summary"] == {"final_loss": 0.2}
    assert info["seed"] == 3 and info["sweep_id"] == "sw1" and info["experiment"] == "exp"
    assert info["ended_at"] >= info["started_at"]
    assert info["error"] is None


def test_failed_run_records_error_and_reraises(store):
    with pytest.raises(RuntimeError, match="boom"):
        with store.start_run("exp", {}) as run:
            run.log(0, {"loss": 1.0})
            raise RuntimeError("boom")
    info = store.run_info(run.id)
    assert info["status"] == "failed"
    assert info["error"] == "RuntimeError: boom"
    assert "Traceback" in info["traceback"]
    assert len(store.metrics(run.id)) == 1  # what was logged before the failure is kept


def test_keyboard_interrupt_marks_interrupted(store):
    with pytest.raises(KeyboardInterrupt):
        with store.start_run("exp", {}) as run:
            run.log(0, {"loss": 1.0})
            raise KeyboardInterrupt
    assert store.run_info(run.id)["status"] == "interrupted"


def test_diverged_is_settable(store):
    with store.start_run("exp", {}) as run:
        run.log(0, {"loss": math.inf})
        run.mark_diverged("loss is inf at step 0")
    info = store.run_info(run.id)
    assert info["status"] == "diverged" and info["error"] == "loss is inf at step 0"
    assert math.isinf(store.metrics(run.id)["value"].iloc[0])
    with store.start_run("exp2", {}) as run2:
        run2.diverged = True
    assert store.run_info(run2.id)["status"] == "diverged"


def test_closed_run_refuses_logging(store):
    with store.start_run("exp", {}) as run:
        pass
    with pytest.raises(StoreError, match="closed"):
        run.log(1, {"loss": 1.0})


def test_bad_values_are_refused(store):
    with store.start_run("exp", {}) as run:
        with pytest.raises(LearndynValueError, match="loss"):
            run.log(0, {"loss": "high"})
        with pytest.raises(LearndynValueError, match="step"):
            run.log("first", {"loss": 1.0})
        with pytest.raises(LearndynValueError):
            store.start_run("", {})
    with pytest.raises(LearndynValueError, match="flush_every"):
        store.start_run("exp", {}, flush_every=0)


# ------------------------------------------------------------------ batching
def test_finished_runs_are_written_as_start_run_and_close_would(store):
    """RunStore.write_finished_runs (an ensemble's members, one transaction) stores the same columns and
    encodings as start_run + log + set_summary + close."""
    from learndyn.store import FinishedRun

    cfg = Cfg(steps=3)
    with store.start_run("exp", cfg, seed=7, sweep_id="sw") as run:
        for t in range(3):
            run.log(t, {"loss": 1.0 / (t + 1)})
        run.set_summary({"final": 0.25})
    started = store.run_info(run.id)["started_at"]
    ids = store.write_finished_runs(
        [
            FinishedRun(
                "exp",
                cfg,
                "completed",
                started,
                summary={"final": 0.25},
                seed=7,
                sweep_id="sw",
                series={"loss": (np.arange(3), 1.0 / (np.arange(3) + 1))},
            ),
            FinishedRun("exp", Cfg(), "failed", started, error="RuntimeError: boom", traceback="tb", seed=8),
        ]
    )
    assert len(ids) == 2 and len(set(ids)) == 2 and run.id not in ids
    live, bulk, failed = (store.run_info(i) for i in (run.id, *ids))
    same = (
        "name",
        "experiment",
        "status",
        "config",
        "summary",
        "seed",
        "sweep_id",
        "git_commit",
        "host",
        "pid",
        "error",
        "traceback",
        "learndyn_version",
    )
    assert {k: bulk[k] for k in same} == {k: live[k] for k in same}
    assert bulk["ended_at"] is not None and bulk["updated_at"] == bulk["ended_at"]
    assert store.metrics(ids[0]).values.tolist() == store.metrics(run.id).values.tolist()
    assert (
        failed["status"] == "failed"
        and failed["error"] == "RuntimeError: boom"
        and failed["traceback"] == "tb"
    )
    assert store.metrics(ids[1]).empty
    with pytest.raises(LearndynValueError, match="status='done' is not allowed"):
        store.write_finished_runs(
            [FinishedRun("exp", cfg, "completed", started), FinishedRun("x", cfg, "done", started)]
        )
    assert len(store.runs()) == 3  # checked before anything was written
    assert store.write_finished_runs([]) == []


def test_flushes_every_n_steps_and_on_demand(store, tmp_path):
    reader = RunStore(store.path)  # a second handle sees only what was flushed
    run = store.start_run("exp", {}, flush_every=10, flush_seconds=None)
    for step in range(10):
        run.log(step, {"a": step, "b": 2 * step})
    assert reader.metrics(run.id).empty and run.last_flushed_step is None
    run.log(10, {"a": 10})  # the 11th step begins: steps 0..9 are flushed first
    assert len(reader.metrics(run.id)) == 20 and run.last_flushed_step == 9
    run.log(10, {"b": 20})  # same step: no flush, the step is never split
    assert len(reader.metrics(run.id)) == 20
    run.flush()
    assert len(reader.metrics(run.id)) == 22 and run.last_flushed_step == 10
    run.close()
    assert reader.run_info(run.id)["status"] == "completed"


def test_flush_seconds_zero_flushes_each_step(store):
    run = store.start_run("exp", {}, flush_every=1000, flush_seconds=0.0)
    for step in range(4):
        run.log(step, {"a": step})
    assert len(RunStore(store.path).metrics(run.id)) == 3
    run.close()


def test_no_duplicate_rows_after_many_flushes(store):
    with store.start_run("exp", {}, flush_every=3) as run:
        for step in range(100):
            run.log(step, {"a": step, "b": -step})
            if step % 17 == 0:
                run.flush()
    df = store.metrics(run.id)
    assert len(df) == 200 and not df.duplicated(["step", "name"]).any()
    assert df[df.name == "a"]["value"].tolist() == [float(s) for s in range(100)]


# ------------------------------------------------------------------ queries
def test_metrics_query_and_glob(store):
    with store.start_run("exp", {}) as run:
        for step in range(3):
            run.log(step, {"loss": 1.0, "noise/gns": 2.0, "noise/snr": 3.0, "curvature/top": 4.0})
    assert sorted(store.metrics(run.id, ["noise/*"])["name"].unique()) == ["noise/gns", "noise/snr"]
    assert store.metrics(run.id, "loss")["step"].tolist() == [0, 1, 2]
    assert store.metrics(run.id, []).empty
    assert store.metric_names(run.id) == ["curvature/top", "loss", "noise/gns", "noise/snr"]
    last = store.last_metrics(run.id).set_index("name")
    assert last.loc["loss", "step"] == 2 and last.loc["loss", "count"] == 3


def test_arrays_round_trip(store):
    kernel = np.arange(9.0).reshape(3, 3)
    with store.start_run("exp", {}, flush_every=2) as run:
        for step in range(5):
            run.log(step, {"loss": 1.0})
            run.log_array(step, "spectrum", np.linspace(1, 2, 4 + step % 2) * (step + 1))
        run.log_array(4, "kernel", kernel)
    df = store.arrays(run.id, "spectrum")
    assert df["step"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(df["array"].iloc[3], np.linspace(1, 2, 5) * 4)
    steps, stacked = store.array_stack(run.id, "spectrum")  # ragged: padded with NaN
    assert stacked.shape == (5, 5) and np.isnan(stacked[0, 4])
    np.testing.assert_array_equal(store.arrays(run.id, "kernel")["array"].iloc[0], kernel)
    names = store.array_names(run.id).set_index("name")
    assert names.loc["spectrum", "count"] == 5 and names.loc["kernel", "shape"] == "3x3"
    assert (store.arrays_dir / run.id).is_dir()
    assert store.arrays(run.id, "missing").empty


def test_resolve_by_id_prefix_and_latest_name(store):
    first = store.start_run("exp", {})
    first.close()
    second = store.start_run("exp", {})
    second.close()
    assert store.resolve(first.id) == first.id
    assert store.resolve(first.id[:10]) == first.id
    assert store.resolve("exp") == second.id  # the latest of that name
    with pytest.raises(RunNotFoundError) as exc:
        store.resolve("zzzz")
    assert "zzzz" in _one_line(exc)
    for _ in range(20):  # make an ambiguous one-character prefix
        store.start_run("other", {}).close()
    counts = store.sql("SELECT left(id, 1) AS c, count(*) AS n FROM runs GROUP BY c ORDER BY n DESC")
    if counts["n"].iloc[0] > 1:
        with pytest.raises(RunNotFoundError, match="ambiguous"):
            store.resolve(counts["c"].iloc[0])


def test_runs_filters_and_targets(store):
    ids = []
    for i in range(3):
        with store.start_run("sweep-exp", {"lr": 0.1 * (i + 1)}, sweep_id="sweep-abc", seed=i) as run:
            run.log(0, {"loss": float(i)})
        ids.append(run.id)
    with pytest.raises(ValueError):
        with store.start_run("lone", {}) as lone:
            raise ValueError("x")
    df = store.runs()
    assert df["id"].tolist() == [*ids, lone.id]  # oldest first
    assert store.runs(status="failed")["id"].tolist() == [lone.id]
    assert len(store.runs(sweep_id="sweep-abc")) == 3
    assert store.runs(limit=2)["id"].tolist() == [ids[2], lone.id]
    assert df["config"].iloc[1] == {"lr": 0.2}
    assert store.resolve_targets("sweep-abc") == ids
    assert store.resolve_targets(["sweep-a", lone.id[:8], ids[0]]) == [*ids, lone.id]
    with pytest.raises(RunNotFoundError):
        store.resolve_targets(["nothing-here"])
    with pytest.raises(LearndynValueError):
        store.runs(status="weird")


def test_reading_session_reuses_one_connection_and_refuses_writes(store):
    with store.start_run("exp", {}) as run:
        run.log(0, {"loss": 1.0})
    with store.reading():
        assert len(store.metrics(run.id)) == 1
        assert store.run_info("exp")["id"] == run.id
        with pytest.raises(StoreError, match="reading"):
            store.start_run("exp", {})


def test_lock_timeout_is_a_clear_error(tmp_path):
    store = RunStore(tmp_path / "s.duckdb", lock_timeout=0.2)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(30)",
            str(store.path) + ".lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    run = store.start_run("busy", {}, flush_every=2, flush_seconds=None)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError) as exc:
            store.runs()
        assert "lock" in _one_line(exc)
        with pytest.warns(UserWarning, match="flush deferred"):
            for step in range(4):  # automatic flushes are deferred, not raised into the training loop
                run.log(step, {"loss": 1.0})
        with pytest.raises(StoreError):
            run.flush()  # an explicit flush says so
    finally:
        holder.kill()
        holder.wait()
    run.close()  # the lock went with the holder
    assert len(store.metrics(run.id)) == 4 and store.run_info(run.id)["status"] == "completed"


def test_memory_recorder_still_available():
    rec = MemoryRecorder()
    rec.log(0, {"a": 1.0})
    assert rec.series("a")[1].tolist() == [1.0]
