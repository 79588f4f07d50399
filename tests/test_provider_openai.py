"""The openai provider against a real HTTP server on 127.0.0.1, fault by fault."""

from __future__ import annotations

import email.utils
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from steplog.providers.base import (
    LLMRequest,
    LLMResult,
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderUnavailable,
)
from steplog.providers.client import http_client
from steplog.providers.config import ProviderConfig
from steplog.providers.http import parse_retry_after, public_url
from steplog.providers.openai import OpenAIProvider
from tests.fake_llm_server import FakeLLMServer, closed_port

KEY = "sk-test-very-secret-123"
SERVER_SCRIPT = Path(__file__).with_name("fake_llm_server.py")


@pytest.fixture
def server(fake_llm: FakeLLMServer) -> FakeLLMServer:  # conftest's, under this file's name
    return fake_llm


def call(url: str, request: LLMRequest | None = None, **config: Any) -> LLMResult:
    cfg = ProviderConfig(
        kind="openai", base_url=url, model="m", timeout_s=config.pop("timeout_s", 2), **config
    )
    request = request or LLMRequest(
        step="s", system="be brief", prompt="hello there", model="m", options={"temperature": 0}
    )

    async def go() -> LLMResult:
        async with http_client(4, url="http://127.0.0.1") as client:
            with anyio.fail_after(10):  # every test stays bounded, whatever goes wrong
                return await OpenAIProvider("remote", cfg, client).complete(request)

    return anyio.run(go)


# -- success ---------------------------------------------------------------------------------------


def test_success_sends_the_body_and_reads_usage(server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    result = call(server.url + "/", api_key_env="FAKE_KEY")  # a trailing slash is fine
    assert result.text.startswith("answer ") and result.text.endswith("hello there")
    assert (result.tokens_in, result.tokens_out) == (4, len(result.text.split()))
    assert result.finish_reason == "stop" and result.model == "m"
    [sent] = server.calls
    assert sent["method"] == "POST" and sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        "temperature": 0,
    }
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"


def test_no_key_configured_sends_no_authorization(server):
    call(server.url, LLMRequest(step="s", prompt="x", model="m"))
    [sent] = server.calls
    assert "authorization" not in {h.lower() for h in sent["headers"]}
    assert [m["role"] for m in sent["body"]["messages"]] == ["user"]  # no system message


def test_json_output_asks_for_json_mode(server):
    result = call(server.url, LLMRequest(step="s", prompt="x", model="m", output="json"))
    assert server.calls[0]["body"]["response_format"] == {"type": "json_object"}
    assert isinstance(json.loads(result.text), dict)


def test_options_keep_their_own_response_format_but_cannot_replace_the_prompt(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    options = {"response_format": fmt, "max_tokens": 5, "messages": [], "model": "other"}
    call(server.url, LLMRequest(step="s", prompt="p", model="m", output="json", options=options))
    body = server.calls[0]["body"]
    assert body["response_format"] == fmt and body["max_tokens"] == 5
    assert body["model"] == "m" and body["messages"] == [{"role": "user", "content": "p"}]


def test_missing_usage_counts_zero_and_the_model_falls_back(server):
    answer = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": 3}]}
    server.faults.append(("json", answer))
    result = call(server.url)
    assert result == LLMResult(text="hi", model="m", tokens_in=0, tokens_out=0, finish_reason=None)


def test_each_call_reads_the_key_from_the_environment_then(server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-first")
    call(server.url, api_key_env="FAKE_KEY")
    # a trailing newline, as from `$(cat keyfile)`, is dropped
    monkeypatch.setenv("FAKE_KEY", "sk-second\n")
    call(server.url, api_key_env="FAKE_KEY")
    assert [c["headers"]["Authorization"] for c in server.calls] == [
        "Bearer sk-first",
        "Bearer sk-second",
    ]


# -- the key --------------------------------------------------------------------------------------


def test_missing_key_variable_is_named(server, monkeypatch):
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    with pytest.raises(ProviderError, match="NOT_SET_KEY") as info:
        call(server.url, api_key_env="NOT_SET_KEY")
    assert not info.value.retryable
    assert server.calls == []


@pytest.mark.parametrize("bad", ["sk-a\nX-Evil: 1", "sk-caf\u00e9", "sk a"])
def test_a_key_that_cannot_be_a_header_is_refused_without_echoing_it(server, monkeypatch, bad):
    monkeypatch.setenv("FAKE_KEY", bad)
    with pytest.raises(ProviderError, match="FAKE_KEY") as info:
        call(server.url, api_key_env="FAKE_KEY")
    assert not info.value.retryable and bad.strip() not in str(info.value)
    assert server.calls == []


FAULTS = [
    ("status", 401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {}),
    ("status", 500, None, {}),
    ("status", 400, None, {}),
    ("drop",),
    ("garbage",),
    ("empty_choices",),
    ("json", {"choices": [{"message": {"content": None}}]}),
    ("delay", 1.0),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f[0] + str(f[1] if len(f) > 1 else ""))
def test_the_key_is_in_no_error(server, monkeypatch, fault):
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.faults.append(fault)
    with pytest.raises(ProviderError) as info:
        call(server.url, api_key_env="FAKE_KEY", timeout_s=0.3)
    for text in (str(info.value), repr(info.value), info.value.message):
        assert KEY not in text and "Bearer" not in text
    assert server.url + "/chat/completions" in str(info.value)
    assert "'remote'" in str(info.value)  # the provider is named


def test_a_key_echoed_by_the_server_is_redacted(server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.faults.append(
        ("status", 401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {})
    )
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url, api_key_env="FAKE_KEY")
    assert KEY not in str(info.value) and "[redacted]" in str(info.value)


# -- HTTP errors -----------------------------------------------------------------------------------


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
    if header == "2":
        assert info.value.retry_after == 2.0
    else:
        assert info.value.retry_after is not None and 1 < info.value.retry_after <= 3
    assert "slow down" in str(info.value)


def test_429_without_retry_after(server):
    server.faults.append(("status", 429, None, {}))
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url)
    assert info.value.retryable and info.value.retry_after is None


@pytest.mark.parametrize("code", [500, 502, 503, 504, 529, 408])
def test_server_errors_are_retryable(server, code):
    server.faults.append(("status", code, None, {}))
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url)
    assert info.value.retryable and info.value.status == code
    assert info.value.error_class == "http_error"


