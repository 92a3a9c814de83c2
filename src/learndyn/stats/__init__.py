"""Per-sample gradient statistics (for the probes): per-sample gradients and their Gram matrices.

- :func:`per_sample_grads` -- per-sample gradients ``g_i = ∇ℓ_i`` by ``vmap(grad(functional_call))``.
- :func:`gradient_gram` / :class:`HookGramCollector` -- the ``B × B`` Gram matrix ``⟨g_i, g_j⟩`` per parameter
  (and optionally the elementwise mean square), by layer hooks for ``nn.Linear``/``nn.Conv2d`` without
  materialising per-sample gradients, with vmap as fallback. Returns a :class:`GradientGram`.
"""

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
    "check_mean_reduction",
    "gradient_gram",
    "gram_from_per_sample",
    "per_sample_grads",
]
