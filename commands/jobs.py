"""`run` and `resume`: validate the intent against the log, then hand a plan to the executor.

Every check happens before the first event of the command is appended; a rejection raises
Rejected (exit 2) and leaves the database as it was.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import anyio
from pydantic import BaseModel, ConfigDict, Field

from steplog.commands.queries import fold_job
from steplog.errors import Interrupted, Rejected
from steplog.eventstore.events import JobCreated, JobInterrupted, JobResumed, JobStarted, NewEvent
from steplog.eventstore.record import EventStore, VersionConflict, blob_sha256
from steplog.executor import faults
from steplog.executor.breakers import breaker_endpoint, breaker_policy
from steplog.executor.budget import Spend, blocks_resume
from steplog.executor.ownership import current_owner, owner_alive
from steplog.executor.pipeline import (
    NAME_PATTERN,
    Pipeline,
    PipelineError,
    load_pipeline,
    parse_pipeline,
)
from steplog.executor.plan import Plan, plan_resume
from steplog.executor.runner import JobOutcome, JobRunner, Observer
from steplog.executor.shutdown import DEFAULT_GRACE_S, Shutdown, StopReport, signals_ignored
from steplog.projections import manifest
from steplog.projections.breaker import iso
from steplog.projections.manifest import JobState
from steplog.projections.store import breaker_of
from steplog.providers import breaker


class RunCommand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline_path: Path
    inputs: dict[str, str] = Field(default_factory=dict)
    job_id: str | None = None
    workspace: Path | None = None
    ignore_breaker: bool = False
    overwrite: bool = False  # let the job replace files already in its workspace


class ResumeCommand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    pipeline_path: Path | None = None
    force: bool = False
    ignore_breaker: bool = False


@dataclass
class Prepared:
    """A validated command, ready for the executor."""

    job_id: str
    pipeline: Pipeline
    inputs: dict[str, str]
    workspace: Path
    plan: Plan
    state: JobState  # the job as folded right after the command's opening events
    ignore_breaker: bool = False
    # path -> (step, sha256) of the last file.written there: what steplog last wrote
    files: dict[str, tuple[str, str]] = field(default_factory=dict)


def new_job_id() -> str:
    return "job_" + time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + "_" + secrets.token_hex(3)


def check_job_id(job_id: str) -> None:
    if not NAME_PATTERN.fullmatch(job_id):
        raise Rejected(f"job id {job_id!r} is not valid (letters, digits, _ and -, at most 64)")


def check_workspace(workspace: Path) -> None:
    """Refuse a workspace that cannot be a writable directory before the job starts: found
    only when the first file step writes, it would fail the job after paid-for calls."""
    existing = workspace
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is not a directory" if existing == workspace else f"is under {existing}, a file"
        raise Rejected(f"workspace {workspace} {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Rejected(f"workspace {workspace} cannot be written ({existing} is not writable)")


def _check_run(store: EventStore, cmd: RunCommand) -> tuple[Pipeline, dict[str, str], str, Path]:
    """Every check of `run` (nothing is appended): the pipeline, inputs, job id, workspace."""
    pipeline = load_pipeline(cmd.pipeline_path)
    inputs = pipeline.resolve_inputs(cmd.inputs)
    _check_keys(pipeline, list(pipeline.order))
    if not cmd.ignore_breaker:
        check_breakers(store, pipeline, list(pipeline.order))
    job_id = cmd.job_id or new_job_id()
    check_job_id(job_id)
    if store.job_exists(job_id):
        raise Rejected(f"job {job_id} already exists; choose another --job-id or resume it")
    workspace = (cmd.workspace or Path("runs") / job_id).resolve()
    check_workspace(workspace)
    if not cmd.overwrite:
        from steplog.commands.guard import check_workspace_free  # it imports commands.plan

        check_workspace_free(store, pipeline, inputs, workspace)
    return pipeline, inputs, job_id, workspace


def check_run_before_creating(cmd: RunCommand) -> None:
    """For a database that does not exist yet: every check of `run` against an empty history,
    so that a refused run (a bad pipeline, a file in the way …) creates no file."""
    from steplog.projections.store import open_empty_store

    with open_empty_store() as empty:
        _check_run(empty, cmd)


def prepare_run(store: EventStore, cmd: RunCommand) -> Prepared:
    pipeline, inputs, job_id, workspace = _check_run(store, cmd)
    snapshot = pipeline.snapshot().encode("utf-8")
    created = JobCreated(
        pipeline=pipeline.name,
        pipeline_path=str(Path(cmd.pipeline_path).resolve()),
        pipeline_fingerprint=pipeline.fingerprint,
        pipeline_sha256=blob_sha256(pipeline.source.encode("utf-8")),
        snapshot_sha256=blob_sha256(snapshot),
        inputs=inputs,
        steps=pipeline.needs,
        workspace=str(workspace),
    )
    opening = [NewEvent.of(created), NewEvent.of(JobStarted(owner=current_owner()))]
    try:
        stored = store.append(
            job_id, opening, expected_version=0, blobs=[pipeline.source.encode("utf-8"), snapshot]
        )
    except VersionConflict as exc:
        raise Rejected(
            f"job {job_id} already exists; choose another --job-id or resume it"
        ) from exc
    faults.after_commit([(ev.type, ev.step) for ev in stored])
    state = manifest.project(job_id, stored)
    plan = Plan(run=list(pipeline.order))
    return Prepared(job_id, pipeline, inputs, workspace, plan, state, cmd.ignore_breaker)


def _check_keys(pipeline: Pipeline, steps: list[str]) -> None:
    problems = pipeline.missing_keys(steps, os.environ)
    if problems:
        raise Rejected(problems[0])


def check_breakers(
    store: EventStore, pipeline: Pipeline, steps: list[str], now: float | None = None
) -> None:
    """Refuse up front while a breaker the steps' providers need would refuse a call."""
    now = time.time() if now is None else now
    for name in sorted({pipeline.spec.steps[s].provider for s in steps}):
        config = pipeline.spec.providers[name]
        endpoint = breaker_endpoint(config)
        row = breaker_of(store, endpoint) if endpoint else None
        if row is None:
            continue
        admission = breaker.admit(row.state, breaker_policy(config), now)
        if admission.allowed or row.status == "half_open":  # a probe is out: its calls wait
            continue
        raise Rejected(
            f"provider {name!r} ({endpoint}): circuit open after {row.failures} failures; "
            f"it may be retried after "
            f"{iso(row.until)} (in {admission.retry_after:.0f}s), or pass --ignore-breaker"
        )


