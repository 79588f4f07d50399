"""How fast is "what state is this endpoint's circuit breaker in?" on a 1,000,000-event log?

Three ways to answer it, on the same file:
  table   the `breakers` projection table kept in the append transaction (what steplog does)
  query   an expression index over the relevant events: the last provider.* transition for the
          endpoint, then the counted failures after it (what one could do without a table)
  fold    projections.breaker.project over every event from seq 0 (the definition)
and what the table costs on the write side: appending one llm.response batch with and without
the breakers projector. Prints figures, asserts nothing.

    .venv/bin/python bench/breaker.py [--events 1000000] [--keep PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from steplog.eventstore.events import (  # noqa: E402
    CircuitClosed,
    CircuitOpened,
    LLMRequested,
    LLMResponded,
    NewEvent,
    StepStarted,
    StepSucceeded,
)
from steplog.eventstore.sqlite import SQLiteEventStore  # noqa: E402
from steplog.projections import breaker as fold  # noqa: E402
from steplog.projections.store import open_store  # noqa: E402
from steplog.projections.tables import PROJECTORS, breaker_row, project_breakers  # noqa: E402

ENDPOINTS = [f"openai http://127.0.0.1:{8000 + i}/v1" for i in range(8)]
SHA = "0" * 64
INDEX = (
    "CREATE INDEX IF NOT EXISTS bench_breaker_events ON events"
    " (json_extract(data, '$.endpoint'), type, seq)"
)
LAST_TRANSITION = (
    "SELECT type, seq, data FROM events WHERE json_extract(data, '$.endpoint') = ?"
    " AND type IN ('provider.circuit_opened', 'provider.circuit_half_open',"
    " 'provider.circuit_closed') ORDER BY seq DESC LIMIT 1"
)
FAILURES_AFTER = (
    "SELECT json_extract(data, '$.success'), json_extract(data, '$.retryable') FROM events"
    " WHERE json_extract(data, '$.endpoint') = ? AND type = 'llm.response' AND seq > ?"
    " ORDER BY seq DESC"
)


def step_batch(n: int, endpoint: str | None) -> list[NewEvent]:
    """One remote step: 5 events, a failed attempt on every 7th."""
    ok = n % 7 != 0
    data = [
        StepStarted(attempt=1, fingerprint="f"),
        LLMRequested(
            provider="remote",
            kind="openai",
            model="m",
            prompt_tokens=10,
            attempt=1,
            cache_key=f"k{n}",
            prompt_sha256=SHA,
            endpoint=endpoint,
        ),
        LLMResponded(
            provider="remote",
            model="m",
            duration_s=1.0,
            tokens_in=10,
            tokens_out=20,
            success=ok,
            attempt=1,
            cache_key=f"k{n}",
            endpoint=endpoint,
            retryable=None if ok else True,
            cost=0.001,
        ),
    ]
    if n % 5000 < len(ENDPOINTS):  # now and then every endpoint opens and closes
        data.append(
            CircuitOpened(
                provider="remote", failures=5, retry_at="2026-01-01T00:00:00Z", endpoint=endpoint
            )
        )
        data.append(CircuitClosed(provider="remote", endpoint=endpoint))
    data.append(
        StepSucceeded(
            output_sha256=SHA,
            output="text",
            cache_hit=False,
            cache_key="k",
            duration_s=1.0,
            fingerprint="f",
        )
    )
    return [NewEvent.of(d, step=f"s{n % 100}") for d in data]


def build(path: Path, events: int) -> None:
    store = open_store(path)
    t0, written, n = time.perf_counter(), 0, 0
    versions: dict[str, int] = {}
    while written < events:
        with store.write_transaction() as conn:
            for _ in range(2000):
                job = f"job{n // 200}"
                batch = step_batch(n, ENDPOINTS[n % len(ENDPOINTS)])
                prepared = [(e.ts, e.level, e.type, e.step, e.data_json()) for e in batch]
                stored = store.append_txn(conn, job, prepared, versions.get(job, 0), ())
                versions[job] = stored[-1].version
                written += len(stored)
                n += 1
    store.close()
    print(f"built {written:,} events in {time.perf_counter() - t0:.1f}s")


def timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="build (once) and reuse this database file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "breaker.db"
        if not path.exists():
            build(path, args.events)
        store = open_store(path)
        conn, endpoint = store.conn, ENDPOINTS[3]
        total = store.last_seq()
        print(f"log: {total:,} events, {len(ENDPOINTS)} endpoints")

        table = timed(lambda: breaker_row(conn, endpoint), 2000)
        print(f"table  breaker_row (primary key)         {table * 1e6:10.1f} µs")

        t = time.perf_counter()
        conn.execute(INDEX)
        print(f"query  building its expression index     {time.perf_counter() - t:10.2f} s (once)")

        def query() -> None:
            last = conn.execute(LAST_TRANSITION, (endpoint,)).fetchone()
            after = last[1] if last else 0
            for success, _retryable in conn.execute(FAILURES_AFTER, (endpoint, after)):
                if success:
                    break  # consecutive failures end at the last success

        print(f"query  last transition + failures after  {timed(query, 50) * 1e6:10.1f} µs")
        for sql, params in ((LAST_TRANSITION, (endpoint,)), (FAILURES_AFTER, (endpoint, 0))):
            plan = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            print("       plan:", "; ".join(row[-1] for row in plan))
        writer = SQLiteEventStore(path, projectors=())
        for kind, ep in (("remote", endpoint), ("offline", None)):
            batch = step_batch(1, ep)  # type: ignore[arg-type]
            cost = timed(lambda: writer.append("bench-writer", batch), 300)  # noqa: B023
            print(f"query  append a {kind:<7} step batch, index kept up {cost * 1e6:8.1f} µs")
        writer.close()
        conn.execute("DROP INDEX bench_breaker_events")

        slim = ("llm.response", *fold.BREAKER_EVENT_TYPES[1:])
        folded = timed(lambda: fold.project(store.read_all(data_for=slim)), 1)
        print(f"fold   from seq 0                        {folded * 1e3:10.1f} ms")

        # the write side: one step's batch appended with and without the breakers projector
        for label, projectors in (
            ("with", PROJECTORS),
            ("without", tuple(p for p in PROJECTORS if p is not project_breakers)),
        ):
            writer = SQLiteEventStore(path, projectors=projectors)
            for kind, ep in (("remote", endpoint), ("offline", None)):
                batch = step_batch(1, ep)  # type: ignore[arg-type]
                cost = timed(lambda: writer.append("bench-writer", batch), 300)  # noqa: B023
                print(
                    f"append a {kind:<7} step batch {label:<7} the breakers projector"
                    f" {cost * 1e6:8.1f} µs"
                )
            writer.close()
        store.close()


if __name__ == "__main__":
    main()
