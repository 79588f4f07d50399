"""Batches: one job per row of an inputs file, created all or nothing, then run in this process
with at most N at once (`steplog run PIPELINE --inputs FILE --jobs N`).

`check_batch` validates everything and appends nothing: the pipeline once, then every row as
`run` validates a job (its inputs, its job id, its workspace). `create_batch` appends every
job's job.created in one write transaction. `execute_batch` (the CLI: signal handlers, one
event loop) and `run_batch_in_loop` (inside the caller's loop) then start each job —
job.started — when one of the N lanes is free, and run it on the shared loop.

A job the batch did not start (a signal stopped the batch first, or another process took it)
stays `created`, with nothing run: `steplog resume JOB` runs it from the start.
"""

from __future__ import annotations

import secrets
import signal
import sqlite3
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import anyio
import anyio.abc
from pydantic import BaseModel, ConfigDict, Field

from steplog.commands import batchfile
from steplog.commands.jobs import (
    Prepared,
    check_breakers,
    check_workspace,
    job_runner,
    record_cancelled,
    record_stop,
)
from steplog.errors import Rejected, Terminated
from steplog.eventstore.events import JobCreated, JobStarted, NewEvent
from steplog.eventstore.record import (
    EventStore,
    StoredEvent,
    StoreError,
    VersionConflict,
    blob_sha256,
)
from steplog.executor import faults
from steplog.executor.lease import Lease
from steplog.executor.pipeline import NAME_PATTERN, Pipeline, load_pipeline
from steplog.executor.plan import Plan
from steplog.executor.runner import JobOutcome, JobRunner, Observer
from steplog.executor.shutdown import DEFAULT_GRACE_S, Shutdown, StopReport, signals_ignored
from steplog.heap import gc_paused, long_lived_heap
from steplog.projections import manifest
from steplog.projections.manifest import JobState

DEFAULT_JOBS = 4  # jobs at once unless --jobs says otherwise


class BatchCommand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline_path: Path
    inputs_file: Path
    inputs: dict[str, str] = Field(default_factory=dict)  # --input: a default rows override
    job_id_prefix: str | None = None  # a row without an `id` is PREFIX + its row number
    batch: str | None = None
    workspace: Path | None = None  # the parent: each job's workspace is <workspace>/<job_id>
    ignore_breaker: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class BatchJob:
    """One validated row: what its job.created will say."""

    line: int
    job_id: str
    inputs: dict[str, str]
    workspace: Path


@dataclass
class BatchPlan:
    """A validated batch, nothing appended yet: give it to `create_batch`."""

    batch: str
    pipeline: Pipeline
    pipeline_path: Path
    source: str  # the inputs file, as messages name it
    jobs: list[BatchJob]
    ignore_breaker: bool = False


def new_batch_name() -> str:
    return "batch_" + time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + "_" + secrets.token_hex(3)


