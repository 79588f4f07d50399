"""The event vocabulary: one pydantic model per event type, keyed by its dotted name.

Field names follow the file-based predecessor (llm.request {provider, model, prompt_tokens},
llm.response {provider, duration_s, tokens_in, tokens_out, success}, file.written {path, sha256,
wrote, reason}, cache.hit / cache.miss {cache_key}); fields are added, never renamed.
Unknown fields are refused so a typo cannot slip into the permanent log.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dt_time
from typing import Any, ClassVar, Iterable, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticSerializationError

from steplog.errors import Rejected
from steplog.words import error_path

Level = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LEVELS: tuple[Level, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")

Sha256 = str  # 64 lowercase hex digits; validated where it enters (blobs are hashed by the store)


class EventData(BaseModel):
    """Base of every event's `data`. Subclasses set TYPE (and LEVEL when not INFO)."""

    # NaN/inf would be dumped as null and no longer validate when read back: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    TYPE: ClassVar[str]
    LEVEL: ClassVar[Level] = "INFO"


class Owner(BaseModel):
    """The process running a job, so a second process can tell whether it is still alive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pid: int
    host: str
    started: str = Field(description="the process's start marker (boot-relative), guards PID reuse")
    worker: str | None = Field(
        default=None, description="its lease (stream worker:<id>); None in events before leases"
    )


# -- job ---------------------------------------------------------------------------------------


class JobCreated(EventData):
    TYPE = "job.created"
    pipeline: str
    pipeline_path: str | None = None
    pipeline_fingerprint: str
    pipeline_sha256: Sha256 = Field(description="blob holding the pipeline file as it was")
    snapshot_sha256: Sha256 | None = Field(
        default=None, description="blob holding the validated pipeline (Pipeline.snapshot)"
    )
    inputs: dict[str, str] = Field(default_factory=dict)
    steps: dict[str, list[str]] = Field(description="step -> needs, in file order")
    workspace: str
    batch: str | None = Field(
        default=None, description="the batch the job was created in (run/submit --inputs)"
    )

    @field_validator("pipeline", "batch")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # the `jobs` table holds it, and PostgreSQL's text cannot: refused alike on both stores
        if value is not None and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value

    @model_serializer(mode="wrap")
    def _without_no_batch(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a job outside any batch is written as before the field existed: same bytes, same hash
        data: dict[str, Any] = handler(self)
        if data.get("batch", "") is None:
            del data["batch"]
        return data


class JobStarted(EventData):
    TYPE = "job.started"
    owner: Owner


class JobResumed(EventData):
    TYPE = "job.resumed"
    owner: Owner
    pipeline_fingerprint: str
    changed_steps: list[str] = Field(default_factory=list)
    forced: bool = False
    taken_over_from: str | None = Field(
        default=None, description="the worker whose lease had expired when this one claimed it"
    )


class JobSucceeded(EventData):
    TYPE = "job.succeeded"
    duration_s: float


class JobFailed(EventData):
    TYPE = "job.failed"
    LEVEL = "ERROR"
    error: str
    failed_steps: list[str] = Field(default_factory=list)
    duration_s: float | None = None


class JobCancelled(EventData):
    TYPE = "job.cancelled"
    LEVEL = "WARNING"
    reason: str = ""


class JobInterrupted(EventData):
    TYPE = "job.interrupted"
    LEVEL = "WARNING"
    signal: str
    # How the stop went (absent when the signal came before the run's own handlers were up)
    grace_s: float | None = Field(default=None, ge=0, description="the grace period allowed")
    calls_finished: int | None = Field(
        default=None, ge=0, description="calls in flight at the signal that finished in grace"
    )
    calls_cancelled: int | None = Field(
        default=None, ge=0, description="calls cut off by the grace deadline or a second signal"
    )
    second_signal: str | None = Field(
        default=None, description="a second signal that cut the grace short"
    )


class JobRequeued(EventData):
    """The job's worker stopped before the job ended: it is queued again for any worker."""

    TYPE = "job.requeued"
    worker: str = Field(description="the worker that gave it back")
    reason: str


class JobForked(EventData):
    TYPE = "job.forked"
    source_job: str
    until_version: int
    point: str | None = Field(default=None, description="the --until POINT as given")
    source_hash: str | None = Field(
        default=None, description="hash of the source's event at until_version (links the chains)"
    )
    source_version: int | None = Field(default=None, description="source's length when forked")
    workspace: str | None = Field(default=None, description="the fork's own workspace")
    files_restored: int = 0
    files_missing: list[str] = Field(default_factory=list)


