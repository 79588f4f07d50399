"""The `steplog` command line. Each verb builds a command, calls one function, formats the result.

Exit codes: 0 ok, 1 the job failed, 2 the command was rejected or its input is bad,
130/143 interrupted by SIGINT/SIGTERM (the job stays resumable).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

from commands import queries
from commands.display import LiveDisplay, PlainDisplay, cost_text
from commands.jobs import (
    Interrupted,
    Prepared,
    Rejected,
    ResumeCommand,
    RunCommand,
    execute,
    prepare_resume,
    prepare_run,
    stop_recorded,
)
from commands.replay import BadPoint, replay
from eventstore.errors import database_error
from eventstore.events import InvalidEvent
from eventstore.record import StoreError
from eventstore.sqlite import SQLiteEventStore
from executor import drift
from executor.pipeline import PipelineError
from executor.shutdown import DEFAULT_GRACE_S
from projections.store import open_store

USER_ERRORS = (Rejected, PipelineError, StoreError, InvalidEvent, BadPoint)
# A database that breaks under us mid-command (corrupt page, disk full, locked too long)
DATABASE_ERRORS = (sqlite3.DatabaseError, sqlite3.OperationalError)


def console() -> Console:
    """Rich output; wide when piped so tables are not cut to 80 columns."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def _open(
    ctx: click.Context, *, write: bool = False, create: bool | None = None
) -> SQLiteEventStore:
    """The store for this command. write: the verb appends, so a read-only file is refused
    here, before anything starts. create (default: write): a missing file is created; else it
    is refused, so a read verb or a typo in --db leaves no empty database (or directory)."""
    store = ctx.obj.get("store")
    if store is None:
        path = ctx.obj["db"]
        if not (write if create is None else create) and not Path(path).exists():
            raise Rejected(f"no database at {path}; start one with: steplog run PIPELINE.toml")
        store = ctx.obj["store"] = open_store(ctx.obj["db"])
        ctx.call_on_close(store.close)
    if write:
        store.require_writable()
    return store


def _parse_inputs(values: tuple[str, ...]) -> dict[str, str]:
    inputs = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--input")
        inputs[name.strip()] = value
    return inputs


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="STEPLOG_DB",
    default="steplog.db",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite file holding the event log (env STEPLOG_DB).",
)
@click.version_option(package_name="steplog")
@click.pass_context
def cli(ctx: click.Context, db: Path) -> None:
    """steplog: durable multi-step LLM pipelines on an append-only SQLite event log."""
    ctx.ensure_object(dict)
    ctx.obj["db"] = db


