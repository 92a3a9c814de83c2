"""Checkpoints of a training loop: model + optimizer (+ scheduler) state + every RNG the loop draws from.

A checkpoint is written atomically (temporary file, then ``os.replace``) so a run killed while saving keeps
the previous checkpoint intact. Restoring one and continuing gives exactly the trajectory the uninterrupted
run would have followed, on CPU, for a deterministic configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch

from learndyn.validation import LearndynValueError


class Checkpointer(Protocol):
    def load(self, key: str) -> dict[str, Any] | None:
        """The last checkpoint saved under ``key``, or ``None``."""

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Durably replace the checkpoint under ``key``."""


class FileCheckpointer:
    """Checkpoints as ``<directory>/<key>.pt`` files (``torch.save``), replaced atomically."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        if not key or any(c in key for c in "/\\\0") or key.startswith("."):
            raise LearndynValueError(f"checkpoint key={key!r} is not allowed; allowed: a plain file name")
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def save(self, key: str, state: dict[str, Any]) -> None:
        path = self.path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class MemoryCheckpointer:
    """Checkpoints kept in memory (tests, notebooks). Stores deep copies."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    def load(self, key: str) -> dict[str, Any] | None:
        import copy

        state = self.states.get(key)
        return None if state is None else copy.deepcopy(state)

    def save(self, key: str, state: dict[str, Any]) -> None:
        import copy

        self.states[key] = copy.deepcopy(state)
