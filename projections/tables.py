"""Projection tables kept in the append transaction (`jobs`, `cache_index`), and their rebuild.

Each projector is the SQL form of a fold in this package; tests prove table == fold for any
event sequence, so the tables are a cache of the log, never a second truth.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import orjson

from steplog.eventstore.record import StoredEvent
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections import breaker, cache
from steplog.projections.breaker import BREAKER_EVENT_TYPES, BreakerRow, Breakers
from steplog.projections.cache import CACHE_EVENT_TYPES, CacheEntry, CacheIndex
from steplog.projections.manifest import JOB_STATUS_AFTER


def project_jobs(conn: sqlite3.Connection, events: Sequence[StoredEvent]) -> None:
    changed: dict[str, str] = {}
    for ev in events:
        if ev.type == "job.created":
            conn.execute(
                "INSERT INTO jobs (job_id, pipeline, status, created_ts) VALUES (?, ?, 'created', ?)",
                (ev.job_id, orjson.loads(ev.data_json)["pipeline"], ev.ts),
            )
        status = JOB_STATUS_AFTER.get(ev.type)
        if status is not None:
            changed[ev.job_id] = status
    for job_id, status in changed.items():
        conn.execute("UPDATE jobs SET status = ? WHERE job_id = ?", (status, job_id))


def project_cache(conn: sqlite3.Connection, events: Sequence[StoredEvent]) -> None:
    """`cache_index` and `cache_refused` as projections.cache.apply folds them."""
    for ev in events:
        if ev.type not in CACHE_EVENT_TYPES:
            continue
        d = orjson.loads(ev.data_json)
        key, sha = d["cache_key"], d.get("response_sha256")
        if ev.type == "cache.invalidated":
            if sha is None:
                conn.execute("DELETE FROM cache_index WHERE cache_key = ?", (key,))
                continue
            conn.execute(
                "INSERT OR IGNORE INTO cache_refused (cache_key, response_sha256, seq)"
                " VALUES (?, ?, ?)",
                (key, sha, ev.seq),
            )
            conn.execute(
                "DELETE FROM cache_index WHERE cache_key = ? AND response_sha256 = ?", (key, sha)
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
        conn.execute(
            "INSERT OR IGNORE INTO cache_index (cache_key, response_sha256, origin_job,"
            " origin_step, seq, tokens_in, tokens_out)"
            " SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
            " (SELECT 1 FROM cache_refused WHERE cache_key = ? AND response_sha256 = ?)",
            (*row, key, sha),
        )


_BREAKER_COLUMNS = "endpoint, status, failures, until, provider, seq"


def project_breakers(conn: sqlite3.Connection, events: Sequence[StoredEvent]) -> None:
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
            row = breaker_row(conn, endpoint)
            if row is not None:
                touched[endpoint] = row
        breaker.apply(touched, ev)
    if touched:
        conn.executemany(
            f"INSERT OR REPLACE INTO breakers ({_BREAKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            list(touched.values()),
        )


PROJECTORS = (project_jobs, project_cache, project_breakers)


def breaker_row(conn: sqlite3.Connection, endpoint: str) -> BreakerRow | None:
    row = conn.execute(
        f"SELECT {_BREAKER_COLUMNS} FROM breakers WHERE endpoint = ?", (endpoint,)
    ).fetchone()
    return BreakerRow(*row) if row else None


def read_breakers_table(conn: sqlite3.Connection) -> Breakers:
    rows = conn.execute(f"SELECT {_BREAKER_COLUMNS} FROM breakers").fetchall()
    return {r[0]: BreakerRow(*r) for r in rows}


def cache_lookup(conn: sqlite3.Connection, cache_key: str) -> CacheEntry | None:
    row = conn.execute(
        "SELECT cache_key, response_sha256, origin_job, origin_step, seq, tokens_in, tokens_out"
        " FROM cache_index WHERE cache_key = ?",
        (cache_key,),
    ).fetchone()
    return CacheEntry(*row) if row else None


def read_cache_table(conn: sqlite3.Connection) -> CacheIndex:
    """`cache_index` and `cache_refused` read back into the fold's shape."""
    rows = conn.execute(
        "SELECT cache_key, response_sha256, origin_job, origin_step, seq, tokens_in, tokens_out"
        " FROM cache_index"
    ).fetchall()
    index = CacheIndex({r[0]: CacheEntry(*r) for r in rows})
    refused = conn.execute("SELECT cache_key, response_sha256, seq FROM cache_refused")
    index.refused = {(key, sha): seq for key, sha, seq in refused}
    return index


