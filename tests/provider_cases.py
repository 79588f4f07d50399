"""The three HTTP wire protocols as test parameters, and a bounded one-call helper."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from steplog.providers.base import LLMRequest, LLMResult
from steplog.providers.client import http_client
from steplog.providers.config import ProviderConfig
from steplog.providers.registry import build_provider
from tests.fake_llm_server import FakeLLMServer


@dataclass(frozen=True)
class Proto:
    kind: str
    chat_path: str  # where the fake server sees the completion request
    auth_header: str
    stop: str  # the finish reason of a complete answer
    limit: str  # the finish reason of an answer cut off at the token limit
    options: dict[str, Any] = field(default_factory=dict)  # what every request needs
    key_prefix: str = "Bearer "

    def base_url(self, server: FakeLLMServer | str) -> str:
        if isinstance(server, str):
            return server
        return server.url if self.kind == "openai" else server.base

    def auth(self, key: str) -> str:
        return f"{self.key_prefix}{key}"

    def config(self, server: FakeLLMServer | str, **keys: Any) -> ProviderConfig:
        keys.setdefault("timeout_s", 2)
        keys.setdefault("model", "m")
        keys["options"] = {**self.options, **keys.get("options", {})}
        return ProviderConfig(kind=self.kind, base_url=self.base_url(server), **keys)

    def request(self, **fields: Any) -> LLMRequest:
        fields.setdefault("step", "s")
        fields.setdefault("prompt", "hello there")
        fields.setdefault("model", "m")
        fields["options"] = {**self.options, **fields.get("options", {})}
        return LLMRequest(**fields)


OPENAI = Proto("openai", "/v1/chat/completions", "Authorization", "stop", "length")
OLLAMA = Proto("ollama", "/api/chat", "Authorization", "stop", "length")
ANTHROPIC = Proto(
    "anthropic",
    "/v1/messages",
    "x-api-key",
    "end_turn",
    "max_tokens",
    options={"max_tokens": 64},
    key_prefix="",
)
PROTOCOLS = [OPENAI, OLLAMA, ANTHROPIC]
by_kind = pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda p: p.kind)
streaming = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])


def call(config: ProviderConfig, request: LLMRequest, *, name: str = "remote") -> LLMResult:
    """One complete() on a fresh client, bounded in time whatever goes wrong."""

    async def go() -> LLMResult:
        async with http_client(4, url="http://127.0.0.1") as client:
            with anyio.fail_after(10):
                return await build_provider(name, config, client).complete(request)  # type: ignore[return-value]

    return anyio.run(go)


def check(config: ProviderConfig, *, name: str = "remote") -> str:
    async def go() -> str:
        async with http_client(4, url="http://127.0.0.1") as client:
            with anyio.fail_after(10):
                return await build_provider(name, config, client).check()  # type: ignore[attr-defined]

    return anyio.run(go)


def pipeline_toml(proto: Proto, base_url: str, *, provider: str = "", step_b: str = "") -> str:
    """Two steps on one provider of `proto`'s kind: a text step, and a json step reading it."""
    options = ", ".join(f"{k} = {v!r}" for k, v in proto.options.items())
    return f"""
name = "wire"

[inputs.topic]
default = "tea"

[providers.remote]
kind = "{proto.kind}"
base_url = "{base_url}"
model = "m"
api_key_env = "WIRE_TEST_KEY"
timeout_s = 2
max_retries = 2
options = {{ {options} }}
{provider}

[steps.a]
provider = "remote"
system = "be brief"
prompt = "Write about {{{{ inputs.topic }}}}."

[steps.b]
needs = ["a"]
provider = "remote"
prompt = "Review this. Answer in JSON.\\n{{{{ steps.a.output }}}}"
output = "json"
{step_b}
"""
