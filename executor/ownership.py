"""Who runs a job: this process's identity, and whether a recorded owner is still alive."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model imports pydantic; owner_alive (status) does not need it
    from steplog.eventstore.events import Owner
    from steplog.projections.leases import WorkerRow


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _start_marker(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    return fields[19] if fields else ""


def current_owner() -> Owner:
    from steplog.eventstore.events import Owner

    pid = os.getpid()
    return Owner(pid=pid, host=socket.gethostname(), started=_start_marker(pid))


def owner_alive(
    owner: dict[str, object], lease: WorkerRow | None = None, now: float | None = None
) -> bool | None:
    """Whether the process recorded as a job's owner still runs it.

    With a lease (the owner names a worker and `lease` is its workers row) the lease decides on
    any host, except that an owner on this host whose process is gone is dead at once. Without
    one (owners recorded before leases): True/False on this host, None on another (cannot tell).
    """
    if lease is not None and owner.get("worker") == lease.worker_id:
        from steplog.projections.leases import lease_alive

        if (owner.get("host"), owner.get("pid"), owner.get("started")) != (
            lease.host,
            lease.pid,
            lease.started,
        ):  # the worker id was taken up again by a new process: the owner's lease ended then
            return False
        if owner.get("host") == socket.gethostname() and _process_alive(owner) is False:
            return False
        return lease_alive(lease, time.time() if now is None else now)
    if owner.get("host") != socket.gethostname():
        return None
    return _process_alive(owner)


def _process_alive(owner: dict[str, object]) -> bool:
    pid = int(owner["pid"])  # type: ignore[arg-type]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    if fields and fields[0] in ("Z", "X"):  # killed but not yet reaped: it runs nothing
        return False
    marker = fields[19] if fields else ""
    return not marker or not owner.get("started") or marker == owner.get("started")


def lease_of(store: object, owner: dict[str, object] | None) -> WorkerRow | None:
    """The workers row of the lease an owner names (None: no lease, or none recorded)."""
    worker = owner.get("worker") if owner else None
    if not isinstance(worker, str):
        return None
    from steplog.projections.store import worker_row

    return worker_row(store, worker)  # type: ignore[arg-type]