def latest_jobs(conn: sqlite3.Connection, limit: int) -> list[tuple[Any, ...]]:
    """(job_id, pipeline, status, created_ts, updated_ts) of the latest jobs, newest first."""
    return conn.execute(
        "SELECT j.job_id, j.pipeline, j.status, j.created_ts, s.updated_ts"
        " FROM jobs j JOIN streams s USING (job_id) ORDER BY s.last_seq DESC LIMIT ?",
        (limit,),
    ).fetchall()


def all_rows(conn: sqlite3.Connection, table: str, columns: Sequence[str]) -> list[tuple]:
    """Every row of one of TABLE_PROJECTIONS' tables (the name is checked against them)."""
    if not all(re.fullmatch(r"[a-z_][a-z0-9_]*", name) for name in (table, *columns)):
        raise ValueError(f"not a projection table's name: {table!r} {columns!r}")
    return conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()


def read_jobs_table(conn: sqlite3.Connection) -> dict[str, tuple[str | None, str, str]]:
    """job_id -> (pipeline, status, created_ts)."""
    rows = conn.execute("SELECT job_id, pipeline, status, created_ts FROM jobs").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


JobRow = list  # [pipeline, status, created_ts]


def apply_job_row(rows: dict[str, JobRow], ev: StoredEvent) -> None:
    """The `jobs` table as a fold: pipeline and creation from job.created, then each status."""
    if ev.type == "job.created":
        rows[ev.job_id] = [orjson.loads(ev.data_json)["pipeline"], "created", ev.ts]
    status = JOB_STATUS_AFTER.get(ev.type)
    if status is not None and ev.job_id in rows:
        rows[ev.job_id][1] = status


class Folded(NamedTuple):
    """Every projection table folded from the log, as rebuild writes them back."""

    jobs: dict[str, JobRow]
    cache: CacheIndex
    breakers: Breakers
    events: int


def fold_tables(events: Iterable[StoredEvent]) -> Folded:
    """The projection tables' fold over `events` (read with REBUILD_NEEDS' data)."""
    rows: dict[str, JobRow] = {}
    index = CacheIndex()
    breakers: Breakers = {}
    count = 0
    for ev in events:
        apply_job_row(rows, ev)
        cache.apply(index, ev)
        breaker.apply(breakers, ev)
        count += 1
    return Folded(rows, index, breakers, count)


REBUILD_NEEDS = ("job.created", *CACHE_EVENT_TYPES, *BREAKER_EVENT_TYPES)


def rebuild(store: SQLiteEventStore) -> int:
    """Drop the projection tables' rows and refold them from seq 0; returns events folded.

    Memory grows with the number of jobs and cache keys, not with the number of events.
    """
    # Fold inside the write transaction: an append by another process between the read and the
    # rewrite would otherwise be wiped from the tables. Writers wait (busy_timeout) meanwhile.
    with store.write_transaction() as conn:
        rows, index, breakers, count = fold_tables(store.read_all(data_for=REBUILD_NEEDS))
        conn.execute("DELETE FROM jobs")
        conn.execute("DELETE FROM cache_index")
        conn.executemany(
            "INSERT INTO jobs (job_id, pipeline, status, created_ts) VALUES (?, ?, ?, ?)",
            [(job_id, *row) for job_id, row in rows.items()],
        )
        conn.executemany(
            "INSERT INTO cache_index (cache_key, response_sha256, origin_job, origin_step, seq,"
            " tokens_in, tokens_out) VALUES (?, ?, ?, ?, ?, ?, ?)",
            sorted(index.values()),  # key order: the b-tree fills page by page
        )
        conn.execute("DELETE FROM cache_refused")
        conn.executemany(
            "INSERT INTO cache_refused (cache_key, response_sha256, seq) VALUES (?, ?, ?)",
            sorted((key, sha, seq) for (key, sha), seq in index.refused.items()),
        )
        conn.execute("DELETE FROM breakers")
        conn.executemany(
            f"INSERT INTO breakers ({_BREAKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            sorted(breakers.values()),
        )
    return count


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


TABLE_PROJECTIONS: tuple[TableProjection, ...] = (
    TableProjection(
        "jobs",
        ("job_id", "pipeline", "status", "created_ts"),
        start=dict,
        apply=apply_job_row,
        rows=lambda state: ((job_id, *row) for job_id, row in state.items()),
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
)
