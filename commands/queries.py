"""Read-only verbs: status, jobs, events, and the documents `--json` prints for them; which
job a JOB argument names (`@latest`).

Kept light to import (no pydantic, httpx, anyio, jinja2): `steplog status` and `steplog jobs`
start with nothing more than this, the store and the manifest fold.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Callable, Iterator

import orjson

from steplog.errors import Rejected
from steplog.eventstore.record import StoredEvent
from steplog.executor.ownership import owner_alive
from steplog.heap import gc_paused
from steplog.projections import manifest
from steplog.projections.manifest import JobState

if TYPE_CHECKING:
    from steplog.commands.replay import ReplayView
    from steplog.eventstore.record import EventStore

LATEST = "@latest"  # a JOB argument naming the most recently updated job (no job id has an @)


@gc_paused()
def fold_job(store: EventStore, job_id: str) -> JobState:
    return manifest.project(job_id, store.read_job(job_id, hashes=False))


def latest_job(store: EventStore) -> str:
    """The most recently updated job (the one whose last event is the newest)."""
    job_id = store.latest_job_id()
    if job_id is None:
        raise Rejected(f"no jobs in {store.where} yet; start one with: steplog run PIPELINE.toml")
    return job_id


def resolve_job(store: EventStore, job_id: str) -> str:
    """The job a JOB argument names: `@latest` is the most recently updated job; any other
    text is a job id, returned as it is (the verb says if no such job exists)."""
    return latest_job(store) if job_id == LATEST else job_id


def status(store: EventStore, job_id: str | None) -> JobState:
    job_id = latest_job(store) if job_id is None else resolve_job(store, job_id)
    state = fold_job(store, job_id)
    if not state.exists:
        raise Rejected(f"unknown job {job_id}")
    return state


def jobs(store: EventStore, limit: int, batch: str | None = None) -> list[dict[str, Any]]:
    """The latest jobs (of `batch` only, when given), newest first; an unknown batch is
    refused rather than listed as empty, since it is most likely a typo."""
    from steplog.projections.store import batch_size, job_rows

    if batch is not None and not batch_size(store, batch):
        raise Rejected(f"no batch {batch!r} in {store.where}")
    rows = job_rows(store, limit, batch)
    keys = ("job_id", "pipeline", "status", "created_ts", "updated_ts", "batch")
    return [dict(zip(keys, row)) for row in rows]


def events(
    store: EventStore,
    job_id: str,
    *,
    type_glob: str | None = None,
    step: str | None = None,
    level: str | None = None,
) -> Iterator[StoredEvent]:
    """JOB's events as they are read, in batches: a million-event job is never held whole."""
    if not store.job_exists(job_id):
        raise Rejected(f"unknown job {job_id}")
    if step is not None:
        check_step(store, job_id, step)
    keep = event_filter(type_glob, step, level)
    return (ev for ev in store.read_job(job_id) if keep(ev))


def job_steps(store: EventStore, job_id: str) -> list[str]:
    """The steps job.created declared (event 1 of every job; a fork copies it)."""
    first = next(store.read_job(job_id, until_version=1), None)
    if first is None or first.type != "job.created":
        return []
    return list(orjson.loads(first.data_json).get("steps") or {})


def check_step(store: EventStore, job_id: str, step: str) -> None:
    """Refuse a step the job does not have, naming the nearest one or the job's steps."""
    from steplog.executor.pipeline import did_you_mean  # with the pipeline models: pydantic

    steps = job_steps(store, job_id)
    if steps and step not in steps:  # (an import without its pipeline may name none)
        raise Rejected(f"job {job_id} has no step {step!r}{did_you_mean(step, steps)}")


def event_filter(
    type_glob: str | None = None, step: str | None = None, level: str | None = None
) -> Callable[[StoredEvent], bool]:
    """Which events `steplog events` shows: type glob, step, this level and above."""
    levels: set[str] | None = None
    if level:
        from steplog.eventstore.events import LEVELS  # with the event models: pydantic

        levels = set(LEVELS[LEVELS.index(level.upper()) :])  # type: ignore[arg-type]

    def keep(ev: StoredEvent) -> bool:
        if type_glob and not fnmatchcase(ev.type, type_glob):
            return False
        if step and ev.step != step:
            return False
        return not (levels and ev.level not in levels)

    return keep


def manifest_document(state: JobState) -> dict[str, Any]:
    """`status --json`: the manifest, and while it runs whether its owner process is alive
    (None: not running, or the owner is on another host)."""
    doc = state.to_manifest()
    running = state.status == "running" and state.owner
    doc["owner_alive"] = owner_alive(state.owner) if running else None
    return doc


def replay_document(view: ReplayView) -> dict[str, Any]:
    return {
        "job_id": view.state.job_id,
        "until": view.point,
        "version": view.version,
        "manifest": view.state.to_manifest(),
        "completed_steps": view.state.completed_steps,
        "pending_steps": view.state.pending_steps,
        "cache_index": {key: entry._asdict() for key, entry in view.cache.items()},
        "events": [ev.envelope() | {"version": ev.version, "seq": ev.seq} for ev in view.events],
    }