def read_inputs_file(path: Path) -> batchfile.ParsedFile:
    """The inputs file's rows (its format from its suffix); Rejected naming FILE:LINE."""
    fmt = batchfile.format_of(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Rejected(f"inputs file {path} does not exist") from None
    except OSError as exc:
        raise Rejected(f"cannot read inputs file {path}: {exc.strerror}") from None
    return batchfile.parse_rows(str(path), data, fmt)


@gc_paused()  # the pipeline parsed, as in run
def check_batch(store: EventStore, cmd: BatchCommand) -> BatchPlan:
    """Every check of a batch, as `run` checks one job, before anything is appended."""
    import os

    from steplog.commands.guard import check_workspace_free
    from steplog.projections.store import batch_size

    pipeline = load_pipeline(cmd.pipeline_path)
    problems = pipeline.missing_keys(list(pipeline.order), os.environ)
    if problems:
        raise Rejected(problems[0])
    if not cmd.ignore_breaker:
        check_breakers(store, pipeline, list(pipeline.order))
    batch = cmd.batch if cmd.batch is not None else new_batch_name()
    if not NAME_PATTERN.fullmatch(batch):
        raise Rejected(f"batch name {batch!r} is not valid (letters, digits, _ and -, at most 64)")
    existing = batch_size(store, batch)
    if existing:
        raise Rejected(f"batch {batch} already has {existing} jobs; choose another --batch")
    parsed = read_inputs_file(cmd.inputs_file)
    declared = {name: spec.default for name, spec in pipeline.spec.inputs.items()}
    prefix = cmd.job_id_prefix if cmd.job_id_prefix is not None else f"{batch}-"
    specs = batchfile.job_specs(parsed, declared, given=cmd.inputs, prefix=prefix)
    parent = cmd.workspace if cmd.workspace is not None else Path("runs")
    jobs = []
    for spec in specs:
        at = f"{parsed.name}:{spec.line}"
        if store.job_exists(spec.job_id):
            raise Rejected(
                f"{at}: job {spec.job_id} already exists; give this row another id "
                "(its id column, or --job-id PREFIX), or resume that job"
            )
        workspace = (parent / spec.job_id).resolve()
        try:
            check_workspace(workspace)
            if not cmd.overwrite:
                check_workspace_free(store, pipeline, spec.inputs, workspace)
        except Rejected as exc:
            raise Rejected(f"{at}: {exc}") from None
        jobs.append(BatchJob(spec.line, spec.job_id, spec.inputs, workspace))
    return BatchPlan(
        batch, pipeline, Path(cmd.pipeline_path), parsed.name, jobs, cmd.ignore_breaker
    )


def check_batch_before_creating(cmd: BatchCommand) -> BatchPlan:
    """For a database that does not exist yet: every check against an empty history, so that
    a refused batch creates no file."""
    from steplog.projections.store import open_empty_store

    with open_empty_store() as empty:
        return check_batch(empty, cmd)


@contextmanager
def _store_errors(store: EventStore) -> Iterator[None]:
    """SQLite's own errors from a write transaction as the store's one-line errors
    (PostgreSQL's store translates its own)."""
    try:
        yield
    except StoreError:
        raise
    except sqlite3.IntegrityError as exc:
        raise VersionConflict(f"{store.where}: another writer appended first ({exc})") from exc
    except sqlite3.DatabaseError as exc:
        from steplog.eventstore.errors import database_error

        raise database_error(store.where, exc) from exc


def create_batch(
    store: EventStore,
    plan: BatchPlan,
    also: Callable[[BatchJob], Sequence[NewEvent]] | None = None,
) -> list[JobState]:
    """Append every job's job.created (with `batch`) in one write transaction: all of them or,
    on any refusal, none. `also(job)`: events to append after that job's job.created in the
    same transaction (a queue's own opening event, say). Returns each job as folded right
    after, in file order. The jobs are `created`: nothing runs until each is started (run) or
    claimed."""
    pipeline = plan.pipeline
    source = pipeline.source.encode("utf-8")
    snapshot = pipeline.snapshot().encode("utf-8")
    common = {
        "pipeline": pipeline.name,
        "pipeline_path": str(plan.pipeline_path.resolve()),
        "pipeline_fingerprint": pipeline.fingerprint,
        "pipeline_sha256": blob_sha256(source),
        "snapshot_sha256": blob_sha256(snapshot),
        "steps": pipeline.needs,
        "batch": plan.batch,
    }
    created: list[list] = []
    try:
        with _store_errors(store), store.write_transaction() as conn:
            for number, job in enumerate(plan.jobs):
                events = [
                    NewEvent.of(
                        JobCreated(**common, inputs=job.inputs, workspace=str(job.workspace))
                    ),
                    *(also(job) if also is not None else ()),
                ]
                rows = [(e.ts, e.level, e.type, e.step, e.data_json()) for e in events]
                blobs = [source, snapshot] if number == 0 else []
                created.append(store.append_txn(conn, job.job_id, rows, 0, blobs))
    except VersionConflict as exc:
        raise Rejected(
            f"batch {plan.batch}: a job of it was created by another process meanwhile "
            f"({exc}); nothing was appended"
        ) from exc
    faults.after_commit([(ev.type, ev.step) for stored in created for ev in stored])
    return [manifest.project(job.job_id, stored) for job, stored in zip(plan.jobs, created)]


def start_job(
    store: EventStore, plan: BatchPlan, state: JobState, lease: Lease
) -> tuple[Prepared, list[StoredEvent]]:
    """job.started for a created job of the batch (`state` is folded on), owned by the
    batch's lease, and the events appended; VersionConflict if another process got to it
    first (a worker, a `resume`)."""
    stored = store.append(
        state.job_id,
        [NewEvent.of(JobStarted(owner=lease.owner))],
        expected_version=state.version,
    )
    faults.after_commit([(ev.type, ev.step) for ev in stored])
    state = manifest.project(state.job_id, stored, state)
    prepared = Prepared(
        state.job_id,
        plan.pipeline,
        state.inputs,
        Path(state.workspace or Path("runs") / state.job_id),
        Plan(run=list(plan.pipeline.order)),
        state,
        plan.ignore_breaker,
        lease=lease,
    )
    return prepared, stored


ObserverFor = Callable[[str], Observer | None]


@dataclass
class BatchOutcome:
    """How each job of the batch ended in this process. A job in none of the lists was not
    started here (it is `created`, or another process took it: `taken`)."""

    batch: str
    job_ids: list[str]  # every job of the batch, in file order
    ended: dict[str, str] = field(
        default_factory=dict
    )  # job -> succeeded|failed|interrupted|cancelled
    taken: list[str] = field(default_factory=list)  # started or appended to by another process
    signal: str | None = None  # the signal that stopped the batch
    report: StopReport | None = None  # how its drain went, when the loop received it

    @property
    def not_started(self) -> list[str]:
        gone = set(self.ended) | set(self.taken)
        return [job for job in self.job_ids if job not in gone]


class BatchRun:
    """N lanes over one queue of created jobs; a Drainable for executor.shutdown.Shutdown:
    drain stops the lanes taking jobs and drains every running job."""

    def __init__(
        self,
        store: EventStore,
        plan: BatchPlan,
        states: list[JobState],
        *,
        jobs: int = DEFAULT_JOBS,
        observer_for: ObserverFor | None = None,
    ) -> None:
        if jobs < 1:
            raise ValueError("a batch runs at least one job at a time")
        self.store = store
        self.plan = plan
        self.limit = jobs
        self.observer_for = observer_for
        self.waiting = deque(states)
        self.job_ids = [state.job_id for state in states]
        self.runners: dict[str, JobRunner] = {}  # every job started here
        self.outcomes: dict[str, JobOutcome] = {}
        self.taken: list[str] = []
        self.stopped: set[str] = set()  # job.interrupted recorded already
        self.stop_signal: str | None = None  # set by a signal handler outside the loop
        self.draining = False
        self.in_flight: dict[str, int] = {}  # job -> its calls in flight at the drain
        self.cut: dict[str, int] = {}  # job -> its calls stop_now cancelled
        self.cancelled: dict[str, str] = {}  # job -> reason: a `steplog cancel` stopped it
        # one lease for the batch's process: its heartbeat names the jobs running here, and a
        # cancel request for one of them reaches it (as a worker's does)
        self.lease = Lease.new(store, kind="run", concurrency=jobs)

    async def run(self) -> None:
        self.lease.start()
        try:
            async with anyio.create_task_group() as watch:
                watch.start_soon(self.lease.keep, lambda job, why: self._cancel(watch, job, why))
                async with anyio.create_task_group() as lanes:
                    for _ in range(min(self.limit, len(self.waiting))):
                        lanes.start_soon(self._lane)
                watch.cancel_scope.cancel()
        finally:
            self.lease.stop("batch ended")

    def _cancel(self, group: anyio.abc.TaskGroup, job_id: str, reason: str) -> None:
        """A cancel request for a job running here: stop it as on SIGTERM, with no grace."""
        runner = self.runners.get(job_id)
        if runner is None or job_id in self.outcomes or job_id in self.cancelled:
            return
        self.cancelled[job_id] = reason or "cancelled"
        runner.drain()
        runner.stop_now()

    async def _lane(self) -> None:
        while self.waiting and not self.draining:
            await self._run_one(self.waiting.popleft())

    async def _run_one(self, state: JobState) -> None:
        try:
            prepared, started = start_job(self.store, self.plan, state, self.lease)
        except VersionConflict:
            self.taken.append(state.job_id)
            return
        self.lease.jobs.add(state.job_id)
        try:
            await self._run_started(state, prepared, started)
        finally:
            self.lease.jobs.discard(state.job_id)

    async def _run_started(
        self, state: JobState, prepared: Prepared, started: list[StoredEvent]
    ) -> None:
        observer = self.observer_for(state.job_id) if self.observer_for else None
        if observer is not None:
            observer(started)
        runner = self.runners[state.job_id] = job_runner(self.store, prepared, observer)
        try:
            outcome = await runner.run(prepared.plan)
        except anyio.get_cancelled_exc_class():
            if runner.ended is None and state.job_id not in self.stopped:
                self.stopped.add(state.job_id)
                record_stop(
                    self.store, state.job_id, StopReport(self.stop_signal or "cancelled", 0)
                )
            raise
        except VersionConflict:  # another process appended to the job (resume --force …)
            self.taken.append(state.job_id)
            return
        if state.job_id in self.cancelled and outcome.interrupted:
            record_cancelled(self.store, state.job_id, self.cancelled[state.job_id])
        self.outcomes[state.job_id] = outcome

    def running(self) -> list[JobRunner]:
        return [r for job, r in self.runners.items() if job not in self.outcomes]

    def unfinished(self) -> list[str]:
        """Jobs started here that neither ended nor had their stop recorded."""
        return [
            job
            for job, runner in self.runners.items()
            if job not in self.outcomes
            and job not in self.taken
            and runner.ended is None
            and job not in self.stopped
        ]

    def drain(self) -> int:
        """Start no more jobs; drain the running ones. Returns the calls in flight."""
        self.draining = True
        for runner in self.running():
            self.in_flight[runner.log.job_id] = runner.drain()
        return sum(self.in_flight.values())

    def stop_now(self) -> int:
        for runner in self.running():
            self.cut[runner.log.job_id] = runner.stop_now()
        return sum(self.cut.values())

    def stop_report(self, job_id: str, batch: StopReport) -> StopReport:
        """The batch's stop as one job's job.interrupted tells it: that job's calls."""
        return StopReport(
            batch.signal,
            batch.grace_s,
            calls_running=self.in_flight.get(job_id, 0),
            calls_cancelled=self.cut.get(job_id, 0),
            second_signal=batch.second_signal,
        )

    def outcome(self, signal_name: str | None, report: StopReport | None) -> BatchOutcome:
        ended: dict[str, str] = {}
        for job, runner in self.runners.items():
            result = self.outcomes.get(job) or runner.ended
            if job in self.taken:
                continue
            if job in self.cancelled:
                ended[job] = "cancelled"
            elif result is None or result.interrupted:
                ended[job] = "interrupted"
            else:
                ended[job] = "succeeded" if result.succeeded else "failed"
        return BatchOutcome(
            self.plan.batch, self.job_ids, ended, list(self.taken), signal_name, report
        )


async def run_batch_in_loop(
    store: EventStore,
    plan: BatchPlan,
    states: list[JobState],
    *,
    jobs: int = DEFAULT_JOBS,
    observer_for: ObserverFor | None = None,
) -> BatchOutcome:
    """Run the created jobs inside the caller's event loop, N at once: no signal handler. If
    the caller cancels it, each running job records job.interrupted (signal "cancelled")."""
    batch_run = BatchRun(store, plan, states, jobs=jobs, observer_for=observer_for)
    await batch_run.run()
    return batch_run.outcome(None, None)


def execute_batch(
    store: EventStore,
    plan: BatchPlan,
    states: list[JobState],
    *,
    jobs: int = DEFAULT_JOBS,
    observer_for: ObserverFor | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    say: Callable[[str], None] = lambda line: None,
    freeze_gc: bool = True,
) -> BatchOutcome:
    """Run the created jobs in one new event loop, N at once, as `run` runs one job: the
    first SIGINT/SIGTERM starts no more jobs and drains the running ones (calls in flight get
    `grace_s`), which record job.interrupted; a second signal cancels the rest. Main thread
    only. The jobs not started stay `created`."""
    batch_run = BatchRun(store, plan, states, jobs=jobs, observer_for=observer_for)
    shutdown = Shutdown(grace_s, say)

    async def run_watched() -> None:
        async with anyio.create_task_group() as group:
            await group.start(shutdown.watch, batch_run)
            await batch_run.run()
            group.cancel_scope.cancel()
        # the loop put back the defaults while removing its handlers: ours until the end
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # Outside the event loop's own handlers a signal ends the batch the old way: a
    # KeyboardInterrupt, then job.interrupted for each running job, under that signal's name.
    def on_signal(signum: int, frame: object) -> None:
        batch_run.stop_signal = signal.Signals(signum).name
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            with long_lived_heap() if freeze_gc else nullcontext():
                anyio.run(run_watched)
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from group  # one clear error, not a task-group tree
    except KeyboardInterrupt:
        name = batch_run.stop_signal or "SIGINT"
        with signals_ignored():
            for job in batch_run.unfinished():
                batch_run.stopped.add(job)
                record_stop(store, job, StopReport(name, grace_s=0))
        return batch_run.outcome(name, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    drained = [
        job
        for job, outcome in batch_run.outcomes.items()
        if outcome.interrupted and job not in batch_run.cancelled  # (job.cancelled recorded)
    ]
    report = shutdown.report
    if report is None and not drained:
        return batch_run.outcome(None, None)
    report = report or StopReport("SIGINT", grace_s)
    with signals_ignored():
        for job in drained:
            record_stop(
                store,
                job,
                batch_run.stop_report(job, report),
                detailed=shutdown.report is not None,
            )
    return batch_run.outcome(report.signal, shutdown.report)


@dataclass
class BatchSummary:
    """The batch's jobs as the log has them now (each folded), for the closing line."""

    batch: str
    jobs: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # status -> jobs
    llm_calls: int = 0
    llm_answered: int = 0
    llm_failures: int = 0
    llm_unanswered: int = 0
    tokens: int = 0
    cost: float = 0.0
    unpriced_calls: int = 0
    states: list[JobState] = field(default_factory=list)

    def count(self, status: str) -> int:
        return self.statuses.get(status, 0)


def summarize(store: EventStore, batch: str, job_ids: list[str]) -> BatchSummary:
    """Fold each job of the batch from the log: what the closing line says is what it holds."""
    from steplog.commands.queries import fold_job

    summary = BatchSummary(batch)
    for job_id in job_ids:
        state = fold_job(store, job_id)
        summary.states.append(state)
        summary.jobs += 1
        summary.statuses[state.status] = summary.statuses.get(state.status, 0) + 1
        summary.llm_calls += state.llm_calls
        summary.llm_answered += state.llm_answered
        summary.llm_failures += state.llm_failures
        summary.llm_unanswered += state.llm_unanswered
        summary.tokens += state.tokens_in + state.tokens_out
        summary.cost += state.cost
        summary.unpriced_calls += state.unpriced_calls
    return summary


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


__all__ = [
    "BatchCommand",
    "BatchJob",
    "BatchOutcome",
    "BatchPlan",
    "BatchSummary",
    "check_batch",
    "check_batch_before_creating",
    "create_batch",
    "execute_batch",
    "read_inputs_file",
    "run_batch_in_loop",
    "start_job",
    "summarize",
]
