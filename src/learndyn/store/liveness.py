"""Is the process that runs a stored run still alive? Repairing what killed processes left behind.

A run records its host and pid. A process killed with SIGKILL (or a machine that lost power) cannot mark its
run, so opening the store marks ``interrupted`` every ``running`` run of this host whose process is gone
(:func:`recover_dead_runs`). A pid that now belongs to a younger process counts as gone: on Linux the
process's start time (``/proc/<pid>/stat``) is compared with the run's last write. Runs of other hosts are
left alone: this host cannot tell.

A run that completes or diverges deletes its checkpoints after the commit that finishes it. So that a kill
between the two leaves nothing behind, :func:`mark_finishing` leaves a marker
(``<store>.arrays/.finishing/<run id>``) before the commit, removed after the deletion, and opening the store
(:func:`clean_finished_checkpoints`) deletes the checkpoints of every marked run that finished.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learndyn.checkpoint import RunCheckpointer
from learndyn.store.encoding import now
from learndyn.store.schema import FINISHED

if TYPE_CHECKING:
    from learndyn.store.connection import StoreConnections


def process_alive(pid: int, wrote_at: datetime | None = None) -> bool:
    """Whether process ``pid`` of this host may still be the one that wrote a run's row at ``wrote_at``.

    No such process (or a zombie) is dead. On Linux a process that started after ``wrote_at`` cannot have
    written it: the pid was reused, and the writer is dead too. When unsure (no permission, no /proc) the
    process counts as alive.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return True
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
    if not fields or fields[0] in ("Z", "X"):
        return False
    if wrote_at is not None:
        try:
            ticks = int(fields[19])  # starttime, clock ticks after boot
            started = _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
        except (IndexError, ValueError, OSError):
            return True
        if started > wrote_at.replace(tzinfo=UTC).timestamp() + 2.0:  # /proc's boot time: 1 s resolution
            return False
    return True


def run_process_alive(host: Any, pid: Any, wrote_at: datetime | None = None) -> bool | None:
    """Whether the process recorded for a run (``host``, ``pid``) may still be running it: None when the run
    belongs to another host (this one cannot tell), else :func:`process_alive` (malformed pids are dead)."""
    if not host or pid is None or host != socket.gethostname():
        return None
    try:
        pid = int(pid)
    except (OverflowError, ValueError, TypeError):
        return False
    return process_alive(pid, wrote_at)


@lru_cache(maxsize=1)
def _boot_time() -> float:
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def recover_dead_runs(store: StoreConnections) -> list[str]:
    """Mark ``interrupted`` every ``running`` run of this host whose process is gone; return their ids."""
    host = socket.gethostname()
    with store._read() as con:
        rows = con.execute(  # updated_at: the writer (pid) was alive then, so it started before
            "SELECT id, pid, coalesce(updated_at, started_at) FROM runs "
            "WHERE status = 'running' AND host = ?",
            [host],
        ).fetchall()
    dead = [(i, pid) for i, pid, wrote in rows if pid is not None and not process_alive(pid, wrote)]
    if not dead or not store.writable:  # a read-only store stays as it is (reading it still works)
        return []
    marked = []
    with store._write() as con:
        for run_id, pid in dead:
            changed = con.execute(
                "UPDATE runs SET status = 'interrupted', ended_at = coalesce(updated_at, ?), error = ? "
                "WHERE id = ? AND status = 'running' AND host = ? AND pid = ? RETURNING id",
                [
                    now(),
                    f"process {pid} on {host} ended without closing the run (killed?)",
                    run_id,
                    host,
                    pid,
                ],
            ).fetchall()
            marked.extend(r[0] for r in changed)
    return marked


# ------------------------------------------------------------------------------ checkpoints of finished runs
FINISHING = ".finishing"


def checkpoint_dir(store: StoreConnections, run_id: str) -> Path:
    """Where the checkpoints of run ``run_id`` live: ``<store>.arrays/<run id>/checkpoints``."""
    return store.arrays_dir / run_id / "checkpoints"


def mark_finishing(store: StoreConnections, run_id: str) -> None:
    """Note (best effort) that ``run_id`` is about to finish: its checkpoints are to go after the commit."""
    folder = store.arrays_dir / FINISHING
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / run_id).touch()
    except OSError:
        pass  # without the marker a kill at the wrong moment leaves an orphan checkpoint; nothing worse


def unmark_finishing(store: StoreConnections, run_id: str) -> None:
    try:
        (store.arrays_dir / FINISHING / run_id).unlink(missing_ok=True)
    except OSError:
        pass


def clean_finished_checkpoints(store: StoreConnections) -> list[str]:
    """Delete the checkpoints a killed process left behind for runs that finished; return those run ids.

    For each marker: a completed or diverged run loses its checkpoints and the marker; a ``running`` run whose
    process may be alive (finishing right now) keeps both; any other run (interrupted, failed) keeps its
    checkpoints, for ``learndyn resume``, and loses the marker. Best effort (a read-only store is left as is).
    """
    folder = store.arrays_dir / FINISHING
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return []
    if not names or not store.writable:
        return []
    with store._read() as con:
        rows = con.execute(
            "SELECT id, status, host, pid, coalesce(updated_at, started_at) FROM runs "
            "WHERE list_contains(?, id)",
            [names],
        ).fetchall()
    found = {r[0]: r[1:] for r in rows}
    cleaned = []
    for run_id in names:
        status, host, pid, wrote = found.get(run_id, (None, None, None, None))
        if status == "running" and run_process_alive(host, pid, wrote) is not False:
            continue
        if status in FINISHED:
            if not RunCheckpointer(checkpoint_dir(store, run_id)).clear():
                continue
            cleaned.append(run_id)
        unmark_finishing(store, run_id)
    return cleaned
