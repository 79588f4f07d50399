"""The HTTP client of one provider: httpx's API over aiohttp's connection pool.

httpx's own pool costs more CPU per call the more connections it keeps (encode/httpx#3215): at
100 calls at once it was the limit, with its default limits and ten times more so with 100 kept
alive, against the httpx-aiohttp transport (bench/concurrency.py; figures in bench/README.md).
So every
provider gets its own client, an httpx.AsyncClient whose transport is aiohttp's, with as many
connections as the provider may have calls in flight (its max_concurrency) and all of them kept
alive between calls.

The transport's exceptions are mapped here to httpx's, one way: providers.http then maps httpx's
to the provider error tree, whichever transport is below. httpx-aiohttp maps some of aiohttp's
exceptions itself, but a refused or reset connection comes out as a ConnectTimeout and an answer
that is not HTTP as aiohttp's own exception; this module reads the aiohttp exception underneath
and names what happened.
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import contextmanager
from typing import Iterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from steplog.providers.config import ProviderConfig

# an idle connection is closed after this long (the server may close it sooner)
KEEPALIVE_S = 30.0


def transport_error(exc: BaseException) -> httpx.TransportError | None:
    """The httpx exception for what aiohttp raised (directly, or under httpx-aiohttp's), or None."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    if not isinstance(cause, (aiohttp.ClientError, asyncio.TimeoutError)):
        return None
    message = str(cause) or type(cause).__name__
    make: Callable[[str], httpx.TransportError]
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        make = httpx.ConnectTimeout
    elif isinstance(cause, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        make = httpx.ReadTimeout
    elif isinstance(cause, aiohttp.ClientConnectorError):
        make = httpx.ConnectError
    elif isinstance(cause, aiohttp.ClientResponseError):  # not HTTP: a bad status line, headers
        make = httpx.RemoteProtocolError
        message = f"the answer is not HTTP: {cause.message}"
    elif isinstance(cause, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        make = httpx.RemoteProtocolError
    elif isinstance(cause, aiohttp.InvalidURL):
        make = httpx.UnsupportedProtocol
    else:
        make = httpx.ReadError
    # aiohttp's parser errors span lines (the bad line, then a caret under the fault): one line
    return make(" ".join(word for word in message.split() if word != "^"))


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except (httpx.TransportError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        mapped = transport_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


class _Body(httpx.AsyncByteStream):
    """The answer's bytes, with the transport's exceptions mapped while they are read."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for chunk in self.inner:
                yield chunk

    async def aclose(self) -> None:
        with _mapped():
            await self.inner.aclose()


class Transport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.userinfo:
            # httpx has already turned the URL's user:password into an Authorization header;
            # aiohttp refuses a URL that carries them as well
            request.url = request.url.copy_with(userinfo=b"")
        with _mapped():
            response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Body(response.stream)
        return response


def client_url(config: ProviderConfig) -> str:
    """The URL a provider's client is made for: its base_url with each `${NAME}` read from the
    environment, so that NO_PROXY sees the host the calls go to. (An unset name leaves it as
    written; the run's checks refuse that before any call.)"""
    try:
        return config.resolved_base_url(os.environ) or ""
    except ValueError:
        return config.base_url or ""


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY),
    as httpx's own client would use it, or None."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy


def http_client(connections: int, *, url: str) -> httpx.AsyncClient:
    """A client for the provider at `url`, holding up to `connections` open connections, all
    kept alive when idle.

    The environment is honoured as httpx's own client honours it, read once here rather than
    at every call (aiohttp's trust_env reads ~/.netrc per request): the proxy for `url`, and
    SSL_CERT_FILE / SSL_CERT_DIR for the trust store, loaded (~20 ms) only for an https URL.
    """
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=KEEPALIVE_S,
    )
    tls = url.startswith("https:")
    ssl_context = httpx.create_ssl_context(verify=tls, trust_env=True)
    proxy = environment_proxy(url)

    def session() -> aiohttp.ClientSession:  # made on the first call, inside the event loop
        connector = aiohttp.TCPConnector(
            limit=connections, keepalive_timeout=KEEPALIVE_S, ssl=ssl_context
        )
        return aiohttp.ClientSession(connector=connector)

    transport = Transport(
        verify=ssl_context,
        limits=limits,
        proxy=httpx.Proxy(proxy) if proxy else None,
        client=session,
    )
    return httpx.AsyncClient(transport=transport)
