"""Checkpoints load with ``torch.load(weights_only=True)``: a planted checkpoint runs no code; everything the
training loop, the Monitor's probes, CovariantGD and the phenomena save round-trips exactly; old checkpoints
of plain tensors and containers still load; anything else is refused in one line."""

from __future__ import annotations

import collections
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from learndyn.checkpoint import CheckpointError, FileCheckpointer, MemoryCheckpointer, RunCheckpointer
from learndyn.optim import CovariantGD
from learndyn.store import RunStore
from learndyn.training import train_loop


class _Planted:
    """Unpickling this opens (creates) a file: stands in for any code a planted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert text and "\n" not in text, text
    return text


def _same(a, b) -> bool:
    """Equal values of equal types, recursively (tensors and arrays bitwise, with their dtypes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        nan = a.dtype.kind in "fc"
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=nan)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple | collections.deque):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return _same(vars(a), vars(b))
    return a == b


# ------------------------------------------------------------------------------------ planted checkpoints
def test_a_planted_checkpoint_runs_no_code_and_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = FileCheckpointer(tmp_path / "ckpt")
    ckpt.directory.mkdir()
    torch.save({"step": 3, "model": _Planted(marker)}, ckpt.path("main-0"))
    with pytest.raises(CheckpointError) as exc:
        ckpt.load("main-0")
    assert not marker.exists()
    message = _one_line(exc)
    assert str(ckpt.path("main-0")) in message and "open, not an allowed type" in message


def test_learndyn_resume_of_a_planted_checkpoint_runs_no_code(tmp_path):
    from test_reliability_crash import TRAIN, TrainConfig, _cli_here

    path = tmp_path / "s.duckdb"
    store = RunStore(path)
    run = store.start_run(TRAIN, TrainConfig(steps=30), checkpoint_every=10)
    run.close("interrupted")
    marker = tmp_path / "code-ran"
    run.checkpointer.directory.mkdir(parents=True)
    torch.save({"step": 10, "model": _Planted(marker)}, run.checkpointer.path("main-0"))
    result = _cli_here("resume", run.id, "--store", str(path))
    assert not marker.exists()
    assert result.exit_code != 0
    info = store.run_info(run.id)
    assert info["status"] == "failed" and "CheckpointError" in info["error"]
    assert "not an allowed" in info["error"] or "refused" in info["error"]


# ------------------------------------------------------------------------------------ what is saved loads
def _roundtrip(state, tmp_path):
    ckpt = FileCheckpointer(tmp_path)
    ckpt.save("k", state)
    return ckpt.load("k")


def test_numpy_deques_sets_and_registered_objects_round_trip_exactly(tmp_path):
    from learndyn.probes.stages import StageDetector
    from learndyn.probes.symmetry import Symmetry

    detector = StageDetector(window=5)
    for t in range(40):
        detector.update(t + 1, math.exp(-t / 3) + (0.5 if t < 20 else 0.0))
    sym = Symmetry("rescale", "0", "2")
    state = {
        "array": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],  # not contiguous
        "ints": np.array([1, -2], dtype=np.int16),
        "flags": np.array([True, False]),
        "complex": np.array([1 + 2j]),
        "scalar": np.float64(0.25),
        "nan": float("nan"),
        "empty": np.empty((0, 3)),
        "deque": collections.deque([(1.0, 2.0, float("nan"))], maxlen=4),
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "keys": {sym: (torch.ones(2), 1.5), 3: "int key"},
        "ordered": collections.OrderedDict(b=1, a=2),
        "detector": detector,
        "nested": [(np.ones(2), {"x": [np.int64(3)]})],
        "__learndyn_state__": "a user key that looks like the codec's tag",
        "big": 2**70,
    }
    back = _roundtrip(state, tmp_path)
    assert _same(back, state)
    assert back["deque"].maxlen == 4 and isinstance(back["frozen"], frozenset)
    assert back["detector"].events == detector.events and back["detector"].stage == detector.stage
    assert sym in back["keys"]


class _Unregistered:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (_Unregistered(), "state['probe']"),
        (torch.Generator(), "state['probe']"),
        (lambda: 0, "state['probe']"),
        (np.array(["text"]), "state['probe']"),
        (np.array([object()]), "state['probe']"),
    ],
    ids=["object", "generator", "function", "str-array", "object-array"],
)
def test_anything_else_is_refused_at_save_naming_where(tmp_path, value, where):
    for ckpt in (FileCheckpointer(tmp_path), MemoryCheckpointer()):
        with pytest.raises(CheckpointError) as exc:
            ckpt.save("k", {"step": 1, "probe": value})
        assert where in _one_line(exc)
    assert not list(tmp_path.iterdir())  # nothing written


