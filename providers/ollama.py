"""Ollama's native chat API: POST {base_url}/api/chat, whole or as NDJSON lines.

`options` go to Ollama as its `options` object (temperature, num_ctx, num_predict, seed, …);
`keep_alive` is sent when configured; a json step asks for `format: "json"`. A stream is one JSON
object per line, the last with `done: true`, `done_reason` and the token counts
(`prompt_eval_count` in, `eval_count` out). An `{"error": ...}` object, even inside a 200
stream, is an error.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from steplog.providers.base import LLMRequest, LLMResult, ProviderError
from steplog.providers.http import (
    HTTPProvider,
    StreamCut,
    TextParts,
    Unusable,
    chat_messages,
    count,
    parse_json,
    public_url,
    raise_if_error,
    text_or_none,
)
from steplog.words import counted


class OllamaProvider(HTTPProvider):
    kind = "ollama"
    chat_path = "/api/chat"
    truncated = frozenset({"length"})

    def headers(self, key: str | None) -> dict[str, str]:
        # Ollama itself takes no key; one in front of a proxy that wants it is sent as a Bearer.
        return {"Authorization": f"Bearer {key}"} if key else {}

    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": chat_messages(request),
            "stream": stream,
        }
        if request.options:
            body["options"] = dict(request.options)
        if self.config.keep_alive is not None:
            body["keep_alive"] = self.config.keep_alive
        if request.output == "json" and self.config.json_mode is not False:
            body["format"] = "json"
        return body

    def _result(self, data: dict[str, Any], text: str, request: LLMRequest) -> LLMResult:
        return LLMResult(
            text=text,
            model=text_or_none(data.get("model")) or request.model,
            tokens_in=count(data.get("prompt_eval_count")),
            tokens_out=count(data.get("eval_count")),
            finish_reason=text_or_none(data.get("done_reason")),
        )

    def parse(self, data: Any, request: LLMRequest) -> LLMResult:
        raise_if_error(data)
        if not isinstance(data, dict):
            raise Unusable("answer is not an object")
        message = data.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise Unusable("answer has no message content")
        return self._result(data, content, request)

    async def read_stream(self, lines: AsyncIterator[str], request: LLMRequest) -> LLMResult:
        parts = TextParts()
        async for line in lines:
            if not line.strip():
                continue
            data = parse_json(line)
            raise_if_error(data)
            if not isinstance(data, dict):
                raise Unusable(f"stream line is not an object: {line[:80]!r}")
            message = data.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif not data.get("done"):
                raise Unusable("stream line has no message content")
            if data.get("done") is True:
                return self._result(data, parts.text(), request)
        raise StreamCut("the stream ended before the line with done: true")

    async def check(self) -> str:
        key = self.key()
        url = self.wire.url("/api/tags")
        data = await self.wire.request_json(
            "GET", url, headers={"Accept": "application/json", **self.headers(key)}, key=key
        )
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise self.wire.bad(url, "the model list is not in the expected shape", key)
        names = {
            m.get(field)
            for m in models
            if isinstance(m, dict)
            for field in ("name", "model")
            if isinstance(m.get(field), str)
        }
        wanted = self.config.model
        if wanted in names or f"{wanted}:latest" in names:
            return f"{counted(len(models), 'model')}; {wanted} is pulled"
        raise ProviderError(
            f"{public_url(url)}: model {wanted!r} is not pulled on this "
            f"server (ollama pull {wanted}); it has {counted(len(models), 'model')}",
            provider=self.name,
        )
