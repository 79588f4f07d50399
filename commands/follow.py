"""`events JOB --follow`: print a job's events as they are committed, until the job ends.

Between reads it waits on the store for the log to move past the last seq seen: on PostgreSQL
that is LISTEN, woken by the NOTIFY of each commit (no polling); on SQLite, which tells no one of
a commit, a check of the last seq every few milliseconds up to the interval. Each read is the
job's head in `streams` (one primary-key lookup) and the events after the last one printed, so
following costs next to nothing while the job is quiet.
Stops when the job's latest event leaves it in a terminal status (succeeded, failed, cancelled,
interrupted), or on Ctrl-C; both are a normal end (exit 0).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

from steplog.errors import Rejected
from steplog.eventstore.record import EventStore, StoredEvent
from steplog.projections.manifest import JOB_STATUS_AFTER, TERMINAL_JOB_STATUSES

Predicate = Callable[[StoredEvent], bool]

DEFAULT_INTERVAL_S = 0.2
# A store that is notified of commits is still asked directly this often, in case a
# notification was lost with a dropped connection.
NOTIFIED_WAIT_S = 5.0
# `events --follow JOB` started just before `run --job-id JOB`: wait this long for it
DEFAULT_CREATE_WAIT_S = 10.0
CREATE_POLL_S = 0.1


def wait_for_file(path: Path, wait_s: float, sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait up to wait_s seconds for the database file to appear (a `run` about to create it);
    returns the seconds waited. The caller then opens it, or refuses it as missing."""
    waited = 0.0
    while not path.exists() and waited < wait_s:
        sleep(CREATE_POLL_S)
        waited += CREATE_POLL_S
    return waited


def no_database(path: Path, wait_s: float) -> str:
    return (
        f"no database at {path} (waited {wait_s:g} s for it to be created); "
        "start one with: steplog run PIPELINE.toml"
    )


class Cursor:
    """Where a follower is in one job's log: each `poll` reads only the events after it."""

    def __init__(
        self,
        store: EventStore,
        job_id: str,
        *,
        wait_s: float = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """wait_s: how long a job not created yet is waited for (another process may be
        starting it) before it is refused as unknown."""
        waited = 0.0
        while not store.job_exists(job_id):
            if waited >= wait_s:
                why = f" (waited {wait_s:g} s for it to be created)" if wait_s else ""
                raise Rejected(f"unknown job {job_id}{why}")
            sleep(CREATE_POLL_S)
            waited += CREATE_POLL_S
        self.store = store
        self.job_id = job_id
        self.seen = 0
        self.status = "unknown"

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    def poll(self) -> list[StoredEvent]:
        """The events committed since the last poll (one primary-key lookup when none were)."""
        head = self.store.job_version(self.job_id)
        if head <= self.seen:
            return []
        new = list(self.store.read_job(self.job_id, after_version=self.seen, until_version=head))
        for ev in new:
            self.status = JOB_STATUS_AFTER.get(ev.type, self.status)
        self.seen = head
        return new


def follow_iter(
    store: EventStore,
    job_id: str,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    wait_s: float = DEFAULT_CREATE_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[StoredEvent]:
    """The job's events, old then new, ending after the one that leaves it in a terminal
    status (succeeded, failed, cancelled, interrupted)."""
    cursor = Cursor(store, job_id, wait_s=wait_s, sleep=sleep)
    notified = store.notifies and sleep is time.sleep
    while True:
        seq = store.last_seq() if notified else 0  # before the read: nothing slips between
        yield from cursor.poll()
        if cursor.ended:
            return
        if notified:
            store.wait_for_events(seq, NOTIFIED_WAIT_S)
        else:
            sleep(interval_s)


async def follow_async(
    store: EventStore,
    job_id: str,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    wait_s: float = DEFAULT_CREATE_WAIT_S,
) -> AsyncIterator[StoredEvent]:
    """follow_iter for an event loop: the wait between polls does not block it."""
    import anyio

    waited = 0.0
    while not store.job_exists(job_id) and waited < wait_s:
        await anyio.sleep(CREATE_POLL_S)
        waited += CREATE_POLL_S
    cursor = Cursor(store, job_id)
    notified = store.notifies
    while True:
        seq = store.last_seq() if notified else 0
        for ev in cursor.poll():
            yield ev
        if cursor.ended:
            return
        if notified:  # the LISTEN wait blocks: in a worker thread, the loop goes on
            await anyio.to_thread.run_sync(store.wait_for_events, seq, NOTIFIED_WAIT_S)
        else:
            await anyio.sleep(interval_s)


def follow(
    store: EventStore,
    job_id: str,
    keep: Predicate,
    emit: Callable[[StoredEvent], None],
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    wait_s: float = DEFAULT_CREATE_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Emit the job's events that `keep` accepts, old then new; returns the terminal status."""
    events = follow_iter(store, job_id, interval_s=interval_s, wait_s=wait_s, sleep=sleep)
    status = "unknown"
    try:
        for ev in events:
            status = JOB_STATUS_AFTER.get(ev.type, status)
            if keep(ev):
                emit(ev)
    except KeyboardInterrupt:
        return "following stopped"
    return status


def line(ev: StoredEvent) -> str:
    """One event as a line of text, for following in a terminal: its data whole, as the
    events table shows it (the CLI shows control characters in it escaped)."""
    return (
        f"{ev.version:>5}  {ev.ts}  {ev.level:<7}  {ev.type:<22}  {ev.step or '-':<12}  "
        f"{ev.data_json}"
    )
