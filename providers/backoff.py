"""When to retry a failed provider call, and how long to wait first: pure, no sleeping here.

Exponential backoff with full jitter: the n-th retry waits a uniform time in
[0, min(cap, base * 2^(n-1))]; a server's Retry-After is a floor on that wait, capped at
RETRY_AFTER_CAP_S (the one cap: providers.http passes the header's value on as sent), so a
server asking for an hour costs a retry a minute's wait, not an hour's. The runner asks
`should_retry`, then sleeps `delay(...)` seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from steplog.providers.base import RETRYABLE_STATUSES, ProviderError

__all__ = ["RETRYABLE_STATUSES", "RETRY_AFTER_CAP_S", "RetryPolicy"]

RETRY_AFTER_CAP_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int = 3  # the first call included
    retry_after_cap_s: float = RETRY_AFTER_CAP_S

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0 or self.retry_after_cap_s < 0:
            raise ValueError("backoff times must not be negative")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def should_retry(self, error: ProviderError, attempt: int) -> bool:
        """Retry what the error tree marks retryable (connect errors, timeouts, 408/409/429/5xx/529)
        while attempts remain; never another 4xx, a bad answer or an open circuit."""
        return error.retryable and attempt < self.max_attempts

    def ceiling(self, attempt: int) -> float:
        """The jitter range's upper end after failed attempt `attempt` (1-based)."""
        exponent = min(max(attempt, 1) - 1, 64)  # 2**64 * base is past any cap already
        return min(self.cap_s, self.base_s * 2.0**exponent)

    def floor(self, retry_after: float | None) -> float:
        if retry_after is None or retry_after != retry_after or retry_after <= 0:
            return 0.0
        return min(retry_after, self.retry_after_cap_s)

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt `attempt`, in [floor, max(floor, ceiling)]."""
        low, high = self.floor(retry_after), self.ceiling(attempt)
        delay = max(rng.uniform(0.0, high), low)
        # rounded for the log, then clamped so rounding never leaves the bounds
        return min(max(round(delay, 3), low), max(low, high))
