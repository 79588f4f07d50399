"""Requests per minute for one provider: a pure spacing rule and the anyio gate around it.

Each call reserves the next free start time: calls start at least 60/rpm seconds apart, in the
order they asked, and a call never starts before it asked. The rule is per process (each
process running steps against the same provider has its own gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import anyio


@dataclass(frozen=True)
class RateState:
    next_free: float = float("-inf")  # the earliest time the next call may start


def reserve(state: RateState, interval_s: float, now: float) -> tuple[RateState, float]:
    """Reserve a start time for a call asked for at `now`: (new state, seconds to wait)."""
    start = max(state.next_free, now)
    return RateState(next_free=start + interval_s), start - now


class RateGate:
    """The async wrapper: reserve synchronously (so concurrent tasks get distinct slots), sleep."""

    def __init__(
        self, requests_per_minute: float, clock: Callable[[], float] | None = None
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        self.interval_s = 60.0 / requests_per_minute
        self.state = RateState()
        self.clock = clock or anyio.current_time

    def reserve(self) -> float:
        self.state, wait = reserve(self.state, self.interval_s, self.clock())
        return wait
