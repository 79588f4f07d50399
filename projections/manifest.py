"""The job manifest and per-step states: a pure fold over one job's events.

`project(events)` answers "now" (the whole log), "as of N" (a prefix) and "rebuilt" (from zero)
with the same code; `apply` is the single step of the fold and touches no database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Callable, Iterable

import orjson

from steplog.eventstore.record import StoredEvent

STEP_STATUSES = ("pending", "running", "waiting", "succeeded", "failed", "skipped")

# Job status after an event of each type (other types leave it as it was).
JOB_STATUS_AFTER = {
    "job.created": "queued",  # `submit` stops here; `run` appends job.started with it
    "job.forked": "created",
    "job.requeued": "queued",
    "job.started": "running",
    "job.resumed": "running",
    "job.succeeded": "succeeded",
    "job.failed": "failed",
    "job.cancelled": "cancelled",
    "job.interrupted": "interrupted",
}
TERMINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


@dataclass
class StepState:
    name: str
    needs: list[str] = field(default_factory=list)
    status: str = "pending"
    attempts: int = 0
    cache_hit: bool | None = None
    cache_key: str | None = None
    fingerprint: str | None = None
    output_sha256: str | None = None
    started_ts: str | None = None
    finished_ts: str | None = None
    duration_s: float | None = None
    error: str | None = None
    llm_calls: int = 0  # llm.request: calls made (a paid API may bill each)
    llm_unanswered: int = 0  # requests no llm.response answered (in flight, or abandoned)
    tokens_in: int = 0
    tokens_out: int = 0
    files: list[str] = field(default_factory=list)
    cost: float = 0.0  # USD, from llm.response `cost` (unpriced calls add nothing)
    unpriced_calls: int = 0  # answered calls whose model has no price: cost is a lower bound
    # (attempt, cache key) of the request awaiting its response: the next llm.* event of the
    # step answers it or not, as the llm_calls view pairs them. Folding state, not shown.
    open_call: tuple[int, str] | None = field(default=None, metadata={"shown": False})
    # (tokens, cost) that request reserved against the budget, released by its response
    open_reserved: tuple[int, float] | None = field(default=None, metadata={"shown": False})

    @property
    def completed(self) -> bool:
        return self.status in ("succeeded", "skipped")


@dataclass
class JobState:
    job_id: str
    status: str = "unknown"
    pipeline: str | None = None
    pipeline_path: str | None = None
    pipeline_fingerprint: str | None = None
    pipeline_sha256: str | None = None
    snapshot_sha256: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    workspace: str | None = None
    batch: str | None = None  # job.created's: the batch (run/submit --inputs) it belongs to
    created_ts: str | None = None
    started_ts: str | None = None
    finished_ts: str | None = None
    updated_ts: str | None = None
    last_error: str | None = None
    owner: dict[str, Any] | None = None
    runs: int = 0
    forked_from: dict[str, Any] | None = None
    steps: dict[str, StepState] = field(default_factory=dict)
    version: int = 0
    last_seq: int = 0
    llm_calls: int = 0  # llm.request events: calls made
    llm_answered: int = 0  # llm.response with success
    llm_failures: int = 0  # llm.response without success
    llm_unanswered: int = 0  # requests no response answered: in flight, or abandoned
    tokens_in: int = 0
    tokens_out: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    files_written: int = 0
    cost: float = 0.0  # spent: the sum of llm.response costs, all runs
    unpriced_calls: int = 0  # answered calls whose model has no price
    # held against the budget by this run's calls in flight (their llm.request, unanswered);
    # nothing once the run ends
    tokens_reserved: int = 0
    cost_reserved: float = 0.0
    budget_exceeded: dict[str, Any] | None = None  # the last run's budget.exceeded, until resumed

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def completed_steps(self) -> list[str]:
        return [name for name, s in self.steps.items() if s.completed]

    @property
    def pending_steps(self) -> list[str]:
        return [name for name, s in self.steps.items() if not s.completed]

    @property
    def elapsed_s(self) -> float | None:
        """Wall time from the first start to the end (or to the last event while unfinished)."""
        end = self.finished_ts or self.updated_ts
        if not self.started_ts or not end:
            return None
        return round((parse_ts(end) - parse_ts(self.started_ts)).total_seconds(), 6)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest as users see it (`status --json`), with the predecessor's field names."""
        out = asdict(replace(self, steps={}))
        out["elapsed_s"] = self.elapsed_s
        # asdict's recursive copy cost ~0.1 ms a step: 1 s of `status --json` for 10,000 steps
        out["steps"] = {name: _step_document(s) for name, s in self.steps.items()}
        out["completed_steps"] = self.completed_steps
        out["pending_steps"] = self.pending_steps
        return out


_STEP_FIELDS = tuple(f.name for f in fields(StepState) if f.metadata.get("shown", True))


