"""`steplog verify`: is the log what steplog wrote, and does everything derived from it agree?

Checks, through a store opened read-only: every job's hash chain recomputed from genesis (and
each event's data against its model); the `streams` heads; the schema against the backend's
schema file (version, tables, the append-only triggers, views); the backend's own integrity
check (SQLite's PRAGMA integrity_check); each projection table of
projections.tables.TABLE_PROJECTIONS against a fresh fold of the log (drift); every blob's
sha256 and size against its content, and that every blob an event points at is there.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import orjson
from pydantic import ValidationError

from steplog.errors import Rejected
from steplog.eventstore.events import EVENT_TYPES, parse_data
from steplog.eventstore.record import GENESIS_HASH, StoredEvent, chain_hash
from steplog.heap import gc_paused
from steplog.projections.leases import worker_of
from steplog.projections.store import job_table_rows, table_rows
from steplog.projections.tables import TABLE_PROJECTIONS, TableProjection

if TYPE_CHECKING:
    from steplog.eventstore.record import EventStore
from steplog.words import counted, error_path

MAX_PER_CHECK = 20  # problems kept per check; the count of all is still reported


@dataclass(frozen=True)
class Problem:
    check: str  # chain | streams | schema | integrity | projection | blob
    message: str
    job_id: str | None = None
    version: int | None = None
    seq: int | None = None

    def line(self) -> str:
        if self.seq is not None:
            where = f"job {self.job_id}, version {self.version}, seq {self.seq}"
            return f"event ({where}): {self.message}"
        return f"{self.check}: {self.message}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    dropped: int = 0  # problems beyond MAX_PER_CHECK, counted only
    events: int = 0
    jobs: int = 0
    blobs: int = 0
    schema_version: int = 0
    projections: list[str] = field(default_factory=list)
    job: str | None = None  # the job checked alone (verify JOB); None: the whole database
    _per_check: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: Problem) -> None:
        seen = self._per_check.get(problem.check, 0)
        self._per_check[problem.check] = seen + 1
        if seen < MAX_PER_CHECK:
            self.problems.append(problem)
        else:
            self.dropped += 1

    def document(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "job": self.job,
            "events": self.events,
            "jobs": self.jobs,
            "blobs": self.blobs,
            "schema_version": self.schema_version,
            "projections": self.projections,
            "problems": [asdict(p) for p in self.problems],
            "more_problems": self.dropped,
        }

    def summary(self) -> str:
        if self.job is not None:
            return (
                f"ok: job {self.job}: {counted(self.events, 'event')}, its hash chain intact; "
                f"schema {self.schema_version} with its triggers; its "
                f"{', '.join(self.projections)} rows match a fold of its events; "
                f"{counted(self.blobs, 'blob')} it points at "
                f"{'matches its' if self.blobs == 1 else 'match their'} sha256 "
                "(the whole database: steplog verify)"
            )
        return (
            f"ok: {counted(self.events, 'event')} in {counted(self.jobs, 'job')}, every hash "
            f"chain intact; schema {self.schema_version} with its triggers; integrity ok; "
            f"{', '.join(self.projections)} match a fresh fold; "
            f"{counted(self.blobs, 'blob')} {'matches its' if self.blobs == 1 else 'match their'} "
            "sha256"
        )


def open_for_verify(location: str | os.PathLike[str]) -> EventStore:
    """The store at `location` opened never to write: a SQLite file read-only (no schema
    applied or upgraded, so an older one is reported as it is); a PostgreSQL database as it
    is, refused if steplog's tables are not there."""
    from steplog.eventstore.config import is_postgres_url

    if is_postgres_url(location):
        from steplog.eventstore import open_event_store

        return open_event_store(location, create=False, upgrade=False)
    from steplog.eventstore.sqlite import SQLiteEventStore

    return SQLiteEventStore(location, read_only=True)


def verify_database(location: str | os.PathLike[str], job: str | None = None) -> Report:
    """`steplog verify [JOB]`: every check on the database at `location`, opened read-only."""
    from steplog.commands.queries import resolve_job

    store = open_for_verify(location)
    try:
        if job is not None:
            job = resolve_job(store, job)
            if not store.job_exists(job):
                raise Rejected(f"unknown job {job}")
        return verify(store, job)
    finally:
        store.close()


