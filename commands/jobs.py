"""`run` and `resume`: validate the intent against the log, then hand a plan to the executor.

Every check happens before the first event of the command is appended; a rejection raises
Rejected (exit 2) and leaves the database as it was.
"""

from __future__ import annotations

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

# anyio loads its event-loop backend (and asyncio) on first use: about 45 ms of imports, which
# would otherwise fall between a job's job.started and its first step.started. They are the
# process's start-up, so they are imported with this module, before any job opens.
import anyio._backends._asyncio  # noqa: F401
from pydantic import BaseModel, ConfigDict, Field

from steplog.commands.queries import fold_job
from steplog.errors import Interrupted, Rejected, Terminated
from steplog.eventstore.events import (
    JobCancelled,
    JobCreated,
    JobInterrupted,
    JobResumed,
    JobStarted,
    NewEvent,
    Owner,
)
from steplog.eventstore.record import EventStore, StoredEvent, VersionConflict, blob_sha256
from steplog.executor import faults
from steplog.executor.breakers import breaker_endpoint, breaker_policy
from steplog.executor.budget import Spend, blocks_resume
from steplog.executor.calls import import_http
from steplog.executor.lease import Lease, lease_liveness
from steplog.executor.ownership import lease_of, owner_alive
from steplog.executor.pipeline import (
    NAME_PATTERN,
    Pipeline,
    PipelineError,
    load_pipeline,
    parse_pipeline,
)
from steplog.executor.plan import Plan, plan_resume
from steplog.executor.runner import JobOutcome, JobRunner, Observer
from steplog.executor.shutdown import (
    DEFAULT_GRACE_S,
    SIGNALS,
    Shutdown,
    StopReport,
    signal_receiver,
    signals_ignored,
)
from steplog.heap import gc_paused, long_lived_heap
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
    # the lease its owner holds (executor/lease.py); execute and run_in_loop keep it beating
    lease: Lease | None = None
    # A new job's opening events not appended yet (prepare_run(open_in_loop=True)): execute and
    # run_in_loop append them inside their event loop, once it, the signal handlers and the
    # runner are up, so that job.started is stamped when the run can start its first step.
    # `state` is folded from them then (it is empty before).
    opening: Opening | None = None

    @property
    def opened(self) -> bool:
        """The job's opening events are in the log (what a stop then has to record)."""
        return self.opening is None


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


@gc_paused()  # the pipeline parsed: objects by the dozen a step, all kept
def _check_run(
    store: EventStore, cmd: RunCommand, loaded: Pipeline | None = None
) -> tuple[Pipeline, dict[str, str], str, Path]:
    """Every check of `run` (nothing is appended): the pipeline, inputs, job id, workspace.
    `loaded`: the pipeline file as check_run_before_creating read it a moment ago (its checks
    passed for that text: read the file once, not twice)."""
    pipeline = loaded if loaded is not None else load_pipeline(cmd.pipeline_path)
    inputs = pipeline.resolve_inputs(cmd.inputs)
    _check_keys(pipeline, list(pipeline.order))
    import_http(pipeline, list(pipeline.order))
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


def check_run_before_creating(cmd: RunCommand) -> Pipeline:
    """For a database that does not exist yet: every check of `run` against an empty history,
    so that a refused run (a bad pipeline, a file in the way …) creates no file. Returns the
    pipeline it checked, for prepare_run(…, loaded=…)."""
    from steplog.projections.store import open_empty_store

    with open_empty_store() as empty:
        return _check_run(empty, cmd)[0]


@dataclass
class Opening:
    """A checked `run`/`submit`: the job's job.created and the blobs it names, not yet appended."""

    job_id: str
    pipeline: Pipeline
    inputs: dict[str, str]
    workspace: Path
    created: JobCreated
    blobs: list[bytes]

    def events(self, owner: Owner | None = None) -> list[NewEvent]:
        """job.created, and job.started when an owner runs it at once (`run`)."""
        opening = [NewEvent.of(self.created)]
        if owner is not None:
            opening.append(NewEvent.of(JobStarted(owner=owner)))
        return opening


def check_opening(store: EventStore, cmd: RunCommand, loaded: Pipeline | None = None) -> Opening:
    """Every check of `run`, and the job.created it would append (nothing is appended)."""
    pipeline, inputs, job_id, workspace = _check_run(store, cmd, loaded)
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
    blobs = [pipeline.source.encode("utf-8"), snapshot]
    return Opening(job_id, pipeline, inputs, workspace, created, blobs)


