"""learndyn.optim: covariant gradient descent ``q ← q − lr · g⁻¹ F`` with ``g = (S + εI)^α``.

- :class:`CovariantGD` -- the :class:`torch.optim.Optimizer`
  (structures ``diag | kron | block | full | lowrank``).
- :mod:`learndyn.optim.functional` -- the pure functional core: moments → metric → power → precondition.
- :mod:`learndyn.optim.matfun` -- matrix powers and inverse roots of PSD matrices
  (``eigh`` and coupled Newton).
"""

from learndyn.optim import functional, matfun
from learndyn.optim.covariant import (
    DEFAULT_MEMORY_BUDGET,
    EPS_MODES,
    MOMENTS,
    ROOT_METHODS,
    STRUCTURES,
    CovariantGD,
    memory_requirement,
    validate_options,
)
from learndyn.optim.matfun import inverse_metric, inverse_root_newton, psd_power

__all__ = [
    "CovariantGD",
    "DEFAULT_MEMORY_BUDGET",
    "EPS_MODES",
    "MOMENTS",
    "ROOT_METHODS",
    "STRUCTURES",
    "functional",
    "inverse_metric",
    "inverse_root_newton",
    "matfun",
    "memory_requirement",
    "psd_power",
    "validate_options",
]