@gc_paused()
def verify(store: EventStore, job_id: str | None = None) -> Report:
    """Every check of the database; with `job_id`, the checks of that job alone (verify_job)."""
    if job_id is not None:
        return verify_job(store, job_id)
    report = Report()
    report.schema_version, problems = store.schema_problems()
    referenced = _check_log(store, report)
    for message in problems:
        report.add(Problem("schema", message))
    for message in store.integrity_problems():
        report.add(Problem("integrity", message))
    _check_blobs(store, report, referenced)
    report.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))  # bad events first, in order
    return report


def verify_job(store: EventStore, job_id: str) -> Report:
    """What can be checked from one job's events, reading only them: its hash chain and event
    data, its head in `streams`, its rows of the per-job projection tables against a fold of
    its events, the blobs it points at, and the schema. Database-wide checks (every chain, the
    file's integrity, the projections shared by all jobs, every blob) are `verify` without a
    job: their cost grows with the database, not with the job."""
    report = Report(job=job_id)
    heads: dict[str, tuple[int, str, int]] = {}
    folds = [(p, p.start()) for p in TABLE_PROJECTIONS if p.job_column is not None]
    referenced: dict[str, tuple[str, int, int]] = {}
    for ev in store.read_job(job_id):
        for projection, state in folds:
            projection.apply(state, ev)
        _check_one(ev, heads, referenced, report)
    report.jobs = len(heads)
    if job_id not in heads:
        report.add(Problem("chain", f"job {job_id} has no events"))
    _check_streams(store, report, heads, job_id)
    report.schema_version, problems = store.schema_problems()
    for message in problems:
        report.add(Problem("schema", message))
    present = store.table_names()
    for projection, state in folds:
        if report.schema_version < projection.columns_since.get(store.dialect, 0):
            continue  # an older schema without some of its columns: reported as such
        if projection.table in present:
            _check_projection(
                store, report, projection, state, job_table_rows(store, projection, job_id)
            )
            report.projections.append(projection.table)
    _check_job_blobs(store, report, referenced)
    report.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return report


# -- the log: chains, streams, projections in one pass -----------------------------------------


_SHA_FIELD = re.compile(r"_sha256$")


def _check_log(store: EventStore, report: Report) -> dict[str, tuple[str, int, int]]:
    """Returns blob sha256 -> the first (job, version, seq) pointing at it."""
    heads: dict[str, tuple[int, str, int]] = {}  # job -> (version, hash, seq) as recomputed
    # projections sharing a fold (cache_index and cache_refused) share its state: folded once
    folds: dict[tuple[Any, Any], Any] = {}
    states = [(p, folds.setdefault((p.start, p.apply), p.start())) for p in TABLE_PROJECTIONS]
    referenced: dict[str, tuple[str, int, int]] = {}
    for ev in store.read_all():
        for (_, apply), state in folds.items():
            apply(state, ev)
        _check_one(ev, heads, referenced, report)
    report.jobs = sum(1 for stream in heads if worker_of(stream) is None)  # leases are no jobs
    _check_streams(store, report, heads, None)
    present = store.table_names()
    for projection, state in states:
        if projection.table not in present:
            continue  # an older schema: the schema check reports the missing table
        if report.schema_version < projection.columns_since.get(store.dialect, 0):
            continue  # an older schema without some of its columns: reported as above
        _check_projection(store, report, projection, state)
        report.projections.append(projection.table)
    return referenced


def _check_one(
    ev: StoredEvent,
    heads: dict[str, tuple[int, str, int]],
    referenced: dict[str, tuple[str, int, int]],
    report: Report,
) -> None:
    """One event's chain link and data; the blobs it points at are noted in `referenced`."""
    report.events += 1  # events whose chain was checked
    _check_event(ev, heads, report)
    try:
        data = orjson.loads(ev.data_json)
    except orjson.JSONDecodeError:
        return  # reported by _check_event
    for key, value in data.items() if isinstance(data, dict) else ():
        if _SHA_FIELD.search(key) and isinstance(value, str) and value not in referenced:
            referenced[value] = (ev.job_id, ev.version, ev.seq)


