"""The previous run of a step: its most recent cache.hit/cache.miss, any job, same pipeline name.

One indexed query (schema.sql: events_cache_runs, a partial index on step and the event's
pipeline name, over cache events only), so a cache miss pays one b-tree descent for it.
"""

from __future__ import annotations

import sqlite3

import orjson

from steplog.executor.explain import PreviousRun

# The WHERE terms repeat the partial index's expression and condition so SQLite can use it.
_PREVIOUS_RUN_SQL = (
    "SELECT seq, job_id, data FROM events"
    " WHERE type IN ('cache.hit', 'cache.miss') AND step = ?"
    " AND json_extract(data, '$.pipeline') = ?"
    " ORDER BY seq DESC LIMIT 1"
)


def previous_run(conn: sqlite3.Connection, pipeline: str, step: str) -> PreviousRun | None:
    row = conn.execute(_PREVIOUS_RUN_SQL, (step, pipeline)).fetchone()
    if row is None:
        return None
    seq, job_id, data_json = row
    data = orjson.loads(data_json)
    return PreviousRun(
        seq=seq,
        job_id=job_id,
        cache_key=data["cache_key"],
        parts=dict(data.get("parts") or {}),
        detail=data.get("detail"),
    )
