"""A user's own experiment in `learndyn run` and `learndyn sweep`: a ``module:function`` reference (a run
function with an annotated config dataclass, or an Experiment record), found in the current directory."""

from __future__ import annotations

import textwrap

import pytest

from learndyn.phenomena import registry

MODULE = textwrap.dedent(
    '''
    """A user's experiment module (not part of learndyn)."""
    from dataclasses import dataclass

    from learndyn.phenomena.registry import Experiment, ExperimentResult


    @dataclass
    class Config:
        a: float = 1.0
        seed: int = 0


    def quadratic(config: Config, recorder):
        """Gradient descent on a * x**2."""
        x = 1.0
        for step in range(5):
            recorder.log(step, {"loss": config.a * x * x})
            x -= 0.1 * 2 * config.a * x
        return {"final_loss": config.a * x * x}


    def _run(config: Config, recorder):
        recorder.log(0, {"loss": config.a})
        return ExperimentResult(summary={"a": config.a})


    RECORD = Experiment("user-record", "an Experiment record", Config, _run)
    '''
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_exp_mod.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield "user_exp_mod"
    for key in [k for k in registry._REGISTRY if k.startswith("user_exp_mod:") or k == "user-record"]:
        del registry._REGISTRY[key]


def test_sweep_a_user_function(cli, store, user_module):
    result = cli("sweep", f"{user_module}:quadratic", "-g", "a=0.5,1,2", "--executor", "serial")
    assert result.exit_code == 0, result.output
    runs = store.runs()
    assert len(runs) == 3 and set(runs["status"]) == {"completed"}
    assert set(runs["name"]) == {f"{user_module}:quadratic"}
    assert sorted(r["final_loss"] for r in runs["summary"]) == pytest.approx(
        sorted(a * (1 - 0.2 * a) ** 10 for a in (0.5, 1, 2))
    )


def test_run_a_user_record_and_bad_references(cli, store, user_module):
    result = cli("run", f"{user_module}:RECORD", "--set", "a=3")
    assert result.exit_code == 0, result.output
    assert store.run_info(store.runs()["id"].iloc[-1])["summary"]["a"] == 3.0
    bad = cli("run", f"{user_module}:nope")
    assert bad.exit_code == 2 and "has no 'nope'" in bad.output
    missing = cli("sweep", "no_such_module_xyz:f", "-g", "a=1,2")
    assert missing.exit_code == 2 and "cannot import" in missing.output
