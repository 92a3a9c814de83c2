r"""The update covariance of covariant gradient descent, and its effective dimension.

:class:`~learndyn.optim.CovariantGD` steps ``θ ← θ − lr·u`` with ``u = g⁻¹∇̂`` and the metric
``g = (Ŝ + εI)^α`` built from the gradient statistic ``Ŝ``. When ``Ŝ`` equals the covariance ``C`` of the
minibatch gradient (``moment='covariance'``, after its EMA has settled, ``ε → 0``), the update's covariance
is a function of ``C`` alone (exact given ``Ŝ = C``):

* ``full`` (and ``block`` for a one-tensor model): ``Cov(u) = C^{−α} C C^{−α} = C^{1−2α}`` on the support of
  ``C`` and 0 off it (the pseudo-inverse power: directions without noise get no update noise). α = 0 keeps
  the noise's anisotropy, α = ½ *whitens* it (``Π``, the projector on the support), α = 1 inverts it.
* ``diag``: ``g = D^α`` with ``D = diag C``, so ``Cov(u) = D^{−α} C D^{−α}``; at α = ½ the correlation
  matrix of the gradient (only the variances are whitened).

The effective dimension of the update subspace is the participation ratio of its covariance's eigenvalues,
``PR = (Σλ)² / Σλ²`` (:func:`participation_ratio`): ``r`` for ``r`` equal eigenvalues (a whitened update on a
rank-``r`` support), 1 when one direction dominates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.theory._arrays import as_square
from learndyn.validation import check_choice, check_real

STRUCTURES = ("diag", "block", "full")
"""Metric structures with a closed-form update covariance (``block`` is ``full`` for one tensor)."""


def update_covariance(C: Any, alpha: float, structure: str) -> np.ndarray:
    """Covariance of ``u = g⁻¹∇̂`` when the metric statistic equals the gradient covariance ``C``.

    ``full``/``block``: ``C^{1−2α}`` on the support of ``C`` (eigenvalues above ``n·1e-12·λ_max``; 0 off
    it); ``diag``: ``D^{−α} C D^{−α}`` with ``D = diag C`` (every variance must be positive). α = 0 returns
    ``C`` itself. ``C``: ``(n, n)`` symmetric positive semi-definite.
    """
    C = as_square("C", C)
    alpha = check_real("alpha", alpha, low=0.0, high=1.0)
    structure = check_choice("structure", structure, STRUCTURES)
    if alpha == 0.0:
        return C
    if structure == "diag":
        d = np.diag(C) ** (-alpha)
        return d[:, None] * C * d[None, :]
    lam, U = np.linalg.eigh(C)
    keep = lam > lam.max() * C.shape[0] * 1e-12
    power = np.zeros_like(lam)
    power[keep] = lam[keep] ** (1.0 - 2.0 * alpha)
    return (U * power) @ U.T


def participation_ratio(eigenvalues: Any) -> float:
    """``(Σλ)² / Σλ²`` of eigenvalues, negative ones (rounding) clipped to 0; 0 when all are 0.

    Not validated (a measured spectrum of a diverging run gives ``nan``, not an error).
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=float), 0.0, None)
    den = float(np.sum(lam**2))
    return float(np.sum(lam) ** 2 / den) if den > 0 else 0.0
