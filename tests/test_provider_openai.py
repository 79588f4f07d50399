"""The openai provider against a real HTTP server on 127.0.0.1, fault by fault."""

from __future__ import annotations

import email.utils
import socket
import time

import anyio
import httpx
import pytest

from providers.base import (
    LLMRequest,
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderUnavailable,
)
from providers.config import ProviderConfig
from providers.openai import OpenAIProvider, parse_retry_after, public_url
from tests.fake_llm_server import FakeLLMServer

KEY = "sk-test-very-secret-123"


@pytest.fixture
def server():
    with FakeLLMServer() as s:
        yield s


def call(url: str, request: LLMRequest | None = None, **config: object):
    cfg = ProviderConfig(
        kind="openai", base_url=url, model="m", timeout_s=config.pop("timeout_s", 2), **config
    )  # type: ignore[arg-type]
    request = request or LLMRequest(
        step="s", system="be brief", prompt="hello there", model="m", options={"temperature": 0}
    )

    async def go():
        async with httpx.AsyncClient() as client:
            return await OpenAIProvider("remote", cfg, client).complete(request)

    return anyio.run(go)


def test_success_sends_the_body_and_reads_usage(server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    result = call(server.url, api_key_env="FAKE_KEY")
    assert result.text.startswith("answer ") and result.tokens_in == 4 and result.tokens_out > 0
    assert result.finish_reason == "stop"
    sent = server.calls[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    assert sent["body"]["temperature"] == 0 and sent["body"]["model"] == "m"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"


def test_json_output_asks_for_json_mode(server):
    call(server.url, LLMRequest(step="s", prompt="x", model="m", output="json"))
    assert server.calls[0]["body"]["response_format"] == {"type": "json_object"}


def test_missing_key_variable_is_named(server, monkeypatch):
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    with pytest.raises(ProviderError, match="NOT_SET_KEY"):
        call(server.url, api_key_env="NOT_SET_KEY")
    assert server.calls == []


@pytest.mark.parametrize("header", ["2", "HTTP-DATE"])
def test_429_is_retryable_with_retry_after(server, header):
    value = (
        email.utils.formatdate(time.time() + 3, usegmt=True) if header == "HTTP-DATE" else header
    )
    server.faults.append(
        ("status", 429, {"error": {"message": "slow down"}}, {"Retry-After": value})
    )
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url)
    assert info.value.retryable and info.value.status == 429
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 3
    assert "slow down" in str(info.value)


@pytest.mark.parametrize("code", [500, 502, 503, 504, 529, 408])
def test_server_errors_are_retryable(server, code):
    server.faults.append(("status", code, None, {}))
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url)
    assert info.value.retryable and info.value.status == code


@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_client_errors_fail_fast_with_the_servers_message(server, code, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.faults.append(("status", code, {"error": {"message": f"bad thing {code}"}}, {}))
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url, api_key_env="FAKE_KEY")
    assert not info.value.retryable
    assert f"bad thing {code}" in str(info.value) and f"HTTP {code}" in str(info.value)
    assert KEY not in str(info.value)


def test_slow_first_byte_times_out(server):
    server.faults.append(("delay", 1.0))
    with pytest.raises(ProviderUnavailable, match="no answer within"):
        call(server.url, timeout_s=0.2)


def test_dropped_connection_is_unavailable(server):
    server.faults.append(("drop",))
    with pytest.raises(ProviderUnavailable):
        call(server.url)


@pytest.mark.parametrize("fault", [("garbage",), ("empty_choices",)])
def test_unusable_answers_are_bad_responses(server, fault):
    server.faults.append(fault)
    with pytest.raises(ProviderBadResponse):
        call(server.url)


def test_nobody_listening_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    with pytest.raises(ProviderUnavailable) as info:
        call(f"http://user:pw@127.0.0.1:{port}/v1")
    assert "pw" not in str(info.value) and "user" not in str(info.value)


def test_helpers():
    assert public_url("http://u:p@127.0.0.1:8080/v1/x?key=1#f") == "http://127.0.0.1:8080/v1/x"
    assert parse_retry_after("1000") == 300.0
    assert parse_retry_after("nonsense") is None
    assert parse_retry_after(email.utils.formatdate(100, usegmt=True), now=90) == pytest.approx(10)


def test_a_key_echoed_by_the_server_is_redacted(server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.faults.append(
        ("status", 401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {})
    )
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url, api_key_env="FAKE_KEY")
    assert KEY not in str(info.value) and "[redacted]" in str(info.value)
