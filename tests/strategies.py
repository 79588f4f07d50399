"""Hypothesis strategies for plausible event logs, and the helpers the log properties share.

A job's history starts with `job.created` (a random set of steps with their needs), then runs of
the job (`job.started` / `job.resumed`), each made of step episodes the way the runner writes
them (step.started, cache.hit or cache.miss + llm.request + llm.response, file.written,
step.succeeded / step.failed / step.retrying, cache.invalidated, step.skipped on resume), an
optional ending (succeeded, failed, cancelled, interrupted, or none: the process died), and the
odd provider circuit event. Episodes may be cut short (a crash mid-step). Cache keys and blobs
come from a small pool shared by every job of an example, so first-wins, invalidation and
blob de-duplication across jobs are exercised. Timestamps never go backwards within a job and
use 0, 3, 6 or 9 fractional digits. The flat history is cut into append batches at random.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

from hypothesis import strategies as st

from steplog.eventstore.events import (
    LEVELS,
    CacheHit,
    CacheInvalidated,
    CacheMiss,
    CircuitClosed,
    CircuitOpened,
    EventData,
    FileWritten,
    JobCancelled,
    JobCreated,
    JobFailed,
    JobForked,
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
)
from steplog.eventstore.record import GENESIS_HASH, StoredEvent, chain_hash
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections.store import open_store

# -- building blocks ----------------------------------------------------------------------------

# The names the CLI accepts for jobs and steps (executor.pipeline.NAME_PATTERN), kept short.
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,11}", fullmatch=True)
sha256_hex = st.binary(min_size=1, max_size=16).map(lambda b: hashlib.sha256(b).hexdigest())
texts = st.text(max_size=24)  # any Unicode but surrogates, NUL and control characters included
seconds = st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False)
tokens = st.integers(min_value=0, max_value=1_000_000)
dollars = st.integers(min_value=0, max_value=10**7).map(lambda n: n / 1e6)  # USD, to the micro
attempts = st.integers(min_value=1, max_value=5)
owners = st.builds(
    Owner, pid=st.integers(1, 4_000_000), host=names, started=st.text(min_size=1, max_size=12)
)
# an llm.request's owner: no NUL, which the stores refuse in the events PostgreSQL indexes
request_owners = st.builds(
    Owner,
    pid=st.integers(1, 4_000_000),
    host=names,
    started=st.text(min_size=1, max_size=12).filter(lambda t: "\x00" not in t),
)

# None: an offline provider (no endpoint); two endpoints so that calls in flight share one
endpoints = st.none() | st.sampled_from(
    ["openai http://127.0.0.1:1/v1", "ollama http://127.0.0.1:2"]
)


class Batch(NamedTuple):
    """One append: these events to this job, with these blobs."""

    job_id: str
    events: list[NewEvent]
    blobs: list[bytes]


@dataclass
class Pool:
    """What the jobs of one example share: cache keys, blob contents (by sha), fingerprints."""

    keys: list[str]
    blobs: list[bytes]
    fingerprints: list[str]

    @property
    def shas(self) -> list[str]:
        return [hashlib.sha256(b).hexdigest() for b in self.blobs]


pools = st.builds(
    Pool,
    keys=st.lists(sha256_hex, min_size=1, max_size=5, unique=True),
    blobs=st.lists(st.binary(max_size=48), min_size=1, max_size=4, unique=True),
    fingerprints=st.lists(sha256_hex, min_size=1, max_size=3, unique=True),
)


@dataclass
class Clock:
    """Timestamps for one job: never backwards, sometimes equal, in one of four precisions."""

    now: datetime
    digits: int  # fractional-second digits: 0, 3, 6 or 9

    def tick(self, draw: st.DrawFn) -> str:
        self.now += timedelta(microseconds=draw(st.integers(0, 3_000_000)))
        base = self.now.strftime("%Y-%m-%dT%H:%M:%S")
        micro = f"{self.now.microsecond:06d}"
        frac = {0: "", 3: "." + micro[:3], 6: "." + micro, 9: "." + micro + "000"}[self.digits]
        return base + frac + "Z"


clocks = st.builds(
    Clock,
    now=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
    ),
    digits=st.sampled_from([0, 3, 6, 9]),
)


@dataclass
class _Job:
    """Generation state of one job's history."""

    draw: st.DrawFn
    pool: Pool
    clock: Clock
    steps: list[str]
    events: list[NewEvent] = field(default_factory=list)

    def emit(self, data: EventData, step: str | None = None) -> None:
        draw = self.draw
        # Mostly the type's own level; now and then an explicit other one (NewEvent allows it).
        level = data.LEVEL if draw(st.integers(0, 9)) else draw(st.sampled_from(LEVELS))
        self.events.append(
            NewEvent(type=data.TYPE, data=data, step=step, level=level, ts=self.clock.tick(draw))
        )

    def sha(self) -> str:
        return self.draw(st.sampled_from(self.pool.shas))

    def key(self) -> str:
        return self.draw(st.sampled_from(self.pool.keys))

    def fingerprint(self) -> str:
        return self.draw(st.sampled_from(self.pool.fingerprints))


