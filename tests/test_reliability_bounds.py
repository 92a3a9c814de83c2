"""Input bounds (Reliability II, 5): every integer config field is bounded before anything is allocated or
stored, so a huge step count, seed or size is one line (exit 2 on the command line), not a run that trains
forever, a ``failed`` run with an allocation error or a raw DuckDB conversion error."""

from __future__ import annotations

import dataclasses

import pytest

from learndyn.config import _field_types, apply_overrides, config_from_dict
from learndyn.phenomena import registry
from learndyn.validation import LearndynValueError


def _int_fields():
    for name in registry.names():
        experiment = registry.get(name)
        if experiment.config_cls.__module__.startswith("learndyn."):
            default = experiment.config_cls()
            for key, tp in _field_types(experiment.config_cls).items():
                value = getattr(default, key)
                if "int" in repr(tp) and "float" not in repr(tp) and not isinstance(value, bool):
                    yield name, key, value


INT_FIELDS = list(_int_fields())


def test_every_integer_field_of_every_experiment_is_bounded():
    assert len(INT_FIELDS) > 50
    for name, key, value in INT_FIELDS:
        experiment = registry.get(name)
        huge = (2**64, *value[1:]) if isinstance(value, tuple) else 2**64
        for how in ("overrides", "stored dict"):
            with pytest.raises(LearndynValueError) as info:
                if how == "overrides":
                    apply_overrides(experiment.config_cls(), {key: huge}, experiment=name)
                else:
                    config_from_dict(experiment.config_cls, {key: huge}, experiment=name)
            message = str(info.value)
            assert f"{key}=" in message and "\n" not in message, (name, key, how, message)


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("steps=" + "1234567890" * 4, "steps=<an integer of 130 bits>"),
        ("steps=10000000000", "steps <= 10**9"),
        (f"data_seed={2**64}", "|data_seed| <= 2**63 - 1"),
        (f"seed={2**64}", "|seed| <= 2**63 - 1"),
        ("width=100000000", "smaller width"),
        ("n_train=1000000000000", "smaller width, depth, d_in, teacher_width, n_train"),
    ],
)
def test_huge_values_are_one_line_exit_2_before_anything_is_stored(cli, store_path, item, needle):
    result = cli("run", "mlp-teacher", "--set", item)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert not store_path.exists()


@pytest.mark.parametrize(
    ("experiment", "item", "needle"),
    [
        ("deep-linear", "hidden=1000000000000", "smaller hidden"),
        ("symmetry", "width=1000000000000", "smaller width"),
        ("grokking", "hidden=1000000000000", "smaller p, embed_dim, hidden"),
        ("sgd-stationary", "chains=1000000000000", "smaller chains"),
        ("ntk-lazy", "widths=128,1000000000000", "smaller widths, n_train"),
        ("regimes", "chains=1000000000000", "smaller chains, dim"),
        ("ssl-stepwise", "n_samples=1000000000000", "smaller n_samples"),
        ("grokking-transformer", "d_mlp=1000000000000", "allowed: 1 <= d_mlp <= 16384"),
    ],
)
def test_huge_sizes_of_other_experiments_are_one_line_exit_2(cli, store_path, experiment, item, needle):
    result = cli("run", experiment, "--quick", "--set", item)  # they used to store a failed run, exit 1
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output
    assert not store_path.exists()


def test_a_5000_digit_integer_is_named_by_its_size():
    config = registry.get("mlp-teacher").config_cls
    expected = r"steps=<an integer of 16610 bits> is out of range; allowed: steps <= 10\*\*9"
    with pytest.raises(LearndynValueError, match=expected):
        apply_overrides(config(), {"steps": 10**5000})


def test_the_memory_estimate_takes_the_default_and_quick_configs():
    config = registry.get("mlp-teacher").config_cls
    assert config().memory_estimate() < 2**24  # a few MB: far from any machine's limit
    assert dataclasses.replace(config(), width=4096).memory_estimate() < 2**31
