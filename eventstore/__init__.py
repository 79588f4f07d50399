"""The append-only event log: typed events, the SQLite store, the hash chain.

The names below load with the module that defines them, on first use: importing
`steplog.eventstore.sqlite` to read the log must not build the pydantic event models too.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# name -> the module of this package that defines it
EXPORTS = {
    "DatabaseCorrupt": "errors",
    "DatabaseFull": "errors",
    "DatabaseReadOnly": "errors",
    "EVENT_TYPES": "events",
    "EventData": "events",
    "InvalidEvent": "events",
    "NewEvent": "events",
    "DatabaseUnusable": "record",
    "EventStore": "record",
    "StoredEvent": "record",
    "StoreError": "record",
    "VersionConflict": "record",
    "SCHEMA_VERSION": "sqlite",
    "SQLiteEventStore": "sqlite",
}


MODULES = frozenset(EXPORTS.values())


def __getattr__(name: str) -> Any:
    if name in MODULES:  # `steplog.eventstore.events` worked without importing it, as before
        return import_module(f"{__name__}.{name}")
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
