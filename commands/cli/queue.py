"""`submit`, `worker`, `workers` and `cancel`: the queue, over the API's services."""

from __future__ import annotations

import time
from pathlib import Path

import click

from steplog.commands.cli.group import (
    app_for,
    cli,
    echo_json,
    grace_option,
    ignore_breaker_option,
    inputs_option,
    json_option,
    parse_inputs,
    say,
    workspace_option,
)
from steplog.words import counted


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
    help="Queue a batch: one job per row of FILE (.jsonl or .csv), all or none; --input "
    "values are defaults each row may override.",
)
@click.option("--batch", help="With --inputs: name the batch (default: batch_<utc time>_<random>).")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Let the job replace files already in the workspace (each is kept as a blob).",
)
@ignore_breaker_option
@json_option
@click.pass_context
def submit(
    ctx: click.Context,
    pipeline: Path,
    inputs: tuple[str, ...],
    job_id: str | None,
    workspace: Path | None,
    inputs_file: Path | None,
    batch: str | None,
    overwrite: bool,
    ignore_breaker: bool,
    as_json: bool,
) -> None:
    """Queue PIPELINE (a TOML file) as a new job for a worker; print its id.

    Checks exactly as `run` does (a refusal appends nothing) and records job.created only:
    the job is queued until `steplog worker` claims it. With --inputs FILE, one job per row,
    every row checked first and all of them queued in one transaction, or none.

    Example: steplog submit examples/factory/pipeline.toml --input idea="a todo CLI"
    """
    app = app_for(ctx)
    created = not app.database_exists()
    if inputs_file is not None:
        queued = app.submit_batch(
            pipeline,
            inputs_file,
            inputs=parse_inputs(inputs),
            job_id_prefix=job_id,
            batch=batch,
            workspace=workspace,
            ignore_breaker=ignore_breaker,
            overwrite=overwrite,
        )
        if created:
            click.echo(f"created new database {app.where}", err=True)
        if as_json:
            echo_json(queued.model_dump())
            return
        say(f"batch {queued.batch}: {counted(len(queued.job_ids), 'job')} queued")
        for job in queued.job_ids:
            say(job)
        return
    if batch is not None:
        raise click.UsageError("--batch is for a batch: give it with --inputs FILE")
    done = app.submit(
        pipeline,
        parse_inputs(inputs),
        job_id,
        workspace,
        ignore_breaker=ignore_breaker,
        overwrite=overwrite,
    )
    if created:
        click.echo(f"created new database {app.where}", err=True)
    if as_json:
        echo_json(done.model_dump())
        return
    say(done.job_id)


def _not_nan(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value != value:  # FloatRange lets NaN through
        raise click.BadParameter("nan is not a number of seconds", ctx=ctx, param=param)
    return value


@cli.command()
@click.option(
    "--concurrency",
    "-c",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Jobs run at once in this worker.",
)
@click.option("--worker-id", help="Name this worker (default: worker-<host>-<pid>-<random>).")
@click.option("--drain", is_flag=True, help="Exit 0 once nothing is queued or running.")
@click.option(
    "--pipeline-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run only jobs whose pipeline file is under DIR, from that file as it is now.",
)
@click.option(
    "--lease",
    "lease_s",
    type=click.FloatRange(0.1, 3600),
    callback=_not_nan,
    metavar="SECONDS",
    help="How long this worker's jobs stay its own without a heartbeat (default 30; env "
    "STEPLOG_LEASE_S). It beats every third of it.",
)
@ignore_breaker_option
@grace_option
@click.pass_context
def worker(
    ctx: click.Context,
    concurrency: int,
    worker_id: str | None,
    drain: bool,
    pipeline_dir: Path | None,
    lease_s: float | None,
    ignore_breaker: bool,
    grace_s: float,
) -> None:
    """Claim queued jobs (and jobs whose owner's lease expired) and run them.

    Completed steps are skipped and committed answers reused, as `resume` does. Ctrl-C or
    SIGTERM stops it as it stops `run` (grace, then job.interrupted); its jobs are queued again.

    Example: steplog worker --concurrency 4 --drain
    """
    from steplog.errors import Interrupted

    app = app_for(ctx)
    try:
        report = app.work(
            concurrency,
            drain=drain,
            worker_id=worker_id,
            pipeline_dir=pipeline_dir,
            lease_s=lease_s,
            grace_s=grace_s,
            ignore_breaker=ignore_breaker,
            handle_signals=True,
            say=lambda line: say(line, err=True),
        )
    except Interrupted as stop:
        say(f"worker stopped ({stop.signal_name}); its jobs are queued again", err=True)
        raise SystemExit(stop.exit_code) from None
    say(
        f"worker {report.worker_id} done: {counted(len(report.succeeded), 'job')} succeeded, "
        f"{len(report.failed)} failed, {len(report.cancelled)} cancelled, "
        f"{len(report.left_alone)} left alone"
    )


@cli.command()
@json_option
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """List the workers (and run/resume processes): alive or not, host, pid, jobs, heartbeat.

    Example: steplog workers --json
    """
    found = app_for(ctx).workers()
    if as_json:
        echo_json(found)
        return
    if not found:
        say("no workers yet; start one with: steplog worker")
        return
    for w in found:
        state = "alive" if w["alive"] else ("stopped" if w["stopped_ts"] else "lease expired")
        jobs = ", ".join(w["jobs"]) or "no jobs"
        say(
            f"{w['worker_id']}  {state}  {w['kind']} on {w['host']} pid {w['pid']}  "
            f"heartbeat {w['heartbeat_age_s']:.1f}s ago (lease {w['lease_s']:g}s)  {jobs}"
        )


@cli.command()
@click.argument("job")
@click.option("--reason", default="", help="Recorded in job.cancelled.")
@click.option("--wait", is_flag=True, help="Wait until the job is no longer running.")
@click.option(
    "--timeout",
    "timeout_s",
    default=120.0,
    show_default=True,
    type=click.FloatRange(0, 86400),
    callback=_not_nan,
    metavar="SECONDS",
    help="With --wait: give up waiting after this long (exit 1).",
)
@json_option
@click.pass_context
def cancel(
    ctx: click.Context, job: str, reason: str, wait: bool, timeout_s: float, as_json: bool
) -> None:
    """Cancel JOB: a queued job never starts; a running one is stopped by its owner.

    The owner stops it as on SIGTERM and records job.cancelled; `steplog resume` continues it.

    Example: steplog cancel job_20261124_101500_ab12cd --wait
    """
    started = time.monotonic()
    done = app_for(ctx).cancel(job, reason, wait=wait, timeout_s=timeout_s)
    if as_json:
        echo_json(done.model_dump())
    elif done.status == "cancelled":
        say(f"job {done.job_id} cancelled")
    elif done.status == "cancel_requested":
        say(f"job {done.job_id}: asked worker {done.worker} to stop it")
    else:
        waited = time.monotonic() - started
        say(f"job {done.job_id} is {done.status} after {waited:.1f}s of waiting")
    if wait and done.status != "cancelled":
        raise SystemExit(1)
