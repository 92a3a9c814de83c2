"""Sweep specs: the axis grammar, validation against an experiment's config fields (one-line errors before
anything runs), deterministic expansion and sweep ids, spec files (YAML, TOML)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learndyn.phenomena.mlp_teacher import MLPTeacherConfig
from learndyn.sweep.spec import SweepSpec, SweepSpecError, config_hash, field_types, parse_axis

EXP = "mlp-teacher"
TYPES = field_types(MLPTeacherConfig)


def axis(key: str, text):
    return parse_axis(key, text, TYPES[key], experiment=EXP)


# ------------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize(
    ("key", "text", "values"),
    [
        ("lr", "0.1,0.01", (0.1, 0.01)),
        ("lr", "0.1,", (0.1,)),
        ("seed", "range(3)", (0, 1, 2)),
        ("seed", "range(2, 8, 3)", (2, 5)),
        ("alpha", "linspace(0, 1, 5)", (0.0, 0.25, 0.5, 0.75, 1.0)),
        ("steps", "linspace(10, 40, 4)", (10, 20, 30, 40)),
        ("steps", "logspace(10, 1000, 3)", (10, 100, 1000)),
        ("optimizer", "sgd,adam", ("sgd", "adam")),
        ("dtype", "float64", ("float64",)),
        ("lr", [0.5, 1], (0.5, 1.0)),  # a YAML list; ints coerced to the float field
        ("seed", 7, (7,)),
    ],
)
def test_grid_axes(key, text, values):
    a = axis(key, text)
    assert not a.is_random
    assert a.values == values
    assert all(type(v) is type(values[0]) for v in a.values)


def test_logspace_has_exact_ends_and_log_spacing():
    a = axis("lr", "logspace(1e-3, 1e-1, 5)")
    assert a.values[0] == 1e-3 and a.values[-1] == 1e-1
    np.testing.assert_allclose(np.diff(np.log10(a.values)), 0.5)


def test_random_axes_are_seeded_and_in_range():
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    u = axis("lr", "uniform(0.1, 0.2)")
    lu = axis("lr", "loguniform(1e-4, 1e-1)")
    ri = axis("seed", "randint(5, 7)")
    ch = axis("optimizer", "choice(sgd, adam)")
    draws1 = [(u.sampler(rng1), lu.sampler(rng1), ri.sampler(rng1), ch.sampler(rng1)) for _ in range(50)]
    draws2 = [(u.sampler(rng2), lu.sampler(rng2), ri.sampler(rng2), ch.sampler(rng2)) for _ in range(50)]
    assert draws1 == draws2
    assert all(
        0.1 <= a < 0.2 and 1e-4 <= b <= 1e-1 and c in (5, 6, 7) and d in ("sgd", "adam")
        for a, b, c, d in draws1
    )
    assert {c for _, _, c, _ in draws1} == {5, 6, 7}


@pytest.mark.parametrize(
    ("key", "text", "needle"),
    [
        ("lr", "a,b", "lr='a' has the wrong type"),
        ("seed", "0.5", "expected: int"),
        ("optimizer", "sgd,rmsprop", "optimizer='rmsprop'"),
        ("steps", "linspace(1, 2, 3)", "not a whole number"),
        ("lr", "logspace(0, 1, 3)", "start > 0"),
        ("lr", "linspace(0, 1)", "linspace(start, stop, num)"),
        ("lr", "linspace(0, 1, 0)", "1 <= num <= 100000"),
        ("lr", "linspace(0, 1, 10000000)", "1 <= num <= 100000"),
        ("seed", "range(1000000000)", "has 1000000000 values; allowed: at most 100000"),
        ("seed", "range(0)", "is empty"),
        ("lr", "uniform(1)", "uniform(low, high)"),
        ("seed", "uniform(0, 1)", "needs a float field"),
        ("lr", "randint(0, 3)", "needs an int field"),
        ("lr", "loguniform(0, 1)", "low > 0"),
        ("lr", "gauss(0, 1)", "unknown function 'gauss'"),
        ("optimizer", "linspace(0, 1, 3)", "needs a numeric field"),
        ("lr", "", "has no values"),
        ("lr", "0.1,,0.2", "empty value"),
        ("lr", [], "has no values"),
    ],
)
def test_bad_axes_are_one_line(key, text, needle):
    with pytest.raises(SweepSpecError) as info:
        axis(key, text)
    message = str(info.value)
    assert needle in message and "\n" not in message


# ------------------------------------------------------------------------------------------------ expansion
def test_expand_product_order_overrides_and_hashes():
    spec = SweepSpec.from_cli(EXP, ["lr=0.1,0.01", "seed=range(3)"], ["steps=5", "optimizer=adam"])
    plan = spec.expand()
    assert len(plan) == 6 and plan.swept_fields == ["lr", "seed"]
    assert [(p.values["lr"], p.values["seed"]) for p in plan.points] == [
        (0.1, 0),
        (0.1, 1),
        (0.1, 2),
        (0.01, 0),
        (0.01, 1),
        (0.01, 2),
    ]
    assert all(p.config.steps == 5 and p.config.optimizer == "adam" for p in plan.points)
    assert len({p.hash for p in plan.points}) == 6
    assert (
        plan.points[0].hash == config_hash(plan.points[0].config) == config_hash(plan.points[0].config_dict)
    )
    # deterministic id from the configs; the same configs give the same id however they are written
    again = SweepSpec.from_cli(EXP, ["lr=[0.1,0.01]", "seed=0,1,2"], ["optimizer=adam", "steps=5"]).expand()
    assert again.sweep_id == plan.sweep_id and again.sweep_id.startswith(EXP + "-")
    other = SweepSpec.from_cli(EXP, ["lr=0.1,0.01", "seed=range(4)"], ["steps=5"]).expand()
    assert other.sweep_id != plan.sweep_id
    named = SweepSpec.from_cli(EXP, ["lr=0.1"], name="my-sweep_1.0").expand()
    assert named.sweep_id == "my-sweep_1.0"


def test_random_sweep_is_deterministic_given_the_sweep_seed():
    def plan(seed):
        return SweepSpec.from_cli(
            EXP, ["lr=loguniform(1e-3,1e-1)", "alpha=uniform(0,1)", "seed=0,1"], samples=4, sweep_seed=seed
        ).expand()

    a, b, c = plan(0), plan(0), plan(1)
    assert len(a) == 8
    assert [p.hash for p in a.points] == [p.hash for p in b.points]
    assert a.sweep_id == b.sweep_id != c.sweep_id
    # the grid axis is outer, the joint draws inner: each seed sees the same 4 (lr, alpha) draws
    draws = [(p.values["lr"], p.values["alpha"]) for p in a.points]
    assert draws[:4] == draws[4:]


def test_quick_and_duplicates():
    plan = SweepSpec.from_cli(EXP, ["lr=0.1,0.1,0.2"], quick=True).expand()
    assert len(plan) == 2 and plan.duplicates == 1
    assert plan.points[0].config.steps == 40  # the experiment's quick config


@pytest.mark.parametrize(
    ("grid", "sets", "kwargs", "needle"),
    [
        (["foo=1,2"], [], {}, "unknown config key 'foo' for experiment 'mlp-teacher'; allowed: activation"),
        ([], [], {}, "no axes"),
        (["lr=0.1"], ["bar=3"], {}, "unknown config key 'bar'"),
        (["lr=0.1"], ["lr=0.2"], {}, "both swept"),
        (["lr=uniform(0,1)"], [], {}, "needs --samples"),
        (["lr=0.1"], [], {"samples": 3}, "needs a random axis"),
        (["lr=uniform(0,1)"], [], {"samples": 0}, "1 <= samples"),
        (["lr=uniform(0,1)"], [], {"samples": 10**6}, "1 <= samples <= 100000"),
        (["lr=logspace(1e-3,1,1000)", "seed=range(1000)"], [], {}, "1000000 runs (1000 x 1000); allowed"),
        (["lr=uniform(0,1)", "seed=range(1000)"], [], {"samples": 200}, "200000 runs (1000 x 200)"),
        (["lr=-0.1,0.1"], [], {}, "invalid config at lr=-0.1"),
        (["lr=0.1"], [], {"name": "bad name"}, "name='bad name' is not allowed"),
    ],
)
def test_spec_validation_is_one_line(grid, sets, kwargs, needle):
    with pytest.raises(SweepSpecError) as info:
        SweepSpec.from_cli(EXP, grid, sets, **kwargs).expand()
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_unknown_experiment_and_repeated_grid_key():
    with pytest.raises(SweepSpecError, match="experiment='nope' is not known"):
        SweepSpec.from_cli("nope", ["lr=0.1"]).expand()
    with pytest.raises(SweepSpecError, match="given twice"):
        SweepSpec.from_cli(EXP, ["lr=0.1", "lr=0.2"])
    with pytest.raises(SweepSpecError, match="key=value"):
        SweepSpec.from_cli(EXP, ["lr"])


# ------------------------------------------------------------------------------------------------ files
def test_yaml_and_toml_files_give_the_same_plan(tmp_path):
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text(
        "experiment: mlp-teacher\nset: {steps: 7, optimizer: adam}\n"
        "grid:\n  lr: logspace(1e-3, 1e-1, 3)\n  seed: [0, 1]\n  alpha: uniform(0, 1)\n"
        "samples: 2\nsweep_seed: 5\n"
    )
    toml_file = tmp_path / "s.toml"
    toml_file.write_text(
        'experiment = "mlp-teacher"\nsamples = 2\nsweep_seed = 5\n[set]\nsteps = 7\noptimizer = "adam"\n'
        '[grid]\nlr = "logspace(1e-3, 1e-1, 3)"\nseed = [0, 1]\nalpha = "uniform(0, 1)"\n'
    )
    a = SweepSpec.from_file(yaml_file).expand()
    b = SweepSpec.from_file(toml_file, experiment=EXP).expand()
    assert len(a) == 12 and [p.hash for p in a.points] == [p.hash for p in b.points]
    assert a.sweep_id == b.sweep_id
    assert all(p.config.steps == 7 for p in a.points)
    assert math.isclose(a.points[0].config.lr, 1e-3)
    # command-line axes and settings are added on top of the file's
    merged = SweepSpec.from_file(yaml_file).merged(SweepSpec.from_cli(EXP, ["momentum=0,0.5"], name="x"))
    assert len(merged.expand()) == 24 and merged.name == "x"


@pytest.mark.parametrize(
    ("text", "suffix", "needle"),
    [
        ("grid: {lr: 0.1}\n", ".yaml", "names no experiment"),
        ("experiment: mlp-teacher\ngrids: {lr: 0.1}\n", ".yaml", "unknown key 'grids'"),
        ("experiment: mlp-teacher\ngrid: [1, 2]\n", ".yaml", "grid must be a mapping"),
        ("experiment: mlp-teacher\ngrid: {lr: [0.1\n", ".yaml", "cannot parse sweep spec"),
        ("experiment = 1\n", ".toml", "must be a string"),
        ("experiment: mlp-teacher\n", ".ini", "unknown file type"),
        ("- 1\n", ".yaml", "must be a mapping"),
    ],
)
def test_bad_spec_files(tmp_path, text, suffix, needle):
    path = tmp_path / f"spec{suffix}"
    path.write_text(text)
    with pytest.raises(SweepSpecError) as info:
        SweepSpec.from_file(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_spec_file_experiment_must_agree(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("experiment: mlp-teacher\ngrid: {lr: 0.1}\n")
    with pytest.raises(SweepSpecError, match="is for experiment 'mlp-teacher'"):
        SweepSpec.from_file(path, experiment="symmetry")
    with pytest.raises(SweepSpecError, match="cannot read"):
        SweepSpec.from_file(tmp_path / "missing.yaml")
