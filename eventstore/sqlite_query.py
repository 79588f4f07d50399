"""`steplog sql` and the read-only opens of a SQLite file.

Four independent locks, so a mistake in one does not open the file to writes: the connection is
opened `mode=ro`; `PRAGMA query_only` is on; an authorizer allows only reading actions (and
PRAGMAs that read); and a statement must start with a reading keyword. A refused statement
never reaches the file, which stays byte for byte as it was.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import sqlite_utils

from steplog.errors import Rejected
from steplog.eventstore.errors import QueryRefused, database_error
from steplog.eventstore.reads import QueryResult
from steplog.eventstore.sqlite import (
    SCHEMA_VERSION,
    check_database_file,
    peek_steplog_file,
    read_only_uri,
)

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
    version = peek_steplog_file(path)
    conn = _connect(path)
    if upgrade and version < SCHEMA_VERSION:
        conn.close()
        from steplog.eventstore.sqlite import SQLiteEventStore

        SQLiteEventStore(path).close()  # the schema's upgrade: views and tables alike
        conn = _connect(path)
    guard = _Guard()
    conn.set_authorizer(guard)
    return ReadOnly(conn, guard)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=10)
        conn.execute("PRAGMA query_only = ON")
        return conn
    except sqlite3.DatabaseError as exc:
        raise database_error(path, exc, opening=True) from exc


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
