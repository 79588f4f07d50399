"""What do limits and single flight shared through the store cost per provider call?

Two figures, each beside the same workload done the old way in the same run:
  admission  one call's admission transaction (read the key's cache entry, the calls in flight
             of the endpoint and the key, the endpoint's latest requests; decide; append
             step.started + cache.miss + llm.request) beside a raw append of the same three
             events in a transaction of their own; then its llm.response, the same in both.
             With calls of other live processes in flight, and on a log already holding
             many requests to the endpoint.
  run        a job of N independent steps against a loopback HTTP server answering at once,
             through Steplog.run: the shared path (what steplog does) beside the per-process
             path (the admission transaction replaced by a plain append, as before).
  twice      two processes running the same N steps at the same moment (SQLite): the calls the
             server answered beside the distinct keys, old path and shared path.
On SQLite, and on PostgreSQL with --postgres (a throw-away cluster, tests/postgres_cluster.py).
Prints figures, asserts nothing.

    .venv/bin/python bench/shared_limits.py [--calls 2000] [--steps 200] [--twice 1000]
                                            [--postgres] [--quick] [--only SECTION]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from steplog import Steplog  # noqa: E402
from steplog.eventstore.events import (  # noqa: E402
    CacheMiss,
    JobCreated,
    JobStarted,
    LLMRequested,
    LLMResponded,
    NewEvent,
    StepStarted,
)
from steplog.executor import flights  # noqa: E402
from steplog.executor.admission import Admit, SharedLimits  # noqa: E402
from steplog.executor.joblog import JobLog  # noqa: E402
from steplog.executor.ownership import current_owner  # noqa: E402
from steplog.projections.store import open_store  # noqa: E402
from tests.fake_llm_server import FakeLLMServer  # noqa: E402

ENDPOINT = "openai http://127.0.0.1:9/v1"
SHA = "0" * 64
LIMITS = SharedLimits(max_concurrency=64, requests_per_minute=10**6)
CREATED = JobCreated(
    pipeline="bench",
    pipeline_fingerprint=SHA,
    pipeline_sha256=SHA,
    inputs={},
    steps={},
    workspace="/tmp/bench-shared",
)


def _request(n: int, owner: Any) -> LLMRequested:
    return LLMRequested(
        provider="remote",
        kind="openai",
        model="m",
        prompt_tokens=12,
        attempt=1,
        cache_key=f"key-{n}",
        prompt_sha256=SHA,
        endpoint=ENDPOINT,
        owner=owner,
    )


def _response(n: int) -> NewEvent:
    answer = LLMResponded(
        provider="remote",
        model="m",
        duration_s=0.1,
        tokens_in=12,
        tokens_out=30,
        success=True,
        attempt=1,
        cache_key=f"key-{n}",
        response_sha256=SHA,
        endpoint=ENDPOINT,
    )
    return NewEvent.of(answer, f"s{n}")


def _open_job(store: Any, job: str) -> JobLog:
    store.append(
        job,
        [NewEvent.of(CREATED), NewEvent.of(JobStarted(owner=current_owner()))],
        expected_version=0,
    )
    return JobLog(store, job, version=2)


def _fill(store: Any, requests: int, others: int) -> None:
    """`requests` answered requests to the endpoint already in the log, and `others` calls of
    other (live: this process's) jobs in flight."""
    owner = current_owner()
    log = _open_job(store, "history")
    block = 500
    for start in range(0, requests, block):
        batch = []
        for n in range(start, min(requests, start + block)):
            batch += [NewEvent.of(_request(n, owner), f"s{n}"), _response(n)]
        log.emit(batch)
    for n in range(others):
        other = _open_job(store, f"other{n}")
        other.emit([NewEvent.of(_request(10**7 + n, owner), "s0")])


def _per_call(store: Any, job: str, calls: int, admitted: bool) -> float:
    """Seconds per call: the request part timed, its response appended untimed."""
    owner = current_owner()
    log = _open_job(store, job)
    shared = flights.SharedCalls(log, clock=time.time)
    spent = 0.0
    for n in range(calls):
        key = f"{job}-{n}"

        def batch(n: int = n, key: str = key) -> list[NewEvent]:
            started = NewEvent.of(StepStarted(attempt=1, fingerprint="f"), f"s{n}")
            missed = NewEvent.of(CacheMiss(cache_key=key), f"s{n}")
            req = _request(n, owner).model_copy(update={"cache_key": key})
            return [started, missed, NewEvent.of(req, f"s{n}")]

        t = time.perf_counter()
        if admitted:
            decision = shared.try_admit(f"s{n}", ENDPOINT, key, LIMITS, batch, ())
            assert isinstance(decision, Admit)
        else:
            log.emit(batch())
        spent += time.perf_counter() - t
        log.emit([_response(n)])
    return spent / calls


def bench_admission(location: Callable[[str], str], calls: int, repeat: int, label: str) -> None:
    print(f"\n{label}: one call's admission transaction vs a raw append (µs per call)")
    print(f"  {'store':<52} {'raw':>8} {'admitted':>9}  ratio")
    cases = [("empty log", 0, 0), ("20k earlier requests, 8 calls of others in flight", 20_000, 8)]
    for name, requests, others in cases:
        raw, shared = [], []
        for r in range(repeat):
            for admitted, out in ((False, raw), (True, shared)):
                where = location(f"adm{requests}_{r}_{int(admitted)}")
                with closing(open_store(where)) as store:
                    _fill(store, requests, others)
                    out.append(_per_call(store, "bench", calls, admitted))
        a, b = statistics.median(raw), statistics.median(shared)
        print(f"  {name:<52} {a * 1e6:>8.0f} {b * 1e6:>9.0f}  {b / a:.2f}x")


def _pipeline(tmp: Path, port: int, steps: int, salt: str) -> Path:
    lines = [
        'name = "bench-shared"',
        "[providers.remote]",
        'kind = "openai"',
        f'base_url = "http://127.0.0.1:{port}/v1"',
        'model = "fake-model"',
        "max_concurrency = 4",
    ]
    for n in range(steps):
        lines += [f"[steps.s{n}]", 'provider = "remote"', f'prompt = "Step {n} {salt}."']
    path = tmp / f"p_{salt}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def _per_process_path() -> Iterator[None]:
    """The admission transaction replaced by the old plain append (no shared limits)."""

    def plain(self: Any, step: str, endpoint: str, key: str, limits: Any, build: Any, blobs: Any):
        self.log.emit(build(), blobs)
        return Admit()

    shared = flights.SharedCalls.try_admit
    flights.SharedCalls.try_admit = plain  # type: ignore[method-assign]
    try:
        yield
    finally:
        flights.SharedCalls.try_admit = shared  # type: ignore[method-assign]


def bench_run(location: Callable[[str], str], tmp: Path, steps: int, repeat: int, label: str):
    print(f"\n{label}: a job of {steps} HTTP steps (loopback, no latency), max_concurrency 4")
    print(f"  {'path':<52} {'steps/s':>8} {'ms/step':>8}")
    figures: dict[str, list[float]] = {"per-process (old)": [], "shared (steplog)": []}
    with FakeLLMServer() as server:
        for r in range(-1, repeat):  # round -1 warms up (imports, the first connections)
            order = list(figures) if r % 2 else list(reversed(figures))
            for name in order:
                salt = f"{name[:3]}{r + 1}"
                path = _pipeline(tmp, server.port, steps, salt)
                with Steplog(location(f"run_{salt}")) as sl:
                    t = time.perf_counter()
                    if name.startswith("per"):
                        with _per_process_path():
                            result = sl.run(path, job_id=f"j{salt}", workspace=tmp / salt)
                    else:
                        result = sl.run(path, job_id=f"j{salt}", workspace=tmp / salt)
                    if r >= 0:
                        figures[name].append(time.perf_counter() - t)
                assert result.status == "succeeded", result
    base = statistics.median(figures["per-process (old)"])
    for name, times in figures.items():
        t = statistics.median(times)
        print(f"  {name:<52} {steps / t:>8.0f} {t / steps * 1e3:>8.2f}  {t / base:.2f}x")


def _child(db: str, path: str, job: str, way: str) -> None:
    with Steplog(db) as sl:
        if way == "old":
            with _per_process_path():
                result = sl.run(path, job_id=job)
        else:
            result = sl.run(path, job_id=job)
    print(result.status)


def bench_twice(tmp: Path, steps: int) -> None:
    print(f"\nSQLite: two processes running the same {steps} steps at once (server: 5 ms a call)")
    print(f"  {'path':<52} {'calls':>6} {'keys':>6} {'duplicates':>10} {'wall s':>7}")
    for way in ("old", "shared"):
        with FakeLLMServer(delay=0.005) as server:
            path = _pipeline(tmp, server.port, steps, f"twice-{way}")
            db = str(tmp / f"twice-{way}.db")
            Steplog(db).close()  # created once, before both start
            t = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--child", db, str(path), f"{way}{n}", way],
                    cwd=tmp,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for n in range(2)
            ]
            outs = [proc.communicate(timeout=1800)[0].strip() for proc in procs]
            wall = time.perf_counter() - t
            assert outs == ["succeeded"] * 2, outs
            calls = sum(1 for c in server.calls if c["method"] == "POST")
        label = "per-process (old)" if way == "old" else "shared (steplog)"
        print(f"  {label:<52} {calls:>6} {steps:>6} {calls - steps:>10} {wall:>7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--twice", type=int, default=1000, help="steps of the two-process run")
    parser.add_argument("--postgres", action="store_true", help="also on a throw-away cluster")
    parser.add_argument("--only", choices=("admission", "run", "twice"), help="one section")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    calls, steps, repeat, twice = args.calls, args.steps, args.repeat, args.twice
    if args.quick:
        calls, steps, repeat, twice = 300, 60, 1, 100
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)

        def sqlite_at(tag: str) -> str:
            return str(tmp / f"{tag}.db")

        only = args.only
        if only in (None, "admission"):
            bench_admission(sqlite_at, calls, repeat, "SQLite")
        if only in (None, "run"):
            bench_run(sqlite_at, tmp, steps, repeat, "SQLite")
        if only in (None, "twice"):
            bench_twice(tmp, twice)
        if args.postgres and only != "twice":
            from tests.postgres_cluster import PostgresCluster

            cluster = PostgresCluster.start()
            try:

                def pg_at(tag: str) -> str:
                    return cluster.url(cluster.create_database(tag.lower()))

                if only in (None, "admission"):
                    bench_admission(pg_at, max(100, calls // 4), repeat, "PostgreSQL")
                if only in (None, "run"):
                    bench_run(pg_at, tmp, steps, repeat, "PostgreSQL")
            finally:
                cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
