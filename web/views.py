"""What the pages show, as plain data: parameters, paging, the DAG's layers, diffs, event rows,
a job's markers, two jobs compared. Pure functions over folds and stored events; no I/O, so
every page's logic is tested without a server."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Mapping, Sequence, TypeVar

from steplog.eventstore.record import StoredEvent
from steplog.projections.manifest import STEP_STATUSES, JobState, StepState
from steplog.words import money, seconds

T = TypeVar("T")

JOB_STATUSES = ("queued", "created", "running", "succeeded", "failed", "cancelled", "interrupted")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PAGE_SIZE = 50
EVENTS_PAGE = 200
MAX_PAGE = 1000
DAG_LIMIT = 300  # steps drawn as boxes (and the timeline drawn) up to this many
DIFF_LIMIT = 200_000  # characters: a longer text is shown, not diffed
DATA_SHOWN = 400  # characters of an event's data in the events table
MARKER_TYPES = frozenset(
    {
        "job.started",
        "job.resumed",
        "job.interrupted",
        "job.forked",
        "job.failed",
        "job.succeeded",
        "job.cancelled",
    }
)


class BadParam(ValueError):
    """A query or form parameter that cannot be used: the route answers 400 with this text."""


def int_param(raw: str | None, name: str, default: int, low: int = 0, high: int = 2**62) -> int:
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise BadParam(f"{name} must be a whole number from {low} to {high}, not {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise BadParam(f"{name} must be a whole number from {low} to {high}, not {value}")
    return value


def choice_param(raw: str | None, name: str, choices: Sequence[str]) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise BadParam(f"{name} must be one of {', '.join(choices)}, not {raw[:40]!r}")
    return raw


def text_param(raw: str | None, name: str, limit: int = 200) -> str | None:
    if raw is None or raw == "":
        return None
    if len(raw) > limit or "\x00" in raw:
        raise BadParam(f"{name} must be at most {limit} characters, without NUL")
    return raw


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    offset: int
    limit: int
    total: int

    @property
    def prev_offset(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None

    @property
    def next_offset(self) -> int | None:
        end = self.offset + self.limit
        return end if end < self.total else None

    @property
    def first(self) -> int:
        return self.offset + 1 if self.items else 0

    @property
    def last(self) -> int:
        return self.offset + len(self.items)


def paginate(items: Sequence[T], offset: int, limit: int) -> Page[T]:
    return Page(list(items[offset : offset + limit]), offset, limit, len(items))


def filter_jobs(
    rows: Iterable[Mapping[str, Any]], status: str | None, pipeline: str | None
) -> list[Mapping[str, Any]]:
    return [
        row
        for row in rows
        if (status is None or row["status"] == status)
        and (pipeline is None or row["pipeline"] == pipeline)
    ]


def pipelines_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({row["pipeline"] for row in rows if row["pipeline"] is not None})


def job_list_row(row: Mapping[str, Any], state: JobState) -> dict[str, Any]:
    """One line of the jobs list: the jobs table's row with the totals of the job's fold."""
    return {
        "job_id": row["job_id"],
        "pipeline": row["pipeline"],
        "status": row["status"],
        "created": row["created_ts"],
        "updated": row["updated_ts"],
        "started": state.started_ts,
        "elapsed_s": state.elapsed_s,
        "elapsed": seconds(state.elapsed_s, "—"),
        "steps": len(state.steps),
        "steps_done": len(state.completed_steps),
        "steps_failed": sum(s.status == "failed" for s in state.steps.values()),
        "calls": state.llm_calls,
        "tokens": state.tokens_in + state.tokens_out,
        "cost": state.cost,
        "cost_text": money(state.cost),
        "cache_hits": state.cache_hits,
    }


def dag_layers(steps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Steps by depth: a step sits one layer after the deepest step it needs (declared order
    within a layer). Iterative, so a 10,000-step chain needs no deep recursion."""
    depth: dict[str, int] = {}
    for name in steps:
        stack = [name]
        while stack:
            top = stack[-1]
            if top in depth:
                stack.pop()
                continue
            needs = [n for n in steps.get(top, ()) if n in steps]
            waiting = [n for n in needs if n not in depth and n not in stack]
            if waiting:
                stack.extend(waiting)
                continue
            # a need still on the stack is a cycle (a pipeline refuses them): count it as 0
            depth[top] = 1 + max((depth.get(n, -1) for n in needs), default=-1)
            stack.pop()
    layers: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in steps:
        layers[depth[name]].append(name)
    return layers


def step_box(step: StepState) -> dict[str, Any]:
    return {
        "name": step.name,
        "status": step.status,
        "needs": list(step.needs),
        "attempts": step.attempts,
        "cache_hit": step.cache_hit,
        "duration": seconds(step.duration_s, ""),
        "error": step.error,
    }


def step_counts(state: JobState) -> dict[str, int]:
    counts = dict.fromkeys(STEP_STATUSES, 0)
    for step in state.steps.values():
        counts[step.status] = counts.get(step.status, 0) + 1
    return counts


def totals(state: JobState) -> dict[str, Any]:
    return {
        "status": state.status,
        "version": state.version,
        "runs": state.runs,
        "elapsed": seconds(state.elapsed_s, "—"),
        "steps": len(state.steps),
        "steps_done": len(state.completed_steps),
        "calls": state.llm_calls,
        "answered": state.llm_answered,
        "failures": state.llm_failures,
        "tokens_in": state.tokens_in,
        "tokens_out": state.tokens_out,
        "cost": money(state.cost),
        "cache_hits": state.cache_hits,
        "cache_misses": state.cache_misses,
        "files": state.files_written,
    }


