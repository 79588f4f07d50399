"""`steplog audit JOB`: one job's story from the audit views (schema.sql), as data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from steplog.errors import Rejected

if TYPE_CHECKING:
    from steplog.eventstore.record import EventStore

RUN_COLUMNS = (
    "step, attempt, status, started, finished, duration_s, cache_hit, error_type, error,"
    " skip_reason, copied"
).split(", ")
CALL_COLUMNS = (
    "step, attempt, provider, model, started, duration_s, tokens_in, tokens_out, cost, success,"
    " status, error_class, error, copied"
).split(", ")
FILE_COLUMNS = "step, path, sha256, wrote, reason, size, ts, copied".split(", ")


def audit_document(store: EventStore, job_id: str) -> dict[str, Any]:
    summary = store.view_rows("job_summary", (), job_id)
    if not summary:
        raise Rejected(f"unknown job {job_id}")
    runs = store.view_rows("step_runs", RUN_COLUMNS, job_id)
    calls = store.view_rows("llm_calls", CALL_COLUMNS, job_id)
    files = store.view_rows("file_writes", FILE_COLUMNS, job_id)
    hits: list[dict[str, Any]] = []
    lifecycle: list[dict[str, Any]] = []
    for ev in store.read_job(job_id):
        if ev.type == "cache.hit":
            d = orjson.loads(ev.data_json)
            hits.append(
                {
                    "step": ev.step,
                    "origin_job": d.get("origin_job"),
                    "origin_step": d.get("origin_step"),
                    "tokens_saved": d.get("tokens_saved"),
                }
            )
        elif ev.step is None and ev.type.startswith("job."):
            error = orjson.loads(ev.data_json).get("error")
            lifecycle.append({"version": ev.version, "ts": ev.ts, "type": ev.type, "error": error})
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
