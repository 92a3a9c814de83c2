"""Probabilistic stability of SGD: the Lyapunov rate E log|1 − ηh| against brute force and simulation.

Brute force: the minibatch-mean distribution against all n^B ordered batches (exact, 1e-12); the p-th moment
rate against all n^T sample sequences (exact, 1e-12). Simulation (numpy, float64): 400 chains × 2000 steps
of the linearised SGD product and of the 2 × 2 saddle of ``½(uwx − y)²`` (renormalised every step);
measured errors ≤ 2 standard errors, tolerance 5 standard errors (≈ 0.005 per step).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from learndyn.theory.probabilistic_stability import (
    lyapunov_rate,
    minibatch_curvatures,
    moment_rate,
    product_saddle_rates,
    two_point_products,
)
from learndyn.validation import LearndynValueError


def test_minibatch_distribution_matches_all_ordered_batches():
    per_sample = np.array([-1.5, 0.25, 2.0])
    for batch in (1, 2, 4):
        values, probs = minibatch_curvatures(per_sample, batch)
        brute: dict[float, float] = {}
        for combo in itertools.product(per_sample, repeat=batch):
            key = round(float(np.mean(combo)), 12)
            brute[key] = brute.get(key, 0.0) + 3.0**-batch
        np.testing.assert_allclose(values, sorted(brute), atol=1e-12)
        np.testing.assert_allclose(probs, [brute[k] for k in sorted(brute)], atol=1e-12)


def _simulated_rate(lr, values, probs, steps=2000, chains=400, seed=0):
    """Chains of the scalar product δ ← (1 − ηh)δ, renormalised each step: (rate mean, standard error)."""
    rng = np.random.default_rng(seed)
    h = rng.choice(values, p=probs, size=(chains, steps))
    log_norm = np.zeros(chains)
    delta = np.ones(chains)
    for t in range(steps):
        delta = (1.0 - lr * h[:, t]) * delta
        log_norm += np.log(np.abs(delta))
        delta = np.sign(delta)
    rates = log_norm / steps
    return rates.mean(), rates.std(ddof=1) / np.sqrt(chains)


@pytest.mark.parametrize("lr", [0.1, 0.45, 0.9])
def test_rate_matches_simulated_products(lr):
    values, probs = np.array([-2.0, 0.5, 3.0]), np.array([0.3, 0.5, 0.2])
    sim, se = _simulated_rate(lr, values, probs)
    theory = float(lyapunov_rate(lr, values, probs))
    assert abs(sim - theory) <= 5 * se, (sim, theory, se)


def test_moment_rate_is_exact_over_all_sequences_and_bounds_the_rate():
    values, probs = np.array([-1.0, 0.5, 4.0]), np.array([0.25, 0.5, 0.25])
    lr, steps = 0.4, 6
    for p in (1.0, 2.0, 4.0):
        total = 0.0
        for seq in itertools.product(range(3), repeat=steps):
            total += np.prod(probs[list(seq)]) * np.prod(np.abs(1 - lr * values[list(seq)])) ** p
        exact = float(moment_rate(lr, values, probs, p))
        assert np.log(total) / (p * steps) == pytest.approx(exact, abs=1e-12)
    lrs = np.linspace(0.01, 1.0, 50)
    assert np.all(lyapunov_rate(lrs, values, probs) <= moment_rate(lrs, values, probs) + 1e-15)  # Jensen
    # no noise: every rate is log|1 − ηh|
    assert float(moment_rate(0.3, [2.0], [1.0])) == pytest.approx(np.log(0.4))
    assert float(lyapunov_rate(0.5, [2.0], [1.0])) == -np.inf


def test_two_point_saddle_rates_closed_form_and_window():
    rng = np.random.default_rng(1)
    for _ in range(200):
        lr, mu, sigma = rng.uniform(0.01, 1.0), rng.uniform(0.1, 2.0), rng.uniform(0.0, 6.0)
        plus, minus = product_saddle_rates(lr, two_point_products(mu, sigma))
        x, a = (lr * sigma) ** 2, lr * mu
        assert float(plus) == pytest.approx(0.5 * np.log(abs((1 + a) ** 2 - x)), abs=1e-12)
        assert float(minus) == pytest.approx(0.5 * np.log(abs((1 - a) ** 2 - x)), abs=1e-12)
        attractive = max(plus, minus) < 0
        window = (1 + a) ** 2 - 1 < x < (1 - a) ** 2 + 1
        if min(abs(x - ((1 + a) ** 2 - 1)), abs(x - ((1 - a) ** 2 + 1))) > 1e-9:
            assert attractive == window
    # without noise the saddle always repels (GD escapes it)
    assert all(max(product_saddle_rates(lr, two_point_products(1.0, 0.0))) > 0 for lr in (0.01, 0.5, 1.5))


def test_saddle_rate_matches_the_linearised_two_by_two_dynamics():
    """Random products of I − ηĤ with Ĥ = [[0, −c̄], [−c̄, 0]] (batch 2): rate of ‖δ‖ → max(Λ₊, Λ₋)."""
    lr, products, batch = 0.3, two_point_products(1.0, 3.5), 2
    rng = np.random.default_rng(2)
    chains, steps = 400, 2000
    delta = rng.standard_normal((chains, 2))
    delta /= np.linalg.norm(delta, axis=1, keepdims=True)
    log_norm = np.zeros(chains)
    for _ in range(steps):
        c = products[rng.integers(0, 2, size=(chains, batch))].mean(1)
        delta = np.stack([delta[:, 0] + lr * c * delta[:, 1], delta[:, 1] + lr * c * delta[:, 0]], axis=1)
        norm = np.linalg.norm(delta, axis=1)
        log_norm += np.log(norm)
        delta /= norm[:, None]
    rates = log_norm / steps
    theory = max(product_saddle_rates(lr, products, batch))
    # the finite-T bias of a random start is at most log(√2)/T
    assert abs(rates.mean() - theory) <= 5 * rates.std(ddof=1) / np.sqrt(chains) + np.log(2) / (2 * steps)
    assert theory < 0  # this point is attractive even with batch 2


def test_errors_are_one_line():
    with pytest.raises(LearndynValueError, match="sum 1"):
        lyapunov_rate(0.1, [1.0, 2.0], [0.5, 0.6])
    with pytest.raises(LearndynValueError, match="equal non-empty"):
        lyapunov_rate(0.1, [1.0, 2.0], [1.0])
    with pytest.raises(LearndynValueError, match="at most"):
        minibatch_curvatures(np.arange(40.0), 12)
    with pytest.raises(LearndynValueError, match="noise"):
        two_point_products(1.0, -1.0)
