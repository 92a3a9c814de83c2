"""Issue 12's verdict: CovariantGD configurations against tuned AdamW, from a comparison's rows.

Input: rows as :meth:`learndyn.tasks.compare.Comparison.rows` makes them (medians over seeds), at least the
keys ``task, optimizer, steps_to_target, time_to_target, final_loss`` and optionally ``metric``. For a
candidate ``c`` and the baseline ``b`` on a task (:func:`ratio_vs`):

- both reach the target: ``steps ratio = S_b / S_c``, ``time ratio = T_b / T_c`` (``> 1``: ``c`` is faster);
- only ``c`` reaches it: both ratios ``inf``; only ``b``: both ``0``;
- neither does (or ``c`` did not run): no ratio (``None``); the pair is *undecided* -- never a win, and a loss
  of more than 1.5x only if ``c``'s final loss exceeds ``1.5 L_b`` (the ratio ``L_b / L_c`` is reported).

A **win** is ``steps ratio >= 1.3`` and ``time ratio >= 1.1``; **more than 1.5x slower** is ``steps ratio <
1/1.5`` or ``time ratio < 1/1.5`` (or, undecided, ``L_c > 1.5 L_b``). The claims (:func:`verdict`):

1. per task, the best candidate: a winning one if any, else one not more than 1.5x slower, each group in the
   comparison's ranking (fewest median steps to target, then lowest final loss) -- so a configuration with the
   fewest steps but many times AdamW's time to target (``cgd-full``) does not hide a faster one. Does the best
   win on at least ``need_wins`` tasks? Is it never more than 1.5x slower?
2. the best single candidate across tasks (most wins, then fewest tasks more than 1.5x slower, then the
   largest mean ``log`` steps ratio over the tasks, ratios clipped to ``[1e-3, 1e3]``, a task where it did not
   run or is undecided counting as ``1e-3``; then the mean ``log`` final-loss ratio ``L_b / L_c``) -- the
   same two questions;
3. optional metric checks, e.g. ``test_accuracy >= 0.94`` on MNIST-1D CNN, and ``val_bits_per_char``
   ``<=`` the baseline's at the same step budget -- for the per-task best candidate and, when it differs,
   for the best single candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from learndyn.tasks.compare import rank_key
from learndyn.validation import LearndynValueError

Row = Mapping[str, Any]
WIN_STEPS = 1.3
"""A win needs at least this many times fewer steps to target than the baseline..."""
WIN_TIME = 1.1
"""... and at least this many times less (CPU) time to target."""
SLOWER = 1.5
""""Never more than this many times slower" than the baseline, in steps or in time."""
CLIP = 1e3


def ratio_vs(candidate: Row | None, baseline: Row) -> dict[str, Any]:
    """How ``candidate`` compares with ``baseline`` on one task; see the module doc for every case.

    Returns ``steps_ratio``, ``time_ratio`` (``None`` when undecided), ``loss_ratio`` (``L_b / L_c``; ``None``
    if either did not finish), ``win`` and ``slower`` (more than 1.5x slower).
    """
    loss_b = baseline.get("final_loss")
    if candidate is None or candidate.get("final_loss") is None:
        return {"steps_ratio": None, "time_ratio": None, "loss_ratio": None, "win": False, "slower": True}
    loss_ratio = None if loss_b is None else loss_b / max(candidate["final_loss"], 1e-300)
    s_c, s_b = candidate.get("steps_to_target"), baseline.get("steps_to_target")
    t_c, t_b = candidate.get("time_to_target"), baseline.get("time_to_target")
    if s_c is None and s_b is None:
        slower = loss_ratio is not None and loss_ratio < 1 / SLOWER
        return {"steps_ratio": None, "time_ratio": None, "loss_ratio": loss_ratio, "win": False,
                "slower": slower}
    if s_b is None:
        steps_ratio = time_ratio = math.inf
    elif s_c is None:
        steps_ratio = time_ratio = 0.0
    else:
        steps_ratio = s_b / max(s_c, 1)
        time_ratio = math.inf if not t_c else (t_b or 0.0) / t_c
    return {
        "steps_ratio": steps_ratio,
        "time_ratio": time_ratio,
        "loss_ratio": loss_ratio,
        "win": steps_ratio >= WIN_STEPS and time_ratio >= WIN_TIME,
        "slower": steps_ratio < 1 / SLOWER or time_ratio < 1 / SLOWER,
    }


def _score(ratio: float | None) -> float:
    return math.log(1 / CLIP) if ratio is None else math.log(min(max(ratio, 1 / CLIP), CLIP))


def verdict(
    rows: Sequence[Row],
    *,
    baseline: str | Sequence[str] = "adamw",
    is_candidate: Callable[[str], bool] = lambda name: name.startswith("cgd-"),
    need_wins: int = 3,
    metric_checks: Sequence[tuple[str, str, float | None]] = (),
) -> dict[str, Any]:
    """Per-task best candidate and best single candidate against ``baseline``; see the module doc.

    ``metric_checks``: ``(task, op, threshold)`` with ``op`` ``">="`` (the best candidate's median ``metric``
    is at least ``threshold``) or ``"<=base"`` (at most the baseline's ``metric`` on that task;
    ``threshold`` ignored). ``baseline``: one label, or several -- e.g. ``("adamw", "adam")``, AdamW with its
    weight decay tuned over ``{0.01, 0}`` -- of which each task uses its best-ranked row (fewest steps to
    target, then lowest final loss; ``per_task[i]["baseline"]`` says which). Returns ``{"per_task": [...],
    "single": [...], "single_best": label, "checks": [{"check", "value", "target", "passed"}, ...]}``.
    Raises if a task lacks every baseline.
    """
    names = (baseline,) if isinstance(baseline, str) else tuple(baseline)
    shown = " / ".join(names)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by_task = {t: [r for r in rows if r["task"] == t] for t in tasks}
    base: dict[str, Row] = {}
    for task, task_rows in by_task.items():
        found = sorted((r for r in task_rows if r["optimizer"] in names and r.get("final_loss") is not None),
                       key=rank_key) or [r for r in task_rows if r["optimizer"] in names]
        if not found:
            raise LearndynValueError(f"verdict: task {task!r} has no {shown!r} row; allowed: rows with one")
        base[task] = found[0]
    candidates = list(dict.fromkeys(r["optimizer"] for r in rows if is_candidate(r["optimizer"])))
    per_task = []
    for task, task_rows in by_task.items():
        ran = [r for r in task_rows if is_candidate(r["optimizer"]) and r.get("final_loss") is not None]
        judged = {r["optimizer"]: ratio_vs(r, base[task]) for r in ran}
        ran.sort(key=lambda r: (not judged[r["optimizer"]]["win"], judged[r["optimizer"]]["slower"],
                                *rank_key(r)))
        best = ran[0] if ran else None
        per_task.append({"task": task, "baseline": base[task]["optimizer"],
                         "best": best["optimizer"] if best else None,
                         "metric": best.get("metric") if best else None,
                         "baseline_metric": base[task].get("metric"), **ratio_vs(best, base[task])})
    single = []
    for name in candidates:
        found = {t: next((r for r in by_task[t] if r["optimizer"] == name), None) for t in tasks}
        ratios = {t: ratio_vs(found[t], base[t]) for t in tasks}
        single.append({
            "optimizer": name,
            "wins": sum(r["win"] for r in ratios.values()),
            "slower_on": [t for t, r in ratios.items() if r["slower"]],
            "mean_log_steps_ratio": sum(_score(r["steps_ratio"]) for r in ratios.values()) / len(tasks),
            "mean_log_loss_ratio": sum(_score(r["loss_ratio"]) for r in ratios.values()) / len(tasks),
            "ratios": ratios,
        })
    single.sort(key=lambda s: (-s["wins"], len(s["slower_on"]), -s["mean_log_steps_ratio"],
                               -s["mean_log_loss_ratio"]))
    checks = []
    wins = sum(p["win"] for p in per_task)
    checks.append(_check(f"best CovariantGD per task: >= {WIN_STEPS}x fewer steps and >= {WIN_TIME}x less "
                         f"time than {shown}, on how many tasks", wins, f">= {need_wins} of {len(tasks)}",
                         wins >= need_wins))
    slow = [p["task"] for p in per_task if p["slower"]]
    checks.append(_check(f"best CovariantGD per task: tasks more than {SLOWER}x slower than {shown}",
                         ", ".join(slow) or "none", "none", not slow))
    if single:
        top = single[0]
        checks.append(_check(f"best single configuration ({top['optimizer']}): tasks won", top["wins"],
                             f">= {need_wins} of {len(tasks)}", top["wins"] >= need_wins))
        checks.append(_check(f"best single configuration ({top['optimizer']}): tasks more than {SLOWER}x "
                             "slower",
                             ", ".join(top["slower_on"]) or "none", "none", not top["slower_on"]))
    top_name = single[0]["optimizer"] if single else None
    for task, op, threshold in metric_checks:
        entry = next((p for p in per_task if p["task"] == task), None)
        if entry is None:
            continue
        if op not in (">=", "<=base"):
            raise LearndynValueError(f"verdict: metric check op={op!r}; allowed: '>=', '<=base'")
        ref = entry["baseline_metric"]
        top = next((r for r in by_task[task] if r["optimizer"] == top_name), None)
        judged_rows = [("per task", entry["best"], entry["metric"])]
        if top_name is not None and top_name != entry["best"]:
            judged_rows.append(("single", top_name, top.get("metric") if top else None))
        for which, name, value in judged_rows:
            if op == ">=":
                target, passed = f">= {threshold}", value is not None and value >= (threshold or 0.0)
            else:
                who = entry["baseline"]
                target = f"<= {who}'s {ref:.4g}" if ref is not None else f"<= {who}'s (missing)"
                passed = value is not None and ref is not None and value <= ref
            label = "best CovariantGD per task" if which == "per task" else "best single configuration"
            checks.append(_check(f"{task}: metric of the {label} ({name})", value, target, passed))
    return {"per_task": per_task, "single": single, "single_best": single[0]["optimizer"] if single else None,
            "checks": checks}


def _check(name: str, value: Any, target: str, passed: bool) -> dict[str, Any]:
    return {"check": name, "value": value, "target": target, "passed": bool(passed)}
