"""One store holding every kind of report the CLI writes, for the report tests (unit and browser).

- ``run``: one run of an unregistered experiment with theory/sim pairs, probe series, a single-value metric
  and arrays;
- ``phenomena``: three runs of closed-form experiments with agreement/tolerance/passed;
- ``comparison``: a run named ``optimizer-comparison`` with its summary keys and loss curves (its registry
  record's verdict and figure apply);
- ``sweep``: a 2 × 2 grid × 2 seeds sweep.

``XSS`` is used as a config key, a run name, a metric name and a summary key: every report must escape it.
"""

from __future__ import annotations

import math

import numpy as np

from learndyn.store import RunStore

XSS = "<img src=x onerror=alert(1)>"


def log_run(store: RunStore, name: str, config: dict, steps: int = 30, *, sweep_id: str | None = None,
            summary: dict | None = None, rate: float = 0.1) -> str:
    with store.start_run(name, config, seed=config.get("seed", 0), sweep_id=sweep_id) as run:
        for t in range(steps):
            run.log(t, {
                "loss": math.exp(-rate * t) + 1e-3,
                "theory/decay": math.exp(-rate * t),
                "sim/decay": math.exp(-rate * t) * 1.01,
                "noise/temperature": 0.1 + 0.01 * math.sin(t),
                "symmetry/rescale/0-2/drift": 1e-4 * t,
                f"custom/{XSS}": float(t),
            })
            if t % 10 == 0:
                run.log_array(t, "curvature/top_eigenvalues", np.linspace(3, 1, 6) * math.exp(-rate * t))
        run.log(0, {"target/only-once": 0.5})  # a single value: a table row, never a plot
        run.log_array(steps - 1, "kernel/matrix", np.eye(4))
        run.set_summary(summary or {"final_loss": math.exp(-rate * steps), XSS: 1.0})
    return run.id


def build_store(store: RunStore) -> dict[str, list[str]]:
    """Every report kind's run ids (``sweep``: the sweep id)."""
    kinds: dict[str, list[str]] = {}
    kinds["run"] = [log_run(store, XSS, {XSS: "v", "lr": 0.1, "seed": 0})]
    kinds["phenomena"] = [
        log_run(store, name, {"tolerance": tol, "seed": 0, "width": 4 + k}, summary={
            "agreement": agreement, "tolerance": tol, "passed": agreement <= tol, XSS: 2.0,
        })
        for k, (name, agreement, tol) in enumerate(
            [("phen-a", 0.01, 0.02), ("phen-b", 0.004, 0.05), ("phen-c", 0.09, 0.05)]
        )
    ]
    summary, tasks, optimizers = {}, ("rosenbrock-2d", "digits"), ("sgd", "adam", "cgd-diag")
    with store.start_run("optimizer-comparison", {"tasks": list(tasks), "seeds": 1}, seed=0) as run:
        for i, task in enumerate(tasks):
            run.log(0, {f"target/{task}": 1e-2})
            for j, opt in enumerate(optimizers):
                rate = 0.05 * (j + 1) * (i + 1)
                for t in range(0, 100, 10):
                    run.log(t, {f"loss/{task}/{opt}": math.exp(-rate * t)})
                summary[f"final_loss/{task}/{opt}"] = math.exp(-rate * 100)
                summary[f"steps_to_target/{task}/{opt}"] = math.ceil(math.log(100) / rate / 10) * 10
        run.set_summary(summary)
    kinds["comparison"] = [run.id]
    for a in (0.1, 0.3):
        for b in (1, 2):
            for seed in (0, 1):
                log_run(store, "grid-demo", {"a": a, "b": b, "seed": seed}, steps=12, sweep_id="grid",
                        rate=a * b, summary={"final_loss": math.exp(-a * b * 12) + 0.01 * seed})
    kinds["sweep"] = ["grid"]
    return kinds
