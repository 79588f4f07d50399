"""What the contract's writer processes run (spawned, so this module imports only steplog):
each opens its own store on the location it is given, waits at a barrier with the others so
that they really write at the same time, and reports to a queue. Bounded: every wait has a
timeout and every loop a count."""

from __future__ import annotations

import os
import traceback
from typing import Any

from steplog.eventstore import open_event_store
from steplog.eventstore.events import JobCreated, NewEvent, StepStarted
from steplog.eventstore.record import VersionConflict

BARRIER_TIMEOUT_S = 120
MAX_RETRIES = 1000


def created(job_id: str) -> NewEvent:
    return NewEvent.of(
        JobCreated(
            pipeline=f"p-{job_id}",
            pipeline_fingerprint="f" * 64,
            pipeline_sha256="0" * 64,
            steps={"a": []},
            workspace="/tmp/ws",
        )
    )


def started(attempt: int, writer: str = "w") -> NewEvent:
    return NewEvent.of(StepStarted(attempt=attempt, fingerprint=writer), step="a")


def race_to_create(location: str, job_id: str, barrier: Any, results: Any) -> None:
    """Append job.created expecting the job not to exist (expected_version=0)."""
    try:
        with open_event_store(location) as store:
            barrier.wait(timeout=BARRIER_TIMEOUT_S)
            try:
                store.append(job_id, [created(job_id)], expected_version=0)
                results.put(("won", os.getpid()))
            except VersionConflict as exc:
                results.put(("conflict", str(exc)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def optimistic_appender(location: str, job_id: str, count: int, barrier: Any, results: Any) -> None:
    """Append `count` events to one shared job, each expecting the version last read, and
    read again after a conflict (at most MAX_RETRIES times). Reports its conflicts."""
    conflicts = 0
    try:
        with open_event_store(location) as store:
            barrier.wait(timeout=BARRIER_TIMEOUT_S)
            done = 0
            while done < count:
                version = store.job_version(job_id)
                try:
                    store.append(
                        job_id, [started(done + 1, str(os.getpid()))], expected_version=version
                    )
                    done += 1
                except VersionConflict:
                    conflicts += 1
                    if conflicts > MAX_RETRIES:
                        raise
            results.put(("done", conflicts))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def own_job_writer(location: str, job_id: str, batches: int, barrier: Any, results: Any) -> None:
    """Append `batches` batches of 1 to 3 events to a job of its own."""
    try:
        with open_event_store(location) as store:
            barrier.wait(timeout=BARRIER_TIMEOUT_S)
            version = store.append(job_id, [created(job_id)], expected_version=0)[-1].version
            for n in range(batches):
                batch = [started(version + k, job_id) for k in range(1 + n % 3)]
                version = store.append(job_id, batch, expected_version=version)[-1].version
            results.put(("done", version))
    except BaseException:
        results.put(("error", traceback.format_exc()))