@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_client_errors_fail_fast_with_the_servers_message(server, code):
    server.faults.append(("status", code, {"error": {"message": f"bad thing {code}"}}, {}))
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url)
    assert not info.value.retryable and info.value.status == code
    assert f"bad thing {code}" in str(info.value) and f"HTTP {code}" in str(info.value)


@pytest.mark.parametrize("body", ["<html>" + "x" * 1000, {"detail": "x" * 1000}])
def test_an_error_body_not_in_openais_shape_is_quoted_to_200_chars(server, body):
    server.faults.append(("status", 502, body, {}))
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url)
    start = "<html>xxx" if isinstance(body, str) else '{"detail": "xxx'
    assert start in info.value.message and len(info.value.message) < 300


def test_a_redirect_is_an_http_error_not_a_bad_answer(server):
    server.faults.append(("status", 301, {}, {"Location": "http://127.0.0.1:1/elsewhere"}))
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url)
    assert info.value.status == 301 and not info.value.retryable
    assert len(server.calls) == 1  # not followed


# -- transport failures and unusable answers -------------------------------------------------------


def test_slow_first_byte_times_out(server):
    server.faults.append(("delay", 1.0))
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="no answer within") as info:
        call(server.url, timeout_s=0.2)
    assert info.value.retryable and info.value.error_class == "unavailable"
    assert time.monotonic() - started < 0.9


def test_dropped_connection_is_unavailable(server):
    server.faults.append(("drop",))
    with pytest.raises(ProviderUnavailable) as info:
        call(server.url, timeout_s=0.5)
    assert info.value.retryable and "no answer within" not in str(info.value)  # not a timeout


@pytest.mark.parametrize(
    "fault",
    [
        ("garbage",),
        ("empty_choices",),
        ("json", {"choices": [{"message": {"role": "assistant"}}]}),
        ("json", {"choices": ["not an object"]}),
        ("json", ["not", "an", "object"]),
    ],
)
def test_unusable_answers_are_bad_responses(server, fault):
    server.faults.append(fault)
    with pytest.raises(ProviderBadResponse) as info:
        call(server.url)
    assert not info.value.retryable and info.value.status == 200


