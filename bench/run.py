"""steplog benchmarks: every figure next to a raw-sqlite3 baseline measured in the same run.

    python bench/run.py                 full sizes (1,000,000-event log; a few minutes)
    python bench/run.py --quick         small sizes (100,000-event log, 200-step pipelines)
    python bench/run.py --json out.json also write the figures as JSON
    python bench/run.py --profile DIR   also write cProfile stats of the hot paths to DIR
    python bench/run.py --only append   one section (append, steps, or log: rebuild, the job's
                                        verbs and resume in the big log)

Nothing here asserts a time: it prints figures. See bench/README.md for what each one means.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import biglog  # noqa: E402
import pydantic  # noqa: E402

from steplog.commands.jobs import (  # noqa: E402
    ResumeCommand,
    RunCommand,
    execute,
    fold_job,
    prepare_resume,
    prepare_run,
)
from steplog.commands.replay import replay  # noqa: E402
from steplog.eventstore.events import (  # noqa: E402
    CacheMiss,
    JobCreated,
    JobStarted,
    LLMRequested,
    LLMResponded,
    NewEvent,
    Owner,
    StepStarted,
    StepSucceeded,
)
from steplog.eventstore.record import StoredEvent  # noqa: E402
from steplog.eventstore.sqlite import (  # noqa: E402
    HEAD_SQL,
    MOVE_HEAD_SQL,
    SCHEMA_PATH,
    SQLiteEventStore,
    schema_statements,
)
from steplog.executor.step import StepRunner  # noqa: E402
from steplog.projections.store import open_store  # noqa: E402

OWNER = Owner(pid=1, host="bench", started="1")
PEERS = "measured by bench/peers.py in its own run (make bench-peers); see bench/README.md"


# -- figures ------------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    ours: float
    unit: str  # how `ours` and `raw` are expressed
    raw: float | None = None  # the raw-sqlite3 baseline, same unit
    higher_is_better: bool = False
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times the raw baseline's cost steplog pays (1.0 = as fast as raw)."""
        if not self.raw or not self.ours:
            return None
        return self.raw / self.ours if self.higher_is_better else self.ours / self.raw


FIGURES: list[Figure] = []


def fmt(value: float, unit: str) -> str:
    if unit in ("events/s", "rows/s"):
        return f"{value:,.0f} {unit}"
    digits = 1 if value < 100 else 0
    return f"{value:,.{digits}f} {unit}"


def report(figure: Figure) -> None:
    FIGURES.append(figure)
    raw = f"raw {fmt(figure.raw, figure.unit)}" if figure.raw is not None else ""
    ratio = f"({figure.ratio:.1f}x raw)" if figure.ratio is not None else ""
    extra = "; ".join(x for x in (figure.target, figure.note) if x)
    print(
        f"  {figure.name:<50} {fmt(figure.ours, figure.unit):>18}  {raw:<24} {ratio:<12} {extra}",
        flush=True,
    )


def median_of(runs: list[float]) -> float:
    return statistics.median(runs)


def join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def spread(runs: list[float], scale: float = 1.0, unit: str = "") -> str:
    if len(runs) < 2:
        return ""
    return f"runs {min(runs) * scale:,.0f}–{max(runs) * scale:,.0f}{unit}"


# -- the raw sqlite3 baseline -------------------------------------------------------------------


def ddl(table: str) -> str:
    """The table's CREATE statement from schema.sql: the baseline writes an identical table."""
    for statement in schema_statements(SCHEMA_PATH.read_text(encoding="utf-8")):
        if re.search(rf"CREATE TABLE IF NOT EXISTS {table}\s*\(", statement):
            return statement
    raise LookupError(table)


