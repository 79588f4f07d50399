"""The circuit breaker of one provider endpoint, as a pure state machine over outcomes and time.

    closed ──N consecutive counted failures──▶ open ──cool-down over──▶ half_open (one probe)
      ▲                                          ▲                          │
      └──────────── probe (any call) succeeds ───┼──────────────────────────┤
                                                 └──── probe fails ─────────┘

Nothing here sleeps, reads a clock or touches the log: callers pass `now` (epoch seconds) and
the state, and get back a decision and, when the state changes, the Transition to record as an
event (provider.circuit_opened / _half_open / _closed). projections.breaker folds those events
back into the same BreakerState, so the state lives in the log, not in a process.

A "counted" failure is one the retry policy treats as the provider's health (connect errors,
timeouts, 408/409/429/5xx/529); a 400 or an unusable answer neither counts nor resets while
closed, but while open or half-open it shows the endpoint answers, so it closes the circuit.
While half-open, the probe's claim lapses after `probe_timeout_s` (its process may have died),
then the next caller becomes the probe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

from steplog.providers.errors import ProviderError

BreakerStatus = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5  # consecutive counted failures that open the circuit
    cooldown_s: float = 30.0  # open -> half_open after this
    probe_timeout_s: float = 90.0  # a half-open probe with no outcome frees its slot after this


@dataclass(frozen=True)
class BreakerState:
    status: BreakerStatus = "closed"
    failures: int = 0  # consecutive counted failures
    until: float = 0.0  # open: when a probe may go; half_open: when the probe's claim lapses


class Transition(NamedTuple):
    to: BreakerStatus
    failures: int
    until: float  # see BreakerState.until (0 for closed)


class Admission(NamedTuple):
    allowed: bool
    transition: Transition | None  # set when this call is the half-open probe
    retry_after: float  # refused: seconds until a call may be allowed again


def admit(state: BreakerState, policy: BreakerPolicy, now: float) -> Admission:
    """May a call go now? Open: no until the cool-down ends, then exactly one probe."""
    if state.status == "closed":
        return Admission(True, None, 0.0)
    if now < state.until:
        return Admission(False, None, state.until - now)
    return Admission(
        True, Transition("half_open", state.failures, now + policy.probe_timeout_s), 0.0
    )


def count(state: BreakerState, success: bool, counted: bool) -> BreakerState:
    """The outcome's effect on the failure count alone (what an llm.response contributes)."""
    if success:
        return replace(state, failures=0)
    if counted:
        return replace(state, failures=state.failures + 1)
    return state


def apply(state: BreakerState, transition: Transition) -> BreakerState:
    return BreakerState(status=transition.to, failures=transition.failures, until=transition.until)


def on_outcome(
    state: BreakerState, policy: BreakerPolicy, success: bool, counted: bool, now: float
) -> tuple[BreakerState, Transition | None]:
    """State after one call's outcome (`state` is before it) and the transition, if any."""
    after = count(state, success, counted)
    transition: Transition | None = None
    if state.status != "closed" and (success or not counted):
        # the endpoint answered (even a 400 or an unusable body is an answer): close
        transition = Transition("closed", 0, 0.0)
    elif not success and counted:
        if state.status == "half_open" or (
            state.status == "closed" and after.failures >= policy.failures
        ):
            transition = Transition("open", after.failures, now + policy.cooldown_s)
    return (apply(after, transition) if transition else after), transition


def endpoint_of(kind: str, base_url: str | None) -> str:
    """The breaker's identity: provider kind + public base URL (no userinfo, query, fragment).

    Every pipeline and process that talks to the same server shares it, whatever it names the
    provider; credentials in the URL never reach it.
    """
    if not base_url:
        return kind
    from steplog.providers.http import public_url  # httpx: only where a URL is involved

    return f"{kind} {public_url(base_url).rstrip('/')}"


class CircuitOpen(ProviderError):
    """The provider's circuit is open: the call was not made. Not retried within the step."""

    error_class = "circuit_open"

    def __init__(self, *, provider: str, endpoint: str, retry_after: float) -> None:
        super().__init__(
            f"circuit open for {endpoint} after repeated failures; no call made "
            f"(retry in {retry_after:.1f}s)",
            provider=provider,
            retryable=False,
            retry_after=retry_after,
        )
        self.endpoint = endpoint
