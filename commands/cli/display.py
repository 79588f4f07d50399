"""What a person sees while a job runs: a live rich table on a terminal, plain lines otherwise.

Both displays are observers of appended events and fold them with the manifest projection, so
the screen shows exactly what the log says.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Sequence, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from steplog.commands.cli.render import console as log_console
from steplog.commands.cli.render import cost_text, line
from steplog.eventstore.record import StoredEvent
from steplog.projections import manifest
from steplog.projections.manifest import JobState
from steplog.words import counted, one_line, seconds

STATUS_STYLE = {
    "pending": "dim",
    "running": "yellow",
    "waiting": "magenta",
    "succeeded": "green",
    "skipped": "cyan",
    "failed": "bold red",
}


def _elapsed(step: manifest.StepState, now: float, started_at: dict[str, float]) -> str:
    if step.duration_s is not None:
        return seconds(step.duration_s)
    if step.status == "running" and step.name in started_at:
        return f"{now - started_at[step.name]:.1f}s"
    return ""


class PlainDisplay:
    """One line per step transition; `quiet` keeps only the closing line. A line shows text
    from the log as it is, control characters (newlines too) escaped (words.one_line)."""

    LINE_TYPES = {
        "step.succeeded",
        "step.failed",
        "step.skipped",
        "step.retrying",
        "step.waiting",
        "job.succeeded",
        "job.failed",
    }

    def __init__(self, state: JobState, out: TextIO | None = None, quiet: bool = False) -> None:
        self.state = state
        self.out = out or sys.stdout
        self.quiet = quiet

    def __call__(self, events: Sequence[StoredEvent]) -> None:
        for ev in events:
            manifest.apply(self.state, ev)
            if not self.quiet and ev.type in self.LINE_TYPES:
                self.out.write(one_line(self._line(ev)) + "\n")
        self.out.flush()

    def _line(self, ev: StoredEvent) -> str:
        if ev.type.startswith("job."):
            return f"{ev.type} {self.state.job_id}"
        step = self.state.steps[ev.step or ""]
        if ev.type == "step.succeeded":
            cache = "cache hit" if step.cache_hit else "called provider"
            tokens = counted(step.tokens_in + step.tokens_out, "token")
            return f"{ev.type:<15} {ev.step}  ({cache}, {tokens}, {seconds(step.duration_s)})"
        if ev.type == "step.failed":
            return f"{ev.type:<15} {ev.step}  {step.error}"
        if ev.type == "step.retrying":
            d = ev.data
            asked = d.get("retry_after_s")
            asked_text = f" (the server asked for {asked:g}s)" if asked is not None else ""
            return (
                f"{ev.type:<15} {ev.step}  attempt {d['attempt']} failed, retrying in "
                f"{seconds(d['delay_s'])}{asked_text}: {d['error']}"
            )
        if ev.type == "step.waiting":
            d = ev.data
            if d["reason"] == "budget":
                return f"{ev.type:<15} {ev.step}  waiting for calls in flight to end (budget)"
            if d["reason"] == "in_flight":
                whose = f"job {d.get('following_job')} step {d.get('following_step')}"
                return f"{ev.type:<15} {ev.step}  waiting for the same call by {whose}"
            if d["reason"] == "concurrency":
                what = f"concurrency limit ({d['limit']:g} in flight)"
            else:
                what = f"rate limit ({d['limit']:g}/min, {seconds(d['wait_s'])})"
            return f"{ev.type:<15} {ev.step}  waiting for provider {d['provider']}'s {what}"
        return f"{ev.type:<15} {ev.step}"

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LiveDisplay:
    """A table redrawn as events arrive: status, attempts, cache, tokens and time per step."""

    def __init__(self, state: JobState, console: Console | None = None) -> None:
        self.state = state
        self.console = console or log_console()
        self.started_at: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.live = Live(
            get_renderable=self.render, console=self.console, refresh_per_second=8, transient=False
        )

    def __call__(self, events: Sequence[StoredEvent]) -> None:
        now = time.monotonic()
        for ev in events:
            manifest.apply(self.state, ev)
            if ev.type == "step.started" and ev.step:
                self.started_at[ev.step] = now

    def render(self) -> Table:
        s = self.state
        table = Table(
            title=line(
                f"{s.job_id} · {s.pipeline} · {s.status} · {time.monotonic() - self.t0:.1f}s"
            ),
            title_justify="left",
        )
        for column in ("step", "status", "attempts", "cache", "tokens", "elapsed"):
            table.add_column(
                column,
                justify="right" if column in ("attempts", "tokens", "elapsed") else "left",
                overflow="fold",
            )
        now = time.monotonic()
        for step in self._visible_steps():
            cache = {True: "hit", False: "miss", None: ""}[step.cache_hit]
            table.add_row(
                step.name,
                Text(step.status, style=STATUS_STYLE.get(step.status, "")),
                str(step.attempts or ""),
                cache,
                str(step.tokens_in + step.tokens_out or ""),
                _elapsed(step, now, self.started_at),
            )
        table.caption = (
            f"{len(s.completed_steps)}/{len(s.steps)} done · {counted(s.cache_hits, 'cache hit')} · "
            f"{counted(s.tokens_in + s.tokens_out, 'token')} · {cost_text(s.cost, s.unpriced_calls)} · "
            f"{counted(s.llm_calls, 'call')}"
        )
        return table

    MAX_ROWS = 30

    def _visible_steps(self) -> list[manifest.StepState]:
        """All steps of a small pipeline; of a large one, the running and failed ones first."""
        steps = list(self.state.steps.values())
        if len(steps) <= self.MAX_ROWS:
            return steps
        urgent = [st for st in steps if st.status in ("running", "failed")]
        recent = sorted(
            (st for st in steps if st.status in ("succeeded", "skipped")),
            key=lambda st: st.finished_ts or "",
        )
        return (urgent + recent[-(self.MAX_ROWS - len(urgent)) :])[: self.MAX_ROWS]

    def __enter__(self) -> LiveDisplay:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.refresh()
        self.live.stop()


# -- a batch: many jobs in one process -----------------------------------------------------------

BATCH_STATUS = {"queued": "waiting"}  # a queued job of the batch waits for a free lane
JOB_END_TYPES = {"job.succeeded", "job.failed", "job.interrupted"}


class _BatchStates:
    """Each job's manifest, folded from the events its run appends (the display's own copies)."""

    def __init__(self, batch: str, states: Sequence[JobState]) -> None:
        self.batch = batch
        self.states = {s.job_id: _copy(s) for s in states}
        self.order = list(self.states)
        self.done = 0

    def fold(self, job_id: str, events: Sequence[StoredEvent]) -> list[str]:
        """Apply events of one job; returns the job-ending event types among them."""
        state = self.states[job_id]
        ends = []
        for ev in events:
            manifest.apply(state, ev)
            if ev.type in JOB_END_TYPES:
                ends.append(ev.type)
                if ev.type != "job.interrupted":
                    self.done += 1
        return ends

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.states.values():
            status = BATCH_STATUS.get(state.status, state.status)
            out[status] = out.get(status, 0) + 1
        return out


def _copy(state: JobState) -> JobState:
    import copy

    return copy.deepcopy(state)


def job_end_line(state: JobState, done: int, total: int) -> str:
    """One job of a batch has ended: the plain line printed for it."""
    where = f"({done}/{total} done)"
    if state.status == "succeeded":
        tokens = state.tokens_in + state.tokens_out
        return (
            f"job {state.job_id} succeeded {where}: {counted(len(state.steps), 'step')}, "
            f"{counted(state.llm_calls, 'call')}, {counted(tokens, 'token')}, "
            f"{cost_text(state.cost, state.unpriced_calls)}"
        )
    if state.status == "failed":
        return f"job {state.job_id} failed {where}: {state.last_error or 'see events'}"
    return f"job {state.job_id} {state.status}"


class BatchPlainDisplay:
    """One plain line per job that ends; `quiet` keeps only the closing line."""

    def __init__(
        self, batch: str, states: Sequence[JobState], out: TextIO | None = None, quiet: bool = False
    ) -> None:
        self.jobs = _BatchStates(batch, states)
        self.out = out or sys.stdout
        self.quiet = quiet

    def observer_for(self, job_id: str) -> Callable[[Sequence[StoredEvent]], None]:
        def observe(events: Sequence[StoredEvent]) -> None:
            ends = self.jobs.fold(job_id, events)
            if self.quiet or not ends or ends[-1] == "job.interrupted":
                return  # an interrupted job is named by the closing line
            state = self.jobs.states[job_id]
            self.out.write(one_line(job_end_line(state, self.jobs.done, len(self.jobs.order))))
            self.out.write("\n")
            self.out.flush()

        return observe

    def __enter__(self) -> BatchPlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class BatchLiveDisplay:
    """One table for the batch, redrawn as events arrive: the running and failed jobs, then the
    latest done, with their steps, calls, tokens, cost and time; the totals below."""

    MAX_ROWS = 20

    def __init__(self, batch: str, states: Sequence[JobState], console: Console | None = None):
        self.jobs = _BatchStates(batch, states)
        self.console = console or log_console()
        self.t0 = time.monotonic()
        self.started_at: dict[str, float] = {}
        self.ended_at: dict[str, float] = {}
        self.live = Live(
            get_renderable=self.render, console=self.console, refresh_per_second=4, transient=False
        )

    def observer_for(self, job_id: str) -> Callable[[Sequence[StoredEvent]], None]:
        def observe(events: Sequence[StoredEvent]) -> None:
            now = time.monotonic()
            self.started_at.setdefault(job_id, now)
            if self.jobs.fold(job_id, events):
                self.ended_at[job_id] = now

        return observe

    def _visible(self) -> list[JobState]:
        states = [self.jobs.states[j] for j in self.jobs.order]
        urgent = [s for s in states if s.status in ("running", "failed", "interrupted")]
        done = sorted(
            (s for s in states if s.status == "succeeded"),
            key=lambda s: self.ended_at.get(s.job_id, 0.0),
        )
        room = max(self.MAX_ROWS - len(urgent), 0)
        return (urgent + (done[-room:] if room else []))[: self.MAX_ROWS]

    def render(self) -> Table:
        jobs = self.jobs
        table = Table(
            title=line(
                f"batch {jobs.batch} · {counted(len(jobs.order), 'job')} · "
                f"{time.monotonic() - self.t0:.1f}s"
            ),
            title_justify="left",
        )
        for column in ("job", "status", "steps", "calls", "tokens", "cost", "elapsed"):
            table.add_column(
                column,
                justify="left" if column in ("job", "status") else "right",
                overflow="fold",
            )
        now = time.monotonic()
        for s in self._visible():
            started = self.started_at.get(s.job_id)
            elapsed = ""
            if started is not None:
                elapsed = f"{self.ended_at.get(s.job_id, now) - started:.1f}s"
            table.add_row(
                Text(one_line(s.job_id)),
                Text(s.status, style=STATUS_STYLE.get(s.status, "")),
                f"{len(s.completed_steps)}/{len(s.steps)}",
                str(s.llm_calls or ""),
                str(s.tokens_in + s.tokens_out or ""),
                cost_text(s.cost, s.unpriced_calls),
                elapsed,
            )
        counts = jobs.counts()
        cost = sum(s.cost for s in jobs.states.values())
        unpriced = sum(s.unpriced_calls for s in jobs.states.values())
        table.caption = (
            f"{jobs.done}/{len(jobs.order)} done · {counts.get('succeeded', 0)} succeeded · "
            f"{counts.get('failed', 0)} failed · {counts.get('running', 0)} running · "
            f"{counts.get('waiting', 0)} waiting · {cost_text(cost, unpriced)}"
        )
        return table

    def __enter__(self) -> BatchLiveDisplay:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.refresh()
        self.live.stop()
