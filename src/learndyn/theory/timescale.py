"""The time convention shared by every closed form in :mod:`learndyn.theory`.

Gradient descent ``θ_{k+1} = θ_k − lr ∇L(θ_k)`` is the Euler discretisation of gradient flow
``dθ/dt = −∇L(θ)`` with step ``dt = lr``. The theory functions therefore take the *gradient-flow time*

    t = lr · step                      (dimensionless; τ = 1/lr is "one time unit" in steps)

so one theory curve serves every learning rate in the small-lr limit. Papers that write ``τ dθ/dt = −∇L``
with ``t`` counted in steps (Saxe et al. 2014) use ``τ = 1/lr``; functions that follow them accept ``tau``
(default 1, i.e. ``t`` already in ``lr·step`` units). Functions that describe discrete gradient descent
*exactly* (``ntk.ntk_predictions_gd``, ``symmetry.balance_gd``, ``sgd_stationary``) take ``lr`` and an
integer ``steps`` instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.theory._arrays import as_float_array
from learndyn.validation import check_real


def gradient_flow_time(steps: Any, lr: float) -> np.ndarray:
    """``t = lr · steps``: the gradient-flow time reached after ``steps`` steps of size ``lr``."""
    lr = check_real("lr", lr, low=0.0, low_open=True)
    return lr * as_float_array("steps", steps, low=0.0)


def steps_for_time(t: Any, lr: float) -> np.ndarray:
    """The (rounded, integer) number of steps of size ``lr`` that reaches gradient-flow time ``t``."""
    lr = check_real("lr", lr, low=0.0, low_open=True)
    return np.rint(as_float_array("t", t, low=0.0) / lr).astype(np.int64)
