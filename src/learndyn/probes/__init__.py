"""Probes of the learning dynamics, and the :class:`Monitor` that runs them.

One class per measured quantity family, each returning ``{"<probe>/<quantity>": float | array}``:

- :class:`NoiseProbe` -- gradient-noise covariance spectrum, trace, SNR, temperature, metric alignment
- :class:`CurvatureProbe` -- Hessian top eigenvalues (Lanczos), trace (Hutchinson), sharpness
- :class:`KernelProbe` -- empirical NTK spectrum, target alignment, velocity, distance from init
- :class:`SymmetryProbe`, :class:`RepresentationProbe`, :class:`ParameterDistanceProbe`, :class:`StageProbe`

``Monitor(model, loss_fn, probes="light" | "standard" | "full" | [...])`` runs them after optimizer steps;
presets are described in :mod:`learndyn.probes.presets`.
``Monitor(model, adapter=BatchAdapter(...))`` reads any batch (dicts, custom losses; see ``docs/probes.md``).
"""

from learndyn.probes.base import LossFn, Measurement, Probe, ProbeContext
from learndyn.probes.curvature import CurvatureProbe
from learndyn.probes.kernel import KernelProbe
from learndyn.probes.monitor import Monitor
from learndyn.probes.noise import NoiseProbe
from learndyn.probes.presets import PRESETS, PROBES, TARGET_OVERHEAD, make_probe, preset_probes
from learndyn.probes.representation import ParameterDistanceProbe, RepresentationProbe
from learndyn.probes.stages import StageDetector, StageProbe
from learndyn.probes.symmetry import SymmetryProbe
from learndyn.stats.batch import BatchAdapter

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
    "ParameterDistanceProbe",
    "Probe",
    "ProbeContext",
    "RepresentationProbe",
    "StageDetector",
    "StageProbe",
    "SymmetryProbe",
    "make_probe",
    "preset_probes",
]
