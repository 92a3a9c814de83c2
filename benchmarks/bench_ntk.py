"""Empirical NTK of a 32→512→512→1 ReLU MLP on 128 inputs: learndyn's methods against neural-tangents'.

learndyn: ``empirical_ntk(method=...)`` for ``structured`` (layer factors, the default), ``jacobian``
(``vmap(jacrev)`` then ``J Jᵀ``) and ``ntvp`` (vjp/jvp columns), float32, ``torch.set_num_threads(1)``.
neural-tangents: every ``NtkImplementation`` with ``vmap_axes`` ``None`` and ``0``, jitted, single-threaded
XLA, run by ``_nt_ntk.py`` in a separate Python that has ``jax`` and ``neural-tangents`` -- the one named by
the environment variable ``LEARNDYN_JAX_PYTHON``, else this Python if it can import them. The two processes
take turns: each round times ``CALLS`` calls of each fast method in both (slow methods once), and the
headline is the median over rounds of ``t(learndyn structured) / t(neural-tangents' best)``, both medians of
the same round, so load changes on a shared machine hit both alike. Without jax the last recorded
neural-tangents figures are printed instead (``RECORDED``).

Checks: structured ≤ 4 ms or ≤ 1.0× neural-tangents' best in the same run; structured equals the Jacobian
method to float32 round-off.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

NAME = "ntk"
HERE = Path(__file__).resolve().parent
N, WIDTH = 128, 512
RECORDED = {
    "when": "2026-12-06, 2-core shared container (load average 9-12), jax 0.4.23, neural-tangents 0.6.5; "
    "learndyn structured 7.5 ms in the same run (0.96x-1.45x neural-tangents' best over two runs)",
    "ms": {
        "structured_derivatives, vmap_axes=0": 6.49,
        "structured_derivatives, vmap_axes=None": 558.0,
        "ntk_vector_products, vmap_axes=0": 688.0,
        "jacobian_contraction, vmap_axes=0": 2278.0,
    },
}
"""neural-tangents' medians from an earlier run (printed when jax is not installed)."""


def _model() -> nn.Module:
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(32, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 1)
    )
    torch.random.set_rng_state(state)
    return m


def _jax_python() -> str | None:
    path = os.environ.get("LEARNDYN_JAX_PYTHON")
    if path:
        return path
    if importlib.util.find_spec("jax") and importlib.util.find_spec("neural_tangents"):
        return sys.executable
    return None


class _Worker:
    """The neural-tangents worker process (``_nt_ntk.py``)."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen(
            [python, str(HERE / "_nt_ntk.py"), str(N), str(WIDTH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.info = json.loads(self._line())

    def _line(self) -> str:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the neural-tangents worker stopped")
            if line.startswith(("{", "[")):
                return line

    def time(self, index: int, calls: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{index} {calls}\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _timed(fn, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(quick: bool) -> dict[str, Any]:
    from learndyn.probes.kernel import empirical_ntk

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        x = torch.randn(N, 32, generator=torch.Generator().manual_seed(1))
        ours = {
            m: (lambda m=m: empirical_ntk(model, x, method=m)) for m in ("structured", "jacobian", "ntvp")
        }
        slow = {"jacobian", "ntvp"}
        K = ours["structured"]()
        J = ours["jacobian"]()
        rel_err = float((K - J).abs().max() / J.abs().max())
        rounds, calls = (3, 5) if quick else (9, 15)
        python = _jax_python()
        worker = _Worker(python) if python else None
        notes = []
        times: dict[str, list[float]] = {}
        per_round: list[float] = []
        try:
            labels = worker.info["labels"] if worker else []
            for fn in ours.values():
                fn()  # warm-up
            for r in range(rounds):
                medians = {}
                for name, fn in ours.items():
                    got = _timed(fn, 1 if name in slow or (quick and r) else calls)
                    times.setdefault(f"learndyn {name}", []).extend(got)
                    medians[f"learndyn {name}"] = statistics.median(got)
                for i, label in enumerate(labels):
                    fast = label.startswith("structured_derivatives, vmap_axes=0")
                    got = worker.time(i, calls if fast else 1)
                    times.setdefault(f"neural-tangents {label}", []).extend(got)
                    medians[f"neural-tangents {label}"] = statistics.median(got)
                if worker:
                    nt_best = min(v for k, v in medians.items() if k.startswith("neural-tangents"))
                    per_round.append(medians["learndyn structured"] / nt_best)
        finally:
            if worker:
                worker.close()
        rows = [{"method": k, "ms": 1e3 * statistics.median(v), "calls": len(v)} for k, v in times.items()]
        ours_ms = 1e3 * statistics.median(times["learndyn structured"])
        checks = [
            {
                "check": "structured equals jacobian (max rel. error, float32)",
                "value": rel_err,
                "target": "<= 1e-5",
                "passed": rel_err <= 1e-5,
            }
        ]
        if worker:
            ratio = statistics.median(per_round)
            best = min((r for r in rows if r["method"].startswith("neural-tangents")), key=lambda r: r["ms"])
            notes.append(
                f"neural-tangents best: {best['method']} ({best['ms']:.2f} ms); jax "
                f"{worker.info['jax']}, neural-tangents {worker.info['neural_tangents']}"
            )
            notes.append(
                f"ratio learndyn structured / neural-tangents best, median over {rounds} rounds of "
                f"paired medians: {ratio:.2f}"
            )
            checks.append(
                {
                    "check": "structured vs neural-tangents best (same run)",
                    "value": ratio,
                    "target": "<= 1.0 (or <= 4 ms)",
                    "passed": ratio <= 1.0 or ours_ms <= 4.0,
                }
            )
        else:
            notes.append(
                "neural-tangents: not installed (set LEARNDYN_JAX_PYTHON to a Python with jax and "
                f"neural-tangents); last recorded ({RECORDED['when']}):"
            )
            rows += [
                {"method": f"neural-tangents {k} (recorded)", "ms": v} for k, v in RECORDED["ms"].items()
            ]
            checks.append(
                {"check": "structured (ms)", "value": ours_ms, "target": "<= 4", "passed": ours_ms <= 4.0}
            )
        notes.append(
            f"{N} inputs, MLP 32→{WIDTH}→{WIDTH}→1 (ReLU), trace over the single output, float32, "
            "1 thread; ms = median wall time per kernel"
        )
        return {"rows": rows, "notes": notes, "checks": checks, "rel_err_structured_vs_jacobian": rel_err}
    finally:
        torch.set_num_threads(threads)
