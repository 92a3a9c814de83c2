"""The verdict a report opens with: the answer before the evidence.

- **Theory vs simulation** (runs whose summary has ``agreement``): per run the agreement figure, the
  tolerance it is tested against and whether it passes, with a one-line count of passes.
- **Reproduction checks**: the same for experiments without a closed form whose figure checks that a
  published result is reproduced (``Experiment.reproduction``: grokking's shortfall), listed apart.
- **Experiment verdicts**: the rows an experiment's registry record computes from a run's summary
  (``Experiment.verdict``; the optimizer comparison's winners and margins).
- **Sweeps**: per metric the best cell of the phase diagram (mean ± std over the runs sharing the swept
  values), where it is, and the worst cell for scale.
- Otherwise: each run's status and final loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learndyn.report.data import RunData, format_value
from learndyn.store.runstore import RunStore


@dataclass
class Verdict:
    """One verdict table: a title, an optional headline sentence, headers, rows, per-cell CSS classes."""

    title: str
    headers: list[str]
    rows: list[list[Any]]
    headline: str = ""
    classes: list[list[str | None]] = field(default_factory=list)


def _is_reproduction(run: RunData) -> bool:
    from learndyn.phenomena import registry

    experiment = registry.find(run.info.get("experiment") or run.info.get("name"))
    return experiment is not None and experiment.reproduction


def agreement_verdict(runs: Sequence[RunData], reproduction: bool = False) -> Verdict | None:
    """Agreement, tolerance and pass of every run whose summary has an ``agreement``: the theory
    agreements, or with ``reproduction=True`` the reproduction checks (experiments without a closed form)."""
    judged = [
        r for r in runs
        if _number(r.info["summary"].get("agreement")) is not None and _is_reproduction(r) == reproduction
    ]
    if not judged:
        return None
    rows, classes, passed = [], [], 0
    for r in judged:
        summary = r.info["summary"]
        agreement = _number(summary.get("agreement"))
        tolerance = _number(summary.get("tolerance"))
        ok = summary.get("passed")
        if ok is None and agreement is not None and tolerance is not None:
            ok = agreement <= tolerance
        ok = bool(ok) and r.info["status"] == "completed"
        passed += ok
        experiment = r.info.get("experiment") or r.info["name"]
        run = r.id[:8] if r.label == experiment else f"{r.label} ({r.id[:8]})"
        rows.append([experiment, run,
                     agreement, tolerance, "pass" if ok else "FAIL", r.info["status"]])
        classes.append([None, None, None, None, "pass" if ok else "fail", f"status-{r.info['status']}"])
    if reproduction:
        return Verdict(
            "Reproduction checks (no closed form)",
            ["experiment", "run", "shortfall", "tolerance", "pass", "status"],
            rows,
            f"{passed} of {len(judged)} reproduce the published behaviour: shortfall ≤ tolerance.",
            classes,
        )
    return Verdict(
        "Theory vs simulation",
        ["experiment", "run", "agreement", "tolerance", "pass", "status"],
        rows,
        f"{passed} of {len(judged)} pass: agreement ≤ tolerance (lower agreement is better).",
        classes,
    )


def experiment_verdicts(runs: Sequence[RunData]) -> list[Verdict]:
    """The verdict tables the runs' experiments declare (``Experiment.verdict``)."""
    from learndyn.phenomena import registry

    out = []
    for r in runs:
        experiment = registry.find(r.info.get("experiment"))
        if experiment is None or experiment.verdict is None:
            continue
        rows = experiment.verdict(r.info["summary"] or {})
        if not rows:
            continue
        headers = list(dict.fromkeys(k for row in rows for k in row))
        title = f"{experiment.name}" if len(runs) == 1 else f"{experiment.name} — {r.label}"
        out.append(Verdict(title, headers, [[row.get(h) for h in headers] for row in rows]))
    return out


def _lower_is_better(metric: str) -> bool:
    low = metric.lower()
    return not any(word in low for word in ("acc", "snr", "alignment", "reached"))


def sweep_verdict(store: RunStore, sweep_id: str, max_metrics: int = 4) -> Verdict | None:
    """The best and worst cells of the sweep's phase diagram, for its most telling metrics."""
    from learndyn.report.phase import default_metrics, phase_table, sweep_frame, swept_fields

    frame = sweep_frame(store, sweep_id)
    if frame.empty:
        return None
    fields = swept_fields(frame)
    metrics = default_metrics(frame, limit=max_metrics)
    if not metrics:
        return None
    x, y = (fields + [None, None])[:2]
    rows = []
    for metric in metrics:
        if x is None:  # only replicates varied: the spread over them
            values = pd_numeric(frame, metric)
            finite = values[np.isfinite(values)]
            if not finite.size:
                continue
            rows.append([metric, f"{format_value(finite.mean())} ± {format_value(finite.std())}",
                         "every run", int(finite.size), int((frame["status"] == "diverged").sum()), None])
            continue
        table = phase_table(frame, x, y, metric)
        good = table[np.isfinite(table["mean"].to_numpy(dtype=float))]
        if good.empty:
            continue
        lower = _lower_is_better(metric)
        best = good.loc[good["mean"].idxmin() if lower else good["mean"].idxmax()]
        worst = good.loc[good["mean"].idxmax() if lower else good["mean"].idxmin()]
        where = f"{x}={format_value(best['x'])}" + (f", {y}={format_value(best['y'])}" if y else "")
        rows.append([
            metric + (" (lower is better)" if lower else " (higher is better)"),
            f"{format_value(best['mean'])} ± {format_value(best['std'])}",
            where,
            int(best["n"]),
            int(table["diverged"].sum()),
            format_value(worst["mean"]),
        ])
    if not rows:
        return None
    aggregated = [f for f in swept_fields(frame, include_replicates=True) if f not in (x, y)]
    over = f"; mean ± std over {', '.join(aggregated)}" if aggregated else ""
    return Verdict(
        f"Sweep {sweep_id}: best cell",
        ["metric", "best (mean ± std)", "at", "runs in cell", "diverged runs (sweep)", "worst cell"],
        rows,
        f"{len(frame)} finished runs over {', '.join(fields) or 'replicates only'}{over}.",
    )


def pd_numeric(frame: Any, metric: str) -> np.ndarray:
    import pandas as pd

    for col in (f"summary.{metric}", f"final.{metric}"):
        if col in frame.columns:
            return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
    return np.array([], dtype=float)


def status_verdict(runs: Sequence[RunData]) -> Verdict:
    """Each run's status, steps and final loss (for runs with no other verdict)."""
    rows, classes = [], []
    for r in runs:
        loss_names = [n for n in ("test/loss", "loss") if n in r.series]
        final = None
        if loss_names:
            steps, values = r.series[loss_names[0]]
            final = float(values[-1]) if len(values) else None
        last_step = max((int(s[-1]) for s, _ in r.series.values() if len(s)), default=None)
        rows.append([r.label, r.info.get("experiment") or r.info["name"], r.info["status"], last_step,
                     (loss_names[0] if loss_names else None), final, r.info.get("error")])
        classes.append([None, None, f"status-{r.info['status']}", None, None, None, None])
    headers = ["run", "experiment", "status", "last step", "loss metric", "final value", "error"]
    return Verdict("Runs", headers, rows, classes=classes)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if not math.isnan(float(value)) else None
