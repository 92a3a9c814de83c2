"""Sweep specifications: which configs of a registered experiment a sweep runs, validated before it runs.

A sweep is a set of *axes* over config fields of one experiment, plus fixed overrides. On the command line::

    learndyn sweep mlp-teacher --grid lr=logspace(1e-3,1,7) --grid alpha=0,0.5,1 --grid seed=range(3) \\
        --set steps=300

or in a YAML / TOML file (``--spec sweep.yaml``)::

    experiment: mlp-teacher      # optional when given on the command line
    name: lr-alpha               # optional: the sweep id (default: derived from the configs)
    set: {steps: 300}            # fixed overrides, like --set
    grid:
      lr: logspace(1e-3, 1, 7)   # an expression (below), a list, or one value
      alpha: [0, 0.5, 1]
      seed: range(3)
    samples: 16                  # draws of the random axes (needed when there is one)
    sweep_seed: 0                # seeds those draws

Axis values (``key=VALUES``):

==============================  ==========================================================================
``v1,v2,...``                   explicit values, each coerced to the field's type (``true``, ``none``, ...)
``range(stop)``                 integers ``0..stop-1``; also ``range(start, stop[, step])``
``linspace(a, b, n)``           ``n`` evenly spaced values, both ends included
``logspace(a, b, n)``           ``n`` log-spaced values from ``a`` to ``b`` (ends, not exponents; a, b > 0)
``uniform(a, b)``               random: uniform on ``[a, b)`` (float fields)
``loguniform(a, b)``            random: ``exp(uniform(log a, log b))`` (float fields, a, b > 0)
``randint(a, b)``               random: an integer in ``[a, b]`` (int fields)
``choice(v1, v2, ...)``         random: one of the values
==============================  ==========================================================================

For a field whose type is a tuple or list, separate alternatives with ``;`` (``optimizers=sgd,adam;adam``).
Integer fields accept ``linspace``/``logspace`` only when the values come out whole.

The configs are the Cartesian product of the non-random axes (the last axis varies fastest), times
``samples`` joint draws of the random axes (seeded by ``sweep_seed``, so a spec always gives the same
configs). Every axis key must be a config field and every value must fit its type; every resulting config is
built (so the experiment's own validation runs) before anything runs. Failures are one-line
:class:`SweepSpecError`. Identical configs are run once.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from learndyn.config import (
    ConfigError,
    apply_overrides,
    config_to_dict,
    parse_value,
    split_assignment,
    type_name,
)
from learndyn.phenomena import registry
from learndyn.validation import LearndynValueError, error_text

__all__ = [
    "Axis",
    "SweepPlan",
    "SweepPoint",
    "SweepSpec",
    "SweepSpecError",
    "canonical_config",
    "config_hash",
    "ensemble_key",
    "parse_axis",
]

RANDOM_FUNCTIONS = ("uniform", "loguniform", "randint", "choice")
GRID_FUNCTIONS = ("range", "linspace", "logspace")
MAX_SWEEP_RUNS = 100_000  # a larger sweep is refused before anything is expanded (split it into several)
_CALL_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.DOTALL)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FILE_KEYS = ("experiment", "name", "set", "grid", "samples", "sweep_seed", "quick")


class SweepSpecError(LearndynValueError):
    """A bad sweep spec (unknown key, bad value, bad file); the message is one line."""


# --------------------------------------------------------------------------------------------- hashing
def canonical_config(config: Any) -> str:
    """The canonical JSON text of a config (dataclass or dict): sorted keys, JSON-normalised values.

    Tuples and lists, ints stored as JSON, enums as values: a config read back from the store gives the same
    text as the config it was stored from.
    """
    data = config if isinstance(config, Mapping) else config_to_dict(config)
    normal = json.loads(json.dumps(config_to_dict(data)))
    return json.dumps(normal, sort_keys=True, separators=(",", ":"))


def config_hash(config: Any) -> str:
    """A 16-hex-digit hash of :func:`canonical_config`: how a sweep recognises a config it already ran."""
    return hashlib.sha256(canonical_config(config).encode()).hexdigest()[:16]


def ensemble_key(config: Any, axes: Sequence[str]) -> str:
    """Configs with the same key agree on every field outside ``axes`` and may share an ensemble."""
    data = {k: v for k, v in config_to_dict(config).items() if k not in set(axes)}
    return canonical_config(data)


# ------------------------------------------------------------------------------------------ field types
def field_types(config_cls: type) -> dict[str, Any]:
    """``{name: type hint}`` of the settable fields of a config dataclass."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_cls) if f.init}


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_sequence_type(tp: Any) -> bool:
    tp = _strip_optional(tp)
    return typing.get_origin(tp) in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list)


