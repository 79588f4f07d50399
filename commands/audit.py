"""`steplog audit JOB`: one job's story from the audit views (schema.sql), as data."""

from __future__ import annotations

import sqlite3
from typing import Any

from steplog.errors import Rejected


def _rows(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def audit_document(conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
    summary = _rows(conn, "SELECT * FROM job_summary WHERE job_id = ?", (job_id,))
    if not summary:
        raise Rejected(f"unknown job {job_id}")
    one = (job_id,)
    runs = _rows(
        conn,
        "SELECT step, attempt, status, started, finished, duration_s, cache_hit, error_type,"
        " error, skip_reason, copied FROM step_runs WHERE job_id = ? ORDER BY seq",
        one,
    )
    calls = _rows(
        conn,
        "SELECT step, attempt, provider, model, started, duration_s, tokens_in, tokens_out, cost,"
        " success, status, error_class, error, copied FROM llm_calls"
        " WHERE job_id = ? ORDER BY seq",
        one,
    )
    hits = _rows(
        conn,
        "SELECT step, json_extract(data, '$.origin_job') AS origin_job,"
        " json_extract(data, '$.origin_step') AS origin_step,"
        " json_extract(data, '$.tokens_saved') AS tokens_saved"
        " FROM events WHERE job_id = ? AND type = 'cache.hit' ORDER BY version",
        one,
    )
    files = _rows(
        conn,
        "SELECT step, path, sha256, wrote, reason, size, ts, copied FROM file_writes"
        " WHERE job_id = ? ORDER BY seq",
        one,
    )
    lifecycle = _rows(
        conn,
        "SELECT version, ts, type, json_extract(data, '$.error') AS error FROM events"
        " WHERE job_id = ? AND step IS NULL AND type LIKE 'job.%' ORDER BY version",
        one,
    )
    retries: dict[str, int] = {}
    for call in calls:
        if call["attempt"] > 1:
            retries[call["step"]] = retries.get(call["step"], 0) + 1
    failures = [
        {
            "what": "step",
            "step": r["step"],
            "attempt": r["attempt"],
            "kind": r["error_type"],
            "error": r["error"],
        }
        for r in runs
        if r["status"] == "failed"
    ] + [
        {
            "what": "call",
            "step": c["step"],
            "attempt": c["attempt"],
            "kind": c["error_class"],
            "error": c["error"],
        }
        for c in calls
        if c["success"] == 0
    ]
    return {
        "summary": summary[0],
        "lifecycle": lifecycle,
        "step_runs": runs,
        "llm_calls": calls,
        "retries": retries,
        "cache": {
            "hits": summary[0]["cache_hits"],
            "misses": summary[0]["cache_misses"],
            "tokens_saved": summary[0]["tokens_saved"],
            "reused": hits,
        },
        "files": files,
        "failures": failures,
    }
