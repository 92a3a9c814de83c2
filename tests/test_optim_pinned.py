"""CovariantGD trajectories pinned to stored numbers: every structure, a few options each.

The numbers in ``data/optim_pinned_trajectories.json`` were recorded from the implementation before the
structures became pluggable objects (commit a5978aa, where the refactor was also checked to be bitwise equal
on 66 trajectories). They pin behaviour, not bits: float64, well-conditioned settings (``eps`` ≥ 1e-4) and 8
steps, compared to a relative 1e-9 -- round-off differences between CPUs (~1e-16) stay far below it, any
change of the arithmetic does not. Regenerate (``python tests/test_optim_pinned.py``) only for an intended
change of behaviour, and say so in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from learndyn.optim import CovariantGD

DATA = Path(__file__).parent / "data" / "optim_pinned_trajectories.json"
STEPS = 8

CASES = {
    "diag-adam": dict(structure="diag", eps_mode="outside", eps=1e-4),
    "diag-a1-covariance-wd": dict(
        structure="diag", alpha=1.0, moment="covariance", eps=1e-4, weight_decay=0.1
    ),
    "kron-stale-trace": dict(structure="kron", precondition_every=2, precondition_warmup=0, eps=1e-4),
    "kron-outside-maxdim": dict(structure="kron", eps_mode="outside", max_factor_dim=2, eps=1e-4),
    "kron-amortised-newton": dict(structure="kron", root_method="newton", statistics_every=2, eps=1e-3),
    "block-stale-trace": dict(structure="block", precondition_every=3, precondition_warmup=0, eps=1e-4),
    "block-outside-l2": dict(
        structure="block", eps_mode="outside", eps=1e-4, weight_decay=0.05, decoupled_weight_decay=False
    ),
    "full-newton-a1": dict(structure="full", root_method="newton", alpha=1.0, eps=1e-3),
    "full-amortised-stale": dict(
        structure="full", statistics_every=2, precondition_every=3, precondition_warmup=1, eps=1e-3
    ),
    "lowrank-r3-stale": dict(
        structure="lowrank", rank=3, precondition_every=2, precondition_warmup=0, eps=1e-3
    ),
    "lowrank-full-rank-outside": dict(structure="lowrank", rank=64, eps_mode="outside", eps=1e-3, alpha=0.75),
}


def _trajectory(kwargs: dict) -> torch.Tensor:
    """Parameters after each of :data:`STEPS` steps: two same-shaped layers (one kron bucket), biases."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    opt = CovariantGD(model.parameters(), lr=0.03, **kwargs)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = torch.randn(6, 3, generator=g, dtype=torch.float64)
        y = torch.randn(6, 2, generator=g, dtype=torch.float64)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return torch.stack(out)


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_the_pinned_numbers(case):
    pinned = torch.tensor(json.loads(DATA.read_text())[case], dtype=torch.float64)
    got = _trajectory(CASES[case])
    assert (pinned[-1] - pinned[0]).abs().max() > 1e-3  # the trajectory moves
    torch.testing.assert_close(got, pinned, rtol=1e-9, atol=1e-12)


if __name__ == "__main__":  # regenerate (see the module doc)
    rows = {k: [json.dumps(step) for step in _trajectory(v).tolist()] for k, v in CASES.items()}
    body = ",\n".join(f'"{k}": [\n' + ",\n".join(steps) + "\n]" for k, steps in rows.items())
    DATA.write_text("{\n" + body + "\n}\n")
    print(f"wrote {DATA}", file=sys.stderr)
