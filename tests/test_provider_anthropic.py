"""The anthropic provider's protocol details, against the fake server on 127.0.0.1."""

from __future__ import annotations

import anyio
import pytest
from pydantic import ValidationError

from steplog.providers.anthropic import AnthropicProvider, _Stream
from steplog.providers.base import LLMResult, ProviderError, ProviderHTTPError, ProviderStreamError
from steplog.providers.client import http_client
from steplog.providers.config import ProviderConfig
from steplog.providers.http import ErrorInAnswer
from tests.fake_llm_server import FakeLLMServer
from tests.provider_cases import ANTHROPIC, call, streaming

KEY = "sk-ant-test-0123456789"


@pytest.fixture
def server(fake_llm: FakeLLMServer) -> FakeLLMServer:  # conftest's, under this file's name
    return fake_llm


@streaming
def test_headers_and_body_follow_the_messages_api(server, stream: bool, monkeypatch) -> None:
    monkeypatch.setenv("ANT_KEY", KEY)
    config = ANTHROPIC.config(server, stream=stream, api_key_env="ANT_KEY")
    request = ANTHROPIC.request(system="be brief", options={"temperature": 0, "max_tokens": 50})
    result = call(config, request)
    [sent] = server.calls
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent["headers"]
    expected = {
        "model": "m",
        "messages": [{"role": "user", "content": "hello there"}],
        "system": "be brief",
        "max_tokens": 50,
        "temperature": 0,
    }
    assert sent["body"] == ({**expected, "stream": True} if stream else expected)
    assert result.tokens_in == 4 and result.tokens_out == len(result.text.split())
    assert result.finish_reason == "end_turn" and result.text.startswith("answer ")


def test_the_version_header_is_configurable_and_a_v1_base_url_is_not_doubled(server) -> None:
    config = ANTHROPIC.config(server.base + "/v1/", anthropic_version="2024-10-22")
    call(config, ANTHROPIC.request())
    assert server.calls[0]["path"] == "/v1/messages"
    assert server.calls[0]["headers"]["anthropic-version"] == "2024-10-22"


def test_without_max_tokens_the_request_is_not_sent(server) -> None:
    config = ProviderConfig(kind="anthropic", base_url=server.base, model="m")
    with pytest.raises(ProviderError, match="max_tokens") as info:
        call(config, ANTHROPIC.request(options={"max_tokens": None}))
    assert not info.value.retryable and server.calls == []


@streaming
def test_max_tokens_stop_is_the_truncation_stop(server, stream: bool) -> None:
    server.faults.append(("truncated", "cut sh"))
    result = call(ANTHROPIC.config(server, stream=stream), ANTHROPIC.request())
    assert result.finish_reason == "max_tokens" and result.text == "cut sh"


def test_several_text_blocks_are_joined_and_other_blocks_ignored(server) -> None:
    answer = {
        "model": "claude-x",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 9, "output_tokens": 2},
        "content": [
            {"type": "thinking", "thinking": "hmm"},
            {"type": "text", "text": "a"},
            {"type": "text", "text": "b"},
        ],
    }
    server.faults.append(("json", answer))
    result = call(ANTHROPIC.config(server), ANTHROPIC.request())
    assert result == LLMResult(
        text="ab", model="claude-x", tokens_in=9, tokens_out=2, finish_reason="end_turn"
    )


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [("overloaded_error", True), ("api_error", True), ("invalid_request_error", False)],
)
def test_an_error_event_is_retryable_when_its_type_is_transient(kind: str, retryable: bool) -> None:
    state = _Stream()
    state.feed("message_start", '{"type": "message_start", "message": {"model": "x"}}')
    with pytest.raises(ErrorInAnswer) as info:
        state.feed("error", '{"type": "error", "error": {"type": "%s", "message": "busy"}}' % kind)
    assert info.value.retryable is retryable and info.value.message == f"{kind}: busy"


def test_the_stream_fold_reads_usage_from_start_and_delta() -> None:
    state = _Stream()
    events = [
        (
            "message_start",
            '{"type":"message_start","message":{"model":"c","usage":{"input_tokens":12,"output_tokens":1}}}',
        ),
        ("ping", '{"type":"ping"}'),
        (
            "content_block_delta",
            '{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{"}}',
        ),
        (
            "message_delta",
            '{"type":"message_delta","delta":{"stop_reason":"stop_sequence"},"usage":{"output_tokens":5}}',
        ),
        ("message_stop", '{"type":"message_stop"}'),
    ]
    for event, data in events:
        state.feed(event, data)
    assert (
        state.parts.text(),
        state.model,
        state.tokens_in,
        state.tokens_out,
        state.stop,
        state.done,
    ) == (
        "x",
        "c",
        12,
        5,
        "stop_sequence",
        True,
    )


@streaming
def test_401_carries_anthropics_error_message(server, stream: bool, monkeypatch) -> None:
    monkeypatch.setenv("ANT_KEY", KEY)
    server.require_key = "another"
    with pytest.raises(ProviderHTTPError) as info:
        call(ANTHROPIC.config(server, stream=stream, api_key_env="ANT_KEY"), ANTHROPIC.request())
    assert info.value.status == 401 and not info.value.retryable
    assert "HTTP 401: Incorrect API key provided: [redacted]" in str(info.value)


def test_an_overloaded_event_mid_stream_is_retryable(server) -> None:
    server.faults.append(("stream_error", "Overloaded"))
    with pytest.raises(ProviderStreamError, match="overloaded_error: Overloaded") as info:
        call(ANTHROPIC.config(server, stream=True), ANTHROPIC.request())
    assert info.value.retryable


def test_a_base_url_is_required_and_must_be_http() -> None:
    async def build(base_url: str | None) -> None:
        async with http_client(4, url="http://127.0.0.1") as client:
            AnthropicProvider("a", ProviderConfig(kind="anthropic", base_url=base_url), client)

    with pytest.raises(ValueError, match="base_url is required"):
        anyio.run(build, None)
    with pytest.raises(ValueError, match="http"):
        anyio.run(build, "file:///etc")


@pytest.mark.parametrize(
    ("key", "value"), [("keep_alive", "5m"), ("organization", "o"), ("json_mode", True)]
)
def test_keys_of_other_kinds_are_refused(key: str, value: object) -> None:
    with pytest.raises(ValidationError, match=f"{key} applies to kind"):
        ProviderConfig(kind="anthropic", base_url="http://127.0.0.1:1", **{key: value})
