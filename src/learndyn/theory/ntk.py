r"""Linearised (neural tangent kernel) training dynamics under full-batch MSE gradient descent.

Jacot, Gabriel & Hongler (2018); Lee et al. (2019), "Wide neural networks of any depth evolve as linear
models under gradient descent" (the closed forms below are their eqs. 8–11 in our normalisation).

Conventions
-----------
Training set ``X`` (``n`` points), targets ``y``, network outputs ``f(X) ∈ R^n`` (or ``R^{n×k}``, one column
per output), loss with per-sample mean and ½,

    L = 1/(2n) Σ_i (f(x_i) − y_i)².

Empirical NTK ``Θ(x, x') = ∇_θ f(x) · ∇_θ f(x')`` at initialisation; ``Θ = Θ(X, X)`` is ``n × n`` and
``Θ* = Θ(X*, X)`` is ``n* × n`` for test points ``X*``. The linearised model
``f_lin(x) = f₀(x) + ∇f₀(x)(θ − θ₀)`` under gradient descent with learning rate ``η`` moves its training
outputs by ``−(η/n) Θ (f − y)`` per step:

* discrete gradient descent, exact for the linearised model after ``k`` steps:

      f_k − y = (I − ηΘ/n)^k (f₀ − y),
      f_k(X*) = f₀(X*) + Θ* Q diag[(1 − (1 − ηλ_j/n)^k)/λ_j] Qᵀ (y − f₀),

* gradient flow in ``t = η·k`` (see :mod:`learndyn.theory.timescale`), the ``η → 0`` limit at fixed ``t``:

      f_t − y = e^{−Θt/n} (f₀ − y),
      f_t(X*) = f₀(X*) + Θ* Θ⁻¹ (I − e^{−Θt/n}) (y − f₀),

with ``Θ = Q diag(λ) Qᵀ``. ``Θ⁻¹(I − e^{−Θt/n})`` is evaluated as ``Q diag[(1 − e^{−λt/n})/λ] Qᵀ`` whose
value at ``λ = 0`` is the limit ``t/n`` (discrete: ``ηk/n``), so singular kernels are exact: directions in
the null space of Θ are not trained, and for an empirical kernel ``Θ* v = 0`` on that null space anyway.
Eigenvalues below ``rcond · λ_max`` are treated as exact zeros.

Multi-output ``y`` of shape ``(n, k)`` uses the same kernel for every output column (the infinite-width NTK
is ``Θ ⊗ I_k``; a finite network's cross-output kernel blocks are ignored). Discrete GD on the linearised
model converges iff ``η < 2n/λ_max`` (:func:`ntk_max_stable_lr`).

How well a finite network follows these formulas is the point of the theory: the deviation is
``O(1/√width)`` in NTK parametrisation (Lee et al. 2019, Thm 2.1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from learndyn.theory._arrays import as_float_array, symmetric_eigh, time_grid
from learndyn.validation import LearndynValueError, check_real


class NTKPrediction(NamedTuple):
    """Predicted outputs: ``train`` has shape ``(T, n[, k])``; ``test`` ``(T, n*[, k])`` or ``None``."""

    train: np.ndarray
    test: np.ndarray | None


def _prepare(
    theta: Any, y: Any, f0: Any, rcond: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    evals, evecs = symmetric_eigh("theta", theta, psd=True)
    n = evals.shape[0]
    y = as_float_array("y", y, ndim=(1, 2))
    f0 = as_float_array("f0", f0, ndim=(1, 2))
    if y.shape[0] != n:
        raise LearndynValueError(f"y has {y.shape[0]} rows but theta is {n}x{n}; allowed: len(y) == {n}")
    if f0.shape != y.shape:
        raise LearndynValueError(f"f0 has shape {f0.shape}; allowed: the shape of y, {y.shape}")
    rcond = check_real("rcond", rcond, low=0.0, high=1.0)
    top = float(evals.max()) if n else 0.0
    evals = np.where(evals <= rcond * top, 0.0, evals)
    residual0 = evecs.T @ (f0 - y)  # (n[, k]) in the eigenbasis
    return evals, evecs, y, f0, residual0


def _test_inputs(
    theta_test: Any, f0_test: Any, n: int, out_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    if (theta_test is None) != (f0_test is None):
        raise LearndynValueError("theta_test and f0_test must be given together; allowed: both or neither")
    tt = as_float_array("theta_test", theta_test, ndim=2)
    if tt.shape[1] != n:
        raise LearndynValueError(f"theta_test has shape {tt.shape}; allowed: (n_test, {n})")
    ft = as_float_array("f0_test", f0_test, ndim=(1, 2))
    if ft.shape != (tt.shape[0],) + out_shape:
        raise LearndynValueError(f"f0_test has shape {ft.shape}; allowed: {(tt.shape[0],) + out_shape}")
    return tt, ft


def _assemble(
    decay: np.ndarray,
    gain: np.ndarray,
    evecs: np.ndarray,
    y: np.ndarray,
    residual0: np.ndarray,
    theta_test: Any,
    f0_test: Any,
) -> NTKPrediction:
    """``decay[T, j]`` multiplies mode j of the residual; ``gain[T, j]`` is mode j of Θ⁻¹(I − decay)."""
    cols = (1,) * (residual0.ndim - 1)  # broadcast over output columns
    decay = decay.reshape(decay.shape + cols)
    gain = gain.reshape(gain.shape + cols)
    train = y[None] + np.einsum("ij,tj...->ti...", evecs, decay * residual0[None])
    test = None
    if theta_test is not None or f0_test is not None:
        tt, ft = _test_inputs(theta_test, f0_test, evecs.shape[0], y.shape[1:])
        proj = tt @ evecs  # (n*, n)
        test = ft[None] - np.einsum("ij,tj...->ti...", proj, gain * residual0[None])
    return NTKPrediction(train=train, test=test)


def ntk_predictions_flow(
    theta: Any, y: Any, f0: Any, t: Any, theta_test: Any = None, f0_test: Any = None, rcond: float = 1e-12
) -> NTKPrediction:
    """Gradient-flow predictions at times ``t = lr·step`` (scalar or 1-D) on the training (and test) points.

    ``theta``: ``(n, n)`` train kernel; ``y``, ``f0``: ``(n,)`` or ``(n, k)`` targets and outputs at init;
    ``theta_test``: ``(n*, n)`` test–train kernel and ``f0_test`` the test outputs at init (optional).
    """
    evals, evecs, y, f0, residual0 = _prepare(theta, y, f0, rcond)
    t = np.atleast_1d(time_grid("t", t))
    n = evals.shape[0]
    rate = evals[None, :] * t[:, None] / n  # (T, n)
    decay = np.exp(-rate)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(evals[None, :] > 0, -np.expm1(-rate) / evals[None, :], t[:, None] / n)
    return _assemble(decay, gain, evecs, y, residual0, theta_test, f0_test)


def ntk_predictions_gd(
    theta: Any,
    y: Any,
    f0: Any,
    lr: float,
    steps: Any,
    theta_test: Any = None,
    f0_test: Any = None,
    rcond: float = 1e-12,
) -> NTKPrediction:
    """Exact predictions of the linearised model after ``steps`` full-batch GD steps of size ``lr``.

    Unstable learning rates (``lr > 2n/λ_max``) are allowed and give the diverging linear prediction.
    """
    lr = check_real("lr", lr, low=0.0, low_open=True)
    evals, evecs, y, f0, residual0 = _prepare(theta, y, f0, rcond)
    k = np.atleast_1d(as_float_array("steps", steps, ndim=(0, 1), low=0.0))
    if np.any(k != np.round(k)):
        raise LearndynValueError("steps has a non-integer entry; allowed: non-negative integers")
    n = evals.shape[0]
    x = lr * evals / n  # per-step contraction of mode j is (1 − x_j)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        stable = x < 1.0
        log_factor = np.where(stable, np.log1p(-np.where(stable, x, 0.0)), 0.0)
        decay = np.where(
            stable[None], np.exp(k[:, None] * log_factor[None]), np.power(1.0 - x[None], k[:, None])
        )
        one_minus = np.where(stable[None], -np.expm1(k[:, None] * log_factor[None]), 1.0 - decay)
        gain = np.where(evals[None] > 0, one_minus / evals[None], lr * k[:, None] / n)
    return _assemble(decay, gain, evecs, y, residual0, theta_test, f0_test)


def ntk_train_loss(prediction: NTKPrediction | np.ndarray, y: Any) -> np.ndarray:
    """``L = 1/(2n) Σ_i ‖f(x_i) − y_i‖²`` for each time of a predicted ``(T, n[, k])`` train trajectory."""
    train = (
        prediction.train
        if isinstance(prediction, NTKPrediction)
        else as_float_array("prediction", prediction)
    )
    y = as_float_array("y", y, ndim=(1, 2))
    if train.shape[1:] != y.shape:
        raise LearndynValueError(
            f"prediction has shape {train.shape}; allowed: (T,) + y.shape = (T,) + {y.shape}"
        )
    sq = ((train - y[None]) ** 2).reshape(train.shape[0], -1)
    return 0.5 * sq.sum(axis=1) / y.shape[0]


def ntk_max_stable_lr(theta: Any) -> float:
    """``2n/λ_max(Θ)``: the largest learning rate for which GD on the linearised model converges."""
    evals, _ = symmetric_eigh("theta", theta, psd=True)
    if evals.size == 0 or evals.max() <= 0:
        return float("inf")
    return float(2.0 * evals.shape[0] / evals.max())
