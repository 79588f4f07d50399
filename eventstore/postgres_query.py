"""`steplog sql` on PostgreSQL: one reading statement, never a write, whatever it calls.

Four independent locks, as on SQLite (eventstore/sqlite_query.py), so that a mistake in one does not
open the database to writes:
- the statement must start with a reading keyword (SELECT, WITH, VALUES, TABLE, EXPLAIN);
- every function it names is looked up in pg_catalog: a VOLATILE one (the kind that can have a
  side effect: nextval, setval, pg_advisory_lock, pg_notify, set_config, pg_terminate_backend,
  lo_import, dblink …) is refused unless it is one of a few that only compute (random,
  clock_timestamp, gen_random_uuid);
- it runs in a READ ONLY transaction, with a statement timeout, on a connection of its own
  (not the store's pool: nothing it sets outlives it);
- that transaction is always rolled back.
The statement goes as one prepared statement, so a second one after a `;` is refused by the
server. Parameters are SQLite's `:name` form, bound as psycopg's `%(name)s`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import set_json_loads

from steplog.eventstore.errors import QueryRefused
from steplog.eventstore.reads import QueryResult

if TYPE_CHECKING:
    from steplog.eventstore.postgres import PostgresEventStore

READING_KEYWORDS = ("SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN")
WRITING_KEYWORDS = frozenset(
    "INSERT UPDATE DELETE MERGE UPSERT CREATE DROP ALTER TRUNCATE COPY GRANT REVOKE LOCK SET"
    " RESET DO CALL BEGIN START COMMIT END ROLLBACK ABORT SAVEPOINT RELEASE PREPARE EXECUTE"
    " DEALLOCATE DECLARE FETCH MOVE CLOSE LISTEN NOTIFY UNLISTEN DISCARD VACUUM ANALYZE CLUSTER"
    " REINDEX REFRESH COMMENT SECURITY IMPORT LOAD REASSIGN CHECKPOINT".split()
)
# writes that can hide inside a reading statement (WITH d AS (DELETE …) SELECT …)
_WRITING_ANYWHERE = frozenset("INSERT UPDATE DELETE MERGE TRUNCATE".split())
# VOLATILE functions that compute a value and touch nothing
PURE_VOLATILE = frozenset(
    "random random_normal clock_timestamp timeofday gen_random_uuid uuid_generate_v4".split()
)
STATEMENT_TIMEOUT_MS = 60_000

# what the scan below skips: quoted text and comments, where a word or a `:name` means nothing
_SKIPPED = re.compile(
    r"'(?:[^']|'')*'"  # a string
    r"|\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$"  # a dollar-quoted string
    r"|--[^\n]*"
    r"|/\*.*?\*/",
    re.DOTALL,
)
_TOKEN = re.compile(
    r'(?P<call>(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*))\s*\('  # a name followed by (
    r"|(?P<cast>::)"
    r"|(?<!:):(?P<param>[A-Za-z_]\w*)"
    r"|(?P<percent>%)"
)


class Statement:
    """The user's SQL as psycopg takes it, and the names of the functions it calls."""

    def __init__(self, sql: str) -> None:
        self.calls: set[str] = set()
        self.params: list[str] = []
        self.code: list[str] = []  # the SQL outside strings and comments
        pieces: list[str] = []
        at = 0
        for skipped in _SKIPPED.finditer(sql):
            pieces.append(self._scan(sql[at : skipped.start()]))
            pieces.append(skipped.group(0).replace("%", "%%"))
            at = skipped.end()
        pieces.append(self._scan(sql[at:]))
        self.text = "".join(pieces)

    def _scan(self, code: str) -> str:
        self.code.append(code)

        def replace(match: re.Match[str]) -> str:
            if match.group("call"):
                name = match.group("call")
                name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
                self.calls.add(name)
                return match.group(0)
            if match.group("cast"):
                return "::"
            if match.group("param"):
                self.params.append(match.group("param"))
                return f"%({match.group('param')})s"
            return "%%"

        return _TOKEN.sub(replace, code)


# words followed by `(` that are syntax, not function calls
_SYNTAX = frozenset(
    "select from where and or not in exists any all some values as on using over filter within"
    " group order by partition window case when then else end cast coalesce nullif greatest"
    " least row array join lateral with recursive union intersect except limit offset having"
    " distinct table explain interval extract overlay position substring trim collate"
    " returning is null true false".split()
)


def first_keyword(sql: str) -> str:
    text = _SKIPPED.sub(" ", sql).strip().lstrip("(").strip()
    match = re.match(r"[A-Za-z]+", text)
    return match.group(0).upper() if match else ""


def refusal(conn: psycopg.Connection[Any], sql: str, statement: Statement) -> str | None:
    """Why the statement may not run, or None."""
    keyword = first_keyword(sql)
    if keyword in WRITING_KEYWORDS:
        return f"steplog sql is read-only: {keyword} refused"
    if keyword not in READING_KEYWORDS:
        return f"SQL error: a statement starts with {', '.join(READING_KEYWORDS)}, not {keyword!r}"
    code = " ".join(statement.code)
    if re.search(r";\s*\S", code):
        return "SQL error: one statement at a time"
    for word in re.findall(r"[A-Za-z_]+", code):  # a data-modifying WITH, EXPLAIN ANALYZE …
        if word.upper() in _WRITING_ANYWHERE:
            return f"steplog sql is read-only: {word.upper()} refused"
    named = sorted(statement.calls - _SYNTAX)
    if not named:
        return None
    volatile = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT proname FROM pg_proc WHERE proname = ANY(%s) AND provolatile = 'v'",
            (named,),
        )
    ]
    for name in sorted(set(volatile) - PURE_VOLATILE):
        return f"steplog sql is read-only: function {name}() refused (it may change something)"
    return None


def run_readonly(store: PostgresEventStore, sql: str, params: Mapping[str, Any]) -> QueryResult:
    """The columns and rows of one reading statement; QueryRefused otherwise."""
    if not sql.strip():
        raise QueryRefused("no SQL given")
    statement = Statement(sql)
    missing = [name for name in statement.params if name not in params]
    if missing:
        raise QueryRefused(f"SQL error: no --param given for :{missing[0]}")
    try:
        conn = store.connect()
    except psycopg.Error as exc:
        raise store.error_for(exc) from exc
    try:
        set_json_loads(lambda text: text, conn)  # json values come back as the text stored
        why = refusal(conn, sql, statement)
        if why:
            raise QueryRefused(why)
        conn.execute("BEGIN TRANSACTION READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        try:
            cursor = conn.execute(statement.text.encode("utf-8"), dict(params), prepare=False)
            columns = [d.name for d in cursor.description or ()]
            rows = [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        finally:
            if not conn.closed:
                conn.execute("ROLLBACK")
        return QueryResult(columns, rows)
    except pg_errors.ReadOnlySqlTransaction as exc:
        raise QueryRefused(f"steplog sql is read-only: {exc.diag.message_primary}") from exc
    except (pg_errors.SyntaxError, pg_errors.ProgrammingError, pg_errors.DataError) as exc:
        raise QueryRefused(f"SQL error: {store.scrub(exc)}") from exc
    except psycopg.errors.QueryCanceled as exc:
        raise QueryRefused(
            f"SQL error: the query ran longer than {STATEMENT_TIMEOUT_MS // 1000} s"
        ) from exc
    except psycopg.Error as exc:
        if getattr(exc, "sqlstate", None) and str(exc.sqlstate).startswith("42"):
            raise QueryRefused(f"SQL error: {store.scrub(exc)}") from exc
        raise store.error_for(exc) from exc
    finally:
        conn.close()
