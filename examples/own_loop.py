"""Your own training loop with learndyn: CovariantGD as the optimizer, a Monitor measuring the dynamics, the
run in a store and an HTML report at the end.

    python examples/own_loop.py            # 2000 steps, writes runs/examples.duckdb and own_loop.html
    python examples/own_loop.py --tiny     # a few steps (what CI runs)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from learndyn.optim import CovariantGD
from learndyn.probes import Monitor
from learndyn.report import build_html_report
from learndyn.store import RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="a few steps only")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the store and the report")
    args = parser.parse_args()
    steps = 30 if args.tiny else 2000

    torch.manual_seed(0)
    teacher = nn.Linear(10, 3)
    x_all = torch.randn(2048, 10)
    y_all = (teacher(x_all) + 0.1 * torch.randn(2048, 3)).argmax(dim=1)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    lr = 1e-2
    opt = CovariantGD(model.parameters(), lr=lr, alpha=0.5, structure="kron", precondition_every=10)

    store = RunStore(args.out / "runs" / "examples.duckdb")
    config = {"lr": lr, "alpha": 0.5, "structure": "kron", "steps": steps}
    with store.start_run("own-loop", config=config, seed=0) as run:
        every = 5 if args.tiny else 50
        probes = ["parameters", "noise", "representation"]
        with Monitor(model, F.cross_entropy, probes=probes, recorder=run, optimizer=opt) as monitor:
            for probe in monitor.probes:
                probe.every = every
            for step in range(steps):
                idx = torch.randint(0, len(x_all), (64,))
                x, y = x_all[idx], y_all[idx]
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                run.log(step, {"loss": loss.item()})
                monitor.after_step(step, (x, y))  # after the update: measures the new state
        run.set_summary({"final_loss": loss.item()})
    report = build_html_report(store, run.id, args.out / "own_loop.html", plotlyjs="shared")
    print(f"run {run.id[:8]} ({run.status}); final loss {loss.item():.4f}; report {report}")


if __name__ == "__main__":
    main()
