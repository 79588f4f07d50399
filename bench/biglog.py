"""A large, realistic event log for the rebuild / replay / resume figures, built once and cached.

What is in it
-------------
* About `total_events` events from many jobs (≈ 1,000 events each) that ran a few at a time, so
  their commits interleave in `seq` order the way concurrent jobs do, on a simulated clock
  (timestamps increase with `seq`; LLM calls take seconds, cache hits milliseconds).
* Every step follows one of the executor's own commit sequences (executor/step.py): a cache
  miss (step.started + cache.miss + llm.request, then llm.response + step.succeeded), a cache hit
  on a key an earlier job paid for, a `files` step (file.written × 3), a retried call
  (llm.response success=false + step.retrying), and jobs that fail (step.failed + job.failed),
  get interrupted (job.interrupted), and are resumed (job.resumed + a step.skipped batch).
  Prompts, responses and outputs are stored as blobs, pipeline sources and snapshots once per
  pipeline, as the executor does.
* One job written by the real executor (`prepare_run` + `execute`, offline provider): a
  2,000-step pipeline whose last step's provider fails, so the job ends failed with ≈ 10,000
  events and can be resumed. Its commits are spliced into the middle of the log, interleaved
  with the other jobs (timestamps moved onto the simulated clock; content unchanged).

How it is written
-----------------
Every batch goes through `SQLiteEventStore.append_txn` — the store's own append (hash chain,
`streams` head, the `jobs` / `cache_index` projectors) — so the rows are exactly what the store
writes. The only liberty taken: many commits share one transaction (as group commit does), so
the build takes seconds, not minutes. Event data is serialised by the pydantic models, as
`NewEvent.data_json` does. After the build every job's hash chain is checked from genesis.

The file is kept under the temp directory, keyed by a version string that covers the sizes,
this generator and the source of the store, projections and executor, so a change to any of
them builds a fresh log.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pydantic  # noqa: E402

from steplog.commands.jobs import RunCommand, execute, prepare_run  # noqa: E402
from steplog.eventstore.events import (  # noqa: E402
    CacheHit,
    CacheMiss,
    EventData,
    FileWritten,
    JobCreated,
    JobFailed,
    JobInterrupted,
    JobResumed,
    JobStarted,
    JobSucceeded,
    LLMRequested,
    LLMResponded,
    NewEvent,
    Owner,
    StepFailed,
    StepRetrying,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    parse_data,
)
from steplog.eventstore.record import GENESIS_HASH, StoredEvent, chain_hash  # noqa: E402
from steplog.projections.store import open_store  # noqa: E402

GENERATOR_VERSION = 3  # bump when the shape of the generated log changes
BIG_JOB = "resume-me"
BIG_JOB_STEPS = 2000
EVENTS_PER_JOB = 1000
CONCURRENT_JOBS = 4
TXN_EVENTS = 20_000  # events per build transaction
SOURCES = (
    "schema.sql",
    "eventstore/events.py",
    "eventstore/record.py",
    "eventstore/sqlite.py",
    "projections/tables.py",
    "projections/cache.py",
    "projections/manifest.py",
    "executor/runner.py",
    "executor/step.py",
    "executor/calls.py",
    "executor/joblog.py",
    "executor/scheduler.py",
    "executor/committer.py",
    "executor/pipeline.py",
    "executor/cachekey.py",
    "executor/templates.py",
    "executor/outputs.py",
    "commands/jobs.py",
    "providers/offline.py",
    "bench/biglog.py",
)

Prepared = tuple[str, str, str, "str | None", str]  # (ts, level, type, step, data_json)


def version_key(total_events: int) -> str:
    """Names the cached log: sizes, generator, and the code whose output the rows are."""
    digest = hashlib.sha256()
    for rel in SOURCES:
        digest.update(rel.encode())
        digest.update((ROOT / rel).read_bytes())
    digest.update(f"{pydantic.VERSION} {sqlite3.sqlite_version}".encode())
    return f"v{GENERATOR_VERSION}-{total_events}-{digest.hexdigest()[:12]}"


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode()).hexdigest()


# -- the simulated clock ------------------------------------------------------------------------

EPOCH_US = int(datetime(2026, 1, 5, 8, 0, tzinfo=UTC).timestamp() * 1_000_000)


def ts_of(us: int) -> str:
    """The store's timestamp format (eventstore.events.utc_now): microseconds, Z."""
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


