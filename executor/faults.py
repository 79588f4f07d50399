"""Named fault points for crash tests: STEPLOG_FAULT=<point> kills the process there.

A point is `after:<event type>[:<step>]` (checked right after that event is committed) or
`before:<name>[:<step>]` for points with no event (e.g. `before:file.write:builder`). The kill is
SIGKILL to ourselves, so nothing gets to clean up: exactly what a power cut or OOM kill does.
"""

from __future__ import annotations

import os
import signal

_POINT = os.environ.get("STEPLOG_FAULT")


def _hit(point: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def reached(name: str, step: str | None) -> None:
    if _POINT is None:
        return
    if _POINT == name or (step is not None and _POINT == f"{name}:{step}"):
        _hit(_POINT)


def after_commit(types_and_steps: list[tuple[str, str | None]]) -> None:
    """Check the `after:<type>[:<step>]` points for events just committed."""
    if _POINT is None:
        return
    for type_, step in types_and_steps:
        reached(f"after:{type_}", step)
