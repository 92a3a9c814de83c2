"""The probe, NTK and optimizer benchmarks on a CUDA device: ``python benchmarks/gpu.py [--quick]``.

One short script to run wherever a GPU exists (it exits with a message where none does; ``--device cpu``
runs the same code on the CPU as a smoke test). Times are taken after ``torch.cuda.synchronize()``; ratios
are paired within this run. Prints a table per part and writes ``benchmarks/results/gpu.json``:

- probes: ``bench_probe_cost`` parts A (MLP 784-128-10, every probe every step), B (one measurement of each
  kind) and C (GPT, default presets) on the device;
- NTK: learndyn's structured / Jacobian / NTK-vector-product methods on the 32→512→512→1 MLP with 128 and
  1024 inputs (neural-tangents is compared on the CPU by ``bench_ntk``);
- optimizer: ``CovariantGD`` (diag, kron) against ``torch.optim.AdamW``, a training step of the width-512 and
  width-1024 MLPs of ``bench_optim_step``, batch 128.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"learndyn_gpu_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ntk_rows(device: str, quick: bool) -> list[dict[str, Any]]:
    from learndyn.probes.kernel import empirical_ntk

    cost, ntk = _load("bench_probe_cost"), _load("bench_ntk")
    model = ntk._model().to(device)
    rows = []
    for n in (128,) if quick else (128, 1024):
        x = torch.randn(n, 32, generator=torch.Generator().manual_seed(1)).to(device)
        methods = ("structured", "jacobian") if n > 128 else ("structured", "jacobian", "ntvp")
        fns = {m: (lambda m=m, x=x: empirical_ntk(model, x, method=m)) for m in methods}
        med = cost.medians(fns, 3 if quick else 10, device)
        K, J = fns["structured"](), fns["jacobian"]()
        err = float((K - J).abs().max() / J.abs().max())
        rows += [
            {
                "inputs": n,
                "method": m,
                "ms": 1e3 * t,
                "vs structured": t / med["structured"],
                "rel. error vs jacobian": err if m == "structured" else None,
            }
            for m, t in med.items()
        ]
    return rows


def optimizer_rows(device: str, quick: bool) -> list[dict[str, Any]]:
    step = _load("bench_optim_step")
    cost = _load("bench_probe_cost")
    rows = []
    for width in (512,) if quick else (512, 1024):
        gen = torch.Generator().manual_seed(width)
        x = torch.randn(step.BATCH, width, generator=gen).to(device)
        y = torch.randint(0, 10, (step.BATCH,), generator=gen).to(device)
        setups = {}
        for label in ("adamw", "cgd-diag", "kron"):
            model = step._model(width).to(device)
            setups[label] = (model, step.make_optimizer(label, model, 1e-4))

        def train(label: str, setups=setups, x=x, y=y, steps: int = 10) -> None:
            model, opt = setups[label]
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

        med = cost.medians({k: (lambda k=k: train(k)) for k in setups}, 3 if quick else 11, device)
        rows += [
            {"width": width, "optimizer": k, "step_ms": 1e3 * t / 10, "ratio vs adamw": t / med["adamw"]}
            for k, t in med.items()
        ]  # t: ten training steps
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions")
    parser.add_argument(
        "--device", default="cuda", help="default cuda; cpu runs the same code as a smoke test"
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu.py: no CUDA device here; run it where a GPU exists (or --device cpu for a smoke test)")
        return 2
    sys.path.insert(0, str(HERE))
    run = _load("run")
    cost = _load("bench_probe_cost")
    device, quick = args.device, args.quick
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    result: dict[str, Any] = {"device": name, "torch": torch.__version__}
    rows_a, _ = cost.every_step(3 if quick else 9, device)
    rows_b, notes_b = cost.costs(3 if quick else 15, device)
    rows_c, _, notes_c = cost.gpt_presets(quick, device)
    parts = {
        "probes": rows_a + rows_b + rows_c,
        "ntk": ntk_rows(device, quick),
        "optimizer": optimizer_rows(device, quick),
    }
    for title, rows in parts.items():
        run.print_rows(f"gpu: {title} ({name})", rows)
    for note in notes_b + notes_c:
        print(f"- {note}")
    result.update(parts)
    result["notes"] = notes_b + notes_c
    out = HERE / "results" / "gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(run._jsonable(result), indent=1) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
