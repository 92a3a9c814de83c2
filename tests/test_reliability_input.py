"""Bad input never reaches training.

Random and malformed ``--set`` strings, config dicts and command lines are either accepted (with every field
of the right type) or refused with one line that names the field: a :class:`LearndynValueError` in Python;
exit code 2 and one ``error:`` line on stderr at the command line, no traceback, before anything is stored.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from pathlib import Path, PurePath
from typing import Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from learndyn.cli import app
from learndyn.config import apply_overrides, config_from_dict, config_to_dict
from learndyn.phenomena import registry
from learndyn.phenomena.registry import Experiment, ExperimentResult
from learndyn.store import RunStore
from learndyn.validation import LearndynValueError, check_int, check_real


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class RichConfig:
    steps: int = 10
    lr: float = 0.1
    flag: bool = False
    name: str = "x"
    mode: Literal["a", "b", 3] = "a"
    color: Color = Color.RED
    limit: int | None = None
    lrs: tuple[float, ...] = (0.1,)
    pair: tuple[int, str] = (1, "a")
    ids: list[int] = dataclasses.field(default_factory=list)
    out: Path = Path("out")

    def __post_init__(self) -> None:
        check_int("steps", self.steps, low=1, high=10**6, owner="RichConfig")
        check_real("lr", self.lr, low=0, low_open=True, owner="RichConfig")
        if self.limit is not None:
            check_int("limit", self.limit, low=0, owner="RichConfig")
        for value in self.lrs:
            check_real("lrs", value, low=0, owner="RichConfig")


FIELDS = [f.name for f in dataclasses.fields(RichConfig)]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _well_typed(c: RichConfig) -> bool:
    """An independent check that every field holds a value of its declared type."""
    return (
        _is_int(c.steps)
        and type(c.lr) is float
        and type(c.flag) is bool
        and type(c.name) is str
        and c.mode in ("a", "b", 3)
        and type(c.mode) in (str, int)
        and isinstance(c.color, Color)
        and (c.limit is None or _is_int(c.limit))
        and isinstance(c.lrs, tuple)
        and all(type(v) is float for v in c.lrs)
        and isinstance(c.pair, tuple)
        and len(c.pair) == 2
        and _is_int(c.pair[0])
        and type(c.pair[1]) is str
        and isinstance(c.ids, list)
        and all(_is_int(v) for v in c.ids)
        and isinstance(c.out, PurePath)
    )


def _names(message: str, key: object) -> bool:
    return repr(key) in message or f"{key}=" in message


def _one_line_error(exc: BaseException) -> str:
    assert isinstance(exc, LearndynValueError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------ strategies
_SCALAR_TEXT = st.one_of(
    st.sampled_from(
        ["1", "0", "-3", "1e4", "1.5", "nan", "inf", "-inf", "true", "no", "none", "null", "red", "BLUE"]
        + ["a", "3", "", " ", ",", "1,2", "1,,2", "[1,2]", "(1, a)", "1;2", "=", "1e400", "9" * 5000, "0x10"]
        + ["1_000", "\x00", "[/]", "[bold]x"]
    ),
    st.text(max_size=20),
    st.integers().map(str),
    st.floats().map(repr),
)
_VALUE_TEXT = st.one_of(_SCALAR_TEXT, st.lists(_SCALAR_TEXT, max_size=4).map(",".join))
_ODD_KEYS = [" steps ", "Steps", "steps.x", ""]
_KEYS = st.one_of(st.sampled_from(FIELDS), st.sampled_from(_ODD_KEYS), st.text(max_size=8))
_SET_ITEMS = st.one_of(st.builds(lambda k, v: f"{k}={v}", _KEYS, _VALUE_TEXT), st.text(max_size=30))

_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**300, max_value=10**400),
        st.floats(),
        st.text(max_size=10),
        st.sampled_from(["red", "RED", "a", "b", "1", "1.5", "true"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


# ------------------------------------------------------------------------------ --set strings
@settings(max_examples=400, deadline=None)
@given(items=st.lists(_SET_ITEMS, min_size=1, max_size=3))
@example(items=["steps=" + "9" * 5000])
@example(items=["lr=1e400"])
@example(items=["pair=1"])
@example(items=["color=green"])
def test_set_strings_are_accepted_typed_or_refused_naming_the_key(items):
    try:
        config = apply_overrides(RichConfig(), items, experiment="rich")
    except Exception as exc:  # noqa: BLE001 - the property is about what is raised
        message = _one_line_error(exc)
        assert any(
            ("=" not in item and "key=value" in message)
            or ("=" in item and (_names(message, item.split("=", 1)[0].strip()) or "empty key" in message))
            for item in items
        ), (items, message)
    else:
        assert _well_typed(config), config


# ------------------------------------------------------------------------------ config dicts
@settings(max_examples=400, deadline=None)
@given(key=_KEYS, value=_JSON)
@example(key="lr", value=10**400)
@example(key="steps", value=True)
@example(key="lrs", value=[1, 2.5])
@example(key="color", value="blue")
def test_override_mappings_are_accepted_typed_or_refused_naming_the_key(key, value):
    try:
        config = apply_overrides(RichConfig(), {key: value}, experiment="rich")
    except Exception as exc:  # noqa: BLE001
        assert _names(_one_line_error(exc), key), (key, value, str(exc))
    else:
        assert _well_typed(config), config


@settings(max_examples=400, deadline=None)
@given(data=st.dictionaries(st.one_of(_KEYS, st.integers()), _JSON, max_size=4))
@example(data={"lrs": "0.1"})
@example(data={"pair": [1, 2]})
@example(data={"out": 5})
def test_stored_config_dicts_are_rebuilt_typed_or_refused_naming_a_key(data):
    try:
        config = config_from_dict(RichConfig, data, experiment="rich")
    except Exception as exc:  # noqa: BLE001
        message = _one_line_error(exc)
        assert any(_names(message, k) for k in data), (data, message)
    else:
        assert _well_typed(config), config
        assert config_from_dict(RichConfig, config_to_dict(config)) == config  # and round-trips


def test_config_from_dict_refuses_a_non_mapping():
    with pytest.raises(LearndynValueError, match="allowed: a mapping"):
        config_from_dict(RichConfig, ["steps", 1])


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_experiment_round_trips_its_default_and_quick_config(name):
    experiment = registry.get(name)
    for config in (
        experiment.config_cls(),
        apply_overrides(experiment.config_cls(), experiment.quick_overrides, experiment=name),
    ):
        assert config_from_dict(experiment.config_cls, config_to_dict(config), experiment=name) == config


# ------------------------------------------------------------------------------ the command line
NOOP = "reliability-noop"


def _noop(config: RichConfig, recorder) -> ExperimentResult:
    recorder.log(0, {"lr": config.lr})
    return ExperimentResult(summary={"steps": config.steps})


if NOOP not in registry._REGISTRY:
    registry.register(Experiment(NOOP, "does nothing; for input-validation tests", RichConfig, _noop))

_runner = CliRunner()


def _invoke(*args: str, env: dict[str, str] | None = None):
    return _runner.invoke(app, list(args), catch_exceptions=False, env=env)


def _assert_one_line_exit_2(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, (needle, err)
    return err


_ARGV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
_CLI_ITEMS = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", _KEYS, _VALUE_TEXT.filter(lambda v: "\x00" not in v)), _ARGV_TEXT
).filter(lambda s: "\x00" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(_CLI_ITEMS, min_size=1, max_size=2))
@example(items=["[bold]steps=1"])
@example(items=["steps=0"])
def test_cli_set_is_accepted_or_one_line_exit_2_before_anything_is_stored(tmp_path, items):
    path = tmp_path / "store.duckdb"
    before = len(RunStore(path).runs()) if path.exists() else 0
    args = ["run", NOOP, "--store", str(path)]
    for item in items:
        args += ["--set", item]
    result = _invoke(*args)
    if result.exit_code == 0:
        return
    _assert_one_line_exit_2(result)
    after = len(RunStore(path).runs()) if path.exists() else 0
    assert after == before  # refused before a run was opened


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "no-such-phenomenon"], ["no-such-phenomenon", "allowed:", NOOP]),
        (["run", NOOP, "--set", "stepz=3"], ["'stepz'", "allowed: color, flag, ids"]),
        (["run", NOOP, "--set", "steps=1.5"], ["steps='1.5'", "expected: int"]),
        (["run", NOOP, "--set", "steps=0"], ["RichConfig.steps=0", "out of range", "1 <= steps"]),
        (["run", NOOP, "--set", "color=green"], ["color='green'", "'RED', 'BLUE'"]),
        (["run", NOOP, "--set", "mode=c"], ["mode='c'", "one of 'a', 'b', 3"]),
        (["run", NOOP, "--set", "pair=1,2,3"], ["pair='1,2,3'", "2 comma-separated values"]),
        (["run", NOOP, "--set", "lr=nan"], ["RichConfig.lr=nan", "not a finite number"]),
        (["run", NOOP, "--set", "noequals"], ["key=value"]),
        (["run", NOOP, "--bogus"], ["No such option: --bogus", "run --help`"]),
        (["run", NOOP, "--checkpoint-every", "x"], ["--checkpoint-every"]),
        (["run", NOOP, "--checkpoint-every", "-1"], ["--checkpoint-every=-1", "out of range"]),
        (["run", NOOP, "--report", "."], ["--report", "is a directory"]),
        (["list", "--limit", "many"], ["--limit"]),
        (["list", "--limit", "-2"], ["limit=-2", "out of range"]),
        (["list", "--status", "exploded"], ["status='exploded'", "'completed'"]),
        (["show"], ["Missing argument 'RUN|SWEEP'"]),
        (["resume"], ["Missing argument 'RUN'"]),
        (["resume", "abc", "--checkpoint-every", "-5"], ["--checkpoint-every=-5"]),
        (["compare", "a"], ["at least two"]),
        (["nonsense-command"], ["No such command"]),
    ],
)
def test_bad_command_lines_are_one_line_exit_2(tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "store.duckdb"
    RunStore(path)
    result = _invoke(*args, env={"LEARNDYN_STORE": str(path)})
    _assert_one_line_exit_2(result, *needles)
    assert RunStore(path).runs().empty  # nothing ran


@pytest.mark.parametrize("value", ["often", "-1", "1.5"])
def test_bad_checkpoint_env_is_refused_before_anything_runs(tmp_path, value):
    path = tmp_path / "store.duckdb"
    result = _invoke("run", NOOP, "--store", str(path), env={"LEARNDYN_CHECKPOINT_EVERY": value})
    _assert_one_line_exit_2(result, "LEARNDYN_CHECKPOINT_EVERY")
    assert not path.exists()


@pytest.mark.parametrize(
    "store",
    ["{tmp}", "{tmp}/notes.txt", "/dev/null", "{tmp}/file.duckdb/below.duckdb"],
    ids=["directory", "text-file", "device", "below-a-file"],
)
def test_bad_store_paths_are_one_line_exit_2(tmp_path, store):
    (tmp_path / "notes.txt").write_text("a text file\n" * 100)
    (tmp_path / "file.duckdb").write_text("x")
    path = store.format(tmp=tmp_path)
    for args in (["list", "--store", path], ["run", NOOP, "--store", path]):
        _assert_one_line_exit_2(_invoke(*args))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.one_of(st.integers(-5, 5).map(str), _ARGV_TEXT),
    status=st.one_of(st.sampled_from(["running", "completed", "diverged"]), _ARGV_TEXT),
    name=_ARGV_TEXT,
)
def test_list_options_are_accepted_or_one_line_exit_2(tmp_path, limit, status, name):
    if any(c in limit + status + name for c in "\r\n") or limit.startswith("-") and not limit[1:].isdigit():
        return  # an argv element starting with '-' is an option name; newlines are not argv material
    path = tmp_path / "s.duckdb"
    RunStore(path)
    result = _invoke("list", "--store", str(path), "--limit", limit, "--status", status, "--name", name)
    if result.exit_code != 0:
        _assert_one_line_exit_2(result)


def test_printable_garbage_in_messages_is_printed_literally(tmp_path):
    """User text is never interpreted as console markup (a '[/]' once crashed the error printer)."""
    for item in ("[/]=1", "[bold red]x=1", "steps=[/]"):
        result = _invoke("run", NOOP, "--store", str(tmp_path / "s.duckdb"), "--set", item)
        err = _assert_one_line_exit_2(result)
        assert item.split("=")[0] in err or item.split("=")[1] in err


def test_nan_and_inf_never_reach_a_validated_field():
    for item in ("lr=nan", "lr=inf", "lr=-inf", "lrs=1,nan"):
        with pytest.raises(LearndynValueError):
            apply_overrides(RichConfig(), [item])
    assert math.isclose(apply_overrides(RichConfig(), ["lr=1e-300"]).lr, 1e-300)


# ------------------------------------------------------------------------------ sweep specs
_NUM = st.one_of(
    st.integers(-3, 40).map(str),
    st.floats(-5, 50, allow_nan=False).map(lambda f: f"{f:.3g}"),
    st.sampled_from(["0", "1e-3", "1e400", "nan", "-inf", "x", "", "1,", "red", "true", "none"]),
)
_CALL = st.builds(
    lambda f, args: f"{f}({','.join(args)})",
    st.sampled_from(["range", "linspace", "logspace", "uniform", "loguniform", "randint", "choice", "exp"]),
    st.lists(_NUM, max_size=4),
)
_AXIS_VALUES = st.one_of(_CALL, st.lists(_NUM, max_size=4).map(",".join), _NUM, st.text(max_size=12))
_GRID_ITEMS = st.one_of(st.builds(lambda k, v: f"{k}={v}", _KEYS, _AXIS_VALUES), st.text(max_size=15))


def _check_plan_or_error(build, names) -> None:
    from learndyn.sweep.spec import SweepSpecError

    try:
        plan = build()
    except Exception as exc:  # noqa: BLE001
        message = _one_line_error(exc)
        assert isinstance(exc, SweepSpecError | LearndynValueError)
        assert any(n and n in message for n in names) or "axes" in message or "samples" in message, (
            names,
            message,
        )
    else:
        assert len(plan) >= 1
        for point in plan.points:
            assert _well_typed(point.config), point.config


@settings(max_examples=300, deadline=None)
@given(
    grid=st.lists(_GRID_ITEMS, max_size=3),
    sets=st.lists(_SET_ITEMS, max_size=2),
    samples=st.one_of(st.none(), st.integers(-2, 4)),
)
def test_sweep_specs_from_the_command_line_expand_typed_or_fail_in_one_line(grid, sets, samples):
    spec_mod = pytest.importorskip("learndyn.sweep.spec")
    keys = [item.split("=", 1)[0].strip() for item in grid + sets]
    names = keys + [repr(k) for k in keys] + grid + sets + [repr(item) for item in grid + sets]

    def build():
        return spec_mod.SweepSpec.from_cli(NOOP, grid, sets, samples=samples).expand()

    _check_plan_or_error(build, names)


_SMALL_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.floats(-1e3, 1e3), st.text(max_size=8))
    | _CALL,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
_FILE_KEYS = ["experiment", "name", "set", "grid", "samples", "sweep_seed", "quick"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.fixed_dictionaries(
        {"experiment": st.just(NOOP)},
        optional={
            "grid": st.dictionaries(_KEYS, st.one_of(_AXIS_VALUES, _SMALL_JSON), max_size=3),
            "set": st.dictionaries(_KEYS, _SMALL_JSON, max_size=2),
            "samples": st.one_of(st.integers(-1, 3), _SMALL_JSON),
            "name": _SMALL_JSON,
            "quick": _SMALL_JSON,
            "bogus": _SMALL_JSON,
        },
    ),
    suffix=st.sampled_from([".json", ".yaml"]),
)
def test_sweep_spec_files_expand_typed_or_fail_in_one_line(tmp_path, data, suffix):
    import json

    import yaml

    spec_mod = pytest.importorskip("learndyn.sweep.spec")
    if isinstance(data.get("samples"), int) and not isinstance(data["samples"], bool) and data["samples"] > 4:
        data["samples"] = 4
    path = tmp_path / f"spec{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    names = [str(k) for k in data.get("grid", {})] + [str(k) for k in data.get("set", {})]
    names += [repr(k) for k in data.get("grid", {})] + [repr(k) for k in data.get("set", {})]
    names += _FILE_KEYS + ["bogus", str(path)]

    def build():
        return spec_mod.SweepSpec.from_file(path).expand()

    _check_plan_or_error(build, names)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grid=st.lists(_GRID_ITEMS.filter(lambda s: "\x00" not in s and not s.startswith("-")), max_size=2))
def test_cli_sweep_dry_run_is_accepted_or_one_line_exit_2(tmp_path, grid):
    pytest.importorskip("learndyn.sweep.spec")
    if any(0xD800 <= ord(c) <= 0xDFFF for item in grid for c in item):
        return
    args = ["sweep", NOOP, "--dry-run", "--store", str(tmp_path / "s.duckdb"), "--executor", "serial"]
    for item in grid:
        args += ["--grid", item]
    result = _invoke(*args)
    if result.exit_code != 0:
        _assert_one_line_exit_2(result)
