"""Any OpenAI-compatible chat server: POST {base_url}/chat/completions over an injected httpx client.

Failures map once onto the tree in providers.base; retrying is the executor's business. The API
key is read from the environment at call time and goes only into the Authorization header.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
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


def public_url(url: str) -> str:
    """The URL without userinfo, query or fragment: safe to print and to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (now if now is not None else time.time())
    return max(0.0, min(seconds, RETRY_AFTER_MAX_S))


def server_message(response: httpx.Response) -> str:
    """The error message an OpenAI-style server put in its body, else the start of the body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(body.get("message"), str):
            return body["message"]
    return json.dumps(body)[:200]


class OpenAIProvider:
    kind = "openai"

    def __init__(self, name: str, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        if not config.base_url:
            raise ValueError(f"provider {name!r}: base_url is required")
        self.name = name
        self.config = config
        self.client = client
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.safe_url = public_url(self.url)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise ProviderError(
                    f"environment variable {self.config.api_key_env} (api_key_env) is not set",
                    provider=self.name,
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, message: str) -> str:
        """Servers sometimes echo the key they were sent; it must not reach the log."""
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        return message.replace(key, "[redacted]") if key else message

    def body(self, request: LLMRequest) -> dict[str, Any]:
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {**request.options, "model": request.model, "messages": messages}
        if request.output == "json" and "response_format" not in body:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, request: LLMRequest) -> LLMResult:
        timeout = httpx.Timeout(self.config.timeout_s)
        try:
            response = await self.client.post(
                self.url, json=self.body(request), headers=self._headers(), timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                f"{self.safe_url}: no answer within {self.config.timeout_s}s ({type(exc).__name__})",
                provider=self.name,
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"{self.safe_url}: {type(exc).__name__}: {exc or 'connection failed'}",
                provider=self.name,
            ) from exc
        if response.status_code >= 400:
            message = self._redact(server_message(response))
            raise ProviderHTTPError(
                f"{self.safe_url}: HTTP {response.status_code}: {message}",
                provider=self.name,
                status=response.status_code,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return self._result(request, response)

    def _result(self, request: LLMRequest, response: httpx.Response) -> LLMResult:
        def bad(why: str) -> ProviderBadResponse:
            return ProviderBadResponse(
                f"{self.safe_url}: {why}", provider=self.name, status=response.status_code
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
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return LLMResult(
            text=content,
            model=str(body.get("model") or request.model),
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )
