"""Run the benchmarks: ``python benchmarks/run.py [--quick] [--only NAME[,NAME...]] [--list]``.

Discovers ``benchmarks/bench_*.py``. Each module defines ``NAME`` (str) and ``run(quick: bool) -> dict``
returning ``{"rows": [dict, ...], "notes": [str, ...]}`` and optionally ``"checks": [{"check", "value",
"target", "passed"}, ...]`` (pass/fail against stated targets). For each benchmark this prints a table of
the rows, the checks and the notes, and writes ``benchmarks/results/<NAME>.json`` (rows, notes, checks and
the machine context). Exit status: 1 if a benchmark raised or returned a malformed result, else 0 (failed
checks are reported, not fatal -- timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
console = Console(width=None if sys.stdout.isatty() else 200)


def discover() -> dict[str, ModuleType]:
    """``{NAME: module}`` for every ``bench_*.py`` beside this file, in file-name order."""
    found: dict[str, ModuleType] = {}
    for path in sorted(HERE.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(f"learndyn_benchmarks.{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        name = getattr(module, "NAME", None)
        if not isinstance(name, str) or not callable(getattr(module, "run", None)):
            raise SystemExit(f"{path.name} does not follow the convention: needs NAME (str) and run(quick)")
        if name in found:
            raise SystemExit(f"benchmark NAME {name!r} is used twice ({path.name})")
        found[name] = module
    return found


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
            return f"{value:.3g}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    """A rich table of ``rows`` (columns: the union of their keys, in first-seen order)."""
    if not rows:
        console.print(f"[dim]{title}: no rows[/dim]")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title, title_justify="left", show_lines=False)
    for col in columns:
        numeric = isinstance(rows[0].get(col), int | float) and not isinstance(rows[0].get(col), bool)
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(col)) for col in columns))
    console.print(table)


def _jsonable(value: Any) -> Any:
    """Replace non-finite floats by ``None`` (strict JSON) and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def context() -> dict[str, Any]:
    """Where and how the benchmark ran (for reading the JSON later)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run_one(name: str, module: ModuleType, quick: bool) -> bool:
    console.rule(f"[bold]{name}[/bold]{' (quick)' if quick else ''}")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    try:
        result = module.run(quick)
    except Exception:
        console.print(f"[red]{name} raised:[/red]")
        console.print(traceback.format_exc())
        return False
    elapsed = time.perf_counter() - t0
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        kind = type(result).__name__
        console.print(f"[red]{name}.run returned {kind}; expected {{'rows': [...], 'notes': [...]}}[/red]")
        return False
    rows, notes, checks = result["rows"], list(result.get("notes", [])), list(result.get("checks", []))
    print_rows(name, rows)
    for key, extra in result.items():
        if key not in ("rows", "notes", "checks") and isinstance(extra, list) and extra and isinstance(
            extra[0], dict
        ):
            print_rows(f"{name}: {key}", extra)
    if checks:
        table = Table(title=f"{name}: checks", title_justify="left")
        for col in ("check", "value", "target", "result"):
            table.add_column(col)
        for c in checks:
            verdict = "[green]PASS[/green]" if c.get("passed") else "[red]FAIL[/red]"
            table.add_row(str(c.get("check")), _fmt(c.get("value")), str(c.get("target")), verdict)
        console.print(table)
    for note in notes:
        console.print(f"[dim]- {note}[/dim]")
    console.print(f"[dim]{name}: {elapsed:.1f} s[/dim]")
    RESULTS.mkdir(parents=True, exist_ok=True)
    ctx = context()
    ctx["loadavg_before"] = list(load_before) if load_before else None
    payload = {"name": name, "quick": quick, "started": started, "elapsed_s": elapsed, "context": ctx,
               **{k: v for k, v in result.items()}}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    console.print(f"[dim]wrote {path.relative_to(HERE.parent)}[/dim]")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run learndyn's benchmarks (benchmarks/bench_*.py).")
    parser.add_argument("--quick", action="store_true", help="small sizes, for development and CI")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these benchmarks (repeat or comma-separate)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    benches = discover()
    if args.list:
        for name, module in benches.items():
            doc = (module.__doc__ or "").strip().splitlines()
            console.print(f"{name}: {doc[0] if doc else ''}")
        return 0
    only = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in only if n not in benches]
    if unknown:
        console.print(f"[red]--only {', '.join(unknown)}: unknown; allowed: {', '.join(benches)}[/red]")
        return 2
    ok = True
    for name, module in benches.items():
        if only and name not in only:
            continue
        ok &= run_one(name, module, args.quick)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
