"""How results are shown in a terminal: the manifest, events, audit, jobs, SQL rows and the
provider check, laid out with rich. The services in steplog.commands return data; this module
is the one place that prints it with rich.

Text from the log, a pipeline or a server is printed as it is. The console (`console()`)
interprets no markup, converts no `:emoji:` codes and highlights nothing, and every string it
renders (a line, a table cell, a title) goes through `words.visible` first, so a control
character is shown escaped instead of moving the cursor. Styles are rich `Text` styles given
here (`line`), never markup inside a string. Figures are worded by steplog.words.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from itertools import islice
from typing import Any, Iterable, Optional, Union

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from steplog.eventstore.record import StoredEvent
from steplog.executor.ownership import owner_alive
from steplog.projections.manifest import JobState
from steplog.words import counted, money, number, one_line, seconds, visible

# -- the console ----------------------------------------------------------------------------


class LogConsole(Console):
    """A rich console that shows text as it is: no markup, no emoji codes, no highlighting,
    whatever a caller asks for, and control characters escaped (a newline is kept: a cell or
    a block may span lines)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **options)

    def render_str(
        self,
        text: str,
        *,
        style: Any = "",
        justify: Any = None,
        overflow: Any = None,
        emoji: Optional[bool] = None,
        markup: Optional[bool] = None,
        highlight: Optional[bool] = None,
        highlighter: Any = None,
    ) -> Text:
        return super().render_str(
            visible(text),
            style=style,
            justify=justify,
            overflow=overflow,
            emoji=False,
            markup=False,
            highlight=False,
        )


# Piped output is wide, so tables are not cut to 80 columns, unless COLUMNS says how wide.
PIPED_WIDTH = 200


def console(**options: Any) -> LogConsole:
    """The console every verb prints with: the terminal's width, or COLUMNS, or PIPED_WIDTH."""
    sized = sys.stdout.isatty() or os.environ.get("COLUMNS", "").strip().isdigit()
    return LogConsole(soft_wrap=True, width=None if sized else PIPED_WIDTH, **options)


Part = Union[str, tuple[str, str]]


def line(*parts: Part) -> Text:
    """One line of text from plain parts and (text, style) parts; every part is shown on one
    line (`words.one_line`), so a newline inside a value cannot start a line of its own."""
    text = Text(no_wrap=False)
    for part in parts:
        if isinstance(part, tuple):
            text.append(one_line(part[0]), style=part[1])
        else:
            text.append(one_line(part))
    return text


def new_table(columns: Iterable[str], **options: Any) -> Table:
    """A rich table whose every column folds a value too long for it onto the next line
    (rich's default cuts it short with …): a table never hides text, at any width."""
    table = Table(**options)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def cost_text(cost: float, unpriced_calls: int) -> str:
    """USD spent; answered calls of a model without a price make it a lower bound, said so."""
    if not unpriced_calls:
        return money(cost)
    return f"{money(cost)} + {counted(unpriced_calls, 'unpriced call')}"


def calls_text(made: int, answered: int, failed: int, unanswered: int) -> str:
    """The one way every verb states a job's calls: made (each may be billed), and how each
    ended. Unanswered: no response recorded (in flight, or the process died mid-call)."""
    return f"calls {made}: {answered} answered, {failed} failed, {unanswered} unanswered"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# -- status and replay ----------------------------------------------------------------------


