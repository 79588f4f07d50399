"""The ollama provider's protocol details, against the fake server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from steplog.providers.base import (
    LLMResult,
    ProviderBadResponse,
    ProviderError,
    ProviderStreamError,
)
from steplog.providers.config import ProviderConfig
from tests.fake_llm_server import FakeLLMServer
from tests.provider_cases import OLLAMA, call, check, streaming


@pytest.fixture
def server(fake_llm: FakeLLMServer) -> FakeLLMServer:  # conftest's, under this file's name
    return fake_llm


@streaming
def test_the_body_is_ollamas_chat(server, stream: bool) -> None:
    config = OLLAMA.config(server, stream=stream, keep_alive="10m", options={"num_ctx": 8192})
    request = OLLAMA.request(
        system="be brief", options={"temperature": 0, "seed": 7}, output="json"
    )
    result = call(config, request)
    [sent] = server.calls
    assert sent["path"] == "/api/chat"
    assert sent["body"] == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        "stream": stream,
        "options": {"temperature": 0, "seed": 7},  # the request's merged options, as sent
        "keep_alive": "10m",
        "format": "json",
    }
    assert json.loads(result.text)["verdict"] == "pass"
    assert result.tokens_in == 4 and result.tokens_out == len(result.text.split())
    assert result.finish_reason == "stop"


def test_no_options_no_keep_alive_no_format_unless_asked(server) -> None:
    call(OLLAMA.config(server, json_mode=False), OLLAMA.request(output="json"))
    assert server.calls[0]["body"] == {
        "model": "m",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": False,
    }


def test_keep_alive_may_be_a_number(server) -> None:
    call(OLLAMA.config(server, keep_alive=-1), OLLAMA.request())
    assert server.calls[0]["body"]["keep_alive"] == -1


@streaming
def test_tokens_and_done_reason_come_from_the_final_object(server, stream: bool) -> None:
    final = {
        "model": "served",
        "message": {"role": "assistant", "content": "hi"},
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 11,
        "eval_count": 3,
    }
    if stream:
        server.faults.append(("truncated", "hi"))
        result = call(OLLAMA.config(server, stream=True), OLLAMA.request())
        assert (result.text, result.finish_reason) == ("hi", "length")
        return
    server.faults.append(("json", final))
    result = call(OLLAMA.config(server), OLLAMA.request())
    assert result == LLMResult(
        text="hi", model="served", tokens_in=11, tokens_out=3, finish_reason="length"
    )


@streaming
def test_an_error_object_in_a_200_is_an_error_naming_the_servers_words(
    server, stream: bool
) -> None:
    server.faults.append(("stream_error", "model runner has unexpectedly stopped"))
    with pytest.raises(ProviderStreamError, match="model runner has unexpectedly stopped") as info:
        call(OLLAMA.config(server, stream=stream), OLLAMA.request())
    assert not info.value.retryable


def test_a_missing_message_is_a_bad_response(server) -> None:
    server.faults.append(("json", {"model": "m", "done": True}))
    with pytest.raises(ProviderBadResponse, match="no message content"):
        call(OLLAMA.config(server), OLLAMA.request())


def test_a_stream_that_stops_before_done_is_retryable(server) -> None:
    # a stream cut between lines (no final `done: true`) is a cut connection, whatever the framing
    server.faults.append(("drop",))
    with pytest.raises(ProviderError) as info:
        call(OLLAMA.config(server, stream=True), OLLAMA.request(prompt="a prompt long enough " * 5))
    assert info.value.retryable and info.value.error_class == "unavailable"


def test_401_carries_ollamas_error_string(server) -> None:
    server.require_key = "right"
    with pytest.raises(ProviderError, match=r"HTTP 401: no API key provided") as info:
        call(OLLAMA.config(server), OLLAMA.request())
    assert not info.value.retryable


def test_check_reports_whether_the_model_is_pulled(server) -> None:
    server.models[:] = ["llama3.2", "qwen2.5-coder:7b"]
    assert "llama3.2 is pulled" in check(OLLAMA.config(server, model="llama3.2"))
    assert "is pulled" in check(OLLAMA.config(server, model="qwen2.5-coder:7b"))
    with pytest.raises(ProviderError, match=r"model 'mistral' is not pulled.*ollama pull mistral"):
        check(OLLAMA.config(server, model="mistral"))
    assert [c["path"] for c in server.calls] == ["/api/tags"] * 3


@pytest.mark.parametrize("key", ["organization", "project", "anthropic_version"])
def test_keys_of_other_kinds_are_refused(key: str) -> None:
    with pytest.raises(ValidationError, match=f"{key} applies to kind"):
        ProviderConfig(kind="ollama", base_url="http://127.0.0.1:1", **{key: "x"})
