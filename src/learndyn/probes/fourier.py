r"""Fourier concentration of a table indexed by tokens of ``Z_p`` (an embedding, an unembedding).

For a table ``W ∈ R^{p×n}`` take the discrete Fourier transform over the token axis,
``Ŵ_k = Σ_a W_a e^{−2πika/p}``, and its power per frequency ``P_k = ‖Ŵ_k‖² + ‖Ŵ_{p−k}‖²`` for
``k = 1 … ⌊p/2⌋`` (``Ŵ_{p−k} = conj Ŵ_k`` for real ``W``, so a frequency and its mirror are one real Fourier
mode; the Nyquist ``k = p/2`` of an even ``p`` counts once). The constant component ``k = 0`` is left out.
The normalised spectrum ``s_k = P_k / Σ_j P_j`` (:func:`fourier_spectrum`) gives two concentrations:
the fraction of power in the ``k`` strongest frequencies (:func:`topk_fraction`) and the Gini coefficient of
``s`` (:func:`gini`; 0 for a flat spectrum, ``1 − 1/m`` for one frequency of ``m``). A network that computes
modular arithmetic with a few key frequencies (grokking, :mod:`learndyn.phenomena.grokking`) concentrates its
embedding's power in them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from learndyn.validation import LearndynValueError, check_int

__all__ = ["fourier_spectrum", "gini", "topk_fraction"]


def fourier_spectrum(table: Tensor) -> Tensor:
    """Normalised power ``s_k`` of ``table`` (``p × n``, rows indexed by token) per frequency ``k ≥ 1``.

    ``P_k = ‖Ŵ_k‖² + ‖Ŵ_{p−k}‖²`` with ``Ŵ_k = Σ_a W_a e^{−2πika/p}`` (the Nyquist frequency of an even ``p``
    counted once), ``k = 0`` left out, normalised to sum to 1 (a table with no power outside ``k = 0`` gives
    the flat spectrum). Returns a float64 tensor of length ``p // 2``; entry ``k − 1`` is frequency ``k``.
    """
    w = table.detach().to(torch.float64)
    if w.dim() == 1:
        w = w[:, None]
    p = w.shape[0]
    if p < 3:
        raise LearndynValueError(f"fourier_spectrum: table has {p} rows; allowed: at least 3 (tokens)")
    power = torch.fft.rfft(w, dim=0).abs().square().reshape(p // 2 + 1, -1).sum(dim=1)[1:]
    power = 2.0 * power
    if p % 2 == 0:
        power[-1] = power[-1] / 2.0
    total = power.sum()
    if not bool(total > 0):
        return torch.full_like(power, 1.0 / power.numel())
    return power / total


def topk_fraction(spectrum: Tensor | np.ndarray, k: int) -> float:
    """Fraction of a normalised spectrum's power in its ``k`` largest entries."""
    s = torch.as_tensor(spectrum, dtype=torch.float64).reshape(-1)
    k = check_int("k", k, low=1, high=s.numel(), owner="topk_fraction")
    return float(torch.topk(s, k).values.sum() / s.sum())


def gini(spectrum: Tensor | np.ndarray) -> float:
    """Gini coefficient ``Σ_i (2i − m − 1) s_(i) / (m Σ s)`` of a non-negative vector sorted ascending.

    0 when all entries are equal, ``1 − 1/m`` when one entry holds everything.
    """
    s = torch.sort(torch.as_tensor(spectrum, dtype=torch.float64).reshape(-1)).values
    m = s.numel()
    total = s.sum()
    if m == 0 or not bool(total > 0):
        return 0.0
    i = torch.arange(1, m + 1, dtype=torch.float64)
    return float(((2 * i - m - 1) * s).sum() / (m * total))
