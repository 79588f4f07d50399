"""The DAG of a run: each step started once its needs succeeded; draining and stopping.

Independent steps run concurrently in one anyio task group, on runner tasks: a runner that
finishes a step is handed the next ready one rather than a task being spawned for each step
(anyio spends about 25 us spawning one). A step whose dependency failed
(or never ran) does not start; independent branches run to completion.

Stopping (see executor/shutdown.py): once draining, no step starts and no attempt begins; steps
outside a provider call are cancelled through their scopes, while calls in flight may finish
until `stop_now` cancels everything left.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator

import anyio
import anyio.abc

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


# Steps under way at once (each on a runner task) at least; more when the providers' limits
# let more calls run at once. A step waiting for its needs has no task: a 10,000-step fan-out
# holds a few hundred tasks, not 10,000.
MIN_STEPS_UNDER_WAY = 256


class _IdleRunner:
    """A runner between steps: handed its next step, or None when the run starts no more."""

    __slots__ = ("_event", "_step")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._step: str | None = None

    def hand(self, step: str | None) -> None:
        self._step = step
        self._event.set()

    async def next_step(self) -> str | None:
        await self._event.wait()
        return self._step


class Scheduler:
    def __init__(self, pipeline: Pipeline, *, max_under_way: int = MIN_STEPS_UNDER_WAY) -> None:
        self.pipeline = pipeline
        self.max_under_way = max(1, max_under_way)
        self._draining = False
        self._attempted: set[str] = set()  # steps that got past their needs and started
        self._scopes: dict[str, anyio.CancelScope] = {}  # steps under way
        self._calling: set[str] = set()  # steps awaiting their provider's answer
        self._idle: list[_IdleRunner] = []  # runners waiting to be handed a step
        self._steps_scope: anyio.CancelScope | None = None

    @property
    def draining(self) -> bool:
        return self._draining

    async def run(self, plan: Plan, run_step: RunStep) -> JobOutcome:
        """Run every step of the plan; the steps it reuses count as succeeded.

        A step starts once each of its needs has settled: succeeded (or released early), or
        failed, cancelled, never run, which blocks it and, in turn, its dependants. Ready
        steps start in file order, at most max_under_way at a time.
        """
        ok: dict[str, bool] = {name: True for name in plan.reuse}
        in_plan = set(plan.run)
        needs = {name: self.pipeline.spec.steps[name].needs for name in plan.run}
        unsettled = {name: sum(n in in_plan for n in needs[name]) for name in plan.run}
        dependants: dict[str, list[str]] = {}
        for name in plan.run:
            for need in needs[name]:
                if need in in_plan:
                    dependants.setdefault(need, []).append(name)
        settled: set[str] = set()
        ready: deque[str] = deque()
        under_way = 0

        def settle(first: str) -> None:
            """`first` has settled: count it off its dependants; block those that can never
            start, queue those that can (iteratively: a blocked chain may be long)."""
            todo = [first]
            while todo:
                name = todo.pop()
                if name in settled:
                    continue
                settled.add(name)
                for dependant in dependants.get(name, ()):
                    unsettled[dependant] -= 1
                    if unsettled[dependant]:
                        continue
                    if all(ok.get(n, False) for n in needs[dependant]):
                        ready.append(dependant)
                    else:
                        ok[dependant] = False  # blocked: a dependency failed or never ran
                        todo.append(dependant)

        def fill(steps: anyio.abc.TaskGroup) -> None:
            """Start what is ready: on an idle runner if one waits, else on a new one."""
            nonlocal under_way
            while ready and under_way < self.max_under_way and not self._draining:
                name = ready.popleft()
                under_way += 1
                self._attempted.add(name)
                if self._idle:
                    self._idle.pop().hand(name)
                else:
                    steps.start_soon(runner, name, steps)

        async def run_one(name: str, steps: anyio.abc.TaskGroup) -> None:
            nonlocal under_way
            if self._draining:  # handed to its runner before the drain came: it never starts
                self._attempted.discard(name)
                under_way -= 1
                return

            def release() -> None:
                ok[name] = True
                settle(name)
                fill(steps)

            try:
                with anyio.CancelScope() as scope:
                    self._scopes[name] = scope
                    try:
                        ok[name] = await run_step(name, plan.attempts.get(name, 0) + 1, release)
                    finally:
                        del self._scopes[name]
            finally:
                under_way -= 1
                settle(name)  # (its dependants are blocked unless it succeeded)
                fill(steps)

        async def runner(name: str | None, steps: anyio.abc.TaskGroup) -> None:
            """Run steps one after another: the one it was started for, then each handed to it
            while idle; it ends when the run has nothing left to start."""
            while name is not None:
                await run_one(name, steps)
                if self._draining or (not under_way and not ready):
                    self._wake_idle()  # the run is over: let every idle runner end too
                    return
                slot = _IdleRunner()
                self._idle.append(slot)
                name = await slot.next_step()

        async with anyio.create_task_group() as steps:
            self._steps_scope = steps.cancel_scope
            for name in plan.run:
                if unsettled[name]:
                    continue
                if all(ok.get(n, False) for n in needs[name]):
                    ready.append(name)
                else:
                    ok[name] = False
                    settle(name)
            fill(steps)
        failed = [n for n in plan.run if ok.get(n) is False and n in self._attempted]
        blocked = [n for n in plan.run if n not in self._attempted]
        if self._draining and any(ok.get(n) is None for n in plan.run):
            # steps were cancelled or never started: the caller records job.interrupted
            return JobOutcome(False, failed, blocked, interrupted=True)
        return JobOutcome(not (failed or blocked), failed, blocked)

    def _wake_idle(self) -> None:
        idle, self._idle = self._idle, []
        for slot in idle:
            slot.hand(None)

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
        self._wake_idle()
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
