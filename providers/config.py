"""The `[providers.NAME]` table of a pipeline file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ProviderKind = Literal["offline", "openai"]


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ProviderKind
    model: str = "offline-1"
    base_url: str | None = None
    api_key_env: str | None = Field(
        default=None, description="NAME of the environment variable holding the key"
    )
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=20)
    options: dict[str, Any] = Field(default_factory=dict)
    # reliability: backoff between retries, circuit breaker, in-flight and per-minute limits
    backoff_base_s: float = Field(default=0.5, ge=0, le=3600)
    backoff_cap_s: float = Field(default=30.0, ge=0, le=3600)
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=86400)
    max_concurrency: int | None = Field(default=None, ge=1, le=1000)
    requests_per_minute: float | None = Field(default=None, gt=0)

    def cache_identity(self, model: str, options: dict[str, Any]) -> dict[str, Any]:
        """What of this config decides the answer: never the key, the URL or the timeouts."""
        return {"kind": self.kind, "model": model, "options": options}
