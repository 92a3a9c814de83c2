r"""Exact learning dynamics of deep linear networks (Saxe, McClelland & Ganguli, ICLR 2014).

Setting and conventions
-----------------------
Network ``f(x) = W_D ⋯ W_2 W_1 x`` (``depth = D`` weight matrices; ``D = 2`` is one hidden layer) trained on
the squared error with per-sample mean and a factor ½,

    L = 1/(2n) Σ_μ ‖y_μ − W_D⋯W_1 x_μ‖²,

on *whitened* inputs, ``Σ_xx = (1/n) Σ x xᵀ = I``. The teacher is the input–output correlation
``Σ_yx = (1/n) Σ y xᵀ = U S Vᵀ`` (singular values ``s_i``). Gradient flow ``τ dW_l/dt = −∇_{W_l} L`` with
``τ = 1/lr`` and ``t`` counted in steps — equivalently ``τ = 1`` with ``t = lr·step`` (the default; see
:mod:`learndyn.theory.timescale`).

Decoupled, balanced initial condition: ``W_1 = R_1 A Vᵀ``, ``W_l = R_l A R_{l−1}ᵀ``, ``W_D = U A R_{D−1}ᵀ``
with orthonormal ``R_l`` and ``A = diag(a0_i^{1/D})``. Then every layer keeps the form and the product
``W_D⋯W_1 = U diag(a_i(t)) Vᵀ`` where the *mode strength* ``a_i = uᵢᵀ W_D⋯W_1 vᵢ`` obeys, mode by mode,

    τ da/dt = D a^{2 − 2/D} (s − a).                                        (1)

Exact solutions of (1)
----------------------
``D = 1`` (linear regression): ``a(t) = s + (a0 − s) e^{−t/τ}``.

``D = 2`` (Saxe et al. eq. 6, a logistic curve):

    a(t) = s e^{2st/τ} / (e^{2st/τ} − 1 + s/a0).

``D ≥ 3``: ``t(a)`` is elementary. With ``w = a^{1/D}``, ``ρ = s^{1/D}`` and the D-th roots
``r_k = ρ e^{2πik/D}``,

    t(a)/τ = (1/s) [ w^{2−D}/(2−D) − (1/(D s)) Σ_k r_k² ln(w − r_k) ] − (same at a0),

which follows from ``1/(w^{D−1}(s − w^D)) = (1/s)[w^{1−D} + w/(s − w^D)]`` and partial fractions (the sum
is real: conjugate roots are paired). ``a(t)`` is obtained by inverting this monotone function with a
bracketed bisection in the logit ``x = ln(a/(s − a))`` to machine precision — an exact solution, not an
ODE integration. ``s = 0`` (a direction the teacher does not use) decays algebraically:
``a(t) = (a0^{−p} + (2D − 2) t/τ)^{−1/p}`` with ``p = 2 − 2/D`` (``D = 1``: ``a0 e^{−t/τ}``).

Learning time
-------------
:func:`learning_time` is the exact time for a mode to go from ``a0`` to ``fraction · s`` (default half of
``s``). For ``D = 2`` this is ``t½ = (τ/2s) ln(s/a0 − 1)``; Saxe et al.'s order-of-magnitude form
``t* ≈ (τ/s) ln(s/a0)`` is the time from ``a0`` to ``s − a0``. For deep nets from small ``a0``
``t½ ≈ τ a0^{−(1−2/D)} / ((D − 2) s)``: the plateau grows as the initial scale shrinks, polynomially rather
than logarithmically.

Loss curve
----------
With whitened inputs ``L = ½ Σ_i (s_i − a_i(t))² + L_res`` with ``L_res = ½(tr Σ_yy − Σ s_i²)`` (zero for a
noiseless linear teacher): plateaus while the next mode is still small, then a sigmoidal drop of
``½ s_i²`` as it is learned — modes with larger ``s_i`` are learned first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from learndyn.theory._arrays import as_float_array, broadcast_pair, time_grid
from learndyn.validation import LearndynValueError, check_int, check_real

_BISECTION_STEPS = 200


@dataclass(frozen=True)
class LinearTeacher:
    """A linear teacher ``Σ_yx = U diag(s) Vᵀ``; ``U`` is ``(n_out, r)``, ``V`` is ``(n_in, r)``."""

    U: np.ndarray
    s: np.ndarray
    V: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        """The ``(n_out, n_in)`` teacher matrix ``U diag(s) Vᵀ``."""
        return (self.U * self.s) @ self.V.T


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def make_teacher(singular_values: Any, n_in: int, n_out: int, seed: int = 0) -> LinearTeacher:
    """A random teacher with the given singular values (kept in the order given) and random orthonormal
    singular vectors ``U`` (``n_out × r``) and ``V`` (``n_in × r``), ``r = len(singular_values)``."""
    s = as_float_array("singular_values", singular_values, ndim=1, low=0.0)
    n_in = check_int("n_in", n_in, low=1)
    n_out = check_int("n_out", n_out, low=1)
    r = s.shape[0]
    if r == 0 or r > min(n_in, n_out):
        raise LearndynValueError(
            f"len(singular_values)={r} is out of range; "
            f"allowed: 1 <= len <= min(n_in, n_out)={min(n_in, n_out)}"
        )
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    return LinearTeacher(U=_orthonormal(rng, n_out, r), s=s, V=_orthonormal(rng, n_in, r))


def whitened_inputs(n_samples: int, n_in: int, seed: int = 0) -> np.ndarray:
    """An ``(n_samples, n_in)`` input matrix with ``XᵀX / n_samples = I`` exactly (``n_samples >= n_in``)."""
    n_in = check_int("n_in", n_in, low=1)
    n_samples = check_int("n_samples", n_samples, low=n_in)
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    return np.sqrt(n_samples) * _orthonormal(rng, n_samples, n_in)


def decoupled_init(
    teacher: LinearTeacher, hidden: int, a0: Any, depth: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Balanced, decoupled weights ``[W_1, …, W_D]`` (input to output) whose product is ``U diag(a0) Vᵀ``.

    ``W_1`` is ``(hidden, n_in)``, middle layers ``(hidden, hidden)``, ``W_D`` is ``(n_out, hidden)``; each
    layer carries ``a0_i^{1/D}`` on mode ``i`` between random orthonormal hidden frames, so the layers are
    balanced (``W_{l+1}ᵀW_{l+1} = W_l W_lᵀ``) and gradient flow keeps the modes decoupled (eq. 1).
    """
    depth = check_int("depth", depth, low=1)
    r = teacher.s.shape[0]
    hidden = check_int("hidden", hidden, low=r)
    a0 = np.broadcast_to(as_float_array("a0", a0, ndim=(0, 1), low=0.0), (r,))
    c = a0 ** (1.0 / depth)
    if depth == 1:
        return [(teacher.U * c) @ teacher.V.T]
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    frames = [_orthonormal(rng, hidden, r) for _ in range(depth - 1)]
    weights = [(frames[0] * c) @ teacher.V.T]
    weights += [(frames[k] * c) @ frames[k - 1].T for k in range(1, depth - 1)]
    weights.append((teacher.U * c) @ frames[-1].T)
    return weights


