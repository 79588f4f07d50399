"""What a person sees while a job runs: a live rich table on a terminal, plain lines otherwise.

Both displays are observers of appended events and fold them with the manifest projection, so
the screen shows exactly what the log says.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence, TextIO

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