def _parts(draw: st.DrawFn) -> dict[str, str]:
    return draw(st.dictionaries(st.sampled_from(["provider", "step", "input", "code"]), sha256_hex))


def _episode(job: _Job, step: str, attempt: int, other_jobs: list[str]) -> bool:
    """One attempt of one step. Returns False when the attempt ended in a retry."""
    draw = job.draw
    fp = job.fingerprint()
    job.emit(StepStarted(attempt=attempt, fingerprint=fp), step)
    key = job.key()
    way = draw(st.sampled_from(["hit", "call", "call", "template_error"]))
    if way == "template_error":
        job.emit(
            StepFailed(
                error=draw(texts),
                error_type="template_error",
                attempt=attempt,
                duration_s=draw(seconds),
            ),
            step,
        )
        return True
    if way == "hit":
        sha = job.sha()
        job.emit(
            CacheHit(
                cache_key=key,
                response_sha256=sha,
                origin_job=draw(st.sampled_from(other_jobs)),
                origin_step=draw(st.none() | names),
                tokens_saved=draw(tokens),
                parts=_parts(draw),
            ),
            step,
        )
        cache_hit = True
        if draw(st.integers(0, 5)) == 0:  # a served answer the step could not use
            job.emit(CacheInvalidated(cache_key=key, reason=draw(texts), response_sha256=sha), step)
            job.emit(
                StepFailed(
                    error=draw(texts),
                    error_type="bad_output",
                    attempt=attempt,
                    duration_s=draw(seconds),
                ),
                step,
            )
            return True
    else:
        job.emit(CacheMiss(cache_key=key, parts=_parts(draw)), step)
        provider, model = draw(names), draw(names)
        endpoint = draw(endpoints)
        job.emit(
            LLMRequested(
                provider=provider,
                kind=draw(st.sampled_from(["offline", "openai"])),
                model=model,
                prompt_tokens=draw(tokens),
                attempt=attempt,
                cache_key=key,
                prompt_sha256=job.sha(),
                tokens_reserved=draw(st.none() | tokens),  # None: no [budget], or before schema 5
                cost_reserved=draw(st.none() | dollars),
                endpoint=endpoint,
                owner=draw(st.none() | request_owners)
                if endpoint
                else None,  # None: before schema 6
            ),
            step,
        )
        if draw(st.integers(0, 7)) == 0:  # the process died mid-call: no response, ever
            return False  # (the step is started again, as a resume does)
        success = draw(st.booleans())
        if success:
            sha = job.sha() if draw(st.integers(0, 9)) else None  # an empty answer: no blob
            job.emit(
                LLMResponded(
                    provider=provider,
                    model=model,
                    duration_s=draw(seconds),
                    tokens_in=draw(tokens),
                    tokens_out=draw(tokens),
                    success=True,
                    attempt=attempt,
                    cache_key=key,
                    response_sha256=sha,
                    finish_reason=draw(st.none() | st.sampled_from(["stop", "length"])),
                    status=draw(st.none() | st.just(200)),
                    cost=draw(st.none() | dollars),  # None: the model has no price
                    endpoint=endpoint,
                ),
                step,
            )
        else:
            job.emit(
                LLMResponded(
                    provider=provider,
                    model=model,
                    duration_s=draw(seconds),
                    success=False,
                    attempt=attempt,
                    cache_key=key,
                    status=draw(st.none() | st.sampled_from([429, 500, 503])),
                    error=draw(texts),
                    error_class=draw(st.sampled_from(["http_error", "timeout", "rate_limited"])),
                    cost=draw(st.none() | st.just(0.0) | dollars),  # a cut-off answer is paid for
                    endpoint=endpoint,
                ),
                step,
            )
        if success and draw(st.integers(0, 4)) == 0:  # an answer the step could not use
            refused = draw(st.sampled_from([sha, sha, None]))  # None: written before schema 3
            job.emit(
                CacheInvalidated(cache_key=key, reason=draw(texts), response_sha256=refused), step
            )
            success = False
        if not success:
            if draw(st.booleans()):
                job.emit(
                    StepRetrying(attempt=attempt, delay_s=draw(seconds), error=draw(texts)), step
                )
                return False
            job.emit(
                StepFailed(
                    error=draw(texts),
                    error_type=draw(names),
                    attempt=attempt,
                    duration_s=draw(seconds),
                ),
                step,
            )
            return True
        cache_hit = False
    for _ in range(draw(st.integers(0, 2))):
        job.emit(
            FileWritten(
                path=draw(st.sampled_from(["a.py", "b/c.txt", "ü/ß.md", "x y"])),
                sha256=job.sha(),
                wrote=draw(st.booleans()),
                reason=draw(
                    st.sampled_from(["created", "updated", "unchanged", "modified_outside"])
                ),
                size=draw(tokens),
            ),
            step,
        )
    job.emit(
        StepSucceeded(
            output_sha256=job.sha(),
            output=draw(st.sampled_from(["text", "json", "files"])),
            cache_hit=cache_hit,
            cache_key=key,
            duration_s=draw(seconds),
            fingerprint=fp,
        ),
        step,
    )
    return True


