"""How results are shown in a terminal: the manifest, events and audit as rich tables.

The services in steplog.commands return data; this module is the one place that lays it out.
"""

from __future__ import annotations

from collections import Counter
from itertools import islice
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from steplog.eventstore.record import StoredEvent
from steplog.executor.ownership import owner_alive
from steplog.projections.manifest import JobState


def cost_text(cost: float, unpriced_calls: int, places: int = 6) -> str:
    """USD spent; answered calls of a model without a price make it a lower bound, said so."""
    text = f"${cost:.{places}f}"
    if not unpriced_calls:
        return text
    return f"{text} + {unpriced_calls} unpriced call{'s' if unpriced_calls > 1 else ''}"


def calls_text(made: int, answered: int, failed: int, unanswered: int) -> str:
    """The one way every verb states a job's calls: made (each may be billed), and how each
    ended. Unanswered: no response recorded (in flight, or the process died mid-call)."""
    return f"calls {made}: {answered} answered, {failed} failed, {unanswered} unanswered"


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
        f"{calls_text(state.llm_calls, state.llm_answered, state.llm_failures, state.llm_unanswered)}"
        f"  tokens in {state.tokens_in} out "
        f"{state.tokens_out}  cache hits {state.cache_hits} misses {state.cache_misses}  "
        f"files {state.files_written}  cost {cost_text(state.cost, state.unpriced_calls)}"
    )
    if state.tokens_reserved or state.cost_reserved:
        console.print(
            f"reserved by calls in flight: {state.tokens_reserved} tokens, "
            f"${state.cost_reserved:.6f}",
            highlight=False,
        )
    if state.budget_exceeded:
        b = state.budget_exceeded
        # events before schema 5 have no reserved figures (and their spent includes them)
        held = ""
        if b.get("cost_reserved") is not None:
            held = f"reserved {b['tokens_reserved']} tokens, ${b['cost_reserved']:.6f}; "
        console.print(
            f"[red]budget:[/] step {b.get('step')} stopped at {b['limit']} "
            f"(max_tokens {b.get('max_tokens')}, max_cost {b.get('max_cost')}); when refused: "
            f"spent {b['tokens_spent']} tokens, ${b['cost_spent']:.6f}; {held}"
            f"estimate {b['estimate_tokens']} tokens, ${b.get('estimate_cost') or 0:.6f}",
            markup=True,
            highlight=False,
        )
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
        "#": 9,
        "ts": max(len(ev.ts) for ev in page),
        "level": 7,
        "type": max(22, *(len(ev.type) for ev in page)),
        "step": max(4, *(len(ev.step or "") for ev in page)),
    }
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


def _time(ts: str | None) -> str:
    return ts[11:23] if ts else ""


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_audit(out: Console, doc: dict[str, Any]) -> None:
    s = doc["summary"]
    cost = "" if s["cost"] is None else f", cost {s['cost']:.6g}"
    if s.get("tokens_reserved") or s.get("cost_reserved"):
        cost += (
            f"; reserved by calls in flight {s['tokens_reserved']} tokens, {s['cost_reserved']:.6g}"
        )
    out.print(
        f"[bold]{s['job_id']}[/] ({s['pipeline']}): {s['status']}; started {s['started'] or '-'},"
        f" finished {s['finished'] or '-'}, {_num(s['duration_s'])} s"
    )
    out.print(
        f"steps {s['steps']}: {s['steps_succeeded']} succeeded, {s['steps_failed']} failed; "
        f"{calls_text(s['calls'], s['answered_calls'], s['failed_calls'], s['unanswered_calls'])}"
        f"; tokens in {s['tokens_in']}, "
        f"out {s['tokens_out']}{cost}"
    )
    cache = doc["cache"]
    out.print(
        f"cache: {cache['hits']} hits, {cache['misses']} misses, "
        f"{cache['tokens_saved']} tokens saved"
    )
    for ev in doc["lifecycle"]:
        error = f": {ev['error']}" if ev["error"] else ""
        out.print(f"  {_time(ev['ts'])} {ev['type']}{error}")

    timeline = Table(title="step runs", title_justify="left")
    for col in ("step", "attempt", "status", "started", "seconds", "cache"):
        timeline.add_column(col)
    for r in doc["step_runs"]:
        cache_col = {None: "", 0: "miss", 1: "hit"}.get(r["cache_hit"], str(r["cache_hit"]))
        status = r["status"] + (" (copied)" if r["copied"] else "")
        timeline.add_row(
            r["step"],
            _num(r["attempt"]),
            status,
            _time(r["started"]),
            _num(r["duration_s"]),
            cache_col,
        )
    out.print(timeline)

    calls = Table(title="LLM calls", title_justify="left")
    for col in ("step", "attempt", "provider", "model", "seconds", "in", "out", "cost", "result"):
        calls.add_column(col)
    for c in doc["llm_calls"]:
        failed = f"failed: {c['error_class']}" if c["error_class"] else "failed"
        result = {1: "ok", 0: failed, None: "unanswered"}[c["success"]]
        result += " (copied)" if c["copied"] else ""
        calls.add_row(
            c["step"],
            _num(c["attempt"]),
            c["provider"],
            c["model"],
            _num(c["duration_s"]),
            _num(c["tokens_in"]),
            _num(c["tokens_out"]),
            _num(c["cost"]),
            result,
        )
    out.print(calls)
    if doc["retries"]:
        out.print(
            "retries: " + ", ".join(f"{step} {n}" for step, n in sorted(doc["retries"].items()))
        )
    for hit in doc["cache"]["reused"]:
        out.print(
            f"cache hit: {hit['step']} reused {hit['origin_job']}/{hit['origin_step']}"
            f" ({hit['tokens_saved']} tokens saved)"
        )

    files = Table(title="files written", title_justify="left")
    for col in ("step", "path", "sha256", "wrote", "reason", "bytes"):
        files.add_column(col)
    for f in doc["files"]:
        files.add_row(
            f["step"],
            f["path"],
            f["sha256"][:16],
            "yes" if f["wrote"] else "no",
            f["reason"],
            _num(f["size"]),
        )
    out.print(files if doc["files"] else "no files written")

    if doc["failures"]:
        out.print("[bold]failures[/]")
        for f in doc["failures"]:
            where = f"{f['what']} {f['step']} attempt {f['attempt']}"
            kind = f" ({f['kind']})" if f["kind"] else ""
            out.print(f"  {where}{kind}: {f['error'] or 'no error recorded'}")
    else:
        out.print("no failures")
