"""One job's side of the log during a run: the head version, the observer, the crash points.

Every append of a run goes through a JobLog, so the optimistic-concurrency guard (the expected
version) follows each commit wherever it was made: in a transaction of its own, through the
group committer while steps run, or inside a breaker's transaction.
"""

from __future__ import annotations

import sqlite3
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Sequence

import anyio

from steplog.eventstore.events import NewEvent
from steplog.eventstore.record import Blob, EventStore, StoredEvent
from steplog.executor import faults
from steplog.executor.committer import GroupCommitter

Observer = Callable[[Sequence[StoredEvent]], None]


class JobLog:
    def __init__(
        self,
        store: EventStore,
        job_id: str,
        *,
        version: int,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.version = version  # the job's head as this run last committed it
        self.observer = observer
        self._committer: GroupCommitter | None = None

    async def commit(self, events: list[NewEvent], blobs: Sequence[Blob] = ()) -> list[StoredEvent]:
        """Append from a step: through the group committer while steps run."""
        if self._committer is None:
            return self.emit(events, blobs)
        return await self._committer.append(events, blobs)

    def emit(self, events: list[NewEvent], blobs: Sequence[Blob] = ()) -> list[StoredEvent]:
        """Append now, in this transaction of our own."""
        stored = self.store.append(self.job_id, events, expected_version=self.version, blobs=blobs)
        self.committed(stored)
        return stored

    def emit_rows(self, rows: Sequence[tuple[str, str, str, str | None, str]]) -> list[StoredEvent]:
        """emit() of rows already serialised (ts, level, type, step, data JSON), as
        step_skipped_rows builds them."""
        stored = self.store.append_rows(self.job_id, rows, expected_version=self.version)
        self.committed(stored)
        return stored

    def flush(self) -> None:
        """Commit now what steps have queued for the group commit: before a transaction of
        one's own (an admission), so that the log keeps the order in which they were made."""
        if self._committer is not None:
            self._committer.flush()

    def append_txn(
        self, conn: sqlite3.Connection, events: list[NewEvent], blobs: Sequence[Blob] = ()
    ) -> list[StoredEvent]:
        """Append inside the caller's write transaction; call `committed` once it commits."""
        prepared = [(e.ts, e.level, e.type, e.step, e.data_json()) for e in events]
        return self.store.append_txn(conn, self.job_id, prepared, self.version, blobs)

    def committed(self, stored: list[StoredEvent]) -> None:
        """After a commit of ours: the job's head moves, the observer sees it, faults may fire."""
        self.version = stored[-1].version
        if self.observer is not None:
            self.observer(stored)
        faults.after_commit([(ev.type, ev.step) for ev in stored])

    @asynccontextmanager
    async def group_commits(self) -> AsyncIterator[None]:
        """While inside: `commit` joins the appends of one event-loop tick into one transaction."""
        self._committer = committer = GroupCommitter(self.emit)
        try:
            async with anyio.create_task_group() as flusher:
                flusher.start_soon(committer.run)
                yield
                committer.flush()
                flusher.cancel_scope.cancel()
        finally:
            self._committer = None
