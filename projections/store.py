"""Open the event store with steplog's projection tables attached."""

from __future__ import annotations

import os

from steplog.eventstore.sqlite import MEMORY, SQLiteEventStore
from steplog.projections.tables import PROJECTORS


def open_store(path: str | os.PathLike[str]) -> SQLiteEventStore:
    return SQLiteEventStore(path, projectors=PROJECTORS)


def open_empty_store() -> SQLiteEventStore:
    """A store with no history and no file: what a database that does not exist yet answers
    (no jobs, no cache, no breakers), asked without creating it."""
    return SQLiteEventStore(MEMORY, projectors=PROJECTORS)
