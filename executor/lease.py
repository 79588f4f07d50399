"""A process's lease on the jobs it runs: worker.started, a heartbeat every lease_s/3, and
worker.stopped, in its own stream `worker:<id>` (never the job's: JobLog appends there with
expected versions). Cancel requests (`steplog cancel`) arrive in the same stream.

Another process reads the lease from the `workers` table (projections.leases): once the last
beat is lease_s old, or worker.stopped is recorded, the jobs may be taken over. Should this
process still be alive then, its next append to a job meets a VersionConflict and it stops: the
job's own versions fence it off.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from steplog.errors import Rejected
from steplog.eventstore.events import (
    NewEvent,
    Owner,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
)
from steplog.eventstore.record import (
    Blob,
    DatabaseUnusable,
    EventStore,
    StoredEvent,
    StoreError,
)
from steplog.executor.ownership import current_owner, owner_alive
from steplog.projections.leases import WorkerRow, lease_alive, stream_of

DEFAULT_LEASE_S = 30.0
CANCEL_CHECK_S = 0.5  # how often the stream is looked at for a cancel request (a key lookup)
LEASE_ENV = "STEPLOG_LEASE_S"


def lease_seconds(given: float | None = None) -> float:
    """The lease: `given`, else STEPLOG_LEASE_S, else 30 s. A bad value is refused (exit 2)."""
    if given is None:
        text = os.environ.get(LEASE_ENV, "").strip()
        if not text:
            return DEFAULT_LEASE_S
        try:
            given = float(text)
        except ValueError:
            raise Rejected(f"{LEASE_ENV}={text!r} is not a number of seconds") from None
    if not math.isfinite(given) or not 0.1 <= given <= 3600:
        raise Rejected(f"lease {given!r} s is out of range (0.1 to 3600 seconds)")
    return given


def _alive_elsewhere(row: WorkerRow, now: float) -> bool:
    """Is another process holding this worker id's lease? One on this host that is gone (a
    worker restarted after kill -9) is not, whatever its last heartbeat says."""
    if not lease_alive(row, now):
        return False
    gone = owner_alive({"pid": row.pid, "host": row.host, "started": row.started}) is False
    return not gone


def _row(event: NewEvent) -> tuple[str, str, str, str | None, str]:
    return (event.ts, event.level, event.type, event.step, event.data_json())


def new_worker_id(kind: str) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:24]
    return f"{kind}-{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Lease:
    store: EventStore
    worker_id: str
    lease_s: float
    owner: Owner
    jobs: set[str] = field(default_factory=set)  # what the heartbeat names
    seen_version: int = 0  # of the stream, read up to here for cancel requests
    stopped: bool = False
    recorded: bool = False  # worker.started is in the log (start / start_with committed)
    say: Callable[[str], None] = lambda line: None
    _started: NewEvent | None = None
    _started_row: tuple[str, str, str, str | None, str] | None = None  # serialized at `new`

    @property
    def stream(self) -> str:
        return stream_of(self.worker_id)

    @property
    def beat_every_s(self) -> float:
        return self.lease_s / 3

    @classmethod
    def new(
        cls,
        store: EventStore,
        *,
        kind: str,
        lease_s: float | None = None,
        concurrency: int = 1,
        pipeline_dir: str | None = None,
        worker_id: str | None = None,
        now: float | None = None,
    ) -> Lease:
        """A lease not yet recorded (`start`, or `start_with` a job's opening events); a named
        worker whose lease is alive is refused (exit 2)."""
        from steplog.projections.store import worker_row

        lease_s = lease_seconds(lease_s)
        worker_id = worker_id or new_worker_id(kind)
        proc = current_owner()
        row = worker_row(store, worker_id)
        if row is not None and _alive_elsewhere(row, time.time() if now is None else now):
            raise Rejected(
                f"worker {worker_id} is alive (process {row.pid} on host {row.host}); "
                "choose another --worker-id"
            )
        started = WorkerStarted(
            host=proc.host,
            pid=proc.pid,
            started=proc.started,
            lease_s=lease_s,
            concurrency=concurrency,
            kind=kind,  # type: ignore[arg-type]
            pipeline_dir=pipeline_dir,
        )
        owner = Owner(pid=proc.pid, host=proc.host, started=proc.started, worker=worker_id)
        lease = cls(store, worker_id, lease_s, owner)
        lease._started = NewEvent.of(started)
        # serialized now, not in start_with's transaction after the job's job.started is stamped
        lease._started_row = _row(lease._started)
        return lease

    def start(self) -> None:
        """Record worker.started on its own."""
        assert self._started is not None, "made by Lease.new"
        stored = self.store.append(self.stream, [self._started])
        self.seen_version = stored[-1].version
        self.recorded = True

    def start_with(
        self,
        job_id: str,
        events: Callable[[], list[NewEvent]],
        expected_version: int,
        blobs: Sequence[Blob] = (),
    ) -> list[StoredEvent]:
        """worker.started and a job's opening events (which name this lease as their owner) in
        ONE transaction: a refused opening (VersionConflict) leaves no lease behind either.

        `events` are made inside the transaction, after the lease's row and the blobs are
        written, so that a job.started is stamped as its run is about to begin."""
        assert self._started_row is not None, "made by Lease.new"
        with self.store.write_transaction() as conn:
            mine = self.store.append_txn(conn, self.stream, [self._started_row], None, blobs)
            stored = self.store.append_txn(
                conn, job_id, [_row(e) for e in events()], expected_version, ()
            )
        self.seen_version = mine[-1].version
        self.recorded = True
        return stored

    def beat(self) -> list[tuple[str, str]]:
        """Record a heartbeat; returns the cancel requests (job, reason) that came since the
        last look."""
        stored = self.store.append(
            self.stream, [NewEvent.of(WorkerHeartbeat(jobs=sorted(self.jobs)))]
        )
        return self._requests(until=stored[-1].version)

    def requests(self) -> list[tuple[str, str]]:
        """Cancel requests that came since the last look (one key lookup when none did)."""
        version = self.store.job_version(self.stream)
        if version <= self.seen_version:
            return []
        return self._requests(until=version)

    def _requests(self, until: int) -> list[tuple[str, str]]:
        found = []
        for ev in self.store.read_job(
            self.stream, after_version=self.seen_version, until_version=until
        ):
            if ev.type == "worker.cancel_requested":
                d = ev.data
                found.append((d["job_id"], d.get("reason", "")))
        self.seen_version = max(self.seen_version, until)
        return found

    async def keep(self, on_cancel: Callable[[str, str], None]) -> None:
        """Beat every lease_s/3 and look for cancel requests in between, until cancelled."""
        import anyio

        next_beat = time.monotonic() + self.beat_every_s
        while True:
            await anyio.sleep(min(CANCEL_CHECK_S, max(0.0, next_beat - time.monotonic())))
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.beat_every_s
                    found = self.beat()
                else:
                    found = self.requests()
            except DatabaseUnusable:
                raise  # the store gave up (its retries spent): the lease is lost, stop the run
            except StoreError as exc:  # busy, full …: try again at the next beat
                self.say(f"worker {self.worker_id}: heartbeat not recorded: {exc}")
                continue
            for job_id, reason in found:
                if job_id in self.jobs:
                    on_cancel(job_id, reason)

    def stop(self, reason: str) -> None:
        """Append worker.stopped: the lease ends now, its jobs may be claimed at once."""
        if self.stopped:
            return
        self.stopped = True
        if not self.recorded:  # its opening never committed: there is no lease to end
            return
        try:
            self.store.append(self.stream, [NewEvent.of(WorkerStopped(reason=reason))])
        except StoreError as exc:  # the lease then simply expires
            self.say(f"worker {self.worker_id}: worker.stopped not recorded: {exc}")


def lease_liveness(store: EventStore) -> Callable[[dict | None, float], bool]:
    """Whether the owner of a call in flight is alive, for the shared limits and single flight
    (executor/flights.py): by its lease when it names a worker — so on any host, without an age
    cap — and as flights.default_alive for an owner from before leases. A process seen gone on
    this host is gone at once, whatever its lease says."""
    from steplog.executor.flights import default_alive
    from steplog.projections.store import worker_row

    def alive(owner: dict | None, age_s: float) -> bool:
        worker = (owner or {}).get("worker")
        if not worker:
            return default_alive(owner, age_s)
        if owner_alive(owner) is False:  # (None: another host, the lease alone decides)
            return False
        row = worker_row(store, str(worker))
        return row is not None and lease_alive(row, time.time())

    return alive
