"""Choosing a scaled-dot-product-attention backend that supports what a measurement needs.

``F.scaled_dot_product_attention`` dispatches to fused kernels (flash, memory-efficient, cuDNN) when it can.
Those implement a first-order backward only: the CPU flash kernel of torch 2.13 has no double backward
(Hessian-vector products fail), no forward-mode AD (``jvp`` fails) and no ``vmap`` batching rule (batched
backward passes fall back to a slow per-example loop with a warning). The reference *math* backend is
composed of ordinary differentiable operations, so every autograd transform works through it and the
result is the same function (up to round-off). Statistics that need more than one ordinary backward pass
run their forward pass inside :func:`math_attention`; an ordinary forward/backward keeps the fused kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def math_attention(enabled: bool = True) -> Iterator[None]:
    """Inside the block ``F.scaled_dot_product_attention`` uses the math backend (if ``enabled``)."""
    if not enabled:
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield
