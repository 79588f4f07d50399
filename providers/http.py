"""The wire side every HTTP provider shares: the one place where failures become the error tree.

    httpx.TimeoutException (connect, read, write, pool)  -> ProviderUnavailable ("no answer within")
    any other httpx.TransportError: refused, reset, a body
      or a stream cut short mid-way                       -> ProviderUnavailable (retryable)
    httpx.DecodingError (Content-Encoding does not decode) -> ProviderBadResponse
    a non-2xx status                                      -> ProviderHTTPError: retryable for
      base.RETRYABLE_STATUSES, else it fails fast; carries the server's own message and the
      Retry-After header (seconds or an HTTP date) as sent: the retry policy caps the wait
      (providers.backoff.RETRY_AFTER_CAP_S)
    a 2xx body we cannot use                              -> ProviderBadResponse
    a stream that ends without its closing event          -> ProviderUnavailable (it was cut)
    a body or stream longer than max_response_bytes       -> ProviderTooLarge (not retried)
    an error object inside a 2xx body or stream           -> ProviderStreamError

Each message names the provider and the URL without credentials; any key a server or a library
echoes back is redacted. The key itself is read from the environment at call time, never stored.
"""

from __future__ import annotations

import codecs
import email.utils
import json
import math
import os
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timezone
from typing import Any, AsyncIterator, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from steplog.providers.base import (
    LLMRequest,
    LLMResult,
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    ProviderTooLarge,
    ProviderTruncated,
    ProviderUnavailable,
)
from steplog.providers.config import ProviderConfig, url_problem
from steplog.words import counted

SERVER_MESSAGE_MAX = 500
# what of an error status's body is read: its message is cut to SERVER_MESSAGE_MAX anyway
ERROR_BODY_MAX = 64 * 1024
_ERROR_HEADERS = ("content-type", "retry-after")
# A header value must be visible ASCII; anything else (a stray newline from `$(cat keyfile)`, a
# non-ASCII char) would fail inside httpx/h11 with an error text that may quote the header.
_VALID_KEY = re.compile(r"[\x21-\x7e]+")


# -- pure helpers -----------------------------------------------------------------------------------


def public_url(url: str) -> str:
    """The URL without userinfo, query or fragment: safe to print and to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header (delta-seconds or an HTTP date) asks for, >= 0, uncapped.

    Uncapped so the log shows what the server asked; the one cap is the retry policy's.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (now if now is not None else time.time())
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def error_message(body: Any) -> str | None:
    """The message in an error body of any of the three protocols, if there is one.

    OpenAI and Anthropic: {"error": {"message": ...}}; Ollama: {"error": "..."}.
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    message: Any = None
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    if not isinstance(message, str):
        message = body.get("message")
    if isinstance(message, str) and message.strip():
        return message[:SERVER_MESSAGE_MAX]
    return None


def server_message(response: httpx.Response) -> str:
    """The error message a server put in its body, else the start of the body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:200].strip() or response.reason_phrase
    return error_message(body) or json.dumps(body)[:200]


def count(value: Any) -> int:
    """A token count from a usage block; absent or nonsense counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return int(value)
    return 0


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def model_ids(data: Any) -> list[str] | None:
    """`data[].id` of an OpenAI- or Anthropic-style model list; None for another shape."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]


def parse_json(text: str) -> Any:
    """JSON, or Unusable naming what came instead."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Unusable(f"answer is not JSON: {text[:80]!r}") from exc


