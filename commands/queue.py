"""The queue: `submit` (a job created and left for a worker), `cancel`, and who works (`workers`).

submit runs every check `run` does (commands.jobs.check_opening) and appends job.created only:
the job is "queued" until a worker claims it (commands/worker.py). A batch of submissions
shares one transaction: all of them or none. cancel records job.cancelled on a queued job at
once (a worker racing for it meets a version conflict), and asks the owner of a running job to
stop it through the owner's own stream (worker.cancel_requested); the owner records
job.cancelled. Nothing here holds SQL: the tables are read through projections.store.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict

from steplog.commands.jobs import Opening, RunCommand, check_opening
from steplog.commands.queries import fold_job
from steplog.errors import Rejected
from steplog.eventstore.events import JobCancelled, NewEvent, WorkerCancelRequested
from steplog.eventstore.record import EventStore, VersionConflict
from steplog.executor import faults
from steplog.executor.ownership import lease_of, owner_alive
from steplog.executor.pipeline import Pipeline
from steplog.projections.leases import WorkerRow, beat_age, lease_alive, stream_of
from steplog.projections.manifest import JobState
from steplog.projections.store import worker_rows

CANCEL_TRIES = 5  # a queued job claimed meanwhile is looked at again, a few times at most


class Submitted(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    pipeline: str
    status: str = "queued"
    workspace: str
    inputs: dict[str, str]


def check_submit(store: EventStore, cmd: RunCommand, loaded: Pipeline | None = None) -> Opening:
    """Every check of `run` (same refusals), and the job.created to append; nothing appended.
    `loaded`: the pipeline check_run_before_creating returned, when it ran."""
    return check_opening(store, cmd, loaded)


class SubmittedBatch(BaseModel):
    """`steplog submit --inputs`: the batch's jobs, queued for the workers, in file order."""

    model_config = ConfigDict(frozen=True)

    batch: str
    pipeline: str
    job_ids: list[str]
    status: str = "queued"


def append_submitted(store: EventStore, openings: Sequence[Opening]) -> list[Submitted]:
    """Append each checked job's job.created in ONE transaction: every job queued, or none (a
    job id taken meanwhile, or twice in the batch, refuses the whole batch)."""
    seen: set[str] = set()
    for opening in openings:
        if opening.job_id in seen:
            raise Rejected(f"job {opening.job_id} is given twice; each job needs its own id")
        seen.add(opening.job_id)
    try:
        with store.write_transaction() as conn:
            for opening in openings:
                rows = [(e.ts, e.level, e.type, e.step, e.data_json()) for e in opening.events()]
                stored = store.append_txn(conn, opening.job_id, rows, 0, opening.blobs)
                faults.after_commit([(ev.type, ev.step) for ev in stored])
    except VersionConflict as exc:
        raise Rejected(f"{exc}; a job of that id exists: choose another --job-id") from exc
    return [
        Submitted(
            job_id=o.job_id,
            pipeline=o.pipeline.name,
            workspace=str(o.workspace),
            inputs=o.inputs,
        )
        for o in openings
    ]


def submit(store: EventStore, cmd: RunCommand, loaded: Pipeline | None = None) -> Submitted:
    """Queue one job: check as `run` does, then append job.created."""
    return append_submitted(store, [check_submit(store, cmd, loaded)])[0]


# -- cancel ----------------------------------------------------------------------------------


class CancelResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    status: str  # cancelled (done) | cancel_requested (its owner will stop it)
    worker: str | None = None  # whose stream got the request


def _refuse_cancel(state: JobState, job_id: str) -> None:
    if not state.exists:
        raise Rejected(f"unknown job {job_id}")
    if state.status not in ("queued", "running"):
        raise Rejected(f"job {job_id} is {state.status}, not queued or running: nothing to cancel")


def cancel(
    store: EventStore, job_id: str, reason: str = "", now: float | None = None
) -> CancelResult:
    """Cancel a queued job at once, or ask the owner of a running one to stop it.

    A running job whose owner's lease is dead is cancelled at once as well (nobody runs it). An
    owner recorded before leases has no stream to ask: refused, naming the process.
    """
    reason = reason or "cancelled"
    for _ in range(CANCEL_TRIES):
        state = fold_job(store, job_id)
        _refuse_cancel(state, job_id)
        owner = state.owner or {}
        lease = lease_of(store, owner) if state.status == "running" else None
        alive = (
            owner_alive(owner, lease, time.time() if now is None else now)
            if state.status == "running"
            else False
        )
        if state.status == "running" and alive is not False:
            worker = owner.get("worker")
            if not isinstance(worker, str) or lease is None:
                raise Rejected(
                    f"job {job_id} is run by process {owner.get('pid')} on host "
                    f"{owner.get('host')}, which holds no lease; stop it there (Ctrl-C)"
                )
            store.append(
                stream_of(worker),
                [NewEvent.of(WorkerCancelRequested(job_id=job_id, reason=reason))],
            )
            return CancelResult(job_id=job_id, status="cancel_requested", worker=worker)
        try:  # queued, or its owner is gone: the version fences off a claim meanwhile
            store.append(
                job_id,
                [NewEvent.of(JobCancelled(reason=reason))],
                expected_version=state.version,
            )
        except VersionConflict:
            continue
        return CancelResult(job_id=job_id, status="cancelled")
    raise Rejected(f"job {job_id} kept changing while it was being cancelled; try again")


def wait_cancelled(store: EventStore, job_id: str, timeout_s: float) -> JobState:
    """Wait until the job is no longer running (cancelled, or ended first) or `timeout_s`
    passes; a job whose owner's lease dies meanwhile is cancelled here. Returns the state."""
    deadline = time.monotonic() + timeout_s
    seq = store.last_seq()
    while True:
        state = fold_job(store, job_id)
        if state.status != "running":
            return state
        lease = lease_of(store, state.owner)
        if lease is not None and owner_alive(state.owner or {}, lease) is False:
            try:
                store.append(
                    job_id,
                    [NewEvent.of(JobCancelled(reason="cancelled; its owner was gone"))],
                    expected_version=state.version,
                )
            except VersionConflict:
                pass
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return state
        seq = store.wait_for_events(seq, min(left, 0.5))


# -- workers -----------------------------------------------------------------------------------


def worker_document(row: WorkerRow, now: float) -> dict[str, Any]:
    return {
        "worker_id": row.worker_id,
        "alive": lease_alive(row, now),
        "kind": row.kind,
        "host": row.host,
        "pid": row.pid,
        "lease_s": row.lease_s,
        "concurrency": row.concurrency,
        "pipeline_dir": row.pipeline_dir,
        "started_ts": row.started_ts,
        "last_heartbeat_ts": row.beat_ts,
        "heartbeat_age_s": round(beat_age(row, now), 3),
        "stopped_ts": row.stopped_ts,
        "jobs": row.job_list if lease_alive(row, now) else [],
    }


def workers(store: EventStore, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker the log knows, the most recently started first: alive or not, its jobs."""
    now = time.time() if now is None else now
    return [worker_document(row, now) for row in worker_rows(store)]
