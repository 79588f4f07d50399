"""Any OpenAI-compatible chat server: POST {base_url}/chat/completions, whole or as SSE.

The wire (timeouts, status codes, Retry-After, redaction) is providers.http's; this module only
knows the protocol's shapes. Streaming sends `stream: true` with
`stream_options.include_usage`, reads `data:` chunks of `choices[0].delta.content` until
`data: [DONE]`, and takes the usage block from the last chunk.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any, AsyncIterator

from steplog.providers.base import LLMRequest, LLMResult
from steplog.providers.http import (
    HTTPProvider,
    StreamCut,
    TextParts,
    Unusable,
    chat_messages,
    count,
    parse_json,
    raise_if_error,
    sse_events,
    text_or_none,
)

__all__ = ["OpenAIProvider"]


class _Stream:
    """The state of one streamed answer, chunk by chunk (pure: no I/O)."""

    def __init__(self) -> None:
        self.parts = TextParts()
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.model: str | None = None
        self.done = False
        self.saw_choice = False

    def feed(self, data: str) -> None:
        if data.strip() == "[DONE]":
            self.done = True
            return
        chunk = parse_json(data)
        if not isinstance(chunk, dict):
            raise Unusable(f"stream chunk is not an object: {data[:80]!r}")
        raise_if_error(chunk)
        self.model = text_or_none(chunk.get("model")) or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return  # the usage-only last chunk has "choices": []
        choice = choices[0]
        self.saw_choice = True
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            self.parts.append(content)
        self.finish = text_or_none(choice.get("finish_reason")) or self.finish


class OpenAIProvider(HTTPProvider):
    kind = "openai"
    chat_path = "/chat/completions"
    truncated = frozenset({"length"})

    def headers(self, key: str | None) -> dict[str, str]:
        headers = {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if self.config.organization:
            headers["OpenAI-Organization"] = self.config.organization
        if self.config.project:
            headers["OpenAI-Project"] = self.config.project
        return headers

    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        # Options go first so they can never replace the model or the rendered messages.
        body: dict[str, Any] = {
            **request.options,
            "model": request.model,
            "messages": chat_messages(request),
        }
        json_mode = self.config.json_mode is not False
        if request.output == "json" and json_mode and "response_format" not in body:
            body["response_format"] = {"type": "json_object"}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def parse(self, data: Any, request: LLMRequest) -> LLMResult:
        raise_if_error(data)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise Unusable("answer has no choices")
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise Unusable("answer has no message content")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return LLMResult(
            text=content,
            model=text_or_none(data.get("model")) or request.model,
            tokens_in=count(usage.get("prompt_tokens")),
            tokens_out=count(usage.get("completion_tokens")),
            finish_reason=text_or_none(choice.get("finish_reason")),
        )

    async def read_stream(self, lines: AsyncIterator[str], request: LLMRequest) -> LLMResult:
        state = _Stream()
        async with aclosing(sse_events(lines)) as events:
            async for event in events:
                if event.data:
                    state.feed(event.data)
                    if state.done:
                        break
        if not state.done:
            raise StreamCut("the stream ended before data: [DONE]")
        if not state.saw_choice:
            raise Unusable("the stream carried no choices")
        return LLMResult(
            text=state.parts.text(),
            model=state.model or request.model,
            tokens_in=count(state.usage.get("prompt_tokens")),
            tokens_out=count(state.usage.get("completion_tokens")),
            finish_reason=state.finish,
        )

    async def check(self) -> str:
        return await self.check_model_list(self.wire.url("/models"))
