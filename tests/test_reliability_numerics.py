"""Numerics at the edges: CovariantGD stays finite on rank-deficient, zero, tiny and huge gradient statistics
for every structure, root method and moment; the matrix roots stay finite and accurate up to condition
numbers of 1e12 at any scale (random spectra and bases, batched, pseudo-inverse, float32 input).

The Newton root alone cannot resolve ``eps`` below float64 resolution relative to the statistic
(``eps / ||S|| < ~1e-16``, e.g. ``eps=1e-8`` with statistics of 1e30, or a rank-deficient ``S`` of norm above
~1e8); ``inverse_metric`` checks each Newton root's residual and recomputes those by ``eigh``, and these tests
include exactly those cases.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learndyn.optim import CovariantGD
from learndyn.optim.matfun import inverse_metric

STRUCTURES = ("diag", "kron", "block", "full", "lowrank")
METHODS = ("eigh", "newton")
# gradient sizes: statistics (squared gradients) of 1e-30 / 1e30 in both dtypes, 1e-60 / 1e60 in float64
SCALES = (1e-15, 1e15, 1e-30, 1e30)


def _gradients(kind: str, scale: float, dtype: torch.dtype, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    W = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    c = torch.randn(1, generator=g, dtype=torch.float64)
    if kind == "rank1":  # every step the same direction: a rank-1 statistic, b never moves
        W = torch.outer(torch.arange(1.0, 6.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
        b = torch.zeros(3, dtype=torch.float64)
    elif kind == "zero":
        W, b, c = W * 0, b * 0, c * 0
    return [(t * scale).to(dtype) for t in (W, b, c)]


def _params() -> list[torch.Tensor]:
    return [torch.ones(5, 3), torch.zeros(3), torch.ones(1)]


def _finite_everywhere(structure: str, method: str, scale: float) -> list[str]:
    """Run every moment x dtype x statistic kind x eps for 4 steps; return the combinations that failed."""
    failures = []
    for moment, dtype, kind, eps in itertools.product(
        ("second", "covariance"), (torch.float32, torch.float64), ("full", "rank1", "zero"), (1e-8, 0.0)
    ):
        if dtype == torch.float32 and abs(math.log10(scale)) > 19:  # the squares would leave float32's range
            continue
        if method == "newton" and eps == 0.0 and structure in ("kron", "block", "full"):
            continue  # refused at construction (the iteration needs S + eps*I positive definite)
        params = [p.to(dtype).requires_grad_() for p in _params()]
        try:
            opt = CovariantGD(
                params, lr=0.1, alpha=0.5, structure=structure, root_method=method, moment=moment, eps=eps,
                precondition_every=1,
            )
            for step in range(4):
                for p, grad in zip(params, _gradients(kind, scale, dtype, step), strict=True):
                    p.grad = grad
                opt.step()
                if not all(torch.isfinite(p).all() for p in params):
                    raise FloatingPointError(f"non-finite parameters after step {step}")
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            where = f"{moment}/{str(dtype)[6:]}/{kind}/eps={eps:g}"
            failures.append(f"{where}: {type(exc).__name__}: {exc}"[:160])
    return failures


def _cases():
    for structure, method, scale in itertools.product(STRUCTURES, METHODS, SCALES):
        yield pytest.param(structure, method, scale, id=f"{structure}-{method}-{scale:g}")


@pytest.mark.parametrize(("structure", "method", "scale"), list(_cases()))
def test_covariant_gd_stays_finite_on_extreme_statistics(structure, method, scale):
    failures = _finite_everywhere(structure, method, scale)
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------ matrix roots
def _random_psd(n: int, log_cond: float, log_scale: float, seed: int, zeros: int = 0):
    """``(A, Q, λ)``: ``A = Q diag(λ) Qᵀ`` with a random orthogonal ``Q``, ``λ`` log-uniform between
    ``scale/cond`` and ``scale`` (both ends present) and ``zeros`` exact zero eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    u = torch.rand(n, generator=g, dtype=torch.float64)
    lam = 10.0 ** (-log_cond * u)
    lam[0] = 1.0
    if n > 1:
        lam[1] = 10.0**-log_cond
    lam = lam * 10.0**log_scale
    if zeros:
        lam[-zeros:] = 0.0
    return (Q * lam) @ Q.T, Q, lam


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _bound(n: int, log_cond: float) -> float:
    """float64 round-off carried by the reference itself, with room: measured errors stay below a fifth."""
    return 20 * (1e-16 * n * 10.0**log_cond + 1e-14)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 24),
    log_cond=st.floats(0, 12),
    log_scale=st.floats(-30, 30),
    alpha=st.sampled_from([0.25, 1 / 3, 0.5, 0.75, 1.0]),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_matrix_roots_are_finite_and_accurate_up_to_condition_1e12(
    n, log_cond, log_scale, alpha, method, seed
):
    A, Q, lam = _random_psd(n, log_cond, log_scale, seed)
    want = (Q * lam.pow(-alpha)) @ Q.T
    got = inverse_metric(A, alpha, method=method)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < _bound(n, log_cond)


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_of_mixed_conditions_is_each_as_accurate_as_alone(method):
    mats = [_random_psd(10, c, s, seed=i) for i, (c, s) in enumerate([(0, 0), (4, -30), (8, 30), (12, 0)])]
    A = torch.stack([m[0] for m in mats])
    got = inverse_metric(A, 0.5, method=method)
    for i, (a, Q, lam) in enumerate(mats):
        alone = inverse_metric(a, 0.5, method=method)
        assert torch.isfinite(got[i]).all()
        assert _rel(got[i], (Q * lam.pow(-0.5)) @ Q.T) < _bound(10, 12)
        assert _rel(got[i], alone) < _bound(10, 12)