def measure_mode_strengths(weights: list[Any], teacher: LinearTeacher) -> np.ndarray:
    """``a_i = uᵢᵀ (W_D ⋯ W_1) vᵢ`` for weights given input to output (numpy arrays or CPU tensors)."""
    product = np.asarray(weights[0], dtype=np.float64)
    for w in weights[1:]:
        product = np.asarray(w, dtype=np.float64) @ product
    return np.einsum("oi,oj,ji->i", teacher.U, product, teacher.V)


def _check_depth_tau(depth: int, tau: float) -> tuple[int, float]:
    return check_int("depth", depth, low=1), check_real("tau", tau, low=0.0, low_open=True)


def _mode_arrays(s: Any, a0: Any) -> tuple[np.ndarray, np.ndarray]:
    return broadcast_pair("s", s, "a0", a0, low=0.0)


def _flow_time_terms(u: np.ndarray, s: np.ndarray, s_minus_u: np.ndarray, depth: int) -> np.ndarray:
    """The antiderivative ``T(u) = ∫ du / (D u^{2−2/D}(s − u))`` (D ≥ 2, s > 0, u > 0, u ≠ s), in units τ.

    ``s_minus_u`` is passed separately so that ``|w − ρ|`` keeps full precision near ``u = s``.
    """
    d = depth
    rho = s ** (1.0 / d)
    w = u ** (1.0 / d)
    first = np.log(w) if d == 2 else w ** (2.0 - d) / (2.0 - d)
    # |w − ρ| = |u − s| / Σ_j w^j ρ^{D−1−j}
    geometric = sum(w**j * rho ** (d - 1 - j) for j in range(d))
    log_abs_w_minus_rho = np.log(np.abs(s_minus_u)) - np.log(geometric)
    roots_sum = rho**2 * log_abs_w_minus_rho  # k = 0, r_0 = ρ
    for k in range(1, d // 2 + 1):
        if 2 * k == d:  # r = −ρ
            roots_sum = roots_sum + rho**2 * np.log(w + rho)
            continue
        angle = 2.0 * np.pi * k / d
        re_r, im_r = rho * np.cos(angle), rho * np.sin(angle)
        re_r2, im_r2 = rho**2 * np.cos(2 * angle), rho**2 * np.sin(2 * angle)
        log_mod = 0.5 * np.log((w - re_r) ** 2 + im_r**2)
        arg = np.arctan2(-im_r, w - re_r)
        roots_sum = roots_sum + 2.0 * (re_r2 * log_mod - im_r2 * arg)  # r_k and its conjugate r_{D−k}
    return (first - roots_sum / (d * s)) / s


def time_to_strength(a: Any, s: Any, a0: Any, depth: int = 2, tau: float = 1.0) -> np.ndarray:
    """Exact time at which a mode with teacher value ``s`` started at ``a0`` reaches strength ``a``.

    ``a`` must lie between ``a0`` (time 0) and ``s`` (reached only as ``t → ∞``: returns ``inf``);
    arrays broadcast elementwise. Requires ``s > 0`` and ``a0 > 0`` (``a0 = s`` gives 0 for ``a = s``).
    """
    depth, tau = _check_depth_tau(depth, tau)
    s, a0 = _mode_arrays(s, a0)
    a = as_float_array("a", a, ndim=(0, 1), low=0.0)
    a, s, a0 = (x.astype(np.float64) for x in np.broadcast_arrays(a, s, a0))
    if np.any(s <= 0) or np.any(a0 <= 0):
        raise LearndynValueError("time_to_strength needs s > 0 and a0 > 0; allowed: s > 0, a0 > 0")
    lo, hi = np.minimum(a0, s), np.maximum(a0, s)
    if np.any((a < lo) | (a > hi)):
        raise LearndynValueError("a lies outside [a0, s] for some mode; allowed: a between a0 and s")
    out = np.zeros(np.broadcast_shapes(a.shape, s.shape), dtype=np.float64)
    done = a == a0
    reached = ~done & (a == s)
    out[reached] = np.inf
    m = ~done & ~reached
    if np.any(m):
        am, sm, a0m = a[m], s[m], a0[m]
        if depth == 1:
            out[m] = np.log((sm - a0m) / (sm - am))
        else:
            out[m] = _flow_time_terms(am, sm, sm - am, depth) - _flow_time_terms(a0m, sm, sm - a0m, depth)
    return tau * out


def learning_time(s: Any, a0: Any, depth: int = 2, fraction: float = 0.5, tau: float = 1.0) -> np.ndarray:
    """Exact time for a mode to grow from ``a0`` to ``fraction · s`` (default: half of its final value).

    Returns ``inf`` where ``s = 0`` (never learned) and ``0`` where ``a0 >= fraction · s`` already.
    ``D = 2``: ``(τ/2s) ln[f (s − a0) / (a0 (1 − f))]`` with ``f = fraction``.
    """
    fraction = check_real("fraction", fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    depth, tau = _check_depth_tau(depth, tau)
    s, a0 = _mode_arrays(s, a0)
    out = np.zeros(s.shape, dtype=np.float64)
    target = fraction * s
    out[s == 0] = np.inf
    todo = (s > 0) & (a0 < target)
    if np.any(todo & (a0 == 0)):
        out[todo & (a0 == 0)] = np.inf  # a = 0 is a fixed point
        todo &= a0 > 0
    if np.any(todo):
        out[todo] = time_to_strength(target[todo], s[todo], a0[todo], depth=depth, tau=tau)
    return out


def _invert_flow_time(t: np.ndarray, s: np.ndarray, a0: np.ndarray, depth: int) -> np.ndarray:
    """Solve ``T(u) − T(a0) = t`` for ``u`` (D ≥ 3, s > 0, a0 > 0, a0 ≠ s); t in units of τ."""
    rate = depth * s ** (2.0 - 2.0 / depth)
    below = a0 < s
    u = np.empty_like(t)
    if np.any(below):
        tb, sb, ab, rb = t[below], s[below], a0[below], rate[below]
        x0 = np.log(ab) - np.log(sb - ab)
        base = _flow_time_terms(ab, sb, sb - ab, depth)

        def err_b(x: np.ndarray) -> np.ndarray:
            return _flow_time_terms(sb * expit(x), sb, sb * expit(-x), depth) - base - tb

        # dt/dx = 1 / (D s u^{1−2/D}) ≥ 1 / (D s^{2−2/D}) bounds x(t) ≤ x0 + rate·t
        x = _bisect(err_b, x0, x0 + rb * tb + 1.0, increasing=True)
        u[below] = sb * expit(x)
    above = ~below
    if np.any(above):
        ta, sa, aa = t[above], s[above], a0[above]
        y0 = np.log(aa / sa - 1.0)
        base = _flow_time_terms(aa, sa, sa - aa, depth)

        def err_a(y: np.ndarray) -> np.ndarray:
            return _flow_time_terms(sa * (1.0 + np.exp(y)), sa, -sa * np.exp(y), depth) - base - ta

        # |dt/dy| = 1 / (D u^{2−2/D}) ≥ 1 / (D a0^{2−2/D}) bounds y(t) ≥ y0 − D a0^{2−2/D} t
        y = _bisect(err_a, y0 - depth * aa ** (2.0 - 2.0 / depth) * ta - 1.0, y0, increasing=False)
        u[above] = sa * (1.0 + np.exp(y))
    return u


def _bisect(err: Any, lo: np.ndarray, hi: np.ndarray, *, increasing: bool) -> np.ndarray:
    """Vectorised bisection of a monotone ``err`` on ``[lo, hi]`` to machine precision."""
    lo, hi = lo.copy(), hi.copy()
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            e = err(mid)
        go_up = (e < 0) if increasing else (e > 0)
        lo = np.where(go_up, mid, lo)
        hi = np.where(go_up, hi, mid)
        if np.all((hi - lo) <= 4 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mid))):
            break
    return 0.5 * (lo + hi)


