"""Open the event store with steplog's projection tables attached, and ask those tables.

The tables' SQL is one module per dialect, with the same functions: projections.tables
(SQLite) and projections.postgres_tables (PostgreSQL). The functions here take a store and pick
its dialect's module, so that the commands and the executor never hold a connection.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable

from steplog.eventstore.config import is_postgres_url

if TYPE_CHECKING:
    from steplog.eventstore.record import EventStore
    from steplog.projections.breaker import BreakerRow
    from steplog.projections.cache import CacheEntry
    from steplog.projections.flights import FlightRow
    from steplog.projections.leases import WorkerRow
    from steplog.projections.tables import TableProjection


def open_store(location: str | os.PathLike[str], **options: Any) -> EventStore:
    """The store at `location` (a SQLite path or a postgresql:// URL) keeping the projection
    tables in its append transactions."""
    from steplog.eventstore import open_event_store

    tables = _tables_for("postgresql" if is_postgres_url(location) else "sqlite")
    return open_event_store(location, projectors=tables.PROJECTORS, **options)


def open_empty_store() -> EventStore:
    """A store with no history and no file: what a database that does not exist yet answers
    (no jobs, no cache, no breakers), asked without creating it."""
    from steplog.eventstore.sqlite import MEMORY, SQLiteEventStore
    from steplog.projections.tables import PROJECTORS

    return SQLiteEventStore(MEMORY, projectors=PROJECTORS)


def _tables_for(dialect: str) -> ModuleType:
    if dialect == "postgresql":
        from steplog.projections import postgres_tables

        return postgres_tables
    from steplog.projections import tables

    return tables


def tables_of(store: EventStore) -> ModuleType:
    """The module holding the projection tables' SQL in the store's dialect."""
    return _tables_for(store.dialect)


def cache_entry(store: EventStore, cache_key: str) -> CacheEntry | None:
    """The cache_index row of a key: the answer a step with that key reuses."""
    tables = tables_of(store)
    return store.read(lambda conn: tables.cache_lookup(conn, cache_key))


def breaker_of(store: EventStore, endpoint: str, conn: Any = None) -> BreakerRow | None:
    """The breakers row of an endpoint; inside the caller's write transaction when `conn`."""
    tables = tables_of(store)
    if conn is not None:
        return tables.breaker_row(conn, endpoint)
    return store.read(lambda own: tables.breaker_row(own, endpoint))


def job_rows(store: EventStore, limit: int, batch: str | None = None) -> list[tuple[Any, ...]]:
    """(job_id, pipeline, status, created_ts, updated_ts, batch) of the latest jobs (of
    `batch` only, when given), newest first."""
    tables = tables_of(store)
    return store.read(lambda conn: tables.latest_jobs(conn, limit, batch))


def batch_size(store: EventStore, batch: str) -> int:
    """How many jobs were created in `batch` (0: no such batch yet)."""
    tables = tables_of(store)
    return store.read(lambda conn: tables.batch_jobs(conn, batch))


def table_rows(store: EventStore, projection: TableProjection) -> Iterable[tuple[Any, ...]]:
    """Every row of a projection table, its columns in the projection's order (`verify`)."""
    with store.reading() as conn:
        return tables_of(store).all_rows(conn, projection.table, projection.columns)


def job_table_rows(
    store: EventStore, projection: TableProjection, job_id: str
) -> Iterable[tuple[Any, ...]]:
    """One job's rows of a per-job projection table (`verify JOB`)."""
    assert projection.job_column is not None
    with store.reading() as conn:
        return tables_of(store).job_rows_of(
            conn, projection.table, projection.columns, projection.job_column, job_id
        )


def rebuild(store: EventStore) -> int:
    """Drop the projection tables' rows and refold them from seq 0; returns events folded."""
    return tables_of(store).rebuild(store)


def worker_rows(store: EventStore) -> list[WorkerRow]:
    """Every worker the log knows (projections.leases), the most recently started first."""
    tables = tables_of(store)
    return store.read(tables.worker_rows)


def worker_row(store: EventStore, worker_id: str) -> WorkerRow | None:
    tables = tables_of(store)
    return store.read(lambda conn: tables.worker_row(conn, worker_id))


def open_jobs(store: EventStore, limit: int) -> list[tuple[str, str]]:
    """(job_id, status) of queued jobs (oldest first), then of running ones: what a worker
    may claim, read from the `jobs` table by its status index."""
    tables = tables_of(store)
    return store.read(lambda conn: tables.open_jobs(conn, limit))


def key_flights(store: EventStore, conn: Any, cache_key: str) -> list[FlightRow]:
    """The calls_in_flight rows (any endpoint) of a cache key, on `conn`."""
    return tables_of(store).key_flights(conn, cache_key)


def endpoint_owners(
    store: EventStore, conn: Any, endpoint: str
) -> list[tuple[str, str, str | None, str]]:
    """(job_id, step, owner, ts) of the calls_in_flight rows of an endpoint, on `conn`."""
    return tables_of(store).endpoint_owners(conn, endpoint)


def recent_requests(
    store: EventStore, conn: Any, endpoint: str, since: str, limit: int
) -> list[str]:
    """ts of the endpoint's llm.requests at or after `since`, newest first, at most `limit`."""
    return tables_of(store).recent_requests(conn, endpoint, since, limit)


def cache_entry_on(store: EventStore, conn: Any, cache_key: str) -> CacheEntry | None:
    """cache_entry on the caller's connection (inside its write transaction)."""
    return tables_of(store).cache_lookup(conn, cache_key)
