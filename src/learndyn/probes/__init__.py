"""Probes of the learning dynamics, and the :class:`Monitor` that runs them.

One class per measured quantity family, each returning ``{"<probe>/<quantity>": float | array}``:

- :class:`NoiseProbe` -- gradient-noise covariance spectrum, trace, SNR, temperature, metric alignment
- :class:`CurvatureProbe` -- Hessian top eigenvalues (Lanczos), trace (Hutchinson), sharpness
- :class:`KernelProbe` -- empirical NTK spectrum, target alignment, velocity, distance from init
- ``SymmetryProbe``, ``RepresentationProbe``, ``ParameterDistanceProbe``, ``StageProbe`` (imported lazily)

``Monitor(model, loss_fn, probes="light" | "standard" | "full" | [...])`` runs them after optimizer steps;
presets are described in :mod:`learndyn.probes.presets`.
``Monitor(model, adapter=BatchAdapter(...))`` reads any batch (dicts, custom losses; see ``docs/probes.md``).
"""

from __future__ import annotations

import importlib
from typing import Any

from learndyn.probes.base import LossFn, Measurement, Probe, ProbeContext
from learndyn.probes.curvature import CurvatureProbe
from learndyn.probes.kernel import KernelProbe
from learndyn.probes.monitor import Monitor
from learndyn.probes.noise import NoiseProbe
from learndyn.probes.presets import PRESETS, PROBES, TARGET_OVERHEAD, make_probe, preset_probes
from learndyn.stats.batch import BatchAdapter

_LAZY = {
    "SymmetryProbe": "learndyn.probes.symmetry",
    "RepresentationProbe": "learndyn.probes.representation",
    "ParameterDistanceProbe": "learndyn.probes.representation",
    "StageProbe": "learndyn.probes.stages",
    "StageDetector": "learndyn.probes.stages",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'learndyn.probes' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "PROBES",
    "TARGET_OVERHEAD",
    "BatchAdapter",
    "CurvatureProbe",
    "KernelProbe",
    "LossFn",
    "Measurement",
    "Monitor",
    "NoiseProbe",
    "Probe",
    "ProbeContext",
    "make_probe",
    "preset_probes",
    *_LAZY,
]
