"""Fixtures shared by the test files: deterministic torch, a run store, the CLI, float64, a crashing
checkpointer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learndyn.checkpoint import MemoryCheckpointer


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Each test starts from the same seed, single-threaded (CI has 2 cores; results stay reproducible)."""
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def float64():
    """torch's default dtype is float64 during the test (use with ``pytest.mark.usefixtures``)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def store_path(tmp_path) -> Path:
    """The run store file of the test: the ``store`` fixture's and the ``cli`` fixture's."""
    return tmp_path / "store.duckdb"


@pytest.fixture
def store(store_path, monkeypatch):
    """A fresh :class:`~learndyn.store.RunStore` at ``store_path`` (progress bars off)."""
    from learndyn.store import RunStore

    monkeypatch.setenv("LEARNDYN_PROGRESS", "0")
    return RunStore(store_path)


@pytest.fixture
def cli(store_path, monkeypatch):
    """``cli("run", "x", ...)`` invokes the ``learndyn`` command in-process (``catch_exceptions=False``) on
    the store at ``store_path``, with wide output, no progress bars and no ``LEARNDYN_DEBUG``."""
    from typer.testing import CliRunner

    from learndyn.cli import app

    monkeypatch.setenv("LEARNDYN_STORE", str(store_path))
    monkeypatch.setenv("LEARNDYN_PROGRESS", "0")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("LEARNDYN_DEBUG", raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args), catch_exceptions=False)


class Crash(Exception):
    """What a :func:`crashing_checkpointer` raises."""


class CrashingCheckpointer(MemoryCheckpointer):
    """Saves like a :class:`~learndyn.checkpoint.MemoryCheckpointer`, then raises :class:`Crash` at save
    number ``crash_at_save`` (a simulated crash right after a checkpoint)."""

    Crash = Crash

    def __init__(self, crash_at_save: int, every: int) -> None:
        super().__init__(every=every)
        self.saves, self.crash_at_save = 0, crash_at_save

    def save(self, key, state):
        super().save(key, state)
        self.saves += 1
        if self.saves == self.crash_at_save:
            raise Crash


@pytest.fixture
def crashing_checkpointer():
    """The :class:`CrashingCheckpointer` class: ``crashing_checkpointer(crash_at_save=3, every=40)``; its
    exception is ``crashing_checkpointer.Crash``."""
    return CrashingCheckpointer
