"""Anthropic's Messages API: POST {base_url}/v1/messages, whole or as SSE.

Headers `x-api-key` and `anthropic-version`; `max_tokens` is required (from options, checked
when the pipeline loads); the system prompt is the top-level `system` field. A stream is
message_start (model, input tokens), content_block_delta text_delta chunks, message_delta
(stop_reason, output tokens), message_stop; `event: error` is an error, retryable when its type
says the cause is transient (overloaded, api, rate limit). `stop_reason = "max_tokens"` is
treated like OpenAI's `length`.
"""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any, AsyncIterator

from steplog.providers.base import LLMRequest, LLMResult, ProviderError
from steplog.providers.http import (
    ErrorInAnswer,
    HTTPProvider,
    StreamCut,
    TextParts,
    Unusable,
    count,
    error_message,
    parse_json,
    sse_events,
    text_or_none,
)

DEFAULT_VERSION = "2023-06-01"
# error types of `event: error` that say "try again later"
TRANSIENT_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error"})


def _error(data: dict[str, Any]) -> ErrorInAnswer:
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    message = error_message(data) or json.dumps(data)[:200]
    return ErrorInAnswer(f"{kind}: {message}" if kind else message, kind in TRANSIENT_ERRORS)


class _Stream:
    """The state of one streamed message, event by event (pure: no I/O)."""

    def __init__(self) -> None:
        self.parts = TextParts()
        self.saw_text = False
        self.stop: str | None = None
        self.model: str | None = None
        self.tokens_in = 0
        self.tokens_out = 0
        self.done = False

    def feed(self, event: str, data: str) -> None:
        payload = parse_json(data) if data else {}
        if not isinstance(payload, dict):
            raise Unusable(f"stream event is not an object: {data[:80]!r}")
        kind = payload.get("type", event)
        if event == "error" or kind == "error":
            raise _error(payload)
        if kind == "message_start":
            message = payload.get("message")
            message = message if isinstance(message, dict) else {}
            self.model = text_or_none(message.get("model"))
            usage = message.get("usage")
            if isinstance(usage, dict):
                self.tokens_in = count(usage.get("input_tokens"))
                self.tokens_out = count(usage.get("output_tokens"))
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str):
                    self.parts.append(text)
                    self.saw_text = True
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                self.stop = text_or_none(delta.get("stop_reason")) or self.stop
            usage = payload.get("usage")
            if isinstance(usage, dict):
                # message_delta's counts are cumulative; input may be repeated there
                self.tokens_out = count(usage.get("output_tokens")) or self.tokens_out
                self.tokens_in = count(usage.get("input_tokens")) or self.tokens_in
        elif kind == "message_stop":
            self.done = True
        # ping, content_block_start/stop and unknown future events carry nothing we need


class AnthropicProvider(HTTPProvider):
    kind = "anthropic"
    truncated = frozenset({"max_tokens"})

    chat_path = "/messages"

    def endpoint(self) -> str:
        return self._v1(self.chat_path)

    def _v1(self, path: str) -> str:
        """`/v1` + path under base_url, which may be given with or without its `/v1`."""
        return self.wire.url(("" if self.wire.base_path.endswith("/v1") else "/v1") + path)

    def headers(self, key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": self.config.anthropic_version or DEFAULT_VERSION}
        if key:
            headers["x-api-key"] = key
        return headers

    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        if not isinstance(request.options.get("max_tokens"), int):
            raise ProviderError(
                "anthropic needs options.max_tokens (an integer) on the provider or the step",
                provider=self.name,
            )
        body: dict[str, Any] = {
            **request.options,
            "model": request.model,
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if request.system:
            body["system"] = request.system
        if stream:
            body["stream"] = True
        return body

    def parse(self, data: Any, request: LLMRequest) -> LLMResult:
        if isinstance(data, dict) and data.get("type") == "error":
            raise _error(data)
        if not isinstance(data, dict):
            raise Unusable("answer is not an object")
        content = data.get("content")
        blocks = content if isinstance(content, list) else []
        texts = [
            b["text"]
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        if not texts:
            raise Unusable("answer has no text content")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return LLMResult(
            text="".join(texts),
            model=text_or_none(data.get("model")) or request.model,
            tokens_in=count(usage.get("input_tokens")),
            tokens_out=count(usage.get("output_tokens")),
            finish_reason=text_or_none(data.get("stop_reason")),
        )

    async def read_stream(self, lines: AsyncIterator[str], request: LLMRequest) -> LLMResult:
        state = _Stream()
        async with aclosing(sse_events(lines)) as events:
            async for event in events:
                state.feed(event.event, event.data)
                if state.done:
                    break
        if not state.done:
            raise StreamCut("the stream ended before message_stop")
        if not state.saw_text:
            raise Unusable("the stream carried no text content")
        return LLMResult(
            text=state.parts.text(),
            model=state.model or request.model,
            tokens_in=state.tokens_in,
            tokens_out=state.tokens_out,
            finish_reason=state.stop,
        )

    async def check(self) -> str:
        return await self.check_model_list(self._v1("/models"))
