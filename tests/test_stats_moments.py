"""EMA helpers: the time-constant convention of the design."""

import pytest
import torch

from learndyn.stats import beta_from_tau, bias_correction, ema_update_, tau_from_beta
from learndyn.validation import LearndynValueError


def test_adam_defaults_and_round_trip():
    assert beta_from_tau(9) == pytest.approx(0.9)
    assert beta_from_tau(999) == pytest.approx(0.999)
    assert tau_from_beta(beta_from_tau(3.5)) == pytest.approx(3.5)
    assert beta_from_tau(0) == 0.0


def test_ema_update_matches_recursion_and_bias_correction():
    tau = 3.0
    beta = beta_from_tau(tau)
    avg, lst = torch.zeros(3), [torch.zeros(2), torch.zeros(())]
    values = [torch.tensor([1.0, 2.0, 3.0]) * k for k in range(1, 5)]
    ref = torch.zeros(3)
    for v in values:
        ema_update_(avg, v, beta)
        ema_update_(lst, [v[:2], v[2]], beta)
        ref = v / (1 + tau) + tau / (1 + tau) * ref
    torch.testing.assert_close(avg, ref)
    torch.testing.assert_close(torch.cat([lst[0], lst[1][None]]), ref)
    const = torch.zeros(())
    for _ in range(5):
        ema_update_(const, torch.tensor(2.0), beta)
    assert float(const) / bias_correction(beta, 5) == pytest.approx(2.0)


def test_bad_values_name_the_range():
    with pytest.raises(LearndynValueError, match="tau"):
        beta_from_tau(-1)
    with pytest.raises(LearndynValueError, match="beta"):
        tau_from_beta(1.0)
    with pytest.raises(LearndynValueError, match="t="):
        bias_correction(0.9, 0)
