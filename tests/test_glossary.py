"""The metric glossary: every metric name a probe emits on small models has an entry; lookup; the CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from learndyn.cli import app
from learndyn.glossary import GLOSSARY, axis_title, lookup, search
from learndyn.optim import CovariantGD
from learndyn.probes import PROBES, KernelProbe, Monitor, RepresentationProbe, StageDetector, StageProbe
from learndyn.probes.updates import UpdateCovarianceProbe
from learndyn.store import MemoryRecorder


def _models():
    """Small models covering every symmetry kind, several layer types and both losses."""
    yield (
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)),
        F.cross_entropy,
        lambda g: (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)),
    )
    yield (
        nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(5, 2, bias=False)),
        F.mse_loss,
        lambda g: (torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)),
    )
    yield (
        nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2), nn.LayerNorm(2)
        ),
        F.mse_loss,
        lambda g: (torch.randn(8, 1, 6, 6, generator=g), torch.randn(8, 2, generator=g)),
    )


def emitted_metric_names() -> set[str]:
    """Run every probe of the probe table (plus the update-covariance probe) for a few steps on each model."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    names: set[str] = set()
    for model, loss_fn, data in _models():
        opt = CovariantGD(model.parameters(), lr=0.01, alpha=0.5, structure="diag")
        special = {"kernel", "representation", "stages"}
        probes = [cls() for name, cls in PROBES.items() if name not in special]
        probes += [
            KernelProbe(n_samples=4, log_kernel=True),
            RepresentationProbe(spectrum=True),
            StageProbe(detector=StageDetector(window=3)),
            UpdateCovarianceProbe(window=3, report_every=1),
        ]
        assert {type(p) for p in probes} >= set(PROBES.values())  # every probe of the table runs
        recorder = MemoryRecorder()
        monitor = Monitor(model, loss_fn, probes=probes, recorder=recorder, optimizer=opt)
        for step in range(8):
            x, y = data(g)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            monitor.after_step(step, (x, y), {"loss": loss.item()})
        names |= set(recorder.scalars) | set(recorder.arrays)
    return names


def test_every_emitted_metric_has_a_glossary_entry():
    names = emitted_metric_names()
    assert len(names) > 100 and "noise/temperature" in names and "repr/collapse" in names
    missing = sorted(n for n in names if lookup(n) is None)
    assert missing == [], f"add glossary entries (learndyn/glossary.py) for {missing}"
    for prefix in ("noise/", "curvature/", "kernel/", "symmetry/", "repr/", "params/", "stage/", "updates/"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_entries_are_complete_and_unique():
    patterns = [m.pattern for m in GLOSSARY]
    assert len(patterns) == len(set(patterns))
    for m in GLOSSARY:
        assert all((m.meaning, m.formula, m.unit, m.read, m.healthy, m.source)), m.pattern
        assert m.kind in ("scalar", "array")


def test_lookup_prefers_the_most_specific_entry():
    assert lookup("noise/snr").pattern == "noise/snr"
    assert lookup("noise/snr/encoder.fc").pattern == "noise/snr/<module>"
    assert lookup("params/0.weight/dist_init_rel").pattern == "params/<tensor>/dist_init_rel"
    assert lookup("symmetry/scale/0/total").pattern == "symmetry/scale/<tag>/total"
    assert lookup("symmetry/rescale/0-2/drift").pattern == "symmetry/<kind>/<tag>/drift"
    assert lookup("no/such/metric") is None
    assert axis_title("noise/temperature") == "noise/temperature [L]"
    assert axis_title("noise/snr") == "noise/snr"
    assert [m.pattern for m in search("temperature")] == ["noise/temperature"]
    assert len(search("kernel")) >= 8


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["metrics", "noise/temperature"], "lr · tr C / (2B)", 0),
        (["metrics", "repr/0/pr"], "participation ratio", 0),
        (["metrics", "kernel"], "kernel/velocity", 0),
        (["metrics"], "curvature/lambda_max", 0),
        (["metrics", "nonsense-metric"], "no glossary entry", 2),
    ],
)
def test_cli_metrics(args, needle, code):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output
    assert needle in result.output