# -- pipelines the synthetic jobs run -----------------------------------------------------------

LOREM = (
    "The customer reports that the export button times out on large workspaces; the logs show "
    "the request reaching the worker and the worker retrying the upload three times before the "
    "gateway gives up. Summarise what happened, list the affected accounts, and propose a fix "
    "that keeps the upload idempotent. "
)


@dataclass
class SyntheticPipeline:
    name: str
    steps: dict[str, list[str]]  # step -> needs, in file order
    outputs: dict[str, str]  # step -> text | json | files
    fingerprint: str
    source: bytes
    snapshot: bytes
    step_fingerprints: dict[str, str]


def make_pipeline(name: str, n_steps: int, rng: random.Random) -> SyntheticPipeline:
    steps: dict[str, list[str]] = {}
    outputs: dict[str, str] = {}
    lines = [
        f'name = "{name}"',
        "",
        "[providers.main]",
        'kind = "openai"',
        'base_url = "http://127.0.0.1:8080/v1"',
        'model = "qwen2.5-coder-7b"',
        "",
    ]
    names = [f"{name[:4]}_{i:03d}" for i in range(n_steps)]
    for i, step in enumerate(names):
        if i == 0:
            needs: list[str] = []
        elif rng.random() < 0.6:
            needs = [names[i - 1]]
        else:
            needs = sorted(
                {names[rng.randrange(max(0, i - 30), i)] for _ in range(rng.randint(1, 3))}
            )
        steps[step] = needs
        roll = rng.random()
        outputs[step] = "files" if roll < 0.06 else "json" if roll < 0.25 else "text"
        refs = " ".join(f"{{{{ steps.{n}.output }}}}" for n in needs)
        lines += [
            f"[steps.{step}]",
            f"needs = {json.dumps(needs)}",
            'provider = "main"',
            f'output = "{outputs[step]}"',
            f'prompt = """Step {i} of {name}. {refs}"""',
            "",
        ]
    source = "\n".join(lines).encode()
    step_fingerprints = {s: sha(f"{name}:{s}:{steps[s]}") for s in steps}
    snapshot = json.dumps(
        {"spec": {"name": name, "steps": steps}, "step_fingerprints": step_fingerprints},
        separators=(",", ":"),
    ).encode()
    return SyntheticPipeline(name, steps, outputs, sha(source), source, snapshot, step_fingerprints)


# -- one synthetic job, as the executor would have written it -----------------------------------


@dataclass
class Commit:
    at_us: int
    job_id: str
    events: list[Prepared]
    blobs: list[bytes] = field(default_factory=list)


@dataclass
class CacheSource:
    key: str
    response_sha256: str
    job: str
    step: str
    tokens: int


def _ev(at_us: int, data: EventData, step: str | None = None) -> Prepared:
    return (ts_of(at_us), data.LEVEL, data.TYPE, step, data.model_dump_json())