def test_old_plain_checkpoints_still_load_and_old_pickled_objects_are_refused(tmp_path):
    """A checkpoint the previous learndyn wrote (plain torch.save of the loop state) loads if it holds only
    tensors and containers; one holding numpy arrays (pickled objects) is refused in one line."""
    model = nn.Linear(3, 2)
    opt = CovariantGD(model.parameters(), lr=0.1, structure="kron")
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    plain = {
        "step": 7,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": None,
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "monitor": None,
        "last_loss": 0.5,
        "completed": True,
    }
    ckpt = FileCheckpointer(tmp_path)
    ckpt.directory.mkdir(exist_ok=True)
    torch.save(plain, ckpt.path("old"))  # exactly what the previous FileCheckpointer.save wrote
    assert _same(ckpt.load("old"), plain)
    torch.save({**plain, "monitor": {"sim": [np.ones(3)]}}, ckpt.path("old-numpy"))
    with pytest.raises(CheckpointError) as exc:
        ckpt.load("old-numpy")
    assert "numpy" in _one_line(exc)


def test_a_damaged_checkpoint_is_one_line(tmp_path):
    ckpt = FileCheckpointer(tmp_path)
    ckpt.save("k", {"step": 1, "w": torch.ones(100)})
    data = ckpt.path("k").read_bytes()
    ckpt.path("k").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        ckpt.load("k")
    assert "unreadable" in _one_line(exc)


@pytest.mark.parametrize("structure", ["diag", "kron", "block", "full", "lowrank"])
def test_every_covariant_gd_state_loads_under_weights_only(structure, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = CovariantGD(model.parameters(), lr=0.01, structure=structure, precondition_every=2, rank=2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    state = opt.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    assert _same(torch.load(buf, weights_only=True), state)  # plain already: nothing to convert
    assert _same(_roundtrip({"optimizer": state}, tmp_path)["optimizer"], state)


def test_a_monitor_with_every_probe_resumes_through_file_checkpoints(tmp_path):
    """The Monitor's state (every probe's memory: stage detector, symmetry references, kernel, RNG) goes
    through a file checkpoint (weights_only) and the resumed measurements equal the uninterrupted ones."""
    from learndyn.store.recorder import MemoryRecorder
    from test_training import _after, _monitored

    full = MemoryRecorder()
    model, opt, sample, gen, monitor = _monitored(full)
    train_loop(model, opt, sample, nn.functional.mse_loss, 30, generator=gen, monitor=monitor)
    ckpt = RunCheckpointer(tmp_path)
    model, opt, sample, gen, monitor = _monitored(MemoryRecorder())
    train_loop(model, opt, sample, nn.functional.mse_loss, 20, generator=gen, monitor=monitor,
               checkpointer=ckpt, checkpoint_every=10)
    resumed = MemoryRecorder()
    model, opt, sample, gen, monitor = _monitored(resumed)
    ckpt = RunCheckpointer(tmp_path)  # a new process attempt
    result = train_loop(model, opt, sample, nn.functional.mse_loss, 30, generator=gen, monitor=monitor,
                        checkpointer=ckpt, checkpoint_every=10)
    assert result.resumed_from == 20
    (want_scalars, want_arrays), (got_scalars, got_arrays) = _after(full, 20), _after(resumed, 20)
    assert {"stage/index", "kernel/velocity"} <= {n for n, _ in want_scalars}
    assert got_scalars.keys() == want_scalars.keys() and got_arrays.keys() == want_arrays.keys()
    assert all(_same(got_scalars[k], v) for k, v in want_scalars.items())
    assert all(np.array_equal(got_arrays[k], v) for k, v in want_arrays.items())


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    ckpt = FileCheckpointer(tmp_path)
    ckpt.save("k", {"step": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as exc:
        ckpt.save("k", {"step": 2})
    assert "No space left on device" in _one_line(exc) and str(ckpt.path("k")) in _one_line(exc)
    monkeypatch.undo()
    assert ckpt.load("k") == {"step": 1} and [p.name for p in tmp_path.iterdir()] == ["k.pt"]