class LineSplitter:
    """Lines of a body that arrives in byte chunks, split as SSE and NDJSON split them.

    `feed(chunk)` returns the lines the chunk completes; `end()` the unterminated last one.
    A line ends at CR, LF or CRLF (bytes.splitlines), never at the Unicode separators (U+2028,
    U+0085 …) that str.splitlines also splits on: those may stand raw inside a JSON string.
    Each chunk is scanned once, so a long line arriving in many chunks costs linear time.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        start = len(self._buf)
        self._buf += chunk
        # the last line end inside this chunk; a CR at its very end may be half of a CRLF
        tail = len(chunk) - 1 if chunk.endswith(b"\r") else len(chunk)
        end = max(chunk.rfind(b"\n", 0, tail), chunk.rfind(b"\r", 0, tail))
        if end < 0:
            return []
        end += start + 1
        with memoryview(self._buf) as view:
            complete = bytes(view[:end])
        del self._buf[:end]
        return [line.decode("utf-8", "replace") for line in complete.splitlines()]

    def end(self) -> list[str]:
        rest, self._buf = bytes(self._buf), bytearray()
        return [line.decode("utf-8", "replace") for line in rest.splitlines()]


class TextParts:
    """The text of a streamed answer, piece by piece, in bounded memory.

    A list of pieces costs a str object (about 50 bytes) per piece: several times the text itself
    for the few-character deltas servers stream. A StringIO grown to 100 MB by reallocation
    leaves freed blocks behind that the allocator cannot reuse for the next large object (RSS
    measured at 3x the text after encoding it). So pieces are joined into 1 MiB chunks as they
    come, and the chunks once at the end: 2x the text at the join, freed in one piece.
    """

    CHUNK = 2**20

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._pending: list[str] = []
        self._size = 0

    def append(self, piece: str) -> None:
        self._pending.append(piece)
        self._size += len(piece)
        if self._size >= self.CHUNK:
            self._chunks.append("".join(self._pending))
            self._pending.clear()
            self._size = 0

    def text(self) -> str:
        if self._pending:
            self._chunks.append("".join(self._pending))
            self._pending.clear()
            self._size = 0
        if len(self._chunks) == 1:
            return self._chunks[0]
        text = "".join(self._chunks)
        self._chunks = [text]  # the pieces go now; text() again returns the same str
        return text


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: str


class SSEParser:
    """Server-sent events, line by line: `feed` returns an event when a blank line ends one."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SSEEvent | None:
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None

    def flush(self) -> SSEEvent | None:
        """The event in progress, if any (also for a stream whose last blank line is missing)."""
        if not self._data and not self._event:
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data))
        self._event, self._data = "", []
        return event


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """The server-sent events of a stream's lines, an unterminated last one included."""
    parser = SSEParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
    last = parser.flush()
    if last is not None:
        yield last


def chat_messages(request: LLMRequest) -> list[dict[str, str]]:
    """The system prompt, if any, and the prompt as chat messages (OpenAI's and Ollama's shape)."""
    messages = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": request.prompt})
    return messages


# -- what the protocol parsers raise; complete() turns them into the error tree ---------------------


class Unusable(Exception):
    """A 2xx answer we cannot use -> ProviderBadResponse."""


class StreamCut(Exception):
    """A stream that ended before its closing event -> ProviderUnavailable (retryable)."""


class TooLarge(Exception):
    """More bytes than max_response_bytes -> ProviderTooLarge (not retryable)."""


