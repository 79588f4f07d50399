"""`steplog show JOB STEP`: one attempt of one step, as the log holds it.

What the step was asked (the rendered system prompt and prompt), what came back (the answer as
the provider sent it), what the step made of it (its output), what it cost, and the files it
wrote. Everything is read from the job's events and the blobs they point at:

    step.started             the attempt begins (its number: `attempt`)
    cache.hit / cache.miss   the cache key; a hit names the answer's blob and its origin job/step
    llm.request              one provider call: provider, model, the prompt blob (prompt_sha256:
                             canonical JSON of system, prompt, model, options, output)
    llm.response             its outcome: tokens, cost, duration, the answer blob or the error
    step.retrying            a failed call that is tried again
    file.written             a file the step put in the workspace
    step.succeeded / failed  the end: the output blob (output_sha256), or the error

A cache hit made no call: its prompt, provider and model are those of the call that paid for the
answer (the origin job's llm.request with the same cache key, which covers the rendered prompt).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from steplog.errors import Rejected
from steplog.eventstore.record import EventStore, StoredEvent
from steplog.words import counted

# Events after a step's run that tell a run with no end it was cut off (as the step_runs view).
_MOVED_ON = frozenset(
    {"job.resumed", "job.succeeded", "job.failed", "job.cancelled", "job.interrupted", "job.forked"}
)
_ENDS = frozenset({"step.succeeded", "step.failed"})
_NAMED_STEPS = 20  # a refusal names at most this many of the job's steps

AttemptStatus = Literal["succeeded", "failed", "running", "interrupted"]


class WrittenFile(BaseModel):
    """One file.written of the attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="relative to the job's workspace")
    sha256: str = Field(description="of the content the step put (or found) there")
    wrote: bool = Field(description="false when the file already held exactly this content")
    reason: str = Field(description="created, updated, unchanged or modified_outside")
    size: int | None = Field(default=None, description="bytes")


class ProviderCall(BaseModel):
    """One provider call of the attempt: its llm.request and the llm.response that ended it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int = Field(description="1 for the first call of the attempt, 2 for its first retry …")
    provider: str = Field(description="the pipeline's [providers.NAME]")
    kind: str | None = Field(default=None, description="offline, openai, ollama or anthropic")
    model: str = Field(description="the model asked for")
    response_model: str | None = Field(
        default=None, description="the model the answer names (a server may say another)"
    )
    success: bool | None = Field(
        default=None, description="None: no llm.response was recorded (the call was cut off)"
    )
    status: int | None = Field(default=None, description="HTTP status of a failed call")
    error: str | None = None
    error_class: str | None = Field(default=None, description="unavailable, http_error, …")
    duration_s: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float | None = Field(default=None, description="USD; None when the model has no price")
    prompt_sha256: str
    response_sha256: str | None = None


class StepAttempt(BaseModel):
    """One attempt of one step of a job: what it was asked, answered, produced, cost and wrote."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    step: str
    attempt: int = Field(description="the step's run in this job: 1, then one more per re-run")
    attempts: int = Field(description="how many attempts the step has in the job")
    status: AttemptStatus = Field(
        description="running: no end yet; interrupted: no end, and the job moved on since"
    )
    started: str = Field(description="ts of its step.started")
    finished: str | None = Field(default=None, description="ts of its step.succeeded / failed")
    duration_s: float | None = Field(default=None, description="the attempt's wall time")
    output_kind: Literal["text", "json", "files"] | None = None
    provider: str | None = Field(
        default=None, description="of the (last) call; for a cache hit, the origin's call"
    )
    model: str | None = Field(default=None, description="the model asked for, as `provider`")
    system: str | None = Field(default=None, description="the rendered system prompt, if any")
    prompt: str | None = Field(
        default=None, description="the rendered prompt; None when no call was prepared"
    )
    answer: str | None = Field(
        default=None, description="the provider's answer as it came (from the cache on a hit)"
    )
    output_text: str | None = Field(
        default=None,
        description="the step's output blob as stored: the answer for text and files steps, "
        "canonical JSON for a json step",
    )
    output: Any = Field(
        default=None,
        description="the parsed output: the text, the JSON value, or the list of file paths",
    )
    tokens_in: int = Field(default=0, description="over the attempt's calls")
    tokens_out: int = 0
    cost: float | None = Field(
        default=0.0,
        description="USD over the attempt's calls (0 for a cache hit); None if a call's model "
        "has no price",
    )
    cache_hit: bool | None = Field(
        default=None, description="None: the attempt ended before its cache lookup"
    )
    cache_key: str | None = None
    origin_job: str | None = Field(default=None, description="a hit: the job that paid for it")
    origin_step: str | None = None
    tokens_saved: int | None = Field(default=None, description="a hit: the origin's tokens")
    error: str | None = Field(default=None, description="why it failed")
    error_type: str | None = Field(default=None, description="template_error, unavailable, …")
    retries: int = Field(default=0, description="failed calls tried again (step.retrying)")
    calls: list[ProviderCall] = Field(default_factory=list)
    files: list[WrittenFile] = Field(default_factory=list)
    prompt_sha256: str | None = None
    response_sha256: str | None = Field(default=None, description="the answer's blob")
    output_sha256: str | None = None
    missing_blobs: list[str] = Field(
        default_factory=list,
        description="blobs these events name that the database lacks (an import without them)",
    )