# -- step --------------------------------------------------------------------------------------


class StepStarted(EventData):
    TYPE = "step.started"
    attempt: int = Field(ge=1)
    fingerprint: str


class StepSucceeded(EventData):
    TYPE = "step.succeeded"
    output_sha256: Sha256
    output: Literal["text", "json", "files"]
    cache_hit: bool
    cache_key: str
    duration_s: float
    fingerprint: str


class StepFailed(EventData):
    TYPE = "step.failed"
    LEVEL = "ERROR"
    error: str
    error_type: str
    attempt: int = Field(ge=1)
    duration_s: float


class StepSkipped(EventData):
    TYPE = "step.skipped"
    reason: str
    fingerprint: str
    output_sha256: Sha256


class StepRetrying(EventData):
    TYPE = "step.retrying"
    LEVEL = "WARNING"
    attempt: int = Field(ge=1, description="the attempt that failed")
    delay_s: float = Field(ge=0)
    error: str
    retry_after_s: float | None = Field(
        default=None, description="what the server's Retry-After asked for, before the cap"
    )


# -- llm and cache -----------------------------------------------------------------------------


class LLMRequested(EventData):
    TYPE = "llm.request"
    provider: str
    kind: str
    model: str
    prompt_tokens: int = Field(ge=0, description="estimated from the rendered prompt")
    attempt: int = Field(ge=1)
    cache_key: str
    prompt_sha256: Sha256
    endpoint: str | None = Field(
        default=None, description="kind + public base URL: the circuit breaker's identity"
    )
    # Held against the job's [budget] until this call's llm.response (or the run's end); null
    # without a budget and in events written before schema 5.
    tokens_reserved: int | None = Field(default=None, ge=0)
    cost_reserved: float | None = Field(default=None, ge=0)
    # The process making the call: while it lives the call holds a place under the endpoint's
    # shared limits and its cache key (calls_in_flight); null in events written before schema 6.
    owner: Owner | None = None


class LLMResponded(EventData):
    TYPE = "llm.response"
    provider: str
    model: str
    duration_s: float
    tokens_in: int = 0
    tokens_out: int = 0
    success: bool
    attempt: int = Field(ge=1)
    cache_key: str
    response_sha256: Sha256 | None = None
    finish_reason: str | None = None
    status: int | None = None
    error: str | None = None
    error_class: str | None = None
    endpoint: str | None = Field(
        default=None, description="kind + public base URL: the circuit breaker's identity"
    )
    retryable: bool | None = Field(
        default=None, description="a failure that counts against the circuit breaker"
    )
    cost: float | None = Field(
        default=None, description="USD from the pipeline's [prices]; None when unpriced"
    )


def finite_json(value: Any) -> Any:
    """For fields typed Any: NaN and infinities would be written as null (allow_inf_nan covers
    float fields only), so the event would not read back as it was given: refuse them. So are
    a TOML file's dates and times (options = { t = 07:32 }), which JSON has no form for."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and infinite numbers cannot be stored")
    if isinstance(value, (date, dt_time)):
        raise ValueError("a date or time cannot be stored as JSON; quote it as a string")
    if isinstance(value, dict):
        for item in value.values():
            finite_json(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            finite_json(item)
    return value


class CacheDetail(BaseModel):
    """What went into a cache key, in a form that can explain a miss (see executor/explain.py).

    Never a secret: the provider identity is what the key hashes (kind, model, options);
    templates, rendered text, inputs and upstream outputs appear only as sha256 hashes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: dict[str, Any] = Field(description="{kind, model, options}, as in the key")

    @field_validator("provider")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return finite_json(value)

    output: str
    fingerprint: str
    templates: dict[str, str | None] = Field(description="sha256 of the system/prompt templates")
    rendered: dict[str, str | None] = Field(description="sha256 of the rendered system/prompt")
    inputs: dict[str, str] = Field(default_factory=dict, description="input -> sha256 (read ones)")
    upstream: dict[str, str] = Field(default_factory=dict, description="step -> output sha256")


