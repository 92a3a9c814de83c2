"""Issue 12's verdict against tuned AdamW (learndyn.tasks.versus), on synthetic comparison rows."""

from __future__ import annotations

import math

import pytest

from learndyn.tasks.versus import ratio_vs, verdict
from learndyn.validation import LearndynValueError


def row(task, opt, steps, time, loss, metric=None):
    return {"task": task, "optimizer": opt, "steps_to_target": steps, "time_to_target": time,
            "final_loss": loss, "metric": metric}


def test_ratio_cases_reached_one_side_neither_and_not_run():
    base = row("t", "adamw", 100, 1.0, 0.1)
    r = ratio_vs(row("t", "c", 50, 0.8, 0.1), base)
    assert r["steps_ratio"] == 2.0 and r["time_ratio"] == pytest.approx(1.25) and r["win"] and not r["slower"]
    r = ratio_vs(row("t", "c", 50, 1.0, 0.1), base)  # fewer steps but no time gain: not a win
    assert not r["win"] and not r["slower"]
    r = ratio_vs(row("t", "c", 160, 1.0, 0.1), base)  # 1.6x more steps: slower
    assert r["slower"] and r["steps_ratio"] == pytest.approx(0.625)
    r = ratio_vs(row("t", "c", 100, 1.6, 0.1), base)  # same steps, 1.6x the time: slower
    assert r["slower"] and not r["win"]
    assert ratio_vs(row("t", "c", None, None, 0.5), base) | {"loss_ratio": 0} == {
        "steps_ratio": 0.0, "time_ratio": 0.0, "loss_ratio": 0, "win": False, "slower": True}
    r = ratio_vs(row("t", "c", 10, 0.1, 0.01), row("t", "adamw", None, None, 0.5))
    assert math.isinf(r["steps_ratio"]) and r["win"]
    r = ratio_vs(row("t", "c", None, None, 0.2), row("t", "adamw", None, None, 0.5))  # undecided, lower loss
    assert r["steps_ratio"] is None and not r["win"] and not r["slower"] and r["loss_ratio"] == 2.5
    assert ratio_vs(row("t", "c", None, None, 1.0), row("t", "adamw", None, None, 0.5))["slower"]
    assert ratio_vs(None, base)["slower"] and ratio_vs(row("t", "c", None, None, None), base)["slower"]


def synthetic():
    rows = []
    # cgd-a wins on t1, t2, is best but no win on t3 (1.11x), 2x slower on t4; cgd-b wins on t1 and t4
    table = {"t1": (100, (40, 0.5), (60, 0.8)), "t2": (100, (50, 0.6), (100, 1.0)),
             "t3": (100, (90, 0.9), (95, 0.9)), "t4": (100, (200, 2.0), (50, 0.5))}
    for task, (base, a, b) in table.items():
        rows += [row(task, "adamw", base, 1.0, 0.1, 0.9), row(task, "momentum", 10, 0.1, 0.1),
                 row(task, "cgd-a", *a, 0.1, 0.95), row(task, "cgd-b", *b, 0.1, 0.85)]
    return rows


def test_verdict_per_task_best_and_single_best():
    v = verdict(synthetic(), metric_checks=[("t1", ">=", 0.94), ("t4", "<=base", None)])
    best = {p["task"]: p["best"] for p in v["per_task"]}
    assert best == {"t1": "cgd-a", "t2": "cgd-a", "t3": "cgd-a", "t4": "cgd-b"}  # momentum is no candidate
    assert [p["win"] for p in v["per_task"]] == [True, True, False, True]  # t3: 100/90 = 1.11x, no win
    assert not any(p["slower"] for p in v["per_task"])
    # two wins each; cgd-b has the larger mean log steps ratio (2/3 wins tie broken) and is never slow
    a, b = (next(s for s in v["single"] if s["optimizer"] == n) for n in ("cgd-a", "cgd-b"))
    assert a["wins"] == b["wins"] == 2 and a["slower_on"] == ["t4"] and b["slower_on"] == []
    assert b["mean_log_steps_ratio"] > a["mean_log_steps_ratio"] and v["single_best"] == "cgd-b"
    # metric checks: t1's per-task best is cgd-a (0.95), the single best cgd-b (0.85); t4's both are cgd-b
    assert [c["passed"] for c in v["checks"]] == [True, True, False, True, True, False, True]
    assert v["checks"][0]["value"] == 3
    assert [c["value"] for c in v["checks"][4:]] == [0.95, 0.85, 0.85]
    assert "(cgd-b)" in v["checks"][5]["check"] and "single" in v["checks"][5]["check"]


def test_verdict_needs_the_baseline_and_a_known_op():
    with pytest.raises(LearndynValueError, match="no 'adamw' row"):
        verdict([row("t", "cgd-a", 1, 1.0, 0.1)])
    with pytest.raises(LearndynValueError, match="op='<'"):
        verdict(synthetic(), metric_checks=[("t1", "<", 1.0)])


def test_per_task_best_prefers_a_winner_over_the_fewest_steps():
    rows = [row("t", "adamw", 100, 1.0, 0.1), row("t", "cgd-full", 40, 30.0, 0.01),
            row("t", "cgd-diag", 60, 0.5, 0.1), row("t", "cgd-kron", 50, 1.2, 0.1)]
    (best,) = verdict(rows)["per_task"]
    assert best["best"] == "cgd-diag" and best["win"]  # cgd-full: 75x the time; cgd-kron: no time gain
    (best,) = verdict(rows[:2] + rows[3:])["per_task"]
    assert best["best"] == "cgd-kron" and not best["win"] and not best["slower"]  # beats the fewest steps


def test_a_baseline_of_several_labels_takes_each_tasks_best():
    rows = [row("t1", "adamw", 200, 2.0, 0.1), row("t1", "adam", 100, 1.0, 0.1),
            row("t1", "cgd-a", 60, 0.6, 0.1), row("t2", "adamw", 100, 1.0, 0.1),
            row("t2", "adam", None, None, 0.5), row("t2", "cgd-a", 60, 0.6, 0.1)]
    out = verdict(rows, baseline=("adamw", "adam"), need_wins=1)
    assert [p["baseline"] for p in out["per_task"]] == ["adam", "adamw"]
    assert [p["steps_ratio"] for p in out["per_task"]] == pytest.approx([100 / 60, 100 / 60])
    assert "adamw / adam" in out["checks"][0]["check"]
    with pytest.raises(LearndynValueError, match="adamw / adam"):
        verdict([row("t", "cgd-a", 1, 1.0, 0.1)], baseline=("adamw", "adam"))
