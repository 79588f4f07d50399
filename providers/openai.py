"""Any OpenAI-compatible chat server: POST {base_url}/chat/completions over an injected httpx client.

Failures map once onto the tree in providers.base; retrying is the executor's business. The API
key is read from the environment at call time and goes only into the Authorization header.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
from datetime import timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from providers.base import (
    LLMRequest,
    LLMResult,
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderUnavailable,
)
from providers.config import ProviderConfig

RETRY_AFTER_MAX_S = 300.0
SERVER_MESSAGE_MAX = 500
# A header value must be visible ASCII; anything else (a stray newline from `$(cat keyfile)`, a
# non-ASCII char) would fail inside httpx/h11 with an error text that may quote the header.
_VALID_KEY = re.compile(r"[\x21-\x7e]+")


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
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), in [0, 300]."""
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
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, RETRY_AFTER_MAX_S))


def server_message(response: httpx.Response) -> str:
    """The error message an OpenAI-style server put in its body, else the start of the body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:200].strip() or response.reason_phrase
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        if not isinstance(message, str):
            message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        message = json.dumps(body)[:200]
    return message[:SERVER_MESSAGE_MAX]


def _count(value: Any) -> int:
    """A token count from the usage block; absent or nonsense counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value == value and value >= 0:
        return int(value)
    return 0


class OpenAIProvider:
    kind = "openai"

    def __init__(self, name: str, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        if not config.base_url:
            raise ValueError(f"provider {name!r}: base_url is required")
        parts = urlsplit(config.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"provider {name!r}: base_url must be an http(s) URL with a host, "
                f"got {public_url(config.base_url)!r}"
            )
        self.name = name
        self.config = config
        self.client = client
        # Appended to the path, not the string: a query (`?api-version=...`) stays a query.
        path = parts.path.rstrip("/") + "/chat/completions"
        self.url = urlunsplit(parts._replace(path=path, fragment=""))
        self.safe_url = public_url(self.url)
        # URL parts that may be credentials (a password, a token used as the user name, an
        # `?api-key=` query): redacted wherever a server or a library echoes them back.
        username = parts.username if parts.username and len(parts.username) >= 8 else None
        self._url_secrets = [s for s in (parts.password, username, parts.query) if s]

    def _key(self) -> str | None:
        env = self.config.api_key_env
        if not env:
            return None
        key = os.environ.get(env, "").strip()
        if not key:
            raise ProviderError(
                f"environment variable {env} (api_key_env) is not set", provider=self.name
            )
        if not _VALID_KEY.fullmatch(key):
            raise ProviderError(
                f"environment variable {env} (api_key_env) holds whitespace, control or "
                "non-ASCII characters; it cannot be sent as a header",
                provider=self.name,
            )
        return key

    def _redact(self, message: str, key: str | None) -> str:
        """Servers sometimes echo the key they were sent; it must not reach the log."""
        for secret in [key, *self._url_secrets]:
            if secret:
                message = message.replace(secret, "[redacted]")
        return message

    def body(self, request: LLMRequest) -> dict[str, Any]:
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        # Options go first so they can never replace the model or the rendered messages.
        body: dict[str, Any] = {**request.options, "model": request.model, "messages": messages}
        if request.output == "json" and "response_format" not in body:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, request: LLMRequest) -> LLMResult:
        key = self._key()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(self.config.timeout_s)
        try:
            response = await self.client.post(
                self.url, json=self.body(request), headers=headers, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                f"{self.safe_url}: no answer within {self.config.timeout_s}s ({type(exc).__name__})",
                provider=self.name,
            ) from exc
        except httpx.TransportError as exc:
            detail = self._redact(str(exc), key) or "connection failed"
            raise ProviderUnavailable(
                f"{self.safe_url}: {type(exc).__name__}: {detail}", provider=self.name
            ) from exc
        except httpx.DecodingError as exc:  # a body whose Content-Encoding does not decode
            raise ProviderBadResponse(
                f"{self.safe_url}: undecodable body ({type(exc).__name__})", provider=self.name
            ) from exc
        if not response.is_success:
            message = self._redact(server_message(response), key)
            raise ProviderHTTPError(
                f"{self.safe_url}: HTTP {response.status_code}: {message}",
                provider=self.name,
                status=response.status_code,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return self._result(request, response, key)

    def _result(self, request: LLMRequest, response: httpx.Response, key: str | None) -> LLMResult:
        def bad(why: str) -> ProviderBadResponse:
            return ProviderBadResponse(
                f"{self.safe_url}: {self._redact(why, key)}",
                provider=self.name,
                status=response.status_code,
            )

        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad(f"answer is not JSON: {response.text[:80]!r}") from exc
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices:
            raise bad("answer has no choices")
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise bad("answer has no message content")
        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        finish = choice.get("finish_reason")
        model = body.get("model")
        return LLMResult(
            text=content,
            model=model if isinstance(model, str) and model else request.model,
            tokens_in=_count(usage.get("prompt_tokens")),
            tokens_out=_count(usage.get("completion_tokens")),
            finish_reason=finish if isinstance(finish, str) else None,
        )
