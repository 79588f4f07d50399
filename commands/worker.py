"""`steplog worker`: claim queued jobs, and running jobs whose owner's lease is gone, and run
them (resume semantics: completed steps skipped, committed answers reused).

One event loop runs up to `concurrency` JobRunners side by side (run_in_loop's way: no thread
per job), beside the lease's heartbeat (executor/lease.py) and one watcher for SIGINT/SIGTERM
(executor/shutdown.py, as `run` has).

Claiming is optimistic and needs no lock: the worker folds the job, checks it, and appends
job.started (queued) or job.resumed (taken over, naming the old worker) with the version it
folded; a VersionConflict means another worker (or a `cancel`) came first, and it moves on.
Candidates come from the `jobs` table by status, so a poll reads a few index entries; running
jobs that a live lease's heartbeat names are not even folded.

A stop (signal, or the end of --drain) records worker.stopped after each job's last event; a
job stopped by a signal gets job.interrupted and job.requeued, so it is queued again at once.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field

from steplog.commands.jobs import (
    Prepared,
    check_job_id,
    check_plan,
    job_runner,
    pipeline_for_resume,
    prepared_after,
    record_cancelled,
)
from steplog.commands.queries import fold_job
from steplog.errors import Interrupted, Rejected, Terminated
from steplog.eventstore.events import (
    JobFailed,
    JobInterrupted,
    JobRequeued,
    JobResumed,
    JobStarted,
    NewEvent,
)
from steplog.eventstore.record import EventStore, StoreError, VersionConflict
from steplog.executor.lease import Lease
from steplog.executor.ownership import lease_of, owner_alive
from steplog.executor.pipeline import PipelineError
from steplog.executor.plan import plan_resume
from steplog.executor.runner import JobRunner
from steplog.executor.shutdown import DEFAULT_GRACE_S, Shutdown, StopReport, signals_ignored
from steplog.projections.leases import WorkerRow, lease_alive
from steplog.projections.manifest import JobState
from steplog.projections.store import open_jobs, worker_rows

POLL_MIN_S = 0.05  # SQLite tells no one of a commit: look again after this, doubling …
POLL_MAX_S = 1.0  # … up to this while nothing changes
CANDIDATES = 200  # jobs read per look (queued first), beyond those left alone


class WorkerCommand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(default=1, ge=1, le=256)
    worker_id: str | None = None
    drain: bool = False
    pipeline_dir: Path | None = None
    lease_s: float | None = None
    grace_s: float = Field(default=DEFAULT_GRACE_S, ge=0, le=3600)
    ignore_breaker: bool = False


class WorkerReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker_id: str
    succeeded: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    cancelled: list[str] = Field(default_factory=list)
    requeued: list[str] = Field(default_factory=list)
    left_alone: list[str] = Field(default_factory=list)
    stopped_by: str | None = None  # the signal, when one stopped it


# -- what to claim (no I/O) ------------------------------------------------------------------


def candidates(
    rows: Iterable[tuple[str, str]],
    workers: Iterable[WorkerRow],
    now: float,
    skip: set[str],
) -> list[tuple[str, str]]:
    """The jobs worth folding, queued first as read: not ours or left alone (`skip`), and not a
    running job that a live lease's last heartbeat names (its owner is known to be alive)."""
    held: set[str] = set()
    for row in workers:
        if lease_alive(row, now):
            held.update(row.job_list)
    return [
        (job_id, status)
        for job_id, status in rows
        if job_id not in skip and not (status == "running" and job_id in held)
    ]


def outside(path: str | None, pipeline_dir: Path | None) -> bool:
    """A job's pipeline file is not one a --pipeline-dir worker trusts."""
    if pipeline_dir is None:
        return False
    if not path:
        return True
    return not Path(path).resolve().is_relative_to(pipeline_dir)


# -- the worker ------------------------------------------------------------------------------


@dataclass
class _Job:
    prepared: Prepared
    runner: JobRunner
    cancel_reason: str | None = None


