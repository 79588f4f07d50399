"""The append-only event log: typed events, the stores (SQLite; PostgreSQL), the hash chain.

The names below load with the module that defines them, on first use: importing
`steplog.eventstore.sqlite` to read the log must not build the pydantic event models too, and
nothing imports psycopg until a postgresql:// URL is opened.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steplog.eventstore.errors import (
        DatabaseCorrupt,
        DatabaseFull,
        DatabaseMissing,
        DatabaseReadOnly,
        PostgresDriverMissing,
        ServerUnreachable,
    )
    from steplog.eventstore.events import EVENT_TYPES, EventData, InvalidEvent, NewEvent
    from steplog.eventstore.postgres import PostgresEventStore
    from steplog.eventstore.record import (
        ChainBreak,
        DatabaseUnusable,
        EventStore,
        StoredEvent,
        StoreError,
        VersionConflict,
        check_chain,
    )
    from steplog.eventstore.sqlite import SCHEMA_VERSION, SQLiteEventStore

# name -> the module of this package that defines it
EXPORTS = {
    "DatabaseCorrupt": "errors",
    "DatabaseFull": "errors",
    "DatabaseMissing": "errors",
    "DatabaseReadOnly": "errors",
    "PostgresDriverMissing": "errors",
    "ServerUnreachable": "errors",
    "EVENT_TYPES": "events",
    "EventData": "events",
    "InvalidEvent": "events",
    "NewEvent": "events",
    "ChainBreak": "record",
    "check_chain": "record",
    "DatabaseUnusable": "record",
    "EventStore": "record",
    "StoredEvent": "record",
    "StoreError": "record",
    "VersionConflict": "record",
    "SCHEMA_VERSION": "sqlite",
    "SQLiteEventStore": "sqlite",
    "PostgresEventStore": "postgres",
    "is_postgres_url": "config",
}


MODULES = frozenset(EXPORTS.values())


def open_event_store(location: str | os.PathLike[str], **options: Any) -> EventStore:
    """The bare store (no projection tables kept) at `location`: a postgresql:// (or
    postgres://) URL opens a PostgresEventStore, anything else a SQLiteEventStore on that
    file. `options` go to the store's constructor. A URL without psycopg installed is one
    line, PostgresDriverMissing, naming the extra to install."""
    from steplog.eventstore.config import is_postgres_url, redact_url

    if is_postgres_url(location):
        try:
            from steplog.eventstore.postgres import PostgresEventStore
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in ("psycopg", "psycopg_pool"):
                raise
            from steplog.eventstore.errors import PostgresDriverMissing

            raise PostgresDriverMissing(
                f"cannot open {redact_url(str(location))}: the PostgreSQL store needs psycopg"
                " and psycopg-pool; install them with: pip install 'steplog[postgres]'"
            ) from exc
        return PostgresEventStore(str(location), **options)
    from steplog.eventstore.sqlite import SQLiteEventStore

    return SQLiteEventStore(location, **options)


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
    "ChainBreak",
    "DatabaseCorrupt",
    "DatabaseFull",
    "DatabaseMissing",
    "DatabaseReadOnly",
    "DatabaseUnusable",
    "EventData",
    "EventStore",
    "InvalidEvent",
    "NewEvent",
    "PostgresDriverMissing",
    "PostgresEventStore",
    "SQLiteEventStore",
    "ServerUnreachable",
    "StoreError",
    "StoredEvent",
    "VersionConflict",
    "check_chain",
    "is_postgres_url",
    "open_event_store",
]
