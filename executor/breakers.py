"""The circuit breakers of a run's endpoints, kept in the log that processes share.

A breaker's state is a projection of the log (the `breakers` table); each decision that
changes it (a half-open probe claimed, an outcome opening or closing it) is read, decided and
appended in one IMMEDIATE write transaction, so two processes never both probe.
"""

from __future__ import annotations

from typing import Callable, Sequence

import anyio

from steplog.eventstore.events import (
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    EventData,
    NewEvent,
)
from steplog.eventstore.record import Blob
from steplog.executor.joblog import JobLog
from steplog.projections.breaker import iso
from steplog.projections.store import breaker_of
from steplog.providers import breaker
from steplog.providers.breaker import (
    BreakerPolicy,
    BreakerState,
    CircuitOpen,
    Transition,
    endpoint_of,
)
from steplog.providers.config import ProviderConfig


def breaker_policy(config: ProviderConfig) -> BreakerPolicy:
    return BreakerPolicy(
        failures=config.breaker_failures,
        cooldown_s=config.breaker_cooldown_s,
        probe_timeout_s=config.timeout_s + config.breaker_cooldown_s,
    )


def breaker_endpoint(config: ProviderConfig) -> str | None:
    """The breaker a provider's calls count against; none for offline (nothing to protect)."""
    return None if config.kind == "offline" else endpoint_of(config.kind, config.base_url)


class Breakers:
    """The circuit breakers of a run's endpoints, as the log (shared by processes) has them."""

    def __init__(self, log: JobLog, *, ignore_breaker: bool, clock: Callable[[], float]) -> None:
        self.log = log
        self.ignore_breaker = ignore_breaker
        self.clock = clock  # wall time: breakers are shared with other processes

    def is_closed(self, endpoint: str) -> bool:
        row = breaker_of(self.log.store, endpoint)
        return row is None or row.status == "closed"

    async def admit(
        self, step: str, provider: str, endpoint: str | None, config: ProviderConfig
    ) -> None:
        """Consult the endpoint's breaker (as the log has it now); raise CircuitOpen if refused.

        A closed breaker costs one primary-key read. Otherwise the decision and, for the one
        half-open probe, its claim are made in one write transaction, so two processes never
        both probe. A call that finds another call probing waits for the probe's outcome
        (polling the log) instead of failing: closed lets it through, open fails it.
        """
        if endpoint is None or self.ignore_breaker:
            return
        policy = breaker_policy(config)
        pause = 0.02
        while True:
            if self.is_closed(endpoint):
                return
            decided: list[tuple[BreakerState, breaker.Admission]] = []

            def decide(state: BreakerState) -> list[NewEvent]:
                admission = breaker.admit(state, policy, self.clock())
                decided.append((state, admission))  # noqa: B023 - called at once, in this iteration
                if admission.transition is None:
                    return []
                transition = admission.transition
                return [self._transition_event(step, provider, endpoint, transition, policy)]

            self._txn(endpoint, decide)
            state, admission = decided[0]
            if admission.allowed:
                return
            if state.status != "half_open":
                raise CircuitOpen(
                    provider=provider, endpoint=endpoint, retry_after=admission.retry_after
                )
            await anyio.sleep(min(pause, admission.retry_after))
            pause = min(pause * 2, 0.5)

    async def commit_outcome(
        self,
        step: str,
        provider: str,
        endpoint: str | None,
        config: ProviderConfig,
        events: list[NewEvent],
        success: bool,
        counted: bool,
        retry_in: float | None = None,
        blobs: Sequence[Blob] = (),
    ) -> str | None:
        """Commit an attempt's outcome events with the breaker transition they cause, if any.

        `events` is the llm.response, then the step.retrying when `retry_in` (its delay) is
        set. A retry the breaker, as it stands after this outcome, would refuse when the delay
        is over is dropped (no step.retrying, no sleep): the reason is returned, to be added to
        the step's error. None: the retry, if any, goes ahead.
        """
        if endpoint is None or (success and self.is_closed(endpoint)):
            # a success only matters to a breaker that is not closed
            if events:
                await self.log.commit(events, blobs)
            return None
        policy = breaker_policy(config)
        refused: list[str] = []

        def decide(state: BreakerState) -> list[NewEvent]:
            now = self.clock()
            after, transition = breaker.on_outcome(state, policy, success, counted, now)
            kept = events
            if retry_in is not None and not self.ignore_breaker and after.status == "open":
                if not breaker.admit(after, policy, now + retry_in).allowed:
                    kept = events[:1]
                    refused.append(
                        f"; not retried: the circuit for {endpoint} is open until {iso(after.until)}"
                    )
            if transition is None:
                return kept
            # the transition follows the llm.response that caused it, before step.retrying
            moved = self._transition_event(step, provider, endpoint, transition, policy)
            return [*kept[:1], moved, *kept[1:]]

        self._txn(endpoint, decide, blobs)
        return refused[0] if refused else None

    def _transition_event(
        self,
        step: str,
        provider: str,
        endpoint: str,
        transition: Transition,
        policy: BreakerPolicy,
    ) -> NewEvent:
        data: EventData
        if transition.to == "open":
            data = CircuitOpened(
                provider=provider,
                failures=transition.failures,
                retry_at=iso(transition.until),
                endpoint=endpoint,
                cooldown_s=policy.cooldown_s,
            )
        elif transition.to == "half_open":
            data = CircuitHalfOpen(
                provider=provider,
                endpoint=endpoint,
                failures=transition.failures,
                probe_until=iso(transition.until),
            )
        else:
            data = CircuitClosed(provider=provider, endpoint=endpoint)
        return NewEvent.of(data, step)

    def _txn(
        self,
        endpoint: str,
        decide: Callable[[BreakerState], list[NewEvent]],
        blobs: Sequence[Blob] = (),
    ) -> None:
        """Read the breaker, decide, append: one IMMEDIATE transaction (other processes wait)."""
        with self.log.store.write_transaction() as conn:
            row = breaker_of(self.log.store, endpoint, conn)
            events = decide(row.state if row else BreakerState())
            if not events:
                return
            stored = self.log.append_txn(conn, events, blobs)
        self.log.committed(stored)
