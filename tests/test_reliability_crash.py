"""Crash safety, resume and determinism through the real command line, in real processes.

A run killed with SIGKILL (or Ctrl-C) mid-training keeps every row it flushed and ends up ``interrupted``;
``learndyn resume`` continues it from its last checkpoint and reaches bitwise the same final parameters, the
same metric table (no duplicated rows) and the same summary as an uninterrupted run. The experiments used here
are registered by this module; subprocesses import it (``_cli``) so they know them too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from learndyn.cli import app
from learndyn.optim import CovariantGD
from learndyn.phenomena import registry
from learndyn.phenomena.registry import Experiment, ExperimentResult
from learndyn.store import Recorder, RunStore, StoreError
from learndyn.training import train_loop
from learndyn.validation import check_int, check_real

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")

TRAIN = "reliability-train"
PAUSE_AT = "LEARNDYN_TEST_PAUSE_AT"  # "loop:step": flush, write the marker file, then sleep until killed
PAUSE_FILE = "LEARNDYN_TEST_PAUSE_FILE"


@dataclasses.dataclass
class TrainConfig:
    steps: int = 240
    loops: int = 1
    lr: float = 0.05
    width: int = 12
    optimizer: Literal["cgd", "sgd"] = "cgd"
    structure: Literal["diag", "kron", "block", "full"] = "kron"
    eval_every: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps, low=1, owner="TrainConfig")
        check_int("loops", self.loops, low=1, high=4, owner="TrainConfig")
        check_real("lr", self.lr, low=0, low_open=True, owner="TrainConfig")
        check_int("width", self.width, low=1, owner="TrainConfig")
        check_int("eval_every", self.eval_every, low=0, owner="TrainConfig")


class _PauseMonitor:
    """Stops at a chosen (loop, step) so a test can kill the process there (flushes, writes a marker)."""

    def __init__(self, loop: int, recorder: Recorder) -> None:
        spec = os.environ.get(PAUSE_AT)
        self.at = tuple(int(x) for x in spec.split(":")) if spec else None
        self.loop = loop
        self.recorder = recorder

    def after_step(self, step: int, batch, metrics=None) -> None:
        if self.at == (self.loop, step):
            self.recorder.flush()
            Path(os.environ[PAUSE_FILE]).write_text(str(os.getpid()))
            while True:
                time.sleep(0.05)


PROBE_X = torch.randn(64, 4, generator=torch.Generator().manual_seed(99), dtype=torch.float64)


def run_train(config: TrainConfig, recorder: Recorder) -> ExperimentResult:
    """Train ``loops`` small MLPs one after the other (a student fitting a fixed teacher)."""
    for t in range(0, config.steps, 20):  # a "theory" curve logged before any training
        recorder.log(t, {"theory/decay": math.exp(-t / 100)})
    checkpointer = getattr(recorder, "checkpointer", None)
    teacher = torch.randn(4, 1, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    digest = hashlib.sha256()
    summary: dict[str, float] = {}
    for loop in range(config.loops):
        torch.manual_seed(config.seed * 100 + loop)
        model = nn.Sequential(nn.Linear(4, config.width), nn.Tanh(), nn.Linear(config.width, 1)).double()
        if config.optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        else:
            opt = CovariantGD(
                model.parameters(), lr=config.lr, alpha=0.5, structure=config.structure, precondition_every=3
            )

        def sample(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(32, 4, generator=gen, dtype=torch.float64)
            return x, torch.tanh(x @ teacher) + 0.05 * torch.randn(32, 1, generator=gen, dtype=torch.float64)

        def evaluate(m: nn.Module) -> dict[str, float]:
            return {"probe_mean": float(m(PROBE_X).mean()), "weight_norm": float(m[0].weight.norm())}

        result = train_loop(
            model,
            opt,
            sample,
            nn.functional.mse_loss,
            config.steps,
            generator=torch.Generator().manual_seed(config.seed * 1000 + loop),
            recorder=recorder,
            monitor=_PauseMonitor(loop, recorder),
            evaluate=evaluate,
            eval_every=config.eval_every,
            checkpointer=checkpointer,
            prefix=f"m{loop}/",
        )
        params = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
        recorder.log_array(config.steps, f"m{loop}/final_params", params)
        digest.update(params.tobytes())
        summary[f"m{loop}/last_loss"] = result.last_loss
        summary[f"m{loop}/status"] = 1.0 if result.status == "completed" else 0.0
    summary["param_hash"] = int(digest.hexdigest()[:12], 16)
    recorder.log(config.steps, {"final/param_hash_low": float(summary["param_hash"] % 1_000_003)})
    return ExperimentResult(summary=summary)


if TRAIN not in registry._REGISTRY:
    registry.register(
        Experiment(TRAIN, "small deterministic MLP training for reliability tests", TrainConfig, run_train)
    )


# ---------------------------------------------------------------------------------------------- helpers
TESTS_DIR = str(Path(__file__).resolve().parent)
SRC_DIR = str(Path(__file__).resolve().parent.parent / "src")
_CLI = (
    f"import sys; sys.path.insert(0, {TESTS_DIR!r}); import {Path(__file__).stem}; "
    "from learndyn.cli import app; app()"
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in (PAUSE_AT, PAUSE_FILE, "LEARNDYN_DEBUG", "LEARNDYN_CHECKPOINT_EVERY"):
        env.pop(key, None)
    env.update(
        PYTHONPATH=SRC_DIR + os.pathsep + env.get("PYTHONPATH", ""),
        LEARNDYN_PROGRESS="0",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        COLUMNS="200",
        PYTHONFAULTHANDLER="1",  # a child stuck past its deadline dumps every thread on SIGABRT
    )
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", _CLI, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env or _env(), timeout=timeout)


def _cli_here(*args: str):
    """The command line in this process (no interpreter start-up), for cheap or failing commands."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _default_signals() -> None:
    """In the child before exec: SIGINT and SIGTERM back to their default dispositions. An ignored signal
    stays ignored across exec, and Python installs its KeyboardInterrupt handler only when SIGINT is not
    ignored -- a pytest worker whose SIGINT some earlier test (or the worker itself) set to SIG_IGN would
    otherwise start a child that Ctrl-C cannot reach, and the test would wait forever."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start_paused(store: Path, marker: Path, pause: str, *args: str) -> subprocess.Popen:
    """Start ``learndyn run`` in a process that stops at ``pause`` ("loop:step"); wait until it does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, "run", TRAIN, "--store", str(store), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**{PAUSE_AT: pause, PAUSE_FILE: str(marker)}),
        preexec_fn=_default_signals,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the run never reached its pause point {pause}: rc={proc.returncode}\n{out}\n{err}")
        time.sleep(0.05)
    return proc


