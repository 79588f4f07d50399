"""`run PIPELINE --inputs FILE`: a batch of jobs in this process, one display for all of them
and a closing summary line (what the log holds for the batch's jobs)."""

from __future__ import annotations

import sys

import click

from steplog.commands.batch import (
    DEFAULT_JOBS,
    BatchCommand,
    BatchOutcome,
    BatchSummary,
    check_batch,
    check_batch_before_creating,
    create_batch,
    execute_batch,
    summarize,
)
from steplog.commands.cli.display import BatchLiveDisplay, BatchPlainDisplay
from steplog.commands.cli.group import app_for, say, store_for
from steplog.commands.cli.render import calls_text, cost_text
from steplog.errors import Interrupted, Terminated
from steplog.words import counted


def summary_line(summary: BatchSummary) -> str:
    """The closing line: how the batch's jobs stand in the log, their calls, tokens and cost."""
    parts = [f"{summary.count('succeeded')} succeeded", f"{summary.count('failed')} failed"]
    for status, label in (
        ("interrupted", "interrupted"),
        ("running", "running"),
        ("queued", "not started"),
        ("cancelled", "cancelled"),
    ):
        if summary.count(status):
            parts.append(f"{summary.count(status)} {label}")
    return (
        f"batch {summary.batch}: {counted(summary.jobs, 'job')}, {', '.join(parts)}; "
        f"{calls_text(summary.llm_calls, summary.llm_answered, summary.llm_failures, summary.llm_unanswered)}, "
        f"{counted(summary.tokens, 'token')}, "
        f"{cost_text(summary.cost, summary.unpriced_calls)}"
    )


def run_batch_verb(
    ctx: click.Context, cmd: BatchCommand, *, jobs: int | None, quiet: bool, grace_s: float
) -> None:
    created = not app_for(ctx).database_exists()
    if created:
        check_batch_before_creating(cmd)  # refused: no file is left behind
    store = store_for(ctx, write=True)
    if created and store.created:
        click.echo(f"created new database {store.where}", err=True)
    plan = check_batch(store, cmd)
    states = create_batch(store, plan)
    limit = jobs or DEFAULT_JOBS
    live = sys.stdout.isatty() and not quiet
    display = (
        BatchLiveDisplay(plan.batch, states)
        if live
        else BatchPlainDisplay(plan.batch, states, quiet=quiet)
    )
    if not live and not quiet:
        say(
            f"batch {plan.batch}: {counted(len(states), 'job')} of {plan.pipeline.name} from "
            f"{plan.source}, at most {limit} at once"
        )
    try:
        with display:
            outcome = execute_batch(
                store,
                plan,
                states,
                jobs=limit,
                observer_for=display.observer_for,
                grace_s=grace_s,
                say=lambda text: say(text, err=True),
            )
    except KeyboardInterrupt as stop:  # before the loop's handlers were up: no job had started
        name = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
        outcome = BatchOutcome(plan.batch, [s.job_id for s in states], signal=name)
    summary = summarize(store, plan.batch, [s.job_id for s in states])
    say(summary_line(summary))
    if outcome.signal is not None:
        left = [s.job_id for s in summary.states if s.status in ("queued", "interrupted")]
        say(
            f"batch {plan.batch} stopped ({outcome.signal}); "
            f"{counted(len(left), 'job')} left to run: steplog resume JOB for each "
            f"(steplog jobs --batch {plan.batch} lists them)",
            err=True,
        )
        raise SystemExit(Interrupted(outcome.signal).exit_code)
    if summary.count("succeeded") != summary.jobs:
        failed = [s for s in summary.states if s.status == "failed"]
        if failed:
            say(
                f"{counted(len(failed), 'job')} failed, first {failed[0].job_id}: "
                f"{failed[0].last_error or 'see events'}; after fixing, "
                f"steplog resume JOB for each",
                err=True,
            )
        raise SystemExit(1)