def raw_connection(path: Path, tables: tuple[str, ...] = ("events",)) -> sqlite3.Connection:
    """Plain sqlite3 with the store's pragmas (WAL, the same synchronous) and the same tables."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {os.environ.get('STEPLOG_SYNCHRONOUS', 'NORMAL')}")
    for table in tables:
        conn.execute(ddl(table))
    return conn


INSERT_EVENTS = (
    "INSERT INTO events (seq, job_id, version, ts, level, type, step, data, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_BLOBS = "INSERT OR IGNORE INTO blobs (sha256, size, content) VALUES (?, ?, ?)"


def raw_commit(conn: sqlite3.Connection, rows: list[tuple], blobs: list[tuple] = ()) -> None:
    conn.execute("BEGIN IMMEDIATE")
    if blobs:
        conn.executemany(INSERT_BLOBS, blobs)
    conn.executemany(INSERT_EVENTS, rows)
    conn.execute("COMMIT")


def raw_rows(events: list[NewEvent], job: str, version: int, seq: int) -> list[tuple]:
    """The rows the store would write, minus its work: hashes are constants here."""
    return [
        (
            seq + i,
            job,
            version + i,
            ev.ts,
            ev.level,
            ev.type,
            ev.step,
            ev.data_json(),
            "0" * 64,
            "1" * 64,
        )
        for i, ev in enumerate(events, start=1)
    ]


def copy_db(src: Path, dst: Path) -> None:
    """A private copy of the cached log, flushed to disk so no write-back runs during a figure."""
    shutil.copyfile(src, fresh(dst))
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


# -- 1. append throughput -----------------------------------------------------------------------


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def step_batch(step: str, key: str) -> list[NewEvent]:
    """The five events of one cache-missing step, as the executor builds them."""
    parts = {p: sha(p + key) for p in ("provider", "step", "input", "code")}
    return [
        NewEvent.of(StepStarted(attempt=1, fingerprint=sha(step)), step=step),
        NewEvent.of(CacheMiss(cache_key=key, parts=parts), step=step),
        NewEvent.of(
            LLMRequested(
                provider="local",
                kind="offline",
                model="offline-1",
                prompt_tokens=42,
                attempt=1,
                cache_key=key,
                prompt_sha256=sha(key + "p"),
            ),
            step=step,
        ),
        NewEvent.of(
            LLMResponded(
                provider="local",
                model="offline-1",
                duration_s=0.8123,
                tokens_in=42,
                tokens_out=300,
                success=True,
                attempt=1,
                cache_key=key,
                response_sha256=sha(key + "r"),
                finish_reason="stop",
            ),
            step=step,
        ),
        NewEvent.of(
            StepSucceeded(
                output_sha256=sha(key + "r"),
                output="text",
                cache_hit=False,
                cache_key=key,
                duration_s=0.8154,
                fingerprint=sha(step),
            ),
            step=step,
        ),
    ]


def opening(steps: list[str]) -> list[NewEvent]:
    created = JobCreated(
        pipeline="bench",
        pipeline_fingerprint=sha("p"),
        pipeline_sha256=sha("src"),
        inputs={"idea": "x"},
        steps={s: [] for s in steps},
        workspace="/tmp/ws",
    )
    return [NewEvent.of(created), NewEvent.of(JobStarted(owner=OWNER))]


def bench_append(tmp: Path, batches: int, repeat: int) -> None:
    print(
        f"\n1. append ({batches:,} batches of 5 events, one BEGIN IMMEDIATE … COMMIT each; "
        f"median of {repeat})"
    )
    prepared = [step_batch(f"s{i}", sha(f"k{i}")) for i in range(batches)]
    head = opening(["s"])
    rows = [raw_rows(b, "j", 2 + 5 * i, 2 + 5 * i) for i, b in enumerate(prepared)]
    singles = prepared[: min(2000, batches)]
    single_rows = [raw_rows(b[:1], "j", 2 + i, 2 + i) for i, b in enumerate(singles)]
    big = [ev for b in prepared[:400] for ev in b]  # 2,000 events
    big_rows = raw_rows(big, "big", 0, 0)

    def ours(projectors: bool) -> tuple[float, float, float]:
        path = fresh(tmp / "append.db")
        store = open_store(path) if projectors else SQLiteEventStore(path)
        store.append("j", head, expected_version=0)
        t0 = time.perf_counter()
        version = 2
        for b in prepared:
            version = store.append("j", b, expected_version=version)[-1].version
        batched = (time.perf_counter() - t0) / (batches * 5)
        t0 = time.perf_counter()
        store.append("big", big, expected_version=0)
        one_txn = (time.perf_counter() - t0) / len(big)
        store.close()
        store = open_store(fresh(path)) if projectors else SQLiteEventStore(fresh(path))
        store.append("j", head, expected_version=0)
        version = 2
        t0 = time.perf_counter()
        for b in singles:
            version = store.append("j", b[:1], expected_version=version)[-1].version
        single = (time.perf_counter() - t0) / len(singles)
        store.close()
        return batched, one_txn, single

    def raw() -> tuple[float, float, float]:
        conn = raw_connection(fresh(tmp / "append_raw.db"))
        t0 = time.perf_counter()
        for r in rows:
            raw_commit(conn, r)
        batched = (time.perf_counter() - t0) / (batches * 5)
        t0 = time.perf_counter()
        raw_commit(conn, [(None, *r[1:]) for r in big_rows])
        one_txn = (time.perf_counter() - t0) / len(big_rows)
        conn.close()
        conn = raw_connection(fresh(tmp / "append_raw.db"))
        t0 = time.perf_counter()
        for r in single_rows:
            raw_commit(conn, r)
        single = (time.perf_counter() - t0) / len(single_rows)
        conn.close()
        return batched, one_txn, single

    def floor(heads: bool) -> tuple[float, float, float]:
        """The raw baseline's rows and commits into the store's schema (its indexes and
        triggers), and with `heads` also the store's stream-head read and move per commit: what
        the schema alone costs, with no Python work of the store's. Only the batched figure."""
        path = fresh(tmp / "append_floor.db")
        SQLiteEventStore(path).close()  # schema.sql applied; then plain sqlite3 on the file
        conn = raw_connection(path, ())
        conn.execute(
            "INSERT INTO streams VALUES ('j', 2, ?, 2, '2026-01-01T00:00:00Z', '')", ("0" * 64,)
        )
        t0 = time.perf_counter()
        for r in rows:
            conn.execute("BEGIN IMMEDIATE")
            if heads:
                conn.execute(HEAD_SQL, ("j",)).fetchone()
            conn.executemany(INSERT_EVENTS, r)
            if heads:
                last = r[-1]
                conn.execute(MOVE_HEAD_SQL, (last[2], last[9], last[0], last[3], "j"))
            conn.execute("COMMIT")
        batched = (time.perf_counter() - t0) / (batches * 5)
        conn.close()
        return batched, 0.0, 0.0

    results = {"ours": [], "bare": [], "raw": [], "schema": [], "heads": []}
    for _ in range(repeat):  # interleaved, so drift on the machine hits all of them alike
        results["ours"].append(ours(True))
        results["bare"].append(ours(False))
        results["raw"].append(raw())
        results["schema"].append(floor(False))
        results["heads"].append(floor(True))
    med = {k: [median_of([r[i] for r in v]) for i in range(3)] for k, v in results.items()}
    o, b, r = med["ours"], med["bare"], med["raw"]
    report(
        Figure(
            "append, 5-event batches",
            o[0] * 1e6,
            "µs/event",
            r[0] * 1e6,
            note=f"{1 / o[0]:,.0f} events/s vs raw {1 / r[0]:,.0f}",
        )
    )
    report(Figure("  the same, store without projectors", b[0] * 1e6, "µs/event", r[0] * 1e6))
    report(
        Figure(
            "  floor: raw rows into the store's schema",
            med["schema"][0] * 1e6,
            "µs/event",
            r[0] * 1e6,
            note="its indexes and triggers, no store code",
        )
    )
    report(
        Figure(
            "  floor: the same + stream-head read, move",
            med["heads"][0] * 1e6,
            "µs/event",
            r[0] * 1e6,
            note="the store's SQL per commit, minus projectors",
        )
    )
    report(Figure("append, one 2,000-event batch", o[1] * 1e6, "µs/event", r[1] * 1e6))
    report(Figure("append, one event per commit (WAL)", o[2] * 1e6, "µs/commit", r[2] * 1e6))