def test_nobody_listening_is_unavailable():
    port = closed_port()
    with pytest.raises(ProviderUnavailable) as info:
        call(f"http://someuser:hunter2pw@127.0.0.1:{port}/v1?api-key=qsecret")
    text = str(info.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in text
    assert "hunter2pw" not in text and "someuser" not in text and "qsecret" not in text


def test_a_url_that_is_not_http_is_refused_up_front():
    cfg = ProviderConfig(kind="openai", base_url="ftp://u:secret@127.0.0.1/v1")
    client = http_client(4, url="http://127.0.0.1")
    try:
        with pytest.raises(ValueError, match="http") as info:
            OpenAIProvider("remote", cfg, client)
    finally:
        anyio.run(client.aclose)
    assert "secret" not in str(info.value)


def test_helpers():
    assert public_url("http://u:p@127.0.0.1:8080/v1/x?key=1#f") == "http://127.0.0.1:8080/v1/x"
    assert public_url("http://u:p@[::1]:8080/v1") == "http://[::1]:8080/v1"
    assert parse_retry_after("1000") == 1000.0  # as sent: the retry policy caps the wait
    assert parse_retry_after("inf") is None
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("nonsense") is None and parse_retry_after("nan") is None
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after(email.utils.formatdate(100, usegmt=True), now=90) == pytest.approx(10)
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 -0000", now=90) == pytest.approx(10)
    assert parse_retry_after(email.utils.formatdate(100, usegmt=True), now=1000) == 0.0


# -- the fake server itself ------------------------------------------------------------------------


def http(url: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_fake_server_lists_models_and_rejects_malformed_requests(server):
    assert http(server.url + "/models") == (
        200,
        {"object": "list", "data": [{"id": "fake-model", "object": "model"}]},
    )
    status, body = http(server.url + "/chat/completions", b"not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body = http(server.url + "/chat/completions", b'{"model": "m", "messages": []}')
    assert status == 400
    assert [(c["method"], c["body"]) for c in server.calls] == [
        ("GET", None),
        ("POST", None),
        ("POST", {"model": "m", "messages": []}),
    ]


def test_fake_server_in_process_delay_and_fail_first(tmp_path, fake_llm_factory):
    log = tmp_path / "calls.jsonl"
    server = fake_llm_factory(call_log=log, fail_first=1, delay=0.05)
    with pytest.raises(ProviderHTTPError) as info:
        call(server.url)
    assert info.value.status == 503
    assert call(server.url).text.startswith("answer ")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["model"], line["fault"]) for line in lines] == [("m", "status"), ("m", None)]
    assert (
        lines[0]["prompt_sha256"] == lines[1]["prompt_sha256"]
        and len(lines[0]["prompt_sha256"]) == 16
    )


@pytest.mark.slow
def test_fake_server_as_a_subprocess(tmp_path):
    port_file, log = tmp_path / "port", tmp_path / "calls.jsonl"
    argv = [sys.executable, str(SERVER_SCRIPT), "--port", "0", "--port-file", str(port_file)]
    argv += ["--call-log", str(log), "--fail-first", "1", "--delay", "0.01"]
    proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": ""})  # stdlib only
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert proc.poll() is None, "the fake server exited"
            assert time.monotonic() < deadline, "no port file within 10 s"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/v1"
        with pytest.raises(ProviderHTTPError) as info:
            call(url)
        assert info.value.status == 503 and info.value.retryable
        result = call(url, LLMRequest(step="s", prompt="q", model="m", output="json"))
        assert json.loads(result.text)["verdict"] == "pass"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [json.loads(line)["fault"] for line in log.read_text().splitlines()] == ["status", None]


def test_a_query_in_base_url_stays_a_query(server):
    call(server.url + "/?api-version=2024-01")
    assert server.calls[0]["path"] == "/v1/chat/completions?api-version=2024-01"


# -- streaming, JSON mode, organization/project, config keys ----------------------------------------


def test_streaming_asks_for_usage_and_reads_it(server):
    cfg = ProviderConfig(kind="openai", base_url=server.url, model="m", stream=True)

    async def go() -> LLMResult:
        async with http_client(4, url="http://127.0.0.1") as client:
            with anyio.fail_after(10):
                return await OpenAIProvider("remote", cfg, client).complete(
                    LLMRequest(step="s", prompt="hello stream", model="m")
                )

    result = anyio.run(go)
    body = server.calls[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "text/event-stream" in server.calls[0]["headers"]["Accept"]
    assert result.text.endswith("hello stream") and result.finish_reason == "stop"
    assert (result.tokens_in, result.tokens_out) == (2, len(result.text.split()))


def test_organization_and_project_headers(server):
    call(server.url, organization="org-123", project="proj_456")
    headers = server.calls[0]["headers"]
    assert headers["OpenAI-Organization"] == "org-123" and headers["OpenAI-Project"] == "proj_456"
    call(server.url)
    assert "OpenAI-Organization" not in server.calls[1]["headers"]


def test_json_mode_can_be_switched_off_for_servers_without_it(server):
    call(server.url, LLMRequest(step="s", prompt="x", model="m", output="json"), json_mode=False)
    assert "response_format" not in server.calls[0]["body"]


def test_an_error_object_in_a_200_body_is_an_error(server):
    server.faults.append(("json", {"error": {"message": "context length exceeded"}}))
    with pytest.raises(ProviderError, match="context length exceeded") as info:
        call(server.url)
    assert info.value.error_class == "stream_error" and not info.value.retryable


@pytest.mark.parametrize("key", ["keep_alive", "anthropic_version"])
def test_keys_of_other_kinds_are_refused_naming_the_key(key):
    from steplog.executor.pipeline import PipelineError, parse_pipeline

    text = f"""
name = "p"
[providers.remote]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
{key} = "x"
[steps.a]
provider = "remote"
prompt = "hi"
"""
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, "p.toml")
    assert f"{key} applies to kind" in str(info.value) and "remote" in str(info.value)
    with pytest.raises(
        PipelineError, match=r"unknown key 'providers.remote.temperature' \(line 6\)"
    ):
        parse_pipeline(text.replace(f'{key} = "x"', "temperature = 0"), "p.toml")


def test_cache_identity_ignores_everything_but_kind_model_and_options():
    plain = ProviderConfig(kind="openai", base_url="http://127.0.0.1:1/v1")
    dressed = ProviderConfig(
        kind="openai",
        base_url="http://127.0.0.1:2/v1",
        api_key_env="K",
        timeout_s=5,
        max_retries=9,
        stream=True,
        organization="o",
        project="p",
        json_mode=False,
    )
    assert (
        plain.cache_identity("m", {"t": 0})
        == dressed.cache_identity("m", {"t": 0})
        == {
            "kind": "openai",
            "model": "m",
            "options": {"t": 0},
        }
    )