@st.composite
def job_events(draw: st.DrawFn, pool: Pool, other_jobs: Sequence[str] = ("elsewhere",)):
    """The flat, plausible history of one job (see the module docstring)."""
    steps = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    needs = {
        s: draw(st.lists(st.sampled_from(steps[:i]), unique=True)) if i else []
        for i, s in enumerate(steps)
    }
    job = _Job(draw, pool, draw(clocks), steps)
    job.emit(
        JobCreated(
            pipeline=draw(texts.filter(lambda t: "\x00" not in t)),  # JobCreated refuses NUL
            pipeline_path=draw(st.none() | texts),
            pipeline_fingerprint=job.fingerprint(),
            pipeline_sha256=job.sha(),
            snapshot_sha256=draw(st.none() | st.sampled_from(pool.shas)),
            inputs=draw(st.dictionaries(names, texts, max_size=3)),
            steps=needs,
            workspace=draw(texts),
            batch=draw(st.none() | names),
        )
    )
    if draw(st.integers(0, 7)) == 0:
        job.emit(JobForked(source_job=draw(names), until_version=draw(st.integers(1, 99))))
    attempt = {s: 0 for s in steps}
    for run in range(draw(st.integers(0, 3))):
        owner = draw(owners)
        if run == 0:
            job.emit(JobStarted(owner=owner))
        else:
            job.emit(
                JobResumed(
                    owner=owner,
                    pipeline_fingerprint=job.fingerprint(),
                    changed_steps=draw(st.lists(st.sampled_from(steps), unique=True)),
                    forced=draw(st.booleans()),
                ),
            )
        for step in draw(st.lists(st.sampled_from(steps), max_size=4)):
            if run and draw(st.integers(0, 3)) == 0:
                job.emit(
                    StepSkipped(
                        reason="completed in an earlier run",
                        fingerprint=job.fingerprint(),
                        output_sha256=job.sha(),
                    ),
                    step,
                )
                continue
            for _ in range(3):
                attempt[step] += 1
                if _episode(job, step, attempt[step], list(other_jobs)):
                    break
            if draw(st.integers(0, 9)) == 0:
                provider = draw(names)
                job.emit(
                    CircuitOpened(
                        provider=provider,
                        failures=draw(st.integers(1, 9)),
                        retry_at=job.clock.tick(draw),
                    )
                )
                job.emit(CircuitClosed(provider=provider))
        ending = draw(st.sampled_from(["none", "succeeded", "failed", "cancelled", "interrupted"]))
        if ending == "succeeded":
            job.emit(JobSucceeded(duration_s=draw(seconds)))
        elif ending == "failed":
            job.emit(
                JobFailed(
                    error=draw(texts),
                    failed_steps=draw(st.lists(st.sampled_from(steps), unique=True)),
                    duration_s=draw(st.none() | seconds),
                ),
            )
        elif ending == "cancelled":
            job.emit(JobCancelled(reason=draw(texts)))
        elif ending == "interrupted":
            job.emit(JobInterrupted(signal=draw(st.sampled_from(["SIGINT", "SIGTERM"]))))
    # A crash can cut the history anywhere after the opening event.
    cut = draw(st.integers(1, len(job.events))) if draw(st.integers(0, 4)) == 0 else None
    return job.events[:cut]


