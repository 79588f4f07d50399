"""Hypothesis strategies: plausible event histories for one or several jobs."""

from __future__ import annotations

import hashlib

from hypothesis import strategies as st

from eventstore.events import (
    CacheHit,
    CacheInvalidated,
    CacheMiss,
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
)

STEP_NAMES = ["architect", "builder", "docs", "qa", "s_1", "x-2"]
KEYS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(6)]
SHAS = [hashlib.sha256(f"blob{i}".encode()).hexdigest() for i in range(6)]
OWNER = Owner(pid=1, host="h", started="1")
text = st.text(max_size=40)
small = st.integers(min_value=0, max_value=10_000)
seconds = st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False)


def job_created(steps: list[str]) -> NewEvent:
    return NewEvent.of(
        JobCreated(
            pipeline="p",
            pipeline_fingerprint="f" * 64,
            pipeline_sha256=SHAS[0],
            inputs={"idea": "x"},
            steps={s: [] for s in steps},
            workspace="/tmp/ws",
        )
    )


@st.composite
def step_event(draw: st.DrawFn, steps: list[str]) -> NewEvent:
    step = draw(st.sampled_from(steps))
    key = draw(st.sampled_from(KEYS))
    sha = draw(st.sampled_from(SHAS))
    attempt = draw(st.integers(min_value=1, max_value=4))
    data = draw(
        st.sampled_from(
            [
                "started",
                "succeeded",
                "failed",
                "skipped",
                "retrying",
                "request",
                "response",
                "bad_response",
                "hit",
                "miss",
                "invalidated",
                "file",
            ]
        )  # fmt: skip
    )
    made = {
        "started": lambda: StepStarted(attempt=attempt, fingerprint="f" * 64),
        "succeeded": lambda: StepSucceeded(
            output_sha256=sha, output="text", cache_hit=draw(st.booleans()), cache_key=key,
            duration_s=draw(seconds), fingerprint="f" * 64,
        ),
        "failed": lambda: StepFailed(error=draw(text), error_type="x", attempt=attempt, duration_s=draw(seconds)),
        "skipped": lambda: StepSkipped(reason="done", fingerprint="f" * 64, output_sha256=sha),
        "retrying": lambda: StepRetrying(attempt=attempt, delay_s=draw(seconds), error=draw(text)),
        "request": lambda: LLMRequested(
            provider="p", kind="offline", model="m", prompt_tokens=draw(small), attempt=attempt,
            cache_key=key, prompt_sha256=sha,
        ),
        "response": lambda: LLMResponded(
            provider="p", model="m", duration_s=draw(seconds), tokens_in=draw(small),
            tokens_out=draw(small), success=True, attempt=attempt, cache_key=key, response_sha256=sha,
        ),
        "bad_response": lambda: LLMResponded(
            provider="p", model="m", duration_s=draw(seconds), success=False, attempt=attempt,
            cache_key=key, status=503, error=draw(text), error_class="http_error",
        ),
        "hit": lambda: CacheHit(cache_key=key, response_sha256=sha, origin_job="other", origin_step=step),
        "miss": lambda: CacheMiss(cache_key=key, parts={"input": sha}),
        "invalidated": lambda: CacheInvalidated(
            cache_key=key, reason=draw(text), response_sha256=draw(st.none() | st.just(sha))
        ),
        "file": lambda: FileWritten(
            path=draw(st.sampled_from(["a.py", "b/c.txt", "ü.md"])), sha256=sha, wrote=draw(st.booleans()),
            reason=draw(st.sampled_from(["created", "updated", "unchanged"])), size=draw(small),
        ),
    }[data]()  # fmt: skip
    return NewEvent.of(made, step=step)


JOB_EVENTS = [
    lambda: NewEvent.of(JobStarted(owner=OWNER)),
    lambda: NewEvent.of(
        JobResumed(owner=OWNER, pipeline_fingerprint="g" * 64, changed_steps=["qa"])
    ),
    lambda: NewEvent.of(JobSucceeded(duration_s=1.5)),
    lambda: NewEvent.of(JobFailed(error="boom", failed_steps=["qa"])),
    lambda: NewEvent.of(JobInterrupted(signal="SIGINT")),
]


@st.composite
def job_history(draw: st.DrawFn, max_batches: int = 8) -> list[list[NewEvent]]:
    """Batches of events for one job: job.created first, then step and job events."""
    steps = draw(st.lists(st.sampled_from(STEP_NAMES), min_size=1, max_size=4, unique=True))
    batches = [[job_created(steps), NewEvent.of(JobStarted(owner=OWNER))]]
    for _ in range(draw(st.integers(min_value=0, max_value=max_batches))):
        batch = draw(st.lists(step_event(steps), min_size=1, max_size=5))
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            batch.append(draw(st.sampled_from(JOB_EVENTS))())
        batches.append(batch)
    return batches


@st.composite
def interleaved_jobs(draw: st.DrawFn) -> list[tuple[str, list[NewEvent]]]:
    """(job_id, batch) pairs for several jobs, in an order where each job starts with job.created."""
    histories = {
        f"job{i}": draw(job_history(max_batches=5)) for i in range(draw(st.integers(1, 3)))
    }
    cursors = {job: 0 for job in histories}
    order: list[tuple[str, list[NewEvent]]] = []
    while cursors:
        job = draw(st.sampled_from(sorted(cursors)))
        order.append((job, histories[job][cursors[job]]))
        cursors[job] += 1
        if cursors[job] == len(histories[job]):
            del cursors[job]
    return order
