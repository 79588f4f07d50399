"""steplog benchmarks: figures printed next to a raw-sqlite3 baseline measured in the same run.

    python bench/run.py            full sizes (1,000,000-event log; a few minutes)
    python bench/run.py --quick    small sizes (about a minute)

Nothing here asserts a time: it prints figures. See bench/README.md for what each one means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from commands.jobs import ResumeCommand, RunCommand, execute, prepare_resume, prepare_run  # noqa: E402
from commands.replay import replay  # noqa: E402
from eventstore.events import (  # noqa: E402
    CacheMiss,
    JobCreated,
    JobStarted,
    JobSucceeded,
    LLMRequested,
    LLMResponded,
    NewEvent,
    Owner,
    StepStarted,
    StepSucceeded,
)
from projections.store import open_store  # noqa: E402

OWNER = Owner(pid=1, host="bench", started="1")
RESULTS: list[tuple[str, str, str]] = []  # (figure, value, comparison)


def report(name: str, value: str, comparison: str = "") -> None:
    RESULTS.append((name, value, comparison))
    print(f"  {name:<58} {value:>16}  {comparison}", flush=True)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def step_batch(step: str, key: str) -> list[NewEvent]:
    """The five events of one cache-missing text step, as the executor writes them."""
    return [
        NewEvent.of(StepStarted(attempt=1, fingerprint=sha(step)), step=step),
        NewEvent.of(
            CacheMiss(
                cache_key=key, parts={"provider": key, "step": key, "input": key, "code": key}
            ),
            step=step,
        ),
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
        ),  # fmt: skip
        NewEvent.of(
            LLMResponded(
                provider="local",
                model="offline-1",
                duration_s=0.01,
                tokens_in=42,
                tokens_out=300,
                success=True,
                attempt=1,
                cache_key=key,
                response_sha256=sha(key + "r"),
                finish_reason="stop",
            ),
            step=step,
        ),  # fmt: skip
        NewEvent.of(
            StepSucceeded(
                output_sha256=sha(key + "r"),
                output="text",
                cache_hit=False,
                cache_key=key,
                duration_s=0.01,
                fingerprint=sha(step),
            ),
            step=step,
        ),  # fmt: skip
    ]


def created(steps: list[str]) -> list[NewEvent]:
    return [
        NewEvent.of(
            JobCreated(
                pipeline="bench",
                pipeline_fingerprint=sha("p"),
                pipeline_sha256=sha("src"),
                inputs={"idea": "x"},
                steps={s: [] for s in steps},
                workspace="/tmp/ws",
            )
        ),  # fmt: skip
        NewEvent.of(JobStarted(owner=OWNER)),
    ]


# -- raw sqlite3 baseline --------------------------------------------------------------------------

RAW_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, job_id TEXT NOT NULL, version INTEGER NOT NULL,
  ts TEXT NOT NULL, level TEXT NOT NULL, type TEXT NOT NULL, step TEXT, data TEXT NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (job_id, version));
"""


def raw_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(RAW_SCHEMA)
    return conn


def raw_rows(batch: list[NewEvent], job: str, version: int) -> list[tuple]:
    return [
        (job, version + i, ev.ts, ev.level, ev.type, ev.step, ev.data_json(), "0" * 64, "1" * 64)
        for i, ev in enumerate(batch, start=1)
    ]