def mode_strength(t: Any, s: Any, a0: Any, depth: int = 2, tau: float = 1.0) -> np.ndarray:
    """Mode strengths ``a(t)`` solving eq. (1) exactly; shape ``t.shape + broadcast(s, a0).shape``.

    ``t`` is gradient-flow time (``lr·step`` with ``tau = 1``, or steps with ``tau = 1/lr``); ``s >= 0`` the
    teacher singular values; ``a0 >= 0`` the initial strengths (product of the layers' mode values).
    """
    depth, tau = _check_depth_tau(depth, tau)
    t = time_grid("t", t)
    s, a0 = _mode_arrays(s, a0)
    shape = t.shape + s.shape
    tt = np.broadcast_to(t.reshape(t.shape + (1,) * s.ndim), shape) / tau
    ss = np.broadcast_to(s, shape)
    aa = np.broadcast_to(a0, shape)
    out = np.array(aa, dtype=np.float64)  # a0 = 0 and a0 = s are fixed points
    zero_s = (ss == 0) & (aa > 0)
    if np.any(zero_s):
        tz, az = tt[zero_s], aa[zero_s]
        if depth == 1:
            out[zero_s] = az * np.exp(-tz)
        else:
            p = 2.0 - 2.0 / depth
            out[zero_s] = (az ** (-p) + (2.0 * depth - 2.0) * tz) ** (-1.0 / p)
    m = (ss > 0) & (aa > 0) & (aa != ss)
    if np.any(m):
        tm, sm, am = tt[m], ss[m], aa[m]
        if depth == 1:
            out[m] = sm + (am - sm) * np.exp(-tm)
        elif depth == 2:
            out[m] = sm / (1.0 + (sm / am - 1.0) * np.exp(-2.0 * sm * tm))
        else:
            out[m] = _invert_flow_time(tm, sm, am, depth)
    return out


def deep_linear_loss(
    t: Any, s: Any, a0: Any, depth: int = 2, tau: float = 1.0, residual: float = 0.0
) -> np.ndarray:
    """Predicted training loss ``L(t) = ½ Σ_i (s_i − a_i(t))² + residual`` on whitened inputs.

    ``residual = ½(tr Σ_yy − Σ s_i²)`` is the part no linear map can fit (0 for a noiseless teacher).
    """
    residual = check_real("residual", residual, low=0.0)
    s_arr, _ = _mode_arrays(s, a0)
    a = mode_strength(t, s, a0, depth=depth, tau=tau)
    sq = ((s_arr - a) ** 2).reshape(np.shape(t) + (-1,))
    return 0.5 * np.sum(sq, axis=-1) + residual
