"""Array validation shared by the theory modules (one-line errors, as in :mod:`learndyn.validation`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.validation import LearndynValueError


def as_float_array(
    name: str,
    value: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    low: float | None = None,
    low_open: bool = False,
) -> np.ndarray:
    """``value`` as a float64 array; raise naming ``name`` if it is not finite, has the wrong ``ndim``
    or has an element below ``low`` (``<= low`` when ``low_open``)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise LearndynValueError(
            f"{name}={_short(value)} is not numeric; allowed: a real array-like"
        ) from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            dims = " or ".join(str(d) for d in allowed)
            raise LearndynValueError(f"{name} has ndim={arr.ndim} (shape {arr.shape}); allowed: ndim {dims}")
    if not np.all(np.isfinite(arr)):
        raise LearndynValueError(f"{name} contains non-finite values; allowed: finite reals")
    if low is not None and arr.size:
        bad = arr <= low if low_open else arr < low
        if np.any(bad):
            sym = ">" if low_open else ">="
            raise LearndynValueError(
                f"{name} has an element {arr[bad].flat[0]!r} out of range; "
                f"allowed: every element {sym} {low:g}"
            )
    return arr


def broadcast_pair(
    name_a: str, a: Any, name_b: str, b: Any, *, ndim: tuple[int, ...] = (0, 1), **bounds: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float64 arrays (each checked by :func:`as_float_array` with ``ndim`` and ``bounds``)
    broadcast to one shape; raise naming both when they do not broadcast."""
    a = as_float_array(name_a, a, ndim=ndim, **bounds)
    b = as_float_array(name_b, b, ndim=ndim, **bounds)
    try:
        a, b = np.broadcast_arrays(a, b)
    except ValueError:
        raise LearndynValueError(
            f"{name_a} has shape {a.shape} and {name_b} {b.shape}; allowed: broadcastable shapes"
        ) from None
    return a.astype(np.float64), b.astype(np.float64)


def as_square(name: str, value: Any) -> np.ndarray:
    """A finite 2-D square float64 array."""
    arr = as_float_array(name, value, ndim=2)
    if arr.shape[0] != arr.shape[1]:
        raise LearndynValueError(f"{name} has shape {arr.shape}; allowed: a square matrix")
    return arr


def symmetric_eigh(name: str, value: Any, *, psd: bool, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric (optionally positive semi-definite) matrix.

    The matrix must be symmetric to relative tolerance 1e-8 (of its largest entry); it is symmetrised
    before ``eigh``. With ``psd=True`` eigenvalues down to ``-rtol * n * max|eig|`` are rounding and are set
    to 0; more negative ones raise.
    """
    mat = as_square(name, value)
    scale = float(np.max(np.abs(mat))) if mat.size else 0.0
    if scale and float(np.max(np.abs(mat - mat.T))) > 1e-8 * scale:
        raise LearndynValueError(f"{name} is not symmetric; allowed: a symmetric matrix")
    evals, evecs = np.linalg.eigh(0.5 * (mat + mat.T))
    if psd:
        top = float(np.max(np.abs(evals))) if evals.size else 0.0
        if evals.size and evals.min() < -rtol * max(top, 1e-300) * mat.shape[0]:
            raise LearndynValueError(
                f"{name} has eigenvalue {evals.min():.3g} < 0; allowed: a positive semi-definite matrix"
            )
        evals = np.clip(evals, 0.0, None)
    return evals, evecs


def time_grid(name: str, value: Any) -> np.ndarray:
    """A finite, non-negative scalar or 1-D time grid."""
    return as_float_array(name, value, ndim=(0, 1), low=0.0)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
