"""What `steplog verify` checks of a PostgreSQL database beyond the log: every table, view,
index, trigger and function schema_postgres.sql creates is there, the append-only triggers
are enabled ALWAYS (so no session_replication_role skips them) with the functions' bodies as
written, and the recorded schema version agrees with the migrations."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from steplog.eventstore.postgres import SCHEMA_PATH, SCHEMA_VERSION

_OBJECT = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(TABLE|VIEW|INDEX|TRIGGER|FUNCTION)\s+(\w+)",
    re.IGNORECASE | re.MULTILINE,
)
_FUNCTION_BODY = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+)\s*\([^)]*\).*?\$\$(.*?)\$\$",
    re.IGNORECASE | re.DOTALL,
)
# the relkind of each kind of object in pg_class
_RELKINDS = {"table": ("r", "p"), "view": ("v", "m"), "index": ("i",)}


def expected_objects() -> dict[tuple[str, str], str]:
    """(kind, name) -> '' (or a function's body) of what schema_postgres.sql creates."""
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    text_no_comments = re.sub(r"--[^\n]*", "", text)
    found = {(kind.lower(), name): "" for kind, name in _OBJECT.findall(text_no_comments)}
    for name, body in _FUNCTION_BODY.findall(text_no_comments):
        found[("function", name)] = body.strip()
    return found


def schema_problems(conn: psycopg.Connection[Any]) -> tuple[int, list[str]]:
    """The database's schema version, and each way its schema differs from the file's."""
    problems: list[str] = []
    relations = {
        (name, kind)
        for name, kind in conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema()"
        )
    }
    triggers = dict(
        conn.execute(
            "SELECT t.tgname, t.tgenabled FROM pg_trigger AS t"
            " JOIN pg_class AS c ON c.oid = t.tgrelid"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND NOT t.tgisinternal"
        ).fetchall()
    )
    functions = dict(
        conn.execute(
            "SELECT p.proname, p.prosrc FROM pg_proc AS p"
            " JOIN pg_namespace AS n ON n.oid = p.pronamespace"
            " WHERE n.nspname = current_schema()"
        ).fetchall()
    )
    expected = expected_objects()
    for (kind, name), body in sorted(expected.items()):
        if kind in _RELKINDS:
            present = any((name, k) in relations for k in _RELKINDS[kind])
        elif kind == "trigger":
            present = name in triggers
        else:
            present = name in functions
        if not present:
            problems.append(f"{kind} {name} is missing")
        elif kind == "function" and " ".join(functions[name].split()) != " ".join(body.split()):
            problems.append(f"function {name} differs from schema_postgres.sql")
    append_only = [
        n for (k, n) in expected if k == "trigger" and n.endswith(("_only", "_immutable"))
    ]
    for name in append_only:
        if name in triggers and triggers[name] != "A":
            problems.append(f"trigger {name} is not enabled ALWAYS (state {triggers[name]!r})")
    for name in sorted(triggers.keys() - {n for (k, n) in expected if k == "trigger"}):
        problems.append(f"trigger {name} is not steplog's")
    version = 0
    names = {name for name, _ in relations}
    if "steplog_meta" in names:
        row = conn.execute("SELECT value FROM steplog_meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row and str(row[0]).isdigit() else 0
        if version != SCHEMA_VERSION:
            shown = row[0] if row and str(row[0]).isdigit() else repr(row and row[0])
            problems.append(
                f"schema version is {shown}, this steplog expects {SCHEMA_VERSION}"
                " (any other steplog command upgrades the database)"
            )
    if "schema_migrations" in names:
        top = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        if top != version:
            problems.append(
                f"schema_migrations ends at {top}, steplog_meta.schema_version is {version}"
            )
    return version, problems
