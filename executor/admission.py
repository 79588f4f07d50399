"""Admission of one provider call under limits shared by every process on the store: pure.

`decide` takes what the store holds at the moment of the decision (inside the write
transaction that appends the llm.request if the call is admitted) and the time, and answers
one of: serve the answer another job has committed for the cache key; wait for another live
call of the same key (single flight); wait for a place under the endpoint's max_concurrency or
requests_per_minute; or admit. No I/O here: which calls in flight still count (their owner is
alive) is decided by the caller and passed in as `live`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, Union

WINDOW_S = 60.0  # requests_per_minute counts the requests of the last minute


@dataclass(frozen=True)
class SharedLimits:
    """An endpoint's limits as one pipeline's provider sets them (None: no shared limit)."""

    max_concurrency: int | None = None
    requests_per_minute: float | None = None


@dataclass(frozen=True)
class Flight:
    """A call in flight (a calls_in_flight row) whose owner is alive."""

    job_id: str
    step: str
    endpoint: str
    cache_key: str


@dataclass(frozen=True)
class Serve:
    """The key's answer is committed: reuse it (a cache hit)."""


@dataclass(frozen=True)
class Admit:
    """Make the call: its llm.request goes in the same transaction."""


@dataclass(frozen=True)
class Wait:
    reason: Literal["in_flight", "concurrency", "rate_limit"]
    limit: float
    wait_s: float | None = None  # known for a rate limit; None: until the store changes
    following: Flight | None = None  # in_flight: the call whose answer is awaited


Decision = Union[Serve, Admit, Wait]


def decide(
    limits: SharedLimits,
    *,
    job_id: str,
    step: str,
    endpoint: str,
    cache_key: str,
    answered: bool,
    live: Sequence[Flight],
    recent: Sequence[float],
    now: float,
    busy: int | None = None,
) -> Decision:
    """Serve, wait or admit one call of (job_id, step) to `endpoint` for `cache_key`.

    `answered`: the cache holds an answer for the key. `live`: the calls in flight whose owner
    is alive, of the endpoint and of the key (any endpoint). `recent`: start times (epoch s)
    of the endpoint's latest requests, newest first (at least requests_per_minute of them when
    there are that many in the last minute). `busy`: how many live calls other than this one
    the endpoint has, when the caller counted them; then `live` need only hold the key's.
    """
    if answered:
        return Serve()
    others = [f for f in live if (f.job_id, f.step) != (job_id, step)]
    same_key = [f for f in others if f.cache_key == cache_key]
    if same_key:
        return Wait("in_flight", 1, following=min(same_key, key=lambda f: (f.job_id, f.step)))
    cap = limits.max_concurrency
    if cap is not None:
        if busy is None:
            busy = sum(1 for f in others if f.endpoint == endpoint)
        if busy >= cap:
            return Wait("concurrency", cap)
    rpm = limits.requests_per_minute
    if rpm:
        wait = rate_wait(rpm, recent, now)
        if wait > 0:
            return Wait("rate_limit", rpm, wait_s=wait)
    return Admit()


def rate_wait(rpm: float, recent: Sequence[float], now: float) -> float:
    """Seconds until a request may start: calls start at least 60/rpm s apart, and no more than
    rpm start in any minute. 0: now."""
    if not recent:
        return 0.0
    spacing = recent[0] + WINDOW_S / rpm - now
    whole = int(rpm)
    in_window = [t for t in recent if t > now - WINDOW_S]
    full = recent[whole - 1] + WINDOW_S - now if whole >= 1 and len(in_window) >= whole else 0.0
    return max(0.0, spacing, full)