class ErrorInAnswer(Exception):
    """The server reported an error inside a 2xx answer -> ProviderStreamError."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def raise_if_error(data: Any) -> None:
    """An error object where the answer should be (OpenAI's and Ollama's shape): ErrorInAnswer."""
    if isinstance(data, dict) and "error" in data:
        raise ErrorInAnswer(error_message(data) or json.dumps(data)[:200])


# -- the wire ---------------------------------------------------------------------------------------


def read_key(provider: str, env: str | None) -> str | None:
    """The API key from the variable named `env`, read now; errors name the variable only."""
    if not env:
        return None
    key = os.environ.get(env, "").strip()
    if not key:
        raise ProviderError(
            f"environment variable {env} (api_key_env) is not set", provider=provider
        )
    if not _VALID_KEY.fullmatch(key):
        raise ProviderError(
            f"environment variable {env} (api_key_env) holds whitespace, control or "
            "non-ASCII characters; it cannot be sent as a header",
            provider=provider,
        )
    return key


class Wire:
    """One provider's HTTP: its client and timeout, its URLs, and the secrets kept out of messages."""

    def __init__(
        self,
        provider: str,
        client: httpx.AsyncClient,
        base_url: str | None,
        timeout_s: float,
        max_bytes: int | None = None,
    ) -> None:
        problem = url_problem(base_url) if base_url else "is required"
        if problem:
            raise ValueError(f"provider {provider!r}: base_url {problem}")
        parts = urlsplit(base_url)
        self.provider = provider
        self.client = client
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes  # bytes of an answer's body, decompressed; None: no limit
        # one bound for connect, read (each gap between bytes), write and pool
        self.timeout = httpx.Timeout(timeout_s)
        self._base = parts._replace(fragment="")
        # URL parts that may be credentials (a password, a token used as the user name, an
        # `?api-key=` query): redacted wherever a server or a library echoes them back.
        username = parts.username if parts.username and len(parts.username) >= 8 else None
        self._url_secrets = [s for s in (parts.password, username, parts.query) if s]

    @property
    def base_path(self) -> str:
        return self._base.path.rstrip("/")

    def url(self, path: str) -> str:
        """`path` appended to the base URL's path; a query (`?api-version=...`) stays a query."""
        return urlunsplit(self._base._replace(path=self.base_path + path))

    def redact(self, message: str, key: str | None) -> str:
        for secret in [key, *self._url_secrets]:
            if secret:
                message = message.replace(secret, "[redacted]")
        return message

    def bad(
        self, url: str, why: str, key: str | None, status: int | None = 200
    ) -> ProviderBadResponse:
        return ProviderBadResponse(
            f"{public_url(url)}: {self.redact(why, key)}", provider=self.provider, status=status
        )

    def http_error(self, url: str, response: httpx.Response, key: str | None) -> ProviderHTTPError:
        message = self.redact(server_message(response), key)
        return ProviderHTTPError(
            f"{public_url(url)}: HTTP {response.status_code}: {message}",
            provider=self.provider,
            status=response.status_code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    @asynccontextmanager
    async def mapped(self, url: str, key: str | None) -> AsyncIterator[None]:
        """httpx exceptions, and the protocol parsers' ones, become the provider error tree."""
        safe = public_url(url)
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                f"{safe}: no answer within {self.timeout_s}s ({type(exc).__name__})",
                provider=self.provider,
            ) from exc
        except httpx.DecodingError as exc:
            raise self.bad(url, f"undecodable body ({type(exc).__name__})", key) from exc
        except httpx.TransportError as exc:
            detail = self.redact(str(exc), key) or "connection failed"
            raise ProviderUnavailable(
                f"{safe}: {type(exc).__name__}: {detail}", provider=self.provider
            ) from exc
        except Unusable as exc:
            raise self.bad(url, str(exc), key) from exc
        except TooLarge as exc:
            raise ProviderTooLarge(
                f"{safe}: {exc}; raise max_response_bytes on the provider if it is expected",
                provider=self.provider,
                status=200,
            ) from exc
        except StreamCut as exc:
            raise ProviderUnavailable(
                f"{safe}: {self.redact(str(exc), key)}", provider=self.provider
            ) from exc
        except ErrorInAnswer as exc:
            raise ProviderStreamError(
                f"{safe}: the server reported an error: {self.redact(exc.message, key)}",
                provider=self.provider,
                retryable=exc.retryable,
            ) from exc

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        key: str | None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """One request; the parsed JSON of a 2xx answer, or a ProviderError."""
        async with self.mapped(url, key):
            async with self.client.stream(
                method, url, json=body, headers=headers, timeout=self.timeout
            ) as response:
                if not response.is_success:
                    raise await self.error_of(url, response, key)
                text = await self.read_text(response)
            return parse_json(text)  # the text and its parse: 2x the answer at the peak

    async def error_of(self, url: str, response: httpx.Response, key: str | None) -> ProviderError:
        """The ProviderHTTPError of a non-2xx answer, from at most ERROR_BODY_MAX of its body."""
        head = bytearray()
        async for chunk in response.aiter_bytes():
            head += chunk
            if len(head) >= ERROR_BODY_MAX:
                break
        # the headers a message needs; not Content-Encoding: these bytes are already decoded
        kept = {k: v for k, v in response.headers.items() if k.lower() in _ERROR_HEADERS}
        read = httpx.Response(
            response.status_code, headers=kept, content=bytes(head[:ERROR_BODY_MAX])
        )
        return self.http_error(url, read, key)

    def _check_declared(self, response: httpx.Response) -> None:
        """Refuse at once a body whose Content-Length already says it is too long."""
        declared = response.headers.get("content-length", "")
        encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
        if self.max_bytes is not None and declared.isdigit() and not encoded:
            if int(declared) > self.max_bytes:
                raise TooLarge(
                    f"the answer is {int(declared):,} bytes (Content-Length), over "
                    f"max_response_bytes = {self.max_bytes:,}"
                )

    def _over(self) -> TooLarge:
        return TooLarge(
            f"the answer passed max_response_bytes = {self.max_bytes:,} bytes; "
            "the rest was not read"
        )

    async def read_text(self, response: httpx.Response) -> str:
        """The whole body as UTF-8 text, refusing it past max_bytes without reading further.

        Decoded chunk by chunk into TextParts: the bytes are never held whole beside the text,
        and no buffer is grown by reallocation (which leaves unusable holes in the heap).
        """
        self._check_declared(response)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        parts = TextParts()
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if self.max_bytes is not None and total > self.max_bytes:
                raise self._over()
            parts.append(decoder.decode(chunk))
        parts.append(decoder.decode(b"", final=True))
        return parts.text()

    async def lines(self, response: httpx.Response) -> AsyncIterator[str]:
        """The body's lines as they arrive, refusing it past max_bytes without reading further."""
        self._check_declared(response)
        splitter = LineSplitter()
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if self.max_bytes is not None and total > self.max_bytes:
                raise self._over()
            for line in splitter.feed(chunk):
                yield line
        for line in splitter.end():
            yield line

    @asynccontextmanager
    async def stream(
        self, url: str, *, headers: dict[str, str], key: str | None, body: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[str]]:
        """POST and yield the answer's lines; errors raised while reading them are mapped too."""
        async with self.mapped(url, key):
            async with self.client.stream(
                "POST", url, json=body, headers=headers, timeout=self.timeout
            ) as response:
                if not response.is_success:
                    raise await self.error_of(url, response, key)
                lines = self.lines(response)
                try:
                    yield lines
                finally:
                    await lines.aclose()