# -- 2. per-step orchestration ------------------------------------------------------------------


def pipeline_toml(steps: int, shape: str) -> str:
    lines = ['name = "bench"', "", "[providers.local]", 'kind = "offline"', ""]
    for i in range(steps):
        lines.append(f"[steps.s{i}]")
        if i and shape == "chain":
            lines += [
                f'needs = ["s{i - 1}"]',
                f'prompt = "step {i} after: {{{{ steps.s{i - 1}.output }}}}"',
            ]
        elif i:
            lines += ['needs = ["s0"]', f'prompt = "step {i} from: {{{{ steps.s0.output }}}}"']
        else:
            lines.append('prompt = "start"')
        lines += ['provider = "local"', ""]
    return "\n".join(lines)


class Recorder:
    """Wraps a store's append to keep each commit (events as stored, blobs) — untimed runs only."""

    def __init__(self, store: SQLiteEventStore) -> None:
        self.commits: list[tuple[list[StoredEvent], list[bytes]]] = []
        self._append = store.append
        store.append = self  # type: ignore[method-assign]

    def __call__(self, job_id, events, *, expected_version=None, blobs=()):  # noqa: ANN001
        stored = self._append(job_id, events, expected_version=expected_version, blobs=blobs)
        self.commits.append((stored, list(blobs)))
        return stored


