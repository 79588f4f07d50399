"""`steplog audit JOB`: one job's story from the audit views (schema.sql), as data and as text."""

from __future__ import annotations

import sqlite3
from typing import Any

from rich.console import Console
from rich.table import Table

from commands.jobs import Rejected


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
        {"what": "step", "step": r["step"], "attempt": r["attempt"], "kind": r["error_type"],
         "error": r["error"]}
        for r in runs if r["status"] == "failed"
    ] + [
        {"what": "call", "step": c["step"], "attempt": c["attempt"], "kind": c["error_class"],
         "error": c["error"]}
        for c in calls if c["success"] == 0
    ]  # fmt: skip
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


def _time(ts: str | None) -> str:
    return ts[11:23] if ts else ""


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_audit(out: Console, doc: dict[str, Any]) -> None:
    s = doc["summary"]
    cost = "" if s["cost"] is None else f", cost {s['cost']:.6g}"
    out.print(
        f"[bold]{s['job_id']}[/] ({s['pipeline']}): {s['status']}; started {s['started'] or '-'},"
        f" finished {s['finished'] or '-'}, {_num(s['duration_s'])} s"
    )
    out.print(
        f"steps {s['steps']}: {s['steps_succeeded']} succeeded, {s['steps_failed']} failed; "
        f"calls {s['calls']} ({s['failed_calls']} failed); tokens in {s['tokens_in']}, "
        f"out {s['tokens_out']}{cost}"
    )
    cache = doc["cache"]
    out.print(
        f"cache: {cache['hits']} hits, {cache['misses']} misses, "
        f"{cache['tokens_saved']} tokens saved"
    )
    for ev in doc["lifecycle"]:
        error = f": {ev['error']}" if ev["error"] else ""
        out.print(f"  {_time(ev['ts'])} {ev['type']}{error}")

    timeline = Table(title="step runs", title_justify="left")
    for col in ("step", "attempt", "status", "started", "seconds", "cache"):
        timeline.add_column(col)
    for r in doc["step_runs"]:
        cache_col = {None: "", 0: "miss", 1: "hit"}.get(r["cache_hit"], str(r["cache_hit"]))
        status = r["status"] + (" (copied)" if r["copied"] else "")
        timeline.add_row(r["step"], _num(r["attempt"]), status, _time(r["started"]),
                         _num(r["duration_s"]), cache_col)  # fmt: skip
    out.print(timeline)

    calls = Table(title="LLM calls", title_justify="left")
    for col in ("step", "attempt", "provider", "model", "seconds", "in", "out", "cost", "result"):
        calls.add_column(col)
    for c in doc["llm_calls"]:
        failed = f"failed: {c['error_class']}" if c["error_class"] else "failed"
        result = {1: "ok", 0: failed, None: "no response"}[c["success"]]
        result += " (copied)" if c["copied"] else ""
        calls.add_row(c["step"], _num(c["attempt"]), c["provider"], c["model"],
                      _num(c["duration_s"]), _num(c["tokens_in"]), _num(c["tokens_out"]),
                      _num(c["cost"]), result)  # fmt: skip
    out.print(calls)
    if doc["retries"]:
        out.print(
            "retries: " + ", ".join(f"{step} {n}" for step, n in sorted(doc["retries"].items()))
        )
    for hit in doc["cache"]["reused"]:
        out.print(
            f"cache hit: {hit['step']} reused {hit['origin_job']}/{hit['origin_step']}"
            f" ({hit['tokens_saved']} tokens saved)"
        )

    files = Table(title="files written", title_justify="left")
    for col in ("step", "path", "sha256", "wrote", "reason", "bytes"):
        files.add_column(col)
    for f in doc["files"]:
        files.add_row(f["step"], f["path"], f["sha256"][:16], "yes" if f["wrote"] else "no",
                      f["reason"], _num(f["size"]))  # fmt: skip
    out.print(files if doc["files"] else "no files written")

    if doc["failures"]:
        out.print("[bold]failures[/]")
        for f in doc["failures"]:
            where = f"{f['what']} {f['step']} attempt {f['attempt']}"
            kind = f" ({f['kind']})" if f["kind"] else ""
            out.print(f"  {where}{kind}: {f['error'] or 'no error recorded'}")
    else:
        out.print("no failures")