def append_opening(
    store: EventStore, opening: Opening, lease: Lease | None = None
) -> list[StoredEvent]:
    """Append a checked job's opening events as a new stream (with job.started and the lease's
    worker.started, in the same transaction, when `lease` runs it); a job of that id made
    meanwhile is refused."""
    try:
        if lease is None:
            stored = store.append(
                opening.job_id, opening.events(), expected_version=0, blobs=opening.blobs
            )
        else:
            owner = lease.owner
            stored = lease.start_with(
                opening.job_id, lambda: opening.events(owner), 0, opening.blobs
            )
    except VersionConflict as exc:
        raise Rejected(
            f"job {opening.job_id} already exists; choose another --job-id or resume it"
        ) from exc
    faults.after_commit([(ev.type, ev.step) for ev in stored])
    return stored


def prepare_run(
    store: EventStore,
    cmd: RunCommand,
    *,
    open_in_loop: bool = False,
    loaded: Pipeline | None = None,
) -> Prepared:
    """Every check of `run`, then its opening events (worker.started, job.created,
    job.started): appended now, or by execute/run_in_loop inside their loop (open_in_loop).
    `loaded`: what check_run_before_creating returned, when it ran."""
    opening = check_opening(store, cmd, loaded)
    lease = Lease.new(store, kind="run")
    prepared = Prepared(
        opening.job_id,
        opening.pipeline,
        opening.inputs,
        opening.workspace,
        Plan(run=list(opening.pipeline.order)),
        JobState(job_id=opening.job_id),
        cmd.ignore_breaker,
        lease=lease,
        opening=opening,
    )
    if not open_in_loop:
        open_job(store, prepared)
    return prepared


def open_job(store: EventStore, prepared: Prepared) -> None:
    """Append a new job's opening events (if not yet) and fold them into prepared.state."""
    if prepared.opening is None:
        return
    stored = append_opening(store, prepared.opening, prepared.lease)
    prepared.opening = None
    manifest.project(prepared.job_id, stored, prepared.state)


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
    worker = f" (worker {owner['worker']})" if owner.get("worker") else ""
    return f"process {owner.get('pid')} on host {owner.get('host')}{worker}"


def check_has_work(state: JobState, job_id: str) -> None:
    """Is there a job with something left to do (what `resume` and `plan --job` both ask)?"""
    if not state.exists:
        raise Rejected(f"unknown job {job_id}")
    if state.status == "succeeded":
        raise Rejected(f"job {job_id} already succeeded; nothing to resume")


def _check_resumable(store: EventStore, state: JobState, cmd: ResumeCommand) -> None:
    check_has_work(state, cmd.job_id)
    if state.status == "running" and state.owner:
        alive = owner_alive(state.owner, lease_of(store, state.owner))
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
            stored = Pipeline.from_snapshot(snapshot, source.decode("utf-8"), str(path))
            if stored is not None:
                return stored
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


@gc_paused()  # the fold, the snapshot's pipeline and the plan
def prepare_resume(store: EventStore, cmd: ResumeCommand) -> Prepared:
    state = fold_job(store, cmd.job_id)
    _check_resumable(store, state, cmd)
    pipeline = pipeline_for_resume(store, state, cmd.pipeline_path)
    plan, changed = plan_resume(state, pipeline)
    check_plan(store, state, pipeline, plan.run, cmd.ignore_breaker)
    lease = Lease.new(store, kind="run")
    resumed = JobResumed(
        owner=lease.owner,
        pipeline_fingerprint=pipeline.fingerprint,
        changed_steps=changed,
        forced=cmd.force,
    )
    try:
        stored = lease.start_with(cmd.job_id, lambda: [NewEvent.of(resumed)], state.version)
    except VersionConflict as exc:
        now = fold_job(store, cmd.job_id)
        who = _owner_text(now.owner) if now.owner else "another process"
        raise Rejected(f"job {cmd.job_id} is being run by {who}") from exc
    faults.after_commit([(ev.type, ev.step) for ev in stored])
    return prepared_after(store, state, pipeline, plan, stored, cmd.ignore_breaker, lease)


def check_plan(
    store: EventStore, state: JobState, pipeline: Pipeline, steps: list[str], ignore_breaker: bool
) -> None:
    """What a resume checks once it knows the steps it will run (keys, budget, breakers,
    workspace); a worker's claim checks the same."""
    _check_keys(pipeline, steps)
    import_http(pipeline, steps)
    check_budget(state, pipeline, pipeline.path)
    if not ignore_breaker:
        check_breakers(store, pipeline, steps)
    check_workspace(Path(state.workspace or Path("runs") / state.job_id).resolve())


