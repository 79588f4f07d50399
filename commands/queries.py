"""Read-only verbs: status, jobs, events — and how their results are shown."""

from __future__ import annotations

from collections import Counter
from fnmatch import fnmatchcase
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

from rich.console import Console
from rich.table import Table

from commands.display import cost_text
from commands.jobs import Rejected, fold_job
from commands.replay import ReplayView
from eventstore.events import LEVELS
from eventstore.record import StoredEvent
from eventstore.sqlite import SQLiteEventStore
from executor.ownership import owner_alive
from projections.manifest import JobState


def status(store: SQLiteEventStore, job_id: str | None) -> JobState:
    if job_id is None:
        row = store.conn.execute(
            "SELECT job_id FROM streams ORDER BY last_seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise Rejected(
                f"no jobs in {store.path} yet; start one with: steplog run PIPELINE.toml"
            )
        job_id = row[0]
    state = fold_job(store, job_id)
    if not state.exists:
        raise Rejected(f"unknown job {job_id}")
    return state


def jobs(store: SQLiteEventStore, limit: int) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT j.job_id, j.pipeline, j.status, j.created_ts, s.updated_ts"
        " FROM jobs j JOIN streams s USING (job_id) ORDER BY s.last_seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    keys = ("job_id", "pipeline", "status", "created_ts", "updated_ts")
    return [dict(zip(keys, row)) for row in rows]


def events(
    store: SQLiteEventStore,
    job_id: str,
    *,
    type_glob: str | None = None,
    step: str | None = None,
    level: str | None = None,
) -> Iterator[StoredEvent]:
    """JOB's events as they are read, in batches: a million-event job is never held whole."""
    if not store.job_exists(job_id):
        raise Rejected(f"unknown job {job_id}")
    keep = event_filter(type_glob, step, level)
    return (ev for ev in store.read_job(job_id) if keep(ev))


def event_filter(
    type_glob: str | None = None, step: str | None = None, level: str | None = None
) -> Callable[[StoredEvent], bool]:
    """Which events `steplog events` shows: type glob, step, this level and above."""
    levels = set(LEVELS[LEVELS.index(level.upper()) :]) if level else None  # type: ignore[arg-type]

    def keep(ev: StoredEvent) -> bool:
        if type_glob and not fnmatchcase(ev.type, type_glob):
            return False
        if step and ev.step != step:
            return False
        return not (levels and ev.level not in levels)

    return keep


def manifest_document(state: JobState) -> dict[str, Any]:
    doc = state.to_manifest()
    if state.status == "running" and state.owner:
        doc["owner_alive"] = owner_alive(state.owner)
    return doc


def replay_document(view: ReplayView) -> dict[str, Any]:
    return {
        "job_id": view.state.job_id,
        "until": view.point,
        "version": view.version,
        "manifest": view.state.to_manifest(),
        "completed_steps": view.state.completed_steps,
        "pending_steps": view.state.pending_steps,
        "cache_index": {key: entry._asdict() for key, entry in view.cache.items()},
        "events": [ev.envelope() | {"version": ev.version, "seq": ev.seq} for ev in view.events],
    }


