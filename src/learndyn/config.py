"""Experiment configs: ``--set key=value`` overrides with type coercion, and conversion to/from plain dicts.

An experiment's config is a dataclass whose fields all have defaults and type hints, validated in
``__post_init__``. :func:`apply_overrides` parses ``key=value`` strings, coerces each value to its field's
type (int, float, bool, str, Literal, Enum, ``X | None``, tuple/list of those: ``lrs=0.1,0.01``) and builds a
new config with :func:`dataclasses.replace`, so the dataclass's own validation runs afterwards::

    >>> apply_overrides(Config(), ["steps=200", "lrs=0.1,0.01", "optimizer=adam"], experiment="demo")

Every failure is a one-line :class:`ConfigError` naming the key, the value and what is allowed. Values given
as Python objects (a mapping of overrides, a stored config dict) are checked against the field's type the same
way (an int field takes an int, a tuple field a list or tuple of the right items, ...), so a config never
reaches an experiment with a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal, Union

import numpy as np

from learndyn.validation import LearndynValueError, check_int, check_real

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_fields",
    "config_from_dict",
    "config_to_dict",
    "check_int_fields",
    "check_memory",
    "check_run_fields",
    "parse_value",
    "seed_of",
]

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}
_NONE = {"none", "null"}
_INT_RE = re.compile(r"[+-]?\d[\d_]*")


class ConfigError(LearndynValueError):
    """A bad config override or config dict; the message is one line."""


class _Mismatch(Exception):
    """Internal: a value does not parse as the expected type."""


def _owner(config_cls: type, experiment: str | None) -> str:
    return f"experiment {experiment!r}" if experiment else config_cls.__name__


def _field_types(config_cls: type) -> dict[str, Any]:
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass; configs must be dataclasses")
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_cls) if f.init}


def config_fields(config_cls: type) -> list[tuple[str, str, Any]]:
    """``(name, type description, default)`` for each settable field of a config dataclass."""
    types_ = _field_types(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append((f.name, type_name(types_[f.name]), default))
    return out


def type_name(tp: Any) -> str:
    """A short human description of a type hint (used in error messages and ``--show-config``)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "none"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (tuple, list, Sequence, typing.Sequence):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"{len(args)} comma-separated values ({', '.join(type_name(a) for a in args)})"
        inner = args[0] if args else Any
        return f"comma-separated {type_name(inner)}s"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.name) for m in tp)
    return getattr(tp, "__name__", str(tp))


def parse_value(text: str, tp: Any) -> Any:
    """Coerce the string ``text`` to the type hint ``tp``; raise ``ValueError`` when it does not fit."""
    try:
        return _parse(text, tp)
    except _Mismatch:
        raise ValueError(f"{text!r} is not {type_name(tp)}") from None


def _first_fit(value: Any, types_: tuple[Any, ...], convert: Callable[[Any, Any], Any]) -> Any:
    """``convert(value, t)`` for the first non-None type ``t`` of a union that takes ``value``."""
    for arg in types_:
        if arg is type(None):
            continue
        try:
            return convert(value, arg)
        except _Mismatch:
            continue
    raise _Mismatch