def show_step(store: EventStore, job_id: str, step: str, attempt: int | None = None) -> StepAttempt:
    """Attempt `attempt` (default: the latest) of `step` in `job_id`, read from the log.

    Raises Rejected for an unknown job, a step the job does not have (naming its steps), a step
    that has not started, or an attempt it does not have."""
    if not store.job_exists(job_id):
        raise Rejected(f"unknown job {job_id}")
    declared: list[str] = []
    mine: list[StoredEvent] = []
    moved_on: list[int] = []  # versions of the job's lifecycle events
    for ev in store.read_job(job_id):
        if ev.step == step:
            mine.append(ev)
        elif ev.type == "job.created":
            declared = list(json.loads(ev.data_json).get("steps", {}))
        elif ev.type in _MOVED_ON:
            moved_on.append(ev.version)
    if not mine and step not in declared:
        named = ", ".join(declared[:_NAMED_STEPS]) or "none"
        more = f", … ({len(declared)} in all)" if len(declared) > _NAMED_STEPS else ""
        raise Rejected(f"job {job_id} has no step {step!r}; its steps: {named}{more}")
    starts = [i for i, ev in enumerate(mine) if ev.type == "step.started"]
    if not starts:
        raise Rejected(f"step {step} of job {job_id} has not started yet: it has no attempts")
    numbers = [json.loads(mine[i].data_json)["attempt"] for i in starts]
    if attempt is None:
        first = starts[-1]
    elif attempt in numbers:
        first = starts[len(numbers) - 1 - numbers[::-1].index(attempt)]
    else:
        if numbers == list(range(1, len(numbers) + 1)):
            have = f"it has {counted(len(numbers), 'attempt')}"
        else:
            have = f"its attempts: {', '.join(map(str, numbers))}"
        raise Rejected(f"step {step} of job {job_id} has no attempt {attempt} ({have})")
    window: list[StoredEvent] = []
    for ev in mine[first:]:
        if window and ev.type in ("step.started", "step.skipped"):
            break
        window.append(ev)
        if ev.type in _ENDS:
            break
    later = len(window) < len(mine) - first or any(v > window[-1].version for v in moved_on)
    return _build(store, job_id, step, window, len(numbers), later)


