r"""Exact dynamics of a finite-width one-hidden-layer linear network with a scalar output: the conserved
imbalance, the reduced ODE at any width, and the rich (Saxe) and lazy (NTK) limits.

Setting and conventions
-----------------------
``f(x) = aᵀ W x`` with ``W ∈ R^{h×d}`` (width ``h``) and ``a ∈ R^h``, trained on a linear teacher
``y = β*ᵀ x`` with *whitened* inputs (``Σ_xx = I``) and ``L = 1/(2n) Σ_μ (f(x_μ) − y_μ)² = ½‖β − β*‖²``,
where ``β = Wᵀa ∈ R^d`` is the network's end-to-end map. Gradient flow in ``t = lr·step`` (as everywhere in
:mod:`learndyn.theory`), with the residual ``g = β − β*``:

    dW/dt = −a gᵀ,        da/dt = −W g.

Conservation (the imbalance between the layers). ``Δ = W Wᵀ − a aᵀ`` (``h × h``) is constant under gradient
flow: ``d(WWᵀ)/dt = −a gᵀWᵀ − W g aᵀ = d(aaᵀ)/dt``. Its trace gives the scalar imbalance used below,

    λ = ‖a‖² − ‖W‖_F² = −tr Δ        (constant).

Reduction (exact at every width). With ``A = ‖a‖²`` and ``S = WᵀW`` (``d × d``),

    dA/dt = −2 βᵀg,     dS/dt = −(g βᵀ + β gᵀ),     dβ/dt = −(A I + S) g,                    (1)

a closed system of ``1 + d + d(d+1)/2`` numbers whatever the width: ``h`` enters only through the initial
``(A₀, S₀, β₀)``. ``K = A I + S`` is the network's neural tangent kernel (``Θ(x, x') = xᵀ K x'``), so (1) is
"the kernel moves while it fits". Discrete gradient descent with step ``η`` is closed in the same variables
(:func:`reduced_gd`, exact up to rounding):

    A' = A − 2η βᵀg + η² gᵀSg,   S' = S − η(gβᵀ + βgᵀ) + η² A ggᵀ,   β' = β − η(AI + S)g + η²(βᵀg) g.

Rank-one aligned solution (Kunin et al. 2024, "Get rich quick", their minimal model). If the layers start
as ``a = α r``, ``W = ω r êᵀ`` with ``ê = β*/‖β*‖`` (any width; equivalently ``h = 1``), the network stays in
that form, ``β = u ê`` with ``u = αω``, and ``α² − ω² = λ``. Then ``A = (λ + √(λ² + 4u²))/2``,
``S = (A − λ) êêᵀ`` and the kernel along ``ê`` is ``K_ê = A + u²/A = √(λ² + 4u²)``, so with ``s = ‖β*‖``

    du/dt = √(λ² + 4u²) (s − u),                                                               (2)

one ODE whose only parameter besides ``s`` is the imbalance. It integrates in closed form (``q = |λ|/2``,
``c = √(λ² + 4s²)``):

    t(u) = (1/c) [ln F(u) − ln F(u₀)],      F(v) = ((c/2)√(v² + q²) + s v + q²) / (s − v),            (3)

and :func:`aligned_strength` inverts the monotone ``t(u)`` by bisection to machine precision.

Limits. ``λ = 0`` (balanced): (2) is ``du/dt = 2u(s − u)``, Saxe et al.'s depth-2 sigmoid
(:func:`learndyn.theory.deep_linear.mode_strength`; (3) becomes ``t = (1/2s) ln[u(s − u₀)/(u₀(s − u))]``): the
kernel grows from ``2u₀`` to ``2s``, *rich*. ``|λ| ≫ s``: ``K_ê = |λ|(1 + O(s²/λ²))`` is constant and
``u(t) → s − (s − u₀) e^{−|λ| t}``, the linearised (NTK, *lazy*) model :func:`lazy_prediction`
``β(t) = β* + e^{−K₀ t}(β₀ − β*)``. The kernel's growth factor over training, ``K_ê(s)/K_ê(u₀) =
√(λ² + 4s²)/√(λ² + 4u₀²)`` (:func:`aligned_kernel`), is the lazy/rich order parameter: ≈ 1 when ``|λ| ≫ s``
or ``u₀ → s``, ``≈ s/u₀`` when ``|λ| ≪ u₀ ≪ s``.

Reference: D. Kunin, A. Raventós, C. Dominé, F. Chen, D. Klindt, A. Saxe, S. Ganguli, "Get rich quick: exact
solutions reveal how unbalanced initializations promote rapid feature learning", NeurIPS 2024; the conserved
``WWᵀ − aaᵀ``: Du, Hu & Lee 2018 (balancedness); Saxe, McClelland & Ganguli 2014.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from learndyn.theory._arrays import as_float_array, time_grid
from learndyn.validation import LearndynValueError, check_int, check_real

_BISECTION_STEPS = 120


@dataclass(frozen=True)
class ReducedTrajectory:
    """``A (T,)``, ``S (T, d, d)`` and ``β (T, d)`` of (1) at the requested times."""

    A: np.ndarray
    S: np.ndarray
    beta: np.ndarray

    @property
    def kernel(self) -> np.ndarray:
        """``K = A I + S`` at each time, ``(T, d, d)``."""
        d = self.beta.shape[-1]
        return self.A[:, None, None] * np.eye(d) + self.S


def reduced_state(a: Any, W: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """``(A, S, β) = (‖a‖², WᵀW, Wᵀa)`` of a network with read-out ``a`` ``(h,)`` and first layer ``W``
    ``(h, d)``."""
    a = as_float_array("a", a, ndim=1)
    W = as_float_array("W", W, ndim=2)
    if W.shape[0] != a.shape[0]:
        raise LearndynValueError(f"W has shape {W.shape} and a {a.shape}; allowed: W of shape (len(a), d)")
    return float(a @ a), W.T @ W, W.T @ a


def imbalance(a: Any, W: Any) -> float:
    """The conserved scalar imbalance ``λ = ‖a‖² − ‖W‖_F²`` (``−tr Δ``)."""
    A, S, _ = reduced_state(a, W)
    return A - float(np.trace(S))


def _check_state(
    A0: Any, S0: Any, beta0: Any, target: Any
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    A0 = check_real("A0", A0, low=0.0)
    beta0 = as_float_array("beta0", beta0, ndim=1)
    target = as_float_array("target", target, ndim=1)
    S0 = as_float_array("S0", S0, ndim=2)
    d = beta0.shape[0]
    if target.shape != (d,) or S0.shape != (d, d):
        raise LearndynValueError(
            f"S0 has shape {S0.shape}, beta0 {beta0.shape}, target {target.shape}; "
            "allowed: (d, d), (d,), (d,)"
        )
    return float(A0), S0, beta0, target


def _rhs(d: int, target: np.ndarray) -> Any:
    iu = np.triu_indices(d)

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        A, beta = y[0], y[1 : d + 1]
        S = np.zeros((d, d))
        S[iu] = y[d + 1 :]
        S = S + np.triu(S, 1).T
        g = beta - target
        dS = -(np.outer(g, beta) + np.outer(beta, g))
        return np.concatenate(([-2.0 * beta @ g], -(A * g + S @ g), dS[iu]))

    return rhs


def reduced_flow(
    t: Any, A0: Any, S0: Any, beta0: Any, target: Any, *, rtol: float = 1e-10, atol: float = 1e-12
) -> ReducedTrajectory:
    """Integrate (1) from ``(A₀, S₀, β₀)`` to the times ``t`` (a non-decreasing grid) with an adaptive
    8th-order Runge–Kutta method (DOP853) at tolerances ``rtol``/``atol`` -- exact up to those.

    ``target`` is ``β*``; ``S0`` symmetric ``(d, d)``.
    """
    A0, S0, beta0, target = _check_state(A0, S0, beta0, target)
    times = np.atleast_1d(time_grid("t", t))
    if np.any(np.diff(times) < 0):
        raise LearndynValueError("t is not non-decreasing; allowed: a sorted time grid")
    d = beta0.shape[0]
    iu = np.triu_indices(d)
    y0 = np.concatenate(([A0], beta0, 0.5 * (S0 + S0.T)[iu]))
    t_end = float(times[-1]) if times.size else 0.0
    if t_end == 0.0:
        ys = np.repeat(y0[:, None], times.size, axis=1)
    else:
        sol = solve_ivp(
            _rhs(d, target), (0.0, t_end), y0, method="DOP853", t_eval=times, rtol=rtol, atol=atol
        )
        if not sol.success:  # pragma: no cover - DOP853 on this smooth polynomial field does not fail
            raise LearndynValueError(f"reduced_flow: the integrator failed: {sol.message}")
        ys = sol.y
    A = ys[0]
    beta = ys[1 : d + 1].T
    S = np.zeros((times.size, d, d))
    S[:, iu[0], iu[1]] = ys[d + 1 :].T
    S = S + np.triu(S, 1).transpose(0, 2, 1)
    return ReducedTrajectory(A=A, S=S, beta=beta)


def reduced_gd(
    steps: Any, A0: Any, S0: Any, beta0: Any, target: Any, lr: float
) -> ReducedTrajectory:
    """Discrete gradient descent with step ``lr`` in the reduced variables (the map in the module docstring),
    at the integer ``steps`` (non-decreasing) -- exact for the width-``h`` network up to rounding."""
    A, S, beta, target = _check_state(A0, S0, beta0, target)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    grid = np.atleast_1d(np.asarray(steps))
    if grid.ndim != 1 or (grid.size and (np.any(grid < 0) or np.any(np.diff(grid) < 0))):
        raise LearndynValueError("steps is not a sorted grid of integers >= 0; allowed: e.g. [0, 10, 20]")
    d = beta.shape[0]
    out_A, out_S, out_b = np.empty(grid.size), np.empty((grid.size, d, d)), np.empty((grid.size, d))
    k = 0
    for i, target_step in enumerate(grid.astype(np.int64)):
        while k < target_step:
            g = beta - target
            bg = beta @ g
            A, S, beta = (
                A - 2.0 * lr * bg + lr**2 * g @ S @ g,
                S - lr * (np.outer(g, beta) + np.outer(beta, g)) + lr**2 * A * np.outer(g, g),
                beta - lr * (A * g + S @ g) + lr**2 * bg * g,
            )
            k += 1
        out_A[i], out_S[i], out_b[i] = A, S, beta
    return ReducedTrajectory(A=out_A, S=out_S, beta=out_b)


def lazy_prediction(t: Any, A0: Any, S0: Any, beta0: Any, target: Any) -> np.ndarray:
    """The linearised (NTK) model's ``β(t) = β* + e^{−K₀ t}(β₀ − β*)`` with ``K₀ = A₀ I + S₀``; shape
    ``(T, d)``."""
    A0, S0, beta0, target = _check_state(A0, S0, beta0, target)
    times = np.atleast_1d(time_grid("t", t))
    evals, evecs = np.linalg.eigh(A0 * np.eye(beta0.shape[0]) + 0.5 * (S0 + S0.T))
    coef = evecs.T @ (beta0 - target)
    return target + (np.exp(-np.outer(times, evals)) * coef) @ evecs.T


# ------------------------------------------------------------------------------ rank-one aligned solution
def _aligned_args(s: Any, lam: Any, u0: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = as_float_array("s", s, ndim=(0, 1), low=0.0, low_open=True)
    lam = as_float_array("lam", lam, ndim=(0, 1))
    u0 = as_float_array("u0", u0, ndim=(0, 1), low=0.0)
    try:
        s, lam, u0 = np.broadcast_arrays(s, lam, u0)
    except ValueError:
        raise LearndynValueError(
            f"s, lam and u0 have shapes {s.shape}, {lam.shape}, {u0.shape}; allowed: broadcastable shapes"
        ) from None
    if np.any(u0 >= s):
        raise LearndynValueError("u0 has an element >= s; allowed: 0 <= u0 < s (learning towards s)")
    if np.any((u0 == 0) & (lam == 0)):
        raise LearndynValueError("u0 = 0 with lam = 0 is a fixed point; allowed: u0 > 0 or lam != 0")
    return s.astype(float), lam.astype(float), u0.astype(float)


def _log_f(v: np.ndarray, s: np.ndarray, lam: np.ndarray) -> np.ndarray:
    q = 0.5 * np.abs(lam)
    half_c = 0.5 * np.sqrt(lam**2 + 4.0 * s**2)
    return np.log(half_c * np.sqrt(v**2 + q**2) + s * v + q**2) - np.log(s - v)


def aligned_time(u: Any, s: Any, lam: Any, u0: Any) -> np.ndarray:
    """Eq. (3): the gradient-flow time for ``u`` to go from ``u0`` to ``u`` (``u0 <= u < s``)."""
    s, lam, u0 = _aligned_args(s, lam, u0)
    u = as_float_array("u", u, ndim=(0, 1))
    u, s, lam, u0 = np.broadcast_arrays(u, s, lam, u0)
    if np.any((u < u0) | (u >= s)):
        raise LearndynValueError("u has an element outside [u0, s); allowed: u0 <= u < s")
    c = np.sqrt(lam**2 + 4.0 * s**2)
    with np.errstate(divide="ignore"):
        return (_log_f(u, s, lam) - _log_f(u0, s, lam)) / c


def aligned_strength(t: Any, s: Any, lam: Any, u0: Any) -> np.ndarray:
    """``u(t)`` solving (2) exactly; shape ``t.shape + broadcast(s, lam, u0).shape``.

    Inverts (3) by bisection in ``v ∈ [u0, s]`` (``_BISECTION_STEPS`` halvings: to machine precision).
    """
    s, lam, u0 = _aligned_args(s, lam, u0)
    t = time_grid("t", t)
    shape = t.shape + s.shape
    tt = np.broadcast_to(t.reshape(t.shape + (1,) * s.ndim), shape)
    ss, ll, uu = (np.broadcast_to(x, shape) for x in (s, lam, u0))
    c = np.sqrt(ll**2 + 4.0 * ss**2)
    with np.errstate(divide="ignore"):
        goal = _log_f(uu, ss, ll) + c * tt
    lo, hi = np.array(uu, dtype=float), np.array(ss, dtype=float)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        with np.errstate(divide="ignore"):
            below = _log_f(mid, ss, ll) < goal
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def aligned_kernel(u: Any, lam: Any) -> np.ndarray:
    """The NTK eigenvalue along the target, ``K_ê = A + u²/A = √(λ² + 4u²)``, of the aligned network."""
    u = as_float_array("u", u, ndim=(0, 1, 2))
    lam = as_float_array("lam", lam, ndim=(0, 1, 2))
    return np.sqrt(lam**2 + 4.0 * u**2)


def aligned_norms(u: Any, lam: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(A, ω²) = (α², ω²)`` of the aligned network with ``αω = u`` and ``α² − ω² = λ``:
    ``A = (λ + √(λ² + 4u²))/2``, ``ω² = A − λ``."""
    root = aligned_kernel(u, lam)
    A = 0.5 * (np.asarray(lam, dtype=float) + root)
    return A, A - np.asarray(lam, dtype=float)