# -- the shape of every HTTP provider ---------------------------------------------------------------


class HTTPProvider:
    """`complete` for a chat endpoint: key, headers, body, one POST (streamed or not), parse.

    A subclass names its endpoint (`chat_path`) and finish reasons that mean "cut off"
    (`truncated`), and writes `headers`, `body`, `parse` and `read_stream` for its protocol.
    """

    kind: ClassVar[str]
    chat_path: ClassVar[str]
    truncated: ClassVar[frozenset[str]]

    def __init__(self, name: str, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        self.name = name
        self.config = config
        base_url = config.resolved_base_url(os.environ)
        self.wire = Wire(name, client, base_url, config.timeout_s, config.max_response_bytes)
        self.url = self.endpoint()
        self.safe_url = public_url(self.url)

    def endpoint(self) -> str:
        return self.wire.url(self.chat_path)

    def key(self) -> str | None:
        return read_key(self.name, self.config.api_key_env)

    def headers(self, key: str | None) -> dict[str, str]:
        raise NotImplementedError

    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, data: Any, request: LLMRequest) -> LLMResult:
        """A whole (non-streamed) answer; raises Unusable or ErrorInAnswer."""
        raise NotImplementedError

    async def read_stream(self, lines: AsyncIterator[str], request: LLMRequest) -> LLMResult:
        """A streamed answer, to its closing event; raises Unusable, StreamCut or ErrorInAnswer."""
        raise NotImplementedError

    async def complete(self, request: LLMRequest) -> LLMResult:
        key = self.key()
        headers = {"Content-Type": "application/json", **self.headers(key)}
        stream = self.config.stream
        body = self.body(request, stream)
        if stream:
            headers["Accept"] = "text/event-stream, application/x-ndjson"
            async with self.wire.stream(self.url, headers=headers, key=key, body=body) as lines:
                result = await self.read_stream(lines, request)
        else:
            headers["Accept"] = "application/json"
            data = await self.wire.request_json(
                "POST", self.url, headers=headers, key=key, body=body
            )
            async with self.wire.mapped(self.url, key):
                result = self.parse(data, request)
        if result.finish_reason in self.truncated and request.on_truncation == "error":
            raise ProviderTruncated(
                f"{self.safe_url}: the answer was cut off at the token limit "
                f"(finish reason {result.finish_reason!r}, {counted(result.tokens_out, 'token')} out); "
                'raise max_tokens in options, or set on_truncation = "accept" on the step',
                provider=self.name,
                tokens_in=result.tokens_in,
                tokens_out=result.tokens_out,
            )
        return result

    async def check(self) -> str:
        """Reach the server the cheapest way; a short note on success, a ProviderError if not."""
        raise NotImplementedError

    async def check_model_list(self, url: str) -> str:
        """GET an OpenAI/Anthropic-style model list at `url` and say whether the model is in it.

        A server without that route (404: some OpenAI-compatible proxies, Anthropic-compatible
        gateways) gets one request for one token instead, which proves the chat route works.
        """
        key = self.key()
        headers = {"Accept": "application/json", **self.headers(key)}
        try:
            data = await self.wire.request_json("GET", url, headers=headers, key=key)
        except ProviderHTTPError as exc:
            if exc.status != 404:
                raise
            model = self.config.model
            request = LLMRequest(
                step="providers-check", prompt="ping", model=model, options={"max_tokens": 1}
            )
            result = await self.complete(request)
            return f"no model list; a 1-token request to {model} answered ({result.finish_reason})"
        ids = model_ids(data)
        if ids is None:
            raise self.wire.bad(url, "the model list is not in the expected shape", key)
        listed = "listed" if self.config.model in ids else "not listed"
        return f"{counted(len(ids), 'model')}; {self.config.model} {listed}"
