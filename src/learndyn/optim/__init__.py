"""learndyn.optim: covariant gradient descent ``q ← q − lr · g⁻¹ F`` with ``g = (S + εI)^α``.

- :class:`CovariantGD` -- the :class:`torch.optim.Optimizer` (:mod:`~learndyn.optim.covariant`), its options
  (:mod:`~learndyn.optim.options`);
- :data:`STRUCTURES` -- the metric structures ``diag | kron | block | full | lowrank``, one module each
  (:mod:`learndyn.optim.structures`);
- :class:`OptimizerSpec`, :func:`build_optimizer` -- the one factory: labels such as ``adam`` or
  ``cgd-kron-a0.75`` → an optimizer (:mod:`~learndyn.optim.spec`);
- :mod:`learndyn.optim.stacked` -- SGD, Adam and diagonal CovariantGD for ensembles of stacked parameters;
- :mod:`learndyn.optim.functional` -- the pure functional core: moments → metric → power → precondition;
- :mod:`learndyn.optim.matfun` -- matrix powers and inverse roots of PSD matrices (``eigh`` and coupled
  Newton).
"""

from learndyn.optim import functional, matfun
from learndyn.optim.covariant import CovariantGD
from learndyn.optim.matfun import inverse_metric, inverse_root_newton, psd_power
from learndyn.optim.options import (
    DEFAULT_MEMORY_BUDGET,
    EPS_MODES,
    MOMENTS,
    ROOT_METHODS,
    memory_requirement,
    validate_options,
)
from learndyn.optim.spec import FAMILIES, OptimizerSpec, as_spec, build_optimizer
from learndyn.optim.stacked import StackedAdam, StackedCovariantDiag, StackedSGD
from learndyn.optim.structures import STRUCTURES, Structure

__all__ = [
    "CovariantGD",
    "DEFAULT_MEMORY_BUDGET",
    "EPS_MODES",
    "FAMILIES",
    "MOMENTS",
    "OptimizerSpec",
    "ROOT_METHODS",
    "STRUCTURES",
    "StackedAdam",
    "StackedCovariantDiag",
    "StackedSGD",
    "Structure",
    "as_spec",
    "build_optimizer",
    "functional",
    "inverse_metric",
    "inverse_root_newton",
    "matfun",
    "memory_requirement",
    "psd_power",
    "validate_options",
]