def prepared_after(
    store: EventStore,
    state: JobState,
    pipeline: Pipeline,
    plan: Plan,
    stored: list[StoredEvent],
    ignore_breaker: bool,
    lease: Lease | None,
) -> Prepared:
    """The job as its job.resumed (or a claim's job.started) left it, ready for the executor."""
    job_id = state.job_id
    state = manifest.project(job_id, stored, state)
    workspace = Path(state.workspace or Path("runs") / job_id)
    files = store.logged_files(job_id) if state.files_written else {}
    return Prepared(
        job_id, pipeline, state.inputs, workspace, plan, state, ignore_breaker, files, lease
    )


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def record_stop(store: EventStore, job_id: str, report: StopReport, detailed: bool = False) -> None:
    """job.interrupted at the job's head (see _record_stop)."""
    _record_stop(store, job_id, report, detailed)


def open_for(store: EventStore, prepared: Prepared, runner: JobRunner) -> None:
    """A deferred opening (prepare_run(open_in_loop=True)) appended just before the runner
    starts, which then continues the job from its head."""
    if not prepared.opened:
        open_job(store, prepared)
        runner.log.version = prepared.state.version


def job_runner(store: EventStore, prepared: Prepared, observer: Observer | None) -> JobRunner:
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
        # the calls it makes name its lease, and others' calls in flight count while theirs live
        owner=prepared.lease.owner if prepared.lease is not None else None,
        alive=lease_liveness(store),
    )


class Cancelled(Interrupted):
    """The job was cancelled (`steplog cancel`) while this process ran it; job.cancelled is
    recorded, and `resume` can continue it."""

    def __init__(self, reason: str) -> None:
        super().__init__("cancel")
        self.reason = reason

    @property
    def exit_code(self) -> int:
        return 1


class LeaseWatch:
    """Beside a run: the lease's heartbeat, and a cancel request for the job turned into a stop
    as on SIGTERM (no new step; calls in flight get `grace_s`, then the rest is cancelled)."""

    def __init__(self, prepared: Prepared, runner: JobRunner, grace_s: float) -> None:
        self.prepared = prepared
        self.runner = runner
        self.grace_s = grace_s
        self.cancel_reason: str | None = None

    def arm(self) -> None:
        """Before the run's first step: the lease takes cancel requests for this job."""
        if self.prepared.lease is not None:
            self.prepared.lease.jobs.add(self.prepared.job_id)

    async def keep(self) -> None:
        """After `arm`, beside the run until cancelled: beats, and stops the run on a cancel."""
        lease = self.prepared.lease
        if lease is None:
            return
        async with anyio.create_task_group() as group:

            def on_cancel(job_id: str, reason: str) -> None:
                if self.cancel_reason is None:
                    self.cancel_reason = reason or "cancelled"
                    group.start_soon(self.stop)

            await lease.keep(on_cancel)

    async def stop(self) -> None:
        if self.runner.drain() and self.grace_s > 0:
            await anyio.sleep(self.grace_s)
        self.runner.stop_now()


def record_cancelled(store: EventStore, job_id: str, reason: str) -> None:
    """job.cancelled at the head, as job.interrupted is recorded (this process owns the job)."""
    with signals_ignored():
        store.append(job_id, [NewEvent.of(JobCancelled(reason=reason))])


def end_lease(prepared: Prepared, reason: str) -> None:
    """After the job's last event: worker.stopped (the job may then be claimed at once)."""
    if prepared.lease is not None:
        prepared.lease.jobs.discard(prepared.job_id)
        prepared.lease.stop(reason)


