"""Per-job budgets (`[budget]`) and per-model prices (`[prices."MODEL"]`): pure arithmetic.

A call's estimate, checked before its llm.request:
    tokens = prompt_tokens (words of system + prompt, as recorded on llm.request)
             + the call's `max_tokens` option (0 when unset)
    cost   = prompt_tokens * input_per_mtok / 1e6 + max_tokens * output_per_mtok / 1e6

Two figures are kept apart (Ledger): spent, the job's llm.response totals (tokens_in +
tokens_out, and `cost`) across runs, and reserved, the estimates of its calls in flight. A call
goes ahead when spent + reserved + its estimate stays within every limit; it waits while only
the reservations stand in the way (they become spend or are released when their calls end);
it is refused when spent + its estimate alone would pass a limit (strictly greater).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Limit = Literal["max_tokens", "max_cost"]


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    input_per_mtok: float = Field(ge=0, description="USD per million input tokens")
    output_per_mtok: float = Field(ge=0, description="USD per million output tokens")


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_tokens: int | None = Field(default=None, ge=0)
    max_cost: float | None = Field(default=None, ge=0, description="USD")


def cost_of(price: Price | None, tokens_in: int, tokens_out: int) -> float | None:
    if price is None:
        return None
    return round(
        (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1_000_000, 9
    )


@dataclass(frozen=True)
class Spend:
    tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.tokens + other.tokens, round(self.cost + other.cost, 9))

    def __sub__(self, other: Spend) -> Spend:
        return Spend(self.tokens - other.tokens, round(self.cost - other.cost, 9))


def estimate(prompt_tokens: int, options: dict[str, Any], price: Price | None) -> Spend:
    out = options.get("max_tokens")
    max_out = out if isinstance(out, int) and not isinstance(out, bool) and out > 0 else 0
    return Spend(prompt_tokens + max_out, cost_of(price, prompt_tokens, max_out) or 0.0)


def exceeded(budget: Budget | None, spent: Spend, call: Spend) -> Limit | None:
    """Which limit `spent + call` would pass, if any."""
    if budget is None:
        return None
    if budget.max_tokens is not None and spent.tokens + call.tokens > budget.max_tokens:
        return "max_tokens"
    if budget.max_cost is not None and spent.cost + call.cost > budget.max_cost + 1e-12:
        return "max_cost"
    return None


def blocks_resume(budget: Budget | None, spent: Spend, stopped: dict[str, Any]) -> Limit | None:
    """After a budget.exceeded (`stopped` is its data): which limit the job's real spend still
    leaves no room under for the call that was refused, if any.

    Only spend counts: the reservations of the stopped run's calls ended with it. The refused
    call's estimate is taken from the event (it is in events of every schema).
    """
    estimate = Spend(int(stopped.get("estimate_tokens") or 0), stopped.get("estimate_cost") or 0.0)
    return exceeded(budget, spent, estimate)


Verdict = Literal["go", "wait", "refuse"]


@dataclass
class Reservation:
    """One call's estimate, held against the budget from its check until the call ends."""

    amount: Spend
    held: bool = True


@dataclass
class Ledger:
    """A job's spend and the reservations of its calls in flight, as two figures."""

    limits: Budget | None
    spent: Spend = field(default_factory=Spend)
    reserved: Spend = field(default_factory=Spend)
    in_flight: int = 0  # calls holding a reservation

    def verdict(self, estimate: Spend) -> tuple[Verdict, Limit | None]:
        """May a call of this estimate start now, and if not, which limit is in the way?"""
        over = exceeded(self.limits, self.spent, estimate)
        if over is not None:
            return "refuse", over  # spend only grows: no call ending makes room
        over = exceeded(self.limits, self.spent + self.reserved, estimate)
        if over is not None and self.in_flight:
            return "wait", over
        return "go", None

    def reserve(self, estimate: Spend) -> Reservation:
        """Hold the estimate until `release`; without a budget nothing is held."""
        amount = estimate if self.limits is not None else Spend()
        self.reserved = self.reserved + amount
        self.in_flight += 1
        return Reservation(amount)

    def release(self, reservation: Reservation) -> None:
        """The call answered, failed or was cancelled; releasing twice changes nothing."""
        if not reservation.held:
            return
        reservation.held = False
        self.in_flight -= 1
        # with nothing in flight nothing is reserved, exactly (no float residue to wait on)
        self.reserved = self.reserved - reservation.amount if self.in_flight else Spend()

    def spend(self, amount: Spend) -> None:
        """What an llm.response records: tokens_in + tokens_out, and its cost."""
        self.spent = self.spent + amount


def limit_value(budget: Budget, limit: Limit) -> float:
    value = budget.max_tokens if limit == "max_tokens" else budget.max_cost
    return float(value or 0)


def refusal_text(budget: Budget, limit: Limit, ledger: Ledger, estimate: Spend) -> str:
    """The step's error when a call is refused: spent, reserved and the estimate apart."""
    spent, reserved, calls = ledger.spent, ledger.reserved, ledger.in_flight
    in_flight = f"by {calls} call{'s' if calls != 1 else ''} in flight"
    if limit == "max_tokens":
        held = f" + {reserved.tokens} reserved {in_flight}" if reserved.tokens else ""
        return (
            f"budget exceeded: {spent.tokens} tokens spent{held} + {estimate.tokens} estimated "
            f"for this call > max_tokens {budget.max_tokens}; no call made"
        )
    held = f" + ${reserved.cost:.6f} reserved {in_flight}" if reserved.cost else ""
    return (
        f"budget exceeded: ${spent.cost:.6f} spent{held} + ${estimate.cost:.6f} estimated for "
        f"this call > max_cost ${budget.max_cost}; no call made"
    )
