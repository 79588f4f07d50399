"""Workers and their leases: a pure fold over the worker streams (`worker:<id>`).

Every process that runs jobs (a `steplog worker`, and `run`/`resume`) appends worker.started
to its own stream, a worker.heartbeat every lease_s/3 and worker.stopped when it ends. A lease
is alive while its last heartbeat (or its start) is less than lease_s old and no worker.stopped
came; `lease_alive` decides that from a row and the time, with no I/O. The `workers` table is
this fold kept in the append transaction (projections.tables), so that claiming work and
`steplog workers` read one small table however long the log is.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from steplog.eventstore.record import StoredEvent
from steplog.projections.breaker import epoch

STREAM_PREFIX = "worker:"
WORKER_EVENT_TYPES = ("worker.started", "worker.heartbeat", "worker.stopped")
WORKER_COLUMNS = (
    "worker_id",
    "kind",
    "host",
    "pid",
    "started",
    "lease_s",
    "concurrency",
    "pipeline_dir",
    "started_ts",
    "beat_ts",
    "jobs",
    "stopped_ts",
    "seq",
)


class WorkerRow(NamedTuple):
    worker_id: str
    kind: str  # worker | run
    host: str
    pid: int
    started: str  # the process's start marker
    lease_s: float
    concurrency: int
    pipeline_dir: str | None
    started_ts: str
    beat_ts: str  # worker.started or the last worker.heartbeat
    jobs: str  # JSON list: the jobs its last heartbeat named
    stopped_ts: str | None
    seq: int  # the last event that changed the row

    @property
    def job_list(self) -> list[str]:
        return list(orjson.loads(self.jobs))


Workers = dict[str, WorkerRow]


def stream_of(worker_id: str) -> str:
    return STREAM_PREFIX + worker_id


def worker_of(stream: str) -> str | None:
    """The worker id of a worker stream; None for a job's stream (job ids hold no ':')."""
    return stream[len(STREAM_PREFIX) :] if stream.startswith(STREAM_PREFIX) else None


def jobs_text(jobs: list[str]) -> str:
    return orjson.dumps(sorted(jobs)).decode()


def apply(rows: Workers, ev: StoredEvent) -> Workers:
    """One step of the fold; events of job streams, and other types, leave it as it was."""
    if ev.type not in WORKER_EVENT_TYPES:
        return rows
    worker_id = worker_of(ev.job_id)
    if worker_id is None:
        return rows
    d = orjson.loads(ev.data_json)
    if ev.type == "worker.started":
        rows[worker_id] = WorkerRow(
            worker_id,
            d["kind"],
            d["host"],
            d["pid"],
            d["started"],
            d["lease_s"],
            d["concurrency"],
            d.get("pipeline_dir"),
            ev.ts,
            ev.ts,
            jobs_text([]),
            None,
            ev.seq,
        )
        return rows
    row = rows.get(worker_id)
    if row is None or row.stopped_ts is not None:  # no start seen, or already stopped
        return rows
    if ev.type == "worker.heartbeat":
        rows[worker_id] = row._replace(beat_ts=ev.ts, jobs=jobs_text(d.get("jobs", [])), seq=ev.seq)
    else:
        rows[worker_id] = row._replace(stopped_ts=ev.ts, jobs=jobs_text([]), seq=ev.seq)
    return rows


def lease_alive(row: WorkerRow, now: float) -> bool:
    """Alive: not stopped, and the last sign of life is less than lease_s old at `now`."""
    return row.stopped_ts is None and epoch(row.beat_ts) + row.lease_s > now


def beat_age(row: WorkerRow, now: float) -> float:
    return max(0.0, now - epoch(row.beat_ts))
