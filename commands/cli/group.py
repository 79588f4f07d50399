"""The `steplog` group and what every verb shares: the store for --db, option decorators for
--json, --quiet, --input, --workspace and --grace, and JSON and console output.

Every command pays for what it imports before it does anything, so the group knows its verbs
from VERBS and imports a verb's module only when that verb runs: `steplog --help` lists them
all without importing any, and `steplog status` imports neither the executor nor the providers.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from steplog.api import Steplog
from steplog.words import one_line

if TYPE_CHECKING:
    from rich.console import Console

    from steplog.eventstore.record import EventStore

# verb -> (its module in steplog.commands.cli, its one-line help as `steplog --help` lists it).
# The module registers the verb on `cli` when imported; tests/test_cli_verbs.py checks that
# each line here is the command's own short help and that every verb is listed.
VERBS: dict[str, tuple[str, str]] = {
    "cancel": (
        "queue",
        "Cancel JOB: a queued job never starts; a running one is stopped by its owner.",
    ),
    "audit": (
        "audit",
        "Report on JOB from the audit views: step runs, LLM calls with failures and retries, "
        "tokens and cost, cache hits and tokens saved, files written, failures and why.",
    ),
    "copy": ("copy", "Copy every job, blob and projection table of database SRC into DST."),
    "events": (
        "inspect",
        "Print JOB's events; --json prints JSON lines in the predecessor's envelope.",
    ),
    "export": ("interchange", "Write JOB's events (and the blobs they point at) as JSON lines."),
    "import": (
        "interchange",
        "Load FILE (a steplog export or the predecessor's events.jsonl) as a new job.",
    ),
    "jobs": ("inspect", "List jobs, most recent first."),
    "plan": (
        "debug",
        "Predict, without calling any provider, which steps the cache serves and why others miss.",
    ),
    "providers": ("providers", "Reach the LLM providers a pipeline configures."),
    "replay": (
        "inspect",
        "Show JOB as it was at POINT: manifest, completed/pending steps, cache, events.",
    ),
    "resume": ("run", "Continue JOB: skip completed steps, re-run failed and interrupted ones."),
    "run": ("run", "Run PIPELINE (a TOML file) as a new job."),
    "show": (
        "show",
        "Show one attempt of STEP in JOB: rendered prompt, answer, output, cost, files.",
    ),
    "submit": ("queue", "Queue PIPELINE (a TOML file) as a new job for a worker; print its id."),
    "sql": ("audit", "Run one read-only SQL query on the database (tables and audit views)."),
    "status": ("inspect", "Show the manifest of JOB (default: the most recently updated job)."),
    "timeline": (
        "interchange",
        "Draw JOB as a timeline: one bar per step attempt, dependencies, retries, resumes.",
    ),
    "ui": (
        "ui",
        "Serve a web app over the database: jobs live, prompts, answers, replay, resume and fork.",
    ),
    "worker": (
        "queue",
        "Claim queued jobs (and jobs whose owner's lease expired) and run them.",
    ),
    "workers": (
        "queue",
        "List the workers (and run/resume processes): alive or not, host, pid, jobs, heartbeat.",
    ),
    "verify": (
        "audit",
        "Check the database: hash chains, append-only triggers and schema version, SQLite "
        "integrity, projection tables against a fresh fold, blobs against their sha256.",
    ),
}


class LazyGroup(click.Group):
    """A group whose verbs (VERBS) are imported when one is looked up, not before."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in VERBS:
            importlib.import_module(f"{__package__}.{VERBS[cmd_name][0]}")
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing, from VERBS: each line shortened to fit as click would."""
        limit = formatter.width - 6 - max(map(len, VERBS))
        rows = [
            (name, click.Command(name, help=summary).get_short_help_str(limit))
            for name, (_, summary) in sorted(VERBS.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def console() -> Console:
    """Rich output that shows text as it is (render.LogConsole): the terminal's width, or
    COLUMNS, and wide when piped so tables are not cut to 80 columns."""
    from steplog.commands.cli.render import console as log_console

    return log_console()


def say(text: str, *, err: bool = False) -> None:
    """One line of plain output (a progress line, an error line, a line of `plan`): text as
    it is, control characters, newlines too, shown escaped (words.one_line)."""
    click.echo(one_line(text), err=err)


# JSON escapes U+0000-U+001F itself; these (DEL, C1, the Unicode line breaks) it leaves raw,
# and a terminal or a line-based reader may act on them
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}


def json_text(value: Any, indent: int | None = None) -> str:
    """`value` as JSON: text exactly as the log holds it (non-ASCII as it is) once parsed,
    with every control character escaped so that no terminal acts on one."""
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str).translate(
        _JSON_ESCAPES
    )


def app_for(ctx: click.Context) -> Steplog:
    """The Python API over --db: every verb is a client of it."""
    return ctx.find_root().obj["app"]


def store_for(ctx: click.Context, *, write: bool = False, create: bool | None = None) -> EventStore:
    """The API's store, for the verbs that render what the services return. write: the verb
    appends, so a read-only file is refused here, before anything starts. create (default:
    write): a missing file is created; else it is refused, so a read verb or a typo in --db
    leaves no empty database (or directory)."""
    return app_for(ctx).open_store(write=write, create=create)


def parse_inputs(values: tuple[str, ...]) -> dict[str, str]:
    inputs = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--input")
        inputs[name.strip()] = value
    return inputs


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)


def quiet_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--quiet", "-q", is_flag=True, help="Print only the closing line.")(func)


def inputs_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--input NAME=VALUE, repeatable; `parse_inputs` turns what was given into a dict."""
    return click.option(
        "--input", "-i", "inputs", multiple=True, metavar="NAME=VALUE", help="Set a pipeline input."
    )(func)


def workspace_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--workspace", type=click.Path(file_okay=False, path_type=Path), help=help)


def ignore_breaker_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--ignore-breaker", is_flag=True, help="Call providers even while their circuit is open."
    )(func)


def echo_json(value: Any) -> None:
    click.echo(json_text(value, indent=2))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="STEPLOG_DB",
    default="steplog.db",
    show_default=True,
    type=click.Path(dir_okay=False),  # a str: Path() would fold a URL's //
    help="The event log: a SQLite file, or a postgresql:// URL (env STEPLOG_DB).",
)
@click.version_option(package_name="steplog")
@click.pass_context
def cli(ctx: click.Context, db: str) -> None:
    """steplog: durable multi-step LLM pipelines on an append-only event log (SQLite, or
    PostgreSQL for a log shared by many machines)."""
    ctx.ensure_object(dict)
    app = ctx.obj["app"] = Steplog(db)
    ctx.obj["db"] = app.path
    ctx.call_on_close(app.close)


def _not_nan(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # FloatRange lets NaN through: it compares false with both bounds
        raise click.BadParameter("nan is not a number of seconds", ctx=ctx, param=param)
    return value


def grace_option(func: Callable[..., Any]) -> Callable[..., Any]:
    from steplog.executor.shutdown import DEFAULT_GRACE_S  # run and resume import it anyway

    return click.option(
        "--grace",
        "grace_s",
        envvar="STEPLOG_GRACE_S",
        default=DEFAULT_GRACE_S,
        show_default=True,
        type=click.FloatRange(0, 3600),
        callback=_not_nan,
        metavar="SECONDS",
        help="On Ctrl-C/SIGTERM, how long running provider calls may finish before they are "
        "cancelled (0: at once; env STEPLOG_GRACE_S).",
    )(func)
