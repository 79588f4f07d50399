"""A real HTTP server on 127.0.0.1 speaking three chat wire protocols, with faults.

Stdlib only, so the subprocess form runs under any python3.

Routes (the protocol is chosen by the route; any path prefix before them is accepted):

    POST .../chat/completions   OpenAI-compatible (SSE when "stream": true, `data: [DONE]` last)
    POST .../api/chat           Ollama (NDJSON lines when "stream": true, `done: true` last)
    POST .../v1/messages        Anthropic Messages (SSE when "stream": true, message_stop last)
    GET  .../models             the model list (Anthropic's shape when an anthropic-version
                                header is sent, else OpenAI's)
    GET  .../api/tags           Ollama's model list

In-process: the fixtures in tests/conftest.py start and stop it (`fake_llm`, `fake_llm_factory`,
`shared_fake_llm`); by hand, `with FakeLLMServer() as server: ...`. `server.url` is the OpenAI
base_url (`http://127.0.0.1:PORT/v1`), `server.base` the bare `http://127.0.0.1:PORT` (the
base_url for ollama and anthropic), `server.calls` records each request as
`{"method", "path", "headers", "body"}` (body: parsed JSON, None for a GET or a non-JSON body),
`server.models` is the list every model list shows, `server.decide` (None: the queue below), when
set, is called with each completion request's body in its handler thread (so it may block, to
hold the call open) and returns the fault for it (None: the responder's answer),
`server.max_in_flight` is the most completion requests it was answering at once,
`server.require_key` (None: no check)
makes every request without that key (Bearer or x-api-key) a 401 with the protocol's error
body, `server.no_model_list` makes the model-list routes 404, `server.reset()` puts all of
these back as they were at the start, and `server.faults` is a queue of faults the next
completion requests get, one each, whatever their protocol:

    ("status", code, body_or_None, headers)   an error answer, e.g. ("status", 429, None, {"Retry-After": "1"});
                                              body: a dict (sent as JSON), a str (sent as is), or
                                              None for the protocol's error body saying "injected CODE"
    ("delay", seconds)                         a slow first byte, then the normal answer
    ("drop",)                                  part of the body (or of the stream), then the socket closes
    ("cut",)                                   part of the body (or of the stream), properly ended:
                                               the closing event ([DONE], done: true, message_stop) never comes
    ("garbage",)                               200 with a body (or a stream line) that is not JSON
    ("empty",)                                 200 with nothing to use: openai "choices": [],
                                               anthropic "content": [], ollama no "message"
    ("empty_choices",)                         the same (its older name)
    ("stream_error", message)                  200 whose body (or stream, after a first chunk) is
                                               the protocol's error object
    ("truncated", text)                        200 with this text, stopped at the token limit
                                               (length / max_tokens)
    ("answer", text)                           200 with this assistant text
    ("json", payload)                          200 with exactly this JSON body

Without a fault, `responder(body) -> str` decides the assistant text (default_responder). A
streamed answer carries the same text and token counts as the whole one.

As a subprocess:
    python tests/fake_llm_server.py --port 0 --port-file PATH [--call-log PATH]
                                    [--delay S] [--fail-first N]
writes its port to PATH once listening (atomically: the file never holds a partial number) and
serves until killed. --delay S holds every completion's first byte for S seconds; --fail-first N
answers the first N completions with a 503. --call-log appends one JSON line per completion request:
{"ts", "model", "prompt_sha256" (16 hex chars of the last user message), "fault", "in_flight"
(completion requests being answered at that moment, this one included)}.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

Responder = Callable[[dict], str]
Fault = tuple
STREAM_PIECE = 7  # characters per streamed chunk
DEFAULT_MODELS = ("fake-model",)  # what the model lists show unless a test says otherwise


def last_user_message(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def wants_json(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        return True
    return body.get("format") == "json" or "answer in json" in last_user_message(body).lower()


def default_responder(body: dict[str, Any]) -> str:
    """Deterministic: JSON when JSON mode was asked for, files for a files-looking prompt."""
    prompt = last_user_message(body)
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    if wants_json(body):
        return json.dumps({"verdict": "pass", "answer": digest})
    if '{"files"' in prompt:
        return json.dumps({"files": [{"path": "main.py", "content": f"print('{digest}')\n"}]})
    return f"answer {digest}: " + prompt[:120]


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str) -> list[str]:
    return [text[i : i + STREAM_PIECE] for i in range(0, len(text), STREAM_PIECE)] or [""]


# -- the three protocols: their bodies, error objects and stream framing ----------------------------


class _OpenAI:
    name = "openai"
    stream_type = "text/event-stream"
    stop, limit = "stop", "length"

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        kind = "invalid_request_error" if code < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "code": code}}

    def answer(self, body: dict[str, Any], text: str, finish: str, tin: int) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": tin,
                "completion_tokens": _words(text),
                "total_tokens": tin + _words(text),
            },
        }

    def empty(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [], "usage": {}}

    def _data(self, payload: Any) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    def stream(self, body: dict[str, Any], text: str, finish: str, tin: int) -> list[bytes]:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body["model"]}
        chunks = [self._data({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
        for piece in _pieces(text):
            delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            chunks.append(self._data({**base, "choices": [delta]}))
        chunks.append(
            self._data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": tin, "completion_tokens": _words(text)}
            chunks.append(self._data({**base, "choices": [], "usage": usage}))
        return chunks + [b"data: [DONE]\n\n"]

    def empty_stream(self, body: dict[str, Any]) -> list[bytes]:
        return [self._data({"model": body["model"], "choices": []}), b"data: [DONE]\n\n"]

    def stream_error(self, message: str) -> bytes:
        return self._data({"error": {"message": message, "type": "server_error"}})

    def garbage_line(self) -> bytes:
        return b"data: {not json\n\n"


class _Ollama:
    name = "ollama"
    stream_type = "application/x-ndjson"
    stop, limit = "stop", "length"

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        return {"error": message}

    def _final(self, body: dict[str, Any], finish: str, tin: int, tout: int) -> dict[str, Any]:
        return {
            "model": body["model"],
            "created_at": "2026-01-01T00:00:00Z",
            "done": True,
            "done_reason": finish,
            "prompt_eval_count": tin,
            "eval_count": tout,
            "total_duration": 1000,
        }

    def answer(self, body: dict[str, Any], text: str, finish: str, tin: int) -> dict[str, Any]:
        final = self._final(body, finish, tin, _words(text))
        return {**final, "message": {"role": "assistant", "content": text}}

    def empty(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"model": body["model"], "done": True, "done_reason": "stop"}

    def _line(self, payload: Any) -> bytes:
        return (json.dumps(payload) + "\n").encode()

    def stream(self, body: dict[str, Any], text: str, finish: str, tin: int) -> list[bytes]:
        chunks = [
            self._line(
                {
                    "model": body["model"],
                    "message": {"role": "assistant", "content": p},
                    "done": False,
                }
            )
            for p in _pieces(text)
        ]
        final = self._final(body, finish, tin, _words(text))
        return chunks + [self._line({**final, "message": {"role": "assistant", "content": ""}})]

    def empty_stream(self, body: dict[str, Any]) -> list[bytes]:
        return [self._line({"model": body["model"], "done": False})]

    def stream_error(self, message: str) -> bytes:
        return self._line({"error": message})

    def garbage_line(self) -> bytes:
        return b"{not json\n"


class _Anthropic:
    name = "anthropic"
    stream_type = "text/event-stream"
    stop, limit = "end_turn", "max_tokens"

    def error_body(self, code: int, message: str) -> dict[str, Any]:
        kinds = {
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        kind = kinds.get(code, "invalid_request_error" if code < 500 else "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def answer(self, body: dict[str, Any], text: str, finish: str, tin: int) -> dict[str, Any]:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": finish,
            "stop_sequence": None,
            "usage": {"input_tokens": tin, "output_tokens": _words(text)},
        }

    def empty(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**self.answer(body, "", "end_turn", 0), "content": []}

    def _event(self, event: str, payload: dict[str, Any]) -> bytes:
        return f"event: {event}\ndata: {json.dumps({'type': event, **payload})}\n\n".encode()

    def _start(self, body: dict[str, Any], tin: int) -> bytes:
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "usage": {"input_tokens": tin, "output_tokens": 1},
        }
        return self._event("message_start", {"message": message})

    def _end(self, finish: str, tout: int) -> list[bytes]:
        return [
            self._event(
                "message_delta",
                {"delta": {"stop_reason": finish}, "usage": {"output_tokens": tout}},
            ),
            self._event("message_stop", {}),
        ]

    def stream(self, body: dict[str, Any], text: str, finish: str, tin: int) -> list[bytes]:
        chunks = [
            self._start(body, tin),
            b'event: ping\ndata: {"type": "ping"}\n\n',
            self._event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
        ]
        for piece in _pieces(text):
            delta = {"index": 0, "delta": {"type": "text_delta", "text": piece}}
            chunks.append(self._event("content_block_delta", delta))
        chunks.append(self._event("content_block_stop", {"index": 0}))
        return chunks + self._end(finish, _words(text))

    def empty_stream(self, body: dict[str, Any]) -> list[bytes]:
        return [self._start(body, 0), *self._end("end_turn", 0)]

    def stream_error(self, message: str) -> bytes:
        return self._event("error", {"error": {"type": "overloaded_error", "message": message}})

    def garbage_line(self) -> bytes:
        return b"event: content_block_delta\ndata: {not json\n\n"


OPENAI, OLLAMA, ANTHROPIC = _OpenAI(), _Ollama(), _Anthropic()
Wire = Any  # one of the three above


def _protocol(route: str) -> Optional[Wire]:
    if route.endswith("/chat/completions"):
        return OPENAI
    if route.endswith("/api/chat"):
        return OLLAMA
    if route.endswith("/v1/messages"):
        return ANTHROPIC
    return None


def _error(message: str) -> bytes:
    return json.dumps(OPENAI.error_body(400, message)).encode()


class Headers(dict):  # type: ignore[type-arg]
    """A request's headers as sent, looked up without regard to case (as HTTP names are):
    httpx sends them as written, aiohttp in lower case."""

    def _name(self, key: object) -> Optional[str]:
        if not isinstance(key, str):
            return None
        return next((name for name in self.keys() if name.lower() == key.lower()), None)

    def __getitem__(self, key: str) -> str:
        name = self._name(key)
        if name is None:
            raise KeyError(key)
        return super().__getitem__(name)

    def __contains__(self, key: object) -> bool:
        return self._name(key) is not None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[key] if key in self else default


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, code: int, payload: bytes, headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(self, code: int, payload: Any) -> None:
        self._send(code, json.dumps(payload).encode())

    def _route(self) -> str:
        return urlsplit(self.path).path.rstrip("/")

    def _key_refused(self, wire: Wire) -> bool:
        """With require_key set, a request without that key gets the protocol's 401."""
        wanted = self.server.require_key
        if wanted is None:
            return False
        bearer = self.headers.get("Authorization", "")
        given = self.headers.get("x-api-key") or bearer.removeprefix("Bearer ")
        if given == wanted:
            return False
        message = f"Incorrect API key provided: {given}" if given else "no API key provided"
        self._send_json(401, wire.error_body(401, message))
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.record("GET", self.path, Headers(self.headers), None)
        route = self._route()
        anthropic = "anthropic-version" in {h.lower() for h in self.headers}
        wire = ANTHROPIC if anthropic else OLLAMA if route.endswith("/api/tags") else OPENAI
        if route.endswith(("/models", "/api/tags")) and self._key_refused(wire):
            return
        if route.endswith(("/models", "/api/tags")) and self.server.no_model_list:
            self._send_json(404, wire.error_body(404, f"no route {self.path}"))
        elif route.endswith("/api/tags"):
            models = [
                {"name": m if ":" in m else f"{m}:latest", "model": m, "size": 1}
                for m in self.server.models
            ]
            self._send_json(200, {"models": models})
        elif route.endswith("/models") and anthropic:
            data = [{"id": m, "type": "model", "display_name": m} for m in self.server.models]
            self._send_json(200, {"data": data, "has_more": False})
        elif route.endswith("/models"):
            data = [{"id": m, "object": "model"} for m in self.server.models]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send(404, _error(f"no route {self.path}"))

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        self.server.record("POST", self.path, Headers(self.headers), body)
        wire = _protocol(self._route())
        if wire is None:
            self._send(404, _error(f"no route {self.path}"))
            return
        problem = self._invalid(wire, body)
        if problem:
            self._send_json(400, wire.error_body(400, problem))
            return
        if self._key_refused(wire):
            return
        assert isinstance(body, dict)
        decide = self.server.decide
        self.server.entered()
        try:
            fault = decide(body) if decide is not None else self.server.next_fault()
            self.server.log_completion(body, fault)
            self._complete(wire, body, fault)
        finally:
            self.server.left()

    def _invalid(self, wire: Wire, body: Any) -> Optional[str]:
        if not isinstance(body, dict):
            return "body is not a JSON object"
        if not isinstance(body.get("model"), str) or not body.get("messages"):
            return "'model' and a non-empty 'messages' are required"
        if wire is ANTHROPIC:
            if not isinstance(body.get("max_tokens"), int):
                return "max_tokens: Field required"
            if "anthropic-version" not in {h.lower() for h in self.headers}:
                return "anthropic-version: header is required"
            if any(m.get("role") == "system" for m in body["messages"] if isinstance(m, dict)):
                return "messages: the system prompt goes in the top-level system field"
        return None

    def _complete(self, wire: Wire, body: dict[str, Any], fault: Optional[Fault]) -> None:
        if self.server.delay:
            time.sleep(self.server.delay)
        kind = fault[0] if fault else None
        stream = body.get("stream") is True
        text, finish = None, wire.stop
        if kind == "status":
            _, code, payload, headers = fault
            if payload is None:
                payload = wire.error_body(code, f"injected {code}")
            raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self._send(code, raw, headers)
            return
        if kind == "delay":
            time.sleep(fault[1])
        elif kind == "json":
            self._send_json(200, fault[1])
            return
        elif kind in ("answer", "truncated"):
            text = fault[1]
            finish = wire.limit if kind == "truncated" else wire.stop
        elif kind not in (None, "drop", "cut", "garbage", "empty", "empty_choices", "stream_error"):
            raise ValueError(f"unknown fault {fault!r}")
        if text is None:
            text = self.server.responder(body)
        prompt = " ".join(
            str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict)
        )
        tin = _words(prompt) + _words(str(body.get("system") or ""))
        if stream:
            self._stream(wire, body, kind, fault, text, finish, tin)
            return
        if kind == "drop":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(json.dumps(wire.answer(body, text, finish, tin)).encode()[:20])
            self.wfile.flush()
            self.close_connection = True
        elif kind == "cut":
            self._send(200, json.dumps(wire.answer(body, text, finish, tin)).encode()[:20])
        elif kind == "garbage":
            self._send(200, b"<html>oops</html>")
        elif kind in ("empty", "empty_choices"):
            self._send_json(200, wire.empty(body))
        elif kind == "stream_error":
            self._send_json(200, wire.error_body(500, fault[1]))
        else:
            self._send_json(200, wire.answer(body, text, finish, tin))

    def _stream(
        self,
        wire: Wire,
        body: dict[str, Any],
        kind: Optional[str],
        fault: Optional[Fault],
        text: str,
        finish: str,
        tin: int,
    ) -> None:
        """A chunked streamed answer; "drop" closes the socket without the last chunk."""
        chunks = wire.stream(body, text, finish, tin)
        if kind in ("empty", "empty_choices"):
            chunks = wire.empty_stream(body)
        elif kind == "garbage":
            chunks = chunks[:1] + [wire.garbage_line()] + chunks[1:]
        elif kind == "stream_error":
            chunks = chunks[:1] + [wire.stream_error(fault[1])]  # type: ignore[index]
        self.send_response(200)
        self.send_header("Content-Type", wire.stream_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if kind in ("drop", "cut"):
            chunks = chunks[: max(1, len(chunks) // 2)]
        for chunk in chunks:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        if kind == "drop":
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler sleeping in a "delay" fault must not hold up stop()

    def __init__(
        self,
        port: int,
        responder: Responder,
        call_log: Optional[Path],
        delay: float = 0.0,
        fail_first: int = 0,
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.responder = responder
        self.call_log = call_log
        self.delay = delay
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.faults: collections.deque[Fault] = collections.deque(
            ("status", 503, None, {}) for _ in range(fail_first)
        )
        self.models: list[str] = list(DEFAULT_MODELS)
        self.require_key: Optional[str] = None
        self.no_model_list = False
        self.decide: Optional[Callable[[dict[str, Any]], Optional[Fault]]] = None
        self.in_flight = 0  # completion requests being answered now
        self.max_in_flight = 0  # the most there ever were at once

    def entered(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def left(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the tests, not a server bug

    def record(
        self, method: str, path: str, headers: dict[str, str], body: Optional[dict[str, Any]]
    ) -> None:
        with self.lock:
            self.calls.append({"method": method, "path": path, "headers": headers, "body": body})

    def log_completion(self, body: dict[str, Any], fault: Optional[Fault]) -> None:
        if self.call_log is None:
            return
        digest = hashlib.sha256(last_user_message(body).encode()).hexdigest()[:16]
        line = {
            "ts": time.time(),
            "model": body.get("model"),
            "prompt_sha256": digest,
            "fault": fault[0] if fault else None,
            "in_flight": self.in_flight,
        }
        with self.lock, self.call_log.open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    def next_fault(self) -> Optional[Fault]:
        with self.lock:
            return self.faults.popleft() if self.faults else None


class FakeLLMServer:
    def __init__(
        self,
        responder: Responder = default_responder,
        port: int = 0,
        call_log: Optional[Path] = None,
        delay: float = 0.0,
        fail_first: int = 0,
    ) -> None:
        self._server = _Server(port, responder, call_log, delay, fail_first)
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self._server.calls

    @property
    def max_in_flight(self) -> int:
        """The most completion requests the server was answering at once (the answer's
        latency, `delay`, included)."""
        return self._server.max_in_flight

    @property
    def faults(self) -> collections.deque[Fault]:
        return self._server.faults

    @property
    def models(self) -> list[str]:
        return self._server.models

    @property
    def require_key(self) -> Optional[str]:
        return self._server.require_key

    @require_key.setter
    def require_key(self, key: Optional[str]) -> None:
        self._server.require_key = key

    @property
    def decide(self) -> Optional[Callable[[dict[str, Any]], Optional[Fault]]]:
        return self._server.decide

    @decide.setter
    def decide(self, decide: Optional[Callable[[dict[str, Any]], Optional[Fault]]]) -> None:
        self._server.decide = decide

    @property
    def no_model_list(self) -> bool:
        return self._server.no_model_list

    @no_model_list.setter
    def no_model_list(self, value: bool) -> None:
        self._server.no_model_list = value

    def reset(self) -> None:
        """Back to a fresh server's state (for one server shared by several tests): no fault
        queued or decided, no call recorded, the default model list, no key required, model
        lists served."""
        with self._server.lock:
            self._server.decide = None
            self._server.faults.clear()
            self._server.calls.clear()
            self._server.models[:] = DEFAULT_MODELS
            self._server.require_key = None
            self._server.no_model_list = False
            self._server.max_in_flight = self._server.in_flight

    def start(self) -> FakeLLMServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound for a moment, then closed): a provider down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="fake LLM server (openai, ollama, anthropic) on 127.0.0.1"
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, required=True, help="where to write the port")
    parser.add_argument("--call-log", type=Path, help="append a JSON line per completion request")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each first byte")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N with 503")
    args = parser.parse_args(argv)
    server = _Server(args.port, default_responder, args.call_log, args.delay, args.fail_first)
    tmp = args.port_file.with_name(args.port_file.name + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
