"""The projection tables' SQL, written once for both stores: the projectors that keep `jobs`,
`cache_index`, `cache_refused`, `breakers` and `calls_in_flight` in each append's transaction,
and the lookups.

SQLite and PostgreSQL take the same statements here (upserts with ON CONFLICT); they differ in
the parameter mark and in how a field of `events.data` is read (the one statement that reads
events), so each dialect is a ProjectionSQL built with its mark: projections
.tables.SQLITE and projections.postgres_tables.POSTGRES. Each projector is the SQL form of a
fold of this package; tests prove table == fold for any event sequence on both stores.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import orjson

from steplog.eventstore.record import StoredEvent
from steplog.projections import breaker, flights, leases
from steplog.projections.breaker import BREAKER_EVENT_TYPES, BreakerRow, Breakers
from steplog.projections.cache import CACHE_EVENT_TYPES, CacheEntry, CacheIndex
from steplog.projections.flights import FLIGHT_EVENT_TYPES, FlightRow, Flights
from steplog.projections.leases import WORKER_COLUMNS, WORKER_EVENT_TYPES, WorkerRow, Workers
from steplog.projections.manifest import JOB_STATUS_AFTER

BREAKER_COLUMNS = "endpoint, status, failures, until, provider, seq"
FLIGHT_COLUMNS = "job_id, step, endpoint, cache_key, attempt, owner, ts, seq"
CACHE_COLUMNS = "cache_key, response_sha256, origin_job, origin_step, seq, tokens_in, tokens_out"
_FLIGHT_TYPES = frozenset(FLIGHT_EVENT_TYPES)
_NAME = re.compile(r"[a-z_][a-z0-9_]*")

Projector = Callable[[Any, Sequence[StoredEvent]], None]


def _many(conn: Any, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """executemany on a sqlite3 or a psycopg connection (psycopg's is on its cursors)."""
    cursor = conn.cursor()
    try:
        cursor.executemany(sql, rows)
    finally:
        cursor.close()


class ProjectionSQL:
    """The projectors and lookups with `mark` as the parameter mark (`?` or `%s`)."""

    def __init__(self, mark: str, endpoint_field: str) -> None:
        """`endpoint_field`: the dialect's expression for data's endpoint, as its index has it."""
        self.mark = m = mark
        self.insert_job = (
            "INSERT INTO jobs (job_id, pipeline, status, created_ts, batch)"
            f" VALUES ({m}, {m}, 'queued', {m}, {m})"
        )
        self.set_status = f"UPDATE jobs SET status = {m} WHERE job_id = {m}"
        self.forget_key = f"DELETE FROM cache_index WHERE cache_key = {m}"
        self.refuse = (
            f"INSERT INTO cache_refused (cache_key, response_sha256, seq) VALUES ({m}, {m}, {m})"
            " ON CONFLICT (cache_key, response_sha256) DO NOTHING"
        )
        self.forget_answer = (
            f"DELETE FROM cache_index WHERE cache_key = {m} AND response_sha256 = {m}"
        )
        # WHERE is needed anyway: SQLite parses an upsert after INSERT … SELECT only with one
        self.offer = (
            f"INSERT INTO cache_index ({CACHE_COLUMNS})"
            f" SELECT {m}, {m}, {m}, {m}, {m}, {m}, {m} WHERE NOT EXISTS"
            f" (SELECT 1 FROM cache_refused WHERE cache_key = {m} AND response_sha256 = {m})"
            " ON CONFLICT (cache_key) DO NOTHING"
        )
        self.put_breaker = (
            f"INSERT INTO breakers ({BREAKER_COLUMNS}) VALUES ({m}, {m}, {m}, {m}, {m}, {m})"
            " ON CONFLICT (endpoint) DO UPDATE SET status = excluded.status,"
            " failures = excluded.failures, until = excluded.until,"
            " provider = excluded.provider, seq = excluded.seq"
        )
        self.get_breaker = f"SELECT {BREAKER_COLUMNS} FROM breakers WHERE endpoint = {m}"
        self.get_entry = f"SELECT {CACHE_COLUMNS} FROM cache_index WHERE cache_key = {m}"
        self.latest = (
            "SELECT j.job_id, j.pipeline, j.status, j.created_ts, s.updated_ts, j.batch"
            f" FROM jobs j JOIN streams s USING (job_id) ORDER BY s.last_seq DESC LIMIT {m}"
        )
        columns = ", ".join(WORKER_COLUMNS)
        marks = ", ".join([m] * len(WORKER_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in WORKER_COLUMNS[1:])
        self.put_worker = (
            f"INSERT INTO workers ({columns}) VALUES ({marks})"
            f" ON CONFLICT (worker_id) DO UPDATE SET {updates}"
        )
        self.get_worker = f"SELECT {columns} FROM workers WHERE worker_id = {m}"
        self.all_workers = f"SELECT {columns} FROM workers ORDER BY started_ts DESC, worker_id"
        # jobs a worker may claim: queued ones first (oldest first), then running ones whose
        # owner the caller checks; the status index keeps it from reading every job
        self.by_status = (
            "SELECT job_id, status FROM jobs WHERE status IN ('queued', 'running')"
            f" ORDER BY status, created_ts, job_id LIMIT {m}"
        )
        self.latest_in_batch = (
            "SELECT j.job_id, j.pipeline, j.status, j.created_ts, s.updated_ts, j.batch"
            f" FROM jobs j JOIN streams s USING (job_id) WHERE j.batch = {m}"
            f" ORDER BY s.last_seq DESC LIMIT {m}"
        )
        self.batch_size = f"SELECT count(*) FROM jobs WHERE batch = {m}"
        self.put_flight = (
            f"INSERT INTO calls_in_flight ({FLIGHT_COLUMNS})"
            f" VALUES ({m}, {m}, {m}, {m}, {m}, {m}, {m}, {m})"
            " ON CONFLICT (job_id, step) DO UPDATE SET endpoint = excluded.endpoint,"
            " cache_key = excluded.cache_key, attempt = excluded.attempt,"
            " owner = excluded.owner, ts = excluded.ts, seq = excluded.seq"
        )
        self.land_flight = f"DELETE FROM calls_in_flight WHERE job_id = {m} AND step = {m}"
        self.clear_flights = f"DELETE FROM calls_in_flight WHERE job_id = {m}"
        self.flights_for = f"SELECT {FLIGHT_COLUMNS} FROM calls_in_flight WHERE cache_key = {m}"
        # what an admission needs of each call on the endpoint: whose it is, to judge it alive
        self.flight_owners_on = (
            f"SELECT job_id, step, owner, ts FROM calls_in_flight WHERE endpoint = {m}"
        )
        # the endpoint's latest requests, newest first, on the events_llm_requests index
        self.recent = (
            f"SELECT ts FROM events WHERE type = 'llm.request' AND {endpoint_field} = {m}"
            f" AND ts >= {m} ORDER BY ts DESC LIMIT {m}"
        )
        self.projectors: tuple[Projector, ...] = (
            self.project_jobs,
            self.project_cache,
            self.project_breakers,
            self.project_workers,
            self.project_flights,
        )

    # -- the projectors, inside the append's transaction --------------------------------------

    def project_jobs(self, conn: Any, events: Sequence[StoredEvent]) -> None:
        changed: dict[str, str] = {}
        for ev in events:
            if ev.type == "job.created":
                d = orjson.loads(ev.data_json)
                conn.execute(self.insert_job, (ev.job_id, d["pipeline"], ev.ts, d.get("batch")))
            status = JOB_STATUS_AFTER.get(ev.type)
            if status is not None:
                changed[ev.job_id] = status
        for job_id, status in changed.items():
            conn.execute(self.set_status, (status, job_id))

    def project_cache(self, conn: Any, events: Sequence[StoredEvent]) -> None:
        """`cache_index` and `cache_refused` as projections.cache.apply folds them."""
        for ev in events:
            if ev.type not in CACHE_EVENT_TYPES:
                continue
            d = orjson.loads(ev.data_json)
            key, sha = d["cache_key"], d.get("response_sha256")
            if ev.type == "cache.invalidated":
                if sha is None:
                    conn.execute(self.forget_key, (key,))
                    continue
                conn.execute(self.refuse, (key, sha, ev.seq))
                conn.execute(self.forget_answer, (key, sha))
                continue
            if ev.type == "llm.response":
                if not (d["success"] and sha):
                    continue
                row = (key, sha, ev.job_id, ev.step, ev.seq, d.get("tokens_in", 0),
                       d.get("tokens_out", 0))  # fmt: skip
            else:
                row = (key, sha, d["origin_job"], d.get("origin_step"), ev.seq, 0, 0)
            conn.execute(self.offer, (*row, key, sha))

    def project_breakers(self, conn: Any, events: Sequence[StoredEvent]) -> None:
        """The breaker fold applied to the rows it touches (read, fold, write back)."""
        touched: Breakers = {}
        for ev in events:
            # most llm.response events (offline providers) have no endpoint: skip them unparsed
            if ev.type not in BREAKER_EVENT_TYPES or '"endpoint":"' not in ev.data_json:
                continue
            endpoint = orjson.loads(ev.data_json).get("endpoint")
            if not endpoint:
                continue
            if endpoint not in touched:
                row = self.breaker_row(conn, endpoint)
                if row is not None:
                    touched[endpoint] = row
            breaker.apply(touched, ev)
        if touched:
            _many(conn, self.put_breaker, [tuple(row) for row in touched.values()])

    def project_workers(self, conn: Any, events: Sequence[StoredEvent]) -> None:
        """The leases fold applied to the workers rows the events touch."""
        touched: Workers = {}
        for ev in events:
            if ev.type not in WORKER_EVENT_TYPES:
                continue
            worker_id = leases.worker_of(ev.job_id)
            if worker_id is None:
                continue
            if worker_id not in touched:
                row = self.worker_row(conn, worker_id)
                if row is not None:
                    touched[worker_id] = row
            leases.apply(touched, ev)
        if touched:
            _many(conn, self.put_worker, [tuple(row) for row in touched.values()])

    def project_flights(self, conn: Any, events: Sequence[StoredEvent]) -> None:
        """`calls_in_flight` as projections.flights.apply folds it."""
        for ev in events:
            if ev.type not in _FLIGHT_TYPES:  # flights.change would say None: skip the call
                continue
            moved = flights.change(ev)
            if moved is None:
                continue
            what, row = moved
            if what == "clear":
                conn.execute(self.clear_flights, (ev.job_id,))
            elif what == "land":
                conn.execute(self.land_flight, (ev.job_id, ev.step))
            else:
                conn.execute(self.put_flight, row)

    # -- lookups -------------------------------------------------------------------------------

    def key_flights(self, conn: Any, cache_key: str) -> list[FlightRow]:
        """The calls in flight (to any endpoint) for `cache_key`."""
        return [FlightRow(*r) for r in conn.execute(self.flights_for, (cache_key,)).fetchall()]

    def endpoint_owners(self, conn: Any, endpoint: str) -> list[tuple[str, str, str | None, str]]:
        """(job_id, step, owner, ts) of each call in flight to `endpoint`: what a count of the
        live ones needs, without a row object each (an admission reads up to max_concurrency)."""
        return conn.execute(self.flight_owners_on, (endpoint,)).fetchall()

    def recent_requests(self, conn: Any, endpoint: str, since: str, limit: int) -> list[str]:
        """ts of the endpoint's llm.requests at or after `since`, newest first, at most `limit`."""
        return [r[0] for r in conn.execute(self.recent, (endpoint, since, limit)).fetchall()]

    def read_flights_table(self, conn: Any) -> Flights:
        rows = conn.execute(f"SELECT {FLIGHT_COLUMNS} FROM calls_in_flight").fetchall()
        return {(r[0], r[1]): FlightRow(*r) for r in rows}

    def breaker_row(self, conn: Any, endpoint: str) -> BreakerRow | None:
        row = conn.execute(self.get_breaker, (endpoint,)).fetchone()
        return BreakerRow(*row) if row else None

    def worker_row(self, conn: Any, worker_id: str) -> WorkerRow | None:
        row = conn.execute(self.get_worker, (worker_id,)).fetchone()
        return WorkerRow(*row) if row else None

    def worker_rows(self, conn: Any) -> list[WorkerRow]:
        """Every worker, the most recently started first."""
        return [WorkerRow(*row) for row in conn.execute(self.all_workers).fetchall()]

    def open_jobs(self, conn: Any, limit: int) -> list[tuple[str, str]]:
        """(job_id, status) of queued jobs, oldest first, then of running ones."""
        return [(r[0], r[1]) for r in conn.execute(self.by_status, (limit,)).fetchall()]

    def cache_lookup(self, conn: Any, cache_key: str) -> CacheEntry | None:
        row = conn.execute(self.get_entry, (cache_key,)).fetchone()
        return CacheEntry(*row) if row else None

    def latest_jobs(self, conn: Any, limit: int, batch: str | None = None) -> list[tuple[Any, ...]]:
        """(job_id, pipeline, status, created_ts, updated_ts, batch) of the latest jobs (of
        `batch` only, when given), newest first."""
        if batch is None:
            return [tuple(row) for row in conn.execute(self.latest, (limit,)).fetchall()]
        found = conn.execute(self.latest_in_batch, (batch, limit)).fetchall()
        return [tuple(row) for row in found]

    def batch_jobs(self, conn: Any, batch: str) -> int:
        """How many jobs were created in `batch`."""
        return int(conn.execute(self.batch_size, (batch,)).fetchone()[0])

    def all_rows(self, conn: Any, table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
        """Every row of a projection table (the names are checked: they are spliced in)."""
        if not all(_NAME.fullmatch(name) for name in (table, *columns)):
            raise ValueError(f"not a projection table's name: {table!r} {columns!r}")
        return [tuple(r) for r in conn.execute(f"SELECT {', '.join(columns)} FROM {table}")]

    def job_rows_of(
        self, conn: Any, table: str, columns: Sequence[str], job_column: str, job_id: str
    ) -> list[tuple[Any, ...]]:
        """The rows of a per-job projection table that belong to one job (`verify JOB`)."""
        if not all(_NAME.fullmatch(name) for name in (table, *columns, job_column)):
            raise ValueError(f"not a projection table's name: {table!r} {columns!r}")
        sql = f"SELECT {', '.join(columns)} FROM {table} WHERE {job_column} = {self.mark}"
        return [tuple(r) for r in conn.execute(sql, (job_id,))]

    def read_breakers_table(self, conn: Any) -> Breakers:
        rows = conn.execute(f"SELECT {BREAKER_COLUMNS} FROM breakers").fetchall()
        return {r[0]: BreakerRow(*r) for r in rows}

    def read_cache_table(self, conn: Any) -> CacheIndex:
        """`cache_index` and `cache_refused` read back into the fold's shape."""
        rows = conn.execute(f"SELECT {CACHE_COLUMNS} FROM cache_index").fetchall()
        index = CacheIndex({r[0]: CacheEntry(*r) for r in rows})
        refused = conn.execute("SELECT cache_key, response_sha256, seq FROM cache_refused")
        index.refused = {(key, sha): seq for key, sha, seq in refused}
        return index

    def read_jobs_table(self, conn: Any) -> dict[str, tuple[str | None, str, str, str | None]]:
        """job_id -> (pipeline, status, created_ts, batch)."""
        rows = conn.execute(
            "SELECT job_id, pipeline, status, created_ts, batch FROM jobs"
        ).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
