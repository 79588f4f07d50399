"""Per-job budgets (`[budget]`) and per-model prices (`[prices."MODEL"]`): pure arithmetic.

A call's estimate, checked before its llm.request:
    tokens = prompt_tokens (words of system + prompt, as recorded on llm.request)
             + the call's `max_tokens` option (0 when unset)
    cost   = prompt_tokens * input_per_mtok / 1e6 + max_tokens * output_per_mtok / 1e6
The call is refused when spent + in flight + estimate would pass a limit (strictly greater).
Spent is the job's llm.response totals (tokens_in + tokens_out, and `cost`), across runs.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def still_blocked(budget: Budget | None, stopped: dict[str, Any]) -> bool:
    """After a budget.exceeded (`stopped` is its data): is the budget now still as low?"""
    if budget is None:
        return False
    limit = stopped.get("limit")
    now = budget.max_tokens if limit == "max_tokens" else budget.max_cost
    then = stopped.get(limit) if isinstance(limit, str) else None
    return now is not None and then is not None and now <= then