def _cut(draw: st.DrawFn, events: list[NewEvent]) -> list[list[NewEvent]]:
    """Consecutive non-empty batches; job.created opens the first."""
    inner = range(1, len(events))
    cuts = sorted(draw(st.sets(st.sampled_from(inner), max_size=12))) if inner else []
    bounds = [0, *cuts, len(events)]
    return [events[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def job_batches(draw: st.DrawFn, pool: Pool | None = None, job_id: str | None = None):
    """One job's history as append batches: list[Batch]."""
    pool = pool or draw(pools)
    job_id = job_id or draw(names)
    events = draw(job_events(pool))
    return [
        Batch(job_id, batch, draw(st.lists(st.sampled_from(pool.blobs), max_size=3)))
        for batch in _cut(draw, events)
    ]


@st.composite
def interleaved_batches(draw: st.DrawFn, max_jobs: int = 3):
    """Batches of 1..max_jobs jobs sharing one pool, interleaved; each job's stay in order."""
    pool = draw(pools)
    job_ids = draw(st.lists(names, min_size=1, max_size=max_jobs, unique=True))
    queues: dict[str, list[Batch]] = {}
    for job_id in job_ids:
        others = [j for j in job_ids if j != job_id] or ["elsewhere"]
        events = draw(job_events(pool, others))
        queues[job_id] = [
            Batch(job_id, batch, draw(st.lists(st.sampled_from(pool.blobs), max_size=3)))
            for batch in _cut(draw, events)
        ]
    order: list[Batch] = []
    while queues:
        job_id = draw(st.sampled_from(sorted(queues)))
        order.append(queues[job_id].pop(0))
        if not queues[job_id]:
            del queues[job_id]
    return order


# -- helpers for the properties -----------------------------------------------------------------


def job_created(steps: list[str]) -> NewEvent:
    """A job.created for a pipeline of `steps` with no dependencies."""
    return NewEvent.of(
        JobCreated(
            pipeline="p",
            pipeline_fingerprint="f" * 64,
            pipeline_sha256=hashlib.sha256(b"pipeline").hexdigest(),
            inputs={"idea": "x"},
            steps={s: [] for s in steps},
            workspace="/tmp/ws",
        )
    )


@contextmanager
def fresh_store() -> Iterator[SQLiteEventStore]:
    """A store with the projection tables on a new SQLite file (one per hypothesis example)."""
    with tempfile.TemporaryDirectory(prefix="steplog-test-") as tmp:
        store = open_store(Path(tmp) / "steplog.db")
        try:
            yield store
        finally:
            store.close()


def append_batches(store: SQLiteEventStore, batches: Iterable[Batch]) -> list[StoredEvent]:
    """Append each batch with the expected version it must find; returns what append returned."""
    versions: dict[str, int] = {}
    out: list[StoredEvent] = []
    for batch in batches:
        stored = store.append(
            batch.job_id,
            batch.events,
            expected_version=versions.get(batch.job_id, 0),
            blobs=batch.blobs,
        )
        versions[batch.job_id] = stored[-1].version
        out.extend(stored)
    return out


def by_job(items: Iterable[Batch]) -> dict[str, list[NewEvent]]:
    """Each job's events in append order."""
    jobs: dict[str, list[NewEvent]] = {}
    for batch in items:
        jobs.setdefault(batch.job_id, []).extend(batch.events)
    return jobs


def assert_chain(events: Sequence[StoredEvent]) -> None:
    """One job's events: versions 1..n and every hash recomputes from its predecessor."""
    prev = GENESIS_HASH
    for n, ev in enumerate(events, start=1):
        assert ev.version == n
        assert ev.prev_hash == prev, f"event {n}: prev_hash does not link to event {n - 1}"
        expected = chain_hash(
            ev.prev_hash, ev.job_id, ev.version, ev.ts, ev.level, ev.type, ev.step, ev.data_json
        )
        assert ev.hash == expected, f"event {n}: hash does not match its fields"
        prev = ev.hash


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order: 'nothing changed' is dump before == after."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
