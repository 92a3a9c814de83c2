"""Config overrides (``--set key=value``) with type coercion, and config <-> dict."""

from __future__ import annotations

import dataclasses
import enum
from typing import Literal

import pytest

from learndyn.config import (
    ConfigError,
    apply_overrides,
    config_fields,
    config_from_dict,
    config_to_dict,
    parse_value,
)
from learndyn.validation import LearndynValueError, check_int, check_real


class Schedule(enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


@dataclasses.dataclass
class DemoConfig:
    steps: int = 100
    lr: float = 0.1
    lrs: tuple[float, ...] = (0.1, 0.01)
    widths: list[int] = dataclasses.field(default_factory=lambda: [4, 8])
    pair: tuple[int, float] = (1, 0.5)
    optimizer: Literal["sgd", "adam", "cgd"] = "sgd"
    alpha: Literal[0, 1] = 0
    verbose: bool = False
    tag: str = "run"
    tau: float | None = None
    schedule: Schedule = Schedule.CONSTANT

    def __post_init__(self) -> None:
        check_int("steps", self.steps, low=1, owner="DemoConfig")
        check_real("lr", self.lr, low=0, low_open=True, owner="DemoConfig")


@pytest.mark.parametrize(
    ("item", "field", "expected"),
    [
        ("steps=200", "steps", 200),
        ("steps=1e3", "steps", 1000),
        ("steps=1_000", "steps", 1000),
        ("lr=3e-4", "lr", 3e-4),
        ("lr=2", "lr", 2.0),
        ("lrs=0.1,0.01", "lrs", (0.1, 0.01)),
        ("lrs=[0.5, 0.05]", "lrs", (0.5, 0.05)),
        ("lrs=0.3", "lrs", (0.3,)),
        ("lrs=", "lrs", ()),
        ("widths=16,32,64", "widths", [16, 32, 64]),
        ("pair=3,0.25", "pair", (3, 0.25)),
        ("optimizer=adam", "optimizer", "adam"),
        ("alpha=1", "alpha", 1),
        ("verbose=true", "verbose", True),
        ("verbose=No", "verbose", False),
        ("verbose=1", "verbose", True),
        ("tag=hello world", "tag", "hello world"),
        ("tag=a=b", "tag", "a=b"),
        ("tau=none", "tau", None),
        ("tau=9", "tau", 9.0),
        ("schedule=cosine", "schedule", Schedule.COSINE),
        ("schedule=COSINE", "schedule", Schedule.COSINE),
    ],
)
def test_coercion(item, field, expected):
    config = apply_overrides(DemoConfig(), [item], experiment="demo")
    value = getattr(config, field)
    assert value == expected and type(value) is type(expected)


def test_original_is_untouched_and_later_keys_win():
    base = DemoConfig()
    new = apply_overrides(base, ["steps=5", "steps=7"])
    assert base.steps == 100 and new.steps == 7


def test_unknown_key_names_key_experiment_and_allowed_keys():
    with pytest.raises(ConfigError) as exc:
        apply_overrides(DemoConfig(), ["stpes=5"], experiment="demo")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "'stpes'" in msg and "'demo'" in msg and "steps" in msg and "optimizer" in msg


@pytest.mark.parametrize(
    ("item", "expected_type"),
    [
        ("steps=ten", "int"),
        ("steps=2.5", "int"),
        ("lr=fast", "float"),
        ("verbose=maybe", "bool"),
        ("optimizer=rmsprop", "one of 'sgd', 'adam', 'cgd'"),
        ("alpha=0.5", "one of 0, 1"),
        ("lrs=0.1,x", "comma-separated floats"),
        ("pair=1,2,3", "2 comma-separated values"),
        ("tau=soon", "float or none"),
        ("schedule=linear", "one of 'CONSTANT', 'COSINE'"),
    ],
)
def test_wrong_type_names_field_value_and_expected_type(item, expected_type):
    key, value = item.split("=", 1)
    with pytest.raises(ConfigError) as exc:
        apply_overrides(DemoConfig(), [item], experiment="demo")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{key}={value!r}") and expected_type in msg and "'demo'" in msg


@pytest.mark.parametrize("item", ["steps", "=5", 5])
def test_malformed_items(item):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(DemoConfig(), [item])


def test_post_init_validation_runs_afterwards():
    with pytest.raises(LearndynValueError, match=r"DemoConfig.steps=0 is out of range"):
        apply_overrides(DemoConfig(), ["steps=0"])
    with pytest.raises(LearndynValueError, match="lr"):
        apply_overrides(DemoConfig(), ["lr=-1"])


def test_mapping_overrides_are_used_as_given():
    config = apply_overrides(DemoConfig(), {"steps": 3, "lrs": [0.5], "tag": "q", "lr": "0.2"})
    assert config.steps == 3 and config.lrs == (0.5,) and config.tag == "q" and config.lr == 0.2
    with pytest.raises(ConfigError, match="unknown config key 'nope' for DemoConfig"):
        apply_overrides(DemoConfig(), {"nope": 1})


def test_needs_a_dataclass_instance():
    with pytest.raises(TypeError):
        apply_overrides(DemoConfig, ["steps=1"])
    with pytest.raises(TypeError):
        apply_overrides({"steps": 1}, ["steps=1"])


def test_frozen_dataclass():
    @dataclasses.dataclass(frozen=True)
    class Frozen:
        n: int = 1

    assert apply_overrides(Frozen(), ["n=4"]).n == 4


def test_config_dict_round_trip():
    config = apply_overrides(DemoConfig(), ["lrs=0.3,0.2", "schedule=cosine", "tau=2"])
    data = config_to_dict(config)
    assert data["lrs"] == [0.3, 0.2] and data["schedule"] == "cosine" and data["pair"] == [1, 0.5]
    back = config_from_dict(DemoConfig, data)
    assert back == config
    assert config_to_dict(None) == {}
    assert config_to_dict({"a": (1, 2)}) == {"a": [1, 2]}
    with pytest.raises(ConfigError, match="unknown config key 'zzz'"):
        config_from_dict(DemoConfig, {"zzz": 1})
    with pytest.raises(TypeError):
        config_to_dict(42)


def test_config_fields_and_parse_value():
    fields = {name: (tp, default) for name, tp, default in config_fields(DemoConfig)}
    assert fields["steps"] == ("int", 100)
    assert fields["widths"] == ("comma-separated ints", [4, 8])
    assert fields["tau"][0] == "float or none"
    assert parse_value("0.5", float) == 0.5
    with pytest.raises(ValueError, match="is not int"):
        parse_value("x", int)