def lazy_rich_ratio(s: Any, lam: Any, u0: Any) -> np.ndarray:
    """The order parameter ``K_ê(s)/K_ê(u₀) = √(λ² + 4s²)/√(λ² + 4u₀²)``: ≈ 1 lazy, ≫ 1 rich."""
    s = as_float_array("s", s, ndim=(0, 1, 2), low=0.0, low_open=True)
    u0 = as_float_array("u0", u0, ndim=(0, 1, 2), low=0.0)
    lam = as_float_array("lam", lam, ndim=(0, 1, 2))
    if np.any((u0 == 0) & (lam == 0)):
        raise LearndynValueError("u0 = 0 with lam = 0 has no finite ratio; allowed: u0 > 0 or lam != 0")
    return aligned_kernel(s, lam) / aligned_kernel(u0, lam)


def rank_one_init(width: int, dim: int, u0: float, lam: float, direction: Any, seed: int = 0) -> tuple[
    np.ndarray, np.ndarray
]:
    """Weights ``(a, W)`` of the rank-one aligned initial condition: ``a = α r``, ``W = ω r êᵀ`` with a random
    unit ``r ∈ R^width``, ``ê = direction/‖direction‖``, ``αω = u0`` and ``α² − ω² = lam`` (``α, ω >= 0``)."""
    check_int("width", width, low=1)
    check_int("dim", dim, low=1)
    u0 = check_real("u0", u0, low=0.0)
    lam = check_real("lam", lam)
    e = as_float_array("direction", direction, ndim=1)
    if e.shape != (dim,) or not np.linalg.norm(e) > 0:
        raise LearndynValueError(f"direction has shape {e.shape}; allowed: a non-zero vector of length {dim}")
    A, w2 = aligned_norms(u0, lam)
    r = np.random.default_rng(seed).standard_normal(width)
    r /= np.linalg.norm(r)
    return np.sqrt(A) * r, np.sqrt(max(float(w2), 0.0)) * np.outer(r, e / np.linalg.norm(e))
