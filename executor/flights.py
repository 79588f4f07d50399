"""Limits and single flight shared by every process on the store: admission is the append.

Before a call to a provider with an endpoint, one write transaction (SQLite: BEGIN IMMEDIATE;
PostgreSQL: the events table's EXCLUSIVE lock) reads the key's cache entry, the calls in flight
of the endpoint and of the cache key (`calls_in_flight`), and the endpoint's latest requests;
executor.admission.decide answers; an admitted call's llm.request is appended in that same
transaction, so two processes never both take the last place or both call for one key. A call
that must wait peeks with plain reads (no write lock) until the answer could change, then
tries the transaction again.

A call in flight counts only while its owner is alive, as the `alive` function passed in says
(default: same host, the pid and its start time; another host, an age cap).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import anyio
import orjson

from steplog.eventstore.events import NewEvent, Owner
from steplog.eventstore.record import Blob, EventStore
from steplog.executor.admission import (
    WINDOW_S,
    Admit,
    Decision,
    Flight,
    SharedLimits,
    Wait,
    decide,
)
from steplog.executor.joblog import JobLog
from steplog.executor.ownership import owner_alive
from steplog.projections.breaker import epoch, iso
from steplog.projections.cache import CacheEntry
from steplog.projections.flights import owner_text
from steplog.projections.store import (
    cache_entry,
    cache_entry_on,
    endpoint_owners,
    key_flights,
    recent_requests,
)

# A call whose owner's liveness cannot be checked (another host, or an llm.request without an
# owner) counts for this long after its llm.request. Leases will tell instead (see `Liveness`).
FOREIGN_FLIGHT_MAX_AGE_S = 600.0
# How long a step may wait for a place or another call's answer before it fails.
MAX_WAIT_S = 3600.0
# A verdict of `alive` on an owner is reused for this long (checking reads /proc each time).
LIVENESS_TTL_S = 1.0
# Between peeks while waiting (SQLite has no notifications; PostgreSQL's wake the waiters).
FIRST_PAUSE_S = 0.01
MAX_PAUSE_S = 0.2
NOTIFY_WAIT_S = 0.25

# (the llm.request's owner as recorded, or None; seconds since its llm.request) -> counts
Liveness = Callable[[dict[str, Any] | None, float], bool]


def default_alive(owner: dict[str, Any] | None, age_s: float) -> bool:
    """Same host: the owner's process (pid and start time) is alive; otherwise an age cap."""
    if owner is not None:
        alive = owner_alive(owner)
        if alive is not None:
            return alive
    return age_s < FOREIGN_FLIGHT_MAX_AGE_S


class Served(Exception):
    """The key's answer was committed by another call while this one waited: reuse it.

    `pending`: the step's events not committed yet, to go before its cache.hit."""

    def __init__(self, entry: CacheEntry, pending: list[NewEvent]) -> None:
        super().__init__(entry.cache_key)
        self.entry = entry
        self.pending = pending


