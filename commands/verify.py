"""`steplog verify`: is the log what steplog wrote, and does everything derived from it agree?

Checks, on a read-only connection: every job's hash chain recomputed from genesis (and each
event's data against its model); the `streams` heads; the schema against schema.sql (version,
tables, the append-only triggers, views); PRAGMA integrity_check; each projection table of
projections.tables.TABLE_PROJECTIONS against a fresh fold of the log (drift); every blob's
sha256 and size against its content, and that every blob an event points at is there.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import orjson
from pydantic import ValidationError

from steplog.eventstore.events import EVENT_TYPES, parse_data
from steplog.eventstore.record import GENESIS_HASH, StoredEvent, chain_hash
from steplog.eventstore.sqlite import APPLICATION_ID, SCHEMA_PATH, SCHEMA_VERSION, schema_statements
from steplog.projections.tables import TABLE_PROJECTIONS, TableProjection
from steplog.words import counted

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
            "events": self.events,
            "jobs": self.jobs,
            "blobs": self.blobs,
            "schema_version": self.schema_version,
            "projections": self.projections,
            "problems": [asdict(p) for p in self.problems],
            "more_problems": self.dropped,
        }

    def summary(self) -> str:
        return (
            f"ok: {counted(self.events, 'event')} in {counted(self.jobs, 'job')}, every hash "
            f"chain intact; schema {self.schema_version} with its triggers; integrity ok; "
            f"{', '.join(self.projections)} match a fresh fold; "
            f"{counted(self.blobs, 'blob')} {'matches its' if self.blobs == 1 else 'match their'} "
            "sha256"
        )


def verify(conn: sqlite3.Connection, job_id: str | None = None) -> Report:
    """Run every check; `job_id` limits the chain and blob-reference checks to one job."""
    report = Report()
    referenced = _check_log(conn, report, job_id)
    _check_schema(conn, report)
    _check_integrity(conn, report)
    _check_blobs(conn, report, referenced)
    report.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))  # bad events first, in order
    return report


# -- the log: chains, streams, projections in one pass -----------------------------------------


def _events(conn: sqlite3.Connection) -> Iterator[StoredEvent]:
    cursor = conn.execute(
        "SELECT seq, job_id, version, ts, level, type, step, data, prev_hash, hash"
        " FROM events ORDER BY seq"
    )
    for row in cursor:
        yield StoredEvent._make(row)


_SHA_FIELD = re.compile(r"_sha256$")


def _check_log(
    conn: sqlite3.Connection, report: Report, job_id: str | None
) -> dict[str, tuple[str, int, int]]:
    """Returns blob sha256 -> the first (job, version, seq) pointing at it."""
    heads: dict[str, tuple[int, str, int]] = {}  # job -> (version, hash, seq) as recomputed
    # projections sharing a fold (cache_index and cache_refused) share its state: folded once
    folds: dict[tuple[Any, Any], Any] = {}
    states = [(p, folds.setdefault((p.start, p.apply), p.start())) for p in TABLE_PROJECTIONS]
    referenced: dict[str, tuple[str, int, int]] = {}
    for ev in _events(conn):
        for (_, apply), state in folds.items():
            apply(state, ev)
        if job_id is not None and ev.job_id != job_id:
            continue
        report.events += 1  # events whose chain was checked
        _check_event(ev, heads, report)
        try:
            data = orjson.loads(ev.data_json)
        except orjson.JSONDecodeError:
            continue  # reported by _check_event
        for key, value in data.items() if isinstance(data, dict) else ():
            if _SHA_FIELD.search(key) and isinstance(value, str) and value not in referenced:
                referenced[value] = (ev.job_id, ev.version, ev.seq)
    report.jobs = len(heads)
    _check_streams(conn, report, heads, job_id)
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for projection, state in states:
        if projection.table not in present:
            continue  # an older schema: the schema check reports the missing table
        _check_projection(conn, report, projection, state)
        report.projections.append(projection.table)
    if job_id is not None and job_id not in heads:
        report.add(Problem("chain", f"job {job_id} has no events"))
    return referenced


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
            where = ".".join(str(p) for p in first["loc"]) or "data"
            report.add(
                Problem("chain", f"data does not match {ev.type}: {where}: {first['msg']}", **at)
            )
    # continue the chain from what is stored, so one edited event is reported once
    heads[ev.job_id] = (ev.version, ev.hash, ev.seq)


def _check_streams(
    conn: sqlite3.Connection,
    report: Report,
    heads: dict[str, tuple[int, str, int]],
    job_id: str | None,
) -> None:
    stored = {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute("SELECT job_id, version, last_hash, last_seq FROM streams")
        if job_id is None or r[0] == job_id
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
    conn: sqlite3.Connection, report: Report, projection: TableProjection, state: Any
) -> None:
    columns, width = projection.columns, projection.key_columns
    folded = {tuple(row[:width]): tuple(row) for row in projection.rows(state)}
    sql = f"SELECT {', '.join(columns)} FROM {projection.table}"
    table = {tuple(row[:width]): tuple(row) for row in conn.execute(sql)}
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


# -- schema, integrity, blobs --------------------------------------------------------------------


def _normal_sql(sql: str | None) -> str:
    text = re.sub(r"--[^\n]*", "", sql or "")
    return " ".join(text.replace("IF NOT EXISTS ", "").split())


def expected_schema() -> dict[tuple[str, str], str]:
    """(type, name) -> normalised SQL of every object schema.sql creates."""
    mem = sqlite3.connect(":memory:")
    try:
        for statement in schema_statements(SCHEMA_PATH.read_text(encoding="utf-8")):
            mem.execute(statement)
        rows = mem.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        return {(t, n): _normal_sql(s) for t, n, s in rows}
    finally:
        mem.close()


def _check_schema(conn: sqlite3.Connection, report: Report) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    report.schema_version = version
    if app_id != APPLICATION_ID:
        report.add(Problem("schema", f"application_id is {app_id}, not steplog's"))
    if version != SCHEMA_VERSION:
        report.add(
            Problem(
                "schema",
                f"schema version is {version}, this steplog expects {SCHEMA_VERSION}"
                " (any other steplog command upgrades the file)",
            )
        )
    actual = {
        (t, n): _normal_sql(s)
        for t, n, s in conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
        )
    }
    for (kind, name), sql in sorted(expected_schema().items()):
        if (kind, name) not in actual:
            report.add(Problem("schema", f"{kind} {name} is missing"))
        elif actual[(kind, name)] != sql:
            report.add(Problem("schema", f"{kind} {name} differs from schema.sql"))
    for kind, name in sorted(actual.keys() - expected_schema().keys()):
        if kind == "trigger":
            report.add(Problem("schema", f"trigger {name} is not steplog's"))
    names = {n for (_, n) in actual}
    if "steplog_meta" in names:
        meta = conn.execute(
            "SELECT value FROM steplog_meta WHERE key = 'schema_version'"
        ).fetchone()
        if meta is None or meta[0] != str(version):
            report.add(Problem("schema", f"steplog_meta.schema_version is {meta and meta[0]!r}"))
    if "schema_migrations" in names:
        top = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        if top != version:
            report.add(
                Problem("schema", f"schema_migrations ends at {top}, user_version is {version}")
            )


def _check_integrity(conn: sqlite3.Connection, report: Report) -> None:
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    if rows != ["ok"]:
        for row in rows:
            report.add(Problem("integrity", row))


def _check_blobs(
    conn: sqlite3.Connection, report: Report, referenced: dict[str, tuple[str, int, int]]
) -> None:
    present: set[str] = set()
    for sha, size, content in conn.execute("SELECT sha256, size, content FROM blobs"):
        report.blobs += 1
        present.add(sha)
        content = bytes(content)
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
