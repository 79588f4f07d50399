"""A TCP relay on 127.0.0.1 between a client and the tests' PostgreSQL server that cuts a
connection at the moment a test chooses: the network failing, deterministically.

`arm(marker)`: the next message from a client that contains `marker` (a statement's text, or
b"COMMIT\\x00", which is how psycopg sends a COMMIT: a simple query) ends that connection
- before: the message is not forwarded, both sides are closed (the server rolls back);
- after_reply: it is forwarded, the server's answer is read up to its ReadyForQuery, then
  dropped and both sides closed. For a COMMIT the transaction is committed on the server and
  the client never hears so: the outcome a lost connection leaves a client unsure of.

`refusing = True`: new connections are accepted and closed at once (the server unreachable).
Threads only, no process; every wait is bounded.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

JOIN_TIMEOUT_S = 10.0
ACCEPT_POLL_S = 0.1
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the message that ends every answer of the server


@dataclass
class _Arm:
    marker: bytes
    after_reply: bool


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    swallowing: bool = False  # the server's answer is being read to be dropped
    answer: bytearray = field(default_factory=bytearray)

    def close(self) -> None:
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class CuttingProxy:
    def __init__(self, server_port: int, server_host: str = "127.0.0.1") -> None:
        self.target = (server_host, server_port)
        self.refusing = False
        self.cuts = 0  # connections cut by an armed marker
        self.fired = threading.Event()
        self._armed: _Arm | None = None
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(ACCEPT_POLL_S)  # so that close() is noticed
        self.port = self._listener.getsockname()[1]
        self._closed = False

    def __enter__(self) -> CuttingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, cluster_url: str, server_port: int) -> str:
        """The cluster's URL, pointed at this relay instead of the server."""
        return cluster_url.replace(f"127.0.0.1:{server_port}/", f"127.0.0.1:{self.port}/")

    def arm(self, marker: bytes, *, after_reply: bool = False) -> None:
        with self._lock:
            self._armed = _Arm(marker, after_reply)
            self.fired.clear()

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def cut_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def close(self) -> None:
        self._closed = True
        self.cut_all()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
        self._listener.close()

    # -- relaying -----------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=JOIN_TIMEOUT_S)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
            self._spawn(self._client_to_server, pair)
            self._spawn(self._server_to_client, pair)

    def _take_arm(self, data: bytes) -> _Arm | None:
        with self._lock:
            armed = self._armed
            if armed is None or armed.marker not in data:
                return None
            self._armed = None
            return armed

    def _cut(self, pair: _Pair) -> None:
        self.cuts += 1
        pair.close()
        self.fired.set()

    def _client_to_server(self, pair: _Pair) -> None:
        try:
            while data := pair.client.recv(65536):
                armed = self._take_arm(data)
                if armed is not None and not armed.after_reply:
                    self._cut(pair)
                    return
                if armed is not None:
                    pair.swallowing = True  # before the server can answer
                pair.server.sendall(data)
        except OSError:
            pass
        pair.close()

    def _server_to_client(self, pair: _Pair) -> None:
        try:
            while data := pair.server.recv(65536):
                if pair.swallowing:
                    pair.answer += data
                    if READY_FOR_QUERY in pair.answer:
                        self._cut(pair)
                        return
                    continue
                pair.client.sendall(data)
        except OSError:
            pass
        pair.close()
