"""`steplog providers check`: reach each provider a pipeline configures, the cheapest way.

ollama: GET /api/tags (and is the model pulled?); openai: GET {base_url}/models, anthropic:
GET /v1/models, each with a 1-token request when that route is missing; offline is always
reachable.
A failure is that provider's row (never a crash): it names the provider, the URL without
credentials, the HTTP status and the server's message; a key is never shown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

from steplog.executor.pipeline import Pipeline, load_pipeline
from steplog.providers.base import ProviderError
from steplog.providers.client import client_url, http_client
from steplog.providers.config import ProviderConfig
from steplog.providers.http import HTTPProvider, public_url
from steplog.providers.registry import build_provider


@dataclass(frozen=True)
class CheckResult:
    provider: str
    kind: str
    url: str | None
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def check_one(name: str, config: ProviderConfig) -> CheckResult:
    url = public_url(config.base_url) if config.base_url else None
    if config.kind == "offline":
        return CheckResult(name, config.kind, url, True, "offline: answers locally, no network")
    try:
        async with http_client(1, url=client_url(config)) as client:
            provider = build_provider(name, config, client)
            assert isinstance(provider, HTTPProvider)
            detail = await provider.check()
    except ProviderError as exc:
        return CheckResult(name, config.kind, url, False, str(exc))
    except ValueError as exc:  # a base_url that is no http(s) URL; the message hides credentials
        return CheckResult(name, config.kind, url, False, str(exc))
    return CheckResult(name, config.kind, url, True, detail)


async def check_pipeline(pipeline: Pipeline) -> list[CheckResult]:
    """Every configured provider, checked concurrently; results in the file's order."""
    configs = pipeline.spec.providers
    results: dict[str, CheckResult] = {}

    async def one(name: str, config: ProviderConfig) -> None:
        results[name] = await check_one(name, config)

    async with anyio.create_task_group() as group:
        for name, config in configs.items():
            group.start_soon(one, name, config)
    return [results[name] for name in configs]


def check_providers(path: Path) -> list[CheckResult]:
    """Load PIPELINE (PipelineError if it is bad) and check its providers."""
    return anyio.run(check_pipeline, load_pipeline(path))
