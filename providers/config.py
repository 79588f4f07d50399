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

    def cache_identity(self, model: str, options: dict[str, Any]) -> dict[str, Any]:
        """What of this config decides the answer: never the key, the URL or the timeouts."""
        return {"kind": self.kind, "model": model, "options": options}