def _not_nan(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # FloatRange lets NaN through: it compares false with both bounds
        raise click.BadParameter("nan is not a number of seconds", ctx=ctx, param=param)
    return value


def grace_option(func: Callable[..., Any]) -> Callable[..., Any]:
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


def _run_prepared(
    store: SQLiteEventStore, prepared: Prepared, quiet: bool, grace_s: float = DEFAULT_GRACE_S
) -> None:
    try:
        with stop_recorded(store, prepared.job_id):  # the job is ours from here: Ctrl-C is recorded
            for warning in drift.warnings(prepared.files, prepared.workspace, prepared.plan):
                click.echo(warning, err=True)  # files of skipped steps edited by hand: left
            live = sys.stdout.isatty() and not quiet
            display = (
                LiveDisplay(prepared.state) if live else PlainDisplay(prepared.state, quiet=quiet)
            )
            if not live and not quiet:
                click.echo(
                    f"job {prepared.job_id}: {prepared.pipeline.name}, "
                    f"{len(prepared.plan.run)} step(s) to run"
                )
        with display:
            outcome = execute(store, prepared, observer=display, grace_s=grace_s)
    except Interrupted as stop:
        done = ""
        if stop.report is not None and stop.report.calls_running:
            done = (
                f", {stop.report.calls_finished} running call(s) finished, "
                f"{stop.report.calls_cancelled} cancelled"
            )
        click.echo(
            f"job {prepared.job_id} interrupted ({stop.signal_name}{done}); "
            f"continue with: steplog resume {prepared.job_id}",
            err=True,
        )
        raise SystemExit(stop.exit_code) from None
    state = display.state
    tokens = state.tokens_in + state.tokens_out
    if outcome.succeeded:
        click.echo(
            f"job {prepared.job_id} succeeded: {len(state.steps)} steps, {state.cache_hits} cache hits, "
            f"{state.llm_calls} provider calls, {tokens} tokens, "
            f"{cost_text(state.cost, state.unpriced_calls, 4)}; "
            f"workspace {prepared.workspace}"
        )
        return
    click.echo(
        f"job {prepared.job_id} failed: {one_line(state.last_error or 'see events')}; "
        f"after fixing, run: steplog resume {prepared.job_id}",
        err=True,
    )
    raise SystemExit(1)


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option(
    "--input", "-i", "inputs", multiple=True, metavar="NAME=VALUE", help="Set a pipeline input."
)
@click.option("--job-id", help="Name the job (default: job_<utc time>_<random>).")
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where files are written (default: runs/<job_id>).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the closing line.")
@click.option(
    "--ignore-breaker", is_flag=True, help="Call providers even while their circuit is open."
)
@grace_option
@click.pass_context
def run(
    ctx: click.Context,
    pipeline: Path,
    inputs: tuple[str, ...],
    job_id: str | None,
    workspace: Path | None,
    quiet: bool,
    ignore_breaker: bool,
    grace_s: float,
) -> None:
    """Run PIPELINE (a TOML file) as a new job.

    Example: steplog run examples/factory/pipeline.toml --input idea="a todo CLI"
    """
    store = _open(ctx, write=True)
    cmd = RunCommand(
        pipeline_path=pipeline, inputs=_parse_inputs(inputs), job_id=job_id, workspace=workspace,
        ignore_breaker=ignore_breaker,
    )  # fmt: skip
    _run_prepared(store, prepare_run(store, cmd), quiet, grace_s)


@cli.command()
@click.argument("job")
@click.option(
    "--pipeline",
    type=click.Path(path_type=Path),
    help="Use this pipeline file instead of the job's own.",
)
@click.option("--force", is_flag=True, help="Take over a job whose owner runs on another host.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the closing line.")
@click.option(
    "--ignore-breaker", is_flag=True, help="Call providers even while their circuit is open."
)
@grace_option
@click.pass_context
def resume(
    ctx: click.Context, job: str, pipeline: Path | None, force: bool, quiet: bool,
    ignore_breaker: bool, grace_s: float,
) -> None:  # fmt: skip
    """Continue JOB: skip completed steps, re-run failed and interrupted ones.

    Example: steplog resume job_20261124_101500_ab12cd
    """
    store = _open(ctx, write=True, create=False)
    _run_prepared(
        store,
        prepare_resume(
            store,
            ResumeCommand(
                job_id=job, pipeline_path=pipeline, force=force, ignore_breaker=ignore_breaker
            ),
        ),
        quiet,
        grace_s,
    )


@cli.command("replay")
@click.argument("job")
@click.option(
    "--until", "point", required=True, help="Event number, ISO timestamp, or TYPE[:STEP]."
)
@click.option(
    "--fork", "fork", metavar="NEW_JOB", help="Copy JOB's history up to POINT into a new job."
)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --fork: the fork's workspace (default: runs/<NEW_JOB>).",
)
@json_option
@click.pass_context
def replay_cmd(
    ctx: click.Context,
    job: str,
    point: str,
    fork: str | None,
    workspace: Path | None,
    as_json: bool,
) -> None:
    """Show JOB as it was at POINT: manifest, completed/pending steps, cache, events.

    With --fork NEW_JOB, create a new job whose history is JOB's up to POINT, to resume
    from there (e.g. after fixing a prompt).

    Example: steplog replay job_x --until step.failed:builder
    """
    if fork is not None:
        from commands.cli_debug import print_fork

        print_fork(_open(ctx, write=True, create=False), job, point, fork, workspace, as_json)
        return
    if workspace is not None:
        raise click.UsageError("--workspace is only for --fork")
    view = replay(_open(ctx), job, point)
    if as_json:
        _echo_json(queries.replay_document(view))
        return
    out = console()
    out.print(
        f"[bold]{job}[/] as of event {view.version} ({view.events[-1].type} {view.events[-1].step or ''}, {view.events[-1].ts})"
    )
    queries.print_manifest(out, view.state, historical=True)
    table = Table(title="cache index at this point", title_justify="left")
    for col in ("cache key", "response", "origin job", "origin step"):
        table.add_column(col)
    for entry in view.cache.values():
        table.add_row(
            entry.cache_key[:16],
            entry.response_sha256[:12],
            entry.origin_job,
            entry.origin_step or "",
        )
    out.print(table)
    queries.print_events(out, view.events)


