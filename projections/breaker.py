"""Circuit breakers as a pure fold over the whole log (every job, every process).

Keyed by endpoint (provider kind + public base URL, recorded on llm.request/llm.response and on
the provider.* events): llm.response outcomes move the failure count (providers.breaker.count),
provider.circuit_opened / _half_open / _closed set the state (providers.breaker.apply). Events
without an endpoint (older logs) are ignored. The `breakers` table is this fold kept in the
append transaction (projections.tables), so reading a breaker is one primary-key lookup however
long the log is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Iterable, NamedTuple

import orjson

from steplog.eventstore.record import StoredEvent
from steplog.providers import breaker
from steplog.providers.breaker import BreakerState, Transition

BREAKER_EVENT_TYPES = (
    "llm.response",
    "provider.circuit_opened",
    "provider.circuit_half_open",
    "provider.circuit_closed",
)


class BreakerRow(NamedTuple):
    endpoint: str
    status: str
    failures: int
    until: float
    provider: str  # the provider name that last touched it (pipelines name providers as they like)
    seq: int

    @property
    def state(self) -> BreakerState:
        return BreakerState(status=self.status, failures=self.failures, until=self.until)  # type: ignore[arg-type]


Breakers = dict[str, BreakerRow]


def epoch(ts: str) -> float:
    """Epoch seconds of an ISO 8601 time; an unreadable one counts as long past."""
    try:
        when = datetime.fromisoformat(ts)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def apply(breakers: Breakers, ev: StoredEvent) -> Breakers:
    if ev.type not in BREAKER_EVENT_TYPES:
        return breakers
    d = orjson.loads(ev.data_json)
    endpoint = d.get("endpoint")
    if not endpoint:
        return breakers
    row = breakers.get(endpoint)
    state = row.state if row else BreakerState()
    if ev.type == "llm.response":
        state = breaker.count(state, bool(d["success"]), d.get("retryable") is True)
    elif ev.type == "provider.circuit_opened":
        state = breaker.apply(state, Transition("open", d["failures"], epoch(d["retry_at"])))
    elif ev.type == "provider.circuit_half_open":
        state = breaker.apply(
            state, Transition("half_open", d["failures"], epoch(d["probe_until"]))
        )
    else:
        state = breaker.apply(state, Transition("closed", 0, 0.0))
    breakers[endpoint] = BreakerRow(
        endpoint, state.status, state.failures, state.until, d["provider"], ev.seq
    )
    return breakers


def project(events: Iterable[StoredEvent], breakers: Breakers | None = None) -> Breakers:
    breakers = breakers if breakers is not None else {}
    for ev in events:
        apply(breakers, ev)
    return breakers
