"""Open the event store with steplog's projection tables attached."""

from __future__ import annotations

import os

from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections.tables import PROJECTORS


def open_store(path: str | os.PathLike[str]) -> SQLiteEventStore:
    return SQLiteEventStore(path, projectors=PROJECTORS)
