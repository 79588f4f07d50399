"""`run` and `resume`: a job in this process, with a live display on a terminal."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from steplog.commands.cli.display import LiveDisplay, PlainDisplay
from steplog.commands.cli.group import (
    app_for,
    cli,
    grace_option,
    ignore_breaker_option,
    inputs_option,
    parse_inputs,
    quiet_option,
    say,
    store_for,
    workspace_option,
)
from steplog.commands.cli.render import calls_text, cost_text
from steplog.commands.jobs import (
    Cancelled,
    Interrupted,
    Prepared,
    ResumeCommand,
    RunCommand,
    check_run_before_creating,
    execute,
    prepare_resume,
    prepare_run,
    stop_recorded,
)
from steplog.commands.queries import resolve_job
from steplog.eventstore.record import EventStore
from steplog.executor import drift
from steplog.executor.shutdown import DEFAULT_GRACE_S
from steplog.words import counted


def _run_prepared(
    store: EventStore, prepared: Prepared, quiet: bool, grace_s: float = DEFAULT_GRACE_S
) -> None:
    try:
        with stop_recorded(store, prepared):  # once the job is ours, Ctrl-C is recorded
            for warning in drift.warnings(prepared.files, prepared.workspace, prepared.plan):
                say(warning, err=True)  # files of skipped steps edited by hand: left
            live = sys.stdout.isatty() and not quiet
            display = (
                LiveDisplay(prepared.state) if live else PlainDisplay(prepared.state, quiet=quiet)
            )
            if not live and not quiet:
                say(
                    f"job {prepared.job_id}: {prepared.pipeline.name}, "
                    f"{counted(len(prepared.plan.run), 'step')} to run"
                )
        with display:
            outcome = execute(store, prepared, observer=display, grace_s=grace_s)
    except Cancelled as stop:
        say(
            f"job {prepared.job_id} cancelled ({stop.reason}); "
            f"continue with: steplog resume {prepared.job_id}",
            err=True,
        )
        raise SystemExit(stop.exit_code) from None
    except Interrupted as stop:
        done = ""
        if stop.report is not None and stop.report.calls_running:
            done = (
                f", {counted(stop.report.calls_finished, 'running call')} finished, "
                f"{stop.report.calls_cancelled} cancelled"
            )
        say(
            f"job {prepared.job_id} interrupted ({stop.signal_name}{done}); "
            f"continue with: steplog resume {prepared.job_id}",
            err=True,
        )
        raise SystemExit(stop.exit_code) from None
    state = display.state
    tokens = state.tokens_in + state.tokens_out
    if outcome.succeeded:
        say(
            f"job {prepared.job_id} succeeded: {counted(len(state.steps), 'step')}, "
            f"{counted(state.cache_hits, 'cache hit')}, "
            f"{calls_text(state.llm_calls, state.llm_answered, state.llm_failures, state.llm_unanswered)}, "
            f"{counted(tokens, 'token')}, "
            f"{cost_text(state.cost, state.unpriced_calls)}; "
            f"workspace {prepared.workspace}"
        )
        return
    say(
        f"job {prepared.job_id} failed: {state.last_error or 'see events'}; "
        f"after fixing, run: steplog resume {prepared.job_id}",
        err=True,
    )
    raise SystemExit(1)


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@inputs_option
@click.option(
    "--job-id",
    help="Name the job (default: job_<utc time>_<random>); with --inputs, the prefix of the "
    "ids of rows without an id column (PREFIX + row number).",
)
@workspace_option(
    "Where files are written (default: runs/<job_id>); with --inputs, the directory holding "
    "each job's own <job_id>/."
)
@click.option(
    "--inputs",
    "inputs_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run a batch: one job per row of FILE (.jsonl or .csv); --input values are defaults "
    "each row may override.",
)
@click.option(
    "--jobs",
    "jobs",
    type=click.IntRange(1, 1024),
    help="With --inputs: how many jobs run at once (default 4).",
)
@click.option(
    "--batch",
    "batch",
    help="With --inputs: name the batch (default: batch_<utc time>_<random>).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Let the job replace files already in the workspace (each is kept as a blob).",
)
@quiet_option
@ignore_breaker_option
@grace_option
@click.pass_context
def run(
    ctx: click.Context,
    pipeline: Path,
    inputs: tuple[str, ...],
    job_id: str | None,
    workspace: Path | None,
    inputs_file: Path | None,
    jobs: int | None,
    batch: str | None,
    overwrite: bool,
    quiet: bool,
    ignore_breaker: bool,
    grace_s: float,
) -> None:
    """Run PIPELINE (a TOML file) as a new job.

    With --inputs FILE, run one job per row of FILE, at most --jobs at once, and end with
    a summary of the batch.

    Example: steplog run examples/factory/pipeline.toml --input idea="a todo CLI"
    """
    if inputs_file is not None:
        from steplog.commands.batch import BatchCommand
        from steplog.commands.cli.batch import run_batch_verb

        command = BatchCommand(
            pipeline_path=pipeline,
            inputs_file=inputs_file,
            inputs=parse_inputs(inputs),
            job_id_prefix=job_id,
            batch=batch,
            workspace=workspace,
            ignore_breaker=ignore_breaker,
            overwrite=overwrite,
        )
        run_batch_verb(ctx, command, jobs=jobs, quiet=quiet, grace_s=grace_s)
        return
    for given, name in ((jobs, "--jobs"), (batch, "--batch")):
        if given is not None:
            raise click.UsageError(f"{name} is for a batch: give it with --inputs FILE")
    cmd = RunCommand(
        pipeline_path=pipeline,
        inputs=parse_inputs(inputs),
        job_id=job_id,
        workspace=workspace,
        ignore_breaker=ignore_breaker,
        overwrite=overwrite,
    )
    created = not app_for(ctx).database_exists()  # this verb is the first to open it
    # refused: no file (or table) is left behind
    loaded = check_run_before_creating(cmd) if created else None
    store = store_for(ctx, write=True)
    if created and store.created:  # (not when another process made it meanwhile)
        # even with --quiet: a typo in --db would otherwise start over, paying for every call
        click.echo(f"created new database {store.where}", err=True)
    # job.started is stamped inside execute's loop, when the first step can start
    prepared = prepare_run(store, cmd, open_in_loop=True, loaded=loaded)
    _run_prepared(store, prepared, quiet, grace_s)


@cli.command()
@click.argument("job")
@click.option(
    "--pipeline",
    type=click.Path(path_type=Path),
    help="Use this pipeline file instead of the job's own.",
)
@click.option("--force", is_flag=True, help="Take over a job whose owner runs on another host.")
@quiet_option
@ignore_breaker_option
@grace_option
@click.pass_context
def resume(
    ctx: click.Context,
    job: str,
    pipeline: Path | None,
    force: bool,
    quiet: bool,
    ignore_breaker: bool,
    grace_s: float,
) -> None:
    """Continue JOB: skip completed steps, re-run failed and interrupted ones.

    Example: steplog resume job_20261124_101500_ab12cd
    """
    store = store_for(ctx, write=True, create=False)
    _run_prepared(
        store,
        prepare_resume(
            store,
            ResumeCommand(
                job_id=resolve_job(store, job),
                pipeline_path=pipeline,
                force=force,
                ignore_breaker=ignore_breaker,
            ),
        ),
        quiet,
        grace_s,
    )
