"""Learning-rate transfer by grafting: grafted kron and full CovariantGD at Adam's tuned lr vs their own best.

Protocol, per task of the optimizer comparison that is cheap enough on a CPU (``TASKS``; the char
transformer on request): every run is ``STEPS`` steps (the ``learndyn run optimizer-comparison`` budget;
``TASK_STEPS`` for the char transformer) with :func:`learndyn.tasks.compare.train`, scored by its final
full-data loss (diverged: ``inf``), the median over the seeds ``GRAFT_BENCH_SEEDS`` (default ``0,1,2``).
Adam (``torch.optim.Adam``) is tuned on the half-decade grid ``GRID`` (``1e-4 .. 1``). ``kron``/``full``
are the comparison's ``cgd-<structure>-a<α>`` labels (roots every 10 steps, 100 warm-up steps) with
``graft='adam'``, each tuned on half decades around Adam's tuned lr (``KRON_WINDOW``/``FULL_WINDOW`` half
decades either side: a CPU budget, so an own best on the window's edge is flagged). Per grafted optimizer:
its final loss at *Adam's* tuned lr, its own tuned lr and best final loss, their ratio (target ≤ 1.10 on
every task), the same label *without* grafting at Adam's lr, and the task's final metric (MNIST-1D test
accuracy) at both lrs. α = 1 also runs with ``eps_rel=EPS_REL``. ``full`` is skipped above ``MAX_FULL``
parameters (digits, MNIST-1D). ``accuracy`` (MNIST-1D): test accuracy at the task's own 6000-step budget
for ``ACCURACY_RUNS``.

The same comparison is also reported on the tail loss (geometric mean over the last quarter of the
evaluations), as one seed's last value is noisy. Tuning and evaluation share the seeds: the ratio is a
statement about the lr landscape of those runs, not a held-out estimate.
``--quick``: two tasks, kron at α = ½, three lrs, 300 steps.

Workers: ``GRAFT_BENCH_WORKERS=n`` runs the independent training runs in ``n`` processes (1 thread each);
``GRAFT_BENCH_CACHE=path`` appends each finished run to a JSON-lines file and reuses it on the next call
(delete it after changing the code); ``GRAFT_BENCH_TASKS=a,b`` restricts the tasks;
``GRAFT_BENCH_GRID=1e-3,1e-2`` (Adam's grid), ``GRAFT_BENCH_LABELS=cgd-kron-a0.5`` and
``GRAFT_BENCH_KRON_WINDOW=1`` (half decades) shrink the search for dear tasks (the char transformer);
``GRAFT_BENCH_SCHEDULE=cosine`` anneals every run's lr (Adam's too) to 0 over its budget instead of keeping
it constant (a diagnostic: the comparison itself runs at a constant lr). Progress goes to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from learndyn.optim.spec import OptimizerSpec
from learndyn.tasks import get_task
from learndyn.tasks.compare import train

NAME = "graft_lr"
TASKS = ("multiplication", "deep-linear", "rosenbrock-2d", "rosenbrock-100d", "digits",
         "mnist1d-mlp", "mnist1d-cnn")
TASK_STEPS = {"char-transformer": 300}
"""Budgets other than ``STEPS``: the char transformer (~0.15 s per step on one thread) is opt-in
(``GRAFT_BENCH_TASKS``) and runs 300 steps instead of its own 1000."""
ACCURACY_TASKS = ("mnist1d-mlp", "mnist1d-cnn")
ACCURACY_RUNS = (("adamw", False, 1e-2), ("cgd-kron-a0.5", False, 1e-3), ("cgd-kron-a0.5", True, None),
                 ("cgd-kron-a1+eps_rel=0.1", True, None))
"""The test-accuracy check at each task's own budget (6000 steps, the authors' recipe): AdamW at the
authors' lr 1e-2, ungrafted kron α = ½ at README's lr 1e-3, grafted kron at Adam's tuned lr (``None``)."""
GRID = tuple(float(f"{10 ** (k / 2):.3g}") for k in range(-8, 1))  # 1e-4, 3.16e-4, ..., 0.316, 1
STEPS = 1000
ALPHAS = (0.5, 1.0)
STRUCTURES = ("kron", "full")
MAX_FULL = 1000
KRON_WINDOW = 2
EPS_REL = 0.1
FULL_WINDOW = 1
TARGET = 1.10


def _seeds() -> tuple[int, ...]:
    """``GRAFT_BENCH_SEEDS`` (comma-separated; default ``0,1,2``)."""
    return tuple(int(x) for x in os.environ.get("GRAFT_BENCH_SEEDS", "0,1,2").split(",") if x.strip())


SCHEDULES = ("constant", "cosine")