@dataclass
class Worker:
    store: EventStore
    cmd: WorkerCommand
    say: Callable[[str], None]
    lease: Lease
    report: WorkerReport
    pipeline_dir: Path | None = None
    running: dict[str, _Job] = field(default_factory=dict)
    left_alone: set[str] = field(default_factory=set)
    stopping: bool = False
    shutdown: Shutdown | None = None
    wake: anyio.Event = field(default_factory=anyio.Event)
    group: TaskGroup | None = None

    # Drainable, for executor.shutdown: a signal stops every job this worker runs
    def drain(self) -> int:
        self.stopping = True
        self.wake.set()
        return sum(job.runner.drain() for job in self.running.values())

    def stop_now(self) -> int:
        return sum(job.runner.stop_now() for job in self.running.values())

    # -- claiming ----------------------------------------------------------------------------

    def _leave(self, job_id: str, why: str) -> None:
        if job_id not in self.left_alone:
            self.left_alone.add(job_id)
            self.report.left_alone.append(job_id)
            self.say(f"job {job_id} left alone: {why}")

    def claim(self, job_id: str, now: float) -> Prepared | None:
        """Take the job if it may be taken (queued, or its owner's lease is gone); None when it
        may not, or when another worker took it first."""
        state = fold_job(self.store, job_id)
        taken_over: str | None = None
        if state.status == "running":
            owner = state.owner or {}
            alive = owner_alive(owner, lease_of(self.store, owner), now)
            if alive is None:  # an owner from before leases, on another host
                self._leave(job_id, "its owner holds no lease and runs on another host")
                return None
            if alive:
                return None
            taken_over = str(owner.get("worker") or f"process {owner.get('pid')}")
        elif state.status != "queued":
            return None
        if outside(state.pipeline_path, self.pipeline_dir):
            self._leave(job_id, f"its pipeline {state.pipeline_path} is outside --pipeline-dir")
            return None
        try:
            return self._start(state, taken_over)
        except VersionConflict:
            return None  # another worker (or a cancel) came first
        except (Rejected, PipelineError) as exc:
            self._leave(job_id, str(exc))
            return None

    def _start(self, state: JobState, taken_over: str | None) -> Prepared:
        override = Path(state.pipeline_path) if self.pipeline_dir and state.pipeline_path else None
        pipeline = pipeline_for_resume(self.store, state, override)
        plan, changed = plan_resume(state, pipeline)
        check_plan(self.store, state, pipeline, plan.run, self.cmd.ignore_breaker)
        first = state.runs == 0 and taken_over is None
        opening = (
            JobStarted(owner=self.lease.owner)
            if first
            else JobResumed(
                owner=self.lease.owner,
                pipeline_fingerprint=pipeline.fingerprint,
                changed_steps=changed,
                taken_over_from=taken_over,
            )
        )
        stored = self.store.append(
            state.job_id, [NewEvent.of(opening)], expected_version=state.version
        )
        return prepared_after(
            self.store, state, pipeline, plan, stored, self.cmd.ignore_breaker, self.lease
        )

    def claim_some(self) -> int:
        """Claim jobs up to the free slots; returns how many were claimed."""
        free = self.cmd.concurrency - len(self.running)
        if free <= 0 or self.stopping:
            return 0
        now = time.time()
        rows = open_jobs(self.store, CANDIDATES + len(self.left_alone) + len(self.running))
        skip = self.left_alone | set(self.running)
        claimed = 0
        for job_id, _ in candidates(rows, worker_rows(self.store), now, skip):
            if claimed >= free or self.stopping:
                break
            prepared = self.claim(job_id, now)
            if prepared is None:
                continue
            claimed += 1
            self._launch(prepared)
        if claimed:
            self._beat()  # name the new jobs at once: other workers need not fold them
        return claimed

    def pending(self) -> bool:
        """Is anything queued or running (but the jobs left alone)? --drain ends once not."""
        rows = open_jobs(self.store, CANDIDATES + len(self.left_alone))
        return bool(self.running) or any(job not in self.left_alone for job, _ in rows)

    def _beat(self) -> None:
        try:
            for job_id, reason in self.lease.beat():
                self.on_cancel(job_id, reason)
        except StoreError as exc:
            self.say(f"worker {self.lease.worker_id}: heartbeat not recorded: {exc}")

    # -- running -----------------------------------------------------------------------------

    def _launch(self, prepared: Prepared) -> None:
        assert self.group is not None
        runner = job_runner(self.store, prepared, None)
        self.running[prepared.job_id] = _Job(prepared, runner)
        self.lease.jobs.add(prepared.job_id)
        how = "took over" if prepared.state.runs > 1 else "claimed"
        self.say(
            f"worker {self.lease.worker_id} {how} job {prepared.job_id}: "
            f"{prepared.pipeline.name}, {len(prepared.plan.run)} to run"
        )
        self.group.start_soon(self._run, prepared.job_id)

    async def _run(self, job_id: str) -> None:
        job = self.running[job_id]
        try:
            outcome = await job.runner.run(job.prepared.plan)
        except VersionConflict:
            self.say(f"job {job_id} was appended to by another process; this worker let it go")
            return self._done(job_id)
        except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the others
            error = f"worker {self.lease.worker_id}: {type(exc).__name__}: {exc}"
            self._append_end(job_id, [NewEvent.of(JobFailed(error=error))])
            self.report.failed.append(job_id)
            self.say(f"job {job_id} failed: {error}")
            return self._done(job_id)
        if outcome.interrupted and job.cancel_reason is not None:
            record_cancelled(self.store, job_id, job.cancel_reason)
            self.report.cancelled.append(job_id)
            self.say(f"job {job_id} cancelled ({job.cancel_reason})")
        elif outcome.interrupted:
            stop = self.shutdown.report if self.shutdown else None
            data = JobInterrupted(signal=stop.signal if stop else "stopped")
            if stop is not None:
                data = JobInterrupted(
                    signal=stop.signal,
                    grace_s=stop.grace_s,
                    calls_finished=stop.calls_finished,
                    calls_cancelled=stop.calls_cancelled,
                    second_signal=stop.second_signal,
                )
            back = JobRequeued(
                worker=self.lease.worker_id, reason=f"worker stopped ({data.signal})"
            )
            self._append_end(job_id, [NewEvent.of(data), NewEvent.of(back)])
            self.report.requeued.append(job_id)
            self.say(f"job {job_id} interrupted and queued again")
        elif outcome.succeeded:
            self.report.succeeded.append(job_id)
            self.say(f"job {job_id} succeeded")
        else:
            self.report.failed.append(job_id)
            self.say(f"job {job_id} failed; after fixing, run: steplog resume {job_id}")
        self._done(job_id)

    def _append_end(self, job_id: str, events: list[NewEvent]) -> None:
        with signals_ignored():
            try:
                self.store.append(job_id, events)
            except StoreError as exc:
                self.say(f"job {job_id}: its end was not recorded: {exc}")

    def _done(self, job_id: str) -> None:
        self.running.pop(job_id, None)
        self.lease.jobs.discard(job_id)
        self.wake.set()

    def on_cancel(self, job_id: str, reason: str) -> None:
        job = self.running.get(job_id)
        if job is None or job.cancel_reason is not None or self.group is None:
            return
        job.cancel_reason = reason or "cancelled"
        self.group.start_soon(self._stop_one, job)

    async def _stop_one(self, job: _Job) -> None:
        if job.runner.drain() and self.cmd.grace_s > 0:
            with anyio.move_on_after(self.cmd.grace_s):
                while job.prepared.job_id in self.running:
                    await self._until_woken(POLL_MAX_S)
        job.runner.stop_now()

    # -- waiting -----------------------------------------------------------------------------

    async def _until_woken(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self.wake.wait()
        if self.wake.is_set():
            self.wake = anyio.Event()

    async def _wait_for_work(self, pause: float) -> None:
        """PostgreSQL: LISTEN (a thread waits for the next commit's NOTIFY); SQLite: sleep
        `pause`. Either way a job ending here, or a stop, wakes it sooner."""
        if self.store.notifies and not self.wake.is_set():
            seq = self.store.last_seq()
            await anyio.to_thread.run_sync(self.store.wait_for_events, seq, min(pause, 0.5))
            return
        await self._until_woken(pause)

    async def claim_loop(self) -> None:
        pause = POLL_MIN_S
        while not self.stopping:
            claimed = self.claim_some()
            if self.cmd.drain and not claimed and not self.pending():
                return
            pause = POLL_MIN_S if claimed else min(pause * 2, POLL_MAX_S)
            await self._wait_for_work(pause)

    async def main(self, handle_signals: bool) -> None:
        async with anyio.create_task_group() as outer:
            if handle_signals:
                self.shutdown = Shutdown(self.cmd.grace_s, self.say)
                await outer.start(self.shutdown.watch, self)
            outer.start_soon(self.lease.keep, self.on_cancel)
            async with anyio.create_task_group() as jobs:
                self.group = jobs
                await self.claim_loop()
            outer.cancel_scope.cancel()


def work(
    store: EventStore,
    cmd: WorkerCommand,
    *,
    say: Callable[[str], None] = lambda line: None,
    handle_signals: bool = False,
) -> WorkerReport:
    """Run a worker until --drain finds nothing left, or (handle_signals) a SIGINT/SIGTERM
    stops it: then Interrupted is raised once every job's stop is recorded. Main thread only
    when handle_signals."""
    if cmd.worker_id is not None:
        check_job_id(cmd.worker_id)
    pipeline_dir = None
    if cmd.pipeline_dir is not None:
        pipeline_dir = cmd.pipeline_dir.resolve()
        if not pipeline_dir.is_dir():
            raise Rejected(f"--pipeline-dir {cmd.pipeline_dir} is not a directory")
    lease = Lease.new(
        store,
        kind="worker",
        lease_s=cmd.lease_s,
        concurrency=cmd.concurrency,
        pipeline_dir=str(pipeline_dir) if pipeline_dir else None,
        worker_id=cmd.worker_id,
    )
    lease.start()
    lease.say = say
    worker = Worker(store, cmd, say, lease, WorkerReport(worker_id=lease.worker_id), pipeline_dir)
    say(
        f"worker {lease.worker_id}: up to {cmd.concurrency} jobs at once, lease {lease.lease_s:g}s"
        + (", until the queue is empty" if cmd.drain else "")
    )
    if not handle_signals:
        try:
            _run_loop(worker, False)
        finally:
            lease.stop("drained" if cmd.drain else "stopped")
        return worker.report
    received = {"signal": "SIGINT"}

    def on_sigterm(signum: int, frame: object) -> None:
        received["signal"] = "SIGTERM"
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _run_loop(worker, True)
    except KeyboardInterrupt:  # before the loop's own handlers, or after: no job is running
        worker.report.stopped_by = received["signal"]
    finally:
        signal.signal(signal.SIGTERM, previous)
        with signals_ignored():
            stop = worker.shutdown.report if worker.shutdown else None
            lease.stop(f"stopped ({stop.signal})" if stop else "drained")
    stop = worker.shutdown.report if worker.shutdown else None
    if stop is not None:
        worker.report.stopped_by = stop.signal
    if worker.report.stopped_by is not None:
        raise WorkerStopped(worker.report, stop)
    return worker.report


def _run_loop(worker: Worker, handle_signals: bool) -> None:
    """The worker's event loop; a store that gave up ends it with that one error, not a tree."""
    try:
        anyio.run(worker.main, handle_signals)
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if isinstance(leaf, StoreError):
            raise leaf from group
        raise


class WorkerStopped(Interrupted):
    """A signal stopped the worker; its jobs are queued again. `report` says what it did."""

    def __init__(self, worker_report: WorkerReport, stop: StopReport | None) -> None:
        super().__init__(worker_report.stopped_by or "SIGINT", stop)
        self.worker_report = worker_report
