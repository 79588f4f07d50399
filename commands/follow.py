"""`events JOB --follow`: print a job's events as they are committed, until the job ends.

Polls the job's head in `streams` (one primary-key lookup) every interval and reads only the
events after the last one printed, so following costs next to nothing while the job is quiet.
Stops when the job's latest event leaves it in a terminal status (succeeded, failed, cancelled,
interrupted), or on Ctrl-C; both are a normal end (exit 0).
"""

from __future__ import annotations

import time
from typing import Callable

from steplog.commands.jobs import Rejected
from steplog.eventstore.record import StoredEvent
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections.manifest import JOB_STATUS_AFTER, TERMINAL_JOB_STATUSES

Predicate = Callable[[StoredEvent], bool]

DEFAULT_INTERVAL_S = 0.2


def follow(
    store: SQLiteEventStore,
    job_id: str,
    keep: Predicate,
    emit: Callable[[StoredEvent], None],
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Emit the job's events that `keep` accepts, old then new; returns the terminal status."""
    if not store.job_exists(job_id):
        raise Rejected(f"unknown job {job_id}")
    seen = 0
    status = "unknown"
    try:
        while True:
            head = store.job_version(job_id)
            if head > seen:
                for ev in store.read_job(job_id, after_version=seen, until_version=head):
                    status = JOB_STATUS_AFTER.get(ev.type, status)
                    if keep(ev):
                        emit(ev)
                seen = head
                if status in TERMINAL_JOB_STATUSES:
                    return status
            sleep(interval_s)
    except KeyboardInterrupt:
        return "following stopped"


def line(ev: StoredEvent) -> str:
    """One event as a line of text, for following in a terminal."""
    data = ev.data_json if len(ev.data_json) <= 200 else ev.data_json[:197] + "..."
    return f"{ev.version:>5}  {ev.ts}  {ev.level:<7}  {ev.type:<22}  {ev.step or '-':<12}  {data}"
