"""The projection tables on PostgreSQL: projections.sql_tables' statements with psycopg's
`%s` mark, over the same tables and columns (schema_postgres.sql), and a rebuild that writes
the refolded rows with COPY. tests/store_contract.py checks table == fold on both stores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steplog.projections.leases import WORKER_COLUMNS
from steplog.projections.sql_tables import BREAKER_COLUMNS, FLIGHT_COLUMNS, ProjectionSQL
from steplog.projections.tables import REBUILD_NEEDS, fold_tables

if TYPE_CHECKING:
    from steplog.eventstore.postgres import PostgresEventStore


POSTGRES = ProjectionSQL("%s", "(data ->> 'endpoint')")
PROJECTORS = POSTGRES.projectors
breaker_row = POSTGRES.breaker_row
cache_lookup = POSTGRES.cache_lookup
key_flights = POSTGRES.key_flights
endpoint_owners = POSTGRES.endpoint_owners
recent_requests = POSTGRES.recent_requests
latest_jobs = POSTGRES.latest_jobs
batch_jobs = POSTGRES.batch_jobs
all_rows = POSTGRES.all_rows
job_rows_of = POSTGRES.job_rows_of
worker_row = POSTGRES.worker_row
worker_rows = POSTGRES.worker_rows
open_jobs = POSTGRES.open_jobs


def rebuild(store: PostgresEventStore) -> int:
    """Empty the projection tables and refold them from seq 0, under the events lock (no
    append can land between the read and the rewrite); returns events folded."""
    with store.write_transaction() as conn:
        rows, index, breakers, in_flight, count, workers = fold_tables(
            store.read_all(data_for=REBUILD_NEEDS)
        )
        conn.execute("DELETE FROM jobs")
        conn.execute("DELETE FROM cache_index")
        conn.execute("DELETE FROM cache_refused")
        conn.execute("DELETE FROM breakers")
        conn.execute("DELETE FROM workers")
        conn.execute("DELETE FROM calls_in_flight")
        with conn.cursor() as cur:
            with cur.copy(
                "COPY jobs (job_id, pipeline, status, created_ts, batch) FROM STDIN"
            ) as copy:
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
            with cur.copy(f"COPY breakers ({BREAKER_COLUMNS}) FROM STDIN") as copy:
                for row in sorted(breakers.values()):
                    copy.write_row(row)
            with cur.copy(f"COPY workers ({', '.join(WORKER_COLUMNS)}) FROM STDIN") as copy:
                for worker in sorted(workers.values()):
                    copy.write_row(worker)
            with cur.copy(f"COPY calls_in_flight ({FLIGHT_COLUMNS}) FROM STDIN") as copy:
                for flight in sorted(in_flight.values()):
                    copy.write_row(flight)
    return count