def raw_append(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO events (job_id, version, ts, level, type, step, data, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")


# -- 1. append throughput ------------------------------------------------------------------------------


def bench_append(tmp: Path, batches: int) -> None:
    print(f"append ({batches} batches of 5 events, one IMMEDIATE transaction each)")
    prepared = [step_batch(f"s{i}", sha(f"k{i}")) for i in range(batches)]
    store = open_store(tmp / "append.db")
    store.append("j", created(["s"]), expected_version=0)
    t0 = time.perf_counter()
    version = 2
    for batch in prepared:
        version = store.append("j", batch, expected_version=version)[-1].version
    ours = (time.perf_counter() - t0) / (batches * 5)

    conn = raw_connection(tmp / "append_raw.db")
    rows = [raw_rows(batch, "j", i * 5) for i, batch in enumerate(prepared)]
    t0 = time.perf_counter()
    for r in rows:
        raw_append(conn, r)
    raw = (time.perf_counter() - t0) / (batches * 5)
    report(
        "append, 5-event batches: µs per event",
        f"{ours * 1e6:.1f} µs",
        f"raw sqlite3 {raw * 1e6:.1f} µs ({ours / raw:.1f}x)",
    )
    report("append, 5-event batches: events/s", f"{1 / ours:,.0f}", f"raw sqlite3 {1 / raw:,.0f}")

    big = [ev for batch in prepared[:400] for ev in batch]  # 2,000 events in one transaction
    t0 = time.perf_counter()
    store.append("big", created(["s"]) + big, expected_version=0)
    ours_big = (time.perf_counter() - t0) / (len(big) + 2)
    raw_big_rows = raw_rows(created(["s"]) + big, "big", 0)
    t0 = time.perf_counter()
    raw_append(conn, raw_big_rows)
    raw_big = (time.perf_counter() - t0) / len(raw_big_rows)
    report("append, 2,000-event batch: µs per event", f"{ours_big * 1e6:.1f} µs",
           f"raw sqlite3 {raw_big * 1e6:.1f} µs ({ours_big / raw_big:.1f}x); target ≤ 7 µs")  # fmt: skip

    singles = prepared[: min(2000, batches)]
    t0 = time.perf_counter()
    for batch in singles:
        version = store.append("j", batch[:1], expected_version=version)[-1].version
    one = (time.perf_counter() - t0) / len(singles)
    t0 = time.perf_counter()
    for i, batch in enumerate(singles):
        raw_append(conn, raw_rows(batch[:1], "single", i))
    raw_one = (time.perf_counter() - t0) / len(singles)
    report("append, one event per commit (WAL): µs per commit", f"{one * 1e6:.1f} µs",
           f"raw sqlite3 {raw_one * 1e6:.1f} µs ({one / raw_one:.1f}x)")  # fmt: skip
    store.close()
    conn.close()


# -- 2. per-step orchestration overhead ----------------------------------------------------------------


def pipeline_toml(steps: int, shape: str, fail_last: bool = False) -> str:
    """`fail_last` puts the last step on a provider nobody answers (a closed loopback port)."""
    lines = ['name = "bench"', "", "[providers.local]", 'kind = "offline"', ""]
    if fail_last:
        lines += ["[providers.down]", 'kind = "openai"', f'base_url = "http://127.0.0.1:{_closed_port()}/v1"',
                  'model = "m"', "max_retries = 0", "timeout_s = 2", ""]  # fmt: skip
    for i in range(steps):
        lines.append(f"[steps.s{i}]")
        if i and shape == "chain":
            lines.append(f'needs = ["s{i - 1}"]')
            lines.append(f'prompt = "step {i} after: {{{{ steps.s{i - 1}.output }}}}"')
        elif i and shape == "fanout":
            lines.append('needs = ["s0"]')
            lines.append(f'prompt = "step {i} from: {{{{ steps.s0.output }}}}"')
        else:
            lines.append('prompt = "start"')
        lines.append('provider = "down"' if fail_last and i == steps - 1 else 'provider = "local"')
        lines.append("")
    return "\n".join(lines)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_steps(tmp: Path, steps: int) -> None:
    print(f"orchestration overhead ({steps}-step pipelines, offline provider, no display)")
    raw_commit = _raw_commit_cost(tmp)
    for shape in ("chain", "fanout"):
        path = tmp / f"{shape}.toml"
        path.write_text(pipeline_toml(steps, shape))
        store = open_store(tmp / f"{shape}.db")
        for label in ("first run (cache misses)", "second run (cache hits)"):
            t0 = time.perf_counter()
            prepared = prepare_run(store, RunCommand(pipeline_path=path, workspace=tmp / "ws"))
            outcome = execute(store, prepared)
            per_step = (time.perf_counter() - t0) / steps
            assert outcome.succeeded
            events = store.job_version(prepared.job_id)
            report(f"{shape}, {label}: µs per step", f"{per_step * 1e6:.0f} µs",
                   f"{events / steps:.1f} events/step; raw WAL commit {raw_commit * 1e6:.0f} µs; "
                   "target ≤ 200 µs; LangGraph+SqliteSaver ≈ 1,050, DBOS on SQLite ≈ 2,350")  # fmt: skip
        store.close()


def _raw_commit_cost(tmp: Path) -> float:
    conn = raw_connection(tmp / "commit_raw.db")
    batch = step_batch("s", sha("k"))
    t0 = time.perf_counter()
    for i in range(500):
        raw_append(conn, raw_rows(batch[:1], "c", i))
    conn.close()
    return (time.perf_counter() - t0) / 500


# -- 3. a big log: rebuild, replay, resume -----------------------------------------------------------


def build_big_log(path: Path, jobs: int, steps_per_job: int) -> None:
    """`jobs` jobs of 5 events per step, each job appended in one transaction through the store."""
    if path.exists():
        return
    partial = path.with_suffix(".partial")
    for suffix in ("", "-wal", "-shm"):
        Path(str(partial) + suffix).unlink(missing_ok=True)
    store = open_store(partial)
    t0 = time.perf_counter()
    for j in range(jobs):
        names = [f"s{i}" for i in range(steps_per_job)]
        events = created(names)
        for name in names:
            events += step_batch(name, sha(f"{j}:{name}"))
        events.append(NewEvent.of(JobSucceeded(duration_s=1.0)))
        store.append(f"job{j:05d}", events, expected_version=0)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    partial.rename(path)
    print(f"  (built {path.name} in {time.perf_counter() - t0:.0f}s)")


# Run in a fresh process so its peak RSS (VmHWM, reset at exec) is the fold's alone.
REBUILD_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from projections.store import open_store
from projections.tables import rebuild

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

store = open_store({db!r})
rss0 = hwm_kib()
t0 = time.perf_counter()
n = rebuild(store)
elapsed = time.perf_counter() - t0
print(n, elapsed, rss0, hwm_kib())
"""


def bench_big_log(tmp: Path, cache_dir: Path, jobs: int, steps_per_job: int) -> None:
    total = jobs * (steps_per_job * 5 + 3)
    print(f"a {total:,}-event log ({jobs} jobs)")
    db = cache_dir / f"steplog-bench-v2-{jobs}x{steps_per_job}.db"
    build_big_log(db, jobs, steps_per_job)
    work = tmp / "big.db"
    work.write_bytes(db.read_bytes())

    out = subprocess.run([sys.executable, "-c", REBUILD_CHILD.format(root=str(ROOT), db=str(work))],
                         capture_output=True, text=True, check=True)  # fmt: skip
    n, elapsed, rss0, rss1 = out.stdout.split()
    rate = int(n) / float(elapsed)
    conn = sqlite3.connect(work)
    t0 = time.perf_counter()
    rows = 0
    for _ in conn.execute(
        "SELECT seq, job_id, version, ts, level, type, step, data, prev_hash, hash FROM events"
    ):
        rows += 1
    raw_rate = rows / (time.perf_counter() - t0)
    conn.close()
    report("projection rebuild (jobs + cache_index): events/s", f"{rate:,.0f}",
           f"raw sqlite3 row read {raw_rate:,.0f}/s ({raw_rate / rate:.1f}x); target ≥ 200,000; eventsourcing ≈ 40,000")  # fmt: skip
    report(
        "peak RSS during rebuild",
        f"{int(rss1) / 1024:.0f} MiB",
        f"{int(rss0) / 1024:.0f} MiB before folding",
    )

    # a 10,000-event job inside the big log: 2,000 steps, the last one failing
    steps = 2000
    pipeline = tmp / "resume.toml"
    pipeline.write_text(pipeline_toml(steps, "fanout", fail_last=True))
    store = open_store(work)
    prepared = prepare_run(
        store, RunCommand(pipeline_path=pipeline, job_id="big-job", workspace=tmp / "ws")
    )
    assert not execute(store, prepared).succeeded
    job_events = store.job_version("big-job")
    middle = job_events // 2
    t0 = time.perf_counter()
    view = replay(store, "big-job", str(middle))
    replay_s = time.perf_counter() - t0
    assert view.version == middle
    conn = sqlite3.connect(work)
    t0 = time.perf_counter()
    conn.execute(
        "SELECT * FROM events WHERE job_id = ? AND version <= ?", ("big-job", middle)
    ).fetchall()
    raw_read = time.perf_counter() - t0
    conn.close()
    report(f"replay --until {middle} of a {job_events:,}-event job", f"{replay_s * 1e3:.1f} ms",
           f"raw sqlite3 read of those rows {raw_read * 1e3:.1f} ms")  # fmt: skip

    store.close()  # the provider is still down: resume reaches the step again, unchanged file
    store = open_store(work)
    first_step: list[float] = []

    def observer(events):
        if not first_step and any(ev.type == "step.started" for ev in events):
            first_step.append(time.perf_counter())

    t0 = time.perf_counter()
    resumed = prepare_resume(store, ResumeCommand(job_id="big-job"))
    planned = time.perf_counter()
    assert not execute(store, resumed, observer=observer).succeeded
    report("resume of that job: to the first step started", f"{(first_step[0] - t0) * 1e3:.0f} ms",
           f"fold + plan {(planned - t0) * 1e3:.0f} ms; target ≤ 100 ms")  # fmt: skip
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the generated big log is kept between runs")  # fmt: skip
    args = parser.parse_args()
    print(f"steplog bench · python {sys.version.split()[0]} · sqlite {sqlite3.sqlite_version} · "
          f"{os.cpu_count()} cores · {'quick' if args.quick else 'full'}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)
        bench_append(tmp, 2000 if args.quick else 10_000)
        bench_steps(tmp, 200 if args.quick else 1000)
        if args.quick:
            bench_big_log(tmp, args.cache_dir, jobs=100, steps_per_job=199)
        else:
            bench_big_log(tmp, args.cache_dir, jobs=1000, steps_per_job=199)
    print()
    print(json.dumps({name: value for name, value, _ in RESULTS}, indent=2, ensure_ascii=False))
    print(
        f"peak RSS of the bench process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
