"""A real HTTP server on 127.0.0.1 speaking OpenAI's chat-completions wire protocol, with faults.

In-process:  `with FakeLLMServer() as server: ...` — `server.url` is the base_url
(`http://127.0.0.1:PORT/v1`), `server.calls` records each request, `server.faults` is a queue of
faults the next requests get, one each:

    ("status", code, body_or_None, headers)   an error answer, e.g. ("status", 429, None, {"Retry-After": "1"})
    ("delay", seconds)                         a slow first byte
    ("drop",)                                  headers and half a body, then the socket closes
    ("garbage",)                               200 with a body that is not JSON
    ("empty_choices",)                         200 with "choices": []
    ("answer", text)                           200 with this assistant text

As a subprocess (stdlib only):  python tests/fake_llm_server.py --port-file PATH [--call-log PATH]
writes its port to PATH once listening and serves until killed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

Responder = Callable[[dict[str, Any]], str]


def default_responder(body: dict[str, Any]) -> str:
    """Deterministic: JSON when JSON mode was asked for, files for a files-looking prompt."""
    prompt = body["messages"][-1]["content"]
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    if body.get("response_format", {}).get("type") == "json_object":
        return json.dumps({"verdict": "pass", "answer": digest})
    if '{"files"' in prompt:
        return json.dumps({"files": [{"path": "main.py", "content": f"print('{digest}')\n"}]})
    return f"answer {digest}: " + prompt[:120]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": "fake-model"}]}).encode())
        else:
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(400, json.dumps({"error": {"message": "body is not JSON"}}).encode())
            return
        self.server.record(self.path, dict(self.headers), body)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            return
        fault = self.server.next_fault()
        text = None
        if fault is not None:
            kind = fault[0]
            if kind == "status":
                _, code, payload, headers = fault
                payload = (
                    payload if payload is not None else {"error": {"message": f"injected {code}"}}
                )
                self._send(code, json.dumps(payload).encode(), headers)
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
            elif kind == "answer":
                text = fault[1]
        if text is None:
            text = self.server.responder(body)
        prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        reply = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())},
        }
        self._send(200, json.dumps(reply).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, responder: Responder, call_log: Path | None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.responder = responder
        self.call_log = call_log
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.faults: collections.deque[tuple[Any, ...]] = collections.deque()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the tests, not a server bug

    def record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append({"path": path, "headers": headers, "body": body})
            if self.call_log is not None:
                prompt = body.get("messages", [{}])[-1].get("content", "")
                with self.call_log.open("a") as fh:
                    fh.write(json.dumps({"ts": time.time(), "model": body.get("model"),
                                         "prompt": hashlib.sha256(prompt.encode()).hexdigest()[:16]}) + "\n")  # fmt: skip

    def next_fault(self) -> tuple[Any, ...] | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None


class FakeLLMServer:
    def __init__(
        self, responder: Responder = default_responder, port: int = 0, call_log: Path | None = None
    ) -> None:
        self._server = _Server(port, responder, call_log)
        self._thread: threading.Thread | None = None

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
    def faults(self) -> collections.deque[tuple[Any, ...]]:
        return self._server.faults

    def start(self) -> FakeLLMServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--call-log", type=Path)
    args = parser.parse_args()
    server = _Server(args.port, default_responder, args.call_log)
    args.port_file.write_text(str(server.server_address[1]))
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