def check_budget(state: JobState, pipeline: Pipeline, path: str | None) -> None:
    """After a budget stop, refuse only when what the log says was spent leaves no room."""
    stopped, limits = state.budget_exceeded, pipeline.spec.budget
    if stopped is None or limits is None:
        return
    spent = Spend(state.tokens_in + state.tokens_out, state.cost)
    limit = blocks_resume(limits, spent, stopped)
    if limit is None:
        return
    need = f"about {stopped['estimate_tokens']} more tokens"
    if limit == "max_tokens":
        figures = f"{spent.tokens} tokens spent of max_tokens {limits.max_tokens}"
    else:
        figures = f"${spent.cost:.6f} spent of max_cost ${limits.max_cost}"
        need = f"about ${stopped.get('estimate_cost') or 0:.6f} ({need})"
    raise Rejected(
        f"job {state.job_id} stopped at its budget ({figures}; step {stopped.get('step')} needs "
        f"{need}); raise [budget] {limit} in {path or 'the pipeline file'} to resume"
    )


def _owner_text(owner: dict[str, object]) -> str:
    return f"process {owner.get('pid')} on host {owner.get('host')}"


def check_has_work(state: JobState, job_id: str) -> None:
    """Is there a job with something left to do (what `resume` and `plan --job` both ask)?"""
    if not state.exists:
        raise Rejected(f"unknown job {job_id}")
    if state.status == "succeeded":
        raise Rejected(f"job {job_id} already succeeded; nothing to resume")
    if state.status == "cancelled":
        raise Rejected(f"job {job_id} was cancelled; run the pipeline again as a new job")


def _check_resumable(state: JobState, cmd: ResumeCommand) -> None:
    check_has_work(state, cmd.job_id)
    if state.status == "running" and state.owner:
        alive = owner_alive(state.owner)
        if alive:
            raise Rejected(f"job {cmd.job_id} is being run by {_owner_text(state.owner)}")
        if alive is None and not cmd.force:
            raise Rejected(
                f"job {cmd.job_id} is being run by {_owner_text(state.owner)}; "
                "if that process is gone, resume with --force"
            )


