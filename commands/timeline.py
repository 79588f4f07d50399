"""The timeline of a job as data: a pure fold from its events to bars, marks and markers.

One bar per step attempt, from step.started to its terminal event (or to where the run stopped);
step.skipped is a bar of no length at the moment of the skip. Times are seconds since the job's
first event. commands.timeline_svg draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

import orjson

from steplog.eventstore.record import StoredEvent
from steplog.heap import gc_paused
from steplog.projections import manifest
from steplog.projections.manifest import parse_ts
from steplog.words import counted

Outcome = Literal["succeeded", "cached", "failed", "skipped", "interrupted", "running"]
OUTCOMES: tuple[Outcome, ...] = (
    "succeeded",
    "cached",
    "failed",
    "skipped",
    "interrupted",
    "running",
)


@dataclass
class Mark:
    """Something that happened inside an attempt: a retry, or an LLM call that failed."""

    t: float
    kind: Literal["retry", "llm-failed"]
    text: str


@dataclass
class Bar:
    step: str
    attempt: int
    start: float
    end: float
    outcome: Outcome = "running"
    marks: list[Mark] = field(default_factory=list)
    detail: str = ""
    cache_hit: bool = False
    llm_calls: int = 0


@dataclass
class Marker:
    """A job-level moment drawn as a vertical line: resumed, interrupted, process gone, ended."""

    t: float
    kind: Literal["resumed", "interrupted", "crashed", "failed", "cancelled"]
    text: str


@dataclass
class Timeline:
    job_id: str
    pipeline: str
    status: str
    start_ts: str
    span: float  # seconds from the first to the last event
    duration_s: float | None
    runs: int
    steps: list[str]
    needs: dict[str, list[str]]
    step_status: dict[str, str]
    bars: list[Bar]
    markers: list[Marker]
    workspace: str | None = None  # the job's, as its log names it (the picture goes beside it)
    _by_step: dict[str, list[Bar]] | None = field(default=None, repr=False, compare=False)
    _indexed: int = field(default=-1, repr=False, compare=False)

    def bars_of(self, step: str) -> list[Bar]:
        """The step's bars in order: indexed once, as the picture asks for every step's."""
        if self._by_step is None or self._indexed != len(self.bars):
            by_step: dict[str, list[Bar]] = {}
            for bar in self.bars:
                by_step.setdefault(bar.step, []).append(bar)
            self._by_step, self._indexed = by_step, len(self.bars)
        return list(self._by_step.get(step, ()))


def _short(text: str, limit: int = 160) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


@gc_paused()  # the job's events, held while the bars are laid out
def build(job_id: str, events: Iterable[StoredEvent]) -> Timeline:
    evs = list(events)
    state = manifest.project(job_id, evs)
    t0 = parse_ts(evs[0].ts) if evs else None
    bars: list[Bar] = []
    markers: list[Marker] = []
    open_bars: dict[str, Bar] = {}
    last_t = 0.0
    started_once = run_ended = False

    def close_open(t: float, outcome: Outcome, why: str) -> None:
        for bar in open_bars.values():
            bar.end, bar.outcome = max(t, bar.start), outcome
            bar.detail = why
        open_bars.clear()

    for ev in evs:
        t = (parse_ts(ev.ts) - t0).total_seconds() if t0 else 0.0
        if ev.type == "job.forked":
            # drawn where the copied history ends, not when the fork was made: the time between
            # is no part of this job, and the fork's own runs then follow one idle stretch
            t = last_t
        d = orjson.loads(ev.data_json)
        step = ev.step or "?"
        if ev.type in ("job.started", "job.resumed"):
            if started_once and not run_ended:  # no ending recorded: the process died
                markers.append(Marker(last_t, "crashed", "process gone"))
            close_open(last_t, "interrupted", "the run stopped before this attempt ended")
            if ev.type == "job.resumed":
                changed = d.get("changed_steps") or []
                text = "resumed" + (f" ({len(changed)} changed)" if changed else "")
                markers.append(Marker(t, "resumed", text))
            started_once, run_ended = True, False
        elif ev.type == "job.interrupted":
            close_open(t, "interrupted", f"interrupted by {d.get('signal', '?')}")
            run_ended = True
            markers.append(Marker(t, "interrupted", f"interrupted ({d.get('signal', '?')})"))
        elif ev.type in ("job.failed", "job.cancelled"):
            close_open(t, "interrupted", f"the job ended ({ev.type})")
            kind: Literal["failed", "cancelled"] = (
                "failed" if ev.type == "job.failed" else "cancelled"
            )
            markers.append(Marker(t, kind, "job " + kind))
            run_ended = True
        elif ev.type == "job.forked":  # the copied history ends here; the fork's own runs follow
            close_open(t, "interrupted", "the fork point came before this attempt ended")
            source, until = d.get("source_job", "?"), d.get("until_version", "?")
            markers.append(Marker(t, "interrupted", f"forked from {source} at event {until}"))
            run_ended = True
        elif ev.type == "job.succeeded":
            run_ended = True
        elif ev.type == "step.started":
            if step in open_bars:  # started again without an ending: the earlier attempt was cut
                cut = open_bars.pop(step)
                cut.end, cut.outcome, cut.detail = t, "interrupted", "never finished"
            bar = Bar(step=step, attempt=d.get("attempt", 1), start=t, end=t)
            open_bars[step] = bar
            bars.append(bar)
        elif ev.type == "step.skipped":
            reason = d.get("reason", "")
            bars.append(Bar(step, 0, t, t, "skipped", detail=_short(reason)))
        elif ev.step in open_bars:
            bar = open_bars[step]
            bar.end = t
            if ev.type == "cache.hit":
                bar.cache_hit = True
            elif ev.type == "llm.response":
                bar.llm_calls += 1
                if not d.get("success", True):
                    text = f"LLM call {d.get('attempt', '?')} failed: {_short(d.get('error') or '?', 100)}"
                    bar.marks.append(Mark(t, "llm-failed", text))
            elif ev.type == "step.retrying":
                text = (
                    f"retry after {d.get('delay_s', 0):.2f}s: {_short(d.get('error') or '', 100)}"
                )
                bar.marks.append(Mark(t, "retry", text))
            elif ev.type == "step.succeeded":
                bar.outcome = "cached" if d.get("cache_hit") else "succeeded"
                bar.detail = (
                    "cache hit" if d.get("cache_hit") else counted(bar.llm_calls, "LLM call")
                )
                del open_bars[step]
            elif ev.type == "step.failed":
                bar.outcome = "failed"
                bar.detail = f"{d.get('error_type', '')}: {_short(d.get('error', ''))}"
                del open_bars[step]
        last_t = max(last_t, t)
    still = "running" if state.status in ("running", "created") else "interrupted"
    for bar in open_bars.values():
        bar.end, bar.outcome = last_t, still
        bar.detail = "still running" if still == "running" else "never finished"
    steps = list(state.steps)
    return Timeline(
        job_id=job_id,
        pipeline=state.pipeline or "?",
        status=state.status,
        start_ts=evs[0].ts if evs else "",
        span=last_t,
        duration_s=state.elapsed_s,
        runs=state.runs,
        steps=steps,
        needs={name: list(s.needs) for name, s in state.steps.items()},
        step_status={name: s.status for name, s in state.steps.items()},
        bars=bars,
        markers=markers,
        workspace=state.workspace,
    )
