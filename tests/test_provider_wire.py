"""Every fault against every wire protocol, whole and streamed: one mapping onto the error tree.

The server is real (127.0.0.1); what is asserted is the error class, its retryability, and that
its message names the provider and the URL and carries the server's own words.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.providers.base import (
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    ProviderTruncated,
    ProviderUnavailable,
)
from steplog.providers.http import SSEEvent, SSEParser, error_message
from tests.fake_llm_server import FakeLLMServer, closed_port
from tests.provider_cases import (
    ANTHROPIC,
    OPENAI,
    PROTOCOLS,
    Proto,
    by_kind,
    call,
    check,
    streaming,
)

KEY = "sk-wire-test-0123456789"


@pytest.fixture
def server(shared_fake_llm: FakeLLMServer) -> FakeLLMServer:  # one per module, reset per test
    return shared_fake_llm


# fault -> (expected class, retryable, text the message must contain)
FAULTS: list[tuple[str, tuple, type[ProviderError], bool, str]] = [
    (
        "429",
        ("status", 429, None, {"Retry-After": "1"}),
        ProviderHTTPError,
        True,
        "HTTP 429: injected 429",
    ),
    ("500", ("status", 500, None, {}), ProviderHTTPError, True, "HTTP 500: injected 500"),
    ("503", ("status", 503, None, {}), ProviderHTTPError, True, "HTTP 503"),
    ("529", ("status", 529, None, {}), ProviderHTTPError, True, "HTTP 529"),
    ("401", ("status", 401, None, {}), ProviderHTTPError, False, "HTTP 401: injected 401"),
    ("400", ("status", 400, None, {}), ProviderHTTPError, False, "HTTP 400: injected 400"),
    ("slow", ("delay", 1.0), ProviderUnavailable, True, "no answer within 0.25s"),
    ("drop", ("drop",), ProviderUnavailable, True, "RemoteProtocolError"),
    ("malformed", ("garbage",), ProviderBadResponse, False, "not JSON"),
    ("empty", ("empty",), ProviderBadResponse, False, ""),
]


@by_kind
@streaming
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f[0])
def test_each_fault_maps_onto_the_tree(server, proto: Proto, stream: bool, fault) -> None:
    _, injected, expected, retryable, text = fault
    server.faults.append(injected)
    with pytest.raises(ProviderError) as info:
        call(proto.config(server, stream=stream, timeout_s=0.25), proto.request())
    error = info.value
    assert type(error) is expected, error
    assert error.retryable is retryable
    assert text in str(error)
    assert str(error).startswith(f"provider 'remote': {proto.base_url(server)}")
    if injected[0] == "status":
        assert error.status == injected[1] and error.error_class == "http_error"
        assert error.retry_after == (1.0 if injected[1] == 429 else None)
    assert len(server.calls) == 1  # the provider never retries on its own


@by_kind
@streaming
def test_an_error_object_in_a_2xx_answer_is_an_error(server, proto: Proto, stream: bool) -> None:
    server.faults.append(("stream_error", "the model runner stopped"))
    with pytest.raises(ProviderStreamError) as info:
        call(proto.config(server, stream=stream), proto.request())
    assert "the server reported an error" in str(info.value)
    assert "the model runner stopped" in str(info.value)
    # Anthropic says what kind of error it was (overloaded/api = transient); the others do not.
    assert info.value.retryable is (proto.kind == "anthropic")
    assert info.value.error_class == "stream_error"


@by_kind
@streaming
@pytest.mark.parametrize("policy", ["accept", "error"])
def test_an_answer_cut_off_at_the_limit(server, proto: Proto, stream: bool, policy: str) -> None:
    server.faults.append(("truncated", "half an ans"))
    request = proto.request(on_truncation=policy)
    if policy == "accept":
        result = call(proto.config(server, stream=stream), request)
        assert result.text == "half an ans" and result.finish_reason == proto.limit
        return
    with pytest.raises(ProviderTruncated) as info:
        call(proto.config(server, stream=stream), request)
    assert not info.value.retryable and info.value.error_class == "truncated"
    assert f"finish reason {proto.limit!r}" in str(info.value)
    assert "max_tokens" in str(info.value) and 'on_truncation = "accept"' in str(info.value)


@by_kind
def test_a_stream_that_ends_without_its_closing_event_was_cut(server, proto: Proto) -> None:
    server.faults.append(("cut",))
    with pytest.raises(ProviderUnavailable, match="the stream ended before") as info:
        call(proto.config(server, stream=True), proto.request(prompt="long enough " * 10))
    assert info.value.retryable
    server.faults.append(("cut",))  # the same fault on a whole answer: a truncated JSON body
    with pytest.raises(ProviderBadResponse, match="not JSON"):
        call(proto.config(server), proto.request())


@by_kind
def test_streamed_and_whole_answers_are_equal(server, proto: Proto) -> None:
    long = "a streamed answer " * 20 + "with an ending\nand a second line"
    results = []
    for stream in (False, True):
        server.faults.append(("answer", long))
        results.append(call(proto.config(server, stream=stream), proto.request(system="sys")))
    whole, streamed = results
    assert whole == streamed
    assert whole.text == long and whole.finish_reason == proto.stop
    assert whole.tokens_in == 3 and whole.tokens_out == len(long.split())  # "sys" + "hello there"
    bodies = [c["body"] for c in server.calls]
    assert [b.get("stream") for b in bodies] == [False if proto.kind == "ollama" else None, True]


@by_kind
@streaming
def test_the_key_goes_only_in_its_header_and_is_redacted_when_echoed(
    server, proto: Proto, stream: bool, monkeypatch
) -> None:
    monkeypatch.setenv("WIRE_TEST_KEY", KEY)
    config = proto.config(server, stream=stream, api_key_env="WIRE_TEST_KEY")
    server.require_key = KEY
    call(config, proto.request())
    headers = server.calls[0]["headers"]
    assert headers[proto.auth_header] == proto.auth(KEY)
    assert KEY not in json.dumps(server.calls[0]["body"])
    server.require_key = KEY + "-other"  # now the server refuses the key and echoes it back
    with pytest.raises(ProviderHTTPError) as info:
        call(config, proto.request())
    assert info.value.status == 401 and not info.value.retryable
    assert "Incorrect API key provided: [redacted]" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value)


@pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda p: p.kind)
def test_credentials_in_base_url_are_never_printed(proto: Proto) -> None:
    port = closed_port()
    base = proto.base_url(f"http://someuser:hunter2pw@127.0.0.1:{port}")
    if proto.kind == "openai":
        base += "/v1"
    with pytest.raises(ProviderUnavailable) as info:  # nothing listens there any more
        call(proto.config(base + "?api-key=qsecret"), proto.request())
    text = str(info.value)
    assert f"http://127.0.0.1:{port}" in text
    assert "hunter2pw" not in text and "someuser" not in text and "qsecret" not in text


# -- pure parts ------------------------------------------------------------------------------------


def test_error_message_reads_every_protocols_error_body() -> None:
    assert error_message({"error": {"message": "m1", "type": "x"}}) == "m1"  # openai
    assert error_message({"type": "error", "error": {"type": "t", "message": "m2"}}) == "m2"
    assert error_message({"error": "m3"}) == "m3"  # ollama
    assert error_message({"message": "m4"}) == "m4"
    assert error_message({"error": {}}) is None and error_message([1]) is None


def _sse_lines(events: list[SSEEvent]) -> list[str]:
    lines: list[str] = []
    for ev in events:
        lines.append(f"event: {ev.event}")
        lines.extend(f"data: {part}" for part in ev.data.split("\n"))
        lines.append("")
    return lines


_field_text = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
    ),
    max_size=20,
)


@settings(max_examples=60)
@given(
    st.lists(
        st.builds(
            SSEEvent,
            event=st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
            data=st.lists(_field_text, min_size=1, max_size=3).map("\n".join),
        ),
        max_size=6,
    ),
    st.booleans(),
)
def test_sse_parser_reads_back_what_was_framed(events: list[SSEEvent], comments: bool) -> None:
    parser, seen = SSEParser(), []
    lines = _sse_lines(events)
    if comments:
        lines = [line for pair in zip(lines, [": keep-alive"] * len(lines)) for line in pair]
    for line in lines:
        ev = parser.feed(line)
        if ev is not None:
            seen.append(ev)
    assert parser.flush() is None
    assert seen == events


def test_sse_parser_keeps_an_unterminated_last_event() -> None:
    parser = SSEParser()
    assert parser.feed("data:x") is None  # no space after the colon is allowed too
    assert parser.flush() == SSEEvent("message", "x")


@pytest.mark.parametrize("proto", [OPENAI, ANTHROPIC], ids=lambda p: p.kind)
def test_check_lists_models_or_falls_back_to_one_token(server, proto: Proto) -> None:
    """A server without GET /models (some proxies and gateways) gets a 1-token request instead."""
    server.models[:] = ["m"]
    assert check(proto.config(server)) == "1 model; m listed"
    server.no_model_list = True
    try:
        note = check(proto.config(server))
    finally:
        server.no_model_list = False
    assert note.startswith("no model list; a 1-token request to m answered")
    get, post = server.calls[1:]
    assert (get["method"], get["path"], get["body"]) == ("GET", "/v1/models", None)
    assert post["path"] == proto.chat_path and post["body"]["max_tokens"] == 1
    server.require_key = "sk-right"
    with pytest.raises(ProviderHTTPError, match="HTTP 401"):  # only a 404 falls back
        check(proto.config(server))
