"""Live updates: one watcher of the log per app, and the Server-Sent Events it feeds.

Every stream waits on the same `LogWatcher`: whichever stream finds no one polling runs the
store's `wait_for_events` (PostgreSQL: woken by NOTIFY; SQLite: a cheap last-seq check) in a
thread of its own limiter, and wakes every other stream when the last seq moves. So an idle
page costs one sleeping thread for all its viewers, and nothing once no one watches.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import anyio
from anyio import to_thread

POLL_S = 1.0  # one wait of the poller; short, so a stream that leaves hands the poll on soon
KEEPALIVE_S = 15.0
STREAM_S = 3600.0  # a stream ends after this long; the browser reconnects with Last-Event-ID


def sse(data: Any, *, event: str | None = None, id: int | None = None) -> bytes:
    """One Server-Sent Event. JSON has no raw newline, so `data` is one line."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, default=str))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


KEEPALIVE = b": keepalive\n\n"


class LogWatcher:
    def __init__(self, wait_for_events: Callable[[int, float], int]) -> None:
        self._wait = wait_for_events
        self.last = -1  # not read yet
        self._polling = False
        # made inside the event loop, on first use (anyio's primitives need a running one)
        self._changed: anyio.Event | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    async def wait_beyond(self, seq: int, timeout: float) -> int:
        """The log's last seq once it is above `seq`, or whatever it is after `timeout`."""
        if self._changed is None or self._limiter is None:
            self._changed, self._limiter = anyio.Event(), anyio.CapacityLimiter(1)
        with anyio.move_on_after(timeout):
            while self.last <= seq:
                if self._polling:
                    await self._changed.wait()
                    continue
                self._polling = True
                try:
                    found = await to_thread.run_sync(
                        self._wait,
                        max(self.last, seq),
                        POLL_S,
                        limiter=self._limiter,
                        abandon_on_cancel=True,
                    )
                    self.last = max(self.last, found)
                finally:
                    self._polling = False
                    changed, self._changed = self._changed, anyio.Event()
                    changed.set()
        return self.last
