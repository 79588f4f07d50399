"""The projection tables on PostgreSQL: projections.tables' projectors, lookups and rebuild in
PostgreSQL's dialect, over the same tables and columns (schema_postgres.sql). The folds they
follow are the same ones (projections.cache, projections.breaker, tables.apply_job_row), and
tests/test_store_contract.py checks table == fold on both stores.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

import orjson

from steplog.eventstore.record import StoredEvent
from steplog.projections import breaker
from steplog.projections.breaker import BREAKER_EVENT_TYPES, BreakerRow, Breakers
from steplog.projections.cache import CACHE_EVENT_TYPES, CacheEntry
from steplog.projections.manifest import JOB_STATUS_AFTER
from steplog.projections.tables import REBUILD_NEEDS, fold_tables

if TYPE_CHECKING:
    import psycopg

    from steplog.eventstore.postgres import PostgresEventStore

    Connection = psycopg.Connection[Any]


def project_jobs(conn: Connection, events: Sequence[StoredEvent]) -> None:
    changed: dict[str, str] = {}
    for ev in events:
        if ev.type == "job.created":
            conn.execute(
                "INSERT INTO jobs (job_id, pipeline, status, created_ts)"
                " VALUES (%s, %s, 'created', %s)",
                (ev.job_id, orjson.loads(ev.data_json)["pipeline"], ev.ts),
            )
        status = JOB_STATUS_AFTER.get(ev.type)
        if status is not None:
            changed[ev.job_id] = status
    for job_id, status in changed.items():
        conn.execute("UPDATE jobs SET status = %s WHERE job_id = %s", (status, job_id))


_INSERT_ENTRY = (
    "INSERT INTO cache_index (cache_key, response_sha256, origin_job, origin_step, seq,"
    " tokens_in, tokens_out)"
    " SELECT %s, %s, %s, %s, %s, %s, %s WHERE NOT EXISTS"
    " (SELECT 1 FROM cache_refused WHERE cache_key = %s AND response_sha256 = %s)"
    " ON CONFLICT (cache_key) DO NOTHING"
)


def project_cache(conn: Connection, events: Sequence[StoredEvent]) -> None:
    """`cache_index` and `cache_refused` as projections.cache.apply folds them."""
    for ev in events:
        if ev.type not in CACHE_EVENT_TYPES:
            continue
        d = orjson.loads(ev.data_json)
        key, sha = d["cache_key"], d.get("response_sha256")
        if ev.type == "cache.invalidated":
            if sha is None:
                conn.execute("DELETE FROM cache_index WHERE cache_key = %s", (key,))
                continue
            conn.execute(
                "INSERT INTO cache_refused (cache_key, response_sha256, seq) VALUES (%s, %s, %s)"
                " ON CONFLICT (cache_key, response_sha256) DO NOTHING",
                (key, sha, ev.seq),
            )
            conn.execute(
                "DELETE FROM cache_index WHERE cache_key = %s AND response_sha256 = %s",
                (key, sha),
            )
            continue
        if ev.type == "llm.response":
            if not (d["success"] and sha):
                continue
            row = (
                key,
                sha,
                ev.job_id,
                ev.step,
                ev.seq,
                d.get("tokens_in", 0),
                d.get("tokens_out", 0),
            )
        else:
            row = (key, sha, d["origin_job"], d.get("origin_step"), ev.seq, 0, 0)
        conn.execute(_INSERT_ENTRY, (*row, key, sha))


_BREAKER_COLUMNS = "endpoint, status, failures, until, provider, seq"
_UPSERT_BREAKER = (
    f"INSERT INTO breakers ({_BREAKER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (endpoint) DO UPDATE SET status = excluded.status,"
    " failures = excluded.failures, until = excluded.until, provider = excluded.provider,"
    " seq = excluded.seq"
)


def project_breakers(conn: Connection, events: Sequence[StoredEvent]) -> None:
    """The breaker fold applied to the rows it touches (read, fold, write back)."""
    touched: Breakers = {}
    for ev in events:
        if ev.type not in BREAKER_EVENT_TYPES or '"endpoint":"' not in ev.data_json:
            continue
        endpoint = orjson.loads(ev.data_json).get("endpoint")
        if not endpoint:
            continue
        if endpoint not in touched:
            row = breaker_row(conn, endpoint)
            if row is not None:
                touched[endpoint] = row
        breaker.apply(touched, ev)
    if touched:
        with conn.cursor() as cur:
            cur.executemany(_UPSERT_BREAKER, [tuple(row) for row in touched.values()])


PROJECTORS = (project_jobs, project_cache, project_breakers)


def breaker_row(conn: Connection, endpoint: str) -> BreakerRow | None:
    row = conn.execute(
        f"SELECT {_BREAKER_COLUMNS} FROM breakers WHERE endpoint = %s", (endpoint,)
    ).fetchone()
    return BreakerRow(*row) if row else None


def cache_lookup(conn: Connection, cache_key: str) -> CacheEntry | None:
    row = conn.execute(
        "SELECT cache_key, response_sha256, origin_job, origin_step, seq, tokens_in, tokens_out"
        " FROM cache_index WHERE cache_key = %s",
        (cache_key,),
    ).fetchone()
    return CacheEntry(*row) if row else None


def latest_jobs(conn: Connection, limit: int) -> list[tuple[Any, ...]]:
    """(job_id, pipeline, status, created_ts, updated_ts) of the latest jobs, newest first."""
    return [
        tuple(row)
        for row in conn.execute(
            "SELECT j.job_id, j.pipeline, j.status, j.created_ts, s.updated_ts"
            " FROM jobs j JOIN streams s USING (job_id) ORDER BY s.last_seq DESC LIMIT %s",
            (limit,),
        )
    ]


def all_rows(conn: Connection, table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Every row of one of TABLE_PROJECTIONS' tables (names are checked: they are spliced)."""
    if not all(re.fullmatch(r"[a-z_][a-z0-9_]*", name) for name in (table, *columns)):
        raise ValueError(f"not a projection table's name: {table!r} {columns!r}")
    return [tuple(row) for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table}")]


def rebuild(store: PostgresEventStore) -> int:
    """Empty the projection tables and refold them from seq 0, under the events lock (no
    append can land between the read and the rewrite); returns events folded."""
    with store.write_transaction() as conn:
        rows, index, breakers, count = fold_tables(store.read_all(data_for=REBUILD_NEEDS))
        conn.execute("DELETE FROM jobs")
        conn.execute("DELETE FROM cache_index")
        conn.execute("DELETE FROM cache_refused")
        conn.execute("DELETE FROM breakers")
        with conn.cursor() as cur:
            with cur.copy("COPY jobs (job_id, pipeline, status, created_ts) FROM STDIN") as copy:
                for job_id, row in rows.items():
                    copy.write_row((job_id, *row))
            with cur.copy(
                "COPY cache_index (cache_key, response_sha256, origin_job, origin_step, seq,"
                " tokens_in, tokens_out) FROM STDIN"
            ) as copy:
                for entry in sorted(index.values()):
                    copy.write_row(entry)
            with cur.copy(
                "COPY cache_refused (cache_key, response_sha256, seq) FROM STDIN"
            ) as copy:
                for (key, sha), seq in sorted(index.refused.items()):
                    copy.write_row((key, sha, seq))
            with cur.copy(f"COPY breakers ({_BREAKER_COLUMNS}) FROM STDIN") as copy:
                for row in sorted(breakers.values()):
                    copy.write_row(row)
    return count
