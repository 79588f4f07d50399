"""Build configured providers by kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from steplog.providers.base import Provider
from steplog.providers.config import ProviderConfig
from steplog.providers.offline import OfflineProvider

if TYPE_CHECKING:  # the HTTP kinds' modules import httpx when a pipeline has one (import_http)
    import httpx


def build_provider(name: str, config: ProviderConfig, client: httpx.AsyncClient | None) -> Provider:
    if config.kind == "offline":
        return OfflineProvider(name, config)
    if client is None:
        raise ValueError(f"provider {name!r} of kind {config.kind} needs an HTTP client")
    if config.kind == "openai":
        from steplog.providers.openai import OpenAIProvider

        return OpenAIProvider(name, config, client)
    if config.kind == "ollama":
        from steplog.providers.ollama import OllamaProvider

        return OllamaProvider(name, config, client)
    if config.kind == "anthropic":
        from steplog.providers.anthropic import AnthropicProvider

        return AnthropicProvider(name, config, client)
    raise ValueError(f"provider {name!r}: unknown kind {config.kind!r}")
