"""The anyio DAG runner: executes a validated plan, appending every state change to the log.

JobRunner wires one run together: the job's log (executor/joblog.py), the DAG and its stopping
(scheduler.py), one step's pipeline (step.py) and the provider calls (calls.py); it records
step.skipped for the reused steps first and job.succeeded or job.failed at the end.
"""

from __future__ import annotations

import random
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Callable

from steplog.eventstore.events import JobFailed, JobSucceeded, NewEvent, Owner
from steplog.eventstore.record import EventStore
from steplog.executor.budget import Spend
from steplog.executor.calls import ProviderCalls, provider_concurrency
from steplog.executor.flights import Liveness, default_alive
from steplog.executor.joblog import JobLog, Observer
from steplog.executor.pipeline import Pipeline
from steplog.executor.plan import Plan
from steplog.executor.scheduler import MIN_STEPS_UNDER_WAY, JobOutcome, Scheduler
from steplog.executor.step import StepRunner
from steplog.executor.workspace import sweep_stale_temps


class JobRunner:
    def __init__(
        self,
        store: EventStore,
        job_id: str,
        pipeline: Pipeline,
        inputs: dict[str, str],
        workspace: Path,
        *,
        version: int,
        observer: Observer | None = None,
        rng: random.Random | None = None,
        spent: Spend | None = None,
        ignore_breaker: bool = False,
        clock: Callable[[], float] = time.time,
        last_written: dict[str, str] | None = None,
        owner: Owner | None = None,
        alive: Liveness = default_alive,
    ) -> None:
        self.log = JobLog(store, job_id, version=version, observer=observer)
        self.workspace = workspace
        self.scheduler = Scheduler(pipeline, max_under_way=steps_under_way(pipeline))
        self.calls = ProviderCalls(
            self.log,
            pipeline,
            self.scheduler,
            spent=spent or Spend(),
            ignore_breaker=ignore_breaker,
            clock=clock,
            rng=rng or random.Random(),
            owner=owner,
            alive=alive,
        )
        self.steps = StepRunner(
            self.log, pipeline, inputs, workspace, self.calls, last_written=last_written
        )
        # Set once job.succeeded or job.failed is committed: a signal after it changes nothing.
        self.ended: JobOutcome | None = None

    async def run(self, plan: Plan) -> JobOutcome:
        started = time.monotonic()
        self.steps.skip_reused(plan)
        if self.steps.last_written or plan.attempts:  # only an earlier run can have left one
            sweep_stale_temps(self.workspace)  # a crash mid-write leaves its temp file behind
        async with AsyncExitStack() as stack:
            await self.calls.open(stack, plan.run)
            async with self.log.group_commits():
                outcome = await self.scheduler.run(plan, self.steps.run)
        if outcome.interrupted:
            return outcome
        duration = round(time.monotonic() - started, 6)
        ended: JobSucceeded | JobFailed = JobSucceeded(duration_s=duration)
        if not outcome.succeeded:
            failed = outcome.failed_steps
            error = failure_text(failed, self.steps.errors)
            ended = JobFailed(error=error, failed_steps=failed, duration_s=duration)
        self.log.emit([NewEvent.of(ended)])
        self.ended = outcome
        return outcome

    def drain(self) -> int:
        """Start no more steps or attempts (see Scheduler.drain); calls in flight may finish."""
        return self.scheduler.drain()

    def stop_now(self) -> int:
        """Cancel every step still under way; returns how many provider calls that cut off."""
        return self.scheduler.stop_now()


def steps_under_way(pipeline: Pipeline) -> int:
    """How many steps may be under way at once: twice the calls the providers' limits let run
    at once (so the next steps are rendered and waiting when a slot frees), at least
    MIN_STEPS_UNDER_WAY."""
    calls = 0
    for name in {step.provider for step in pipeline.spec.steps.values()}:
        calls += provider_concurrency(pipeline.spec.providers[name]) or 0
    return max(MIN_STEPS_UNDER_WAY, 2 * calls)


def failure_text(failed: list[str], errors: dict[str, str]) -> str:
    """job.failed's error: the first failed step's error, naming the others."""
    if not failed:
        return "steps could not start"
    text = f"step {failed[0]} failed: {errors.get(failed[0], 'see its events')}"
    if len(failed) > 1:
        text += f" (and {len(failed) - 1} more: {', '.join(failed[1:])})"
    return text


__all__ = ["JobOutcome", "JobRunner", "Observer"]
