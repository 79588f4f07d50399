"""The append-only event log: typed events, the SQLite store, the hash chain."""

from steplog.eventstore.errors import DatabaseCorrupt, DatabaseFull, DatabaseReadOnly
from steplog.eventstore.events import EVENT_TYPES, EventData, InvalidEvent, NewEvent
from steplog.eventstore.record import (
    DatabaseUnusable,
    EventStore,
    StoredEvent,
    StoreError,
    VersionConflict,
)
from steplog.eventstore.sqlite import SCHEMA_VERSION, SQLiteEventStore

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "DatabaseCorrupt",
    "DatabaseFull",
    "DatabaseReadOnly",
    "DatabaseUnusable",
    "EventData",
    "EventStore",
    "InvalidEvent",
    "NewEvent",
    "SQLiteEventStore",
    "StoreError",
    "StoredEvent",
    "VersionConflict",
]
