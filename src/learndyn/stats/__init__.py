"""Per-sample gradient statistics (for the probes): per-sample gradients and their Gram matrices.

- :func:`per_sample_grads` -- per-sample gradients ``g_i = ∇ℓ_i`` by ``vmap(grad(functional_call))``.
- :func:`gradient_gram` / :class:`HookGramCollector` -- the ``B × B`` Gram matrix ``⟨g_i, g_j⟩`` per parameter
  (and optionally the elementwise mean square), by layer hooks for ``nn.Linear``/``nn.Conv2d`` without
  materialising per-sample gradients, with vmap as fallback. Returns a :class:`GradientGram`.
- :class:`BatchAdapter` -- how to read any training batch (dicts, custom losses) as outputs and a mean loss.
- :func:`structured_ntk` / :func:`per_sample_jacobians` -- the empirical NTK from per-layer factors
  (:mod:`~learndyn.stats.factors`) and its Jacobian reference.
- :func:`gauss_newton_diagonal` -- exact diagonal and trace of the Gauss-Newton matrix.
- :func:`math_attention` -- the attention backend for double backward, forward-mode AD and vmap.
"""

from learndyn.stats.attention import math_attention
from learndyn.stats.batch import BatchAdapter
from learndyn.stats.ggn import GaussNewtonDiagonal, gauss_newton_diagonal
from learndyn.stats.ntk import per_sample_jacobians, structured_ntk
from learndyn.stats.per_sample import (
    ROUTES,
    GradientGram,
    HookGramCollector,
    check_mean_reduction,
    gradient_gram,
    gradient_gram_of,
    gram_from_per_sample,
    gram_from_per_sample_of,
    per_sample_grads,
    per_sample_grads_of,
)

__all__ = [
    "ROUTES",
    "BatchAdapter",
    "GaussNewtonDiagonal",
    "GradientGram",
    "HookGramCollector",
    "check_mean_reduction",
    "gauss_newton_diagonal",
    "gradient_gram",
    "gradient_gram_of",
    "gram_from_per_sample",
    "gram_from_per_sample_of",
    "math_attention",
    "per_sample_grads",
    "per_sample_grads_of",
    "per_sample_jacobians",
    "structured_ntk",
]
