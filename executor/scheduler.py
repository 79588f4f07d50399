"""The DAG of a run: one task per step, started once its needs succeeded; draining and stopping.

Independent steps run concurrently in one anyio task group. A step whose dependency failed
(or never ran) does not start; independent branches run to completion.

Stopping (see executor/shutdown.py): once draining, no step starts and no attempt begins; steps
outside a provider call are cancelled through their scopes, while calls in flight may finish
until `stop_now` cancels everything left.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator

import anyio

from steplog.executor.pipeline import Pipeline
from steplog.executor.plan import Plan

# run_step(step, attempt, release) -> succeeded; `release` lets dependants start early
RunStep = Callable[[str, int, Callable[[], None]], Awaitable[bool]]


@dataclass(frozen=True)
class JobOutcome:
    succeeded: bool
    failed_steps: list[str]
    blocked_steps: list[str]
    interrupted: bool = False  # stopped by drain/stop_now: no job.succeeded/failed was appended


class Scheduler:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._draining = False
        self._attempted: set[str] = set()  # steps that got past their needs and started
        self._scopes: dict[str, anyio.CancelScope] = {}  # steps under way
        self._calling: set[str] = set()  # steps awaiting their provider's answer
        self._steps_scope: anyio.CancelScope | None = None

    @property
    def draining(self) -> bool:
        return self._draining

    async def run(self, plan: Plan, run_step: RunStep) -> JobOutcome:
        """Run every step of the plan; the steps it reuses count as succeeded."""
        done = {name: anyio.Event() for name in plan.run}
        ok: dict[str, bool] = {name: True for name in plan.reuse}
        async with anyio.create_task_group() as steps:
            self._steps_scope = steps.cancel_scope
            for name in plan.run:
                steps.start_soon(self._step_task, name, plan, run_step, done, ok)
        failed = [n for n in plan.run if ok.get(n) is False and n in self._attempted]
        blocked = [n for n in plan.run if n not in self._attempted]
        if self._draining and any(ok.get(n) is None for n in plan.run):
            # steps were cancelled or never started: the caller records job.interrupted
            return JobOutcome(False, failed, blocked, interrupted=True)
        return JobOutcome(not (failed or blocked), failed, blocked)

    async def _step_task(
        self,
        name: str,
        plan: Plan,
        run_step: RunStep,
        done: dict[str, anyio.Event],
        ok: dict[str, bool],
    ) -> None:
        try:
            for need in self.pipeline.spec.steps[name].needs:
                if need in done:
                    await done[need].wait()
                if not ok.get(need, False):
                    ok[name] = False
                    return  # blocked: a dependency failed or never ran
            if self._draining:
                return  # stopping: the step stays pending for resume
            self._attempted.add(name)

            def release() -> None:
                ok[name] = True
                done[name].set()

            with anyio.CancelScope() as scope:
                self._scopes[name] = scope
                try:
                    ok[name] = await run_step(name, plan.attempts.get(name, 0) + 1, release)
                finally:
                    del self._scopes[name]
        finally:
            done[name].set()

    @contextmanager
    def calling(self, step: str) -> Iterator[None]:
        """While inside, the step awaits its provider's answer: a drain lets it finish."""
        self._calling.add(step)
        try:
            yield
        finally:
            self._calling.discard(step)

    def cancel(self, step: str) -> None:
        """Cancel one step under way (it stays pending for resume)."""
        self._scopes[step].cancel()

    def drain(self) -> int:
        """Start no more steps or attempts; cancel the steps not waiting for a provider's answer.

        Returns the number of provider calls in flight: they may finish (and their steps with
        them) until `stop_now`.
        """
        self._draining = True
        for name, scope in self._scopes.items():
            if name not in self._calling:
                scope.cancel()
        return len(self._calling)

    def stop_now(self) -> int:
        """Cancel every step still under way; returns how many provider calls that cut off."""
        self._draining = True
        cut = len(self._calling)
        if self._steps_scope is not None:
            self._steps_scope.cancel()
        return cut
