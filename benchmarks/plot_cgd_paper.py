"""Draw ``docs/img/cgd-paper.png`` from the curves the ``cgd_paper`` benchmark logged.

``python benchmarks/plot_cgd_paper.py [RESULT.json ...] [--out PATH]``: reads the ``series`` of each JSON
(default ``benchmarks/results/cgd_paper.json``; several files are merged, e.g. one per problem) and draws
four panels with matplotlib: Rosenbrock trajectories of Adam and full CGD α=½ (seed 0, tuned lr), the
average Rosenbrock loss, the multiplication loss (median over seeds, min-max band) and the participation
ratio of the update covariance on multiplication.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SHOWN = ("sgd", "momentum", "rmsprop", "adam", "adabelief", "cgd-diag-a0.5", "cgd-full-a0.5",
         "cgd-full-a0.5-cov", "cgd-full-a1")


def load(paths: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path in paths:
        for name, (steps, values) in json.loads(path.read_text())["series"].items():
            series[name] = (np.asarray(steps, float), np.asarray(values, float))
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path, default=[HERE / "results" / "cgd_paper.json"])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "img" / "cgd-paper.png")
    args = parser.parse_args()
    s = load(args.results)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    gx, gy = np.linspace(-2.2, 2.2, 200), np.linspace(-1.2, 3.2, 200)
    X, Y = np.meshgrid(gx, gy)
    axes[0].contour(X, Y, np.log10(100 * (Y - X**2) ** 2 + (1 - X) ** 2 + 1e-3), levels=15, colors="0.8",
                    linewidths=0.6)
    for label, color in (("adam", "tab:orange"), ("cgd-full-a0.5", "tab:blue")):
        k = 0
        while f"traj/{label}/{k}/x" in s:
            axes[0].plot(s[f"traj/{label}/{k}/x"][1], s[f"traj/{label}/{k}/y"][1], color=color, lw=1,
                         label=label if k == 0 else None)
            k += 1
    axes[0].plot([1], [1], "k*", ms=10)
    axes[0].set(title="Rosenbrock: trajectories (seed 0, tuned lr)", xlim=(-2.2, 2.2), ylim=(-1.2, 3.2))
    axes[0].legend(loc="lower right")
    for ax, problem, what in ((axes[1], "rosenbrock", "average loss over starts"),
                              (axes[2], "multiplication", "full loss")):
        for label in SHOWN:
            key = f"loss/{problem}/{label}"
            if key not in s:
                continue
            style = "-" if label.startswith("cgd-full") else ("-." if label.startswith("cgd") else "--")
            line, = ax.plot(*s[key], style, lw=2 if "full" in label else 1.2, label=label)
            lo, hi = s.get(f"loss_min/{problem}/{label}"), s.get(f"loss_max/{problem}/{label}")
            if lo is not None and hi is not None and lo[0].size == hi[0].size:
                ax.fill_between(lo[0], lo[1], hi[1], color=line.get_color(), alpha=0.12)
        target = s.get(f"target/{problem}")
        if target is not None:
            ax.axhline(target[1][-1], color="gray", ls=":", lw=1)
        ax.set(yscale="log", title=f"{problem}: {what} (median, min-max)", xlabel="step")
    axes[2].legend(fontsize=7, ncol=2)
    for label in SHOWN:
        key = f"pr/multiplication/{label}"
        if key in s:
            axes[3].plot(*s[key], lw=2 if "full" in label else 1, label=label)
    axes[3].set(title="multiplication: PR of EMA[Δq Δqᵀ]", xlabel="step", yscale="log")
    axes[3].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=60)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
