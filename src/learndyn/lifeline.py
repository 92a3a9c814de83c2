"""A worker process that dies with its parent: no orphan keeps training after its sweep was killed.

:func:`die_with_parent` asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) to send this process a signal when
its parent exits, however the parent ends (SIGKILL included). Where that is not available it starts a daemon
thread that polls :func:`os.getppid` instead. The default signal is SIGTERM, which learndyn's workers turn
into KeyboardInterrupt: the run in progress is marked ``interrupted`` on the way out.

:func:`start_reaper` covers helpers a driver starts but does not parent directly (a local Ray instance): a
detached process ends them once the driver is gone.

This module imports nothing from learndyn, so a worker can arm it before it imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time

__all__ = ["die_with_parent", "start_reaper"]

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


# ------------------------------------------------------------- reaping helpers that would outlive a driver
REAP_GRACE_SECONDS = 3.0
"""After SIGTERM, how long the reaper waits before it SIGKILLs what is left."""


def start_reaper(parent_pid: int | None = None) -> subprocess.Popen:
    """Start a detached process that, once ``parent_pid`` (default: this process) is gone -- however it ends,
    SIGKILL included -- ends every descendant the parent started *after* this call, and their children.

    For helper processes a driver starts but does not control, such as a local Ray instance (its GCS server,
    raylet and agents; the raylet's workers): the kernel's parent-death signal does not reach them. Call it
    just before starting them. The reaper polls the parent's process tree every :data:`POLL_SECONDS` while
    the parent lives, so it knows the helpers even when an intermediate one exits first (a raylet may go
    before its agents); a helper started and orphaned within one poll can be missed. The descendants that
    already exist now are passed to it and left alone; the call returns once the reaper watches. Processes
    are tracked with their start times, so a reused pid is never signalled. The reaper runs in its own
    session (a signal to the driver's process group does not end it early), exits when its work is done,
    and the driver stops it after a clean shutdown (``reaper.kill()``). Needs ``psutil`` (a dependency of
    Ray).
    """
    import psutil

    parent = psutil.Process(os.getpid() if parent_pid is None else parent_pid)
    existing = [f"{p.pid}:{p.create_time()!r}" for p in parent.children(recursive=True)]
    quiet = subprocess.DEVNULL
    reaper = subprocess.Popen(  # this file as a script: the reaper imports neither learndyn nor torch
        [sys.executable, os.path.abspath(__file__), str(parent.pid), *existing],
        stdin=quiet, stdout=subprocess.PIPE, stderr=quiet, start_new_session=True,
    )
    assert reaper.stdout is not None
    reaper.stdout.readline()  # "ready": it watches the tree from now on (an empty line: it failed to start)
    reaper.stdout.close()
    return reaper


def _reap(parent_pid: int, existing: list[str]) -> None:
    """The reaper's body: track the parent's new descendants while it lives, then SIGTERM them (and their
    children), wait :data:`REAP_GRACE_SECONDS`, SIGKILL what is left."""
    import psutil

    skip = {(int(pid), float(t)) for pid, _, t in (mark.partition(":") for mark in existing)}
    me = os.getpid()
    tracked: dict[int, psutil.Process] = {}
    ready = True
    try:
        parent = psutil.Process(parent_pid)
        while parent.status() != psutil.STATUS_ZOMBIE:
            for proc in parent.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if proc.pid != me and (proc.pid, proc.create_time()) not in skip:
                        tracked.setdefault(proc.pid, proc)
            if ready:  # the first look is done: what the parent starts from now on is seen within a poll
                with contextlib.suppress(OSError):
                    sys.stdout.write("ready\n")
                    sys.stdout.close()
                ready = False
            time.sleep(POLL_SECONDS)
    except psutil.NoSuchProcess:
        pass  # the parent is gone
    if ready:
        with contextlib.suppress(OSError):
            sys.stdout.close()
    victims = dict(tracked)
    for proc in tracked.values():
        with contextlib.suppress(psutil.Error):
            if proc.is_running():  # psutil compares start times: a reused pid is not ours
                victims.update({child.pid: child for child in proc.children(recursive=True)})
    victims = {pid: proc for pid, proc in victims.items() if proc.is_running()}
    for proc in victims.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(victims.values()), timeout=REAP_GRACE_SECONDS)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


if __name__ == "__main__":  # the reaper: python lifeline.py PARENT_PID [PID:START_TIME of existing ones ...]
    _reap(int(sys.argv[1]), sys.argv[2:])
