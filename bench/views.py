"""How fast the audit views answer on a ~100k-event log, next to plain SELECTs on `events` timed
in the same run; and what an index on events (type, job_id, version) would change (steplog
ships without it: the views do not need it, and it makes every append slower).

    python bench/views.py                    100,000-event log (built once by biglog, cached)
    python bench/views.py --events 1000000   a bigger log

Each query runs `--repeat` times on a warm cache; the best time is printed. The last line is what
the index costs the append path. Nothing asserts a time; bench/README.md explains the figures.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import biglog  # noqa: E402

from steplog.eventstore.events import LLMRequested, LLMResponded, NewEvent  # noqa: E402
from steplog.projections.store import open_store  # noqa: E402

INDEX = "CREATE INDEX events_by_type ON events (type, job_id, version)"


def append_cost(tmp: Path, batches: int, add_index: bool) -> float:
    """µs per event appending request/response pairs (one transaction per pair), as a step does."""
    store = open_store(tmp / f"append-{add_index}.db")
    if add_index:
        store.conn.execute(INDEX)
    req = LLMRequested(
        provider="p",
        kind="offline",
        model="m",
        prompt_tokens=5,
        attempt=1,
        cache_key="k" * 64,
        prompt_sha256="0" * 64,
    )
    res = LLMResponded(
        provider="p",
        model="m",
        duration_s=0.1,
        tokens_in=5,
        tokens_out=9,
        success=True,
        attempt=1,
        cache_key="k" * 64,
    )
    t0 = time.perf_counter()
    for i in range(batches):
        store.append(f"job-{i % 50}", [NewEvent.of(req, "s"), NewEvent.of(res, "s")])
    elapsed = time.perf_counter() - t0
    store.close()
    return elapsed / (2 * batches) * 1e6


def best_of(conn: sqlite3.Connection, sql: str, params: tuple, repeat: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        count = len(conn.execute(sql, params).fetchall())
        best = min(best, time.perf_counter() - t0)
    return best, count


def queries(job: str) -> list[tuple[str, str, tuple]]:
    one = (job,)
    return [
        ("baseline: SELECT * FROM events (all)", "SELECT * FROM events", ()),
        (
            "baseline: SELECT * FROM events WHERE job_id=?",
            "SELECT * FROM events WHERE job_id = ?",
            one,
        ),
        (
            "baseline: json_extract over llm.response rows",
            "SELECT json_extract(data, '$.tokens_in') FROM events WHERE type = 'llm.response'",
            (),
        ),
        ("llm_calls (all)", "SELECT * FROM llm_calls", ()),
        ("llm_calls WHERE job_id=?", "SELECT * FROM llm_calls WHERE job_id = ?", one),
        ("step_runs (all)", "SELECT * FROM step_runs", ()),
        ("step_runs WHERE job_id=?", "SELECT * FROM step_runs WHERE job_id = ?", one),
        ("file_writes (all)", "SELECT * FROM file_writes", ()),
        ("file_writes WHERE job_id=?", "SELECT * FROM file_writes WHERE job_id = ?", one),
        ("cache_stats", "SELECT * FROM cache_stats", ()),
        ("job_summary (all)", "SELECT * FROM job_summary", ()),
        ("job_summary WHERE job_id=?", "SELECT * FROM job_summary WHERE job_id = ?", one),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--appends", type=int, default=5000, help="transactions in the append cost")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    log = biglog.ensure(args.cache_dir, args.events)
    with tempfile.TemporaryDirectory(prefix="steplog-views-") as tmp:
        with_index = Path(tmp) / "indexed.db"
        shutil.copy(log.db, with_index)
        indexed = sqlite3.connect(with_index)
        indexed.execute(INDEX)
        plain = sqlite3.connect(f"file:{log.db}?mode=ro", uri=True)
        n_events = plain.execute("SELECT count(*) FROM events").fetchone()[0]
        n_jobs = plain.execute("SELECT count(*) FROM jobs").fetchone()[0]
        job = log.big_job
        job_events = plain.execute(
            "SELECT count(*) FROM events WHERE job_id = ?", (job,)
        ).fetchone()[0]
        print(
            f"log: {n_events:,} events, {n_jobs} jobs; one-job queries use {job} "
            f"({job_events:,} events); best of {args.repeat}"
        )
        print(f"{'query':48} {'rows':>8} {'shipped ms':>11} {'+type index':>12}")
        for name, sql, params in queries(job):
            t_no, count = best_of(plain, sql, params, args.repeat)
            t_idx, _ = best_of(indexed, sql, params, args.repeat)
            print(f"{name:48} {count:>8,} {t_no * 1000:>11.1f} {t_idx * 1000:>12.1f}")
        indexed.close()
        plain.close()
        shipped = append_cost(Path(tmp), args.appends, add_index=False)
        plus_index = append_cost(Path(tmp), args.appends, add_index=True)
        print(
            f"{'append (µs per event, 2 per transaction)':48} {2 * args.appends:>8,} "
            f"{shipped:>11.1f} {plus_index:>12.1f}"
        )


if __name__ == "__main__":
    main()
