"""Checkpoints of a training loop: model + optimizer (+ scheduler) state + every RNG the loop draws from.

A checkpoint is written atomically (temporary file, then ``os.replace``) so a run killed while saving keeps
the previous checkpoint intact. Restoring one and continuing gives exactly the trajectory the uninterrupted
run would have followed, on CPU, for a deterministic configuration.

How often: a checkpointer's ``every`` (updates between checkpoints) is what
:func:`~learndyn.training.train_loop` uses when it is not given ``checkpoint_every``; it defaults to
``$LEARNDYN_CHECKPOINT_EVERY`` or :data:`DEFAULT_CHECKPOINT_EVERY` (0 turns checkpoints off).

A stored run's checkpointer (``run.checkpointer``, a :class:`RunCheckpointer`) hands every ``train_loop`` of
an experiment its own key (``main-0``, ``main-1``, ... in call order), so an experiment that trains several
models in sequence resumes each from its own checkpoint, and a finished loop is restored, not retrained.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from learndyn.validation import LearndynValueError, check_int

DEFAULT_CHECKPOINT_EVERY = 100
"""Updates between checkpoints when neither ``checkpoint_every`` nor ``$LEARNDYN_CHECKPOINT_EVERY`` says."""

CHECKPOINT_ENV = "LEARNDYN_CHECKPOINT_EVERY"


def default_checkpoint_every() -> int:
    """``$LEARNDYN_CHECKPOINT_EVERY`` (an integer >= 0; 0 = never) or :data:`DEFAULT_CHECKPOINT_EVERY`."""
    text = os.environ.get(CHECKPOINT_ENV, "").strip()
    if not text:
        return DEFAULT_CHECKPOINT_EVERY
    try:
        value = int(text)
    except ValueError:
        raise LearndynValueError(
            f"{CHECKPOINT_ENV}={text!r} is not allowed; allowed: an integer >= 0 (0 turns checkpoints off)"
        ) from None
    return check_int(CHECKPOINT_ENV, value, low=0)


def _every(every: int | None) -> int:
    if every is None:
        return default_checkpoint_every()
    return check_int("every", every, low=0, owner="Checkpointer")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (one line)."""


class Checkpointer(Protocol):
    def load(self, key: str) -> dict[str, Any] | None:
        """The last checkpoint saved under ``key``, or ``None``."""

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Durably replace the checkpoint under ``key``."""


class FileCheckpointer:
    """Checkpoints as ``<directory>/<key>.pt`` files (``torch.save``), replaced atomically.

    ``every``: updates between checkpoints for loops that do not say (default: see the module docstring).
    """

    def __init__(self, directory: str | os.PathLike[str], *, every: int | None = None) -> None:
        self.directory = Path(directory)
        self.every = _every(every)

    def path(self, key: str) -> Path:
        if not key or any(c in key for c in "/\\\0") or key.startswith("."):
            raise LearndynValueError(f"checkpoint key={key!r} is not allowed; allowed: a plain file name")
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.exists():
            return None
        import torch  # imported here: the run store uses this module without training anything

        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a damaged file, whatever torch raises for it
            raise CheckpointError(f"checkpoint {path} is unreadable: {type(exc).__name__}: {exc}") from None

    def save(self, key: str, state: dict[str, Any]) -> None:
        import torch

        path = self.path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class RunCheckpointer(FileCheckpointer):
    """The checkpointer of one stored run (``run.checkpointer``): a :class:`FileCheckpointer` whose
    :meth:`loop_key` gives the n-th ``train_loop`` asking for ``key`` the key ``f"{key}-{n}"``.

    One is made per process attempt of a run, so a resumed experiment that replays the same loops in the same
    order finds each loop's own checkpoint.
    """

    save_completed = True
    """``train_loop`` also saves a checkpoint marked complete when a loop finishes."""

    def __init__(self, directory: str | os.PathLike[str], *, every: int | None = None) -> None:
        super().__init__(directory, every=every)
        self._claimed: Counter[str] = Counter()

    def loop_key(self, key: str) -> str:
        self.path(key)  # validates
        n = self._claimed[key]
        self._claimed[key] += 1
        return f"{key}-{n}"

    def clear(self) -> None:
        """Delete every checkpoint file (the run finished; nothing will resume it)."""
        if self.directory.is_dir():
            for f in self.directory.iterdir():
                if f.suffix in (".pt", ".tmp") and f.is_file():
                    f.unlink(missing_ok=True)
            try:
                self.directory.rmdir()
            except OSError:
                pass


class MemoryCheckpointer:
    """Checkpoints kept in memory (tests, notebooks). Stores deep copies."""

    def __init__(self, *, every: int | None = None) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.every = _every(every)

    def load(self, key: str) -> dict[str, Any] | None:
        import copy

        state = self.states.get(key)
        return None if state is None else copy.deepcopy(state)

    def save(self, key: str, state: dict[str, Any]) -> None:
        import copy

        self.states[key] = copy.deepcopy(state)