def pipeline_for_resume(store: EventStore, state: JobState, override: Path | None) -> Pipeline:
    """The pipeline file as it is now (so a fixed prompt takes effect), else the stored copy."""
    path = override or (Path(state.pipeline_path) if state.pipeline_path else None)
    if path is not None and path.exists():
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise Rejected(f"cannot read pipeline file {path}: {exc.strerror}") from exc
        if state.snapshot_sha256 and blob_sha256(source) == state.pipeline_sha256:
            # the very file the job was created from: reuse its validated form
            snapshot = store.get_blob(state.snapshot_sha256).decode("utf-8")
            return Pipeline.from_snapshot(snapshot, source.decode("utf-8"), str(path))
        return load_pipeline(path)
    if override is not None:
        raise Rejected(f"pipeline file {override} does not exist")
    if not state.pipeline_fingerprint:  # imported from the predecessor, which kept no pipeline
        raise Rejected(
            f"job {state.job_id} was imported without its pipeline file; "
            "resume it with --pipeline FILE"
        )
    source = store.get_blob(state.pipeline_sha256 or "").decode("utf-8")
    return parse_pipeline(source, state.pipeline_path)


def prepare_resume(store: EventStore, cmd: ResumeCommand) -> Prepared:
    state = fold_job(store, cmd.job_id)
    _check_resumable(state, cmd)
    pipeline = pipeline_for_resume(store, state, cmd.pipeline_path)
    plan, changed = plan_resume(state, pipeline)
    _check_keys(pipeline, plan.run)
    check_budget(state, pipeline, pipeline.path)
    if not cmd.ignore_breaker:
        check_breakers(store, pipeline, plan.run)
    check_workspace(Path(state.workspace or Path("runs") / cmd.job_id).resolve())
    resumed = JobResumed(
        owner=current_owner(),
        pipeline_fingerprint=pipeline.fingerprint,
        changed_steps=changed,
        forced=cmd.force,
    )
    try:
        stored = store.append(cmd.job_id, [NewEvent.of(resumed)], expected_version=state.version)
    except VersionConflict as exc:
        now = fold_job(store, cmd.job_id)
        who = _owner_text(now.owner) if now.owner else "another process"
        raise Rejected(f"job {cmd.job_id} is being run by {who}") from exc
    faults.after_commit([(ev.type, ev.step) for ev in stored])
    state = manifest.project(cmd.job_id, stored, state)
    workspace = Path(state.workspace or Path("runs") / cmd.job_id)
    files = store.logged_files(cmd.job_id) if state.files_written else {}
    return Prepared(
        cmd.job_id, pipeline, state.inputs, workspace, plan, state, cmd.ignore_breaker, files
    )


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def runner_for(store: EventStore, prepared: Prepared, observer: Observer | None) -> JobRunner:
    """The runner of a prepared job, for a caller that drives several in one loop (a batch)."""
    return _runner(store, prepared, observer)


def record_stop(store: EventStore, job_id: str, report: StopReport, detailed: bool = False) -> None:
    """job.interrupted at the job's head (see _record_stop)."""
    _record_stop(store, job_id, report, detailed)


def long_lived_heap() -> contextlib.AbstractContextManager[None]:
    """The cyclic GC kept off what was loaded before a run (see _long_lived_heap)."""
    return _long_lived_heap()


def _runner(store: EventStore, prepared: Prepared, observer: Observer | None) -> JobRunner:
    state = prepared.state
    return JobRunner(
        store,
        prepared.job_id,
        prepared.pipeline,
        prepared.inputs,
        prepared.workspace,
        version=state.version,
        observer=observer,
        spent=Spend(state.tokens_in + state.tokens_out, state.cost),
        ignore_breaker=prepared.ignore_breaker,
        last_written={path: sha for path, (_, sha) in prepared.files.items()},
    )


async def run_in_loop(
    store: EventStore, prepared: Prepared, observer: Observer | None = None
) -> JobOutcome:
    """Run the plan inside the caller's event loop: no signal handler, no process-wide state.

    If the caller cancels it, the calls in flight are cut off, job.interrupted is recorded
    (signal "cancelled") and the cancellation goes on: `resume` continues the job, reusing
    every answer committed before.
    """
    runner = _runner(store, prepared, observer)
    try:
        return await runner.run(prepared.plan)
    except anyio.get_cancelled_exc_class():
        if runner.ended is None:
            _record_stop(store, prepared.job_id, StopReport("cancelled", grace_s=0))
        raise
    except BaseExceptionGroup as group:
        raise _explained(_first_leaf(group), prepared.job_id) from group
    except VersionConflict as exc:
        raise _explained(exc, prepared.job_id) from exc


