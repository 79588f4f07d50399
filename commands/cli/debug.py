"""Debugging verbs: `plan`, and the formatting of `replay --fork` and `events --follow`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from steplog.commands.cli.group import (
    app_for,
    cli,
    echo_json,
    inputs_option,
    json_option,
    json_text,
    parse_inputs,
    say,
    store_for,
)
from steplog.errors import Rejected
from steplog.words import counted

if TYPE_CHECKING:
    from steplog.eventstore.record import EventStore, StoredEvent


@cli.command("plan")
@click.argument("pipeline", type=click.Path(path_type=Path))
@inputs_option
@click.option("--job", help="Predict resuming this job (with PIPELINE as it is now).")
@json_option
@click.pass_context
def plan_cmd(
    ctx: click.Context, pipeline: Path, inputs: tuple[str, ...], job: str | None, as_json: bool
) -> None:
    """Predict, without calling any provider, which steps the cache serves and why others miss.

    Exit 0, or 1 when it predicts a step failing or the run being refused.

    Example: steplog plan examples/factory/pipeline.toml --input idea="a chess clock"
    """
    from steplog.commands import plan

    given = parse_inputs(inputs)
    app = app_for(ctx)
    if job is None and not app.database_exists():
        # plan before the first run (or a typo in --db): an empty history, and no file made
        from steplog.projections.store import open_empty_store

        with open_empty_store() as empty:
            report = plan.plan_new_run(empty, pipeline, given, database_exists=False)
        click.echo(plan.missing_database_note(app.where), err=True)
    elif job is None:
        report = plan.plan_new_run(store_for(ctx), pipeline, given)
    else:
        from steplog.commands.queries import resolve_job

        store = store_for(ctx)
        report = plan.plan_for_resume(store, resolve_job(store, job), pipeline, given)
    if as_json:
        echo_json(report.document())
    else:
        for text in plan.lines(report):
            say(text)
    if report.predicts_failure:
        raise SystemExit(1)


def print_fork(
    store: EventStore,
    job: str,
    point: str,
    new_job: str,
    workspace: Path | None,
    as_json: bool,
) -> None:
    from steplog.commands.fork import fork_document, fork_job

    result = fork_job(store, job, point, new_job, workspace)
    if as_json:
        echo_json(fork_document(result))
        return
    if result.missing:
        say(
            f"warning: {counted(len(result.missing), 'file')} the source had written could not "
            f"be restored (the log does not hold their content): {', '.join(result.missing)}",
            err=True,
        )
    say(
        f"job {result.job_id} forked from {result.source_job} at event {result.until_version}: "
        f"{counted(result.events, 'event')} copied, {counted(len(result.files), 'file')} "
        f"restored in {result.workspace}; continue with: steplog resume {result.job_id}"
    )


def follow_events(
    ctx: click.Context,
    job: str,
    type_glob: str | None,
    step: str | None,
    level: str | None,
    interval: float,
    wait_s: float,
    as_json: bool,
) -> None:
    """`events --follow`: a job (and a database) not there yet is waited for up to wait_s
    seconds, since `run` in another terminal may be about to create it."""
    from steplog.commands import follow, queries

    db = app_for(ctx).path  # None: PostgreSQL, where the database cannot be about to appear
    waited = follow.wait_for_file(db, wait_s) if db is not None else 0.0
    if waited and db is not None and not db.exists():
        raise Rejected(follow.no_database(db, wait_s))
    store = store_for(ctx)
    job = queries.resolve_job(store, job)

    def emit(ev: StoredEvent) -> None:
        if as_json:
            click.echo(json_text(ev.envelope()))
        else:
            say(follow.line(ev))

    follow.follow(
        store,
        job,
        queries.event_filter(type_glob, step, level),
        emit,
        interval_s=interval,
        wait_s=max(0.0, wait_s - waited),
    )