def print_manifest(console: Console, state: JobState, *, historical: bool = False) -> None:
    status = state.status
    if not historical and status == "running" and state.owner and owner_alive(state.owner) is False:
        status = "running (owner process gone: resume it)"
    console.print(
        line(
            (state.job_id, "bold"),
            "  pipeline ",
            state.pipeline or "",
            "  status ",
            (status, "bold"),
        )
    )
    elapsed = f"  elapsed {seconds(state.elapsed_s)}" if state.elapsed_s is not None else ""
    console.print(
        line(
            f"created {state.created_ts}  updated {state.updated_ts}{elapsed}  runs {state.runs}  "
            f"events {state.version}"
        )
    )
    if state.batch is not None:
        console.print(line("batch ", state.batch))
    for name, value in state.inputs.items():
        console.print(line(f"input {name}: ", _value(value)))
    console.print(
        line(
            f"{calls_text(state.llm_calls, state.llm_answered, state.llm_failures, state.llm_unanswered)}"
            f"  tokens in {state.tokens_in} out {state.tokens_out}  cache hits {state.cache_hits}"
            f" misses {state.cache_misses}  files {state.files_written}"
            f"  cost {cost_text(state.cost, state.unpriced_calls)}"
        )
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
            held = (
                f"reserved {counted(b['tokens_reserved'], 'token')}, {money(b['cost_reserved'])}; "
            )
        max_cost = b.get("max_cost")
        console.print(
            line(
                ("budget:", "red"),
                f" step {b.get('step')} stopped at {b['limit']} (max_tokens {b.get('max_tokens')}, "
                f"max_cost {money(max_cost) if max_cost is not None else None}); when refused: "
                f"spent {counted(b['tokens_spent'], 'token')}, {money(b['cost_spent'])}; {held}"
                f"estimate {counted(b['estimate_tokens'], 'token')}, "
                f"{money(b.get('estimate_cost') or 0)}",
            )
        )
    if state.last_error:
        console.print(line(("last error:", "red"), " ", state.last_error))
    table = new_table(("step", "status", "attempts", "cache", "tokens", "cost", "duration"))
    shown, hidden = steps_to_show(state)
    for step in shown:
        table.add_row(
            step.name,
            step.status,
            str(step.attempts),
            {True: "hit", False: "miss", None: ""}[step.cache_hit],
            str(step.tokens_in + step.tokens_out),
            cost_text(step.cost, step.unpriced_calls) if step.llm_calls else "",
            seconds(step.duration_s),
        )
    console.print(table)
    if hidden:
        counts = Counter(step.status for step in hidden)
        listed = ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()))
        console.print(
            f"… and {counted(len(hidden), 'more step', grouped=True)} ({listed}); "
            "`--json` lists every step"
        )
    console.print(f"completed_steps: {name_list(state.completed_steps)}")
    console.print(f"pending_steps: {name_list(state.pending_steps)}")


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


def print_replay(out: Console, view: Any) -> None:
    """`replay JOB --until POINT`: the job as of that event, its cache index, its events."""
    last = view.events[-1]
    out.print(
        line(
            (view.state.job_id, "bold"),
            f" as of event {view.version} ({last.type} {last.step or ''}, {last.ts})",
        )
    )
    print_manifest(out, view.state, historical=True)
    table = new_table(
        ("cache key", "response", "origin job", "origin step"),
        title="cache index at this point",
        title_justify="left",
    )
    entries = list(view.cache.values())
    for entry in entries[:STEP_ROWS]:  # a row costs rich about a millisecond: see STEP_ROWS
        table.add_row(
            entry.cache_key[:16],
            entry.response_sha256[:12],
            entry.origin_job,
            entry.origin_step or "",
        )
    out.print(table)
    if len(entries) > STEP_ROWS:
        more = counted(len(entries) - STEP_ROWS, "more cache key", grouped=True)
        out.print(f"… and {more}; `--json` lists every one")
    print_events(out, view.events)


def print_jobs(out: Console, rows: list[dict[str, Any]]) -> None:
    table = new_table(("job", "pipeline", "status", "created", "updated"))
    for row in rows:
        created, updated = (row[k][:19].replace("T", " ") for k in ("created_ts", "updated_ts"))
        table.add_row(row["job_id"], row["pipeline"] or "", row["status"], created, updated)
    out.print(table)


# -- events ---------------------------------------------------------------------------------

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
    console.print(_events_table(page, widths=widths, header=True))
    while page := list(islice(rows, EVENT_PAGE)):
        console.file.write(_events_rows(console, page, widths))


_EVENT_COLUMNS = ("#", "ts", "level", "type", "step", "data")


def _folded(console: Console, text: str, width: int) -> list[str]:
    """A cell's lines as the table folds them; one that fits (every cell but a long `data`)
    is its own line, without rich's wrap."""
    if "\n" not in text and cell_len(text) <= width:
        return [text] if text else []
    return [part.plain for part in Text(text).wrap(console, width, overflow="fold")]


def _events_rows(console: Console, events: list[StoredEvent], widths: dict[str, int]) -> str:
    """The rows `_events_table(events, widths=widths, header=False)` prints, the same bytes
    (tests/test_event_pages.py holds them equal), laid out here: rich's table costs about half
    a millisecond a row, 25 s for a 10,000-step job's 50,000 events. Each cell is folded by
    rich's own wrap, as the table does."""
    out: list[str] = []
    for ev in events:
        cells = (str(ev.version), ev.ts, ev.level, ev.type, ev.step or "", ev.data_json)
        folded = [
            _folded(console, visible(value), widths[col])
            for col, value in zip(_EVENT_COLUMNS, cells)
        ]
        for i in range(max(map(len, folded))):
            parts = []
            for col, lines in zip(_EVENT_COLUMNS, folded):
                text = lines[i] if i < len(lines) else ""
                parts.append(text + " " * (widths[col] - cell_len(text)))
            out.append(" " + " │ ".join(parts) + " \n")
    return "".join(out)