class CacheChange(BaseModel):
    """One difference between two runs of a step: part (provider, output, template, input,
    upstream, rendered, definition, key), name within it, and the old and new value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    part: str
    name: str
    old: Any = None
    new: Any = None

    @field_validator("old", "new")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return finite_json(value)


class CacheHit(EventData):
    TYPE = "cache.hit"
    cache_key: str
    response_sha256: Sha256
    origin_job: str
    origin_step: str | None = None
    tokens_saved: int = 0
    parts: dict[str, str] = Field(default_factory=dict, description="hash of each key component")
    pipeline: str | None = None
    detail: CacheDetail | None = None


class CacheMiss(EventData):
    TYPE = "cache.miss"
    cache_key: str
    parts: dict[str, str] = Field(default_factory=dict, description="hash of each key component")
    pipeline: str | None = None
    detail: CacheDetail | None = None
    reason: str | None = Field(default=None, description="why the provider is called, one line")
    changed: list[CacheChange] = Field(default_factory=list)
    previous_key: str | None = None
    previous_job: str | None = None
    previous_seq: int | None = None


class CacheInvalidated(EventData):
    TYPE = "cache.invalidated"
    LEVEL = "WARNING"
    cache_key: str
    reason: str
    response_sha256: Sha256 | None = Field(
        default=None,
        description="the refused answer; it is never served for this key again (None: older "
        "events, which forget the key)",
    )


class FileWritten(EventData):
    TYPE = "file.written"
    path: str
    sha256: Sha256
    wrote: bool
    reason: Literal["created", "updated", "unchanged", "modified_outside"]
    size: int = Field(ge=0)
    # modified_outside: the file held content steplog had not written there (edited by hand,
    # or there before the job). found_sha256: that content, kept as a blob before the write;
    # last_written: the sha256 of what the log says steplog last wrote at this path (None:
    # nothing). Not named *_sha256: it names file content, which need not be a blob.
    found_sha256: Sha256 | None = None
    last_written: Sha256 | None = None


class CircuitOpened(EventData):
    TYPE = "provider.circuit_opened"
    LEVEL = "WARNING"
    provider: str
    failures: int
    retry_at: str
    endpoint: str | None = None
    cooldown_s: float | None = None


class CircuitHalfOpen(EventData):
    """The cool-down is over and this event's step holds the one probe call."""

    TYPE = "provider.circuit_half_open"
    provider: str
    endpoint: str
    failures: int
    probe_until: str = Field(description="when the probe's claim lapses if no outcome arrives")


class CircuitClosed(EventData):
    TYPE = "provider.circuit_closed"
    provider: str
    endpoint: str | None = None


class StepWaiting(EventData):
    """The step had to wait: for its provider's concurrency or rate limit, its budget, or another
    job's call for the same cache key (in_flight) whose answer it then reuses (only when it did)."""

    TYPE = "step.waiting"
    LEVEL = "DEBUG"
    provider: str
    reason: Literal["concurrency", "rate_limit", "budget", "in_flight"]
    limit: float = Field(description="max_concurrency, requests_per_minute, or the budget limit")
    wait_s: float | None = Field(default=None, description="known in advance for rate limits")
    # in_flight: another job's call for the same cache key, whose answer this step will reuse
    following_job: str | None = None
    following_step: str | None = None


class BudgetExceeded(EventData):
    """A call was not made: what the job spent plus its estimate would pass the job's budget.

    Spent is the job's llm.response totals; reserved, the estimates of its calls in flight
    then. Events written before schema 5 have no reserved fields, and their spent figures
    include the reservations.
    """

    TYPE = "budget.exceeded"
    LEVEL = "WARNING"
    provider: str
    model: str
    limit: Literal["max_tokens", "max_cost"]
    max_tokens: int | None = None
    max_cost: float | None = None
    tokens_spent: int
    cost_spent: float
    estimate_tokens: int
    estimate_cost: float | None = None
    tokens_reserved: int | None = None
    cost_reserved: float | None = None
    calls_in_flight: int | None = Field(default=None, description="calls holding reservations")


# -- workers: each in its own stream, worker:<id>, never in a job's ------------------------------


class WorkerStarted(EventData):
    """A process that runs jobs took a lease: alive while a heartbeat comes every lease_s/3."""

    TYPE = "worker.started"
    host: str
    pid: int
    started: str = Field(description="the process's start marker (boot-relative)")
    lease_s: float = Field(gt=0)
    concurrency: int = Field(ge=1)
    kind: Literal["worker", "run"] = Field(description="a `steplog worker`, or run/resume/the API")
    pipeline_dir: str | None = None


