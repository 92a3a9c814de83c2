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

What a checkpoint may hold: checkpoints are read with ``torch.load(weights_only=True)``, which builds only
tensors and plain containers, so a checkpoint planted in a shared store cannot run code as whoever resumes.
:func:`encode_state` turns the few other things a loop's state holds into such plain data when saving, and
:func:`decode_state` turns them back when loading, exactly:

=====================================  ==================================================================
value                                  saved as
=====================================  ==================================================================
tensors, ``torch.Size``/dtype/device,  themselves
``None``/bool/int/float/complex/str/
bytes, dict, list, tuple, set
numpy array or scalar (numeric)        ``{TAG: "ndarray"|"npscalar", "data": tensor}``
deque, frozenset                       ``{TAG: "deque"|"frozenset", "items": [...], ("maxlen": n)}``
dict with a key of another type        ``{TAG: "dict", "items": [[key, value], ...]}``
an instance of a class registered      ``{TAG: "object", "type": "module.Class", "state": vars(obj)}``
with :func:`checkpoint_type`
=====================================  ==================================================================

(``TAG`` is ``"__learndyn_state__"``.) Anything else (an unregistered object, a function, a
``torch.Generator``: save ``get_state()``) is refused when saving, with one line naming where it is in the
state. A checkpoint that holds anything else when loading (a checkpoint of an older learndyn holding pickled
numpy arrays, or a planted one) is refused in one line and never unpickled.
"""

from __future__ import annotations

import collections
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

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
    """A checkpoint cannot be written or read, or holds what a checkpoint may not (one line)."""


# ------------------------------------------------------------------------------------ plain-state codec
TAG = "__learndyn_state__"
_STATE_TYPES: dict[str, type] = {}
_T = TypeVar("_T", bound=type)


def checkpoint_type(cls: _T) -> _T:
    """Register ``cls`` as plain data a checkpoint may hold (a class decorator).

    An instance is saved as its attributes (``vars(obj)``, encoded recursively) and rebuilt with
    ``cls.__new__(cls)`` and those attributes; no ``__init__``, ``__setstate__`` or other code of the class
    runs. Register only classes whose state is their attributes (no ``__slots__``).
    """
    if not isinstance(cls, type) or "__slots__" in vars(cls):
        raise LearndynValueError(
            f"checkpoint_type({cls!r}) is not allowed; allowed: a class without __slots__"
        )
    _STATE_TYPES[_type_name(cls)] = cls
    return cls


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _plain_key(key: Any) -> bool:
    return type(key) in _ATOMS[:-1] or (type(key) is tuple and all(_plain_key(k) for k in key))


def encode_state(value: Any, where: str = "state") -> Any:
    """``value`` as tensors and plain containers that ``torch.load(weights_only=True)`` rebuilds (see the
    module docstring); :func:`decode_state` inverts it. Raises :class:`CheckpointError` naming ``where``."""
    import numpy as np
    import torch

    kind = type(value)
    if kind in _ATOMS or isinstance(value, torch.Tensor | torch.Size | torch.dtype | torch.device):
        return value
    if kind in (dict, collections.OrderedDict):
        if TAG not in value and all(_plain_key(k) for k in value):
            return kind((k, encode_state(v, f"{where}[{k!r}]")) for k, v in value.items())
        items = [
            [encode_state(k, f"{where} key {k!r}"), encode_state(v, f"{where}[{k!r}]")]
            for k, v in value.items()
        ]
        return {TAG: "dict", "items": items}
    if kind in (list, tuple):
        return kind(encode_state(v, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is set and all(_plain_key(v) for v in value):
        return set(value)
    if kind in (set, frozenset, collections.deque):
        out = {TAG: kind.__name__, "items": [encode_state(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if kind is collections.deque:
            out["maxlen"] = value.maxlen
        return out
    if kind is np.ndarray or isinstance(value, np.generic):
        array = np.asarray(value)
        if array.dtype.kind not in "biufc":
            raise CheckpointError(
                f"checkpoint {where} is a numpy array of dtype {array.dtype}; allowed: numeric numpy arrays"
            )
        native = np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)
        try:
            data = torch.from_numpy(native)
        except TypeError:
            raise CheckpointError(
                f"checkpoint {where} is a numpy array of dtype {array.dtype}, which torch cannot hold; "
                "allowed: numpy dtypes torch has (e.g. float16/32/64, complex, int, uint8, bool)"
            ) from None
        return {TAG: "ndarray" if kind is np.ndarray else "npscalar", "data": data}
    cls = _STATE_TYPES.get(_type_name(kind))
    if cls is kind:
        state = {k: encode_state(v, f"{where}.{k}") for k, v in vars(value).items()}
        return {TAG: "object", "type": _type_name(kind), "state": state}
    hint = "; save generator.get_state()" if isinstance(value, torch.Generator) else ""
    raise CheckpointError(
        f"checkpoint {where} is a {_type_name(kind)}{hint}; allowed: tensors, numbers, strings, containers, "
        "numpy arrays and classes registered with learndyn.checkpoint.checkpoint_type"
    )


def decode_state(value: Any) -> Any:
    """The value :func:`encode_state` encoded (raises :class:`CheckpointError` for a malformed one)."""
    kind = type(value)
    if kind in (list, tuple):
        return kind(decode_state(v) for v in value)
    if kind not in (dict, collections.OrderedDict):
        return value
    tag = value.get(TAG)
    if tag is None:
        return kind((k, decode_state(v)) for k, v in value.items())
    decode = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decode is None:
        raise CheckpointError(f"unknown encoded value {tag!r} in the checkpoint")
    try:
        return decode(value)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed entry, whatever it raises
        raise CheckpointError(
            f"malformed encoded {tag} in the checkpoint: {type(exc).__name__}: {exc}"
        ) from None


def _decode_object(value: dict[str, Any]) -> Any:
    cls = _STATE_TYPES.get(value["type"])
    if cls is None:
        raise CheckpointError(
            f"the checkpoint holds a {value['type']!r}, which is not a registered checkpoint type here "
            f"(registered: {', '.join(sorted(_STATE_TYPES)) or 'none'})"
        )
    state = decode_state(value["state"])
    if type(state) is not dict or not all(type(k) is str for k in state):
        raise CheckpointError(f"malformed encoded {value['type']} in the checkpoint: its state is not a dict")
    obj = cls.__new__(cls)
    vars(obj).update(state)
    return obj


def _decode_numpy(value: dict[str, Any]) -> Any:
    import torch

    data = value["data"]
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("malformed encoded numpy value in the checkpoint: its data is not a tensor")
    array = data.numpy()
    return array if value[TAG] == "ndarray" else array[()]


def _decode_items(value: dict[str, Any]) -> Any:
    items = [decode_state(v) for v in value["items"]]
    tag = value[TAG]
    if tag == "dict":
        return {k: v for k, v in items}
    if tag == "deque":
        return collections.deque(items, maxlen=value["maxlen"])
    return {"set": set, "frozenset": frozenset}[tag](items)


_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "object": _decode_object,
    "ndarray": _decode_numpy,
    "npscalar": _decode_numpy,
    "dict": _decode_items,
    "deque": _decode_items,
    "set": _decode_items,
    "frozenset": _decode_items,
}


def _refusal(path: Path, exc: BaseException) -> str:
    """One line for a checkpoint ``torch.load(weights_only=True)`` refused or could not read."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
    if found or "Weights only load failed" in text:
        what = found.group(1) if found else "a pickled object"
        return (
            f"checkpoint {path} holds {what}, not an allowed type (tensors and plain containers); refused "
            "without unpickling it (an older learndyn's checkpoint that pickled objects, or not learndyn's)"
        )
    first = " ".join(text.split())[:300]
    return f"checkpoint {path} is unreadable: {type(exc).__name__}: {first}"


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
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged or refused file, whatever torch raises for it
            raise CheckpointError(_refusal(path, exc)) from None
        try:
            return decode_state(state)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from None

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Encode ``state`` (refused in one line if it holds what a checkpoint may not), write it atomically.

        A full disk (or another write error) is one :class:`CheckpointError` line; the old checkpoint stays.
        """
        import torch

        path = self.path(key)
        plain = encode_state(state)
        tmp = path.with_suffix(".pt.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(plain, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


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

    def clear(self) -> bool:
        """Delete every checkpoint file (the run finished; nothing will resume it). Never raises: returns
        whether the checkpoints are gone."""
        try:
            if self.directory.is_dir():
                for f in self.directory.iterdir():
                    if f.suffix in (".pt", ".tmp") and f.is_file():
                        f.unlink(missing_ok=True)
                self.directory.rmdir()
        except OSError:
            return not any(self.directory.glob("*.pt")) if self.directory.is_dir() else True
        return True


class MemoryCheckpointer:
    """Checkpoints kept in memory (tests, notebooks). Stores deep copies of the encoded state, so what a
    file checkpoint would refuse is refused here too."""

    def __init__(self, *, every: int | None = None) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.every = _every(every)

    def load(self, key: str) -> dict[str, Any] | None:
        import copy

        state = self.states.get(key)
        return None if state is None else decode_state(copy.deepcopy(state))

    def save(self, key: str, state: dict[str, Any]) -> None:
        import copy

        self.states[key] = copy.deepcopy(encode_state(state))