def _events_table(
    events: list[StoredEvent], *, widths: dict[str, int] | None = None, header: bool = True
) -> Table:
    table = Table(show_header=header, show_edge=widths is None)
    for col in _EVENT_COLUMNS:
        width = (widths or {}).get(col)
        table.add_column(col, overflow="fold", min_width=width, max_width=width)
    for ev in events:
        # the data whole, as the log holds it (folded over several lines when it is long)
        table.add_row(str(ev.version), ev.ts, ev.level, ev.type, ev.step or "", ev.data_json)
    return table


# -- audit ----------------------------------------------------------------------------------


def _time(ts: str | None) -> str:
    return ts[11:23] if ts else ""


def _num(value: Any) -> str:
    return "" if value is None else number(value)


def _cost(value: float | None) -> str:
    return "" if value is None else money(value)


def print_audit(out: Console, doc: dict[str, Any]) -> None:
    s = doc["summary"]
    cost = "" if s["cost"] is None else f", cost {money(s['cost'])}"
    if s.get("tokens_reserved") or s.get("cost_reserved"):
        cost += (
            f"; reserved by calls in flight {counted(s['tokens_reserved'], 'token')}, "
            f"{money(s['cost_reserved'])}"
        )
    out.print(
        line(
            (s["job_id"], "bold"),
            f" ({s['pipeline']}): {s['status']}; started {s['started'] or '-'},"
            f" finished {s['finished'] or '-'}, {seconds(s['duration_s'], '-')}",
        )
    )
    out.print(
        line(
            f"steps {s['steps']}: {s['steps_succeeded']} succeeded, {s['steps_failed']} failed; "
            f"{calls_text(s['calls'], s['answered_calls'], s['failed_calls'], s['unanswered_calls'])}"
            f"; tokens in {s['tokens_in']}, out {s['tokens_out']}{cost}"
        )
    )
    cache = doc["cache"]
    out.print(
        line(
            f"cache: {counted(cache['hits'], 'hit')}, {counted(cache['misses'], 'miss', 'misses')}, "
            f"{counted(cache['tokens_saved'], 'token')} saved"
        )
    )
    for ev in doc["lifecycle"]:
        error = f": {ev['error']}" if ev["error"] else ""
        out.print(line(f"  {_time(ev['ts'])} {ev['type']}{error}"))

    timeline = new_table(
        ("step", "attempt", "status", "started", "time", "cache"),
        title="step runs",
        title_justify="left",
    )
    for r in doc["step_runs"]:
        cache_col = {None: "", 0: "miss", 1: "hit"}.get(r["cache_hit"], str(r["cache_hit"]))
        status = r["status"] + (" (copied)" if r["copied"] else "")
        timeline.add_row(
            r["step"],
            _num(r["attempt"]),
            status,
            _time(r["started"]),
            seconds(r["duration_s"]),
            cache_col,
        )
    out.print(timeline)

    calls = new_table(
        ("step", "attempt", "provider", "model", "time", "in", "out", "cost", "result"),
        title="LLM calls",
        title_justify="left",
    )
    for c in doc["llm_calls"]:
        failed = f"failed: {c['error_class']}" if c["error_class"] else "failed"
        result = {1: "ok", 0: failed, None: "unanswered"}[c["success"]]
        result += " (copied)" if c["copied"] else ""
        calls.add_row(
            c["step"],
            _num(c["attempt"]),
            c["provider"],
            c["model"],
            seconds(c["duration_s"]),
            _num(c["tokens_in"]),
            _num(c["tokens_out"]),
            _cost(c["cost"]),
            result,
        )
    out.print(calls)
    if doc["retries"]:
        out.print(
            line(
                "retries: " + ", ".join(f"{step} {n}" for step, n in sorted(doc["retries"].items()))
            )
        )
    for hit in doc["cache"]["reused"]:
        out.print(
            line(
                f"cache hit: {hit['step']} reused {hit['origin_job']}/{hit['origin_step']}"
                f" ({counted(hit['tokens_saved'] or 0, 'token')} saved)"
            )
        )

    files = new_table(
        ("step", "path", "sha256", "wrote", "reason", "bytes"),
        title="files written",
        title_justify="left",
    )
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
        out.print(line(("failures", "bold")))
        for f in doc["failures"]:
            where = f"{f['what']} {f['step']} attempt {f['attempt']}"
            kind = f" ({f['kind']})" if f["kind"] else ""
            out.print(line(f"  {where}{kind}: ", f["error"] or "no error recorded"))
    else:
        out.print("no failures")