def synthetic_job(
    job_id: str,
    pipeline: SyntheticPipeline,
    start_us: int,
    rng: random.Random,
    cache_pool: list[CacheSource],
    owner: Owner,
) -> Iterator[Commit]:
    """The commits of one job, in order; each one's `at_us` is when it lands (the caller's clock)."""
    t = start_us
    created = JobCreated(
        pipeline=pipeline.name,
        pipeline_path=f"/srv/pipelines/{pipeline.name}.toml",
        pipeline_fingerprint=pipeline.fingerprint,
        pipeline_sha256=sha(pipeline.source),
        snapshot_sha256=sha(pipeline.snapshot),
        inputs={"ticket": f"T-{rng.randrange(10**6):06d}", "tone": "neutral"},
        steps=pipeline.steps,
        workspace=f"/srv/runs/{job_id}",
    )
    yield Commit(
        t,
        job_id,
        [_ev(t, created), _ev(t + 1, JobStarted(owner=owner))],
        [pipeline.source, pipeline.snapshot],
    )
    roll = rng.random()
    ending = (
        "failed"
        if roll < 0.06
        else "failed+resumed"
        if roll < 0.09
        else ("interrupted+resumed" if roll < 0.12 else "succeeded")
    )
    order = list(pipeline.steps)
    stop_at = rng.randrange(len(order) // 3, len(order)) if ending != "succeeded" else None
    job_t0 = t
    done: dict[str, str] = {}  # step -> output sha
    failed: set[str] = set()
    i = 0
    while i < len(order):
        step = order[i]
        if i == stop_at:
            stop_at = None
            t += rng.randint(50_000, 2_000_000)
            if ending.startswith("interrupted"):
                yield Commit(t, job_id, [_ev(t, JobInterrupted(signal="SIGINT"))])
            else:
                failed.add(step)
                yield from _failed_step(job_id, step, pipeline, t, rng)
                t += 3_000_000
                error = f"step {step} failed: server unavailable (connect error)"
                yield Commit(
                    t,
                    job_id,
                    [
                        _ev(
                            t,
                            JobFailed(
                                error=error, failed_steps=[step], duration_s=(t - job_t0) / 1e6
                            ),
                        )
                    ],
                )
            if ending == "failed":
                return
            t += rng.randint(60_000_000, 3_600_000_000)  # someone notices, fixes, resumes
            resumed = JobResumed(owner=owner, pipeline_fingerprint=pipeline.fingerprint)
            yield Commit(t, job_id, [_ev(t, resumed)])
            t += 15_000
            skipped = [
                _ev(
                    t,
                    StepSkipped(
                        reason="completed in an earlier run",
                        fingerprint=pipeline.step_fingerprints[s],
                        output_sha256=o,
                    ),
                    s,
                )
                for s, o in done.items()
            ]
            if skipped:
                yield Commit(t, job_id, skipped)
            continue  # the failed step runs again
        attempt = 2 if step in failed else 1
        for commit in _step(job_id, step, pipeline, t, rng, cache_pool, done, attempt):
            t = commit.at_us
            yield commit
        i += 1
    t += 5_000
    yield Commit(t, job_id, [_ev(t, JobSucceeded(duration_s=(t - job_t0) / 1e6))])


def _parts(key: str) -> dict[str, str]:
    return {p: sha(p + key) for p in ("provider", "step", "input", "code")}


def _response_text(key: str, kind: str, rng: random.Random) -> bytes:
    body = LOREM[: rng.randint(120, len(LOREM))]
    if kind == "json":
        return json.dumps(
            {"summary": body, "accounts": [key[:8], key[8:16]], "ok": True}, indent=2
        ).encode()
    if kind == "files":
        files = [
            {"path": p, "content": f"# {key}\n{body}\n"}
            for p in ("app.py", "tests/test_app.py", "README.md")
        ]
        return json.dumps({"files": files}, indent=2).encode()
    return f"{body}\n\n(answer {key[:12]})".encode()


def _step(
    job_id: str,
    step: str,
    pipeline: SyntheticPipeline,
    t: int,
    rng: random.Random,
    cache_pool: list[CacheSource],
    done: dict[str, str],
    attempt: int,
) -> Iterator[Commit]:
    """One step's commits; records its output's sha in `done`."""
    kind = pipeline.outputs[step]
    fp = pipeline.step_fingerprints[step]
    t += rng.randint(200, 3_000)  # waiting for needs / the event loop
    started = _ev(t, StepStarted(attempt=attempt, fingerprint=fp), step)
    if cache_pool and rng.random() < 0.15:  # a key an earlier job paid for
        src = cache_pool[rng.randrange(len(cache_pool))]
        hit = CacheHit(
            cache_key=src.key,
            response_sha256=src.response_sha256,
            origin_job=src.job,
            origin_step=src.step,
            tokens_saved=src.tokens,
            parts=_parts(src.key),
        )
        t += rng.randint(300, 1_500)
        succeeded = StepSucceeded(
            output_sha256=src.response_sha256,
            output=kind,
            cache_hit=True,
            cache_key=src.key,
            duration_s=0.0012,
            fingerprint=fp,
        )
        done[step] = src.response_sha256
        yield Commit(t, job_id, [started, _ev(t, hit, step), _ev(t, succeeded, step)])
        return
    key = sha(f"{job_id}/{step}/{rng.random()}")
    prompt = f"{LOREM[: rng.randint(200, len(LOREM))]}\n[{job_id}/{step}]".encode()
    tokens_in = len(prompt.split())
    request = LLMRequested(
        provider="main",
        kind="openai",
        model="qwen2.5-coder-7b",
        prompt_tokens=tokens_in,
        attempt=1,
        cache_key=key,
        prompt_sha256=sha(prompt),
    )
    yield Commit(
        t,
        job_id,
        [started, _ev(t, CacheMiss(cache_key=key, parts=_parts(key)), step), _ev(t, request, step)],
        [prompt],
    )
    call = 1
    if rng.random() < 0.04:  # a 503, a back-off, a second attempt
        t += rng.randint(100_000, 2_000_000)
        failure = LLMResponded(
            provider="main",
            model="qwen2.5-coder-7b",
            duration_s=0.4,
            success=False,
            attempt=1,
            cache_key=key,
            status=503,
            error="server answered 503",
            error_class="http_503",
        )
        retrying = StepRetrying(attempt=1, delay_s=0.731, error="server answered 503")
        yield Commit(t, job_id, [_ev(t, failure, step), _ev(t, retrying, step)])
        t += 731_000
        call = 2
        again = LLMRequested(**{**request.model_dump(), "attempt": 2})
        yield Commit(t, job_id, [_ev(t, again, step)])
    response = _response_text(key, kind, rng)
    latency = rng.randint(800_000, 25_000_000)
    t += latency
    answered = LLMResponded(
        provider="main",
        model="qwen2.5-coder-7b",
        duration_s=latency / 1e6,
        tokens_in=tokens_in,
        tokens_out=len(response.split()),
        success=True,
        attempt=call,
        cache_key=key,
        response_sha256=sha(response),
        finish_reason="stop",
    )
    if len(cache_pool) < 20_000:
        cache_pool.append(CacheSource(key, sha(response), job_id, step, tokens_in))
    else:
        cache_pool[rng.randrange(len(cache_pool))] = CacheSource(
            key, sha(response), job_id, step, tokens_in
        )
    output = response
    if kind == "json":
        output = json.dumps(json.loads(response), sort_keys=True, separators=(",", ":")).encode()
    succeeded = StepSucceeded(
        output_sha256=sha(output),
        output=kind,
        cache_hit=False,
        cache_key=key,
        duration_s=latency / 1e6 + 0.002,
        fingerprint=fp,
    )
    done[step] = sha(output)
    if kind == "files":
        yield Commit(t, job_id, [_ev(t, answered, step)], [response])
        t += rng.randint(2_000, 20_000)
        written = []
        for path in ("app.py", "tests/test_app.py", "README.md"):
            content = f"# {key}\n{path}\n".encode()
            written.append(
                _ev(
                    t,
                    FileWritten(
                        path=path,
                        sha256=sha(content),
                        wrote=True,
                        reason="created",
                        size=len(content),
                    ),
                    step,
                )
            )
        yield Commit(t, job_id, [*written, _ev(t, succeeded, step)], [output])
    else:
        yield Commit(
            t, job_id, [_ev(t, answered, step), _ev(t, succeeded, step)], [response, output]
        )


def _failed_step(
    job_id: str, step: str, pipeline: SyntheticPipeline, t: int, rng: random.Random
) -> Iterator[Commit]:
    fp = pipeline.step_fingerprints[step]
    key = sha(f"{job_id}/{step}/failed")
    prompt = f"{LOREM}\n[{job_id}/{step}]".encode()
    started = _ev(t, StepStarted(attempt=1, fingerprint=fp), step)
    events = [started, _ev(t, CacheMiss(cache_key=key, parts=_parts(key)), step)]
    for attempt in (1, 2, 3):
        request = LLMRequested(
            provider="main",
            kind="openai",
            model="qwen2.5-coder-7b",
            prompt_tokens=80,
            attempt=attempt,
            cache_key=key,
            prompt_sha256=sha(prompt),
        )
        yield Commit(t, job_id, [*events, _ev(t, request, step)], [prompt] if attempt == 1 else [])
        t += rng.randint(50_000, 500_000)
        failure = LLMResponded(
            provider="main",
            model="qwen2.5-coder-7b",
            duration_s=0.05,
            success=False,
            attempt=attempt,
            cache_key=key,
            error="server unavailable (connect error)",
            error_class="unavailable",
        )
        if attempt < 3:
            retrying = StepRetrying(
                attempt=attempt, delay_s=0.5 * attempt, error="server unavailable (connect error)"
            )
            yield Commit(t, job_id, [_ev(t, failure, step), _ev(t, retrying, step)])
            t += 500_000 * attempt
            events = []
        else:
            failed = StepFailed(
                error="server unavailable (connect error)",
                error_type="unavailable",
                attempt=1,
                duration_s=2.5,
            )
            yield Commit(t, job_id, [_ev(t, failure, step), _ev(t, failed, step)])


# -- the real executor's job --------------------------------------------------------------------


def resume_pipeline_toml(steps: int) -> str:
    """A tree of text steps on the offline provider; the last step's provider always fails."""
    rng = random.Random(7)
    lines = [
        'name = "bench-resume"',
        "",
        "[providers.local]",
        'kind = "offline"',
        "",
        "[providers.flaky]",
        'kind = "offline"',
        "max_retries = 0",
        "options = { fail = true }",
        "",
    ]
    for i in range(steps):
        lines.append(f"[steps.s{i}]")
        if i:
            parent = rng.randrange(max(0, i - 40), i)
            lines.append(f'needs = ["s{parent}"]')
            lines.append(f'prompt = "Part {i}: expand on {{{{ steps.s{parent}.output }}}}"')
        else:
            lines.append('prompt = "Outline a handbook for on-call engineers."')
        lines.append('provider = "flaky"' if i == steps - 1 else 'provider = "local"')
        lines.append("")
    return "\n".join(lines)


def executor_job(
    scratch: Path, pipeline_path: Path, steps: int
) -> tuple[list[list[StoredEvent]], dict[str, bytes]]:
    """Run the resume pipeline with the real executor; its commits as they landed, and its blobs."""
    pipeline_path.write_text(resume_pipeline_toml(steps))
    store = open_store(scratch)
    batches: list[list[StoredEvent]] = []
    prepared = prepare_run(
        store,
        RunCommand(
            pipeline_path=pipeline_path, job_id=BIG_JOB, workspace=pipeline_path.parent / "ws"
        ),
    )
    batches.append(list(store.read_job(BIG_JOB)))  # job.created + job.started (prepare_run)
    outcome = execute(store, prepared, observer=lambda stored: batches.append(list(stored)))
    assert not outcome.succeeded, "the resume job's last step must fail"
    assert sum(map(len, batches)) == store.job_version(BIG_JOB)
    blobs = {sha_: bytes(c) for sha_, c in store.conn.execute("SELECT sha256, content FROM blobs")}
    store.close()
    return batches, blobs


# -- the build ----------------------------------------------------------------------------------


@dataclass
class BigLog:
    db: Path
    meta: dict

    @property
    def big_job(self) -> str:
        return self.meta["big_job"]


def ensure(cache_root: Path, total_events: int, *, quiet: bool = False) -> BigLog:
    """The cached log for these sizes and this code, built first if it is not there yet."""
    key = version_key(total_events)
    home = cache_root / f"steplog-bench-log-{key}"
    meta_path = home / "meta.json"
    if meta_path.exists():
        return BigLog(home / "log.db", json.loads(meta_path.read_text()))
    for stale in cache_root.glob(f"steplog-bench-log-v*-{total_events}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # an older build of this size: superseded
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    t0 = time.perf_counter()
    if not quiet:
        print(f"  building a {total_events:,}-event log in {home} (once; cached) …", flush=True)
    meta = build(home, total_events)
    meta["build_s"] = round(time.perf_counter() - t0, 1)
    meta_path.write_text(json.dumps(meta, indent=2))
    if not quiet:
        print(f"  built in {meta['build_s']:.0f} s", flush=True)
    return BigLog(home / "log.db", meta)


def build(home: Path, total_events: int) -> dict:
    rng = random.Random(20260105)
    db = home / "log.db"
    real_batches, real_blobs = executor_job(
        home / "executor-scratch.db", home / "resume.toml", BIG_JOB_STEPS
    )
    for suffix in ("", "-wal", "-shm"):
        Path(f"{home / 'executor-scratch.db'}{suffix}").unlink(missing_ok=True)
    real_events = sum(map(len, real_batches))
    pipelines = [
        make_pipeline(name, rng.randint(185, 205), rng)
        for name in ("triage", "summarise", "extract", "translate", "codegen")
    ]
    owner = Owner(pid=4242, host="worker-1", started="123456")
    cache_pool: list[CacheSource] = []

    # A heap of running jobs keyed by the time of their next commit. A new job starts when one
    # ends, while the events still to come (estimated at EVENTS_PER_JOB a job) fall short of the
    # total. The executor's job starts once half the log is written.
    heap: list[tuple[int, int, Commit, Iterator[Commit]]] = []
    counter = 0
    started_jobs = 0
    produced = 0
    per_job: dict[str, int] = {}  # running job -> events so far
    real_started = False

    def push(gen: Iterator[Commit]) -> None:
        nonlocal counter
        first = next(gen)
        counter += 1
        heapq.heappush(heap, (first.at_us, counter, first, gen))
        per_job[first.job_id] = 0

    def start_job(at_us: int) -> None:
        nonlocal started_jobs
        job_id = f"job_20260105_{started_jobs:05d}_{rng.randrange(16**6):06x}"
        started_jobs += 1
        pipeline = pipelines[rng.randrange(len(pipelines))]
        push(synthetic_job(job_id, pipeline, at_us, rng, cache_pool, owner))

    def real_job(at_us: int) -> Iterator[Commit]:
        """The executor's events, content unchanged, moved onto the simulated clock.

        The offline provider answers at once, so group commit packed many steps into each of
        its transactions; here each step's run of events lands on its own, an LLM call's time
        after the request, so the job's rows interleave with the others' as a real one would.
        """
        t = at_us
        first = True
        for batch in real_batches:
            runs: list[list[StoredEvent]] = []
            for ev in batch:
                if runs and runs[-1][-1].step == ev.step and runs[-1][-1].type != "llm.request":
                    runs[-1].append(ev)
                else:
                    runs.append([ev])
            for run in runs:
                t += (
                    rng.randint(800_000, 25_000_000)
                    if run[0].type == "llm.response"
                    else rng.randint(200, 3_000)
                )
                events = [
                    (ts_of(t + k), ev.level, ev.type, ev.step, ev.data_json)
                    for k, ev in enumerate(run)
                ]
                yield Commit(t, BIG_JOB, events, list(real_blobs.values()) if first else [])
                first = False

    def still_to_come() -> int:
        expected = {j: (real_events if j == BIG_JOB else EVENTS_PER_JOB) for j in per_job}
        pending_real = 0 if real_started else real_events
        return pending_real + sum(max(0, expected[j] - n) for j, n in per_job.items())

    for k in range(CONCURRENT_JOBS):
        start_job(EPOCH_US + k * 7_000_000)

    store = open_store(db)
    versions: dict[str, int] = {}
    in_txn = 0
    conn = store.conn
    conn.execute("BEGIN IMMEDIATE")
    while heap:
        at, _, commit, gen = heapq.heappop(heap)
        if counter % 97 == 0:
            check_envelopes(commit.events)
        expected = versions.get(commit.job_id, 0)
        stored = store.append_txn(conn, commit.job_id, commit.events, expected, commit.blobs)
        versions[commit.job_id] = stored[-1].version
        produced += len(stored)
        per_job[commit.job_id] += len(stored)
        in_txn += len(stored)
        if in_txn >= TXN_EVENTS:
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            in_txn = 0
        nxt = next(gen, None)
        if nxt is not None:
            counter += 1
            heapq.heappush(heap, (nxt.at_us, counter, nxt, gen))
        else:
            del per_job[commit.job_id]
            if produced + still_to_come() + EVENTS_PER_JOB // 2 < total_events:
                start_job(at + rng.randint(1_000_000, 30_000_000))
        if not real_started and produced >= (total_events - real_events) // 2:
            real_started = True
            push(real_job(at))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()

    checked = verify_chains(db)
    conn = sqlite3.connect(db)
    total, jobs = conn.execute("SELECT count(*), count(DISTINCT job_id) FROM events").fetchone()
    big_version, first_seq, last_seq = conn.execute(
        "SELECT max(version), min(seq), max(seq) FROM events WHERE job_id = ?", (BIG_JOB,)
    ).fetchone()
    types = dict(conn.execute("SELECT type, count(*) FROM events GROUP BY type ORDER BY 2 DESC"))
    blobs, blob_bytes = conn.execute("SELECT count(*), sum(size) FROM blobs").fetchone()
    conn.close()
    assert checked == total
    return {
        "key": home.name,
        "events": total,
        "jobs": jobs,
        "big_job": BIG_JOB,
        "big_job_events": big_version,
        "big_job_seq_span": [first_seq, last_seq],
        "event_types": types,
        "blobs": blobs,
        "blob_bytes": blob_bytes,
        "file_bytes": db.stat().st_size,
        "pipeline_path": str(home / "resume.toml"),
    }


def check_envelopes(events: list[Prepared]) -> None:
    """What NewEvent would refuse is refused here too: type, level, timestamp, data round trip."""
    for ts, level, type_, step, data_json in events:
        event = NewEvent(
            type=type_, data=parse_data(type_, data_json), step=step, level=level, ts=ts
        )
        assert event.data_json() == data_json, (type_, data_json)


def verify_chains(db: Path) -> int:
    """Recompute every job's hash chain from genesis; raises on the first bad link."""
    conn = sqlite3.connect(db)
    last: dict[str, tuple[int, str]] = {}
    n = 0
    for row in conn.execute(
        "SELECT job_id, version, ts, level, type, step, data, prev_hash, hash FROM events ORDER BY seq"
    ):
        job_id, version, ts, level, type_, step, data, prev_hash, h = row
        before_v, before_h = last.get(job_id, (0, GENESIS_HASH))
        if version != before_v + 1 or prev_hash != before_h:
            raise AssertionError(f"{job_id} v{version}: broken link")
        if chain_hash(prev_hash, job_id, version, ts, level, type_, step, data) != h:
            raise AssertionError(f"{job_id} v{version}: wrong hash")
        last[job_id] = (version, h)
        n += 1
    conn.close()
    return n