def live_state(state: JobState, sent: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a job's stream sends: the totals, and the steps whose status differs from `sent`
    (all of them when None)."""
    steps = {
        name: {"status": s.status, "attempts": s.attempts, "cache_hit": s.cache_hit}
        for name, s in state.steps.items()
        if sent is None or sent.get(name) != s.status
    }
    return {"job_id": state.job_id, "totals": totals(state), "steps": steps}


def short_data(data_json: str, limit: int = DATA_SHOWN) -> str:
    return data_json if len(data_json) <= limit else data_json[:limit] + " …"


def event_row(ev: StoredEvent) -> dict[str, Any]:
    return {
        "version": ev.version,
        "seq": ev.seq,
        "ts": ev.ts,
        "level": ev.level,
        "type": ev.type,
        "step": ev.step,
        "data": short_data(ev.data_json),
    }


def event_document(ev: StoredEvent) -> dict[str, Any]:
    """An event in the JSON API: the predecessor's envelope with version and seq."""
    return ev.envelope() | {"version": ev.version, "seq": ev.seq}


def marker_of(ev: StoredEvent) -> dict[str, Any] | None:
    """A resume, interrupt, fork or end of the job, for the job page's list of markers."""
    if ev.type not in MARKER_TYPES:
        return None
    data = json.loads(ev.data_json)
    detail = ""
    if ev.type == "job.forked":
        detail = f"from {data.get('source_job')} at event {data.get('until_version')}"
    elif ev.type == "job.interrupted":
        detail = str(data.get("signal") or data.get("reason") or "")
    elif ev.type == "job.failed":
        detail = str(data.get("error") or "")
    elif ev.type == "job.resumed" and data.get("changed_steps"):
        detail = "changed: " + ", ".join(map(str, data["changed_steps"]))
    return {"version": ev.version, "ts": ev.ts, "type": ev.type, "detail": detail}


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "same"
    text: str


def diff_lines(old: str | None, new: str | None, old_name: str, new_name: str) -> list[DiffLine]:
    """A unified diff of two texts as lines to colour; [] when they are equal."""
    a, b = old or "", new or ""
    if a == b:
        return []
    if len(a) > DIFF_LIMIT or len(b) > DIFF_LIMIT:
        return [DiffLine("hunk", f"texts longer than {DIFF_LIMIT:,} characters: not diffed")]
    out: list[DiffLine] = []
    found = difflib.unified_diff(
        a.splitlines(), b.splitlines(), old_name, new_name, lineterm="", n=3
    )
    for line in found:
        if line.startswith(("---", "+++")):
            continue
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        out.append(DiffLine(kind, line))
    return out


def miss_reasons(events: Iterable[StoredEvent]) -> dict[int, dict[str, Any]]:
    """attempt -> its cache.miss's explanation (reason, changes, the previous run), from the
    step's events in order."""
    found: dict[int, dict[str, Any]] = {}
    attempt = 0
    for ev in events:
        if ev.type == "step.started":
            attempt = int(json.loads(ev.data_json).get("attempt") or attempt + 1)
        elif ev.type == "cache.miss":
            d = json.loads(ev.data_json)
            found[attempt] = {
                "reason": d.get("reason"),
                "changed": d.get("changed") or [],
                "previous_job": d.get("previous_job"),
                "previous_key": d.get("previous_key"),
            }
    return found


def file_writes(events: Iterable[StoredEvent]) -> dict[int, list[tuple[int, str]]]:
    """attempt -> (version, path) of each file.written, from the step's events in order."""
    found: dict[int, list[tuple[int, str]]] = {}
    attempt = 0
    for ev in events:
        if ev.type == "step.started":
            attempt = int(json.loads(ev.data_json).get("attempt") or attempt + 1)
        elif ev.type == "file.written":
            found.setdefault(attempt, []).append((ev.version, json.loads(ev.data_json)["path"]))
    return found


def as_text(content: bytes | None) -> str | None:
    if content is None:
        return None
    return content.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class StepComparison:
    step: str
    a_status: str | None
    b_status: str | None
    differs: list[str]  # what differs: status, cache key, output


def compare_steps(a: JobState, b: JobState) -> list[StepComparison]:
    """Each step of either job, in a's order then b's new ones, with what differs."""
    names = list(a.steps) + [n for n in b.steps if n not in a.steps]
    out = []
    for name in names:
        sa, sb = a.steps.get(name), b.steps.get(name)
        differs = []
        if sa is None or sb is None:
            differs.append("only in one job")
        else:
            if sa.status != sb.status:
                differs.append("status")
            if sa.cache_key != sb.cache_key:
                differs.append("cache key")
            if sa.output_sha256 != sb.output_sha256:
                differs.append("output")
        out.append(
            StepComparison(name, sa.status if sa else None, sb.status if sb else None, differs)
        )
    return out


def finish_reasons(events: Iterable[StoredEvent]) -> dict[int, list[str]]:
    """attempt -> the finish reason of each answered call (stop, length …), in call order."""
    found: dict[int, list[str]] = {}
    attempt = 0
    for ev in events:
        if ev.type == "step.started":
            attempt = int(json.loads(ev.data_json).get("attempt") or attempt + 1)
        elif ev.type == "llm.response":
            reason = json.loads(ev.data_json).get("finish_reason")
            if reason:
                found.setdefault(attempt, []).append(str(reason))
    return found


def attempt_numbers(events: Iterable[StoredEvent]) -> list[int]:
    return [
        int(json.loads(ev.data_json).get("attempt") or 0)
        for ev in events
        if ev.type == "step.started"
    ]
