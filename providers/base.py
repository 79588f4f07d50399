"""The one narrow interface every LLM provider implements; its error tree is in
providers.errors (re-exported here).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from steplog.providers.errors import (
    RETRYABLE_STATUSES,
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    ProviderTooLarge,
    ProviderTruncated,
    ProviderUnavailable,
)

OutputKind = Literal["text", "json", "files"]


class LLMRequest(BaseModel):
    """One rendered call: what a provider is asked, independent of the wire protocol."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: str
    system: str | None = None
    prompt: str
    model: str
    options: dict[str, Any] = Field(default_factory=dict)
    output: OutputKind = "text"
    # what an answer cut off at the token limit means for the step (HTTP providers check it)
    on_truncation: Literal["accept", "error"] = "accept"


class LLMResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None


class Provider(Protocol):
    """A configured provider. `name` is the pipeline's `[providers.NAME]`."""

    name: str
    kind: str

    async def complete(self, request: LLMRequest) -> LLMResult: ...


__all__ = [
    "RETRYABLE_STATUSES",
    "LLMRequest",
    "LLMResult",
    "OutputKind",
    "Provider",
    "ProviderBadResponse",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderStreamError",
    "ProviderTooLarge",
    "ProviderTruncated",
    "ProviderUnavailable",
]
