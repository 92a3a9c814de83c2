"""``torch_threads(n)``: run a block with ``n`` torch intra-op threads, then restore the previous setting;
``@threaded``: an experiment's ``run`` that does so with its config's ``threads``.

The phenomena that use it train many small tensors (10³–10⁵ elements per op), where intra-op threads cost more
than they save, and far more when the cores are shared (measured: a 4000-chain SGD step 3–10× slower with two
threads than with one on a loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set ``torch.set_num_threads(n)`` inside the block (``None``: leave it); restore it afterwards."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


R = TypeVar("R")


def threaded(run: Callable[[Any, Any], R]) -> Callable[[Any, Any], R]:
    """Decorate an experiment's ``run(config, recorder)`` to run with ``torch_threads(config.threads)``."""

    @functools.wraps(run)
    def wrapper(config: Any, recorder: Any) -> R:
        with torch_threads(config.threads):
            return run(config, recorder)

    return wrapper