def _step_document(step: StepState) -> dict[str, Any]:
    """asdict(step), without its generic recursion: the fields are flat but for two lists."""
    out = {name: getattr(step, name) for name in _STEP_FIELDS}
    out["needs"] = list(step.needs)
    out["files"] = list(step.files)
    return out


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _step(state: JobState, ev: StoredEvent) -> StepState:
    name = ev.step or "?"
    found = state.steps.get(name)
    if found is None:  # an event for a step the job did not declare: keep it visible anyway
        found = state.steps[name] = StepState(name=name)
    return found


def _job_created(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    state.pipeline = d["pipeline"]
    state.pipeline_path = d.get("pipeline_path")
    state.pipeline_fingerprint = d["pipeline_fingerprint"]
    state.pipeline_sha256 = d["pipeline_sha256"]
    state.snapshot_sha256 = d.get("snapshot_sha256")
    state.inputs = dict(d.get("inputs", {}))
    state.workspace = d["workspace"]
    state.batch = d.get("batch")
    state.created_ts = ev.ts
    state.steps = {
        name: StepState(name=name, needs=list(needs)) for name, needs in d["steps"].items()
    }


def _release_reservations(state: JobState) -> None:
    """A run starts or ends: no call of an earlier run holds anything any more."""
    if state.tokens_reserved or state.cost_reserved:
        for s in state.steps.values():
            s.open_reserved = None
    state.tokens_reserved, state.cost_reserved = 0, 0.0


def _job_started(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    _release_reservations(state)
    state.owner = d["owner"]
    state.runs += 1
    state.started_ts = state.started_ts or ev.ts
    state.finished_ts = None
    if ev.type == "job.resumed":
        state.pipeline_fingerprint = d["pipeline_fingerprint"]
        state.budget_exceeded = None


def _job_ended(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    _release_reservations(state)
    state.owner = None
    state.finished_ts = ev.ts
    if ev.type == "job.failed":
        state.last_error = d["error"]
    elif ev.type == "job.succeeded":
        state.last_error = None


def _job_requeued(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    state.owner = None


def _job_forked(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    _release_reservations(state)
    state.forked_from = {"job": d["source_job"], "until_version": d["until_version"]}
    if d.get("workspace"):  # the fork's own; job.created (a copy) names the source's
        state.workspace = d["workspace"]
    state.owner = None
    state.finished_ts = None


def _step_started(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    s = _step(state, ev)
    s.status = "running"
    s.attempts = d["attempt"]
    s.fingerprint = d["fingerprint"]
    s.started_ts = ev.ts
    s.finished_ts = None
    s.duration_s = None
    s.error = None
    s.cache_hit = None


def _step_succeeded(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    s = _step(state, ev)
    s.status = "succeeded"
    s.cache_hit = d["cache_hit"]
    s.cache_key = d["cache_key"]
    s.output_sha256 = d["output_sha256"]
    s.fingerprint = d["fingerprint"]
    s.duration_s = d["duration_s"]
    s.finished_ts = ev.ts


def _step_failed(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    s = _step(state, ev)
    s.status = "failed"
    s.error = d["error"]
    s.duration_s = d["duration_s"]
    s.finished_ts = ev.ts
    state.last_error = f"{ev.step}: {d['error']}"


def _step_skipped(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    s = _step(state, ev)
    s.status = "skipped"
    s.output_sha256 = d["output_sha256"]
    s.fingerprint = d["fingerprint"]


def _llm_request(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    """A call made: unanswered until the step's next llm.* event is its response."""
    s = _step(state, ev)
    state.llm_calls += 1
    s.llm_calls += 1
    state.llm_unanswered += 1
    s.llm_unanswered += 1
    s.open_call = (d["attempt"], d["cache_key"])
    s.open_reserved = None
    tokens, cost = d.get("tokens_reserved") or 0, d.get("cost_reserved") or 0.0
    if state.status == "running" and (tokens or cost):
        s.open_reserved = (tokens, cost)
        state.tokens_reserved += tokens
        state.cost_reserved = round(state.cost_reserved + cost, 9)
    if s.status == "waiting":  # the wait is over once the call is on its way
        s.status = "running"


def _llm_response(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    s = _step(state, ev)
    if s.open_call is not None and s.open_call == (d.get("attempt"), d.get("cache_key")):
        state.llm_unanswered -= 1
        s.llm_unanswered -= 1
        if s.open_reserved is not None:
            state.tokens_reserved -= s.open_reserved[0]
            state.cost_reserved = round(state.cost_reserved - s.open_reserved[1], 9)
    s.open_call = None
    s.open_reserved = None
    if d["success"]:
        state.llm_answered += 1
    else:
        state.llm_failures += 1
    state.tokens_in += d.get("tokens_in", 0)
    state.tokens_out += d.get("tokens_out", 0)
    s.tokens_in += d.get("tokens_in", 0)
    s.tokens_out += d.get("tokens_out", 0)
    if d["success"] and d.get("cost") is None:
        state.unpriced_calls += 1
        s.unpriced_calls += 1
    cost = d.get("cost") or 0.0
    if cost:
        state.cost = round(state.cost + cost, 9)
        s.cost = round(s.cost + cost, 9)


def _step_waiting(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    s = _step(state, ev)
    if s.status == "running":
        s.status = "waiting"


def _budget_exceeded(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    state.budget_exceeded = {**d, "step": ev.step}


def _cache_hit(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    state.cache_hits += 1
    s = _step(state, ev)
    s.cache_key = d["cache_key"]


def _cache_miss(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    state.cache_misses += 1
    _step(state, ev).cache_key = d["cache_key"]


def _file_written(state: JobState, ev: StoredEvent, d: dict[str, Any]) -> None:
    state.files_written += 1
    s = _step(state, ev)
    if d["path"] not in s.files:
        s.files.append(d["path"])


Handler = Callable[[JobState, StoredEvent, dict[str, Any]], None]

_HANDLERS: dict[str, Handler] = {
    "job.created": _job_created,
    "job.started": _job_started,
    "job.resumed": _job_started,
    "job.succeeded": _job_ended,
    "job.failed": _job_ended,
    "job.cancelled": _job_ended,
    "job.interrupted": _job_ended,
    "job.requeued": _job_requeued,
    "job.forked": _job_forked,
    "step.started": _step_started,
    "step.succeeded": _step_succeeded,
    "step.failed": _step_failed,
    "step.skipped": _step_skipped,
    "llm.response": _llm_response,
    "llm.request": _llm_request,
    "step.waiting": _step_waiting,
    "budget.exceeded": _budget_exceeded,
    "cache.hit": _cache_hit,
    "cache.miss": _cache_miss,
    "file.written": _file_written,
}


def apply(state: JobState, ev: StoredEvent) -> JobState:
    """One step of the fold. Events of other jobs are a caller bug, so they are refused."""
    if ev.job_id != state.job_id:
        raise ValueError(f"event of job {ev.job_id} folded into job {state.job_id}")
    handler = _HANDLERS.get(ev.type)
    if handler is not None:
        handler(state, ev, orjson.loads(ev.data_json))
    status = JOB_STATUS_AFTER.get(ev.type)
    if status is not None:
        state.status = status
    state.version = ev.version
    state.last_seq = ev.seq
    state.updated_ts = ev.ts
    return state


# The handlers that read nothing of data but its cache_key (a cache.miss's data is ~1 KB).
_READ_KEY_ONLY = frozenset({_cache_hit, _cache_miss})

# type -> (handler or None, the job status after it or None, whether the handler reads only
# data's cache_key): one lookup an event in project()
_FOLD: dict[str, tuple[Handler | None, str | None, bool]] = {
    t: (_HANDLERS.get(t), JOB_STATUS_AFTER.get(t), _HANDLERS.get(t) in _READ_KEY_ONLY)
    for t in {*_HANDLERS, *JOB_STATUS_AFTER}
}

_KEY_FIRST = '{"cache_key":"'


def leading_cache_key(data_json: str) -> dict[str, str] | None:
    """{"cache_key": …} read from the head of data written as steplog writes cache.hit and
    cache.miss (the key first), without parsing the rest; None for any other text, which the
    caller parses. Any backslash (an escape could spell a second "cache_key", and JSON's last
    duplicate wins) or a second literal "cache_key" leaves it to the parser. On valid JSON (all
    either store holds) it reads what orjson reads, but where text after the key is valid JSON
    that orjson refuses (a number beyond a double's range, arrays or objects nested over 1,024
    deep): the parser would refuse that event, this does not. steplog writes neither."""
    if not data_json.startswith(_KEY_FIRST):
        return None
    end = data_json.find('"', 14)
    if end < 0 or data_json.find("\\", 14) >= 0 or data_json.find('"cache_key"', end) >= 0:
        return None
    return {"cache_key": data_json[14:end]}


def project(job_id: str, events: Iterable[StoredEvent], state: JobState | None = None) -> JobState:
    """Fold `events` into `state` (a fresh one by default): apply() for each, in one loop.

    No handler reads version, last_seq or updated_ts, so they are set once, from the last event
    folded (also when a handler raises: then from the one before, as apply() leaves them)."""
    state = state if state is not None else JobState(job_id=job_id)
    own = state.job_id
    fold = _FOLD.get
    loads = orjson.loads
    last: StoredEvent | None = None
    try:
        for ev in events:
            if ev.job_id != own:
                raise ValueError(f"event of job {ev.job_id} folded into job {own}")
            found = fold(ev.type)
            if found is not None:
                handler, status, key_only = found
                if handler is not None:
                    text = ev.data_json
                    handler(state, ev, (key_only and leading_cache_key(text)) or loads(text))
                if status is not None:
                    state.status = status
            last = ev
    finally:
        if last is not None:
            state.version = last.version
            state.last_seq = last.seq
            state.updated_ts = last.ts
    return state
