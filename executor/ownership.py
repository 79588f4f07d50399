"""Who runs a job: this process's identity, and whether a recorded owner is still alive."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model imports pydantic; owner_alive (status) does not need it
    from steplog.eventstore.events import Owner


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


def owner_alive(owner: dict[str, object]) -> bool | None:
    """True/False for an owner on this host; None when it is on another host (cannot tell)."""
    if owner.get("host") != socket.gethostname():
        return None
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
