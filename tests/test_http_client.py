"""providers/client.py: the aiohttp transport's failures, as a provider reports them.

Each case is a real socket on 127.0.0.1 that misbehaves one way; the provider's error must be a
retryable ProviderUnavailable on one line that names what happened, never aiohttp's own
exception or a connect timeout for a connection that was refused or reset.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

from steplog.providers.base import LLMRequest, ProviderUnavailable
from steplog.providers.client import client_url, environment_proxy, http_client
from steplog.providers.config import ProviderConfig
from steplog.providers.openai import OpenAIProvider


def _reset(conn: socket.socket) -> None:
    # linger 0: close() sends a RST instead of a FIN
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


ANSWERS: dict[str, Callable[[socket.socket], None]] = {
    "not-http": lambda conn: conn.sendall(b"hello there\r\n\r\n"),
    "reset": _reset,
    "short-body": lambda conn: conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"a":'),
    "silent": lambda conn: time.sleep(1.5),
}


@pytest.fixture
def misbehaving(request: pytest.FixtureRequest) -> Iterator[int]:
    answer = ANSWERS[request.param]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def call(port: int) -> ProviderUnavailable:
    config = ProviderConfig(
        kind="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=0.5
    )

    async def go() -> None:
        async with http_client(2, url=config.base_url or "") as client:
            with anyio.fail_after(10):
                request = LLMRequest(step="s", prompt="hello", model="m")
                await OpenAIProvider("remote", config, client).complete(request)

    with pytest.raises(ProviderUnavailable) as info:
        anyio.run(go)
    return info.value


@pytest.mark.parametrize(
    ("misbehaving", "names"),
    [
        ("not-http", "RemoteProtocolError: the answer is not HTTP: Bad status line"),
        ("reset", "Connection reset by peer"),
        ("short-body", "RemoteProtocolError: Response payload is not completed"),
        ("silent", "no answer within 0.5s (ReadTimeout)"),
    ],
    indirect=["misbehaving"],
)
def test_each_failure_is_one_retryable_line_naming_it(misbehaving: int, names: str) -> None:
    error = call(misbehaving)
    message = str(error)
    assert names in message
    assert "\n" not in message
    assert f"http://127.0.0.1:{misbehaving}/v1/chat/completions" in message
    assert error.retryable


def test_a_refused_connection_is_a_connect_error_not_a_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    message = str(call(port))
    assert "ConnectError" in message and "within" not in message


def test_the_proxy_is_the_environments_as_httpx_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert environment_proxy("http://127.0.0.1:9/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert environment_proxy("https://127.0.0.2:443/v1") == "http://127.0.0.1:3128"
    assert environment_proxy("http://127.0.0.2:80/v1") is None  # https only
    monkeypatch.setenv("NO_PROXY", "127.0.0.2")
    assert environment_proxy("https://127.0.0.2:443/v1") is None


def test_no_proxy_sees_the_host_a_base_url_reads_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.3")
    monkeypatch.setenv("LLM_HOST", "127.0.0.3")
    config = ProviderConfig(kind="openai", model="m", base_url="http://${LLM_HOST}:8000/v1")
    assert client_url(config) == "http://127.0.0.3:8000/v1"
    assert environment_proxy(client_url(config)) is None  # the host NO_PROXY names
    monkeypatch.setenv("LLM_HOST", "127.0.0.4")
    assert environment_proxy(client_url(config)) == "http://127.0.0.1:3128"
    monkeypatch.delenv("LLM_HOST")
    assert client_url(config) == "http://${LLM_HOST}:8000/v1"  # as written; the run refuses it