def _sequence(items: list[Any], tp: Any, convert: Callable[[Any, Any], Any]) -> Any:
    """``items`` converted item by item to the sequence type ``tp``: a fixed-length tuple, a ``tuple[X,
    ...]`` or a list (``Sequence`` gives a tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise _Mismatch
        return tuple(convert(v, a) for v, a in zip(items, args, strict=True))
    inner = args[0] if args else Any
    values = [convert(v, inner) for v in items]
    return values if origin is list or tp is list else tuple(values)


def _parse(text: str, tp: Any) -> Any:
    text = text.strip()
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return text
    if tp is type(None):
        if text.lower() in _NONE:
            return None
        raise _Mismatch
    if origin is Literal:
        for choice in args:
            try:
                parsed = choice if isinstance(choice, str) else _parse(text, type(choice))
            except _Mismatch:
                continue
            if (isinstance(choice, str) and text == choice) or (
                not isinstance(choice, str) and parsed == choice
            ):
                return choice
        raise _Mismatch
    if origin in (Union, types.UnionType):
        if type(None) in args and text.lower() in _NONE:
            return None
        return _first_fit(text, args, _parse)
    if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
        if text[:1] + text[-1:] in ("[]", "()"):
            text = text[1:-1].strip()
        parts = [p.strip() for p in text.split(",")] if text else []
        if parts and parts[-1] == "":  # allow a trailing comma: "lrs=0.1,"
            parts = parts[:-1]
        return _sequence(parts, tp, _parse)
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise _Mismatch
    if tp is int:
        if _INT_RE.fullmatch(text):
            try:
                return int(text)
            except ValueError:  # more digits than Python converts
                raise _Mismatch from None
        try:
            as_float = float(text)  # "1e4" is a fine way to write 10000
        except ValueError:
            raise _Mismatch from None
        if as_float.is_integer():
            return int(as_float)
        raise _Mismatch
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise _Mismatch from None
    if tp is str:
        return text
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if text == member.name or text == str(member.value):
                return member
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return tp(text)
    raise _Mismatch


def split_assignment(
    item: str, flag: str = "--set", error: type[LearndynValueError] = ConfigError
) -> tuple[str, str]:
    """``"key=value"`` -> ``("key", "value")`` (key stripped, value verbatim); anything else raises ``error``
    with a one-line message naming ``flag`` (the option the item came from)."""
    if not isinstance(item, str) or "=" not in item:
        raise error(f"{flag} {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise error(f"{flag} {item!r} has an empty key; expected key=value")
    return key, value


def _coerce_given(value: Any, tp: Any) -> Any:
    """Values given as Python objects (quick overrides): lists become tuples for tuple fields."""
    origin = typing.get_origin(tp)
    if isinstance(value, list) and (origin is tuple or tp is tuple):
        return tuple(value)
    if isinstance(value, list | tuple) and origin in (Union, types.UnionType):
        if any(typing.get_origin(a) is tuple or a is tuple for a in typing.get_args(tp)):
            return tuple(value)
    return value


def _conform(value: Any, tp: Any) -> Any:
    """``value`` (a Python object) as the type hint ``tp`` wants it, or :class:`_Mismatch`.

    Lenient only where nothing is lost: an int for a float field, numpy scalars, a list for a tuple field, an
    enum member's name or value, a string for a path, a mapping for a nested dataclass. Types it does not know
    (callables, torch dtypes, ...) pass unchecked.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, np.generic):
        value = value.item()
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        for choice in args:
            if value == choice and (type(value) is type(choice) or (
                isinstance(choice, float) and type(value) is int
            )):
                return choice
        raise _Mismatch
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _first_fit(value, args, _conform)
    if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _Mismatch
        return _sequence(list(value), tp, _conform)
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int too large for a float
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if isinstance(value, str | int | float) and not isinstance(value, bool) and (
                value == member.name or value == member.value
            ):
                return member
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, str | PurePath):
            return tp(value)
        raise _Mismatch
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            try:
                return config_from_dict(tp, value)
            except (ValueError, TypeError):
                raise _Mismatch from None
        raise _Mismatch
    return value


def _given(key: str, value: Any, tp: Any, owner: str) -> Any:
    try:
        return _conform(value, tp)
    except _Mismatch:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        expected = type_name(tp)
        raise ConfigError(f"{key}={shown} has the wrong type for {owner}; expected: {expected}") from None