@cli.command()
@click.argument("job", required=False)
@json_option
@click.pass_context
def status(ctx: click.Context, job: str | None, as_json: bool) -> None:
    """Show the manifest of JOB (default: the most recently updated job).

    Example: steplog status job_x --json
    """
    state = queries.status(_open(ctx), job)
    if as_json:
        _echo_json(queries.manifest_document(state))
        return
    queries.print_manifest(console(), state)


@cli.command()
@json_option
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(0, 2**63 - 1),  # SQLite's integers: larger was an OverflowError
    help="Most recent jobs to show.",
)
@click.pass_context
def jobs(ctx: click.Context, as_json: bool, limit: int) -> None:
    """List jobs, most recent first.

    Example: steplog jobs --limit 10
    """
    rows = queries.jobs(_open(ctx), limit)
    if as_json:
        _echo_json(rows)
        return
    table = Table()
    for col in ("job", "pipeline", "status", "created", "updated"):
        table.add_column(col, no_wrap=True)
    for row in rows:
        created, updated = (row[k][:19].replace("T", " ") for k in ("created_ts", "updated_ts"))
        table.add_row(row["job_id"], row["pipeline"] or "", row["status"], created, updated)
    console().print(table)


@cli.command()
@click.argument("job")
@click.option("--type", "type_glob", help="Only events whose type matches this glob, e.g. 'llm.*'.")
@click.option("--step", help="Only events of this step.")
@click.option(
    "--level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="This level and above.",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing new events until the job ends (or Ctrl-C)."
)
@click.option(
    "--interval",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.01, 60),
    help="With --follow: seconds between polls.",
)
@json_option
@click.pass_context
def events(
    ctx: click.Context,
    job: str,
    type_glob: str | None,
    step: str | None,
    level: str | None,
    follow: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Print JOB's events; --json prints JSON lines in the predecessor's envelope.

    Example: steplog events job_x --type 'llm.*' --json
    """
    if follow:
        from commands.cli_debug import follow_events

        follow_events(_open(ctx), job, type_glob, step, level, interval, as_json)
        return
    found = queries.events(_open(ctx), job, type_glob=type_glob, step=step, level=level)
    if as_json:
        for ev in found:
            click.echo(json.dumps(ev.envelope(), ensure_ascii=False))
        return
    queries.print_events(console(), found)


def _check_arguments(args: list[str]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates, which neither the log (JSON)
    nor SQLite can hold: refuse them here rather than half-way through a command."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            try:  # show the bytes as given: b'\xff' rather than '\udcff'
                shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                shown = arg.encode("utf-8", "backslashreplace").decode("utf-8")
            raise click.UsageError(f"argument '{shown}' is not valid UTF-8") from None
        if "\0" in arg:  # a real command line cannot carry NUL; main() called from Python can
            raise click.UsageError(f"argument {arg!r} contains a NUL character")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    obj: dict[str, Any] = {}  # the group fills in "db", so an error can name the file
    try:
        _check_arguments(sys.argv[1:])
        cli.main(standalone_mode=False, obj=obj)
    except USER_ERRORS as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(2)
    except DATABASE_ERRORS as exc:
        click.echo(f"error: {one_line(str(database_error(obj.get('db'), exc)))}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        if exc.ctx is not None and not sys.argv[1:]:
            click.echo(exc.ctx.get_help())  # bare `steplog`: show what it can do
            sys.exit(0)
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except OSError as exc:  # the output could not be written: a full disk behind `>` …
        # (click itself ends a closed pipe, `| head`, quietly with exit 1.) fd 1 now goes
        # nowhere, so the flush at exit cannot print a second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: cannot write: {where}{exc.strerror or one_line(str(exc))}", err=True)
        sys.exit(2)


import commands.cli_providers  # noqa: E402,F401
import commands.cli_debug  # noqa: E402,F401
import commands.cli_audit  # noqa: E402,F401
import commands.cli_interchange  # noqa: E402,F401

if __name__ == "__main__":
    # `python -m commands.cli` runs this file as __main__, but the verb modules imported above
    # register on the `cli` of the module `commands.cli`: run that one so they are all there.
    from commands.cli import main as _registered_main

    _registered_main()