def print_manifest(console: Console, state: JobState, *, historical: bool = False) -> None:
    status = state.status
    if not historical and status == "running" and state.owner and owner_alive(state.owner) is False:
        status = "running (owner process gone: resume it)"
    console.print(f"[bold]{state.job_id}[/]  pipeline {state.pipeline}  status [bold]{status}[/]")
    elapsed = f"  elapsed {state.elapsed_s:.3f}s" if state.elapsed_s is not None else ""
    console.print(
        f"created {state.created_ts}  updated {state.updated_ts}{elapsed}  runs {state.runs}  "
        f"events {state.version}"
    )
    if state.inputs:
        console.print("inputs: " + ", ".join(f"{k}={v!r}" for k, v in state.inputs.items()))
    console.print(
        f"calls {state.llm_calls} ({state.llm_failures} failed)  tokens in {state.tokens_in} out "
        f"{state.tokens_out}  cache hits {state.cache_hits} misses {state.cache_misses}  "
        f"files {state.files_written}  cost {cost_text(state.cost, state.unpriced_calls)}"
    )
    if state.budget_exceeded:
        b = state.budget_exceeded
        console.print(
            f"[red]budget:[/] step {b.get('step')} stopped at {b['limit']} "
            f"(max_tokens {b.get('max_tokens')}, max_cost {b.get('max_cost')}; spent "
            f"{b['tokens_spent']} tokens, ${b['cost_spent']:.6f})",
            markup=True, highlight=False,
        )  # fmt: skip
    if state.last_error:
        console.print(f"[red]last error:[/] {state.last_error}", markup=True, highlight=False)
    table = Table()
    for col in ("step", "status", "attempts", "cache", "tokens", "cost", "duration"):
        table.add_column(col)
    shown, hidden = steps_to_show(state)
    for step in shown:
        table.add_row(
            step.name,
            step.status,
            str(step.attempts),
            {True: "hit", False: "miss", None: ""}[step.cache_hit],
            str(step.tokens_in + step.tokens_out),
            cost_text(step.cost, step.unpriced_calls) if step.llm_calls else "",
            f"{step.duration_s:.3f}s" if step.duration_s is not None else "",
        )
    console.print(table)
    if hidden:
        counts = Counter(step.status for step in hidden)
        listed = ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()))
        console.print(
            f"… and {len(hidden):,} more steps ({listed}); `--json` lists every step",
            highlight=False,
        )
    console.print(f"completed_steps: {name_list(state.completed_steps)}", highlight=False)
    console.print(f"pending_steps: {name_list(state.pending_steps)}", highlight=False)


# A table row costs rich about a millisecond: a 10,000-step job would take 10 s to show. Above
# this many steps, the table shows the ones that need attention first and counts the rest.
STEP_ROWS = 200


def steps_to_show(state: JobState) -> tuple[list[Any], list[Any]]:
    """The steps the table lists (in pipeline order) and those it only counts."""
    steps = list(state.steps.values())
    if len(steps) <= STEP_ROWS:
        return steps, []
    # failed, running, pending … first; completed ones fill what room is left
    ranked = [s for s in steps if not s.completed] + [s for s in steps if s.completed]
    keep = {s.name for s in ranked[:STEP_ROWS]}
    return [s for s in steps if s.name in keep], [s for s in steps if s.name not in keep]


def name_list(names: list[str]) -> str:
    if len(names) <= STEP_ROWS:
        return ", ".join(names) or "-"
    return ", ".join(names[:STEP_ROWS]) + f", … ({len(names):,} in all; `--json` lists them)"


# Rows rich lays out as one table; a longer listing goes out a page at a time, so its first
# lines come at once (`steplog events JOB | head`) and memory holds one page, not the job.
EVENT_PAGE = 200


def print_events(console: Console, events: Iterable[StoredEvent]) -> None:
    rows = iter(events)
    page = list(islice(rows, EVENT_PAGE))
    if len(page) < EVENT_PAGE:
        console.print(_events_table(page))
        return
    # Fixed widths, so the pages line up as one table: one header, no edges between pages.
    widths = {
        "#": 9, "ts": max(len(ev.ts) for ev in page), "level": 7,
        "type": max(22, *(len(ev.type) for ev in page)),
        "step": max(4, *(len(ev.step or "") for ev in page)),
    }  # fmt: skip
    # what is left of the line: each column has one space either side, five rules between
    widths["data"] = max(20, console.width - sum(widths.values()) - 2 * 6 - 5)
    first = True
    while page:
        console.print(_events_table(page, widths=widths, header=first))
        first = False
        page = list(islice(rows, EVENT_PAGE))


def _events_table(
    events: list[StoredEvent], *, widths: dict[str, int] | None = None, header: bool = True
) -> Table:
    table = Table(show_header=header, show_edge=widths is None)
    for col in ("#", "ts", "level", "type", "step", "data"):
        width = (widths or {}).get(col)
        table.add_column(col, overflow="fold", min_width=width, max_width=width)
    for ev in events:
        data = ev.data_json if len(ev.data_json) <= 160 else ev.data_json[:157] + "..."
        table.add_row(str(ev.version), ev.ts, ev.level, ev.type, ev.step or "", data)
    return table