def _wait_after_signal(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    """The output of ``proc`` once it has exited after a signal; a generous deadline (a loaded 2-core CI
    machine), past which the child is aborted so that its threads' tracebacks say where it was stuck."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate()
        pytest.fail(f"the run did not exit within {timeout} s of the signal; its threads:\n{err[-6000:]}")


def _only_run(store: RunStore) -> dict:
    runs = store.runs()
    assert len(runs) == 1, runs
    return store.run_info(runs.iloc[0]["id"])


def _table(store: RunStore, run_id: str) -> pd.DataFrame:
    return store.metrics(run_id).sort_values(["name", "step"], kind="stable").reset_index(drop=True)


def _arrays(store: RunStore, run_id: str) -> dict[str, list[tuple[int, np.ndarray]]]:
    out = {}
    for name in store.array_names(run_id)["name"]:
        df = store.arrays(run_id, name)
        out[name] = list(zip(df["step"], df["array"], strict=True))
    return out


def _assert_same_run(store_a: RunStore, id_a: str, store_b: RunStore, id_b: str) -> None:
    """Bitwise-identical metric tables, arrays and summaries."""
    a, b = _table(store_a, id_a), _table(store_b, id_b)
    assert not a.duplicated(["step", "name"]).any() and not b.duplicated(["step", "name"]).any()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    arrays_a, arrays_b = _arrays(store_a, id_a), _arrays(store_b, id_b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert [s for s, _ in arrays_a[name]] == [s for s, _ in arrays_b[name]], name
        for (_, x), (_, y) in zip(arrays_a[name], arrays_b[name], strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y), name  # bitwise for floats
    assert store_a.run_info(id_a)["summary"] == store_b.run_info(id_b)["summary"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per config used below: {args: (store, run id)}."""
    cache: dict[tuple[str, ...], tuple[RunStore, str]] = {}

    def get(*args: str) -> tuple[RunStore, str]:
        if args not in cache:
            path = tmp_path_factory.mktemp("reference") / "ref.duckdb"
            proc = _cli("run", TRAIN, "--store", str(path), *args)
            assert proc.returncode == 0, proc.stderr
            store = RunStore(path)
            info = _only_run(store)
            assert info["status"] == "completed"
            cache[args] = (store, info["id"])
        return cache[args]

    return get


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("pause", "args"),
    [
        ("0:170", ("--checkpoint-every", "50")),  # checkpoint at 150; rows 150..170 flushed, then killed
        pytest.param(  # killed before the first checkpoint: starts over
            "0:30", ("--checkpoint-every", "50"), marks=pytest.mark.slow
        ),
        pytest.param(  # killed in the second of two training loops: the first is restored, not retrained
            "1:95",
            ("--checkpoint-every", "40", "--set", "loops=2", "--set", "structure=block"),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["after-checkpoint", "before-first-checkpoint", "second-of-two-loops"],
)
def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, reference, pause, args):
    path = tmp_path / "s.duckdb"
    proc = _start_paused(path, tmp_path / "paused", pause, *args)
    loop, step = (int(x) for x in pause.split(":"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # Nothing could mark the run; the next `learndyn list` (any open) sees its dead pid and does.
    listing = _cli_here("list", "--store", str(path))
    assert listing.exit_code == 0 and "interrupted" in listing.stdout, listing.output
    store = RunStore(path)
    info = _only_run(store)
    assert info["status"] == "interrupted" and "ended without closing" in info["error"]
    kept = store.metrics(info["id"], f"m{loop}/loss")
    assert kept["step"].tolist() == list(range(step + 1))  # every flushed row is kept
    every = int(args[1])
    assert (store.arrays_dir / info["id"] / "checkpoints").is_dir() == (loop > 0 or step >= every)

    resumed = _cli("resume", info["id"][:10], "--store", str(path), *args[:2])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    info = _only_run(store)
    assert info["status"] == "completed" and info["pid"] != proc.pid
    assert not (store.arrays_dir / info["id"] / "checkpoints").exists()  # removed once completed

    ref_store, ref_id = reference(*args)
    _assert_same_run(store, info["id"], ref_store, ref_id)
    final = store.arrays(info["id"], f"m{loop}/final_params")["array"].iloc[0]
    ref_final = ref_store.arrays(ref_id, f"m{loop}/final_params")["array"].iloc[0]
    assert final.tobytes() == ref_final.tobytes()


@pytest.mark.slow
def test_ctrl_c_marks_interrupted_and_resume_continues(tmp_path, reference):
    path = tmp_path / "s.duckdb"
    args = ("--checkpoint-every", "50")
    proc = _start_paused(path, tmp_path / "paused", "0:120", *args)
    proc.send_signal(signal.SIGINT)
    out, err = _wait_after_signal(proc)
    assert proc.returncode == 130, err
    assert "marked interrupted" in err and "Traceback" not in err
    store = RunStore(path, recover=False)
    info = _only_run(store)
    assert info["status"] == "interrupted"  # marked by the process itself
    assert store.metrics(info["id"], "m0/loss")["step"].max() == 120

    resumed = _cli("resume", info["id"], "--store", str(path))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(store, info["id"], *reference(*args))


@pytest.mark.slow
def test_sigterm_marks_interrupted(tmp_path):
    path = tmp_path / "s.duckdb"
    proc = _start_paused(path, tmp_path / "paused", "0:10")
    proc.send_signal(signal.SIGTERM)
    _, err = _wait_after_signal(proc)
    assert proc.returncode == 130 and "Traceback" not in err
    assert _only_run(RunStore(path, recover=False))["status"] == "interrupted"


def test_resume_is_refused_for_live_completed_and_unknown_runs(tmp_path):
    path = tmp_path / "s.duckdb"
    proc = _start_paused(path, tmp_path / "paused", "0:5")
    try:
        run_id = _only_run(RunStore(path))["id"]
        live = _cli_here("resume", run_id, "--store", str(path))
        assert live.exit_code == 2 and len(live.stderr.strip().splitlines()) == 1, live.output
        assert "is running" in live.stderr and "allowed to resume" in live.stderr
        with pytest.raises(StoreError, match="is running"):  # taking it over directly is refused too
            RunStore(path).reopen_run(run_id)
    finally:
        proc.kill()
        proc.wait()
    done = _cli_here("run", TRAIN, "--store", str(path), "--set", "steps=5")
    assert done.exit_code == 0, done.output
    completed_id = RunStore(path).runs(status="completed").iloc[0]["id"]
    for ref, needle in ((completed_id, "is completed"), ("no-such-run", "no-such-run")):
        refused = _cli_here("resume", ref, "--store", str(path))
        assert refused.exit_code == 2 and needle in refused.stderr, refused.output
        assert len(refused.stderr.strip().splitlines()) == 1


def test_same_config_and_seed_give_bitwise_identical_metrics(tmp_path, reference):
    """Determinism: two runs of one config into two stores have exactly equal metric tables."""
    args = ("--set", "loops=2", "--set", "steps=120", "--set", "structure=full")
    path = tmp_path / "second.duckdb"
    again = _cli_here("run", TRAIN, "--store", str(path), *args)  # this process vs a fresh one
    assert again.exit_code == 0, again.output
    store = RunStore(path)
    ref_store, ref_id = reference(*args)
    _assert_same_run(store, _only_run(store)["id"], ref_store, ref_id)
    other_seed = _cli_here("run", TRAIN, "--store", str(path), *args, "--set", "seed=1")
    assert other_seed.exit_code == 0
    ids = store.runs()["id"].tolist()
    assert not _table(store, ids[0]).equals(_table(store, ids[1]))  # the seed matters


def test_diverged_training_marks_the_stored_run_and_keeps_its_rows(tmp_path):
    path = tmp_path / "s.duckdb"
    proc = _cli_here("run", TRAIN, "--store", str(path), "--set", "optimizer=sgd", "--set", "lr=50")
    assert proc.exit_code == 0, proc.output
    assert "(diverged)" in proc.stdout and "training diverged: m0/loss " in proc.stdout
    store = RunStore(path)
    info = _only_run(store)
    at = info["summary"]["diverged_at"]
    assert info["status"] == "diverged" and f"at step {at}" in info["error"]
    losses = store.metrics(info["id"], "m0/loss")
    assert losses["step"].tolist() == list(range(at + 1))  # every row up to the bad step is kept
    first, last = losses["value"].iloc[0], losses["value"].iloc[-1]  # NaN/Inf, or exploded (> 1e6 x first)
    assert math.isfinite(first) and (not math.isfinite(last) or last > 1e6 * first)
    assert store.metrics(info["id"], "m0/diverged_at")["value"].tolist() == [float(at)]
    assert not (store.arrays_dir / info["id"] / "checkpoints").exists()


def test_a_dead_pid_is_recovered_but_a_live_or_foreign_one_is_not(tmp_path):
    path = tmp_path / "s.duckdb"
    store = RunStore(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = store.start_run("live", {})  # this process: alive
    for name, host in (("dead", socket.gethostname()), ("elsewhere", "another-host")):
        run = store.start_run(name, {})
        with store._write() as con:  # as if another process (on `host`) had started it
            con.execute("UPDATE runs SET host = ?, pid = ? WHERE id = ?", [host, dead.pid, run.id])
    RunStore(path)  # any open recovers
    runs = store.runs()
    statuses = dict(zip(runs["name"], runs["status"], strict=True))
    assert statuses == {"live": "running", "dead": "interrupted", "elsewhere": "running"}
    assert store.recover_dead_runs() == []  # idempotent
    live.close()
    assert store.run_info("live")["status"] == "completed"


def test_a_resumed_run_of_long_ago_is_alive_in_its_new_process(tmp_path):
    """The liveness check compares the pid's start with the run's last write, not with its (old) start."""
    path = tmp_path / "s.duckdb"
    store = RunStore(path)
    run = store.start_run("old", {})
    run.close("interrupted")
    with store._write() as con:
        con.execute("UPDATE runs SET started_at = started_at - INTERVAL 3 DAY WHERE id = ?", [run.id])
    again = store.reopen_run(run.id)
    RunStore(path)  # opening recovers dead runs; this one is alive (this process)
    assert store.run_info(run.id)["status"] == "running"
    again.close()


def test_a_reused_pid_does_not_keep_a_dead_run_alive():
    from datetime import UTC, datetime, timedelta

    from learndyn.store.liveness import process_alive as _process_alive

    now = datetime.now(UTC).replace(tzinfo=None)
    assert _process_alive(os.getpid(), now - timedelta(seconds=1))
    if Path("/proc/self/stat").exists():
        # this process started long after a run that "started" a day ago: that run's pid was reused
        assert not _process_alive(os.getpid(), now - timedelta(days=1))
    assert not _process_alive(0) and not _process_alive(-5)


def test_a_sweep_carries_on_after_a_run_diverges(tmp_path):
    pytest.importorskip("learndyn.sweep.runner")
    path = tmp_path / "s.duckdb"
    grid = ("--grid", "lr=0.05,50,0.1", "--set", "optimizer=sgd", "--set", "steps=100")
    result = _cli_here("sweep", TRAIN, *grid, "--executor", "serial", "--no-ensemble", "--store", str(path))
    assert result.exit_code == 0, result.output
    runs = RunStore(path).runs()
    rows = zip(runs["config"], runs["status"], runs["error"], strict=True)
    by_lr = {config["lr"]: (status, error) for config, status, error in rows}
    assert {lr: s for lr, (s, _) in by_lr.items()} == {0.05: "completed", 50.0: "diverged", 0.1: "completed"}
    assert "m0/loss " in by_lr[50.0][1] and len(set(runs["sweep_id"])) == 1
