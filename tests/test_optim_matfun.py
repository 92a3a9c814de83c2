"""Matrix functions: eigh and Newton inverse roots against matrices with known spectra."""

import math

import pytest
import torch

from learndyn.optim import functional as Fn
from learndyn.optim.matfun import (
    batched,
    eigh_psd,
    fractional_exponent,
    inverse_metric,
    inverse_root_newton,
    psd_power,
    spectral_coefficients,
)

ALPHAS = [0.25, 1 / 3, 0.5, 0.75, 1.0]


def _known(n=12, cond=1e2, batch=(), seed=0, dtype=torch.float64):
    """A = Q diag(λ) Qᵀ with log-spaced λ from 1 down to 1/cond; returns (A, Q, λ)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64).expand(*batch, n)
    A = (Q * lam.unsqueeze(-2)) @ Q.mT
    return A.to(dtype), Q, lam


def _exact(Q, lam, fn):
    return (Q * fn(lam).unsqueeze(-2)) @ Q.mT


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_eigh_psd_reconstructs_and_clamps():
    A, Q, lam = _known(batch=(3,))
    evals, evecs = eigh_psd(A)
    assert evals.shape == (3, 12) and evecs.shape == (3, 12, 12)
    assert _rel((evecs * evals.unsqueeze(-2)) @ evecs.mT, A) < 1e-13
    # a symmetric matrix with a (round-off) negative eigenvalue is clamped to PSD
    B = A[0] - (lam[0, -1] + 1e-3) * torch.outer(Q[0, :, -1], Q[0, :, -1])  # eigenvalue -1e-3
    assert eigh_psd(B)[0].min() == 0.0


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_inverse_metric_eigh_equals_known_spectrum(alpha, eps_mode):
    A, Q, lam = _known(batch=(2,))
    eps = 1e-3
    if eps_mode == "inside":
        want = _exact(Q, lam, lambda x: (x + eps) ** -alpha)
    else:
        want = _exact(Q, lam, lambda x: 1 / (x**alpha + eps))
    assert _rel(inverse_metric(A, alpha, eps, eps_mode), want) < 1e-12


def test_alpha_zero_is_identity():
    A, _, _ = _known()
    torch.testing.assert_close(inverse_metric(A, 0.0, 1e-3), torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(
        inverse_metric(A, 0.0, 1e-3, "outside"), torch.eye(12, dtype=torch.float64) / 1.001
    )


@pytest.mark.parametrize("alpha", ALPHAS)
def test_newton_matches_eigh_on_random_spd(alpha):
    A, Q, lam = _known(n=16, cond=1e3, batch=(4,), seed=1)
    want = _exact(Q, lam, lambda x: x**-alpha)
    newton = inverse_metric(A, alpha, method="newton")
    eigh = inverse_metric(A, alpha, method="eigh")
    assert _rel(newton, want) < 1e-11
    assert _rel(newton, eigh) < 1e-11


@pytest.mark.parametrize("cond, bound", [(1e4, 1e-11), (1e8, 1e-7), (1e12, 1e-4)])
@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0])
def test_ill_conditioned_bounded_error_no_nan(cond, bound, alpha):
    """Stated bounds on the relative Frobenius error of A^{-α}: 1e-11 at cond 1e4, 1e-7 at 1e8, 1e-4 at
    1e12, for both methods (measured: ≤ 5e-13, ≤ 3e-9, ≤ 9e-6 -- the float64 floor ~u·cond, which the
    float64-built reference matrix itself carries)."""
    A, Q, lam = _known(n=20, cond=cond, seed=2)
    want = _exact(Q, lam, lambda x: x**-alpha)
    for method in ("eigh", "newton"):
        got = inverse_metric(A, alpha, method=method)
        assert torch.isfinite(got).all()
        assert _rel(got, want) < bound, method


def test_float32_input_is_computed_in_float64():
    A, Q, lam = _known(n=10, cond=1e6, dtype=torch.float32)
    got = inverse_metric(A, 0.5)
    assert got.dtype == torch.float32
    want = inverse_metric(A.double(), 0.5).float()  # the same float32 input, decomposed in float64
    assert _rel(got.double(), want.double()) < 1e-6
    assert inverse_metric(A, 0.5, out_dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_zero_and_rank_deficient_statistics_stay_finite(method):
    Z = torch.zeros(3, 6, 6, dtype=torch.float64)
    v = torch.randn(6, 2, dtype=torch.float64)
    R = v @ v.T  # rank 2
    for S in (Z, R):
        for alpha in (0.5, 1.0):
            out = inverse_metric(S, alpha, eps=1e-8, method=method)
            assert torch.isfinite(out).all()
    # zero S with eps: (εI)^{-α}
    torch.testing.assert_close(
        inverse_metric(Z, 0.5, eps=1e-8, method=method), 1e4 * torch.eye(6).expand(3, 6, 6).double()
    )


def test_eps_zero_is_pseudo_inverse():
    v = torch.randn(6, 2, dtype=torch.float64)
    R = v @ v.T
    torch.testing.assert_close(inverse_metric(R, 1.0, eps=0.0), torch.linalg.pinv(R, hermitian=True))
    assert torch.equal(inverse_metric(torch.zeros(4, 4), 0.5, eps=0.0), torch.zeros(4, 4))
    assert torch.isfinite(inverse_metric(R, 0.5, eps=0.0, eps_mode="outside")).all()
    torch.testing.assert_close(psd_power(R, -1.0), torch.linalg.pinv(R, hermitian=True))


@pytest.mark.parametrize("scale", [1e-30, 1e30])
@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_tiny_and_huge_statistics(scale, method):
    """Finite, and exactly scale-covariant: (cS)^{-α} = c^{-α} S^{-α} (ε = 0)."""
    A, _, _ = _known(n=8, cond=1e3, seed=3)
    for alpha in (0.5, 1.0):
        got = inverse_metric(scale * A, alpha, method=method)
        assert torch.isfinite(got).all()
        assert _rel(got, scale**-alpha * inverse_metric(A, alpha, method=method)) < 1e-10
    # float32 statistics of size 1e-30 / 1e30 (inside float32's range), with the usual eps
    out = inverse_metric((scale * A).float(), 0.5, eps=1e-8, method=method)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    diag = Fn.foreach_diag_metric(
        [torch.full((3,), scale, dtype=torch.float32)], bc2=1.0, alpha=0.5, eps=1e-8, eps_mode="outside"
    )
    assert torch.isfinite(diag[0]).all() and (diag[0] > 0).all()


def test_newton_inverse_root_directly():
    A, Q, lam = _known(n=10, cond=1e5, batch=(2,), seed=4)
    for p in (1, 2, 4, 7):
        assert _rel(inverse_root_newton(A, p), _exact(Q, lam, lambda x, p=p: x ** (-1 / p))) < 1e-9


def test_fractional_exponent():
    assert fractional_exponent(0.5) == 0.5 and fractional_exponent(0.25).denominator == 4
    assert fractional_exponent(1 / 3).denominator == 3
    with pytest.raises(ValueError, match=r"alpha=0\.123456789 is not allowed with root_method='newton'"):
        fractional_exponent(0.123456789)
    with pytest.raises(ValueError, match=r"allowed: 'inside'"):
        inverse_metric(torch.eye(3), 0.5, 1e-3, "outside", method="newton")


def test_batched_groups_same_shapes_and_keeps_order():
    mats = [_known(n=n, seed=s)[0] for n, s in [(3, 0), (5, 1), (3, 2), (4, 3), (5, 4)]]
    calls = []

    def fn(X):
        calls.append(X.shape)
        return inverse_metric(X, 0.5, 1e-6)

    out = batched(mats, fn)
    assert sorted(c[0] for c in calls) == [1, 2, 2]  # three shapes, one call each
    for m, o in zip(mats, out, strict=True):
        torch.testing.assert_close(o, inverse_metric(m, 0.5, 1e-6))


def test_spectral_coefficients_cutoffs():
    lam = torch.tensor([0.0, 1e-20, 1.0], dtype=torch.float64)
    rel = spectral_coefficients(lam, 0.5, cutoff="relative")
    zero = spectral_coefficients(lam, 0.5, cutoff="zero")
    assert rel.tolist() == [0.0, 0.0, 1.0]  # 1e-20 is below n·u·λmax: treated as zero
    assert zero[0] == 0.0 and zero[1] == pytest.approx(1e10) and zero[2] == 1.0


def test_alpha_half_covariance_metric_whitens_the_noise():
    """At α = ½ with S = κ (the noise covariance), the update covariance g⁻¹ κ g⁻¹ is the projector onto
    the support of κ (design fact)."""
    g = torch.Generator().manual_seed(5)
    B = torch.randn(7, 4, generator=g, dtype=torch.float64)
    kappa = B @ B.T  # rank 4
    ginv = inverse_metric(kappa, 0.5, eps=0.0)
    W = ginv @ kappa @ ginv
    proj = B @ torch.linalg.pinv(B)
    torch.testing.assert_close(W, proj, atol=1e-10, rtol=0)
