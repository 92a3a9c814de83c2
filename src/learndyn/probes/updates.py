"""The covariance of an optimizer's updates over a sliding window, and its effective dimension.

:class:`UpdateCovarianceProbe` keeps the last ``window`` updates ``u_k = (θ_k − θ_{k+1})/lr`` (the step the
optimizer took, per unit learning rate) and reports the participation ratio ``PR = (Σλ)²/Σλ²`` of their
covariance's eigenvalues (:func:`~learndyn.theory.covariant.participation_ratio`): the effective number of
directions the updates explore -- ``r`` for an update whitened on a rank-``r`` subspace (CovariantGD at
α = ½), close to 1 when one direction dominates. It is not in the probe-name table (``Monitor(probes=[...])``
by name): it must run every step; construct it directly.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

from learndyn.probes.base import Measurement, Probe, ProbeContext
from learndyn.theory.covariant import participation_ratio
from learndyn.validation import check_int

__all__ = ["UpdateCovarianceProbe"]


class UpdateCovarianceProbe(Probe):
    """Covariance of the last ``window`` updates ``u_k = (θ_k − θ_{k+1})/lr`` and its participation ratio.

    Runs every step (it needs every update); reports every ``report_every`` steps once the window is full:
    ``updates/pr`` and the eigenvalues ``updates/cov_eigs`` (array, descending). The model's trainable
    parameters are flattened in ``named_parameters`` order.
    """

    name = "updates"
    state_attrs = ("_prev", "_buffer")

    def __init__(self, window: int, report_every: int) -> None:
        super().__init__(every=1)
        self.window = check_int("window", window, low=2, owner="UpdateCovarianceProbe")
        self.report_every = check_int("report_every", report_every, low=1, owner="UpdateCovarianceProbe")
        self.reset()

    def reset(self) -> None:
        self._prev: Tensor | None = None
        self._buffer: deque[Tensor] = deque(maxlen=self.window)

    def measure(self, ctx: ProbeContext) -> Measurement:
        theta = torch.cat([p.reshape(-1) for p in ctx.params.values()]).to(torch.float64).clone()
        if self._prev is not None and ctx.lr:
            self._buffer.append((self._prev - theta) / ctx.lr)
        self._prev = theta
        if len(self._buffer) < self.window or ctx.step % self.report_every:
            return {}
        U = torch.stack(tuple(self._buffer))
        U = U - U.mean(0)
        eigs = torch.linalg.eigvalsh(U.T @ U / (U.shape[0] - 1)).flip(0).clamp_min(0).numpy()
        return {"updates/pr": participation_ratio(eigs), "updates/cov_eigs": eigs}
