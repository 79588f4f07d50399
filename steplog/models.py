"""The typed results of the Python API (`steplog.Steplog`). Each is a frozen pydantic model
built from what the log holds; `model_dump(mode="json")` of a JobStatus is exactly the document
`steplog status --json` prints, and the same holds for the other verbs' --json output.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from steplog.errors import JobFailed


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepStatus(_Result):
    """One step as the manifest fold sees it (an entry of `status --json`'s "steps")."""

    name: str
    needs: list[str]
    status: str = Field(description="pending, running, waiting, succeeded, failed or skipped")
    attempts: int
    cache_hit: bool | None = Field(description="the last attempt's: hit, miss, or not yet known")
    cache_key: str | None
    fingerprint: str | None = Field(description="sha256 of the step's definition")
    output_sha256: str | None = Field(description="the output blob of the last success")
    started_ts: str | None
    finished_ts: str | None
    duration_s: float | None
    error: str | None
    llm_calls: int = Field(description="calls made (llm.request)")
    llm_unanswered: int = Field(description="calls no response answered: in flight, or abandoned")
    tokens_in: int
    tokens_out: int
    files: list[str] = Field(description="workspace paths the step wrote, first write first")
    cost: float = Field(description="USD of its priced calls")
    unpriced_calls: int = Field(description="answered calls whose model has no price")


class JobStatus(_Result):
    """A job's manifest, folded from its events: what `steplog status JOB --json` prints."""

    job_id: str
    status: str = Field(description="created, running, succeeded, failed, cancelled or interrupted")
    pipeline: str | None
    pipeline_path: str | None
    pipeline_fingerprint: str | None
    pipeline_sha256: str | None
    snapshot_sha256: str | None
    inputs: dict[str, str]
    workspace: str | None
    batch: str | None = Field(
        default=None, description="the batch it was created in (run --inputs), or None"
    )
    created_ts: str | None
    started_ts: str | None
    finished_ts: str | None
    updated_ts: str | None
    last_error: str | None
    owner: dict[str, Any] | None = Field(description="pid, host … of the process running it")
    runs: int
    forked_from: dict[str, Any] | None
    steps: dict[str, StepStatus]
    version: int = Field(description="the number of the job's last event")
    last_seq: int
    llm_calls: int = Field(description="calls made (llm.request): a paid API may bill each")
    llm_answered: int = Field(description="calls answered (llm.response with success)")
    llm_failures: int = Field(description="calls that failed (llm.response without success)")
    llm_unanswered: int = Field(
        description="calls no response answered: in flight while the job runs, else abandoned "
        "(the process died mid-call or the call was cut off)"
    )
    tokens_in: int
    tokens_out: int
    cache_hits: int
    cache_misses: int
    files_written: int
    cost: float = Field(description="USD spent: the sum of the job's llm.response costs")
    unpriced_calls: int
    tokens_reserved: int = Field(
        description="tokens held against the budget by calls in flight (0 once the run ends)"
    )
    cost_reserved: float = Field(description="USD held against the budget by calls in flight")
    budget_exceeded: dict[str, Any] | None
    elapsed_s: float | None
    completed_steps: list[str]
    pending_steps: list[str]
    owner_alive: bool | None = Field(
        default=None, description="while running: is the owner process alive (None: unknown)"
    )


class StepResult(_Result):
    """One step of a finished (or stopped) run, with its output."""

    name: str
    status: str
    attempts: int
    cache_hit: bool | None
    output: Any = Field(
        default=None,
        description='the step\'s output once it succeeded: the text (output = "text"), the '
        'parsed value ("json"), or {path: content} of the files it wrote ("files")',
    )
    output_sha256: str | None
    files: list[str]
    tokens_in: int
    tokens_out: int
    cost: float
    error: str | None


class JobResult(_Result):
    """What `Steplog.run` and `Steplog.resume` return, whatever the job's outcome."""

    job_id: str
    status: str
    pipeline: str | None
    workspace: str | None
    steps: dict[str, StepResult]
    llm_calls: int
    cache_hits: int
    tokens_in: int
    tokens_out: int
    cost: float
    error: str | None = Field(description="the last error, when the job failed")

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def raise_for_status(self) -> JobResult:
        """Raise JobFailed unless the job succeeded; return self so calls can chain."""
        if not self.succeeded:
            why = f": {self.error}" if self.error else ""
            raise JobFailed(f"job {self.job_id} {self.status}{why}", self)
        return self


class BatchResult(_Result):
    """What `Steplog.run_batch` returns: the batch's jobs as the log holds them at the end."""

    batch: str
    jobs: dict[str, JobResult] = Field(description="job id -> its result, in the file's order")
    succeeded: list[str]
    failed: list[str]
    not_started: list[str] = Field(
        description="jobs still `created` (the batch was stopped first): resume runs each"
    )
    interrupted: list[str] = Field(description="jobs a signal or a cancellation stopped")
    taken: list[str] = Field(
        default_factory=list, description="jobs another process started or appended to first"
    )
    signal: str | None = Field(default=None, description="the signal that stopped the batch")
    llm_calls: int
    tokens: int
    cost: float

    @property
    def all_succeeded(self) -> bool:
        return len(self.succeeded) == len(self.jobs)


class JobSummary(_Result):
    """One row of `steplog jobs`."""

    job_id: str
    pipeline: str | None
    status: str
    created_ts: str | None
    updated_ts: str | None
    batch: str | None = Field(default=None, description="the batch it was created in, or None")


class Event(_Result):
    """One event of the log, in the predecessor's envelope plus its place in the log."""

    seq: int = Field(description="global position in the log")
    version: int = Field(description="1, 2, 3 … within the job")
    ts: str
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    job_id: str
    type: str
    step: str | None
    data: dict[str, Any]


class CacheEntry(_Result):
    """Which committed answer serves a cache key, and who first paid for it."""

    cache_key: str
    response_sha256: str
    origin_job: str
    origin_step: str | None
    seq: int = Field(description="the event that put it in the index")
    tokens_in: int
    tokens_out: int


class ReplayState(_Result):
    """A job as it was at one point of its log (`steplog replay JOB --until POINT --json`)."""

    job_id: str
    until: str
    version: int
    manifest: JobStatus
    completed_steps: list[str]
    pending_steps: list[str]
    cache_index: dict[str, CacheEntry]
    events: list[Event]


class ForkResult(_Result):
    """A new job whose history is the source's up to a point (`replay --fork`)."""

    job_id: str
    source_job: str
    until_version: int
    events_copied: int = Field(description="events copied from the source (job.forked aside)")
    workspace: str
    files_restored: list[str]
    files_missing: list[str] = Field(
        description="written by the prefix, but the log does not hold their content"
    )


class StepPlan(_Result):
    step: str
    action: str = Field(description="hit, miss, reuse (a resume skips it) or failure predicted")
    reason: str
    cache_key: str | None
    changed: list[dict[str, Any]]
    depends_on: list[str]
    previous_key: str | None
    previous_job: str | None
    origin_job: str | None


class PlanReport(_Result):
    """What a run (or a resume of `job`) would do, predicted without calling a provider."""

    pipeline: str
    job: str | None
    database_exists: bool = Field(
        description="False: the database is not there yet; planned against an empty history"
    )
    summary: dict[str, int]
    refusals: list[str] = Field(
        description="why run (or resume) would be refused up front: keys, breakers, budget"
    )
    steps: list[StepPlan]

    @property
    def predicts_failure(self) -> bool:
        """A step will fail, or the run would be refused (`steplog plan` exits 1)."""
        return bool(self.refusals) or self.summary.get("fail", 0) > 0


class Problem(_Result):
    check: str = Field(description="chain, streams, schema, integrity, projection or blob")
    message: str
    job_id: str | None
    version: int | None
    seq: int | None


class VerifyReport(_Result):
    """`steplog verify`: hash chains, append-only triggers, schema, projections, blobs."""

    ok: bool
    job: str | None = Field(
        default=None, description="the job checked alone (verify JOB); None: the whole database"
    )
    events: int
    jobs: int
    blobs: int
    schema_version: int
    projections: list[str]
    problems: list[Problem]
    more_problems: int = Field(description="problems past the per-check limit, counted only")


class ExportResult(_Result):
    job_id: str
    path: str
    events: int
    blobs: int
    missing_blobs: list[str] = Field(description="hashes the events name with no blob here")


class ImportResult(_Result):
    job_id: str
    source: str = Field(description="steplog export or predecessor events.jsonl")
    events: int
    blobs: int


__all__ = [
    "CacheEntry",
    "Event",
    "ExportResult",
    "ForkResult",
    "ImportResult",
    "JobResult",
    "JobStatus",
    "JobSummary",
    "PlanReport",
    "Problem",
    "ReplayState",
    "StepPlan",
    "StepResult",
    "StepStatus",
    "VerifyReport",
]