def raw_replay_commits(
    path: Path, commits: list[tuple[list[StoredEvent], list[bytes]]], pages: WalPages | None = None
) -> float:
    """The same rows and blobs, in the same transactions, through plain sqlite3: seconds.
    With `pages` (untimed runs only), the WAL pages those commits write are counted into it."""
    conn = raw_connection(fresh(path), ("events", "blobs"))
    prepared = [
        (list(stored), [(hashlib.sha256(b).hexdigest(), len(b), b) for b in blobs])
        for stored, blobs in commits
    ]
    if pages is not None:
        pages.start(conn, path)
    t0 = time.perf_counter()
    for rows, blobs in prepared:
        raw_commit(conn, rows, blobs)
    elapsed = time.perf_counter() - t0
    if pages is not None:
        pages.stop(conn)
    conn.close()
    return elapsed


class WalPages:
    """Which pages a run's commits write to the WAL, by table or index (untimed runs only).

    Checkpoints are turned off for the connection, so the WAL only grows while counting; each
    frame names the page it holds, and SQLite's dbstat table names the b-tree that page belongs
    to (page 1, rewritten whenever the file grows, counts as sqlite_schema). This is where a
    commit's cost goes: each page is a write of the page and one of its frame header."""

    FRAME_HEADER = 24

    def __init__(self) -> None:
        self.frames: Counter[str] = Counter()
        self.valid = True

    def start(self, conn: sqlite3.Connection, db: Path) -> None:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._wal = Path(f"{db}-wal")
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        data = self._wal.read_bytes() if self._wal.exists() else b""
        self._header, self._first = data[:32], self._frames(data)

    def _frames(self, wal: bytes) -> int:
        return max(0, (len(wal) - 32) // (self._page_size + self.FRAME_HEADER))

    def stop(self, conn: sqlite3.Connection) -> None:
        data = self._wal.read_bytes() if self._wal.exists() else b""
        if data[:32] != self._header:  # the WAL was reset (someone checkpointed): no count
            self.valid = False
            return
        names = dict(conn.execute("SELECT pageno, name FROM dbstat").fetchall())
        size = self._page_size + self.FRAME_HEADER
        for frame in range(self._first, self._frames(data)):
            page = int.from_bytes(data[32 + frame * size : 36 + frame * size], "big")
            self.frames[names.get(page, "free or new")] += 1

    def per_step(self, steps: int) -> float:
        return sum(self.frames.values()) / steps

    def breakdown(self, steps: int) -> str:
        return ", ".join(
            f"{name} {n / steps:.2f}" for name, n in self.frames.most_common() if n / steps >= 0.005
        )


def wal_note(ours: WalPages, raw: WalPages, steps: int) -> str:
    if not (ours.valid and raw.valid):
        return ""
    return f"WAL pages per step {ours.per_step(steps):.1f} (raw {raw.per_step(steps):.1f})"


def run_pipeline(store: SQLiteEventStore, path: Path, ws: Path) -> tuple[float, float, Any]:
    t0 = time.perf_counter()
    prepared = prepare_run(store, RunCommand(pipeline_path=path, workspace=ws))
    t1 = time.perf_counter()
    outcome = execute(store, prepared)
    t2 = time.perf_counter()
    assert outcome.succeeded
    return t2 - t0, t1 - t0, prepared


def bench_steps(tmp: Path, steps: int, repeat: int, profile: Path | None) -> None:
    print(
        f"\n2. orchestration: prepare_run + execute of a {steps:,}-step pipeline, offline provider, "
        f"no observer (median of {repeat}; a fresh database for each first run)"
    )
    for shape in ("chain", "fanout"):
        path = tmp / f"{shape}.toml"
        path.write_text(pipeline_toml(steps, shape))
        first: list[float] = []
        second: list[float] = []
        prep: list[float] = []
        for _ in range(repeat):
            store = open_store(fresh(tmp / f"{shape}.db"))
            wall, p, _ = run_pipeline(store, path, tmp / "ws")
            first.append(wall / steps)
            prep.append(p)
            wall, _, _ = run_pipeline(store, path, tmp / "ws")
            second.append(wall / steps)
            store.close()
        # Untimed: the same runs once more, recording each commit, for the raw baseline.
        # They also count the WAL pages each run writes (checkpoints off: untimed only).
        recorded = tmp / f"{shape}-rec.db"
        store = open_store(fresh(recorded))
        recorder = Recorder(store)
        pages = {run: WalPages() for run in ("miss", "hit", "raw miss", "raw hit")}
        pages["miss"].start(store.conn, recorded)
        _, _, job1 = run_pipeline(store, path, tmp / "ws")
        pages["miss"].stop(store.conn)
        miss_commits = list(recorder.commits)
        recorder.commits.clear()
        pages["hit"].start(store.conn, recorded)
        _, _, job2 = run_pipeline(store, path, tmp / "ws")
        pages["hit"].stop(store.conn)
        hit_commits = list(recorder.commits)
        ev_miss = store.job_version(job1.job_id) / steps
        ev_hit = store.job_version(job2.job_id) / steps
        store.close()
        raw_replay_commits(tmp / "steps_raw.db", miss_commits, pages["raw miss"])
        raw_replay_commits(tmp / "steps_raw.db", hit_commits, pages["raw hit"])
        raw_miss = raw_replay_commits(tmp / "steps_raw.db", miss_commits) / steps
        raw_hit = raw_replay_commits(tmp / "steps_raw.db", hit_commits) / steps

        label = "chain" if shape == "chain" else "fan-out"
        report(
            Figure(
                f"{label}, first run (cache misses)",
                median_of(first) * 1e6,
                "µs/step",
                raw_miss * 1e6,
                target="target ≤ 200 µs",
                note=join(
                    f"{ev_miss:.1f} events, {len(miss_commits) / steps:.2f} commits per step",
                    wal_note(pages["miss"], pages["raw miss"], steps),
                    f"prepare_run {median_of(prep) * 1e3:.0f} ms",
                    spread(first, 1e6, " µs"),
                ),
            )
        )
        report(
            Figure(
                f"{label}, second run (cache hits)",
                median_of(second) * 1e6,
                "µs/step",
                raw_hit * 1e6,
                target="target ≤ 200 µs",
                note=join(
                    f"{ev_hit:.1f} events, {len(hit_commits) / steps:.2f} commits per step",
                    wal_note(pages["hit"], pages["raw hit"], steps),
                    spread(second, 1e6, " µs"),
                ),
            )
        )
        for run, runs in (("miss", "misses"), ("hit", "hits")):
            if pages[run].valid and pages[f"raw {run}"].valid:
                print(f"    WAL pages per step, {label} {runs}, by table or index:")
                print(f"      steplog: {pages[run].breakdown(steps)}")
                print(f"      raw:     {pages[f'raw {run}'].breakdown(steps)}")
        if profile:
            store = open_store(fresh(tmp / f"{shape}-prof.db"))
            for run in ("miss", "hit"):
                profiled(
                    profile / f"steps-{shape}-{run}.prof", run_pipeline, store, path, tmp / "ws"
                )
            store.close()
    print(f"  peers on this machine: {PEERS}")


# -- 3. rebuild of the big log ------------------------------------------------------------------

# A fresh process, so its peak RSS is the fold's own. Linux carries a parent's peak RSS into
# ru_maxrss across exec (vfork/fork + exec), so the child is started from a shell that forks it:
# its ru_maxrss then starts from the shell's few MiB. VmHWM (/proc/self/status) cross-checks.
REBUILD_CHILD = r"""
import cProfile, json, resource, sys, time
sys.path.insert(0, {root!r})
from steplog.projections.cache import CACHE_EVENT_TYPES
from steplog.projections.store import open_store
from steplog.projections.tables import rebuild

def maxrss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def hwm_kib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return 0

store = open_store({db!r})
before = maxrss_kib()
profile = {profile!r}
prof = cProfile.Profile() if profile else None
t0 = time.perf_counter()
if prof: prof.enable()
n = rebuild(store)
if prof: prof.disable(); prof.dump_stats(profile)
elapsed = time.perf_counter() - t0
after = maxrss_kib()
hwm = hwm_kib()
t0 = time.perf_counter()
read = sum(1 for _ in store.read_all(data_for=("job.created", *CACHE_EVENT_TYPES)))
read_s = time.perf_counter() - t0
jobs, keys = store.conn.execute("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM cache_index)").fetchone()
print(json.dumps(dict(events=n, seconds=elapsed, rss_before_kib=before, rss_after_kib=after, vmhwm_kib=hwm,
                      read_all_seconds=read_s, jobs=jobs, cache_keys=keys)))
"""


def bench_rebuild(db: Path, meta: dict, profile: Path | None) -> None:
    print(
        f"\n3. projection rebuild of a {meta['events']:,}-event log ({meta['jobs']:,} jobs, "
        f"{meta['file_bytes'] / 2**20:,.0f} MiB file, page cache warm)"
    )
    conn = sqlite3.connect(db)
    raw_runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        rows = 0
        for _row in conn.execute(
            "SELECT seq, job_id, version, ts, level, type, step, data, prev_hash, hash FROM events ORDER BY seq"
        ):
            rows += 1
        raw_runs.append(rows / (time.perf_counter() - t0))
    conn.close()

    def child_run(profile_to: str) -> dict:
        code = REBUILD_CHILD.format(root=str(ROOT), db=str(db), profile=profile_to)
        forked = ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", code]
        out = subprocess.run(forked, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    child = child_run("")
    if profile:  # a second rebuild (it is idempotent), under cProfile, untimed
        child_run(str(profile / "rebuild.prof"))
        print(f"  (profile written to {profile / 'rebuild.prof'})")
    rate = child["events"] / child["seconds"]
    note = (
        f"{child['seconds']:.2f} s in all; a read_all of every row, for comparison, "
        f"{child['read_all_seconds']:.2f} s"
    )
    report(
        Figure(
            "rebuild (jobs + cache_index): events folded/s",
            rate,
            "events/s",
            max(raw_runs),
            higher_is_better=True,
            target="target ≥ 200,000/s; eventsourcing ≈ 40,000/s",
            note=note,
        )
    )
    report(
        Figure(
            "  peak RSS of the rebuilding process",
            child["rss_after_kib"] / 1024,
            "MiB",
            note=f"getrusage ru_maxrss; {child['rss_before_kib'] / 1024:.0f} MiB before folding "
            f"(VmHWM {child['vmhwm_kib'] / 1024:.0f} MiB after); "
            f"holds {child['jobs']:,} jobs and {child['cache_keys']:,} cache keys",
        )
    )


# -- 4. replay and resume of a 10,000-event job inside the big log -----------------------------


def bench_job(log: biglog.BigLog, work: Path, repeat: int, profile: Path | None) -> None:
    job = log.big_job
    versions = log.meta["big_job_events"]
    first_seq, last_seq = log.meta["big_job_seq_span"]
    middle = versions // 2
    print(
        f"\n4. a {versions:,}-event job inside that log (its rows spread over seq "
        f"{first_seq:,}–{last_seq:,}, interleaved with other jobs)"
    )
    store = open_store(work)
    conn = sqlite3.connect(work)

    def raw_read(until: int) -> float:
        t0 = time.perf_counter()
        conn.execute(
            "SELECT seq, job_id, version, ts, level, type, step, data, prev_hash, hash FROM events"
            " WHERE job_id = ? AND version <= ? ORDER BY version",
            (job, until),
        ).fetchall()
        return time.perf_counter() - t0

    replays, raws = [], []
    for _ in range(max(5, repeat)):
        t0 = time.perf_counter()
        view = replay(store, job, str(middle))
        replays.append(time.perf_counter() - t0)
        raws.append(raw_read(middle))
        assert view.version == middle
    report(
        Figure(
            f"replay --until {middle:,} (the job's middle)",
            median_of(replays) * 1e3,
            "ms",
            median_of(raws) * 1e3,
            note="raw: SELECT of those rows",
        )
    )

    folds, raws = [], []  # raws: reads of the whole job, the baseline of the resume figures too
    for _ in range(max(5, repeat)):
        t0 = time.perf_counter()
        state = fold_job(store, job)
        folds.append(time.perf_counter() - t0)
        raws.append(raw_read(versions))
    assert state.status == "failed" and len(state.completed_steps) == len(state.steps) - 1
    report(
        Figure(
            f"fold of all {versions:,} events (status)",
            median_of(folds) * 1e3,
            "ms",
            median_of(raws) * 1e3,
        )
    )
    store.close()
    conn.close()

    # Resume, as `steplog resume` does it: a fresh process (imports done before the clock starts)
    # on an untouched copy of the log. The last step's provider still fails, so each resume
    # reaches it and fails again. Then the same in a process warmed first (the event loop's
    # modules imported, a full GC pass done), which shows what of it is a cold process's.
    def resume(mode: str, profile_to: str = "") -> dict:
        copy_db(log.db, work)
        out = subprocess.run(
            [sys.executable, __file__, "--child-resume", str(work), job, mode, profile_to],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold = [resume("cold") for _ in range(repeat + 2)]
    warm = [resume("warm") for _ in range(repeat)]
    if profile:
        resume("cold", str(profile / "resume.prof"))
        print(f"  (profile written to {profile / 'resume.prof'})")
    starts, raw_starts = [], []
    for _ in range(repeat):
        starts.append(process_start("import steplog.commands.cli"))
        raw_starts.append(process_start("import sqlite3"))
    prepares = [c["prepare_s"] for c in cold]
    firsts = [c["first_step_s"] for c in cold]
    warm_firsts = [c["first_step_s"] for c in warm]
    report(
        Figure(
            "resume: prepare_resume (fold, pipeline, plan, job.resumed)",
            median_of(prepares) * 1e3,
            "ms",
            median_of(raws) * 1e3,
            note=join("raw: SELECT of the job's rows", spread(prepares, 1e3, " ms")),
        )
    )
    report(
        Figure(
            "resume: to the first step started",
            median_of(firsts) * 1e3,
            "ms",
            median_of(raws) * 1e3,
            target="target ≤ 100 ms",
            note=join(
                f"a fresh process; + {cold[0]['reused']:,} step.skipped appended",
                spread(firsts, 1e3, " ms"),
            ),
        )
    )
    report(
        Figure(
            "  the same in a warmed-up process",
            median_of(warm_firsts) * 1e3,
            "ms",
            median_of(raws) * 1e3,
            target="target ≤ 100 ms",
            note=join(
                "event loop imported and a full GC done before the clock starts",
                spread(warm_firsts, 1e3, " ms"),
            ),
        )
    )
    report(
        Figure(
            "(not in the above) process start: import steplog.commands.cli",
            median_of(starts) * 1e3,
            "ms",
            median_of(raw_starts) * 1e3,
            note="what `steplog resume` pays before prepare_resume; raw: python -c 'import sqlite3'",
        )
    )


def process_start(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - t0


# -- driver -------------------------------------------------------------------------------------


def resume_child(db: str, job: str, mode: str, profile: str) -> None:
    """One resume in this fresh process; prints its timings as JSON (see bench_job)."""
    if mode == "warm":
        import anyio

        async def nothing() -> None:
            pass

        anyio.run(nothing)  # imports the asyncio backend, as a long-lived process would have
        gc.collect()
    entered: list[float] = []
    original = StepRunner.run

    async def first_step(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if not entered:
            entered.append(time.perf_counter())
        return await original(self, *args, **kwargs)

    StepRunner.run = first_step  # type: ignore[method-assign]
    store = open_store(db)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    resumed = prepare_resume(store, ResumeCommand(job_id=job))
    t1 = time.perf_counter()
    outcome = execute(store, resumed)
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    assert not outcome.succeeded and len(resumed.plan.run) == 1, "the resume job changed shape"
    print(
        json.dumps(
            {
                "prepare_s": t1 - t0,
                "first_step_s": entered[0] - t0,
                "reused": len(resumed.plan.reuse),
            }
        )
    )


def profiled(path: Path, fn: Callable, *args: Any) -> Any:
    prof = cProfile.Profile()
    result = prof.runcall(fn, *args)
    prof.dump_stats(path)
    print(f"  (profile written to {path})")
    return result


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}"


def print_table() -> None:
    print("\nsummary")
    header = ("figure", "steplog", "raw sqlite3", "x raw", "target / peers")
    rows = [header]
    for f in FIGURES:
        rows.append(
            (
                f.name.strip(),
                fmt(f.ours, f.unit),
                fmt(f.raw, f.unit) if f.raw is not None else "",
                f"{f.ratio:.1f}x" if f.ratio is not None else "",
                f.target,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    for n, r in enumerate(rows):
        print(
            "  ".join(
                c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
        )
        if n == 0:
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the generated big log is kept between runs (default: the temp dir)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions per figure (default 3; quick 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--profile", type=Path, help="also write cProfile stats of the hot paths here"
    )
    parser.add_argument(
        "--only",
        choices=("append", "steps", "log"),
        help="run only this section (append: append throughput; steps: per-step orchestration;"
        " log: rebuild, one job's reads and resume in the big log)",
    )
    parser.add_argument("--child-resume", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_resume:
        resume_child(*args.child_resume)
        return
    quick = args.quick
    repeat = args.repeat or (2 if quick else 3)
    sizes = {
        "append_batches": 2_000 if quick else 10_000,
        "steps": 200 if quick else 1_000,
        "log_events": 100_000 if quick else 1_000_000,
    }
    started = time.perf_counter()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"steplog bench · {now} · {machine()}\n"
        f"python {platform.python_version()} · sqlite {sqlite3.sqlite_version} · pydantic {pydantic.VERSION} · "
        f"synchronous={os.environ.get('STEPLOG_SYNCHRONOUS', 'NORMAL')} · {'quick' if quick else 'full'} sizes"
    )
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="steplog-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)
        log = None
        try:
            if args.only in (None, "append"):
                bench_append(tmp, sizes["append_batches"], repeat)
                gc.collect()
            if args.only in (None, "steps"):
                bench_steps(tmp, sizes["steps"], repeat, args.profile)
                gc.collect()
            if args.only in (None, "log"):
                log = biglog.ensure(args.cache_dir, sizes["log_events"])
                work = tmp / "log.db"
                copy_db(log.db, work)
                bench_rebuild(work, log.meta, args.profile)
                bench_job(log, work, repeat, args.profile)
        finally:
            os.chdir(cwd)
    print_table()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n{len(FIGURES)} figures in {time.perf_counter() - started:.0f} s; "
        f"peak RSS of the bench process {rss:.0f} MiB"
        + (f"; big log cached at {log.db}" if log else "")
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": now,
                    "machine": machine(),
                    "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version,
                    "mode": "quick" if quick else "full",
                    "log": log.meta if log else None,
                    "figures": [{**asdict(f), "ratio": f.ratio} for f in FIGURES],
                },
                indent=2,
                ensure_ascii=False,
            )
        )


if __name__ == "__main__":
    main()
