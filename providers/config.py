"""The `[providers.NAME]` table of a pipeline file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from steplog.eventstore.events import finite_json

ProviderKind = Literal["offline", "openai", "ollama", "anthropic"]
DEFAULT_MAX_RESPONSE_BYTES = 256 * 2**20
# SQLite's default SQLITE_MAX_LENGTH: no blob (an answer is stored as one) can be longer
MAX_RESPONSE_BYTES_CEILING = 1_000_000_000
# keys that mean something to one kind only; set on another kind they are an error
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "keep_alive": ("ollama",),
    "organization": ("openai",),
    "project": ("openai",),
    "anthropic_version": ("anthropic",),
    "json_mode": ("openai", "ollama"),
}


# `${NAME}` in base_url: read from the environment when calling, so the stored pipeline file
# never holds what it names (a proxy password, a key some gateways take in the query).
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_PARAMETER = re.compile(r"key|token|secret|passw|auth|sig|credential", re.IGNORECASE)


def url_env_names(url: str | None) -> list[str]:
    return ENV_REFERENCE.findall(url or "")


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a provider's base_url, or None. The port must be written out (the
    breaker names the endpoint by it before any `${NAME}` is read). Never repeats any part of
    the URL (the parser's own words may quote one, e.g. a password read from the environment)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    if ENV_REFERENCE.search(parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]):
        return "takes ${NAME} in its user or password, host, path or query, not in its port"
    try:
        parts.port  # noqa: B018 - reading it is the check (ValueError)
    except ValueError:
        return "has a bad port"
    return None


def literal_url_credential(url: str | None) -> str | None:
    """What in `url` is a credential written out rather than read from `${NAME}`, or None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.password and not ENV_REFERENCE.fullmatch(parts.password):
        return "a password"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and _SECRET_PARAMETER.search(name) and not ENV_REFERENCE.fullmatch(value):
            return f"query parameter {name!r}"
    return None


# A header value steplog sends as written: printable ASCII, no spaces (as HTTP and the servers want).
HEADER_VALUE = r"^[\x21-\x7e]+$"


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    kind: ProviderKind
    model: str = "offline-1"
    base_url: str | None = None
    api_key_env: str | None = Field(
        default=None, description="NAME of the environment variable holding the key"
    )
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=20)
    options: dict[str, Any] = Field(default_factory=dict)
    _finite_options = field_validator("options")(finite_json)
    stream: bool = Field(default=False, description="ask for the answer as a stream")
    keep_alive: str | int | None = Field(
        default=None, description="ollama: how long the model stays loaded (e.g. '10m', -1)"
    )
    organization: str | None = Field(
        default=None, pattern=HEADER_VALUE, description="openai: OpenAI-Organization"
    )
    project: str | None = Field(
        default=None, pattern=HEADER_VALUE, description="openai: OpenAI-Project"
    )
    anthropic_version: str | None = Field(
        default=None,
        pattern=HEADER_VALUE,
        description="anthropic: the anthropic-version header (default 2023-06-01)",
    )
    json_mode: bool | None = Field(
        default=None, description="openai/ollama: ask for JSON when a step's output is json"
    )

    # reliability: backoff between retries, circuit breaker, in-flight and per-minute limits
    backoff_base_s: float = Field(default=0.5, ge=0, le=3600)
    backoff_cap_s: float = Field(default=30.0, ge=0, le=3600)
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=86400)
    max_concurrency: int | None = Field(default=None, ge=1, le=1000)
    requests_per_minute: float | None = Field(default=None, gt=0)
    # a server that sends more than this (body or stream, decompressed) fails the step, unretried
    max_response_bytes: int = Field(
        default=DEFAULT_MAX_RESPONSE_BYTES, ge=1, le=MAX_RESPONSE_BYTES_CEILING
    )

    @model_validator(mode="after")
    def _kind_keys(self) -> ProviderConfig:
        for key, kinds in KIND_KEYS.items():
            if getattr(self, key) is not None and self.kind not in kinds:
                raise PydanticCustomError(
                    "kind_key",
                    "{key} applies to kind {kinds} only, not {kind}",
                    {"key": key, "kinds": " or ".join(kinds), "kind": self.kind},
                )
        return self

    def resolved_base_url(self, environ: Mapping[str, str]) -> str | None:
        """base_url with each `${NAME}` replaced from `environ` (ValueError naming one unset)."""
        if self.base_url is None:
            return None

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if not environ.get(name):
                raise ValueError(f"base_url reads {name}, which is not set")
            return environ[name]

        return ENV_REFERENCE.sub(value, self.base_url)

    def cache_identity(self, model: str, options: dict[str, Any]) -> dict[str, Any]:
        """What of this config decides the answer: never the key, the URL or the timeouts."""
        return {"kind": self.kind, "model": model, "options": options}
