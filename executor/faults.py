"""Named fault points for crash tests: STEPLOG_FAULT=<point> kills the process there.

A point is `after:<event type>[:<step>]` (checked right after a commit that holds that event),
or a named place with no event of its own, `<name>[:<step>]`. The kill is SIGKILL to
ourselves, so nothing gets to clean up: exactly what a power cut or OOM kill does. The first
place that matches kills; a point without `:<step>` matches any step.

Points (tests/test_crash_matrix.py kills at each and resumes):

    after:job.created, after:job.started, after:job.resumed
    after:step.started       committed with the step's cache.miss + llm.request, or, on a
                             cache hit, with cache.hit, file.written and step.succeeded
                             (one transaction, after the files are written)
    after:cache.miss, after:llm.request, after:llm.response, after:cache.hit
    after:file.written, after:step.succeeded, after:step.skipped, after:<any other event>
    before:file.write        a files step, before each file (the first one kills)
    mid:file.write           inside the atomic write: half the temp file's bytes written,
                             before the rest, the fsync and the rename
    before:file.rename       the temp file complete and fsynced, not yet renamed
    after:file.rename        a file landed under its name, its file.written not yet committed
                             (with several files: after the first)
    before:step.succeeded    every file written, step.succeeded not yet committed (a text
                             or json step commits its llm.response in that same transaction:
                             its answer is not durable yet, so resume asks again)
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