class Wakeup:
    """PostgreSQL: one task LISTENs (in a thread) while any call waits, and wakes them all on
    each commit. Without notifications (SQLite) `wait` is a plain pause."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._changed = anyio.Event()
        self._wanted = anyio.Event()
        self._waiters = 0
        self.running = False

    async def run(self) -> None:
        seen = await anyio.to_thread.run_sync(self.store.last_seq)
        while True:
            await self._wanted.wait()
            seq = await anyio.to_thread.run_sync(self.store.wait_for_events, seen, NOTIFY_WAIT_S)
            if seq > seen:
                seen = seq
                self._changed.set()
                self._changed = anyio.Event()
            if self._waiters == 0:
                self._wanted = anyio.Event()

    async def wait(self, timeout: float) -> None:
        if not self.running:
            await anyio.sleep(timeout)
            return
        self._waiters += 1
        self._wanted.set()
        try:
            with anyio.move_on_after(timeout):
                await self._changed.wait()
        finally:
            self._waiters -= 1


class SharedCalls:
    """The admission transaction and the waits of one run's calls."""

    def __init__(
        self,
        log: JobLog,
        *,
        clock: Callable[[], float],
        alive: Liveness = default_alive,
        owner: Owner | None = None,
    ) -> None:
        self.log = log
        # this process as llm.request records it: its calls are alive without asking
        self.owner_text = owner_text(owner.model_dump()) if owner is not None else None
        # (owner, its call's ts) -> (checked at, alive)
        self._verdicts: dict[tuple[str, str], tuple[float, bool]] = {}
        self.clock = clock  # wall time: the llm.request ts it is compared with is wall time
        self.alive = alive
        self.wakeup = Wakeup(log.store)
        # this run's steps whose call has returned, its llm.response not committed yet (it is
        # committed with what the answer settles): their rows no longer hold a place here
        self.returned: set[str] = set()

    def _decision(
        self, conn: Any, step: str, endpoint: str, key: str, limits: SharedLimits
    ) -> Decision:
        store = self.log.store
        now = self.clock()
        answered = cache_entry_on(store, conn, key) is not None
        live: list[Flight] = []
        busy: int | None = None
        if not answered:
            alive = self._counts
            live = [
                Flight(r.job_id, r.step, r.endpoint, r.cache_key)
                for r in key_flights(store, conn, key)
                if alive(r.job_id, r.step, r.owner, r.ts, now)
            ]
            if limits.max_concurrency is not None:
                me = (self.log.job_id, step)
                busy = sum(
                    1
                    for job_id, other, owner, ts in endpoint_owners(store, conn, endpoint)
                    if (job_id, other) != me and alive(job_id, other, owner, ts, now)
                )
        recent: list[float] = []
        rpm = limits.requests_per_minute
        if rpm and not answered:
            # the newest request is enough: calls spaced 60/rpm apart are never more than rpm in
            # a minute (one index seek, however many requests the window holds)
            since = iso(now - max(WINDOW_S, WINDOW_S / rpm))
            recent = [epoch(ts) for ts in recent_requests(store, conn, endpoint, since, 1)]
        return decide(
            limits,
            job_id=self.log.job_id,
            step=step,
            endpoint=endpoint,
            cache_key=key,
            answered=answered,
            live=live,
            recent=recent,
            now=now,
            busy=busy,
        )

    def _counts(self, job_id: str, step: str, owner: str | None, ts: str, now: float) -> bool:
        """Whether a calls_in_flight row still holds its place: its owner is alive."""
        if job_id == self.log.job_id:  # this run's own (an earlier run's were cleared)
            return step not in self.returned
        if owner is not None and owner == self.owner_text:
            return True
        age = max(0.0, now - epoch(ts))
        if owner is None:  # nobody to ask: the age alone decides
            return self.alive(None, age)
        seen = (owner, ts)  # the age matters for an owner that cannot be asked
        checked = self._verdicts.get(seen)
        tick = time.monotonic()
        if checked is None or tick - checked[0] > LIVENESS_TTL_S:
            checked = (tick, self.alive(orjson.loads(owner), age))
            self._verdicts[seen] = checked
        return checked[1]

    def try_admit(
        self,
        step: str,
        endpoint: str,
        key: str,
        limits: SharedLimits,
        build: Callable[[], list[NewEvent]],
        blobs: Sequence[Blob],
    ) -> Decision:
        """Decide in one write transaction; when admitted, append build()'s events in it."""
        self.log.flush()
        with self.log.store.write_transaction() as conn:
            decision = self._decision(conn, step, endpoint, key, limits)
            if not isinstance(decision, Admit):
                return decision
            stored = self.log.append_txn(conn, build(), blobs)
        self.log.committed(stored)
        return decision

    def peek(self, step: str, endpoint: str, key: str, limits: SharedLimits) -> Decision:
        """The decision as plain reads see it now (no lock; try_admit decides for real)."""
        return self.log.store.read(lambda conn: self._decision(conn, step, endpoint, key, limits))

    def entry(self, key: str) -> CacheEntry | None:
        return cache_entry(self.log.store, key)

    async def until_changed(
        self, step: str, endpoint: str, key: str, limits: SharedLimits, first: Wait
    ) -> Decision:
        """Wait while the decision stays `first`'s kind of wait; return the first other one
        peeked (Serve or Admit: then try the transaction), or the Wait after MAX_WAIT_S."""
        deadline = anyio.current_time() + MAX_WAIT_S
        pause = FIRST_PAUSE_S
        decision: Decision = first
        rounds = int(MAX_WAIT_S / FIRST_PAUSE_S) + 1
        for _ in range(rounds):
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            assert isinstance(decision, Wait)
            if decision.wait_s is not None:  # a rate limit: its wait is known
                await anyio.sleep(min(decision.wait_s, left))
            else:
                await self.wakeup.wait(min(NOTIFY_WAIT_S if self.wakeup.running else pause, left))
                pause = min(pause * 2, MAX_PAUSE_S)
            decision = self.peek(step, endpoint, key, limits)
            if not isinstance(decision, Wait):
                return decision
        return decision
