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

from steplog.commands.cli.render import cost_text
from steplog.eventstore.record import StoredEvent
from steplog.projections import manifest
from steplog.projections.manifest import JobState

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
        return f"{step.duration_s:.2f}s"
    if step.status == "running" and step.name in started_at:
        return f"{now - started_at[step.name]:.1f}s"
    return ""


class PlainDisplay:
    """One line per step transition; `quiet` keeps only the closing line."""

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
                self.out.write(self._line(ev) + "\n")
        self.out.flush()

    def _line(self, ev: StoredEvent) -> str:
        if ev.type.startswith("job."):
            return f"{ev.type} {self.state.job_id}"
        step = self.state.steps[ev.step or ""]
        if ev.type == "step.succeeded":
            cache = "cache hit" if step.cache_hit else "called provider"
            return f"{ev.type:<15} {ev.step}  ({cache}, {step.tokens_in + step.tokens_out} tokens, {step.duration_s:.2f}s)"
        if ev.type == "step.failed":
            return f"{ev.type:<15} {ev.step}  {step.error}"
        if ev.type == "step.retrying":
            d = ev.data
            asked = d.get("retry_after_s")
            asked_text = f" (the server asked for {asked:g}s)" if asked is not None else ""
            return (
                f"{ev.type:<15} {ev.step}  attempt {d['attempt']} failed, retrying in "
                f"{d['delay_s']}s{asked_text}: {d['error']}"
            )
        if ev.type == "step.waiting":
            d = ev.data
            if d["reason"] == "budget":
                return f"{ev.type:<15} {ev.step}  waiting for calls in flight to end (budget)"
            if d["reason"] == "concurrency":
                what = f"concurrency limit ({d['limit']:g} in flight)"
            else:
                what = f"rate limit ({d['limit']:g}/min, {d['wait_s']}s)"
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
        self.console = console or Console()
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
            title=f"{s.job_id} · {s.pipeline} · {s.status} · {time.monotonic() - self.t0:.1f}s",
            title_justify="left",
        )
        for column in ("step", "status", "attempts", "cache", "tokens", "elapsed"):
            table.add_column(
                column, justify="right" if column in ("attempts", "tokens", "elapsed") else "left"
            )
        now = time.monotonic()
        for step in self._visible_steps():
            cache = {True: "hit", False: "miss", None: ""}[step.cache_hit]
            table.add_row(
                step.name,
                f"[{STATUS_STYLE.get(step.status, '')}]{step.status}[/]",
                str(step.attempts or ""),
                cache,
                str(step.tokens_in + step.tokens_out or ""),
                _elapsed(step, now, self.started_at),
            )
        table.caption = (
            f"{len(s.completed_steps)}/{len(s.steps)} done · {s.cache_hits} cache hits · "
            f"{s.tokens_in + s.tokens_out} tokens · {cost_text(s.cost, s.unpriced_calls, 4)} · "
            f"{s.llm_calls} calls"
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