# -- providers check ------------------------------------------------------------------------


def print_provider_checks(out: Console, results: Iterable[Any]) -> None:
    table = new_table(("provider", "kind", "url", "status"))
    for r in results:
        status = line(("OK: " if r.ok else "error: ", "green" if r.ok else "red"), r.detail)
        table.add_row(r.provider, r.kind, r.url or "-", status)
    out.print(table)


# -- sql ------------------------------------------------------------------------------------

# A cell shows at most this many characters of a value (about 1,250 lines at 80 columns);
# --json and --csv print every value whole.
CELL_CHARS = 100_000


def cell(value: Any) -> str:
    """One SQL value as the table shows it: NULL empty, a number by words.number, a blob that
    is UTF-8 text as that text, any other blob as `<N bytes>`; a very long text cut at
    CELL_CHARS, saying how much more there is."""
    if value is None:
        return ""
    if isinstance(value, bool):  # PostgreSQL's boolean (SQLite has none)
        return "true" if value else "false"
    if not isinstance(value, (str, bytes, int, float)):  # PostgreSQL: numeric, dates, arrays …
        from steplog.commands.readonly import plain_value

        value = plain_value(value)
        if not isinstance(value, (str, bytes, int, float)):
            value = str(value)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{counted(len(value), 'byte')}>"
    if not isinstance(value, str):
        return number(value)
    if len(value) > CELL_CHARS:
        more = counted(len(value) - CELL_CHARS, "more character", grouped=True)
        return f"{value[:CELL_CHARS]}… ({more}; --json or --csv prints it all)"
    return value


# A column narrower than this (or than its header) is too narrow to read a value in.
READABLE_COLUMN = 12
# the rule above each record of the expanded display
RECORD_RULE = 40
# rich's default box with padding 1: "│ " before each column, " │" after the last
BORDERS_PER_COLUMN, BORDER_AFTER_LAST = 3, 1


def _width(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(part) for part in text.split("\n")), default=0)


def column_widths(columns: list[str], rows: list[list[str]], width: int) -> list[int] | None:
    """Widths for a table of `rows` in `width` columns: each column as wide as its widest
    value, the widest ones narrowed (their values wrap) until the table fits, none below its
    header or READABLE_COLUMN. None: even that does not fit, so show records instead."""
    natural = [
        max([_width(name), *(_width(row[i]) for row in rows)]) for i, name in enumerate(columns)
    ]
    floors = [min(n, max(_width(name), READABLE_COLUMN)) for n, name in zip(natural, columns)]
    room = width - BORDERS_PER_COLUMN * len(columns) - BORDER_AFTER_LAST
    if sum(floors) > room:
        return None
    if sum(natural) <= room:
        return natural
    # the largest cap on the widest columns that fits: every column min(natural, max(floor, cap))
    low, high = 0, max(natural)
    while low < high:
        cap = (low + high + 1) // 2
        if sum(min(n, max(f, cap)) for n, f in zip(natural, floors)) <= room:
            low = cap
        else:
            high = cap - 1
    return [min(n, max(f, low)) for n, f in zip(natural, floors)]


def print_rows(out: Console, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """`steplog sql`'s table: a table when its columns fit the width (wide values wrap), else
    one record per row, each column's name and value on a line of their own (as psql's
    expanded display), so a wide result such as `SELECT * FROM job_summary` reads at 80
    columns. Then the number of rows."""
    shown = [[cell(v) for v in row] for row in rows]
    names = [visible(c) for c in columns]
    widths = column_widths(names, [[visible(v) for v in r] for r in shown], out.width)
    if widths is not None:
        table = Table(show_edge=True)
        for name, w in zip(columns, widths):
            table.add_column(name, width=w, overflow="fold")
        for row in shown:
            table.add_row(*row)
        out.print(table)
    else:
        name_width = max(_width(n) for n in names)
        for number_, row in enumerate(shown, 1):
            heading = f"-[ row {number_} ]"
            out.print(heading + "-" * max(0, min(out.width, RECORD_RULE) - len(heading)))
            record = Table.grid(padding=(0, 2))
            record.add_column(width=name_width, overflow="fold")
            record.add_column(overflow="fold")
            for name, value in zip(columns, row):
                record.add_row(name, value)
            out.print(record)
    out.print(counted(len(rows), "row"))
