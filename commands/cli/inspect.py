"""Reading the log: `status`, `jobs`, `events` and `replay --until`.

`status` and `jobs` are what people run most: this module imports only the store and the
manifest fold up front; rich and the rest come inside the verb that prints with them.
"""

from __future__ import annotations

from pathlib import Path

import click

from steplog.commands import queries
from steplog.commands.cli.group import (
    app_for,
    cli,
    console,
    echo_json,
    json_option,
    json_text,
    store_for,
    workspace_option,
)


@cli.command("replay")
@click.argument("job")
@click.option(
    "--until", "point", required=True, help="Event number, ISO timestamp, or TYPE[:STEP]."
)
@click.option(
    "--fork", "fork", metavar="NEW_JOB", help="Copy JOB's history up to POINT into a new job."
)
@workspace_option("With --fork: the fork's workspace (default: runs/<NEW_JOB>).")
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
        from steplog.commands.cli.debug import print_fork

        store = store_for(ctx, write=True, create=False)
        print_fork(store, queries.resolve_job(store, job), point, fork, workspace, as_json)
        return
    if workspace is not None:
        raise click.UsageError("--workspace is only for --fork")
    from steplog.commands.cli.render import print_replay
    from steplog.commands.replay import replay

    store = store_for(ctx)
    job = queries.resolve_job(store, job)
    view = replay(store, job, point)
    if as_json:
        echo_json(queries.replay_document(view))
        return
    print_replay(console(), view)


@cli.command()
@click.argument("job", required=False)
@json_option
@click.pass_context
def status(ctx: click.Context, job: str | None, as_json: bool) -> None:
    """Show the manifest of JOB (default: the most recently updated job).

    Example: steplog status job_x --json
    """
    state = app_for(ctx).job_state(job)
    if as_json:
        echo_json(queries.manifest_document(state))
        return
    from steplog.commands.cli.render import print_manifest

    print_manifest(console(), state)


@cli.command()
@json_option
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(0, 2**63 - 1),  # SQLite's integers: larger was an OverflowError
    help="Most recent jobs to show.",
)
@click.option("--batch", help="Only the jobs of this batch (run --inputs).")
@click.pass_context
def jobs(ctx: click.Context, as_json: bool, limit: int, batch: str | None) -> None:
    """List jobs, most recent first.

    Example: steplog jobs --limit 10
    """
    rows = queries.jobs(store_for(ctx), limit, batch)
    if as_json:
        echo_json(rows)
        return
    from steplog.commands.cli.render import print_jobs

    print_jobs(console(), rows)


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
@click.option(
    "--wait",
    "wait_s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, 86400),
    metavar="SECONDS",
    help="With --follow: how long to wait for a job (and its database) not created yet.",
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
    wait_s: float,
    as_json: bool,
) -> None:
    """Print JOB's events; --json prints JSON lines in the predecessor's envelope.

    Example: steplog events job_x --type 'llm.*' --json
    """
    if follow:
        from steplog.commands.cli.debug import follow_events

        follow_events(ctx, job, type_glob, step, level, interval, wait_s, as_json)
        return
    store = store_for(ctx)
    job = queries.resolve_job(store, job)
    found = queries.events(store, job, type_glob=type_glob, step=step, level=level)
    if as_json:
        for ev in found:
            click.echo(json_text(ev.envelope()))
        return
    from steplog.commands.cli.render import print_events

    print_events(console(), found)