def apply_overrides(
    config: Any, overrides: Sequence[str] | Mapping[str, Any] | None, *, experiment: str | None = None
) -> Any:
    """A copy of the dataclass ``config`` with ``overrides`` applied (``["key=value", ...]`` or a mapping).

    String values are coerced to the field's type; other mapping values are checked against it (see
    :func:`_conform`). Later keys win. The dataclass's ``__post_init__`` validation runs on the result. Raises
    :class:`ConfigError` (one line) for an unknown key (naming the experiment and the allowed keys) or a value
    of the wrong type (naming the field, the value and the expected type); validation errors from
    ``__post_init__`` propagate as raised.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"apply_overrides needs a dataclass instance, got {config!r}")
    if not overrides:
        return dataclasses.replace(config)
    field_types = _field_types(type(config))
    owner = _owner(type(config), experiment)
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = [split_assignment(o) for o in overrides]
    changes: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(key, str) or key not in field_types:
            allowed = ", ".join(sorted(field_types)) or "(none)"
            raise ConfigError(f"unknown config key {key!r} for {owner}; allowed: {allowed}")
        tp = field_types[key]
        if isinstance(value, str) and tp is not str:
            try:
                value = _parse(value, tp)
            except _Mismatch:
                raise ConfigError(
                    f"{key}={value!r} has the wrong type for {owner}; expected: {type_name(tp)}"
                ) from None
        else:
            value = _given(key, _coerce_given(value, tp), tp, owner)
        changes[key] = value
    _check_ints(owner, changes)  # before the dataclass's own (cross-field) validation sees them
    out = dataclasses.replace(config, **changes)
    check_int_fields(out, owner)  # configs whose own validation does not bound them (user experiments)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # torch dtypes, devices, callables: stored by name


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (or mapping): tuples become lists, enums their values."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return _plain(config)
    if isinstance(config, Mapping):
        return _plain(config)
    raise TypeError(f"config must be a dataclass instance or a mapping, got {type(config).__name__}")


def config_from_dict(config_cls: type, data: Mapping[str, Any], *, experiment: str | None = None) -> Any:
    """Rebuild a config dataclass from :func:`config_to_dict` output (lists become tuples where typed so).

    Unknown keys and values of the wrong type raise :class:`ConfigError` (one line naming the key); missing
    keys take their defaults; the dataclass's own validation runs as usual.
    """
    owner = _owner(config_cls, experiment)
    if not isinstance(data, Mapping):
        raise ConfigError(f"config for {owner} is {type(data).__name__}; allowed: a mapping of key: value")
    field_types = _field_types(config_cls)
    unknown = sorted((k for k in data if not isinstance(k, str) or k not in field_types), key=repr)
    if unknown:
        allowed = ", ".join(sorted(field_types))
        raise ConfigError(f"unknown config key {unknown[0]!r} for {owner}; allowed: {allowed}")
    kwargs = {key: _given(key, value, field_types[key], owner) for key, value in data.items()}
    _check_ints(owner, kwargs)
    out = config_cls(**kwargs)
    check_int_fields(out, owner)
    return out


def seed_of(config: Any) -> int | None:
    """The config's ``seed`` field when it is an int (what a stored run records as its seed), else None."""
    seed = getattr(config, "seed", None)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def check_run_fields(config: Any, owner: str, *, tolerance: bool = True) -> None:
    """Validate the fields experiment configs share, those ``config`` has (one-line errors naming ``owner``):
    ``seed`` (an int ``>= 0``), ``checkpoint_every`` (``None`` or an int ``>= 0``), ``threads`` (``None`` or
    an int ``>= 1``), every integer field's bounds (:func:`check_int_fields`) and, unless
    ``tolerance=False``, ``tolerance`` (a real ``> 0``, stored as a float)."""
    check_int_fields(config, owner)
    if hasattr(config, "seed"):
        check_int("seed", config.seed, low=0, owner=owner)
    if getattr(config, "checkpoint_every", None) is not None:
        check_int("checkpoint_every", config.checkpoint_every, low=0, owner=owner)
    if getattr(config, "threads", None) is not None:
        check_int("threads", config.threads, low=1, owner=owner)
    if tolerance and hasattr(config, "tolerance"):
        config.tolerance = check_real("tolerance", config.tolerance, low=0.0, low_open=True, owner=owner)


# ------------------------------------------------------------------------------------------- bounds
INT64_MAX = 2**63 - 1
"""The largest integer a config field may hold: seeds feed int64 generators and the store's BIGINT column."""
MAX_STEPS = 10**9
"""The most steps (``steps``, ``*_steps``) a config may ask for: a billion updates is beyond any run here."""


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [i for v in value for i in _ints(v)]
    return []


def check_int_fields(config: Any, owner: str) -> None:
    """Bound every integer of the dataclass ``config`` (in tuples too) before anything is allocated or stored:
    ``|value| <= 2**63 - 1`` (seeds, ``data_seed`` included, feed int64 generators and the store) and step
    counts (``steps``, ``*_steps``) ``<= 10**9``. One-line :class:`ConfigError` naming the field and the
    range. Lower bounds (a seed ``>= 0``, a size ``>= 1``) are the experiment's own validation."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return
    _check_ints(owner, {f.name: getattr(config, f.name, None) for f in dataclasses.fields(config)})


def _check_ints(owner: str, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        steps = name == "steps" or name.endswith("_steps")
        high, allowed = (MAX_STEPS, f"{name} <= 10**9") if steps else (INT64_MAX, f"|{name}| <= 2**63 - 1")
        for v in _ints(value):
            if not -INT64_MAX <= v <= high:
                text = str(v) if v.bit_length() < 4000 else ""  # str() refuses over 4300 digits
                shown = text if 0 < len(text) <= 24 else f"<an integer of {v.bit_length()} bits>"
                raise ConfigError(
                    f"{owner}.{name}={shown} is out of range; allowed: {allowed}"
                )


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(owner: str, needed: float, fields: Sequence[str]) -> None:
    """Refuse (one-line :class:`ConfigError`) a config whose estimated memory ``needed`` (bytes) exceeds this
    machine's physical memory, before anything is allocated; ``fields`` name the sizes that drive it."""
    total = physical_memory()
    if total is not None and needed > total:
        raise ConfigError(
            f"{owner} needs about {needed:.3g} bytes of memory, more than this machine has "
            f"({total / 2**30:.0f} GiB); allowed: smaller {', '.join(fields)}"
        )
