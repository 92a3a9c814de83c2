r"""Probabilistic stability of SGD near a critical point (Ziyin, Li, Galanti & Ueda 2023).

Linearised SGD
--------------
Near a critical point ``θ*`` (a minimum, a saddle or a maximum) the SGD update linearises to
``δ_{t+1} = (I − η Ĥ_t) δ_t`` with ``Ĥ_t`` the Hessian of the minibatch loss drawn at step ``t``. When the
minibatch Hessians commute (share eigenvectors ``n_k``), each eigendirection evolves on its own,
``δ_T·n_k = δ_0·n_k Π_{t<T} (1 − η ĥ_{k,t})``, with ``ĥ_{k,t}`` the minibatch curvature along ``n_k``. By the
law of large numbers, almost surely

    (1/T) log |δ_T·n_k| → Λ_k = E log |1 − η ĥ_k|                     (:func:`lyapunov_rate`)

and ``(1/T) log ‖δ_T‖ → Λ = max_k Λ_k``. ``θ*`` is *probabilistically stable* (``δ_T → 0`` in probability,
attractive) iff ``Λ < 0`` and unstable (repulsive) iff ``Λ > 0``. This differs from the usual notions:

* GD (``ĥ = h = E ĥ``): stable iff ``|1 − ηh| < 1`` in every direction, so a saddle (some ``h < 0``) always
  repels GD;
* stability of the ``p``-th moment, ``E|δ_T|^p → 0`` iff ``Λ^{(p)} = (1/p) log E|1 − ηĥ|^p < 0``
  (:func:`moment_rate`; ``p = 2`` is the usual "linear stability" of SGD's variance). By Jensen
  ``Λ ≤ Λ^{(p)}``: the second moment can diverge (a few rare runs escaping far) while almost every run
  converges.

Because ``log|1 − ηĥ| → −∞`` where ``ηĥ → 1``, large curvature noise can make ``Λ < 0`` along a
direction of *negative* mean curvature: SGD then converges to saddles (and even maxima) that GD escapes.

The two-layer scalar network (the experiment's model)
-----------------------------------------------------
``f(x) = u w x`` with per-sample loss ``½(u w x − y)²`` has a saddle at ``u = w = 0`` whose per-sample
Hessian is ``[[0, −c], [−c, 0]]`` with ``c = x y`` -- the same eigenvectors ``(1, ±1)/√2`` for every sample,
with curvatures ``∓c``. A minibatch of ``B`` samples has curvatures ``∓c̄`` (``c̄`` the batch mean of ``c``),
so ``Λ_± = E log|1 ± η c̄|`` (:func:`product_saddle_rates`). With ``E c = μ > 0`` the direction ``(1, 1)``
has mean curvature ``−μ < 0`` and GD always escapes; SGD is attracted to the saddle where both
``Λ_+ < 0`` and ``Λ_− < 0``. For two equally likely samples ``c = μ ± σ`` and ``B = 1``,
``Λ_± = ½ log|(1 ± ημ)² − η²σ²|``, so the saddle attracts iff ``(1 + ημ)² − 1 < η²σ² < (1 − ημ)² + 1``,
a window that exists iff ``ημ < ½``.

Minibatch distribution
----------------------
:func:`minibatch_curvatures` gives the exact distribution of the minibatch mean ``c̄`` when ``B`` samples are
drawn uniformly *with replacement* from ``n`` per-sample values: the multiset with counts ``k`` (``Σk = B``)
has probability ``B!/(Π k_i!) n^{−B}``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from learndyn.theory._arrays import as_float_array
from learndyn.validation import LearndynValueError, check_int, check_real

MAX_MULTISETS = 200_000
"""The largest number of distinct minibatch compositions :func:`minibatch_curvatures` enumerates."""


def _distribution(values: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    h = as_float_array("values", values, ndim=1)
    p = as_float_array("probs", probs, ndim=1, low=0.0)
    if h.size == 0 or h.shape != p.shape:
        raise LearndynValueError(
            f"values has shape {h.shape} and probs {p.shape}; allowed: equal non-empty 1-D shapes"
        )
    if abs(p.sum() - 1.0) > 1e-9:
        raise LearndynValueError(f"probs sums to {p.sum():.12g}; allowed: a probability vector (sum 1)")
    return h, p


def minibatch_curvatures(per_sample: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact distribution ``(values, probs)`` of the mean of ``batch`` draws (uniform, with replacement) from
    the ``n`` per-sample curvatures ``per_sample``; equal means are merged. Enumerates the
    ``C(n + B − 1, B)`` compositions (at most :data:`MAX_MULTISETS`)."""
    c = as_float_array("per_sample", per_sample, ndim=1)
    batch = check_int("batch", batch, low=1)
    n = c.size
    if n == 0:
        raise LearndynValueError("per_sample is empty; allowed: one or more curvatures")
    count = math.comb(n + batch - 1, batch)
    if count > MAX_MULTISETS:
        raise LearndynValueError(
            f"batch={batch} with {n} samples has {count} minibatch compositions; "
            f"allowed: at most {MAX_MULTISETS}"
        )
    log_norm = math.lgamma(batch + 1) - batch * math.log(n)
    means, logp = [], []
    for combo in itertools.combinations_with_replacement(range(n), batch):
        counts = np.bincount(combo, minlength=n)
        means.append(float(c[list(combo)].mean()))
        logp.append(log_norm - float(sum(math.lgamma(k + 1) for k in counts)))
    means_arr = np.asarray(means)
    scale = max(float(np.max(np.abs(c))), 1e-300)
    _, first, inverse = np.unique(np.round(means_arr / scale, 12), return_index=True, return_inverse=True)
    values = means_arr[first]  # equal means (to 1e-12 of the scale) merged, values kept unrounded
    probs = np.zeros(values.size)
    np.add.at(probs, inverse, np.exp(np.asarray(logp)))
    return values, probs / probs.sum()