class WorkerHeartbeat(EventData):
    TYPE = "worker.heartbeat"
    LEVEL = "DEBUG"
    jobs: list[str] = Field(default_factory=list, description="the jobs it runs now")


class WorkerStopped(EventData):
    TYPE = "worker.stopped"
    reason: str


class WorkerCancelRequested(EventData):
    """`steplog cancel` asks the job's owner to stop it (the owner records job.cancelled)."""

    TYPE = "worker.cancel_requested"
    LEVEL = "WARNING"
    job_id: str
    reason: str = ""


EVENT_TYPES: dict[str, type[EventData]] = {
    cls.TYPE: cls
    for cls in (
        JobCreated,
        JobStarted,
        JobResumed,
        JobSucceeded,
        JobFailed,
        JobCancelled,
        JobInterrupted,
        JobRequeued,
        JobForked,
        StepStarted,
        StepSucceeded,
        StepFailed,
        StepSkipped,
        StepRetrying,
        LLMRequested,
        LLMResponded,
        CacheHit,
        CacheMiss,
        CacheInvalidated,
        FileWritten,
        CircuitOpened,
        CircuitClosed,
        CircuitHalfOpen,
        StepWaiting,
        BudgetExceeded,
        WorkerStarted,
        WorkerHeartbeat,
        WorkerStopped,
        WorkerCancelRequested,
    )
}


class InvalidEvent(Rejected, ValueError):
    """An event that does not match the vocabulary; nothing was written."""


def utc_now() -> str:
    """Now, as the log writes it: ISO 8601 UTC, microseconds, Z (2026-12-03T18:00:00.000001Z)."""
    return utc_text(time.time_ns())