@pytest.mark.parametrize("log_scale", [-30, 0, 30])
def test_pseudo_inverse_of_an_ill_conditioned_rank_deficient_matrix(log_scale):
    A, Q, lam = _random_psd(12, 12, log_scale, seed=7, zeros=4)
    got = inverse_metric(A, 1.0, eps=0.0)
    h = torch.where(lam > 0, lam.clamp_min(1e-300).reciprocal(), torch.zeros_like(lam))
    want = (Q * h) @ Q.T
    assert torch.isfinite(got).all()
    assert _rel(got, want) < _bound(12, 12)
    null = Q[:, lam == 0]
    assert float((got @ null).norm() / got.norm()) < _bound(12, 12)  # no more than round-off leaks into it


@pytest.mark.parametrize("method", METHODS)
def test_float32_statistics_at_condition_1e12_stay_finite(method):
    A, _, _ = _random_psd(16, 12, 20, seed=3)
    out = inverse_metric(A.float(), 0.5, eps=1e-8 * 1e20, method=method)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("method", METHODS)
def test_repeated_eigenvalues_at_condition_1e12(method):
    g = torch.Generator().manual_seed(11)
    Q, _ = torch.linalg.qr(torch.randn(9, 9, generator=g, dtype=torch.float64))
    lam = torch.tensor([1.0] * 4 + [1e-12] * 5, dtype=torch.float64)
    got = inverse_metric((Q * lam) @ Q.T, 0.5, method=method)
    assert torch.isfinite(got).all() and _rel(got, (Q * lam.pow(-0.5)) @ Q.T) < _bound(9, 12)


@pytest.mark.parametrize(
    "method", ["eigh", "newton"]
)
def test_rank_deficient_statistics_far_above_eps_stay_finite(method):
    v = torch.arange(1.0, 7.0, dtype=torch.float64)
    S = 1e10 * torch.outer(v, v)  # eps / ||S|| ~ 1e-20
    out = inverse_metric(S, 0.5, eps=1e-8, method=method)
    assert torch.isfinite(out).all()