def _numeric_kind(tp: Any) -> str | None:
    """``'int'``, ``'float'`` or None for a (possibly optional) field type."""
    tp = _strip_optional(tp)
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    return None


def _to_text(value: Any) -> str:
    """A Python value (from YAML/TOML) as the text :func:`parse_value` reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(_to_text(v) for v in value)
    if isinstance(value, enum.Enum):
        return str(value.name)
    return str(value)


# ------------------------------------------------------------------------------------------------ axes
@dataclass(frozen=True)
class Axis:
    """One swept config field: explicit ``values`` (a grid axis) or a ``sampler`` (a random axis).

    ``source`` is the text or value the axis came from (shown in messages and the plan).
    """

    key: str
    values: tuple[Any, ...] = ()
    sampler: Callable[[np.random.Generator], Any] | None = field(default=None, compare=False)
    source: str = ""

    @property
    def is_random(self) -> bool:
        return self.sampler is not None


def _split_args(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    return [] if parts == [""] else parts


def _number(key: str, func: str, text: str, *, integer: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SweepSpecError(f"{key}={func}(...): argument {text!r} is not a number") from None
    if not math.isfinite(value):
        raise SweepSpecError(f"{key}={func}(...): argument {text!r} is not finite")
    if integer and not value.is_integer():
        raise SweepSpecError(f"{key}={func}(...): argument {text!r} is not an integer")
    return value


def _coerce(key: str, value: Any, tp: Any, experiment: str) -> Any:
    """One axis value coerced to the field type (via its text form); one-line error naming the key."""
    text = value if isinstance(value, str) else _to_text(value)
    if tp is str:
        return text
    try:
        return parse_value(text, tp)
    except ValueError:
        raise SweepSpecError(
            f"{key}={text!r} has the wrong type for experiment {experiment!r}; expected: {type_name(tp)}"
        ) from None


def _whole(key: str, func: str, values: Sequence[float], kind: str | None) -> list[Any]:
    if kind != "int":
        return [float(v) for v in values]
    out = []
    for v in values:
        r = round(v)
        if abs(v - r) > 1e-9 * max(1.0, abs(v)):
            raise SweepSpecError(
                f"{key}={func}(...) gives {v:g}, not a whole number, for an int field; "
                "allowed: values that come out whole, or explicit values"
            )
        out.append(int(r))
    return out


def parse_axis(key: str, value: Any, tp: Any, *, experiment: str = "?") -> Axis:
    """Parse one axis ``key=value`` for a field of type ``tp`` (see the module docstring for the grammar).

    ``value`` is the text after ``=`` (CLI), or a value from a spec file: a list (explicit values), a number
    or bool (one value), or a string (an expression or comma-separated values).
    """
    kind = _numeric_kind(tp)
    if isinstance(value, list | tuple):
        if not value:
            raise SweepSpecError(f"{key}=[] has no values; allowed: one or more values")
        values = tuple(_coerce(key, v, tp, experiment) for v in value)
        return Axis(key, values, source=_to_text(list(value)))
    if not isinstance(value, str):
        return Axis(key, (_coerce(key, value, tp, experiment),), source=_to_text(value))
    text = value.strip()
    if not text:
        raise SweepSpecError(f"{key}= has no values; allowed: v1,v2,... or an expression like range(3)")
    match = _CALL_RE.match(text)
    if match and match.group(1) in GRID_FUNCTIONS + RANDOM_FUNCTIONS:
        return _parse_call(key, match.group(1), match.group(2), tp, kind, experiment, text)
    if match and kind is not None:
        allowed = ", ".join(f"{f}(...)" for f in GRID_FUNCTIONS + RANDOM_FUNCTIONS)
        raise SweepSpecError(f"{key}={text!r}: unknown function {match.group(1)!r}; allowed: {allowed}")
    separator = ";" if _is_sequence_type(tp) else ","
    if separator == "," and text[:1] + text[-1:] == "[]":  # a list written like a YAML/Python one
        text = text[1:-1].strip()
    parts = [p.strip() for p in text.split(separator)]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    if any(p == "" for p in parts):
        raise SweepSpecError(f"{key}={text!r} has an empty value")
    return Axis(key, tuple(_coerce(key, p, tp, experiment) for p in parts), source=text)


def _parse_call(
    key: str, func: str, argtext: str, tp: Any, kind: str | None, experiment: str, source: str
) -> Axis:
    args = _split_args(argtext)
    if func == "choice":
        if not args:
            raise SweepSpecError(f"{key}=choice() has no values; allowed: choice(v1, v2, ...)")
        options = tuple(_coerce(key, a, tp, experiment) for a in args)
        return Axis(key, sampler=lambda rng: options[int(rng.integers(len(options)))], source=source)
    if kind is None:
        raise SweepSpecError(
            f"{key}={source!r}: {func}(...) needs a numeric field, but {key} is {type_name(tp)}; "
            "allowed: explicit values v1,v2,..."
        )
    if func == "range":
        if not 1 <= len(args) <= 3:
            raise SweepSpecError(f"{key}={source!r}: allowed: range(stop), range(start, stop[, step])")
        nums = [int(_number(key, func, a, integer=True)) for a in args]
        if len(nums) == 3 and nums[2] == 0:
            raise SweepSpecError(f"{key}={source!r}: the step of range must not be 0")
        span = range(*nums)
        if len(span) > MAX_SWEEP_RUNS:
            raise SweepSpecError(
                f"{key}={source!r} has {len(span)} values; allowed: at most {MAX_SWEEP_RUNS} per sweep"
            )
        values = list(span)
        if not values:
            raise SweepSpecError(f"{key}={source!r} is empty")
        return Axis(key, tuple(_whole(key, func, values, kind)), source=source)
    if func in ("linspace", "logspace"):
        if len(args) != 3:
            raise SweepSpecError(f"{key}={source!r}: allowed: {func}(start, stop, num)")
        a, b = _number(key, func, args[0]), _number(key, func, args[1])
        n = int(_number(key, func, args[2], integer=True))
        if not 1 <= n <= MAX_SWEEP_RUNS:
            raise SweepSpecError(
                f"{key}={source!r}: num={n} is out of range; allowed: 1 <= num <= {MAX_SWEEP_RUNS}"
            )
        if func == "logspace":
            if a <= 0 or b <= 0:
                raise SweepSpecError(f"{key}={source!r}: logspace needs start > 0 and stop > 0")
            raw = np.geomspace(a, b, n)
            raw[0], raw[-1] = a, b  # exact ends
        else:
            raw = np.linspace(a, b, n)
        return Axis(key, tuple(_whole(key, func, raw.tolist(), kind)), source=source)
    # random numeric samplers
    if len(args) != 2:
        raise SweepSpecError(f"{key}={source!r}: allowed: {func}(low, high)")
    integer = func == "randint"
    lo, hi = _number(key, func, args[0], integer=integer), _number(key, func, args[1], integer=integer)
    if hi < lo:
        raise SweepSpecError(f"{key}={source!r}: high < low")
    if integer:
        if kind != "int":
            raise SweepSpecError(f"{key}={source!r}: randint needs an int field; {key} is {type_name(tp)}")
        ilo, ihi = int(lo), int(hi)
        return Axis(key, sampler=lambda rng: int(rng.integers(ilo, ihi + 1)), source=source)
    if kind != "float":
        raise SweepSpecError(
            f"{key}={source!r}: {func} needs a float field; {key} is {type_name(tp)} (use randint)"
        )
    if func == "loguniform":
        if lo <= 0:
            raise SweepSpecError(f"{key}={source!r}: loguniform needs low > 0")
        llo, lhi = math.log(lo), math.log(hi)
        return Axis(key, sampler=lambda rng: float(math.exp(rng.uniform(llo, lhi))), source=source)
    return Axis(key, sampler=lambda rng: float(rng.uniform(lo, hi)), source=source)


# --------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class SweepPoint:
    """One config of a sweep: its position, the config, its plain dict and its hash."""

    index: int
    config: Any
    values: dict[str, Any]  # the swept fields' values at this point
    hash: str

    @property
    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)


@dataclass(frozen=True)
class SweepPlan:
    """The validated, expanded sweep: its id, the experiment and every config, in order."""

    sweep_id: str
    experiment: str
    points: tuple[SweepPoint, ...]
    axes: tuple[Axis, ...]
    duplicates: int = 0  # configs dropped because an earlier point had the same config

    @property
    def swept_fields(self) -> list[str]:
        return [a.key for a in self.axes]

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class SweepSpec:
    """What to sweep: an experiment, fixed overrides, axes (``key -> values``) and random-draw settings.

    Build one with :meth:`from_cli`, :meth:`from_file` or directly; :meth:`expand` validates it against the
    experiment's config fields and returns the :class:`SweepPlan`. ``grid`` values are as in
    :func:`parse_axis` (strings, lists or single values), in axis order.
    """

    experiment: str
    grid: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    samples: int | None = None
    sweep_seed: int | None = None  # None: 0
    name: str | None = None
    quick: bool = False

    # ------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_cli(
        cls,
        experiment: str,
        grid: Sequence[str] = (),
        overrides: Sequence[str] = (),
        *,
        samples: int | None = None,
        sweep_seed: int | None = None,
        name: str | None = None,
        quick: bool = False,
    ) -> SweepSpec:
        """From ``--grid key=VALUES`` and ``--set key=value`` strings (a key may not repeat)."""
        axes: dict[str, Any] = {}
        for item in grid:
            key, value = split_assignment(item, "--grid", SweepSpecError)
            if key in axes:
                raise SweepSpecError(f"--grid {key!r} is given twice; allowed: one --grid per field")
            axes[key] = value
        sets: dict[str, Any] = {}
        for item in overrides:
            key, value = split_assignment(item, "--set", SweepSpecError)
            sets[key] = value
        return cls(experiment, axes, sets, samples, sweep_seed, name, quick)

    @classmethod
    def from_file(cls, path: str | Path, *, experiment: str | None = None) -> SweepSpec:
        """From a ``.yaml``/``.yml``/``.toml`` (or ``.json``) file (see the module docstring for the keys).

        ``experiment`` (from the command line) is used when the file names none; both given must agree.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise SweepSpecError(f"cannot read sweep spec {p}: {exc.strerror or exc}") from None
        data = _load_text(text, p)
        if not isinstance(data, dict):
            raise SweepSpecError(f"sweep spec {p} must be a mapping with keys {', '.join(_FILE_KEYS)}")
        unknown = [k for k in data if k not in _FILE_KEYS]
        if unknown:
            raise SweepSpecError(
                f"sweep spec {p}: unknown key {unknown[0]!r}; allowed: {', '.join(_FILE_KEYS)}"
            )
        file_exp = data.get("experiment")
        if file_exp is not None and not isinstance(file_exp, str):
            raise SweepSpecError(f"sweep spec {p}: experiment={file_exp!r} must be a string")
        if experiment and file_exp and experiment != file_exp:
            raise SweepSpecError(
                f"sweep spec {p} is for experiment {file_exp!r}, but {experiment!r} was given"
            )
        exp = experiment or file_exp
        if not exp:
            raise SweepSpecError(f"sweep spec {p} names no experiment; add `experiment: NAME` or pass it")
        grid = data.get("grid") or {}
        sets = data.get("set") or {}
        for label, section in (("grid", grid), ("set", sets)):
            if not isinstance(section, dict):
                raise SweepSpecError(f"sweep spec {p}: {label} must be a mapping of field: value")
        samples = data.get("samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)):
            raise SweepSpecError(f"sweep spec {p}: samples={samples!r}; allowed: an integer >= 1")
        seed = data.get("sweep_seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise SweepSpecError(f"sweep spec {p}: sweep_seed={seed!r}; allowed: an integer")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise SweepSpecError(f"sweep spec {p}: name={name!r} must be a string")
        quick = data.get("quick", False)
        if not isinstance(quick, bool):
            raise SweepSpecError(f"sweep spec {p}: quick={quick!r}; allowed: true, false")
        return cls(exp, dict(grid), dict(sets), samples, seed, name, quick)

    def merged(self, other: SweepSpec) -> SweepSpec:
        """This spec with ``other``'s axes, overrides and settings on top (CLI flags over a spec file)."""
        for key in other.grid:
            if key in self.grid:
                raise SweepSpecError(f"--grid {key}=... repeats an axis of the spec file")
        return SweepSpec(
            self.experiment,
            {**self.grid, **other.grid},
            {**self.overrides, **other.overrides},
            other.samples if other.samples is not None else self.samples,
            other.sweep_seed if other.sweep_seed is not None else self.sweep_seed,
            other.name or self.name,
            self.quick or other.quick,
        )

    # --------------------------------------------------------------------------------------- expansion
    def expand(self) -> SweepPlan:
        """Validate and expand into a :class:`SweepPlan` (raises :class:`SweepSpecError`, one line)."""
        try:
            experiment = registry.get(self.experiment)
        except ValueError as exc:
            raise SweepSpecError(str(exc)) from None
        cls = experiment.config_cls
        types_ = field_types(cls)
        if not self.grid:
            raise SweepSpecError("the sweep has no axes; add --grid key=v1,v2 (or a grid: section)")
        axes: list[Axis] = []
        for key, value in self.grid.items():
            if key not in types_:
                allowed = ", ".join(sorted(types_))
                raise SweepSpecError(
                    f"unknown config key {key!r} for experiment {self.experiment!r}; allowed: {allowed}"
                )
            axes.append(parse_axis(key, value, types_[key], experiment=self.experiment))
        clash = sorted(set(self.overrides) & set(self.grid))
        if clash:
            raise SweepSpecError(f"{clash[0]!r} is both swept (--grid) and fixed (--set); choose one")
        random_axes = [a for a in axes if a.is_random]
        if random_axes and self.samples is None:
            raise SweepSpecError(
                f"random axis {random_axes[0].key}={random_axes[0].source} needs --samples N (samples: N)"
            )
        if self.samples is not None:
            if not 1 <= self.samples <= MAX_SWEEP_RUNS:
                raise SweepSpecError(
                    f"samples={self.samples} is out of range; allowed: 1 <= samples <= {MAX_SWEEP_RUNS}"
                )
            if not random_axes:
                raise SweepSpecError("--samples needs a random axis (uniform, loguniform, randint or choice)")
        if self.name is not None and not _NAME_RE.match(self.name):
            raise SweepSpecError(
                f"name={self.name!r} is not allowed; allowed: letters, digits, '.', '_' and '-'"
            )
        grid_axes = [a for a in axes if not a.is_random]
        size = math.prod(len(a.values) for a in grid_axes) * (self.samples or 1)
        if size > MAX_SWEEP_RUNS:
            sizes = [len(a.values) for a in grid_axes] + ([self.samples] if self.samples else [])
            shape = " x ".join(str(n) for n in sizes)
            raise SweepSpecError(
                f"the sweep would have {size} runs ({shape}); allowed: at most {MAX_SWEEP_RUNS} per sweep"
            )
        base = self._base_config(experiment)
        rng = np.random.default_rng(self.sweep_seed or 0)
        draws = [{a.key: a.sampler(rng) for a in random_axes} for _ in range(self.samples or 1)]  # type: ignore[misc]
        points: list[SweepPoint] = []
        seen: set[str] = set()
        duplicates = 0
        for combo in itertools.product(*(a.values for a in grid_axes)):
            for draw in draws:
                values = dict(zip((a.key for a in grid_axes), combo, strict=True))
                values.update(draw)
                values = {a.key: values[a.key] for a in axes}  # axis order
                config = self._build(experiment, base, values)
                h = config_hash(config)
                if h in seen:
                    duplicates += 1
                    continue
                seen.add(h)
                points.append(SweepPoint(len(points), config, values, h))
        sweep_id = self.name or _derived_id(self.experiment, points)
        return SweepPlan(sweep_id, self.experiment, tuple(points), tuple(axes), duplicates)

    def _base_config(self, experiment: Any) -> Any:
        try:
            config = experiment.config_cls()
            if self.quick and experiment.quick_overrides:
                config = apply_overrides(config, experiment.quick_overrides, experiment=experiment.name)
            items = [f"{k}={v if isinstance(v, str) else _to_text(v)}" for k, v in self.overrides.items()]
            return apply_overrides(config, items, experiment=experiment.name)
        except ConfigError as exc:
            raise SweepSpecError(str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise SweepSpecError(
                f"invalid config for experiment {experiment.name!r}: {error_text(exc)}"
            ) from None

    @staticmethod
    def _build(experiment: Any, base: Any, values: dict[str, Any]) -> Any:
        try:
            return apply_overrides(base, values, experiment=experiment.name)
        except (ValueError, TypeError) as exc:
            shown = ", ".join(f"{k}={_show(v)}" for k, v in values.items())
            raise SweepSpecError(
                f"invalid config at {shown} for experiment {experiment.name!r}: {error_text(exc)}"
            ) from None


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return _to_text(value)


def _derived_id(experiment: str, points: Sequence[SweepPoint]) -> str:
    digest = hashlib.sha256()
    digest.update(experiment.encode())
    for p in points:
        digest.update(b"\n" + p.hash.encode())
    return f"{experiment}-{digest.hexdigest()[:10]}"


def _load_text(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parser error becomes one line
        raise SweepSpecError(f"cannot parse sweep spec {path}: {error_text(exc)}") from None
    raise SweepSpecError(
        f"sweep spec {path}: unknown file type {suffix!r}; allowed: .yaml, .yml, .toml, .json"
    )
