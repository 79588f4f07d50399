"""`replay --until POINT`: the job's projections as they were at any event of its log."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime

from steplog.errors import Rejected
from steplog.eventstore.record import EventStore, StoredEvent
from steplog.heap import gc_paused
from steplog.projections import cache, manifest
from steplog.projections.cache import CacheIndex
from steplog.projections.manifest import JobState
from steplog.words import counted


class BadPoint(Rejected, ValueError):
    """A point that names no event of the job."""


@dataclass
class ReplayView:
    state: JobState
    cache: CacheIndex
    events: list[StoredEvent]
    point: str
    version: int


def _parse_ts(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        raise BadPoint(f"timestamp {text!r} has no time zone; end it with Z for UTC")
    return value


def matcher(point: str, job_version: int):
    """A predicate over events that is true at the point's event (the last one to include)."""
    point = point.strip()
    if not point:
        raise BadPoint("empty point: give an event number, a timestamp or TYPE[:STEP]")
    if point.isascii() and point.isdigit():  # str.isdigit admits '²' and '٣', int() does not
        if len(point.lstrip("0")) > len(str(job_version)):  # also spares int() a 5000-digit text
            raise BadPoint(
                f"event {point[:20]}{'…' if len(point) > 20 else ''} is past the end of the job "
                f"(it has {counted(job_version, 'event')})"
            )
        n = int(point)
        if n < 1:
            raise BadPoint(f"event {n} does not exist: a job's events are numbered from 1")
        if n > job_version:
            raise BadPoint(
                f"event {n} is past the end of the job (it has {counted(job_version, 'event')})"
            )
        return ("version", n)
    ts = _parse_ts(point) if point[:1].isdigit() else None
    if ts is not None:
        return ("ts", ts)
    type_glob, _, step = point.partition(":")
    if "." not in type_glob and "*" not in type_glob:
        raise BadPoint(f"point {point!r} is not an event number, an ISO timestamp or TYPE[:STEP]")
    return ("type", (type_glob, step or None))


@gc_paused()
def replay(store: EventStore, job_id: str, point: str) -> ReplayView:
    job_version = store.job_version(job_id)
    if job_version == 0:
        raise BadPoint(f"unknown job {job_id}")
    kind, target = matcher(point, job_version)
    state = JobState(job_id=job_id)
    index = CacheIndex()
    events: list[StoredEvent] = []
    found = False
    until = target if kind == "version" else None
    for ev in store.read_job(job_id, until_version=until):  # type: ignore[arg-type]
        if kind == "ts" and _parse_ts(ev.ts) > target:  # type: ignore[operator]
            found = bool(events)
            break
        manifest.apply(state, ev)
        cache.apply(index, ev)
        events.append(ev)
        if kind == "version" and ev.version == target:
            found = True
            break
        if kind == "type":
            type_glob, step = target  # type: ignore[misc]
            if fnmatch.fnmatchcase(ev.type, type_glob) and (step is None or ev.step == step):
                found = True
                break
    else:
        if kind == "ts":
            found = bool(events)  # at or after the last event: the whole job
    if not found:
        if kind == "ts":
            raise BadPoint(f"timestamp {point} is before the job's first event")
        raise BadPoint(f"no event of job {job_id} matches {point!r}")
    return ReplayView(state, index, events, point, state.version)
