"""A real HTTP server on 127.0.0.1 speaking OpenAI's chat-completions wire protocol, with faults.

Stdlib only, so the subprocess form runs under any python3.

In-process:  `with FakeLLMServer() as server: ...` — `server.url` is the base_url
(`http://127.0.0.1:PORT/v1`), `server.calls` records each request as
`{"method", "path", "headers", "body"}` (body: parsed JSON, None for a GET or a non-JSON body),
and `server.faults` is a queue of faults the next chat-completion requests get, one each:

    ("status", code, body_or_None, headers)   an error answer, e.g. ("status", 429, None, {"Retry-After": "1"});
                                              body: a dict (sent as JSON), a str (sent as is), or
                                              None for {"error": {"message": "injected CODE"}}
    ("delay", seconds)                         a slow first byte, then the normal answer
    ("drop",)                                  headers and part of the body, then the socket closes
    ("garbage",)                               200 with a body that is not JSON
    ("empty_choices",)                         200 with "choices": []
    ("answer", text)                           200 with this assistant text
    ("json", payload)                          200 with exactly this JSON body

Without a fault, `responder(body) -> str` decides the assistant text (default_responder).

As a subprocess:
    python tests/fake_llm_server.py --port 0 --port-file PATH [--call-log PATH]
                                    [--delay S] [--fail-first N]
writes its port to PATH once listening (atomically: the file never holds a partial number) and
serves until killed. --delay S holds every completion's first byte for S seconds; --fail-first N
answers the first N completions with a 503. --call-log appends one JSON line per completion request:
{"ts", "model", "prompt_sha256" (16 hex chars of the last user message), "fault"}.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

Responder = Callable[[dict], str]
Fault = tuple


def last_user_message(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def default_responder(body: dict[str, Any]) -> str:
    """Deterministic: JSON when JSON mode was asked for, files for a files-looking prompt."""
    prompt = last_user_message(body)
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        return json.dumps({"verdict": "pass", "answer": digest})
    if '{"files"' in prompt:
        return json.dumps({"files": [{"path": "main.py", "content": f"print('{digest}')\n"}]})
    return f"answer {digest}: " + prompt[:120]


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


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

    def _route(self) -> str:
        return urlsplit(self.path).path.rstrip("/")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.record("GET", self.path, dict(self.headers), None)
        if self._route().endswith("/models"):
            models = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
            self._send(200, json.dumps(models).encode())
        else:
            self._send(404, _error(f"no route {self.path}"))

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        self.server.record("POST", self.path, dict(self.headers), body)
        if not self._route().endswith("/chat/completions"):
            self._send(404, _error(f"no route {self.path}"))
            return
        if not isinstance(body, dict):
            self._send(400, _error("body is not a JSON object"))
            return
        if not isinstance(body.get("model"), str) or not body.get("messages"):
            self._send(400, _error("'model' and a non-empty 'messages' are required"))
            return
        fault = self.server.next_fault()
        self.server.log_completion(body, fault)
        self._complete(body, fault)

    def _complete(self, body: dict[str, Any], fault: Optional[Fault]) -> None:
        if self.server.delay:
            time.sleep(self.server.delay)
        text = None
        kind = fault[0] if fault else None
        if kind == "status":
            _, code, payload, headers = fault
            if payload is None:
                payload = {"error": {"message": f"injected {code}"}}
            raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self._send(code, raw, headers)
            return
        if kind == "delay":
            time.sleep(fault[1])
        elif kind == "drop":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.wfile.flush()
            self.close_connection = True
            return
        elif kind == "garbage":
            self._send(200, b"<html>oops</html>")
            return
        elif kind == "empty_choices":
            self._send(200, json.dumps({"choices": [], "usage": {}}).encode())
            return
        elif kind == "json":
            self._send(200, json.dumps(fault[1]).encode())
            return
        elif kind == "answer":
            text = fault[1]
        elif kind is not None:
            raise ValueError(f"unknown fault {fault!r}")
        if text is None:
            text = self.server.responder(body)
        prompt = " ".join(
            str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict)
        )
        reply = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(text.split()),
                "total_tokens": len(prompt.split()) + len(text.split()),
            },
        }
        self._send(200, json.dumps(reply).encode())


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
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self._server.calls

    @property
    def faults(self) -> collections.deque[Fault]:
        return self._server.faults

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


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible server on 127.0.0.1")
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
