"""Probe names and presets: instrument sets with a known overhead.

Like a pilot's instrument sets, a preset is a fixed choice of probes and how often each runs, chosen so that
the cost of leaving it on is known (measured by ``benchmarks/bench_probe_overhead.py``: wall time per step of
instrumented over plain training, MLP and small CNN on the digits data, batch 128, one thread):

=========  ==========================================================================  ===============
preset     probes (``every``)                                                           target overhead
=========  ==========================================================================  ===============
light      parameters (50): weight norms, update size, distance from init;              ≤ 1.1×
           stages (50): loss stage detection
standard   light + noise (50, hook route) + symmetry (50) + representation (100)        ≤ 1.5×
full       standard + curvature (200) + kernel (200, 32 probe samples)                 ≤ 3×
=========  ==========================================================================  ===============

The schedules are tuned on the worst case, a small MLP whose plain step costs well under a millisecond. Per
measurement, in plain steps of an MLP 784-128-10 at batch 128 with every probe due at every step
(``benchmarks/bench_probe_cost.py``, part A; ``docs/probes.md`` has the table): parameters ~0.5, noise
(hooks) ~2.4, representation ~1.2 (it shares the noise probe's forward pass), symmetry ~0.5, kernel (NTK
of 32 samples, from the MLP's layer factors) ~0.8, curvature (20 Lanczos Hessian-vector products, by the
written-out R-operator for such an MLP; an exact Gauss-Newton trace on piecewise-linear networks, else 10
Hutchinson products) ~21. Larger models amortise better. For denser series pass your own probes,
``Monitor(probes=[NoiseProbe(every=5), ...])``.

Adding a probe to the names ``Monitor(probes=[...])`` accepts is one entry in :data:`PROBES`.
"""

from __future__ import annotations

from typing import Any

from learndyn.probes.base import Probe
from learndyn.probes.curvature import CurvatureProbe
from learndyn.probes.kernel import KernelProbe
from learndyn.probes.noise import NoiseProbe
from learndyn.probes.representation import ParameterDistanceProbe, RepresentationProbe
from learndyn.probes.stages import StageProbe
from learndyn.probes.symmetry import SymmetryProbe
from learndyn.validation import check_choice

PROBES: dict[str, type[Probe]] = {
    "noise": NoiseProbe,
    "curvature": CurvatureProbe,
    "kernel": KernelProbe,
    "symmetry": SymmetryProbe,
    "representation": RepresentationProbe,
    "parameters": ParameterDistanceProbe,
    "stages": StageProbe,
}
"""Probe name -> class. The name is what ``Monitor(probes=[...])`` accepts as a string."""

_LIGHT: list[tuple[str, dict[str, Any]]] = [
    ("parameters", {"every": 50}),
    ("stages", {"every": 50}),
]
_STANDARD = _LIGHT + [
    ("noise", {"every": 50, "route": "hooks"}),
    ("symmetry", {"every": 50}),
    ("representation", {"every": 100}),
]
_FULL = _STANDARD + [
    ("curvature", {"every": 200, "lanczos_iters": 20, "hutchinson_samples": 10}),
    ("kernel", {"every": 200, "n_samples": 32}),
]

PRESETS: dict[str, list[tuple[str, dict[str, Any]]]] = {"light": _LIGHT, "standard": _STANDARD, "full": _FULL}
"""Preset name -> list of ``(probe name, constructor keyword arguments)``."""

TARGET_OVERHEAD: dict[str, float] = {"light": 1.1, "standard": 1.5, "full": 3.0}
"""Preset name -> target ratio of instrumented to plain wall time per training step."""


def probe_class(name: str) -> type[Probe]:
    """The probe class registered as ``name``."""
    check_choice("probe", name, PROBES, owner="probes")
    return PROBES[name]


def make_probe(name: str, **kwargs: Any) -> Probe:
    """Construct the probe registered as ``name`` with ``kwargs`` (e.g. ``every=10``)."""
    return probe_class(name)(**kwargs)


def preset_probes(preset: str) -> list[Probe]:
    """Fresh probe instances of ``preset`` (``"light"``, ``"standard"`` or ``"full"``)."""
    check_choice("preset", preset, PRESETS, owner="probes")
    return [make_probe(name, **kwargs) for name, kwargs in PRESETS[preset]]


def describe_preset(preset: str) -> list[tuple[str, int]]:
    """``[(probe name, every), ...]`` of a preset, without importing any probe."""
    check_choice("preset", preset, PRESETS, owner="probes")
    return [(name, int(kwargs.get("every", 1))) for name, kwargs in PRESETS[preset]]
