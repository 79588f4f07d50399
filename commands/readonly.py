"""`steplog sql`: the database's store answers one read-only query (eventstore.sqlite_query
for a SQLite file, eventstore.postgres_query for PostgreSQL); here, what both share: the
`--param NAME=VALUE` pairs and the values as JSON and CSV hold them.
"""

from __future__ import annotations

import base64
import re
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

from steplog.eventstore.errors import QueryRefused
from steplog.eventstore.reads import QueryResult
from steplog.projections.store import open_store

__all__ = ["QueryRefused", "QueryResult", "parse_params", "plain_value", "query_database"]


_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")


def parse_params(values: tuple[str, ...]) -> dict[str, Any]:
    """NAME=VALUE pairs for :NAME placeholders; a value that is a plain number binds as one."""
    params: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        name = name.strip().lstrip(":")
        if not sep or not re.fullmatch(r"\w+", name):
            raise QueryRefused(f"--param {item!r} is not NAME=VALUE")
        if _NUMBER.fullmatch(value):
            params[name] = float(value) if any(c in value for c in ".eE") else int(value)
            if isinstance(params[name], int) and not -(2**63) <= params[name] < 2**63:
                raise QueryRefused(f"--param {name}: {value} does not fit SQLite's 64-bit integers")
        else:
            params[name] = value
    return params


def query_database(location: str | Path, sql: str, params: Mapping[str, Any]) -> QueryResult:
    """`steplog sql` on the database at `location`: a SQLite file through ReadOnly (upgraded
    first if older, so the views exist), a PostgreSQL database through postgres_query."""
    from steplog.eventstore.config import is_postgres_url

    if not is_postgres_url(location):
        from steplog.eventstore.sqlite_query import open_readonly, run_query

        with open_readonly(Path(location), upgrade=True) as ro:
            return run_query(ro, sql, params)
    from steplog.eventstore.postgres_query import run_readonly

    store = open_store(location, create=False)  # applies a pending migration, creates nothing
    try:
        return run_readonly(store, sql, params)  # type: ignore[arg-type]
    finally:
        store.close()


def plain_value(value: Any) -> Any:
    """A value as JSON/CSV can hold it: text blobs as text, other blobs base64 (as sqlite-utils);
    PostgreSQL's numeric as a number, its dates and times as ISO text."""
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"$base64": True, "encoded": base64.b64encode(value).decode("ascii")}
    return value