async def run_in_loop(
    store: EventStore, prepared: Prepared, observer: Observer | None = None
) -> JobOutcome:
    """Run the plan inside the caller's event loop: no signal handler, no process-wide state.

    If the caller cancels it, the calls in flight are cut off, job.interrupted is recorded
    (signal "cancelled") and the cancellation goes on: `resume` continues the job, reusing
    every answer committed before. A `steplog cancel` of the job records job.cancelled and
    raises Cancelled.
    """
    runner = job_runner(store, prepared, observer)
    lease_watch = LeaseWatch(prepared, runner, DEFAULT_GRACE_S)
    try:

        async def watched() -> JobOutcome:
            async with anyio.create_task_group() as group:
                lease_watch.arm()
                group.start_soon(lease_watch.keep)
                open_for(store, prepared, runner)
                outcome = await runner.run(prepared.plan)
                group.cancel_scope.cancel()
            return outcome

        outcome = await watched()
    except anyio.get_cancelled_exc_class():
        if runner.ended is None and prepared.opened:
            _record_stop(store, prepared.job_id, StopReport("cancelled", grace_s=0))
        end_lease(prepared, "cancelled")
        raise
    except BaseExceptionGroup as group:
        end_lease(prepared, "error")
        raise _explained(_first_leaf(group), prepared.job_id) from group
    except VersionConflict as exc:
        end_lease(prepared, "error")
        raise _explained(exc, prepared.job_id) from exc
    if outcome.interrupted and lease_watch.cancel_reason is not None:
        record_cancelled(store, prepared.job_id, lease_watch.cancel_reason)
        end_lease(prepared, "job cancelled")
        raise Cancelled(lease_watch.cancel_reason)
    end_lease(prepared, "job ended")
    return outcome


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
    Meanwhile the lease beats; a `steplog cancel` stops the job the same way and records
    job.cancelled (Cancelled is raised).
    """
    try:
        return _execute(store, prepared, observer, grace_s=grace_s, say=say, freeze_gc=freeze_gc)
    finally:
        end_lease(prepared, "run ended")


def _execute(
    store: EventStore,
    prepared: Prepared,
    observer: Observer | None,
    *,
    grace_s: float,
    say: Callable[[str], None],
    freeze_gc: bool,
) -> JobOutcome:
    runner = job_runner(store, prepared, observer)
    shutdown = Shutdown(grace_s, say)
    lease_watch = LeaseWatch(prepared, runner, grace_s)

    async def run_watched() -> JobOutcome:
        # The handlers and the lease's job are in place before any step starts; the watchers'
        # tasks begin at the run's first wait (not awaited here: each `group.start` costs the
        # first step a turn of the loop).
        with signal_receiver(SIGNALS) as signals:
            async with anyio.create_task_group() as group:
                group.start_soon(shutdown.follow, signals, runner)
                lease_watch.arm()
                group.start_soon(lease_watch.keep)
                # a signal from here on is the loop's: the run drains and records it
                open_for(store, prepared, runner)
                outcome = await runner.run(prepared.plan)
                group.cancel_scope.cancel()
        return outcome  # (the receiver put back on_sigterm below: ours until execute() ends)

    # Outside the event loop's own handlers (before they are set up, after they are removed) a
    # signal still ends the run the old way: KeyboardInterrupt, then job.interrupted.
    received = {"signal": "SIGINT"}

    def on_sigterm(signum: int, frame: object) -> None:
        received["signal"] = "SIGTERM"
        raise Terminated

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
        if not prepared.opened:
            raise  # before the job's opening events: nothing of it is in the log
        if runner.ended is None:
            with signals_ignored():  # a second Ctrl-C must not cut the record off
                _record_stop(store, prepared.job_id, StopReport(received["signal"], grace_s=0))
            raise Interrupted(received["signal"]) from None
        # the job had ended (job.succeeded/failed committed) before the signal came: it stays so
        outcome = runner.ended
    finally:
        signal.signal(signal.SIGTERM, previous)
    if outcome.interrupted and lease_watch.cancel_reason is not None and shutdown.report is None:
        record_cancelled(store, prepared.job_id, lease_watch.cancel_reason)
        raise Cancelled(lease_watch.cancel_reason)
    if outcome.interrupted:
        report = shutdown.report or StopReport("SIGINT", grace_s)
        with signals_ignored():
            _record_stop(store, prepared.job_id, report, detailed=shutdown.report is not None)
        raise Interrupted(report.signal, shutdown.report)
    return outcome


@contextmanager
def stop_recorded(store: EventStore, prepared: Prepared) -> Iterator[None]:
    """Between a job's opening events and execute() (which handles signals itself): a Ctrl-C
    or SIGTERM there records job.interrupted too, and ends as Interrupted, not as a bare abort
    or a silent death. Before a deferred opening it is a plain KeyboardInterrupt: no job yet."""
    received = {"signal": "SIGINT"}

    def on_sigterm(signum: int, frame: object) -> None:
        received["signal"] = "SIGTERM"
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        if not prepared.opened:
            raise
        with signals_ignored():
            _record_stop(store, prepared.job_id, StopReport(received["signal"], grace_s=0))
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


# the run's heap, by a name of its own: tests put signals around the event loop through it
_long_lived_heap = long_lived_heap


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


__all__ = [
    "Cancelled",
    "PipelineError",
    "Prepared",
    "Rejected",
    "ResumeCommand",
    "RunCommand",
    "execute",
    "fold_job",
    "prepare_resume",
    "prepare_run",
    "open_job",
]
