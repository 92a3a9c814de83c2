"""Gradient statistics shared by the optimizer and the probes.

- :func:`per_sample_grads` -- per-sample gradients ``g_i = ∇ℓ_i`` by ``vmap(grad(functional_call))``.
- :func:`gradient_gram` / :class:`HookGramCollector` -- the ``B × B`` Gram matrix ``⟨g_i, g_j⟩`` per parameter
  (and optionally the elementwise mean square), by layer hooks for ``nn.Linear``/``nn.Conv2d`` without
  materialising per-sample gradients, with vmap as fallback. Returns a :class:`GradientGram`.
- :mod:`~learndyn.stats.moments` -- EMA helpers with the time-constant convention ``β = τ/(1+τ)``.
"""

from learndyn.stats.moments import beta_from_tau, bias_correction, ema_update_, tau_from_beta
from learndyn.stats.per_sample import (
    ROUTES,
    GradientGram,
    HookGramCollector,
    check_mean_reduction,
    gradient_gram,
    gram_from_per_sample,
    per_sample_grads,
)

__all__ = [
    "ROUTES",
    "GradientGram",
    "HookGramCollector",
    "beta_from_tau",
    "bias_correction",
    "check_mean_reduction",
    "ema_update_",
    "gradient_gram",
    "gram_from_per_sample",
    "per_sample_grads",
    "tau_from_beta",
]