def execute(
    store: EventStore,
    prepared: Prepared,
    observer: Observer | None = None,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    say: Callable[[str], None] = _to_stderr,
    freeze_gc: bool = True,
) -> JobOutcome:
    """Run the plan to its end as the CLI does: Ctrl-C/SIGTERM record job.interrupted so
    `resume` can continue. Main thread only (it installs signal handlers).

    The first signal stops new steps and gives calls in flight `grace_s` seconds to finish
    (their answers are committed); a second signal, or the end of the grace, cancels the rest
    (executor/shutdown.py). freeze_gc keeps the cyclic GC off what was loaded before the run.
    """
    runner = _runner(store, prepared, observer)
    shutdown = Shutdown(grace_s, say)

    async def run_watched() -> JobOutcome:
        async with anyio.create_task_group() as group:
            await group.start(shutdown.watch, runner)
            outcome = await runner.run(prepared.plan)
            group.cancel_scope.cancel()
        # the loop, removing its handler with the watcher, put back SIGTERM's default (die at
        # once, nothing recorded); ours again until execute() ends
        signal.signal(signal.SIGTERM, on_sigterm)
        return outcome

    # Outside the event loop's own handlers (before they are set up, after they are removed) a
    # signal still ends the run the old way: KeyboardInterrupt, then job.interrupted.
    received = {"signal": "SIGINT"}

    def on_sigterm(signum: int, frame: object) -> None:
        received["signal"] = "SIGTERM"
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        try:
            with _long_lived_heap() if freeze_gc else nullcontext():
                outcome = anyio.run(run_watched)
        except BaseExceptionGroup as group:
            # one clear error, not a task-group tree
            raise _explained(_first_leaf(group), prepared.job_id) from group
        except VersionConflict as exc:
            raise _explained(exc, prepared.job_id) from exc
    except KeyboardInterrupt:
        if runner.ended is None:
            with signals_ignored():  # a second Ctrl-C must not cut the record off
                _record_stop(store, prepared.job_id, StopReport(received["signal"], grace_s=0))
            raise Interrupted(received["signal"]) from None
        # the job had ended (job.succeeded/failed committed) before the signal came: it stays so
        outcome = runner.ended
    finally:
        signal.signal(signal.SIGTERM, previous)
    if outcome.interrupted:
        report = shutdown.report or StopReport("SIGINT", grace_s)
        with signals_ignored():
            _record_stop(store, prepared.job_id, report, detailed=shutdown.report is not None)
        raise Interrupted(report.signal, shutdown.report)
    return outcome


@contextmanager
def stop_recorded(store: EventStore, job_id: str) -> Iterator[None]:
    """Between a job's opening events and execute() (which handles signals itself): a Ctrl-C
    or SIGTERM there records job.interrupted too, and ends as Interrupted, not as a bare abort
    or a silent death."""
    received = {"signal": "SIGINT"}

    def on_sigterm(signum: int, frame: object) -> None:
        received["signal"] = "SIGTERM"
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        with signals_ignored():
            _record_stop(store, job_id, StopReport(received["signal"], grace_s=0))
        raise Interrupted(received["signal"]) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _explained(exc: BaseException, job_id: str) -> BaseException:
    """A conflict inside the run means a second writer appended to this job meanwhile."""
    if isinstance(exc, VersionConflict):
        return VersionConflict(
            f"job {job_id} was appended to by another process while this one ran it; "
            f"this run stopped (see: steplog status {job_id})"
        )
    return exc


def _record_stop(
    store: EventStore, job_id: str, report: StopReport, detailed: bool = False
) -> None:
    """Append job.interrupted at the head: the signal may land between a commit and the runner
    noting its new version, and this process still owns the job."""
    data = JobInterrupted(signal=report.signal)
    if detailed:
        data = JobInterrupted(
            signal=report.signal,
            grace_s=report.grace_s,
            calls_finished=report.calls_finished,
            calls_cancelled=report.calls_cancelled,
            second_signal=report.second_signal,
        )
    store.append(job_id, [NewEvent.of(data)])


@contextmanager
def _long_lived_heap() -> Iterator[None]:
    """Keep the cyclic GC off the objects loaded before the run (pipeline, state, imports).

    Every step allocates events and models; with the default thresholds the collector keeps
    walking the whole heap, which cost ≈ 15 % of a step (bench/). Freezing what exists and
    collecting the young generation less often keeps that work proportional to the step.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(10_000, 50, 1_000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


__all__ = [
    "PipelineError",
    "Prepared",
    "Rejected",
    "ResumeCommand",
    "RunCommand",
    "execute",
    "fold_job",
    "prepare_resume",
    "prepare_run",
]
