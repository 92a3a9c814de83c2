"""A worker process that dies with its parent: no orphan keeps training after its sweep was killed.

:func:`die_with_parent` asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) to send this process a signal when
its parent exits, however the parent ends (SIGKILL included). Where that is not available it starts a daemon
thread that polls :func:`os.getppid` instead. The default signal is SIGTERM, which learndyn's workers turn
into KeyboardInterrupt: the run in progress is marked ``interrupted`` on the way out.

This module imports nothing from learndyn, so a worker can arm it before it imports torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> str:
    """Arrange for ``signum`` to reach this process once ``parent_pid`` (its parent) is gone.

    Returns how: ``"prctl"`` (the kernel signals it; Linux), ``"poll"`` (a daemon thread checks the parent
    every :data:`POLL_SECONDS`) or ``"gone"`` (the parent had already exited: the signal was sent now).
    Caveat of ``prctl``: the signal comes when the parent *thread* that started this process exits; learndyn's
    pool starts and stops its workers in the same thread.
    """
    how = "prctl" if sys.platform.startswith("linux") and _prctl(signum) else "poll"
    if os.getppid() != parent_pid:  # the parent died before the watch was set
        os.kill(os.getpid(), signum)
        return "gone"
    if how == "poll":
        watch = threading.Thread(target=_poll, args=(parent_pid, signum), name="learndyn-watch", daemon=True)
        watch.start()
    return how


def _prctl(signum: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll(parent_pid: int, signum: int) -> None:
    stop = threading.Event()
    while not stop.wait(POLL_SECONDS):
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signum)
            return
