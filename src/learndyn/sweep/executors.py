"""Where sweep work runs: in this process, in a pool of local processes, or on a Ray cluster.

Every executor takes :class:`~learndyn.sweep.work.WorkUnit` s and calls back, per unit, ``on_result(unit,
result)`` when a worker reports it or ``on_lost(unit, reason)`` when the worker died without reporting
(killed, out of memory, node lost). Workers write their runs to the store themselves (the store serialises
writers with a file lock), so a lost unit may have left a run ``running``; the sweep marks it ``interrupted``.

- :class:`SerialExecutor`: one unit after another in this process (debugging, tests, tiny sweeps).
- :class:`LocalExecutor`: ``workers`` spawned processes (default: the cores available to this process), each
  with its own pipe; a unit goes to an idle worker, a dead worker is noticed by its process sentinel, its unit
  reported lost and the worker replaced. Ctrl-C (or SIGTERM) stops the workers, whose runs are marked
  ``interrupted``. A worker dies with the sweep's process (:func:`~learndyn.lifeline.die_with_parent`), so
  killing only the parent leaves no orphan training (and writing) on.
- :class:`RayExecutor`: one Ray task per unit (``max_retries=0``: a crashed task is reported lost, the resume
  reruns it) on ``ray.init(address=...)`` or a local Ray instance it starts and stops. Workers open the store
  by path, so on a multi-node cluster the store must live on a filesystem every node mounts.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from learndyn.lifeline import die_with_parent, start_reaper
from learndyn.sweep.work import UnitResult, WorkUnit, execute_unit
from learndyn.validation import LearndynValueError, check_int

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "SerialExecutor",
    "available_cores",
    "make_executor",
]

OnResult = Callable[[WorkUnit, UnitResult], None]
OnLost = Callable[[WorkUnit, str], None]
EXECUTORS = ("local", "ray", "serial")
_MAX_STARTUP_DEATHS = 3


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


class Executor(Protocol):
    name: str
    workers: int

    def run(self, units: Sequence[WorkUnit], on_result: OnResult, on_lost: OnLost) -> None: ...


class SerialExecutor:
    """Run units one after another in this process (torch's thread count is left as it is)."""

    name = "serial"
    workers = 1

    def run(self, units: Sequence[WorkUnit], on_result: OnResult, on_lost: OnLost) -> None:
        for unit in units:
            on_result(unit, execute_unit(unit))


# ------------------------------------------------------------------------------------------ local processes
def _worker_main(conn: Connection, parent_pid: int | None = None) -> None:
    """A pool worker: receive units on ``conn``, run them, send results; ``None`` or EOF ends it. It dies
    with ``parent_pid`` (SIGTERM once the sweep's process is gone, even SIGKILLed: no orphan trains on)."""

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    os.environ.setdefault("LEARNDYN_PROGRESS", "0")
    try:
        while True:
            try:
                unit = conn.recv()
            except (EOFError, OSError):
                return
            if unit is None:
                return
            result = execute_unit(unit)
            try:
                conn.send(result)
            except (BrokenPipeError, OSError):
                return
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run was marked interrupted; exit quietly
        return


@dataclass
class _Worker:
    process: Any
    conn: Connection
    unit: WorkUnit | None = None
    reported: bool = False  # has reported at least one unit


class LocalExecutor:
    """A pool of ``workers`` spawned local processes (see the module docstring).

    ``threads`` is torch's thread count inside each worker (default 1: ``workers × threads`` should not exceed
    the cores). ``start_method`` is a :mod:`multiprocessing` start method; ``spawn`` (default) never forks a
    process that already runs torch threads.
    """

    name = "local"

    def __init__(self, workers: int | None = None, *, threads: int = 1, start_method: str = "spawn") -> None:
        self.workers = (
            check_int("workers", workers, low=1, owner="LocalExecutor") if workers else available_cores()
        )
        self.threads = check_int("threads", threads, low=1, owner="LocalExecutor")
        self.start_method = start_method
        self.pids: list[int] = []  # every worker process started (for tests and diagnostics)

    def _spawn(self, ctx: Any) -> _Worker:
        parent, child = ctx.Pipe(duplex=True)
        watch = os.getpid() if self.start_method != "forkserver" else None  # forkserver: not our child
        process = ctx.Process(
            target=_worker_main, args=(child, watch), daemon=True, name="learndyn-sweep-worker"
        )
        process.start()
        child.close()
        self.pids.append(process.pid)
        return _Worker(process, parent)

    def run(self, units: Sequence[WorkUnit], on_result: OnResult, on_lost: OnLost) -> None:
        if not units:
            return
        ctx = mp.get_context(self.start_method)
        pending = deque(units)
        workers = [self._spawn(ctx) for _ in range(min(self.workers, len(units)))]
        deaths = 0  # workers that died in a row without reporting any unit
        try:
            while True:
                for w in workers:
                    if w.unit is None and pending and w.process.is_alive():
                        unit = pending.popleft()
                        w.unit = unit
                        try:
                            w.conn.send(unit)
                        except (BrokenPipeError, OSError):
                            pass  # noticed below through the process sentinel
                busy = [w for w in workers if w.unit is not None]
                if not busy:
                    break
                ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                for w in list(busy):
                    if w.conn in ready:
                        try:
                            result = w.conn.recv()
                        except (EOFError, OSError):
                            result = None
                        if isinstance(result, UnitResult):
                            unit, w.unit = w.unit, None
                            w.reported, deaths = True, 0
                            on_result(unit, result)
                            continue
                    if w.unit is not None and (w.process.sentinel in ready or w.conn in ready):
                        w.process.join(timeout=5)
                        if w.process.is_alive():
                            continue
                        unit, w.unit = w.unit, None
                        reason = _death(w.process.exitcode, w.process.pid)
                        on_lost(unit, reason)
                        w.conn.close()
                        workers.remove(w)
                        deaths = 0 if w.reported else deaths + 1
                        if deaths >= _MAX_STARTUP_DEATHS:  # workers die before doing anything: give up
                            while pending:
                                on_lost(
                                    pending.popleft(), f"not run: {deaths} workers in a row died ({reason})"
                                )
                        elif pending:
                            workers.append(self._spawn(ctx))
        finally:
            _stop(workers)


def _death(exitcode: int | None, pid: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker process {pid} was killed by {name}"
    return f"worker process {pid} exited with code {exitcode} without reporting"


def _stop(workers: list[_Worker]) -> None:
    """Ask idle workers to exit, stop busy ones with SIGTERM (their runs become ``interrupted``), reap all."""
    for w in workers:
        if w.unit is None:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        elif w.process.is_alive():
            w.process.terminate()
    for w in workers:
        w.process.join(timeout=10)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)
        w.conn.close()


# ------------------------------------------------------------------------------------------------------ ray
def _ray_execute(unit: WorkUnit) -> UnitResult:
    os.environ.setdefault("LEARNDYN_PROGRESS", "0")
    return execute_unit(unit)


class RayExecutor:
    """Ray tasks, one per unit (see the module docstring).

    ``address``: a Ray cluster to connect to (``"auto"``, ``"ray://host:10001"``, ...); ``None`` connects to
    an already initialised Ray or starts a local instance with ``workers`` CPUs (default: the cores
    available), which is shut down afterwards. ``threads``: CPUs (and torch threads) per task.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        threads: int = 1,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.workers = (
            check_int("workers", workers, low=1, owner="RayExecutor") if workers else available_cores()
        )
        self.threads = check_int("threads", threads, low=1, owner="RayExecutor")
        self.init_kwargs = dict(init_kwargs or {})

    def _init(self) -> tuple[Any, bool]:
        try:
            import ray
        except ImportError:
            raise LearndynValueError(
                "executor 'ray' needs Ray, which is not installed; "
                "install it with: pip install 'learndyn[ray]'"
            ) from None
        if ray.is_initialized():
            return ray, False
        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs.update(num_cpus=self.workers, include_dashboard=False)
        kwargs.update(self.init_kwargs)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray instance"
            raise LearndynValueError(f"cannot start or reach {where}: {' '.join(str(exc).split())}") from None
        return ray, True

    def run(self, units: Sequence[WorkUnit], on_result: OnResult, on_lost: OnLost) -> None:
        if not units:
            return
        # a local instance's processes must not outlive this driver, even one killed alone (SIGKILL)
        reaper = _local_ray_reaper() if not self.address else None
        try:
            ray, started = self._init()
        except BaseException:
            _stop_reaper(reaper)
            raise
        if not started:  # an instance someone else started: not ours to end
            _stop_reaper(reaper)
            reaper = None
        try:
            remote = ray.remote(num_cpus=self.threads, max_retries=0)(_ray_execute)
            refs = {remote.remote(unit): unit for unit in units}
            try:
                while refs:
                    done, _ = ray.wait(list(refs), num_returns=1)
                    for ref in done:
                        unit = refs.pop(ref)
                        try:
                            result = ray.get(ref)
                        except ray.exceptions.RayError as exc:
                            on_lost(unit, f"Ray task failed: {type(exc).__name__}: {_first_line(exc)}")
                            continue
                        on_result(unit, result)
            except BaseException:
                for ref in refs:
                    ray.cancel(ref)
                raise
        finally:
            if started:
                ray.shutdown()
            _stop_reaper(reaper)


def _local_ray_reaper() -> Any:
    """A reaper (:func:`~learndyn.lifeline.start_reaper`) for the local Ray instance about to start: its GCS
    server, raylet, agents and workers are this driver's new descendants; a driver killed alone (no
    ``ray.shutdown()``) would otherwise leave them running. ``None`` without psutil (it comes with Ray)."""
    try:
        return start_reaper()
    except ImportError:  # pragma: no cover - psutil comes with Ray
        return None


def _stop_reaper(reaper: Any) -> None:
    """Stop a reaper after a clean shutdown (or when the instance was not ours)."""
    if reaper is not None:
        reaper.kill()
        reaper.wait()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def make_executor(
    name: str, *, workers: int | None = None, address: str | None = None, threads: int = 1
) -> Executor:
    """An executor by name: ``local`` (default), ``ray`` or ``serial``."""
    if name == "local":
        return LocalExecutor(workers, threads=threads)
    if name == "ray":
        return RayExecutor(address, workers, threads=threads)
    if name == "serial":
        return SerialExecutor()
    raise LearndynValueError(f"executor={name!r} is not allowed; allowed: {', '.join(map(repr, EXECUTORS))}")
