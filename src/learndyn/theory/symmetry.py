r"""Conservation laws from rescaling symmetry, and how weight decay and SGD noise break them.

Rescaling symmetry
------------------
A two-layer network ``f(x) = Σ_j a_j φ(w_jᵀx + b_j)`` with a positively 1-homogeneous activation
(``φ(cz) = cφ(z)`` for ``c > 0``: ReLU, leaky ReLU, linear) is unchanged by ``(w_j, b_j) → c(w_j, b_j)``,
``a_j → a_j/c`` (``a_j`` is neuron ``j``'s column of the output matrix). Differentiating at ``c = 1`` gives,
for *any* loss and any batch, ``(w_j, b_j)·∇_{(w_j,b_j)} L = a_j·∇_{a_j} L``, so the per-neuron balance

    Q_j = ‖w_j‖² + b_j² − ‖a_j‖²        (:func:`neuron_balance`)

obeys (Du, Hu & Lee 2018; Kunin et al. 2021, "Neural mechanics"):

* gradient flow, no weight decay: ``Q_j(t) = Q_j(0)`` (exact);
* gradient flow with weight decay ``(λ/2)‖θ‖²`` on both layers: ``dQ/dt = −2λQ`` so
  ``Q(t) = Q(0) e^{−2λt}`` (exact; ``t = lr·step``) — :func:`balance_flow`;
* discrete (S)GD ``θ ← (1 − ηλ)θ − η g`` with *any* gradient ``g`` of a loss with the symmetry
  (full batch or minibatch), exactly:

      Q_{k+1} = (1 − ηλ)² Q_k + η² Δ_k,     Δ_k = ‖g_{w_j}‖² + g_{b_j}² − ‖g_{a_j}‖²,

  hence ``Q_k = (1 − ηλ)^{2k} Q_0 + η² Σ_{i<k} (1 − ηλ)^{2(k−1−i)} Δ_i`` — :func:`balance_gd`. Without the
  recorded ``Δ_i`` only the first term is returned: it is exact up to that ``O(η²)`` per-step drift, and
  agrees with ``Q_0 e^{−2λt}`` to ``O(η λ² t)`` relative.

Law of balance (SGD noise drives the balance to a fixed point)
--------------------------------------------------------------
Ziyin, Li & Ueda (2023), "Law of balance and stationary distribution of stochastic gradient descent":
for a rescaling symmetry, SGD noise moves ``‖u‖² − ‖w‖²`` towards the *noise-balanced* point
``uᵀC₁u = wᵀC₂w`` at a rate ``∝ η``. We treat their scalar model exactly: ``f(x) = u w x`` with data
``y = v* x + ε``, ``x ~ N(0, h)``, ``ε ~ N(0, σ²)``, per-sample loss ``½(uwx − y)²``, minibatch size ``B``,
learning rate ``η``, weight decay ``λ``. With ``A = (1/B) Σ_b (uw x_b − y_b) x_b`` (the minibatch derivative
with respect to the product ``v = uw``) the update is ``u ← (1 − ηλ)u − ηwA``, ``w ← (1 − ηλ)w − ηuA``
and, exactly, step by step,

    Q_{k+1} = Q_k [(1 − ηλ)² − η² A_k²],        Q = u² − w².

So the fixed point is ``Q* = 0`` (balance ``|u| = |w|``, the scalar case of ``uᵀC₁u = wᵀC₂w``). Given
``δ = uw − v*`` the minibatch statistics give ``E[A²] = h²δ² + (2h²δ² + σ²h)/B``. On the solution manifold
(``λ = 0``, ``δ → 0``) gradient descent would conserve ``Q`` (``A = 0``), but SGD noise does not:

* leading order: ``E[Q_k] = Q_0 (1 − η²σ²h/B)^k ≈ Q_0 e^{−ησ²h t / B}`` with ``t = η k``;
* next order (:func:`scalar_balance_sgd` with ``fluctuation_correction=True``): ``δ`` fluctuates around 0
  like one-dimensional linear-regression SGD with learning rate ``η(u² + w²)``, where
  ``u² + w² = √(Q² + 4v*²)``; its stationary ``E[δ²]`` is the exact formula of
  :mod:`learndyn.theory.sgd_stationary` (d = 1), and ``E[A²] = σ²h/B + h²(1 + 2/B)E[δ²]``. ``Q`` relaxes
  slowly (rate ``O(η²)`` per step) compared with ``δ`` (rate ``O(η)``), so ``δ`` is taken stationary at the
  current ``Q`` (adiabatic elimination) and the deterministic map ``Q ← Q(1 − η²E[A²](Q))`` is iterated.
  Neglected: ``O(η)`` relative corrections to ``E[δ²]`` (the ``η²vA²`` term of the product's update and the
  ``O(δ)`` dependence of ``u² + w²`` on ``δ``), the spread of ``Q`` across runs (Jensen), and the transient
  while ``δ`` equilibrates. Assumes a start on the manifold ``uw = v*`` and ``λ = 0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learndyn.theory._arrays import as_float_array, time_grid
from learndyn.validation import LearndynValueError, check_int, check_real


def neuron_balance(w_in: Any, w_out: Any, b_in: Any = None) -> np.ndarray:
    """Per-neuron ``Q_j = ‖w_in[j]‖² + b_in[j]² − ‖w_out[:, j]‖²`` (``nn.Linear`` weight layouts).

    ``w_in``: ``(m, d_in)``; ``w_out``: ``(d_out, m)`` or ``(m,)`` for a scalar output; ``b_in``: ``(m,)`` or
    ``None``. Accepts numpy arrays or CPU tensors (detached).
    """
    w_in = as_float_array("w_in", _numpy(w_in), ndim=2)
    w_out = as_float_array("w_out", _numpy(w_out), ndim=(1, 2))
    m = w_in.shape[0]
    out_sq = w_out**2 if w_out.ndim == 1 else np.sum(w_out**2, axis=0)
    if out_sq.shape != (m,):
        raise LearndynValueError(f"w_out has shape {w_out.shape}; allowed: (d_out, {m}) or ({m},)")
    q = np.sum(w_in**2, axis=1) - out_sq
    if b_in is not None:
        b = as_float_array("b_in", _numpy(b_in), ndim=1)
        if b.shape != (m,):
            raise LearndynValueError(f"b_in has shape {b.shape}; allowed: ({m},)")
        q = q + b**2
    return q


def _numpy(x: Any) -> Any:
    detach = getattr(x, "detach", None)
    return detach().cpu().numpy() if callable(detach) else x


def balance_flow(q0: Any, t: Any, weight_decay: float = 0.0) -> np.ndarray:
    """Gradient-flow balance ``Q(t) = Q₀ e^{−2λt}`` (exact); shape ``t.shape + q0.shape``, ``t = lr·step``."""
    q0 = as_float_array("q0", q0)
    t = time_grid("t", t)
    lam = check_real("weight_decay", weight_decay, low=0.0)
    return np.exp(-2.0 * lam * t).reshape(t.shape + (1,) * q0.ndim) * q0


def balance_gd(
    q0: Any, lr: float, steps: Any, weight_decay: float = 0.0, grad_sq_diff: Any = None
) -> np.ndarray:
    """Discrete (S)GD balance ``Q_k`` for each ``k`` in ``steps``; shape ``(T,) + q0.shape``.

    Without ``grad_sq_diff``: ``(1 − ηλ)^{2k} Q₀`` (exact up to the ``η²Δ`` drift). With ``grad_sq_diff``
    of shape ``(K,) + q0.shape`` holding ``Δ_i = ‖g_w‖² + g_b² − ‖g_a‖²`` of the loss gradient (no weight
    decay) at steps ``i = 0 … K−1``: the exact ``Q_k`` for ``k <= K``.
    """
    q0 = as_float_array("q0", q0)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    lam = check_real("weight_decay", weight_decay, low=0.0)
    k = np.atleast_1d(as_float_array("steps", steps, ndim=(0, 1), low=0.0))
    if np.any(k != np.round(k)):
        raise LearndynValueError("steps has a non-integer entry; allowed: non-negative integers")
    k = k.astype(np.int64)
    c = (1.0 - lr * lam) ** 2
    expand = (slice(None),) + (None,) * q0.ndim
    out = np.power(c, k.astype(np.float64))[expand] * q0[None]
    if grad_sq_diff is None:
        return out
    delta = as_float_array("grad_sq_diff", grad_sq_diff)
    if delta.shape[1:] != q0.shape:
        raise LearndynValueError(f"grad_sq_diff has shape {delta.shape}; allowed: (K,) + {q0.shape}")
    if k.size and k.max() > delta.shape[0]:
        raise LearndynValueError(
            f"steps has max {int(k.max())} > len(grad_sq_diff)={delta.shape[0]}; "
            "allowed: steps <= len(grad_sq_diff)"
        )
    # D_k = Σ_{i<k} c^{k−1−i} Δ_i via the recursion D_{k+1} = c D_k + Δ_k
    acc = np.zeros((delta.shape[0] + 1,) + q0.shape)
    for i in range(delta.shape[0]):
        acc[i + 1] = c * acc[i] + delta[i]
    return out + lr**2 * acc[k]


def scalar_balance_sgd(
    q0: float,
    lr: float,
    steps: Any,
    batch: int,
    x_var: float,
    noise_var: float,
    v_star: float,
    fluctuation_correction: bool = True,
) -> np.ndarray:
    """Expected ``Q_k = E[u_k² − w_k²]`` for SGD on the scalar model ``uwx`` started on ``uw = v*`` (λ = 0).

    ``fluctuation_correction=False`` gives the leading-order law ``Q_0 (1 − η²σ²h/B)^k``; ``True`` adds the
    ``O(η)`` correction from the fluctuations of ``uw`` around ``v*`` (module docstring). Returns shape
    ``(T,)`` for the integer ``steps``.
    """
    q0 = check_real("q0", q0)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    batch = check_int("batch", batch, low=1)
    h = check_real("x_var", x_var, low=0.0, low_open=True)
    s2 = check_real("noise_var", noise_var, low=0.0)
    v_star = check_real("v_star", v_star)
    k = np.atleast_1d(as_float_array("steps", steps, ndim=(0, 1), low=0.0))
    if np.any(k != np.round(k)):
        raise LearndynValueError("steps has a non-integer entry; allowed: non-negative integers")
    k = k.astype(np.int64)
    base = lr**2 * s2 * h / batch
    if base >= 1.0:
        raise LearndynValueError(f"lr={lr!r} is out of range; allowed: lr**2 * noise_var * x_var / batch < 1")
    if not fluctuation_correction:
        return q0 * np.power(1.0 - base, k.astype(np.float64))
    kmax = int(k.max()) if k.size else 0
    q = np.empty(kmax + 1)
    q[0] = q0
    for i in range(kmax):
        q[i + 1] = q[i] * (
            1.0
            - base
            - lr**2 * h**2 * (1.0 + 2.0 / batch) * _product_variance(q[i], lr, batch, h, s2, v_star)
        )
    return q[k]


def balance_product_variance(
    q: float, lr: float, batch: int, x_var: float, noise_var: float, v_star: float
) -> float:
    """Stationary ``E[(uw − v*)²]`` of the scalar model at balance ``Q`` (adiabatic in ``Q``): 1-D online SGD
    (the exact formula of :func:`~learndyn.theory.sgd_stationary.sgd_stationary_covariance`, d = 1) at the
    effective learning rate ``η(u² + w²) = η√(Q² + 4v*²)``; see the module docstring."""
    return _product_variance(
        check_real("q", q),
        check_real("lr", lr, low=0.0, low_open=True),
        check_int("batch", batch, low=1),
        check_real("x_var", x_var, low=0.0, low_open=True),
        check_real("noise_var", noise_var, low=0.0),
        check_real("v_star", v_star),
    )


def _product_variance(q: float, lr: float, batch: int, h: float, s2: float, v_star: float) -> float:
    """Stationary ``E[δ²]`` of ``δ = uw − v*``: 1-D SGD (``sgd_stationary_covariance`` with d = 1) at the
    effective learning rate ``η(u² + w²) = η√(Q² + 4v*²)``."""
    lr_eff = lr * np.sqrt(q * q + 4.0 * v_star * v_star)
    margin = 2.0 - lr_eff * (1.0 + 1.0 / batch) * h
    kappa = lr_eff * h / (batch * margin) if margin > 0 else np.inf
    if not kappa < 1.0:
        raise LearndynValueError(
            f"lr={lr!r} is out of range (uw is SGD-unstable); "
            "allowed: lr * sqrt(q0^2 + 4 v_star^2) below the 1-D SGD threshold"
        )
    return lr_eff * s2 / (batch * (1.0 - kappa) * margin)


def scalar_balance_step(q: Any, minibatch_grad: Any, lr: float, weight_decay: float = 0.0) -> np.ndarray:
    """One exact SGD step of the scalar model's balance: ``Q[(1 − ηλ)² − η²A²]``.

    ``minibatch_grad`` is ``A``, the minibatch-mean derivative of the loss with respect to ``v = uw``.
    """
    q = as_float_array("q", q)
    a = as_float_array("minibatch_grad", minibatch_grad)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    lam = check_real("weight_decay", weight_decay, low=0.0)
    return q * ((1.0 - lr * lam) ** 2 - lr**2 * a**2)


def soft_threshold_spectrum(teacher_sv: Any, weight_decay: float, width: int) -> np.ndarray:
    """Singular values of the minimiser of ``½‖W − T‖²_F + λ‖W‖_*`` with ``rank W ≤ width``, descending.

    ``max(σ_i − λ, 0)`` for the ``width`` largest teacher values ``σ_i``: the global minimum of a two-layer
    linear network ``W = W₂W₁`` (hidden width ``width``) trained on whitened inputs with weight decay
    ``(λ/2)(‖W₁‖² + ‖W₂‖²)``: on balanced factors ``½(‖W₁‖² + ‖W₂‖²) = ‖W‖_*`` (Srebro, Rennie & Jaakkola
    2005), and the nuclear-norm proximal map soft-thresholds the spectrum. Length
    ``min(width, len(teacher_sv))``.
    """
    s = np.sort(np.asarray(teacher_sv, dtype=float))[::-1]
    lam = check_real("weight_decay", weight_decay, low=0.0)
    width = check_int("width", width, low=1)
    return np.maximum(s[: min(width, s.size)] - lam, 0.0)


def decay_errors(q: Any, t: Any, weight_decay: float, rate: float = 2.0) -> np.ndarray:
    """``‖q(t) − q₀e^{−2λt}‖ / (‖q₀‖e^{−2λt})`` per time: how far a measured balance is from
    :func:`balance_flow` (``q`` is ``(T, m)``, ``q₀ = q[0]`` at ``t[0] = 0``).

    ``rate`` replaces the 2 of the exponent (tests use it to show a wrong law fails).
    """
    q = np.asarray(q, dtype=float)
    theory = balance_flow(q[0], t, rate / 2.0 * weight_decay)
    return np.linalg.norm(q - theory, axis=1) / np.linalg.norm(theory, axis=1)