def lyapunov_rate(lr: Any, values: Any, probs: Any) -> np.ndarray:
    """``Λ = E log|1 − η ĥ| = Σ_i p_i log|1 − η h_i|`` for each ``η`` in ``lr`` (scalar or array; same shape
    out). ``−inf`` where some ``1 − η h_i = 0`` has ``p_i > 0`` (that direction is zeroed in one step)."""
    eta = as_float_array("lr", lr, low=0.0)
    h, p = _distribution(values, probs)
    with np.errstate(divide="ignore"):
        logs = np.log(np.abs(1.0 - eta[..., None] * h))
    logs = np.where(p > 0, logs, 0.0)
    return np.sum(p * logs, axis=-1)


def moment_rate(lr: Any, values: Any, probs: Any, p: float = 2.0) -> np.ndarray:
    """``Λ^{(p)} = (1/p) log E|1 − η ĥ|^p``: the growth rate of ``(E|δ_T|^p)^{1/p}`` per step; ``≥ Λ``
    (Jensen), equal only without noise. ``p = 2``: stability of the second moment (SGD's variance)."""
    eta = as_float_array("lr", lr, low=0.0)
    h, q = _distribution(values, probs)
    p = check_real("p", p, low=0.0, low_open=True)
    moments = np.sum(q * np.abs(1.0 - eta[..., None] * h) ** p, axis=-1)
    with np.errstate(divide="ignore"):
        return np.log(moments) / p


def product_saddle_rates(lr: Any, products: Any, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(Λ_+, Λ_−) = (E log|1 + η c̄|, E log|1 − η c̄|)``: the rates along ``(1, 1)/√2`` and ``(1, −1)/√2``
    of SGD near the saddle ``u = w = 0`` of ``½(u w x − y)²``, where ``products`` are the per-sample
    ``c = x y`` and ``c̄`` is their mean over a minibatch of ``batch`` (drawn with replacement).
    ``(1/T) log‖(u, w)_T‖ → max(Λ_+, Λ_−)``; the saddle attracts SGD iff both are negative."""
    values, probs = minibatch_curvatures(products, batch)
    return lyapunov_rate(lr, -values, probs), lyapunov_rate(lr, values, probs)


def two_point_products(mean: float, noise: float) -> np.ndarray:
    """The two equally likely per-sample products ``c = μ ± σ`` (``mean`` ``μ``, ``noise`` ``σ ≥ 0``)."""
    mean = check_real("mean", mean)
    noise = check_real("noise", noise, low=0.0)
    return np.array([mean - noise, mean + noise])
