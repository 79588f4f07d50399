"""Read-only access to a steplog database, for `steplog sql` and `steplog verify`.

Four independent locks, so a mistake in one does not open the file to writes: the connection is
opened `mode=ro`; `PRAGMA query_only` is on; an authorizer allows only reading actions (and
PRAGMAs that read); and a statement must start with a reading keyword. A refused statement
never reaches the file, which stays byte for byte as it was.
"""

from __future__ import annotations

import base64
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

import sqlite_utils

from steplog.errors import Rejected
from steplog.eventstore.errors import database_error
from steplog.eventstore.record import DatabaseUnusable
from steplog.eventstore.sqlite import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    check_database_file,
    read_only_uri,
)
from steplog.projections.store import open_store


class QueryRefused(Rejected):
    """A statement `steplog sql` will not run (it would write, or it is not valid SQL)."""


READING_KEYWORDS = ("SELECT", "WITH", "VALUES", "EXPLAIN", "PRAGMA")
WRITING_KEYWORDS = frozenset(
    "INSERT REPLACE UPDATE DELETE UPSERT CREATE DROP ALTER ATTACH DETACH VACUUM REINDEX ANALYZE"
    " BEGIN COMMIT END ROLLBACK SAVEPOINT RELEASE".split()
)
# PRAGMAs that only report; those taking an argument read about the table/index it names.
READING_PRAGMAS = frozenset(
    "application_id collation_list compile_options data_version database_list encoding"
    " foreign_key_check foreign_key_list freelist_count function_list index_info index_list"
    " index_xinfo integrity_check journal_mode module_list page_count page_size pragma_list"
    " query_only quick_check schema_version table_info table_list table_xinfo user_version".split()
)
PRAGMAS_WITH_ARGUMENT = frozenset(
    "foreign_key_check foreign_key_list index_info index_list index_xinfo integrity_check"
    " quick_check table_info table_list table_xinfo".split()
)
ALLOWED_ACTIONS = frozenset(
    (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE)
)
ACTION_NAMES = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_").replace("_", " ")
    for name in dir(sqlite3)
    if name.startswith(("SQLITE_CREATE", "SQLITE_DROP"))
    or name
    in (
        "SQLITE_INSERT",
        "SQLITE_UPDATE",
        "SQLITE_DELETE",
        "SQLITE_ATTACH",
        "SQLITE_DETACH",
        "SQLITE_ALTER_TABLE",
        "SQLITE_REINDEX",
        "SQLITE_ANALYZE",
        "SQLITE_TRANSACTION",
        "SQLITE_SAVEPOINT",
        "SQLITE_PRAGMA",
    )
}


@dataclass
class _Guard:
    """The authorizer; remembers the first thing it refused, to name it in the error."""

    refused: str | None = None

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None
    ) -> int:
        if action in ALLOWED_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master" and source is None:
            # SQLite asks this while it sets up a table-valued function (json_each,
            # pragma_table_info) for a query; nothing is written. A real UPDATE of
            # sqlite_master needs PRAGMA writable_schema, refused below.
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in READING_PRAGMAS and (arg2 is None or name in PRAGMAS_WITH_ARGUMENT):
                return sqlite3.SQLITE_OK
            what = f"PRAGMA {name}" + (f" = {arg2}" if arg2 is not None else "")
        else:
            what = ACTION_NAMES.get(action, f"action {action}")
            if arg1:
                what += f" {arg1}"
        self.refused = self.refused or what
        return sqlite3.SQLITE_DENY


def _first_keyword(sql: str) -> str:
    text = re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.DOTALL).strip()
    match = re.match(r"[A-Za-z]+", text)
    return match.group(0).upper() if match else ""


@dataclass
class ReadOnly:
    """A read-only connection to a steplog database and the guard watching it."""

    conn: sqlite3.Connection
    guard: _Guard = field(default_factory=_Guard)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ReadOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_readonly(path: Path, *, upgrade: bool = False) -> ReadOnly:
    """Open PATH read-only. upgrade: first bring an older schema up to date (the one write,
    through the store, so the views exist); otherwise the file is never written."""
    if not path.exists():
        raise Rejected(f"no database at {path}")
    check_database_file(path, empty_ok=False)
    conn = _connect(path, peek=True)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    if app_id != APPLICATION_ID:
        raise DatabaseUnusable(f"{path} is not a steplog database")
    if version > SCHEMA_VERSION:
        raise DatabaseUnusable(
            f"{path} was written by a newer steplog (schema {version};"
            f" this steplog knows up to {SCHEMA_VERSION})"
        )
    conn = _connect(path)
    if upgrade and version < SCHEMA_VERSION:
        conn.close()
        open_store(path).close()
        conn = _connect(path)
    guard = _Guard()
    conn.set_authorizer(guard)
    return ReadOnly(conn, guard)


def _connect(path: Path, *, peek: bool = False) -> sqlite3.Connection:
    """peek: for asking whose file this is without leaving a trace. With no -wal beside it the
    whole database is in the main file, and immutable=1 reads it without creating -shm/-wal
    (a read-only connection to a WAL-mode file would otherwise leave both behind, beside a
    file that may belong to another application)."""
    uri = read_only_uri(path)
    if peek and "immutable" not in uri and not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        conn.execute("PRAGMA query_only = ON")
        return conn
    except sqlite3.DatabaseError as exc:
        raise database_error(path, exc, opening=True) from exc


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


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def run_query(ro: ReadOnly, sql: str, params: Mapping[str, Any]) -> QueryResult:
    """Run one reading statement; anything else is refused with a QueryRefused naming why."""
    if not sql.strip():
        raise QueryRefused("no SQL given")
    keyword = _first_keyword(sql)
    if keyword in WRITING_KEYWORDS:
        raise QueryRefused(f"steplog sql is read-only: {keyword} refused")
    if keyword not in READING_KEYWORDS:
        raise QueryRefused(
            f"SQL error: a statement starts with {', '.join(READING_KEYWORDS)}, not {keyword!r}"
        )
    db = sqlite_utils.Database(ro.conn, recursive_triggers=False, execute_plugins=False)
    try:
        cursor = db.execute(sql, dict(params))
        rows = cursor.fetchall()
    except sqlite3.DatabaseError as exc:  # also several statements, a missing :param …
        if ro.guard.refused:
            raise QueryRefused(f"steplog sql is read-only: {ro.guard.refused} refused") from exc
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise QueryRefused(f"steplog sql is read-only: {exc}") from exc
        raise QueryRefused(f"SQL error: {exc}") from exc
    columns = [d[0] for d in cursor.description or ()]
    return QueryResult(columns, rows)


def query_database(location: str | Path, sql: str, params: Mapping[str, Any]) -> QueryResult:
    """`steplog sql` on the database at `location`: a SQLite file through ReadOnly (upgraded
    first if older, so the views exist), a PostgreSQL database through postgres_query."""
    from steplog.eventstore.config import is_postgres_url

    if not is_postgres_url(location):
        with open_readonly(Path(location), upgrade=True) as ro:
            return run_query(ro, sql, params)
    from steplog.eventstore.postgres_query import run_readonly

    store = open_store(location, create=False)  # applies a pending migration, creates nothing
    try:
        columns, rows = run_readonly(store, sql, params)  # type: ignore[arg-type]
    finally:
        store.close()
    return QueryResult(columns, rows)


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
