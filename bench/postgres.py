"""steplog on PostgreSQL beside SQLite, each next to a raw baseline measured in the same run.

    python bench/postgres.py                        full sizes (about 2 minutes)
    python bench/postgres.py --quick                small sizes, one repetition of 2. (about 25 s)
    python bench/postgres.py --repeat 5             repetitions of 2. and 3. (default 3; quick 1, 2)
    python bench/postgres.py --only ceiling         one section: append, ceiling or steps
    python bench/postgres.py --synchronous-commit on    wait for the WAL flush at each commit

It starts its own throw-away PostgreSQL cluster (tests/postgres_cluster.py: initdb into a
temporary directory, the server on 127.0.0.1 only, a random password that is never printed) and
stops it at the end, on an error or on Ctrl-C. It never uses a server that is already running.

1. append: 5-event batches through PostgresEventStore.append and SQLiteEventStore.append, each
   beside raw psycopg / raw sqlite3 doing the same commits; then where the PostgreSQL store's
   time goes, the store's steps added to the raw baseline one at a time.
2. the append ceiling: 1, 4 and 16 writing processes, each appending to its own jobs for a fixed
   time; afterwards the PostgreSQL log's seqs are checked to be gapless 1..N.
3. per-step overhead through `steplog run` (chain and fan-out, misses and hits, offline
   provider) with --db postgresql://… beside a SQLite file; skipped, in one line, when this
   steplog refuses a postgresql:// --db.

Nothing here asserts a time: it prints figures. See bench/README.md ("PostgreSQL").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import psycopg  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402

# bench/run.py's builders: the executor's 5-event commit, the job's opening, the raw sqlite3
# baseline and the pipelines of its per-step figures. Imported, not copied.
from run import (  # noqa: E402
    fresh,
    machine,
    opening,
    pipeline_toml,
    raw_commit,
    raw_connection,
    raw_rows,
    sha,
    step_batch,
)

from steplog.eventstore.config import redact_url, url_password  # noqa: E402
from steplog.eventstore.events import NewEvent  # noqa: E402
from steplog.eventstore.postgres import _INSERT_EVENTS, PostgresEventStore  # noqa: E402
from steplog.eventstore.record import StoreError  # noqa: E402
from steplog.eventstore.sqlite import SQLiteEventStore  # noqa: E402
from steplog.projections.store import open_store  # noqa: E402

# The statements the store sends (eventstore/postgres.py), for the raw baseline to send the same.
INSERT_EVENTS = _INSERT_EVENTS
UPSERT_STREAM = (
    "INSERT INTO streams (job_id, version, last_hash, last_seq, created_ts, updated_ts)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (job_id) DO UPDATE SET version = excluded.version,"
    " last_hash = excluded.last_hash, last_seq = excluded.last_seq,"
    " updated_ts = excluded.updated_ts"
)
READ_HEAD = "SELECT version, last_hash, created_ts FROM streams WHERE job_id = %s"
READ_MAX_SEQ = "SELECT coalesce(max(seq), 0) FROM events"
LOCK = "LOCK TABLE events IN EXCLUSIVE MODE"
BUSY_TIMEOUT_MS = 10_000  # the store's default (STEPLOG_BUSY_TIMEOUT_MS)
# Two alternatives to the store's INSERT, for 1b: the same rows, other parameter shapes.
INSERT_VALUES = (
    "INSERT INTO events (seq, job_id, version, ts, level, type, step, data, prev_hash, hash)"
    " VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s::json, %s, %s)"] * 5)
)
# No lock: seqs from a sequence, so writers do not queue, and gaps and out-of-order visibility
# are possible (what the store's lock rules out). For the ceiling only.
INSERT_NEXTVAL = (
    "INSERT INTO events (seq, job_id, version, ts, level, type, step, data, prev_hash, hash)"
    " SELECT nextval('bench_seq'), %s, version, ts, level, type, step, data::json, prev_hash, hash"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::text[]) AS batch (version, ts, level, type, step, data, prev_hash, hash)"
)

# The server for the figures: the test cluster's settings, with durability put back (fsync,
# full_page_writes) and PostgreSQL's default shared_buffers and max_connections.
# synchronous_commit stays off unless asked (--synchronous-commit on): a commit does not wait
# for its WAL flush, as SQLite's synchronous=NORMAL in WAL mode does not fsync at commit; both
# survive a crash of the process without corruption and may lose the last commits to a power cut.
BENCH_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
    "max_connections": "100",
}


# -- small helpers ------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def rate(value: float) -> str:
    return f"{value:,.0f}"


def ratio(ours: float, base: float) -> str:
    return f"{ours / base:.1f}x" if base else ""


def quartiles(values: list[float], scale: float = 1e6) -> str:
    """The middle half of the blocks (25th–75th percentile), for section 1."""
    if len(values) < 4:
        return spread(values, scale)
    q = statistics.quantiles(values, n=4)
    return f"middle half {q[0] * scale:,.0f}–{q[2] * scale:,.0f}"


def spread(values: list[float], scale: float = 1e6) -> str:
    if len(values) < 2:
        return ""
    return f"runs {min(values) * scale:,.0f}–{max(values) * scale:,.0f}"


def conninfo(url: str) -> str:
    """The connection string the store builds from a URL (its connect settings)."""
    return psycopg.conninfo.make_conninfo(
        url,
        connect_timeout=str(10),
        application_name="steplog",
        client_encoding="UTF8",
    )


def raw_pg(url: str) -> psycopg.Connection[Any]:
    """A plain connection with the store's settings; the lock timeout set once per session."""
    conn = psycopg.connect(conninfo(url), autocommit=True)
    conn.execute(f"SET lock_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def pg_params(rows: list[tuple]) -> tuple[tuple, tuple]:
    """The INSERT's and the streams upsert's parameters for rows as raw_rows builds them."""
    columns = list(zip(*rows))
    job = rows[0][1]
    insert = (job, list(columns[0]), *(list(c) for c in columns[2:]))
    last = rows[-1]
    upsert = (job, last[2], last[9], last[0], rows[0][3], last[3])
    return insert, upsert


class Clock:
    """Wall and client-CPU time of a block of commits."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


# -- 1. append ------------------------------------------------------------------------------------


class Variant:
    """One way of making the commits of section 1: opened once, then run in blocks."""

    label = ""

    def open(self) -> None:
        pass

    def block(self, start: int, count: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class StoreVariant(Variant):
    """steplog's append: one 5-event batch per call, to one job, expected_version given."""

    def __init__(self, make: Callable[[], Any], batches: list[list[NewEvent]]) -> None:
        self.make, self.batches = make, batches

    def open(self) -> None:
        self.store = self.make()
        self.store.append("j", opening(["s"]), expected_version=0)
        self.version = 2

    def block(self, start: int, count: int) -> None:
        store, version = self.store, self.version
        for b in self.batches[start : start + count]:
            version = store.append("j", b, expected_version=version)[-1].version
        self.version = version

    def close(self) -> None:
        self.store.close()


class RawPostgres(Variant):
    """Raw psycopg: BEGIN; LOCK; INSERT; upsert; COMMIT on a connection with the store's
    settings, plus what `steps` adds of the store's own: l = SET LOCAL lock_timeout, r = the
    head and max(seq) reads, p = a pooled connection checked at checkout; or another INSERT:
    b = the store's with binary parameters, v = one 5-row VALUES list. Rows and parameters are
    built before any clock starts (constant hashes, as bench/run.py's raw rows)."""

    def __init__(self, url: str, steps: str, batches: list[list[NewEvent]]) -> None:
        self.url, self.steps = url, steps
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            seq0 = conn.execute(READ_MAX_SEQ).fetchone()[0]
        rows = [raw_rows(b, "j", 2 + 5 * i, seq0 + 2 + 5 * i) for i, b in enumerate(batches)]
        self.work = [pg_params(r) for r in rows]
        self.values = [[x for row in r for x in row] for r in rows] if "v" in steps else []
        self.insert = INSERT_EVENTS.replace("%s", "%b") if "b" in steps else INSERT_EVENTS

    def open(self) -> None:
        self.pool: ConnectionPool[Any] | None = None
        self.conn: psycopg.Connection[Any] | None = None
        if "p" in self.steps:  # as the store's pool: min 1, max 4, checked at each checkout
            self.pool = ConnectionPool(
                conninfo(self.url),
                min_size=1,
                max_size=4,
                kwargs={"autocommit": True},
                check=ConnectionPool.check_connection,
                open=False,
            )
            self.pool.open(wait=True)
        else:
            self.conn = raw_pg(self.url)

    def commit(self, c: psycopg.Connection[Any], i: int) -> None:
        ins, up = self.work[i]
        steps = self.steps
        with c.transaction():
            if "l" in steps:
                c.execute(f"SET LOCAL lock_timeout = {BUSY_TIMEOUT_MS}")
            c.execute(LOCK)
            if "r" in steps:
                c.execute(READ_HEAD, (ins[0],)).fetchone()
                c.execute(READ_MAX_SEQ).fetchone()
            if "v" in steps:
                c.execute(INSERT_VALUES, self.values[i])
            else:
                c.execute(self.insert, ins)
            c.execute(UPSERT_STREAM, up)

    def block(self, start: int, count: int) -> None:
        if self.pool is not None:
            for i in range(start, start + count):
                with self.pool.connection() as c:
                    self.commit(c, i)
        else:
            for i in range(start, start + count):
                self.commit(self.conn, i)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.conn is not None:
            self.conn.close()


class RawSQLite(Variant):
    """bench/run.py's raw baseline: BEGIN IMMEDIATE; executemany; COMMIT, same pragmas."""

    def __init__(self, path: Path, batches: list[list[NewEvent]]) -> None:
        self.path = path
        self.rows = [raw_rows(b, "j", 2 + 5 * i, 2 + 5 * i) for i, b in enumerate(batches)]

    def open(self) -> None:
        self.conn = raw_connection(fresh(self.path))

    def block(self, start: int, count: int) -> None:
        for r in self.rows[start : start + count]:
            raw_commit(self.conn, r)

    def close(self) -> None:
        self.conn.close()


def bench_append(cluster: Any, tmp: Path, batches: int, block: int) -> None:
    blocks = batches // block
    print(
        f"\n1. append: {batches:,} commits of one 5-event batch (a cache-missing step's) per"
        f" variant, one transaction each, run round-robin in {blocks} blocks of {block};"
        " the median block"
    )
    prepared = [step_batch(f"s{i}", sha(f"k{i}")) for i in range(batches)]
    made: list[str] = []

    def database() -> str:
        """A database of the variant's own, its schema applied by the store (the same DDL
        for the raw baselines)."""
        name = cluster.create_database("append")
        made.append(name)
        url = cluster.url(name)
        PostgresEventStore(url).close()
        return url

    store_url, tables_url = database(), database()
    variants: dict[str, Variant] = {
        "pg": StoreVariant(lambda: PostgresEventStore(store_url), prepared),
        "pg_tables": StoreVariant(lambda: open_store(tables_url), prepared),
        "pg_raw": RawPostgres(database(), "", prepared),
        "pg_l": RawPostgres(database(), "l", prepared),
        "pg_lr": RawPostgres(database(), "lr", prepared),
        "pg_lrp": RawPostgres(database(), "lrp", prepared),
        "pg_bin": RawPostgres(database(), "b", prepared),
        "pg_values": RawPostgres(database(), "v", prepared),
        "sqlite": StoreVariant(lambda: SQLiteEventStore(fresh(tmp / "append.db")), prepared),
        "sqlite_tables": StoreVariant(lambda: open_store(fresh(tmp / "tables.db")), prepared),
        "sqlite_raw": RawSQLite(tmp / "append_raw.db", prepared),
    }
    walls: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    try:
        for v in variants.values():
            v.open()
        for n in range(blocks):  # round-robin, the order rotated: drift falls on all alike
            turn = order[n % len(order) :] + order[: n % len(order)]
            for name in turn:
                with Clock() as clock:
                    variants[name].block(n * block, block)
                walls[name].append(clock.wall / block)
                cpus[name].append(clock.cpu / block)
    finally:
        for v in variants.values():
            v.close()
        for name in made:
            cluster.drop_database(name)
    w = {k: med(v) for k, v in walls.items()}
    c = {k: med(v) for k, v in cpus.items()}

    print(f"  {'':<66} {'µs/commit':>9} {'client CPU':>10} {'events/s':>9}  x raw")

    def line(label: str, key: str, base: str | None, note: str = "") -> None:
        x = ratio(w[key], w[base]) if base else ""
        extra = "; ".join(p for p in (note, quartiles(walls[key])) if p)
        print(
            f"  {label:<66} {us(w[key]):>9} {us(c[key]):>10} {rate(5 / w[key]):>9}  {x:<6} {extra}",
            flush=True,
        )

    line("PostgreSQL: PostgresEventStore.append (the bare store)", "pg", "pg_raw")
    line("  the same with the projection tables (open_store: steplog run's)", "pg_tables", "pg_raw")
    line("  raw psycopg: BEGIN; LOCK; the store's INSERT; upsert; COMMIT", "pg_raw", None)
    line("SQLite: SQLiteEventStore.append (the bare store)", "sqlite", "sqlite_raw")
    line("  the same with the projection tables (open_store)", "sqlite_tables", "sqlite_raw")
    line("  raw sqlite3: BEGIN IMMEDIATE; executemany; COMMIT (bench/run.py's)", "sqlite_raw", None)
    print(
        f"  PostgreSQL ÷ SQLite, per commit: bare store {w['pg'] / w['sqlite']:.1f}x, with tables"
        f" {w['pg_tables'] / w['sqlite_tables']:.1f}x, raw {w['pg_raw'] / w['sqlite_raw']:.1f}x"
    )

    print(
        "\n1b. where PostgresEventStore.append's time goes: the raw line above, plus the store's"
        " steps one at a time (x raw: against the raw line)"
    )
    line("raw (as above): BEGIN, LOCK, INSERT, upsert, COMMIT: 5 round trips", "pg_raw", "pg_raw")
    line("  + SET LOCAL lock_timeout in each transaction (a round trip)", "pg_l", "pg_raw")
    line("  + the head and max(seq) reads (two round trips)", "pg_lr", "pg_raw")
    line(
        "  + a pooled connection, checked at checkout (a round trip)",
        "pg_lrp",
        "pg_raw",
        "= the store's SQL, 9 round trips",
    )
    line(
        "  + data_json, 5 chain hashes, StoredEvents = the store",
        "pg",
        "pg_raw",
        f"client CPU +{us(c['pg'] - c['pg_lrp'])} µs over the line above",
    )
    line("raw, the store's INSERT with binary parameters (%b)", "pg_bin", "pg_raw")
    line("raw, the INSERT as one 5-row VALUES list (50 parameters)", "pg_values", "pg_raw")


# -- 2. the append ceiling ------------------------------------------------------------------------

JOB_BATCHES = 200  # a job every 200 batches (1,002 events), as a 200-step pipeline's run


def worker(index: int, inbox: Any, outbox: Any) -> None:
    """One writing process: prepares a round (opens its store or connection), reports ready,
    waits for go, appends for the round's duration, reports what it appended."""
    batches = [step_batch(f"s{i}", sha(f"w{index}k{i}")) for i in range(JOB_BATCHES)]
    head = opening([f"s{i}" for i in range(JOB_BATCHES)])
    outbox.put((index, "up", None))
    while True:
        task = inbox.get()
        if task is None:
            return
        try:
            outbox.put((index, "done", ceiling_round(index, task, batches, head, inbox, outbox)))
        except Exception:  # noqa: BLE001 - the parent prints it (passwords blanked out)
            outbox.put((index, "error", traceback.format_exc()))


def ceiling_round(
    index: int,
    task: dict[str, Any],
    batches: list[list[NewEvent]],
    head: list[NewEvent],
    inbox: Any,
    outbox: Any,
) -> dict[str, Any]:
    variant, target, duration = task["variant"], task["target"], task["duration"]
    prefix = f"r{task['round']}-w{index}"
    # Raw rows (constant hashes) and their parameters, built before the clock starts.
    template = [raw_rows(b, "x", 5 * i, 0) for i, b in enumerate(batches)]
    head_rows = raw_rows(head, "x", 0, 0)
    store: Any = None
    conn: Any = None
    if variant == "pg":
        store = PostgresEventStore(target)
    elif variant == "sqlite":
        store = SQLiteEventStore(target)
    elif variant in ("pg_raw", "pg_nolock"):
        conn = raw_pg(target)
    else:
        conn = raw_connection(Path(target))

    def pg_commit(job: str, rows: list[tuple], version: int) -> None:
        with conn.transaction():
            if variant == "pg_raw":
                conn.execute(LOCK)
                seq0 = conn.execute(READ_MAX_SEQ).fetchone()[0]
                rows = [(seq0 + k + 1, job, version + k + 1, *r[3:]) for k, r in enumerate(rows)]
                ins, up = pg_params(rows)
                conn.execute(INSERT_EVENTS, ins)
            else:
                rows = [(0, job, version + k + 1, *r[3:]) for k, r in enumerate(rows)]
                ins, up = pg_params(rows)
                conn.execute(INSERT_NEXTVAL, (ins[0], *ins[2:]))
                up = (*up[:3], 0, *up[4:])
            conn.execute(UPSERT_STREAM, up)

    def sqlite_commit(job: str, rows: list[tuple], version: int) -> None:
        raw_commit(conn, [(None, job, version + k + 1, *r[3:]) for k, r in enumerate(rows)])

    commit = pg_commit if variant.startswith("pg_") else sqlite_commit
    outbox.put((index, "ready", None))
    if inbox.get() != "go":
        raise RuntimeError("expected go")
    commits = events = busy = jobs = 0
    start = time.monotonic()
    deadline = start + duration
    while time.monotonic() < deadline:
        job = f"{prefix}-j{jobs}"
        jobs += 1
        version = 0
        for batch, rows in [(head, head_rows), *zip(batches, template)]:
            try:
                if store is not None:
                    version = store.append(job, batch, expected_version=version)[-1].version
                else:
                    commit(job, rows, version)
                    version += len(rows)
            except (StoreError, sqlite3.OperationalError, psycopg.errors.LockNotAvailable):
                busy += 1  # the lock was not had within the busy timeout: counted, not retried
                break
            commits += 1
            events += len(batch)
            if time.monotonic() >= deadline:
                break
    end = time.monotonic()
    if store is not None:
        store.close()
    else:
        conn.close()
    return {"commits": commits, "events": events, "busy": busy, "start": start, "end": end}


class Writers:
    """Up to `count` writing processes (multiprocessing spawn), started once for every round."""

    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(count)]
        self.procs = [
            ctx.Process(target=worker, args=(i, self.inboxes[i], self.outbox), daemon=True)
            for i in range(count)
        ]
        # Started with SIGINT ignored, which a new interpreter keeps: a Ctrl-C during their
        # imports does not print their tracebacks; the parent stops them (stop()).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in self.procs:
                proc.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        self._collect(count, "up")  # every one imported and ready before any round starts

    def _collect(self, n: int, kind: str) -> list[Any]:
        got: list[Any] = []
        while len(got) < n:
            try:
                index, what, payload = self.outbox.get(timeout=120)
            except queue.Empty:
                raise RuntimeError(f"writers: no {kind} within 120 s") from None
            if what == "error":
                raise RuntimeError(f"writer {index} failed:\n{payload}")
            if what != kind:
                raise RuntimeError(f"writer {index}: {what} where {kind} was expected")
            got.append(payload)
        return got

    def round(self, n: int, task: dict[str, Any]) -> list[dict[str, Any]]:
        for inbox in self.inboxes[:n]:
            inbox.put(task)
        self._collect(n, "ready")
        for inbox in self.inboxes[:n]:
            inbox.put("go")
        return self._collect(n, "done")

    def stop(self) -> None:
        """Ask each writer to end; terminate one that does not (by its own handle)."""
        for inbox in self.inboxes:
            try:
                inbox.put(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


CEILING_VARIANTS = {
    "pg": "steplog PostgreSQL (PostgresEventStore.append)",
    "pg_raw": "raw psycopg: LOCK; max(seq); INSERT; upsert",
    "pg_nolock": "raw psycopg, no LOCK: seq = nextval (no global order)",
    "sqlite": "steplog SQLite (SQLiteEventStore.append)",
    "sqlite_raw": "raw sqlite3: BEGIN IMMEDIATE; executemany",
}
CEILING_BASE = {"pg": "pg_raw", "pg_raw": "pg_nolock", "sqlite": "sqlite_raw"}


def bench_ceiling(cluster: Any, tmp: Path, levels: list[int], duration: float, repeat: int) -> None:
    print(
        f"\n2. append ceiling: W writing processes (spawned once), each appending 5-event batches"
        f" to its own jobs for {duration:g} s; totals over the window;"
        + (f" median of {repeat}" if repeat > 1 else " one run")
    )
    writers = Writers(max(levels))
    try:
        targets: dict[str, str] = {}
        for variant in CEILING_VARIANTS:  # one database or file per variant, reused by rounds
            if variant.startswith("pg"):
                name = cluster.create_database(f"ceiling_{variant}")
                url = cluster.url(name)
                PostgresEventStore(url).close()
                if variant == "pg_nolock":
                    cluster.psql(name, "CREATE SEQUENCE bench_seq")
                targets[variant] = url
            else:
                path = fresh(tmp / f"ceiling_{variant}.db")
                if variant == "sqlite":
                    SQLiteEventStore(path).close()
                else:
                    raw_connection(path).close()
                targets[variant] = str(path)
        totals: dict[tuple[str, int], list[tuple[float, float]]] = {}
        busy: dict[tuple[str, int], int] = {}
        appended_pg = 0
        checks: list[str] = []
        rounds = 0
        for _rep in range(repeat):  # interleaved: each rep runs every level of every variant
            for n in levels:
                for variant in CEILING_VARIANTS:
                    rounds += 1
                    task = {
                        "variant": variant,
                        "target": targets[variant],
                        "duration": duration,
                        "round": rounds,
                    }
                    results = writers.round(n, task)
                    window = max(r["end"] for r in results) - min(r["start"] for r in results)
                    commits = sum(r["commits"] for r in results)
                    events = sum(r["events"] for r in results)
                    totals.setdefault((variant, n), []).append((commits / window, events / window))
                    busy[(variant, n)] = busy.get((variant, n), 0) + sum(r["busy"] for r in results)
                    if variant == "pg":
                        appended_pg += events
                        checks.append(gapless(targets["pg"], appended_pg))
        print(
            f"  {'W':>2}  {'':<56} {'commits/s':>10} {'events/s':>10}  {'x base':<7} {'vs W=1':<7}"
        )
        for n in levels:
            for variant, label in CEILING_VARIANTS.items():
                runs = totals[(variant, n)]
                c = med([r[0] for r in runs])
                e = med([r[1] for r in runs])
                one = med([r[0] for r in totals[(variant, levels[0])]])
                base = CEILING_BASE.get(variant)
                x = ""
                if base:
                    x = ratio(med([r[0] for r in totals[(base, n)]]), c)
                note = f"{busy[(variant, n)]} busy timeouts" if busy[(variant, n)] else ""
                spread_text = spread([r[0] for r in runs], 1.0)
                extra = "; ".join(p for p in (note, spread_text) if p)
                print(
                    f"  {n:>2}  {label:<56} {rate(c):>10} {rate(e):>10}  {x:<7} "
                    f"{c / one:>5.2f}x  {extra}",
                    flush=True,
                )
        print(
            "  x base: steplog against its raw line; the locked raw line against the unlocked one"
            " (what one global seq order costs)"
        )
        failed = [c for c in checks if not c.startswith("held")]
        if failed:
            print(f"  PostgreSQL seq order: DID NOT HOLD: {failed[0]}")
        else:
            print(
                f"  PostgreSQL seq order: gapless 1..N held after each of {len(checks)} rounds"
                f" (last: {checks[-1][6:-1]})"
            )
        for variant, target in targets.items():
            if variant.startswith("pg"):
                cluster.drop_database(target.rsplit("/", 1)[1])
    finally:
        writers.stop()


def gapless(url: str, appended: int) -> str:
    """'held (…)' when the log's seqs are exactly 1..N, N the events every writer counted, and
    every job's versions are 1..its length; else what differs."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        count, low, high = conn.execute(
            "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM events"
        ).fetchone()
        holes = conn.execute(
            "SELECT count(*) FROM (SELECT seq - lag(seq) OVER (ORDER BY seq) AS step"
            " FROM events) AS s WHERE step <> 1"
        ).fetchone()[0]
        bad_jobs = conn.execute(
            "SELECT count(*) FROM (SELECT job_id, count(*) AS n, min(version) AS lo,"
            " max(version) AS hi FROM events GROUP BY job_id) AS j WHERE lo <> 1 OR hi <> n"
        ).fetchone()[0]
    if count == appended and low == 1 and high == count and holes == 0 and bad_jobs == 0:
        return f"held (N = {count:,} events, seq 1..{high:,})"
    return (
        f"{count:,} rows, seq {low:,}..{high:,}, {holes} gaps, {bad_jobs} jobs with gaps;"
        f" the writers counted {appended:,}"
    )


# -- 3. per-step overhead through `steplog run` ---------------------------------------------------


def steps_child(spec_json: str) -> None:
    """In a fresh process: `steplog.commands.cli.main`, what the console script runs, called
    for each run of the spec, PostgreSQL and SQLite taking turns, after an untimed warm-up run
    on each. Prints the timings as JSON. The password comes from PGPASSWORD (libpq reads it);
    the spec's URLs carry none."""
    import contextlib
    import io
    import json

    from steplog.commands.cli import main as steplog_main

    spec = json.loads(spec_json)

    def run(db: str, pipeline: str) -> tuple[float, int, str]:
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = steplog_main(["--db", db, "run", "-q", pipeline])
        return time.perf_counter() - t0, code, (err.getvalue() or out.getvalue()).strip()

    for backend, db in spec["warmup"].items():
        _, code, said = run(db, spec["one"])
        if code != 0 and backend == "postgres":  # this steplog does not open the URL
            print(json.dumps({"refused": said.splitlines()[0] if said else f"exit {code}"}))
            return
        if code != 0:
            raise RuntimeError(f"steplog run exited {code}: {said[-2000:]}")
    timings: dict[str, float] = {}
    for shape, where in spec["shapes"].items():
        for kind in ("miss", "hit"):  # the second runs find every answer in the cache
            for backend in spec["order"]:
                small, big = where[backend]
                for size, db, path in (("one", small, spec["one"]), ("many", big, where["path"])):
                    seconds, code, said = run(db, path)
                    if code != 0:
                        raise RuntimeError(f"steplog run exited {code}: {said[-2000:]}")
                    timings[f"{backend}/{shape}/{kind}/{size}"] = seconds
    print(json.dumps({"timings": timings}))


def bench_steps(cluster: Any, tmp: Path, steps: int, repeat: int) -> None:
    import json

    password = url_password(cluster.url("postgres"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPLOG_", "PG"))}
    if password:
        env["PGPASSWORD"] = password  # for libpq in the child; in no command line
    one = tmp / "one.toml"
    one.write_text(pipeline_toml(1, "chain"))
    paths = {}
    for shape in ("chain", "fanout"):
        paths[shape] = tmp / f"{shape}.toml"
        paths[shape].write_text(pipeline_toml(steps, shape))
    made: list[str] = []
    backends = ("postgres", "sqlite")

    def location(backend: str, tag: str) -> str:
        """An empty database of its own for each run's pair: a new SQLite file or a new
        PostgreSQL database (its URL without the password)."""
        if backend == "sqlite":
            return str(fresh(tmp / f"steps-{tag}.db"))
        name = cluster.create_database(f"steps_{tag}")
        made.append(name)
        return cluster.url(name, password=False)

    def child(rep: int) -> dict[str, Any]:
        spec = {
            "warmup": {b: location(b, f"warm{rep}") for b in backends},
            "one": str(one),
            "order": list(backends if rep % 2 == 0 else reversed(backends)),
            "shapes": {
                shape: {
                    "path": str(paths[shape]),
                    **{
                        b: [location(b, f"{shape}1_{rep}"), location(b, f"{shape}{rep}")]
                        for b in backends
                    },
                }
                for shape in paths
            },
        }
        done = subprocess.run(
            [sys.executable, __file__, "--child-steps", json.dumps(spec)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the steps child failed ({done.returncode}):\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    try:
        first = child(0)
        if "refused" in first:
            said = cluster.safe(redact_url(first["refused"]))
            print(
                "\n3. per-step overhead through `steplog run` on PostgreSQL: skipped,"
                f" `steplog --db postgresql://… run` did not run here ({said})"
            )
            return
        print(
            f"\n3. per-step overhead through `steplog run -q` (steplog.commands.cli.main in a"
            f" fresh process, PostgreSQL and SQLite taking turns, after a warm-up run): a"
            f" {steps:,}-step pipeline's run less a 1-step one's, ÷ {steps - 1:,}; offline"
            f" provider; median of {repeat}"
        )
        timings = [first["timings"]]
        for rep in range(1, repeat):
            for name in made:
                cluster.drop_database(name)
            made.clear()
            timings.append(child(rep)["timings"])
    finally:
        for name in made:
            cluster.drop_database(name)
    runs = {
        b: [{k.split("/", 1)[1]: v for k, v in t.items() if k.startswith(b + "/")} for t in timings]
        for b in backends
    }

    def per_step(backend: str, shape: str, kind: str) -> list[float]:
        return [
            (t[f"{shape}/{kind}/many"] - t[f"{shape}/{kind}/one"]) / (steps - 1)
            for t in runs[backend]
        ]

    print(f"  {'':<46} {'PostgreSQL':>10} {'SQLite':>8}  PostgreSQL ÷ SQLite")
    for shape in ("chain", "fanout"):
        for kind in ("miss", "hit"):
            pg, lite = per_step("postgres", shape, kind), per_step("sqlite", shape, kind)
            label = f"{'chain' if shape == 'chain' else 'fan-out'} of {steps:,}, " + (
                "first run (misses), µs/step" if kind == "miss" else "second run (hits), µs/step"
            )
            print(
                f"  {label:<46} {us(med(pg)):>10} {us(med(lite)):>8}  {ratio(med(pg), med(lite)):<6}"
                f" PostgreSQL {spread(pg)}; SQLite {spread(lite)}",
                flush=True,
            )
    for kind in ("miss", "hit"):
        pg = [t[f"chain/{kind}/one"] for t in runs["postgres"]]
        lite = [t[f"chain/{kind}/one"] for t in runs["sqlite"]]
        label = (
            "a 1-step run, empty database: create, run; ms"
            if kind == "miss"
            else "a 1-step run again (a hit): open, run; ms"
        )
        print(
            f"  {label:<46} {med(pg) * 1e3:>10,.1f} {med(lite) * 1e3:>8,.1f}  "
            f"{ratio(med(pg), med(lite))}"
        )


# -- driver ---------------------------------------------------------------------------------------


def start_cluster(synchronous_commit: str) -> Any:
    from tests.postgres_cluster import PostgresCluster

    return PostgresCluster.start(
        settings={**BENCH_SETTINGS, "synchronous_commit": synchronous_commit}
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about 20 s")
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions per figure (default 3; quick 2)"
    )
    parser.add_argument(
        "--synchronous-commit",
        choices=("off", "on"),
        default="off",
        help="the server's synchronous_commit (default off, as SQLite's synchronous=NORMAL)",
    )
    parser.add_argument(
        "--only", choices=("append", "ceiling", "steps"), help="run one section only"
    )
    parser.add_argument("--child-steps", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_steps:
        steps_child(args.child_steps)
        return 0
    quick = args.quick
    repeat = args.repeat or (2 if quick else 3)
    sizes = {
        "batches": 400 if quick else 2_000,
        "block": 25 if quick else 50,
        "levels": [1, 4, 16],
        "duration": 0.3 if quick else 1.0,
        "ceiling_repeat": args.repeat or (1 if quick else 3),
        "steps": 100 if quick else 500,
    }
    started = time.perf_counter()

    def stop_on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_term)
    cluster = None
    code = 0
    with tempfile.TemporaryDirectory(prefix="steplog-bench-pg-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            t0 = time.perf_counter()
            cluster = start_cluster(args.synchronous_commit)
            boot = time.perf_counter() - t0
            version = cluster.admin("SELECT version()")[0][0].split(" on ")[0]
            now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            print(
                f"steplog PostgreSQL bench · {now} · {machine()}\n"
                f"python {platform.python_version()} · sqlite {sqlite3.sqlite_version}"
                f" (synchronous={os.environ.get('STEPLOG_SYNCHRONOUS', 'NORMAL')}) ·"
                f" {version} · psycopg {psycopg.__version__} · {'quick' if quick else 'full'}"
                f" sizes\nserver: its own cluster, {redact_url(cluster.url('DB'))}, started in"
                f" {boot:.1f} s; fsync=on, synchronous_commit={args.synchronous_commit},"
                f" shared_buffers=128MB, max_connections=100; it shares the machine's"
                f" {os.cpu_count()} cores with the bench",
                flush=True,
            )
            sections = {
                "append": lambda: bench_append(cluster, tmp, sizes["batches"], sizes["block"]),
                "ceiling": lambda: bench_ceiling(
                    cluster, tmp, sizes["levels"], sizes["duration"], sizes["ceiling_repeat"]
                ),
                "steps": lambda: bench_steps(cluster, tmp, sizes["steps"], repeat),
            }
            took = []
            for name, section in sections.items():
                if args.only in (None, name):
                    t0 = time.perf_counter()
                    section()
                    took.append(f"{name} {time.perf_counter() - t0:.0f} s")
            print(
                f"\ndone in {time.perf_counter() - started:.0f} s ({', '.join(took)});"
                " the cluster is stopped and its directory removed"
            )
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the cluster", file=sys.stderr)
            code = 130
        except Exception:  # noqa: BLE001 - printed with the password blanked out
            text = traceback.format_exc()
            print(cluster.safe(text) if cluster else text, file=sys.stderr)
            code = 1
        finally:
            if cluster is not None:
                cluster.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
