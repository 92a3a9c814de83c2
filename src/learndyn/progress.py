"""Progress bars for long work (rich), quiet when not attached to a terminal or when asked to be.

Use ``with progress_bar(total, "training") as advance: ... advance()``. Set ``LEARNDYN_PROGRESS=0`` to
silence bars everywhere (tests, CI logs); set it to ``1`` to force them on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress_enabled() -> bool:
    flag = os.environ.get("LEARNDYN_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty()


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; draws a rich bar on stderr when progress is enabled, else does nothing."""
    if not progress_enabled():
        yield lambda n=1: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