def _schedule() -> str:
    """``GRAFT_BENCH_SCHEDULE``: ``constant`` (default, the comparison's) or ``cosine``."""
    name = os.environ.get("GRAFT_BENCH_SCHEDULE", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"GRAFT_BENCH_SCHEDULE={name!r} is not allowed; allowed: {', '.join(SCHEDULES)}")
    return name


class _Cosine(OptimizerSpec):
    """An :class:`OptimizerSpec` whose optimizer anneals ``lr`` as ``lr·½(1 + cos(π t/T))`` over ``T`` steps
    (``t`` = steps taken; no warm-up), for the ``GRAFT_BENCH_SCHEDULE=cosine`` diagnostic."""

    total: int

    @classmethod
    def of(cls, spec: OptimizerSpec, total: int) -> _Cosine:
        out = cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})
        object.__setattr__(out, "total", total)
        return out

    def build(self, params: Any, lr: float, **options: Any) -> torch.optim.Optimizer:
        opt = super().build(params, lr, **options)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, self.total) / self.total)))
        step = opt.step

        def stepped(closure: Any = None) -> Any:
            out = step(closure)
            sched.step()
            return out

        opt.step = stepped  # type: ignore[method-assign]
        return opt


def _run(job: tuple[str, str, bool, float, int, int]) -> tuple[tuple, dict[str, Any]]:
    """One training run; the value holds the final and tail loss, status, ms per step and the task's final
    metric (``metric``: test accuracy on MNIST-1D, validation bits/char on the char transformer; ``None``
    for tasks without one or a run that did not end ``ok``)."""
    task_name, label, grafted, lr, steps, seed = job
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the override warning of the labels' precondition_every=10
    base, *extra = label.split("+")  # e.g. 'cgd-full-a1+eps_rel=0.1'
    spec = OptimizerSpec.parse(base)
    if extra:
        spec = spec.with_options(**{k: float(v) for k, v in (e.split("=") for e in extra)})
    if grafted:
        spec = spec.with_options(graft="adam")
    if _schedule() == "cosine":
        spec = _Cosine.of(spec, steps)
    task = get_task(task_name)
    r = train(task, spec, lr, seed=seed, steps=steps, eval_every=max(1, steps // 20),
              max_full_params=MAX_FULL)
    metric = r.metrics.get(task.metric_name) if task.metric_name is not None else None  # {} unless ok
    tail = r.losses[len(r.losses) * 3 // 4:] if r.status == "ok" else []
    tail_mean = math.exp(sum(math.log(max(x, 1e-300)) for x in tail) / len(tail)) if len(tail) else math.inf
    value = {"final": r.final_loss, "tail": tail_mean, "status": r.status, "ms": 1e3 * r.step_time,
             "metric": metric, "schedule": _schedule()}
    return job, value


def _worker(jobs: Any, out: Any) -> None:
    while (job := jobs.get()) is not None:
        out.put(_run(job))


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median final and tail loss over seeds (a diverged seed counts as ``inf``), mean ms per step."""
    bad = [r["status"] for r in runs if r["status"] != "ok"]
    ms = [r["ms"] for r in runs if math.isfinite(r["ms"])]
    metrics = [r["metric"] for r in runs if r.get("metric") is not None]
    return {"final": statistics.median(r["final"] for r in runs),
            "metric": statistics.median(metrics) if len(metrics) == len(runs) else None,
            "tail": statistics.median(r["tail"] for r in runs),
            "status": "ok" if not bad else f"{len(bad)}/{len(runs)} {bad[0]}",
            "ms": sum(ms) / len(ms) if ms else math.nan, "seeds": [r["final"] for r in runs],
            "metrics": [r.get("metric") for r in runs]}


def _map(jobs: list[tuple[str, str, bool, float, int]]) -> dict[tuple[str, str, bool, float, int], dict]:
    """``_run`` over ``jobs`` for every seed of :func:`_seeds`, aggregated over seeds (:func:`_aggregate`);
    in ``GRAFT_BENCH_WORKERS`` forked processes pulling from one queue (forked, so this module need not be
    importable by name: run.py loads it from its file)."""
    seeds = _seeds()
    per_seed = _map_seeds([(*job, seed) for job in jobs for seed in seeds])
    return {job: _aggregate([per_seed[(*job, seed)] for seed in seeds]) for job in jobs}


def _map_seeds(jobs: list[tuple[str, str, bool, float, int, int]]) -> dict[tuple, dict]:
    cache = os.environ.get("GRAFT_BENCH_CACHE")
    results: dict[tuple, dict] = {}
    if cache and Path(cache).exists():
        wanted = set(jobs)
        for line in Path(cache).read_text().splitlines():
            key, value = json.loads(line)
            key = tuple(key)  # (task, label, grafted, lr, steps, seed)
            if key in wanted and value.get("schedule", "constant") == _schedule():
                results[key] = value
    jobs = [job for job in jobs if job not in results]
    workers = min(int(os.environ.get("GRAFT_BENCH_WORKERS", "1")), len(jobs))

    def record(key: tuple, value: dict) -> None:
        results[key] = value
        print(f"graft_lr: {len(results)} runs done: {key} {value['status']} {value['final']:.3g}",
              file=sys.stderr, flush=True)
        if cache:
            with open(cache, "a") as fh:
                fh.write(json.dumps([list(key), value]) + "\n")

    if workers <= 1:
        for job in jobs:
            record(*_run(job))
        return results
    ctx = mp.get_context("fork")
    todo, done = ctx.Queue(), ctx.Queue()
    for job in jobs:
        todo.put(job)
    procs = [ctx.Process(target=_worker, args=(todo, done)) for _ in range(workers)]
    for proc in procs:
        todo.put(None)
        proc.start()
    for _ in jobs:
        record(*done.get())
    for proc in procs:
        proc.join()
    return results


def _steps(task: str, quick: bool) -> int:
    """The training budget of ``task`` in this benchmark (``STEPS``, or ``TASK_STEPS``; 300 with quick)."""
    return 300 if quick else TASK_STEPS.get(task, STEPS)


def _best(
    results: dict, task: str, label: str, grafted: bool, grid: tuple[float, ...], metric: str = "final",
    steps: int = STEPS,
) -> tuple[float, float]:
    """``(lr, loss)`` with the lowest ``metric`` (``'final'`` loss or ``'tail'`` mean) over the grid (ties:
    the smaller lr)."""
    finals = [(results[(task, label, grafted, lr, steps)][metric], lr) for lr in grid]
    runs = [(f, lr) for f, lr in finals if not math.isnan(f)]
    final, lr = min(runs) if runs else (math.inf, grid[0])
    return lr, final


def _window(center: float, half_decades: int) -> tuple[float, ...]:
    """``center · 10^{k/2}`` for ``|k| ≤ half_decades`` (3 significant digits)."""
    return tuple(float(f"{center * 10 ** (k / 2):.3g}") for k in range(-half_decades, half_decades + 1))


def run(quick: bool) -> dict[str, Any]:
    tasks = ("rosenbrock-2d", "multiplication") if quick else TASKS
    if os.environ.get("GRAFT_BENCH_TASKS"):
        tasks = tuple(t for t in os.environ["GRAFT_BENCH_TASKS"].split(",") if t)
    grid = (1e-3, 1e-2, 1e-1) if quick else GRID
    if os.environ.get("GRAFT_BENCH_GRID"):
        grid = tuple(float(x) for x in os.environ["GRAFT_BENCH_GRID"].split(",") if x.strip())
    steps = {t: _steps(t, quick) for t in tasks}
    structures, alphas = (("kron",), (0.5,)) if quick else (STRUCTURES, ALPHAS)
    cgd = [f"cgd-{s}-a{a:g}" for s in structures for a in alphas]
    if not quick:  # α = 1 with relative damping as well (see docs/optimizers.md)
        cgd += [f"cgd-{s}-a1+eps_rel={EPS_REL:g}" for s in structures]
    if os.environ.get("GRAFT_BENCH_LABELS"):
        cgd = [x for x in os.environ["GRAFT_BENCH_LABELS"].split(",") if x.strip()]
    kron_window = int(os.environ.get("GRAFT_BENCH_KRON_WINDOW", KRON_WINDOW))
    n_params = {t: sum(p.numel() for p in get_task(t).make_model(0).parameters()) for t in tasks}
    results = _map([(t, "adam", False, lr, steps[t]) for t in tasks for lr in grid])
    adam_lrs = {t: _best(results, t, "adam", False, grid, steps=steps[t])[0] for t in tasks}
    windows: dict[tuple[str, str], tuple[float, ...]] = {}
    jobs = []
    for t in tasks:
        for label in cgd:
            if "full" in label and n_params[t] > MAX_FULL:
                continue
            width = 1 if quick else (FULL_WINDOW if "full" in label else kron_window)
            windows[(t, label)] = _window(adam_lrs[t], width)
            jobs += [(t, label, True, lr, steps[t]) for lr in windows[(t, label)]]
            jobs.append((t, label, False, adam_lrs[t], steps[t]))
    results.update(_map(jobs))
    rows, checks = [], []
    for t in tasks:
        adam_lr, n = adam_lrs[t], steps[t]
        adam = results[(t, "adam", False, adam_lr, n)]
        rows.append({"task": t, "params": n_params[t], "steps": n, "optimizer": "adam", "adam_lr": adam_lr,
                     "final_at_adam_lr": adam["final"], "own_lr": adam_lr, "own_best": adam["final"],
                     "ratio": 1.0, "tail_own_lr": _best(results, t, "adam", False, grid, "tail", n)[0],
                     "ungrafted_at_adam_lr": None, "metric_at_adam_lr": adam["metric"],
                     "metric_at_own_lr": adam["metric"], "ms_per_step": adam["ms"]})
        for label in cgd:
            if (t, label) not in windows:
                continue
            window = windows[(t, label)]
            at_adam = results[(t, label, True, adam_lr, n)]
            own_lr, own_best = _best(results, t, label, True, window, steps=n)
            ratio = 1.0 if at_adam["final"] == own_best else (
                at_adam["final"] / own_best if own_best > 0 else math.inf)
            edge = own_lr in (window[0], window[-1]) and own_lr != adam_lr
            tail_lr, tail_best = _best(results, t, label, True, window, "tail", n)
            tail_ratio = 1.0 if at_adam["tail"] == tail_best else at_adam["tail"] / tail_best
            rows.append({"task": t, "params": n_params[t], "steps": n, "optimizer": f"{label}+graft",
                         "adam_lr": adam_lr, "final_at_adam_lr": at_adam["final"], "own_lr": own_lr,
                         "own_best": own_best, "ratio": ratio, "own_lr_at_window_edge": edge,
                         "tail_own_lr": tail_lr, "tail_ratio": tail_ratio,
                         "ungrafted_at_adam_lr": results[(t, label, False, adam_lr, n)]["final"],
                         "metric_at_adam_lr": at_adam["metric"],
                         "metric_at_own_lr": results[(t, label, True, own_lr, n)]["metric"],
                         "ms_per_step": at_adam["ms"]})
            checks.append({"check": f"{t}: {label}+graft at Adam's lr / own best", "value": ratio,
                           "target": f"<= {TARGET}", "passed": bool(ratio <= TARGET)})
    accuracy = [] if quick or _schedule() != "constant" else _accuracy(
        [t for t in tasks if t in ACCURACY_TASKS], adam_lrs)
    curves = [{"task": t, "optimizer": lab + ("+graft" if g else ""), "lr": lr, "steps": n,
               "final": v["final"], "tail": v["tail"], "metric": v["metric"], "status": v["status"],
               "seeds": v["seeds"]}
              for (t, lab, g, lr, n), v in sorted(results.items(), key=str)]
    notes = [
        f"{STEPS} steps (char-transformer {TASK_STEPS['char-transformer']}; quick: 300), lr schedule "
        f"{_schedule()}, seeds {_seeds()} "
        f"(median); Adam tuned on the grid {', '.join(f'{x:g}' for x in grid)}; each grafted "
        f"optimizer tuned on half decades around Adam's lr (kron ±{KRON_WINDOW}, full ±{FULL_WINDOW} half "
        "decades); tuned lr = lowest median final full-data loss (same seeds)",
        "ratio = final loss at Adam's tuned lr / own best final loss (1 when Adam's lr is the own best); "
        "own_lr_at_window_edge: the own best may lie further out",
        "tail = geometric mean of the full-data loss over the last quarter of the evaluations (every "
        "steps/20), less noisy than the last value; tail_ratio and tail_own_lr are the same comparison on it",
        f"full skipped above {MAX_FULL} parameters; kron leaves vectors (and rosenbrock's single vector) to "
        "diag, so on rosenbrock-2d/100d 'kron' is grafted diag at that alpha",
        "CovariantGD labels: precondition_every=10, precondition_warmup=100, eps=1e-8 inside; "
        "ungrafted_at_adam_lr: the same label without grafting at Adam's lr",
        "metric: the task's final metric, median over seeds (MNIST-1D: test accuracy; char-transformer: "
        "validation bits/char); the loss is the training-set loss",
    ]
    return {"rows": rows, "checks": checks, "notes": notes, "accuracy": accuracy, "grid_runs": curves}


def _accuracy(tasks: list[str], adam_lrs: dict[str, float]) -> list[dict[str, Any]]:
    """Test accuracy at each task's own budget (``task.steps``) for ``ACCURACY_RUNS`` (``None`` lr: Adam's
    tuned lr of the ``STEPS`` search), median and range over the seeds."""
    jobs = {(t, label, g, adam_lrs[t] if lr is None else lr, get_task(t).steps): lr is None
            for t in tasks for label, g, lr in ACCURACY_RUNS}
    results = _map(list(jobs))
    rows = []
    for (t, label, g, lr, n), at_adam in jobs.items():
        r = results[(t, label, g, lr, n)]
        ok = [m for m in r["metrics"] if m is not None]
        rows.append({"task": t, "steps": n, "optimizer": label + ("+graft" if g else ""),
                     "lr": lr, "lr_is": "Adam's tuned" if at_adam else "fixed",
                     "test_accuracy": r["metric"], "min": min(ok) if ok else None,
                     "max": max(ok) if ok else None, "final_loss": r["final"], "status": r["status"]})
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import main

    raise SystemExit(main(["--only", NAME, *sys.argv[1:]]))
