"""Projection tables kept in the append transaction (`jobs`, `cache_index`, `cache_refused`,
`breakers`, `workers`, `calls_in_flight`): the registry verify refolds, the fold a rebuild writes back, and SQLite's dialect
(the statements are projections.sql_tables', with SQLite's `?`; its rebuild here).

Each projector is the SQL form of a fold in this package; tests prove table == fold for any
event sequence, so the tables are a cache of the log, never a second truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, NamedTuple

import orjson

from steplog.eventstore.record import StoredEvent, stored_from_row
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections import breaker, cache, flights, leases
from steplog.projections.breaker import BREAKER_EVENT_TYPES, Breakers
from steplog.projections.cache import CACHE_EVENT_TYPES, CacheIndex
from steplog.projections.flights import FLIGHT_EVENT_TYPES, Flights
from steplog.projections.leases import WORKER_COLUMNS, WORKER_EVENT_TYPES, Workers
from steplog.projections.manifest import JOB_STATUS_AFTER
from steplog.projections.sql_tables import ProjectionSQL

SQLITE = ProjectionSQL("?", "json_extract(data, '$.endpoint')")
project_jobs = SQLITE.project_jobs
project_cache = SQLITE.project_cache
project_breakers = SQLITE.project_breakers
project_workers = SQLITE.project_workers
project_flights = SQLITE.project_flights
PROJECTORS = SQLITE.projectors
breaker_row = SQLITE.breaker_row
cache_lookup = SQLITE.cache_lookup
key_flights = SQLITE.key_flights
endpoint_owners = SQLITE.endpoint_owners
recent_requests = SQLITE.recent_requests
latest_jobs = SQLITE.latest_jobs
batch_jobs = SQLITE.batch_jobs
all_rows = SQLITE.all_rows
job_rows_of = SQLITE.job_rows_of
read_breakers_table = SQLITE.read_breakers_table
read_cache_table = SQLITE.read_cache_table
read_jobs_table = SQLITE.read_jobs_table
worker_row = SQLITE.worker_row
worker_rows = SQLITE.worker_rows
open_jobs = SQLITE.open_jobs


JobRow = list  # [pipeline, status, created_ts, batch]


def apply_job_row(rows: dict[str, JobRow], ev: StoredEvent) -> None:
    """The `jobs` table as a fold: pipeline and creation from job.created, then each status."""
    if ev.type == "job.created":
        d = orjson.loads(ev.data_json)
        rows[ev.job_id] = [d["pipeline"], "queued", ev.ts, d.get("batch")]
    status = JOB_STATUS_AFTER.get(ev.type)
    if status is not None and ev.job_id in rows:
        rows[ev.job_id][1] = status


class Folded(NamedTuple):
    """Every projection table folded from the log, as rebuild writes them back."""

    jobs: dict[str, JobRow]
    cache: CacheIndex
    breakers: Breakers
    flights: Flights
    events: int
    workers: Workers


# Which folds each event type reaches. Every fold above ignores an event whose type is not in its
# own list (its apply returns at once), so calling only these gives the same tables: an event
# costs one dict lookup and the folds that read it, and most events (step.started,
# step.succeeded, cache.miss, file.written, …) reach none.
JOB_EVENT_TYPES = ("job.created", *JOB_STATUS_AFTER)
_FOLD_TYPES = (
    (0, JOB_EVENT_TYPES),
    (1, CACHE_EVENT_TYPES),
    (2, BREAKER_EVENT_TYPES),
    (3, FLIGHT_EVENT_TYPES),
    (4, WORKER_EVENT_TYPES),
)
FOLDED_TYPES = tuple(dict.fromkeys(t for _, types in _FOLD_TYPES for t in types))


def fold_tables(events: Iterable[StoredEvent], *, count: int | None = None) -> Folded:
    """The projection tables' fold over `events` (read with REBUILD_NEEDS' data).

    `count`, when given, is the number of events the log holds, and `events` may then be only
    those of FOLDED_TYPES (the others change no table); otherwise every event is counted."""
    rows: dict[str, JobRow] = {}
    index = CacheIndex()
    breakers: Breakers = {}
    workers: Workers = {}
    in_flight: Flights = {}
    folds: tuple[Callable[[StoredEvent], Any], ...] = (
        partial(apply_job_row, rows),
        partial(cache.apply, index),
        partial(breaker.apply, breakers),
        partial(flights.apply, in_flight),
        partial(leases.apply, workers),
    )
    by_type: dict[str, list[Callable[[StoredEvent], Any]]] = {}
    for i, types in _FOLD_TYPES:
        for t in types:
            by_type.setdefault(t, []).append(folds[i])
    # the common one-fold types skip the loop over a list
    single = {t: fs[0] for t, fs in by_type.items() if len(fs) == 1}
    multi = {t: tuple(fs) for t, fs in by_type.items() if len(fs) > 1}
    seen = 0
    for ev in events:
        seen += 1
        t = ev.type
        one = single.get(t)
        if one is not None:
            one(ev)
            continue
        many = multi.get(t)
        if many is not None:
            for fold in many:
                fold(ev)
    return Folded(rows, index, breakers, in_flight, seen if count is None else count, workers)


REBUILD_NEEDS = tuple(
    dict.fromkeys(
        (
            "job.created",
            *CACHE_EVENT_TYPES,
            *BREAKER_EVENT_TYPES,
            *FLIGHT_EVENT_TYPES,
            *WORKER_EVENT_TYPES,
        )
    )
)


# An llm.request reaches only the calls_in_flight fold, which skips one that names no endpoint
# (an offline call) without parsing it: this is flights._endpoint_call's test, in SQL, so such
# rows (half of a log's llm.* rows) are not read at all.
assert all("llm.request" not in types for i, types in _FOLD_TYPES if i != 3)
_UNFOLDED_REQUEST = (
    "type = 'llm.request' AND (instr(data, '\"endpoint\"') = 0"
    " OR instr(data, '\"endpoint\":null') > 0)"
)


def rebuild(store: SQLiteEventStore) -> int:
    """Drop the projection tables' rows and refold them from seq 0; returns events folded.

    Memory grows with the number of jobs and cache keys, not with the number of events.
    """
    # Fold inside the write transaction: an append by another process between the read and the
    # rewrite would otherwise be wiped from the tables. Writers wait (busy_timeout) meanwhile.
    with store.write_transaction() as conn:
        # Only the rows of a type some fold reads are read (SQLite skips the rest without
        # building a Python row); the count is of the whole log.
        count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        wanted = ", ".join("?" * len(FOLDED_TYPES))
        cursor = conn.execute(
            "SELECT seq, job_id, version, ts, level, type, step, data, '', ''"
            f" FROM events WHERE type IN ({wanted}) AND NOT ({_UNFOLDED_REQUEST}) ORDER BY seq",
            FOLDED_TYPES,
        )
        cursor.arraysize = 1000
        rows, index, breakers, in_flight, count, workers = fold_tables(
            map(stored_from_row, cursor), count=count
        )
        folded = {
            "jobs": rows,
            "cache_index": index,
            "cache_refused": index,
            "breakers": breakers,
            "workers": workers,
            "calls_in_flight": in_flight,
        }
        for projection in TABLE_PROJECTIONS:
            _rewrite(conn, projection, projection.rows(folded[projection.table]))
    return count


def _rewrite(conn: Any, projection: "TableProjection", rows: Iterable[tuple[Any, ...]]) -> None:
    """Make `projection.table` hold exactly `rows`, writing only the rows that differ.

    The table is read once in key order and compared with the fold: a row equal to its fold
    stays; one the fold lacks or holds otherwise is deleted; the fold's rows not left equal in
    the table are inserted (in key order, so the b-tree fills page by page). Reading a table
    back costs a fraction of rewriting it, and a rebuild over correct tables (the common case,
    and what verify checks) writes nothing. The end state is the same as DELETE + INSERT."""
    table, columns, keys = projection.table, projection.columns, projection.key_columns
    wanted = {tuple(row[:keys]): row for row in rows}
    stale: list[tuple[Any, ...]] = []
    for have in conn.execute(f"SELECT {', '.join(columns)} FROM {table}"):
        key = have[:keys]
        row = wanted.get(key)
        if row is not None and tuple(row) == have:
            del wanted[key]
        else:
            stale.append(key)
    if stale:
        where = " AND ".join(f"{c} = ?" for c in columns[:keys])
        conn.executemany(f"DELETE FROM {table} WHERE {where}", stale)
    if wanted:
        marks = ", ".join("?" * len(columns))
        conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
            [tuple(wanted[key]) for key in sorted(wanted)],
        )


# -- the registry of table projections -----------------------------------------------------------


@dataclass(frozen=True)
class TableProjection:
    """A projection kept as a SQL table, described so that it can be refolded and compared
    (`steplog verify`): a fold (start, apply) whose rows(state) must equal the table's rows.
    A new projection table is checked by adding one entry to TABLE_PROJECTIONS."""

    table: str
    columns: tuple[str, ...]  # the key column first; every column is compared
    start: Callable[[], Any]
    apply: Callable[[Any, StoredEvent], Any]
    rows: Callable[[Any], Iterable[tuple[Any, ...]]]
    key_columns: int = 1  # how many of the first columns make the primary key
    # the column naming the job each row belongs to, when every row is one job's own (its
    # rows are then checked by `verify JOB` from that job's events alone)
    job_column: str | None = None
    # dialect -> the schema version that brought the last of these columns (an older database,
    # which verify reports as such, is not compared)
    columns_since: dict[str, int] = field(default_factory=dict)


TABLE_PROJECTIONS: tuple[TableProjection, ...] = (
    TableProjection(
        "jobs",
        ("job_id", "pipeline", "status", "created_ts", "batch"),
        start=dict,
        apply=apply_job_row,
        rows=lambda state: ((job_id, *row) for job_id, row in state.items()),
        job_column="job_id",
        columns_since={"sqlite": 7, "postgresql": 4},  # batch
    ),
    TableProjection(
        "cache_index",
        (
            "cache_key",
            "response_sha256",
            "origin_job",
            "origin_step",
            "seq",
            "tokens_in",
            "tokens_out",
        ),
        start=CacheIndex,
        apply=cache.apply,
        rows=lambda state: state.values(),
    ),
    TableProjection(
        "cache_refused",
        ("cache_key", "response_sha256", "seq"),
        start=CacheIndex,
        apply=cache.apply,
        rows=lambda state: ((key, sha, seq) for (key, sha), seq in state.refused.items()),
        key_columns=2,  # one key can have several refused answers
    ),
    TableProjection(
        "breakers",
        ("endpoint", "status", "failures", "until", "provider", "seq"),
        start=dict,
        apply=breaker.apply,
        rows=lambda state: state.values(),
    ),
    TableProjection(
        "workers",
        WORKER_COLUMNS,
        start=dict,
        apply=leases.apply,
        rows=lambda state: state.values(),
    ),
    TableProjection(
        "calls_in_flight",
        ("job_id", "step", "endpoint", "cache_key", "attempt", "owner", "ts", "seq"),
        start=dict,
        apply=flights.apply,
        rows=lambda state: state.values(),
        key_columns=2,
    ),
)