def _build(
    store: EventStore,
    job_id: str,
    step: str,
    window: list[StoredEvent],
    attempts: int,
    later: bool,
) -> StepAttempt:
    """The attempt from its events (`window`, step.started first); `later`: the job went on."""
    start = window[0]
    fields: dict[str, Any] = {
        "job_id": job_id,
        "step": step,
        "attempt": json.loads(start.data_json)["attempt"],
        "attempts": attempts,
        "started": start.ts,
    }
    calls: list[dict[str, Any]] = []
    files: list[WrittenFile] = []
    retries = 0
    status: AttemptStatus = "interrupted" if later else "running"
    for ev in window[1:]:
        d = json.loads(ev.data_json)
        if ev.type == "cache.hit":
            fields.update(
                cache_hit=True,
                cache_key=d["cache_key"],
                origin_job=d["origin_job"],
                origin_step=d.get("origin_step"),
                tokens_saved=d.get("tokens_saved"),
                response_sha256=d["response_sha256"],
            )
        elif ev.type == "cache.miss":
            fields.update(cache_hit=False, cache_key=d["cache_key"])
        elif ev.type == "llm.request":
            calls.append(
                {
                    "number": d["attempt"],
                    "provider": d["provider"],
                    "kind": d.get("kind"),
                    "model": d["model"],
                    "prompt_sha256": d["prompt_sha256"],
                }
            )
        elif ev.type == "llm.response":
            call = next((c for c in reversed(calls) if c["number"] == d["attempt"]), None)
            if call is None or "success" in call:
                continue  # an answer to no request of this attempt: an inconsistent import
            call.update(
                response_model=d.get("model"),
                success=d["success"],
                status=d.get("status"),
                error=d.get("error"),
                error_class=d.get("error_class"),
                duration_s=d.get("duration_s"),
                tokens_in=d.get("tokens_in", 0),
                tokens_out=d.get("tokens_out", 0),
                cost=d.get("cost"),
                response_sha256=d.get("response_sha256"),
            )
            if d["success"] and d.get("response_sha256"):
                fields["response_sha256"] = d["response_sha256"]
        elif ev.type == "step.retrying":
            retries += 1
        elif ev.type == "file.written":
            files.append(
                WrittenFile(
                    path=d["path"],
                    sha256=d["sha256"],
                    wrote=d["wrote"],
                    reason=d["reason"],
                    size=d.get("size"),
                )
            )
        elif ev.type == "step.succeeded":
            status = "succeeded"
            fields.update(
                finished=ev.ts,
                duration_s=d["duration_s"],
                output_kind=d["output"],
                output_sha256=d["output_sha256"],
                cache_hit=d["cache_hit"],
                cache_key=d["cache_key"],
            )
        elif ev.type == "step.failed":
            status = "failed"
            fields.update(
                finished=ev.ts,
                duration_s=d["duration_s"],
                error=d["error"],
                error_type=d["error_type"],
            )
    shown_calls = [ProviderCall(**c) for c in calls]
    fields["status"] = status
    fields["retries"] = retries
    fields["calls"] = shown_calls
    fields["files"] = files
    fields["tokens_in"] = sum(c.tokens_in for c in shown_calls)
    fields["tokens_out"] = sum(c.tokens_out for c in shown_calls)
    answered = [c for c in shown_calls if c.success is not None]
    fields["cost"] = (
        None if any(c.cost is None for c in answered) else sum(c.cost or 0.0 for c in answered)
    )
    request = calls[-1] if calls else None
    if request is None and fields.get("origin_job"):
        request = _origin_request(
            store, fields["origin_job"], fields["origin_step"], fields["cache_key"]
        )
    if request is not None:
        fields.update(
            provider=request["provider"],
            model=request["model"],
            prompt_sha256=request["prompt_sha256"],
        )
    return _with_blobs(store, fields)


def _origin_request(
    store: EventStore, job_id: str, step: str | None, cache_key: str
) -> dict[str, Any] | None:
    """The llm.request that paid for a cache hit's answer (the last one with its cache key)."""
    found: dict[str, Any] | None = None
    for ev in store.read_job(job_id):
        if ev.type == "llm.request" and (step is None or ev.step == step):
            d = json.loads(ev.data_json)
            if d["cache_key"] == cache_key:
                found = d
    return found


def _with_blobs(store: EventStore, fields: dict[str, Any]) -> StepAttempt:
    """Fill in the texts from the blobs the events name; a blob not stored is listed missing."""
    names = ("prompt_sha256", "response_sha256", "output_sha256")
    wanted = [fields[name] for name in names if fields.get(name)]
    blobs = store.find_blobs(wanted)
    fields["missing_blobs"] = [sha for sha in dict.fromkeys(wanted) if sha not in blobs]

    def text(name: str) -> str | None:
        sha = fields.get(name)
        return blobs[sha].decode("utf-8") if sha in blobs else None

    prompt_json = text("prompt_sha256")
    if prompt_json is not None:
        asked = json.loads(prompt_json)
        fields.update(system=asked.get("system"), prompt=asked.get("prompt"))
        fields.setdefault("output_kind", asked.get("output"))
    fields["answer"] = text("response_sha256")
    output_text = text("output_sha256")
    fields["output_text"] = output_text
    kind = fields.get("output_kind")
    if output_text is not None:
        if kind == "json":
            fields["output"] = json.loads(output_text)
        elif kind == "files":
            fields["output"] = [f.path for f in fields["files"]]
        else:
            fields["output"] = output_text
    return StepAttempt(**fields)