def utc_text(ns: int) -> str:
    """The log's text for `ns` nanoseconds since the epoch, microseconds truncated as
    datetime.isoformat does. Runs for every event: the seconds are formatted once a second,
    the microseconds taken exactly from the integer clock (no float rounding)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    prefix = _SECOND_TEXT.get(seconds)
    if prefix is None:
        t = time.gmtime(seconds)
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
        _SECOND_TEXT.clear()  # one entry: the clock only moves on
        _SECOND_TEXT[seconds] = prefix
    return f"{prefix}.{nanos // 1000:06d}Z"


_SECOND_TEXT: dict[int, str] = {}

# NewEvent's ts when the caller gives none: stamped in __post_init__ by utc_now, whose text needs
# none of the checks a given ts gets (compared by identity, so no given text can pass for it).
_STAMP_NOW = "now, by utc_now"


_TS_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended: the predecessor's envelope minus job_id (given at append).

    A plain dataclass on purpose: `data` is already a validated model, and the envelope checks
    are three comparisons, so the hot append path pays for no second validation.
    """

    type: str
    data: EventData
    step: str | None = None
    level: Level = "INFO"
    ts: str = _STAMP_NOW

    def __post_init__(self) -> None:
        if not isinstance(self.data, EventData) or self.data.TYPE != self.type:
            raise InvalidEvent(f"event type {self.type!r} does not match its data model")
        if self.level not in LEVELS:
            raise InvalidEvent(
                f"{self.type}: level {self.level!r} is not one of {', '.join(LEVELS)}"
            )
        if self.step is not None and not self.step:
            raise InvalidEvent(f"{self.type}: step must be a non-empty name or null")
        if self.step is not None and not _is_utf8(self.step):
            raise InvalidEvent(f"{self.type}: step {self.step!r} is not valid UTF-8 text")
        if self.ts is _STAMP_NOW:  # the executor's own events: stamped here, well-formed
            object.__setattr__(self, "ts", utc_now())
            return
        if not _TS_PATTERN.fullmatch(self.ts):
            raise InvalidEvent(f"{self.type}: ts {self.ts!r} is not ISO 8601 UTC ending in Z")
        try:  # the pattern admits month 13 or hour 24; the calendar does not
            datetime.fromisoformat(self.ts[:19])
        except ValueError as exc:
            raise InvalidEvent(f"{self.type}: ts {self.ts!r} is not a real time: {exc}") from None

    @classmethod
    def of(cls, data: EventData, step: str | None = None, level: Level | None = None) -> NewEvent:
        return cls(type=data.TYPE, data=data, step=step, level=level or data.LEVEL)

    @classmethod
    def parse(
        cls,
        type: str,
        data: dict[str, Any] | None,
        step: str | None = None,
        level: str | None = None,
        ts: str | None = None,
    ) -> NewEvent:
        """Validate an untyped event (e.g. from a file); raises InvalidEvent naming the problem."""
        model = EVENT_TYPES.get(type)
        if model is None:
            raise InvalidEvent(f"unknown event type {type!r}")
        try:
            typed = model.model_validate(data or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = error_path(first["loc"]) or "data"
            raise InvalidEvent(f"{type}: data.{where}: {first['msg']}") from exc
        return cls(
            type=type,
            data=typed,
            step=step,
            level=level if level is not None else model.LEVEL,  # type: ignore[arg-type]
            ts=ts if ts is not None else utc_now(),
        )

    def data_json(self) -> str:
        try:
            # model_dump_json's own call, minus its wrapper (every argument at its default):
            # the same text (tests/test_fast_path.py holds it to model_dump_json)
            data = self.data
            text = data.__pydantic_serializer__.to_json(data).decode()
        except PydanticSerializationError as exc:  # a lone surrogate: no UTF-8 for it
            why = " ".join(str(exc).split())
            if "surrogates not allowed" in why:
                why = "data holds text that is not valid UTF-8 (a lone surrogate)"
            raise InvalidEvent(f"{self.type}: {why}") from None
        # A lone surrogate in a dict key is written as U+FFFD instead of failing: the event would
        # read back changed. Only text holding U+FFFD pays for the check.
        if "\ufffd" in text and json.loads(text) != self.data.model_dump():
            raise InvalidEvent(
                f"{self.type}: data holds text that is not valid UTF-8 (a lone surrogate)"
            )
        if "\\u0000" in text and self.type in INDEXED_TYPES and _ESCAPED_NUL.search(text):
            raise InvalidEvent(
                f"{self.type}: data holds a NUL character (U+0000), which the PostgreSQL "
                "store's indexes cannot read; refused on every store"
            )
        return text


def step_skipped_rows(
    skips: Iterable[tuple[str, str, str, str]],
) -> list[tuple[str, str, str, str | None, str]]:
    """The rows (ts, level, type, step, data JSON) of one step.skipped for each (step, reason,
    fingerprint, output_sha256): what NewEvent.of(StepSkipped(…), step) and its data_json()
    give, without a model and an envelope per event. A resume appends one for every step it
    reuses; the validated way they cost 3.3 µs each, 6.6 ms of a 2,000-step job's resume.

    When each value is plain text the model checks nothing the encoder does not: orjson
    refuses a lone surrogate as pydantic's serializer does, and escapes every other character
    as it does (tests/test_fast_path.py). An event the fast way cannot take (an empty step,
    a value that is not a str, a surrogate) is built the validated way, which raises what it
    always raised: InvalidEvent, or the model's ValidationError."""
    rows: list[tuple[str, str, str, str | None, str]] = []
    dumps = orjson.dumps
    for step, reason, fingerprint, sha in skips:
        try:
            if not (step and type(step) is type(reason) is type(fingerprint) is type(sha) is str):
                raise TypeError
            step.encode("utf-8")  # NewEvent's check: the step's name is UTF-8 text
            data = dumps({"reason": reason, "fingerprint": fingerprint, "output_sha256": sha})
        except (TypeError, UnicodeEncodeError, orjson.JSONEncodeError):
            model = StepSkipped(reason=reason, fingerprint=fingerprint, output_sha256=sha)
            event = NewEvent.of(model, step)
            rows.append((event.ts, event.level, event.type, event.step, event.data_json()))
            continue
        rows.append((utc_now(), "INFO", "step.skipped", step, data.decode()))
    return rows


# The events PostgreSQL indexes by a field of their data (schema_postgres.sql: ->> in
# events_cache_runs and events_llm_requests). Its json parser refuses a document holding an
# escaped NUL anywhere, so such an event cannot be stored there: a new one (built here, or
# parsed from an import) is refused on every store. steplog never writes one. Rows copied
# as they are (`steplog copy`, a fork's history) keep what an older log holds; PostgreSQL
# refuses such a row in one line.
INDEXED_TYPES = frozenset({"cache.hit", "cache.miss", "llm.request"})
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_data(type: str, data_json: str) -> EventData:
    """Typed view of a stored event's data."""
    return EVENT_TYPES[type].model_validate_json(data_json)
