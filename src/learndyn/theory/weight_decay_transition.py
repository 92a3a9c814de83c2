r"""Global minima of a deep scalar (or diagonal) linear network with weight decay: a first-order transition.

Model
-----
A depth-``L`` scalar linear network ``f(x) = w_L ⋯ w_1 x`` on whitened inputs (``E x² = 1``) with teacher
``E[xy] = s > 0`` and weight decay ``γ`` on every layer has (up to a constant) the loss

    ℓ(w) = ½ (v − s)² + (γ/2) Σ_i w_i²,        v = Π_i w_i.

A diagonal network ``f(x) = Σ_k (Π_i w_{i,k}) x_k`` on whitened inputs decouples into one such problem per
coordinate ``k`` (teacher ``s_k``); so does a full deep linear network in the teacher's singular basis
(Ziyin, Li & Meng 2022, "Exact solutions of a deep linear network").

Reduction
---------
For a fixed product ``v ≥ 0``, ``Σ w_i² ≥ L v^{2/L}`` (AM–GM), with equality iff all ``|w_i| = v^{1/L}``
(balanced). Every stationary point with ``γ > 0`` is balanced (``w_i ∂ℓ/∂w_i = (v − s)v + γw_i² = 0`` for
every ``i``), so the minima are those of

    g(v) = ½ (v − s)² + (γL/2) v^{2/L}                      (:func:`reduced_loss`).

With ``a = v^{1/L}``, ``g'(v) = 0`` at ``v > 0`` iff ``φ(a) := a^{L−2}(s − a^L) = γ``.

* ``L = 2``: ``φ = s − a²`` is decreasing, so ``v* = max(s − γ, 0)``: soft thresholding, continuous in ``γ``.
* ``L ≥ 3``: ``φ(0) = 0``, so ``v = 0`` is a local minimum for *every* ``γ > 0`` (``g ≈ ½s² + (γL/2)v^{2/L}``
  rises with infinite slope). ``φ`` rises to its maximum at ``v_sp = s(L − 2)/(2L − 2)`` and falls to 0 at
  ``v = s``, so for ``γ < γ_sp = φ(v_sp^{1/L})`` there are two roots: a barrier (a local maximum of ``g``) and
  the nonzero local minimum ``v₊(γ)`` (:func:`nonzero_minimum`); at ``γ_sp`` they merge (spinodal).
  The global minimum jumps from ``v₊`` to 0 where ``g(v₊) = g(0)``: solving ``g(v) = ½s²`` together with
  ``g'(v) = 0`` gives

      v_jump = s (L − 2)/(L − 1),       γ* = (s − v_jump) v_jump^{1 − 2/L} = s/(L − 1) · v_jump^{1 − 2/L}

  (:func:`critical_weight_decay`; ``L = 2`` gives ``γ* = s``, ``v_jump = 0``). So ``v*(γ)`` drops
  discontinuously from ``s(L − 2)/(L − 1)`` to 0 at ``γ*`` -- a first-order transition -- with a metastable
  nonzero minimum up to ``γ_sp > γ*`` (:func:`spinodal_weight_decay`).

Where gradient flow goes
------------------------
From a balanced start ``w_i = a₀ > 0`` the weights stay balanced and ``ȧ = a(φ(a) − γ)`` (up to the factor
``L`` of the time scale). So the flow ends at ``v₊`` if ``a₀`` lies above the barrier root (or ``φ(a₀) > γ``),
and at 0 otherwise (:func:`flow_limit_product`): for ``L ≥ 3`` a small initialisation stays at 0 even where
the nonzero minimum is global (``φ(a₀) ≈ a₀^{L−2}s < γ``), and a large one stays at ``v₊`` beyond ``γ*`` up
to ``γ_sp``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import brentq

from learndyn.validation import check_int, check_real


def _check(s: float, weight_decay: float | None, depth: int) -> tuple[float, float | None, int]:
    s = check_real("teacher", s, low=0.0, low_open=True)
    if weight_decay is not None:
        weight_decay = check_real("weight_decay", weight_decay, low=0.0)
    return s, weight_decay, check_int("depth", depth, low=2)


def reduced_loss(v: Any, teacher: float, weight_decay: float, depth: int) -> np.ndarray:
    """``g(v) = ½(v − s)² + (γL/2)|v|^{2/L}``: the loss of the balanced network with product ``v``."""
    s, gamma, L = _check(teacher, weight_decay, depth)
    v = np.asarray(v, dtype=np.float64)
    return 0.5 * (v - s) ** 2 + 0.5 * gamma * L * np.abs(v) ** (2.0 / L)


def _phi(a: float, s: float, L: int) -> float:
    return a ** (L - 2) * (s - a**L)


def critical_weight_decay(teacher: float, depth: int) -> float:
    """``γ* = s/(L − 1) · (s(L − 2)/(L − 1))^{1 − 2/L}``: where the global minimum jumps to 0 (``s`` at
    ``L = 2``)."""
    s, _, L = _check(teacher, None, depth)
    return s / (L - 1) * jump_product(s, L) ** (1.0 - 2.0 / L)


def jump_product(teacher: float, depth: int) -> float:
    """``v_jump = s(L − 2)/(L − 1)``: the product just below ``γ*`` (the size of the jump; 0 at L = 2)."""
    s, _, L = _check(teacher, None, depth)
    return s * (L - 2) / (L - 1)


def spinodal_weight_decay(teacher: float, depth: int) -> float:
    """``γ_sp = max_a φ(a) = v_sp^{1 − 2/L} · sL/(2L − 2)``, ``v_sp = s(L − 2)/(2L − 2)``: above it the only
    minimum is 0 (``= γ* = s`` at L = 2)."""
    s, _, L = _check(teacher, None, depth)
    v_sp = s * (L - 2) / (2 * L - 2)
    return v_sp ** (1.0 - 2.0 / L) * s * L / (2 * L - 2)


def nonzero_minimum(teacher: float, weight_decay: float, depth: int) -> float | None:
    """``v₊(γ)``: the nonzero local minimum of ``g`` (the larger root of ``φ(a) = γ``), or ``None`` where
    ``γ ≥ γ_sp`` (none exists)."""
    s, gamma, L = _check(teacher, weight_decay, depth)
    assert gamma is not None
    if gamma >= spinodal_weight_decay(s, L):
        return None
    if gamma == 0.0:
        return s
    # φ decreases on [a_sp, s^{1/L}] from γ_sp to 0
    a_sp = (s * (L - 2) / (2 * L - 2)) ** (1.0 / L)
    a = brentq(lambda x: _phi(x, s, L) - gamma, a_sp, s ** (1.0 / L), xtol=1e-15, rtol=1e-15)
    return float(a**L)


def barrier_product(teacher: float, weight_decay: float, depth: int) -> float | None:
    """The product at the barrier between 0 and ``v₊`` (the smaller root of ``φ(a) = γ``; ``L ≥ 3``);
    ``None`` where ``γ ≥ γ_sp`` or ``L = 2`` (no barrier: 0 is a minimum only for ``γ ≥ s``)."""
    s, gamma, L = _check(teacher, weight_decay, depth)
    assert gamma is not None
    if L == 2 or gamma >= spinodal_weight_decay(s, L) or gamma == 0.0:
        return None
    a_sp = (s * (L - 2) / (2 * L - 2)) ** (1.0 / L)
    a = brentq(lambda x: _phi(x, s, L) - gamma, 0.0, a_sp, xtol=1e-15, rtol=1e-15)
    return float(a**L)


def global_minimum_product(teacher: float, weight_decay: float, depth: int) -> float:
    """``v*(γ)``: the product at the global minimum, ``v₊`` where ``g(v₊) < g(0)`` (i.e. ``γ < γ*``), else 0.
    The weights there are ``|w_i| = v*^{1/L}`` with an even number of negative signs."""
    s, gamma, L = _check(teacher, weight_decay, depth)
    assert gamma is not None
    v = nonzero_minimum(s, gamma, L)
    if v is None or v <= 0.0:
        return 0.0
    return v if reduced_loss(v, s, gamma, L) < reduced_loss(0.0, s, gamma, L) else 0.0


def flow_limit_product(teacher: float, weight_decay: float, depth: int, init: float) -> float:
    """Where gradient flow from the balanced start ``w_i = init > 0`` ends: ``v₊`` if ``init^L`` is above the
    barrier (``L ≥ 3``) or ``γ < s`` (``L = 2``), else 0."""
    s, gamma, L = _check(teacher, weight_decay, depth)
    assert gamma is not None
    init = check_real("init", init, low=0.0, low_open=True)
    v = nonzero_minimum(s, gamma, L)
    if v is None or v <= 0.0:
        return 0.0
    barrier = barrier_product(s, gamma, L)
    if barrier is not None and init**L < barrier:
        return 0.0
    return v
