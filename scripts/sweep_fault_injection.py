"""Fault injection for sweeps: kill `learndyn sweep` at random points, re-run it; nothing lost or doubled?

For each executor mode (``local``: a pool of single runs; ``ensemble``: a pool of vectorised ensembles;
``ray``: Ray tasks, with ``--modes ray``) the script first runs the sweep once, uninterrupted, into a
reference store. Then each trial starts the same sweep in a fresh store as a subprocess in its own process
group and kills it with SIGKILL after a random delay -- the parent only, or the whole group -- up to
``--kills-per-trial`` times (each re-run may be killed again); finally it re-runs the sweep to completion.
A parent-only kill also checks that the orphaned workers die (they watch their parent:
``learndyn.lifeline``) and how long they lived.

Checks, per trial: every config has exactly one run, ``completed``; each run's metrics (every (step, name,
value)) and summary equal the reference's for its config -- bitwise for single runs (they resume from their
checkpoints), to a relative 1e-9 for ensemble members (a re-run ensemble may group members differently).

    PYTHONPATH=src python scripts/sweep_fault_injection.py --trials 8 --json results.json

Run it on an otherwise idle machine if you can; it takes minutes (each sweep start imports torch twice).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["lr=0.02,0.05", "seed=range(3)"]
SETS = ["steps=100", "eval_every=25", "dtype=float64", "n_train=128", "width=32"]
MODES = {
    "local": ["--executor", "local", "--workers", "2", "--no-ensemble"],
    "ensemble": ["--executor", "local", "--workers", "2", "--ensemble", "--ensemble-size", "3"],
    "ray": ["--executor", "ray", "--workers", "2", "--no-ensemble"],
}


def sweep_command(store: Path, mode: str) -> list[str]:
    grid = [a for g in GRID for a in ("--grid", g)]
    sets = [a for s in SETS for a in ("--set", s)]
    return [sys.executable, "-m", "learndyn.cli", "sweep", "mlp-teacher", *grid, *sets, *MODES[mode],
            "--name", "fi", "--store", str(store)]


def environment() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "LEARNDYN_PROGRESS": "0", "LEARNDYN_CHECKPOINT_EVERY": "10"}
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(entry))
    return out


def run_to_end(store: Path, mode: str, env: dict[str, str], timeout: float = 600) -> int:
    command = sweep_command(store, mode)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode


def killed_run(store: Path, mode: str, env: dict[str, str], delay: float, how: str) -> dict:
    """Start the sweep, SIGKILL it (``parent`` or ``group``) after ``delay`` s; wait for the group to go."""
    proc = subprocess.Popen(sweep_command(store, mode), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pgid = proc.pid
    try:
        proc.wait(timeout=delay)
        return {"how": how, "delay": delay, "finished_first": True, "orphans": 0, "orphan_seconds": 0.0}
    except subprocess.TimeoutExpired:
        pass
    if how == "group":
        os.killpg(pgid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.monotonic()
    orphans = [p for p in group_members(pgid) if p != proc.pid]
    while group_members(pgid) and time.monotonic() - killed_at < 60:
        time.sleep(0.05)
    lived = time.monotonic() - killed_at
    left = group_members(pgid)
    for pid in left:  # the check failed: do not leave them running
        os.kill(pid, signal.SIGKILL)
    return {"how": how, "delay": round(delay, 2), "finished_first": False, "orphans": len(orphans),
            "orphan_seconds": round(lived, 2), "orphans_left_after_60s": len(left)}


def snapshot(store: Path) -> dict[str, list[dict]]:
    """config hash -> its runs: status, summary, metrics."""
    from learndyn.store import RunStore
    from learndyn.sweep import config_hash

    s = RunStore(store, create=False)
    out: dict[str, list[dict]] = {}
    for row in s.runs(sweep_id="fi").to_dict("records"):
        m = s.metrics(row["id"]).sort_values(["name", "step"], kind="stable")
        out.setdefault(config_hash(row["config"]), []).append({
            "id": row["id"], "status": row["status"], "summary": row["summary"],
            "metrics": list(zip(m["name"], m["step"].astype(int), m["value"].astype(float), strict=True)),
        })
    return out


def compare(reference: dict, got: dict, exact: bool) -> list[str]:
    problems = []
    if set(got) != set(reference):
        problems.append(f"configs: {len(got)} stored, {len(reference)} expected")
    worst = 0.0
    for h, ref_runs in reference.items():
        runs = got.get(h, [])
        if len(runs) != 1 or runs[0]["status"] != "completed":
            problems.append(f"config {h}: {[r['status'] for r in runs]}")
            continue
        a, b = runs[0], ref_runs[0]
        if [(n, s) for n, s, _ in a["metrics"]] != [(n, s) for n, s, _ in b["metrics"]]:
            problems.append(f"config {h}: metric rows differ ({len(a['metrics'])} vs {len(b['metrics'])})")
            continue
        for (_, _, x), (_, _, y) in zip(a["metrics"], b["metrics"], strict=True):
            if x != y:
                worst = max(worst, abs(x - y) / max(abs(y), 1e-300))
        for k, y in b["summary"].items():
            x = a["summary"].get(k)
            if x != y:
                worst = max(worst, abs(x - y) / max(abs(y), 1e-300) if isinstance(y, float) else float("inf"))
    if worst > (0.0 if exact else 1e-9):
        problems.append(f"values differ from the reference: max relative difference {worst:.3g}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per mode")
    parser.add_argument("--kills-per-trial", type=int, default=3)
    parser.add_argument("--modes", default="local,ensemble", help="comma-separated: local, ensemble, ray")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = environment()
    results: dict = {"grid": GRID, "sets": SETS, "modes": {}}
    failed = False
    with tempfile.TemporaryDirectory(prefix="learndyn-fi-") as tmp:
        for mode in args.modes.split(","):
            ref_store = Path(tmp) / f"ref-{mode}.duckdb"
            start = time.monotonic()
            rc = run_to_end(ref_store, mode, env)
            span = time.monotonic() - start
            reference = snapshot(ref_store)
            print(f"[{mode}] reference sweep: rc={rc}, {len(reference)} configs, {span:.1f} s", flush=True)
            trials = []
            for t in range(args.trials):
                store = Path(tmp) / f"{mode}-{t}.duckdb"
                kills = []
                for _ in range(args.kills_per_trial):  # each re-run is killed again, until one finishes
                    how = rng.choice(["parent", "group"])
                    kills.append(killed_run(store, mode, env, rng.uniform(1.0, span * 0.6), how))
                    if kills[-1]["finished_first"]:
                        break
                reruns = 0
                while True:  # a re-run skips configs still in progress elsewhere: repeat until done
                    reruns += 1
                    rc = run_to_end(store, mode, env)
                    got = snapshot(store)
                    if all(r["status"] == "completed" for v in got.values() for r in v) or reruns >= 5:
                        break
                problems = compare(reference, got, exact=(mode != "ensemble"))
                orphan_ok = all(k.get("orphans_left_after_60s", 0) == 0 for k in kills)
                ok = not problems and orphan_ok and rc == 0
                failed |= not ok
                trials.append({"kills": kills, "reruns": reruns, "rc": rc, "problems": problems, "ok": ok})
                print(f"[{mode}] trial {t}: {'ok' if ok else 'FAILED'} kills={kills} reruns={reruns} "
                      f"{problems}", flush=True)
                if args.json:  # as it goes: a long run cut short keeps what it found
                    args.json.write_text(json.dumps(results | {"partial": {mode: trials}}, indent=1))
            effective = sum(not k["finished_first"] for tr in trials for k in tr["kills"])
            results["modes"][mode] = {"reference_seconds": round(span, 1), "trials": trials,
                                      "kills": effective, "ok": sum(tr["ok"] for tr in trials)}
    total = sum(m["kills"] for m in results["modes"].values())
    results["kills"] = total
    print(json.dumps({m: {"trials ok": f"{v['ok']}/{len(v['trials'])}", "kills": v["kills"]}
                      for m, v in results["modes"].items()}), f"total kills: {total}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
