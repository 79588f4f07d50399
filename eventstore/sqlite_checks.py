"""What `steplog verify` checks of a SQLite file beyond the log: the schema against schema.sql
(version, tables, the append-only triggers, views) and PRAGMA integrity_check."""

from __future__ import annotations

import re
import sqlite3

from steplog.eventstore.sqlite import (
    APPLICATION_ID,
    SCHEMA_PATH,
    SCHEMA_VERSION,
    TABLES_SQL,
    schema_statements,
)


def _normal_sql(sql: str | None) -> str:
    text = re.sub(r"--[^\n]*", "", sql or "")
    spaced = " ".join(text.replace("IF NOT EXISTS ", "").split())
    # ALTER TABLE … ADD COLUMN (a migration) writes ", col TYPE" just before the closing ")"
    return re.sub(r" ?([,()]) ?", r"\1", spaced)


def expected_schema() -> dict[tuple[str, str], str]:
    """(type, name) -> normalised SQL of every object schema.sql creates."""
    mem = sqlite3.connect(":memory:")
    try:
        for statement in schema_statements(SCHEMA_PATH.read_text(encoding="utf-8")):
            mem.execute(statement)
        rows = mem.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        return {(t, n): _normal_sql(s) for t, n, s in rows}
    finally:
        mem.close()


def schema_problems(conn: sqlite3.Connection) -> tuple[int, list[str]]:
    """The file's schema version, and each way its schema differs from schema.sql's."""
    problems: list[str] = []
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != APPLICATION_ID:
        problems.append(f"application_id is {app_id}, not steplog's")
    if version != SCHEMA_VERSION:
        problems.append(
            f"schema version is {version}, this steplog expects {SCHEMA_VERSION}"
            " (any other steplog command upgrades the file)"
        )
    actual = {
        (t, n): _normal_sql(s)
        for t, n, s in conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
        )
    }
    expected = expected_schema()
    for (kind, name), sql in sorted(expected.items()):
        if (kind, name) not in actual:
            problems.append(f"{kind} {name} is missing")
        elif actual[(kind, name)] != sql:
            problems.append(f"{kind} {name} differs from schema.sql")
    for kind, name in sorted(actual.keys() - expected.keys()):
        if kind == "trigger":
            problems.append(f"trigger {name} is not steplog's")
    names = {n for (_, n) in actual}
    if "steplog_meta" in names:
        meta = conn.execute(
            "SELECT value FROM steplog_meta WHERE key = 'schema_version'"
        ).fetchone()
        if meta is None or meta[0] != str(version):
            problems.append(f"steplog_meta.schema_version is {meta and meta[0]!r}")
    if "schema_migrations" in names:
        top = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        if top != version:
            problems.append(f"schema_migrations ends at {top}, user_version is {version}")
    return version, problems


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    return [] if rows == ["ok"] else rows


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute(TABLES_SQL)}