def _check_event(ev: StoredEvent, heads: dict[str, tuple[int, str, int]], report: Report) -> None:
    version, prev, _ = heads.get(ev.job_id, (0, GENESIS_HASH, 0))
    at = {"job_id": ev.job_id, "version": ev.version, "seq": ev.seq}
    if ev.version != version + 1:
        report.add(Problem("chain", f"version {ev.version} follows version {version}", **at))
    if ev.prev_hash != prev:
        report.add(Problem("chain", "prev_hash is not the hash of the job's previous event", **at))
    expected = chain_hash(
        ev.prev_hash, ev.job_id, ev.version, ev.ts, ev.level, ev.type, ev.step, ev.data_json
    )
    if expected != ev.hash:
        report.add(
            Problem("chain", "hash does not match the event's content (edited after append)", **at)
        )
    if ev.type not in EVENT_TYPES:
        report.add(Problem("chain", f"unknown event type {ev.type!r}", **at))
    else:
        try:
            parse_data(ev.type, ev.data_json)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = error_path(first["loc"]) or "data"
            report.add(
                Problem("chain", f"data does not match {ev.type}: {where}: {first['msg']}", **at)
            )
    # continue the chain from what is stored, so one edited event is reported once
    heads[ev.job_id] = (ev.version, ev.hash, ev.seq)


def _check_streams(
    store: EventStore,
    report: Report,
    heads: dict[str, tuple[int, str, int]],
    job_id: str | None,
) -> None:
    stored = {
        job: head for job, head in store.stream_heads().items() if job_id is None or job == job_id
    }
    for job, head in heads.items():
        if stored.get(job) != head:
            report.add(
                Problem(
                    "streams",
                    f"head of job {job} is {stored.get(job)}, its events end at {head}",
                )
            )
    for job in stored.keys() - heads.keys():
        report.add(Problem("streams", f"job {job} has a head but no events"))


def _check_projection(
    store: EventStore,
    report: Report,
    projection: TableProjection,
    state: Any,
    rows: Iterable[tuple[Any, ...]] | None = None,
) -> None:
    """The table's rows (or the given ones: one job's) against the fold's."""
    columns, width = projection.columns, projection.key_columns
    folded = {tuple(row[:width]): tuple(row) for row in projection.rows(state)}
    if rows is None:
        rows = table_rows(store, projection)
    table = {tuple(row[:width]): tuple(row) for row in rows}
    where = f"projection {projection.table}"
    for key in sorted(folded.keys() | table.keys(), key=str):
        have, want = table.get(key), folded.get(key)
        if have == want:
            continue
        named = ", ".join(f"{col}={value!r}" for col, value in zip(columns, key))
        if have is None:
            message = f"row {named} is missing (a fresh fold has it)"
        elif want is None:
            message = f"row {named} is not in a fresh fold of the log"
        else:
            diffs = [
                f"{col}={h!r} (fold: {w!r})" for col, h, w in zip(columns, have, want) if h != w
            ]
            message = f"row {named} drifted from the log: {', '.join(diffs)}"
        report.add(Problem("projection", f"{where}: {message}"))


# -- blobs ---------------------------------------------------------------------------------------


def _check_blobs(
    store: EventStore, report: Report, referenced: dict[str, tuple[str, int, int]]
) -> None:
    present: set[str] = set()
    for sha, size, content in store.all_blobs():
        report.blobs += 1
        present.add(sha)
        actual = hashlib.sha256(content).hexdigest()
        if actual != sha:
            report.add(Problem("blob", f"blob {sha[:12]}: content hashes to {actual[:12]}"))
        if size != len(content):
            message = f"blob {sha[:12]}: size {size}, content {len(content)} bytes"
            report.add(Problem("blob", message))
    for sha, (job, version, seq) in referenced.items():
        if sha not in present:
            message = f"blob {sha[:12]} it points at is missing"
            report.add(Problem("blob", message, job, version, seq))


JOB_BLOB_BATCH = 64  # blobs read at a time by verify JOB: a job's answers may be large


def _check_job_blobs(
    store: EventStore, report: Report, referenced: dict[str, tuple[str, int, int]]
) -> None:
    """The blobs one job points at: each present, its content hashing to its name."""
    wanted = list(referenced)
    for start in range(0, len(wanted), JOB_BLOB_BATCH):
        found = store.find_blobs(wanted[start : start + JOB_BLOB_BATCH])
        for sha in wanted[start : start + JOB_BLOB_BATCH]:
            content = found.pop(sha, None)
            if content is None:
                job, version, seq = referenced[sha]
                message = f"blob {sha[:12]} it points at is missing"
                report.add(Problem("blob", message, job, version, seq))
                continue
            report.blobs += 1
            actual = hashlib.sha256(content).hexdigest()
            if actual != sha:
                report.add(Problem("blob", f"blob {sha[:12]}: content hashes to {actual[:12]}"))
