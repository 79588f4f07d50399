"""The log on a PostgreSQL server: open (connect, schema, version checks), append, read, blobs.

psycopg 3 with a psycopg-pool ConnectionPool: the `postgres` extra (pip install
'steplog[postgres]'); `steplog.eventstore.open_event_store` says so in one line when it is
missing. The surface is SQLiteEventStore's, as far as the store itself goes; the schema is
schema_postgres.sql, with schema.sql's table and column names.

Global order. An append takes `LOCK TABLE events IN EXCLUSIVE MODE` first, inside its
transaction (the anchor is eventsourcing's postgres.py): writers queue one behind the other as
they do on SQLite's write lock, while readers (ACCESS SHARE) are never blocked. Under the lock
the batch's seqs are max(seq) + 1 …, so seqs have no gaps and commit in seq order: a lower seq
can never become visible after a higher one, and a follower reading `seq > cursor` misses
nothing. Every insert NOTIFYs `steplog_events` (a trigger), delivered at commit, which is what
`wait_for_events` LISTENs for.

Failures become one-line StoreErrors naming the server as host:port/dbname, never the password:
ServerUnreachable, DatabaseMissing, DatabaseUnusable (not steplog's, newer schema, not UTF8),
DatabaseReadOnly, DatabaseBusy (the lock was not had within the busy timeout), DatabaseFull.

Transient failures are retried, for at most STEPLOG_PG_RETRY_S seconds (default 15; 0: never)
from the start of the operation: a connection the server closed or could not take yet (refused,
reset, terminated by pg_terminate_backend or a shutdown, "the database system is starting up").
Nothing else is (a statement the server refused fails at once). A retry runs on a new direct
connection, not the pool's: the pool reconnects in the background with a backoff of seconds,
and is used again once it has a connection ready. Reads are retried whole. An append is retried
only when the failed attempt cannot have committed; if the connection went during its COMMIT
(the outcome unknown), the retry first looks, under the events lock (so the first attempt has
ended either way), for the batch's rows: the hash chain does not cover seq, so the batch's
hashes were known before it was sent. Found, they are returned as stored (with their seqs),
neither appended twice nor reported as a VersionConflict. The error after the last try says
how long steplog tried; until a try works again, later operations get a single try each (a run
that stops is not held up retry_s more for each operation on its way out). Opening a store is
not retried: a wrong host or port is said at once. The retries of a write_transaction() (and of
reading()) end once it holds its connection, lock and BEGIN: the caller's work on it is not
run again, and a COMMIT lost there is a one-line error (resume reads what landed).

Every statement on the store's own connections (the pool's and the retries'; not `steplog sql`'s
nor the open's, which may migrate a large log) is cancelled by the server after
STEPLOG_PG_STATEMENT_TIMEOUT_MS (default 120000; 0: no limit), so no statement can hang a run:
one line, and the transaction it was in wrote nothing. TCP keepalives (unless the URL sets them)
notice a server that vanished without closing its connections.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import re
import time
from contextlib import ExitStack, contextmanager, suppress
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from steplog.eventstore.config import busy_timeout_from_env, redact_url, sql_file, url_password
from steplog.eventstore.errors import (
    DatabaseBusy,
    DatabaseFull,
    DatabaseMissing,
    DatabaseNotCreated,
    DatabaseReadOnly,
    ServerUnreachable,
)
from steplog.eventstore.reads import LogReads
from steplog.eventstore.record import (
    GENESIS_HASH,
    Blob,
    DatabaseUnusable,
    StoredEvent,
    StoreError,
    VersionConflict,
    blob_row,
    link,
    stored_from_row,
)

# psycopg-pool warns through `logging` each time it fails to reconnect, several lines each; with
# no handler configured Python would print them to stderr beside steplog's one line. A
# NullHandler keeps them for an application that configures logging, and quiet otherwise.
logging.getLogger("psycopg").addHandler(logging.NullHandler())

if TYPE_CHECKING:  # the event models import pydantic; the store only reads their JSON
    from steplog.eventstore.events import NewEvent

SCHEMA_VERSION = 5  # schema_postgres.sql's own count, apart from SQLite's
SCHEMA_PATH = sql_file("schema_postgres.sql")
MIGRATIONS_PATH = sql_file("migrations_postgres.sql")
APPLICATION = "steplog"
CHANNEL = "steplog_events"
MIN_SERVER_VERSION = 120000  # the oldest release steplog accepts; the tests run Debian's (15)
READ_BATCH = 5000
DEFAULT_CONNECT_TIMEOUT_S = 10
DEFAULT_POOL_SIZE = 4
DEFAULT_RETRY_S = 15.0  # STEPLOG_PG_RETRY_S
DEFAULT_STATEMENT_TIMEOUT_MS = 120_000  # STEPLOG_PG_STATEMENT_TIMEOUT_MS
RETRY_FIRST_PAUSE_S = 0.05  # then doubled after each failed try, up to RETRY_MAX_PAUSE_S
RETRY_MAX_PAUSE_S = 1.0
# With retries on, how long an operation waits for the pool before it counts as a failed try
# (a server gone away leaves the pool nothing to give; a retry then connects directly).
POOL_WAIT_WHEN_RETRYING_S = 2.0
POOL_POKE_EVERY_S = 5.0  # while the pool recovers: how often it is asked to grow again
# libpq's TCP keepalives, unless the URL sets its own: a peer gone silent is noticed in ~25 s
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
# SQLSTATEs of a connection that ended, or could not begin yet: the same work may succeed on a
# new one. 57P01 admin_shutdown (pg_terminate_backend, a fast or smart shutdown), 57P02
# crash_shutdown, 57P03 cannot_connect_now (starting up, recovering), class 08 but 08P01.
_RETRY_STATES = frozenset({"57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"})
# A FATAL at connect (libpq gives it no SQLSTATE) that passes by itself; any other (no such
# database, a wrong password, no pg_hba.conf entry) will not.
_PASSING_FATAL = re.compile(
    r"the database system is (starting up|shutting down|in recovery mode|not yet accepting)"
    r"|sorry, too many clients|terminating connection due to",
    re.IGNORECASE,
)
# libpq's words when the server has no database of the name asked for (no SQLSTATE at connect)
_NO_DATABASE = re.compile(r'^database ".*" does not exist$')
_LIBPQ_PREFIX = re.compile(
    r"^(connection failed: )?(connection to server (at|on) .*? failed: )?(FATAL: +)?"
)
# Serialises concurrent first opens of one empty database, and upgrades of an older one
# (pg_advisory_xact_lock): "STLG".
_SCHEMA_LOCK = 0x53544C47
_MIGRATION_HEADER = re.compile(r"^-- migration (\d+): (.+)$", re.MULTILINE)
# The line that opens schema_postgres.sql's views part, which every upgrade creates again
_VIEWS_PART = re.compile(r"^-- Audit views -+$", re.MULTILINE)
_CREATE_VIEW = re.compile(r"^\s*CREATE\s+VIEW\s+(\w+)", re.IGNORECASE | re.MULTILINE)
_COMMENT = re.compile(r"--[^\n]*")

# Runs inside the append transaction after the events are inserted, as on SQLite, with the
# psycopg connection of that transaction.
Projector = Callable[[psycopg.Connection[Any], Sequence[StoredEvent]], None]
T = TypeVar("T")

_COLUMNS = "seq, job_id, version, ts, level, type, step, data::text, prev_hash, hash"
_COLUMNS_WITHOUT_HASHES = "seq, job_id, version, ts, level, type, step, data::text, '', ''"
_INSERT_EVENTS = (
    "INSERT INTO events (seq, job_id, version, ts, level, type, step, data, prev_hash, hash)"
    " SELECT seq, %s, version, ts, level, type, step, data::json, prev_hash, hash"
    " FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::text[], %s::text[])"
    " AS batch (seq, version, ts, level, type, step, data, prev_hash, hash)"
)
_INSERT_BLOB = (
    "INSERT INTO blobs (sha256, size, content) VALUES (%s, %s, %s) ON CONFLICT (sha256) DO NOTHING"
)


def migrations(text: str) -> dict[int, tuple[str, str]]:
    """migrations_postgres.sql as {version: (description, script)}, every version from 2 up to
    the current one; a script of comments only is "" (the section re-creates the views only)."""
    heads = list(_MIGRATION_HEADER.finditer(text))
    found: dict[int, tuple[str, str]] = {}
    for head, nxt in zip(heads, [*heads[1:], None]):
        body = text[head.end() : nxt.start() if nxt else len(text)]
        script = body.strip() if _COMMENT.sub("", body).strip() else ""
        found[int(head.group(1))] = (head.group(2).strip(), script)
    if sorted(found) != list(range(2, SCHEMA_VERSION + 1)):
        raise StoreError(
            f"migrations_postgres.sql has versions {sorted(found)}, not 2..{SCHEMA_VERSION}"
        )
    return found


def views_part(schema: str) -> tuple[str, list[str]]:
    """The part of schema_postgres.sql that every upgrade drops and creates again (its
    "-- Audit views ---" line to the end), and the names of the views it creates."""
    marks = list(_VIEWS_PART.finditer(schema))
    if len(marks) != 1:
        raise StoreError(
            f"schema_postgres.sql has {len(marks)} '-- Audit views ---' lines, not one"
        )
    part = schema[marks[0].start() :]
    return part, _CREATE_VIEW.findall(_COMMENT.sub("", part))


def describe(conninfo: str) -> str:
    """host:port/dbname of a URL or conninfo string, as libpq would resolve it (PGHOST … when
    the URL leaves them out); never the user's password. For messages."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return redact_url(conninfo)
    env = os.environ
    host = params.get("host") or params.get("hostaddr") or env.get("PGHOST") or "localhost"
    port = params.get("port") or env.get("PGPORT") or "5432"
    user = params.get("user") or env.get("PGUSER") or _os_user()
    dbname = params.get("dbname") or env.get("PGDATABASE") or user
    return f"{host}:{port}/{dbname}"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "postgres"


def retry_s_from_env() -> float:
    """STEPLOG_PG_RETRY_S, or the default: for how long (seconds) an operation on the server is
    tried again after a transient failure. 0 turns retries off."""
    raw = os.environ.get("STEPLOG_PG_RETRY_S")
    if raw is None or not raw.strip():
        return DEFAULT_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise StoreError(f"STEPLOG_PG_RETRY_S must be a number of seconds (0 or more), not {raw!r}")
    return value


def statement_timeout_from_env() -> int:
    """STEPLOG_PG_STATEMENT_TIMEOUT_MS, or the default: how long the server lets one statement
    of steplog's run before it cancels it. 0: no limit."""
    raw = os.environ.get("STEPLOG_PG_STATEMENT_TIMEOUT_MS")
    if raw is None or not raw.strip():
        return DEFAULT_STATEMENT_TIMEOUT_MS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise StoreError(
            f"STEPLOG_PG_STATEMENT_TIMEOUT_MS must be a whole number of milliseconds, not {raw!r}"
        )
    return value


def transient(exc: BaseException) -> bool:
    """Whether `exc` is the connection failing rather than the statement: the same work may
    succeed on a new connection (see the module's docstring)."""
    if isinstance(exc, PoolTimeout):
        return True  # the pool had no connection to give: it could not make one
    if isinstance(exc, (PoolClosed, TooManyRequests)) or not isinstance(
        exc, psycopg.OperationalError
    ):
        return False
    if exc.sqlstate is not None:
        return exc.sqlstate in _RETRY_STATES
    # libpq's own failures: refused, timed out, reset, "server closed the connection
    # unexpectedly", "the connection is lost"; or a FATAL at connect
    text = str(exc)
    return "FATAL:" not in text or bool(_PASSING_FATAL.search(text))


class _Retries:
    """The tries of one operation: started when it was, for at most `budget_s` seconds."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.failed = 0  # tries that failed so far: the next one is a retry when > 0
        self._pause = RETRY_FIRST_PAUSE_S

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed

    def again(self, exc: BaseException) -> bool:
        """After a failed try: True, once the pause is over, if it is worth another."""
        self.failed += 1
        left = self.left()
        if not transient(exc) or left <= 0:
            return False
        time.sleep(min(self._pause, left))
        self._pause = min(self._pause * 2, RETRY_MAX_PAUSE_S)
        return True


def _round_trip(conn: psycopg.Connection[Any], stack: ExitStack) -> None:
    """An empty query: the connection answers, or the try fails here, before any work."""
    conn.execute("")


def _unwind(stack: ExitStack, exc: BaseException) -> None:
    """Leave what a failed try entered (its transaction rolls back, the pool takes back its
    connection), as if `exc` had passed through; an error in doing so on a dead connection
    changes nothing and is dropped."""
    with suppress(psycopg.Error):
        stack.__exit__(type(exc), exc, exc.__traceback__)


class PostgresEventStore(LogReads):
    """The event log in one PostgreSQL database. A small connection pool; each append is one
    transaction holding the EXCLUSIVE lock on events.

    create: apply the schema to an empty database (False: refuse it, DatabaseNotCreated, as
    read verbs do: they never create a log). A database at an older schema version is upgraded
    either way (migrations_postgres.sql), as SQLite's store upgrades a file for every verb."""

    dialect = "postgresql"
    notifies = True  # wait_for_events is woken by the NOTIFY of a commit
    MARK = "%s"
    JSON_TEXT = "({column} ->> '{key}')"
    DATA_TEXT = "data::text"

    def __init__(
        self,
        url: str,
        *,
        projectors: Sequence[Projector] = (),
        busy_timeout_ms: int | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        pool_size: int = DEFAULT_POOL_SIZE,
        create: bool = True,
        upgrade: bool = True,
        retry_s: float | None = None,
        statement_timeout_ms: int | None = None,
    ) -> None:
        """retry_s (default STEPLOG_PG_RETRY_S) and statement_timeout_ms (default
        STEPLOG_PG_STATEMENT_TIMEOUT_MS): see the module's docstring; 0 turns either off."""
        self._projectors = list(projectors)
        self._may_create = create
        self._may_upgrade = upgrade
        self.created = False  # this open applied the schema to an empty database
        if busy_timeout_ms is None:
            busy_timeout_ms = busy_timeout_from_env()
        self.busy_timeout_ms = busy_timeout_ms
        self.retry_s = retry_s_from_env() if retry_s is None else max(0.0, retry_s)
        if statement_timeout_ms is None:
            statement_timeout_ms = statement_timeout_from_env()
        self.statement_timeout_ms = max(0, int(statement_timeout_ms))
        self.where = describe(url)
        self.url = redact_url(url)  # what may be shown: the password is ***
        self._secrets = _secrets_of(url)
        self.read_only_reason: str | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._connect_timeout_s = connect_timeout_s
        # after a retry, until the pool has a connection ready again: operations connect directly
        self._pool_recovering = False
        self._pool_poked = 0.0
        # an operation gave up on the server, and no try has worked since: later ones try once
        # (so a run's exit is not delayed by a full retry_s for every operation in its way)
        self._given_up = False
        try:
            self._conninfo = make_conninfo(
                url,
                connect_timeout=str(max(1, round(connect_timeout_s))),
                application_name="steplog",
                client_encoding="UTF8",
                **_keepalives_unless_set(url),
            )
        except psycopg.ProgrammingError as exc:
            raise DatabaseUnusable(
                f"not a usable PostgreSQL URL {self.url}: {self._scrub(exc)}"
            ) from exc
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                self._prepare(conn)
        except psycopg.Error as exc:
            raise self._error(exc, opening=True) from exc
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True},
            timeout=connect_timeout_s + 5,
            # Without retries, each connection is checked as it leaves the pool (a round trip),
            # so one the server dropped meanwhile is replaced. With retries, a dead one fails
            # its first statement and the try is made again at once on a new connection: the
            # pool's check would instead wait a second (its backoff) for each dead one.
            check=ConnectionPool.check_connection if self.retry_s <= 0 else None,
            configure=self._configure,
            name=f"steplog {self.where}",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s + 5)
        except PoolTimeout as exc:
            error = self._unreachable()
            self._pool.close()
            raise error from exc

    # -- opening -------------------------------------------------------------------------------

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Check the server and the database; apply the schema to an empty one, or upgrade an
        older one (as SQLite's store does, for readers too: the views must exist)."""
        version = conn.info.server_version
        if version < MIN_SERVER_VERSION:
            raise DatabaseUnusable(
                f"PostgreSQL server {self.where} is version {version // 10000};"
                f" steplog needs {MIN_SERVER_VERSION // 10000} or later"
            )
        encoding = conn.execute("SELECT current_setting('server_encoding')").fetchone()[0]
        if encoding.upper() not in ("UTF8", "UTF-8"):
            raise DatabaseUnusable(
                f"PostgreSQL database {self.where} is encoded {encoding}; steplog needs UTF8"
                " (CREATE DATABASE … ENCODING 'UTF8')"
            )
        schema, tables = self._read_header(conn)
        if schema is None:
            raise DatabaseUnusable(
                f"PostgreSQL database {self.where} has no schema to use: the search_path names"
                " none that exists"
            )
        version = self._check_usable(conn, tables)
        if not tables and not self._may_create:
            raise DatabaseNotCreated(
                f"no steplog database at {self.where} yet (the database is empty);"
                " start one with: steplog run PIPELINE.toml"
            )
        if not tables or (version < SCHEMA_VERSION and self._may_upgrade):
            self._create_or_upgrade(conn)
        self.read_only_reason = self._read_only(conn)

    @staticmethod
    def _read_header(conn: psycopg.Connection[Any]) -> tuple[str | None, list[str]]:
        """The schema steplog's tables live in (the current one) and the tables it holds."""
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class AS c"
                " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
                " ORDER BY c.relname"
            )
        ]
        return schema, tables

    def _check_usable(self, conn: psycopg.Connection[Any], tables: list[str]) -> int:
        """The schema version recorded in the database (0: it is empty). Refuses one that is
        not steplog's, or was written by a newer steplog, before anything is changed."""
        if not tables:
            return 0
        meta: dict[str, str] = {}
        if "steplog_meta" in tables:
            meta = dict(conn.execute("SELECT key, value FROM steplog_meta").fetchall())
        if meta.get("application") != APPLICATION:
            raise DatabaseUnusable(
                f"PostgreSQL database {self.where} is not a steplog database"
                f" (it holds tables {', '.join(tables[:5])})"
            )
        raw = meta.get("schema_version", "")
        if not raw.isdigit() or int(raw) < 1:
            raise DatabaseUnusable(
                f"PostgreSQL database {self.where} has no readable schema version ({raw!r})"
            )
        if int(raw) > SCHEMA_VERSION:
            raise DatabaseUnusable(
                f"PostgreSQL database {self.where} was written by a newer steplog"
                f" (schema {raw}; this steplog knows up to {SCHEMA_VERSION})"
            )
        return int(raw)

    def _create_or_upgrade(self, conn: psycopg.Connection[Any]) -> None:
        """Apply schema_postgres.sql to an empty database, or migrations_postgres.sql to an
        older one, and record the version: one transaction, all of it or nothing. Another
        process opening the same database waits on the advisory lock, then finds the work done
        (and checks the database as any other)."""
        from steplog.eventstore.events import utc_now

        schema = SCHEMA_PATH.read_text(encoding="utf-8")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            _, tables = self._read_header(conn)
            version = self._check_usable(conn, tables)
            if not tables:
                self._create(conn, schema)
                applied = [(SCHEMA_VERSION, f"created at schema {SCHEMA_VERSION}")]
            elif version < SCHEMA_VERSION:
                applied = self._upgrade(conn, version, schema)
            else:  # done meanwhile by another process
                return
            conn.execute(
                "INSERT INTO steplog_meta (key, value) VALUES ('application', %s),"
                " ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (APPLICATION, str(SCHEMA_VERSION)),
            )
            now = utc_now()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO schema_migrations (version, ts, description) VALUES (%s, %s, %s)",
                    [(step, now, description) for step, description in applied],
                )
        self.created = not tables

    def _create(self, conn: psycopg.Connection[Any], schema: str) -> None:
        try:
            conn.execute(schema)  # type: ignore[arg-type]  # a fixed script, no parameters
        except pg_errors.InsufficientPrivilege as exc:
            raise DatabaseReadOnly(
                f"PostgreSQL database {self.where} is empty and this role may not create"
                f" steplog's tables in it ({exc.diag.message_primary})"
            ) from exc

    def _upgrade(
        self, conn: psycopg.Connection[Any], version: int, schema: str
    ) -> list[tuple[int, str]]:
        """Inside the caller's transaction: drop steplog's views, run the sections of
        migrations_postgres.sql above `version`, create the views part of schema_postgres.sql
        again. Returns (version, description) of each section."""
        steps = migrations(MIGRATIONS_PATH.read_text(encoding="utf-8"))
        part, views = views_part(schema)
        try:
            present = [
                row[0]
                for row in conn.execute(
                    "SELECT c.relname FROM pg_class AS c"
                    " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND c.relkind = 'v'"
                    " AND c.relname = ANY(%s::text[])",
                    (views,),
                )
            ]
            if present:  # one statement: views built on each other go together
                conn.execute("DROP VIEW " + ", ".join(f'"{name}"' for name in present))
            applied = []
            for step in range(version + 1, SCHEMA_VERSION + 1):
                description, script = steps[step]
                if script:
                    conn.execute(script)  # type: ignore[arg-type]  # a fixed script
                applied.append((step, description))
            conn.execute(part)  # type: ignore[arg-type]  # a fixed script, no parameters
        except (pg_errors.InsufficientPrivilege, pg_errors.ReadOnlySqlTransaction) as exc:
            why = (
                "is read-only"  # a standby, or default_transaction_read_only
                if isinstance(exc, pg_errors.ReadOnlySqlTransaction)
                else "this role may not change its schema"
            )
            raise DatabaseReadOnly(
                f"PostgreSQL database {self.where} needs an upgrade to schema {SCHEMA_VERSION}"
                f" (it is at {version}) but {why} ({exc.diag.message_primary})"
            ) from exc
        except pg_errors.DependentObjectsStillExist as exc:
            raise DatabaseUnusable(
                f"PostgreSQL database {self.where} needs an upgrade to schema {SCHEMA_VERSION}"
                f" (it is at {version}), which creates steplog's views again, but"
                f" {exc.diag.message_detail or 'another object depends on one'}: drop it first"
                " (and create it again after)"
            ) from exc
        return applied

    def _read_only(self, conn: psycopg.Connection[Any]) -> str | None:
        """Why this role cannot append here, or None if it can."""
        standby, read_only, user = conn.execute(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), current_user"
        ).fetchone()
        if standby:
            return "the server is a standby (in recovery)"
        if read_only == "on":
            return "this role's transactions are read-only (default_transaction_read_only)"
        missing = [
            f"{privilege} on {table}"
            for table, privilege in (
                ("events", "INSERT"),
                ("events", "UPDATE"),  # LOCK TABLE … IN EXCLUSIVE MODE asks for it
                ("blobs", "INSERT"),
                ("streams", "INSERT"),
                ("streams", "UPDATE"),
            )
            if not conn.execute(
                "SELECT has_table_privilege(%s, %s)", (table, privilege)
            ).fetchone()[0]
        ]
        if missing:
            return f"role {user} lacks {', '.join(missing)}"
        return None

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._pool.close()

    def __enter__(self) -> PostgresEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def require_writable(self) -> None:
        """Refuse up front, before a write verb starts anything, if this role cannot append."""
        if self.read_only_reason:
            raise DatabaseReadOnly(
                f"PostgreSQL database {self.where} is read-only ({self.read_only_reason});"
                " read verbs (status, jobs, events, sql, verify) still work"
            )

    # -- errors --------------------------------------------------------------------------------

    def _scrub(self, exc: BaseException | str) -> str:
        """A driver's message on one line, any password in it blanked out, without what the
        message already names (libpq's "connection to server at … failed:", "FATAL:")."""
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        head = _LIBPQ_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
        text = " ".join(head.split())
        if len(lines) > 1:  # libpq's hint, e.g. "Is the server running on that host …?"
            text += " (" + " ".join(" ".join(lines[1:]).split()) + ")"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, exc: psycopg.Error, *, opening: bool = False) -> StoreError:
        """The StoreError to raise (`from exc`) for `exc` on this store."""
        detail = self._scrub(exc)
        where = f"PostgreSQL database {self.where}"
        if isinstance(exc, pg_errors.LockNotAvailable):
            return DatabaseBusy(
                f"{where} is locked: another writer held the events lock for more than"
                f" {self.busy_timeout_ms} ms (STEPLOG_BUSY_TIMEOUT_MS)"
            )
        if isinstance(exc, pg_errors.InvalidCatalogName) or _NO_DATABASE.search(detail):
            return DatabaseMissing(
                f"cannot use {where}: the server has no such database (createdb it first)"
            )
        if isinstance(exc, (pg_errors.DiskFull, pg_errors.OutOfMemory)):
            return DatabaseFull(f"{where}: the server is out of space ({detail})")
        if isinstance(exc, (pg_errors.ReadOnlySqlTransaction, pg_errors.InsufficientPrivilege)):
            return DatabaseReadOnly(f"{where}: refused: {detail}")
        if isinstance(exc, pg_errors.QueryCanceled) and "statement timeout" in detail:
            return StoreError(
                f"{where}: a statement ran past the statement timeout of"
                f" {self.statement_timeout_ms} ms (STEPLOG_PG_STATEMENT_TIMEOUT_MS) and was"
                " cancelled; its transaction wrote nothing"
            )
        if isinstance(exc, pg_errors.QueryCanceled):
            return StoreError(f"{where}: statement cancelled ({detail})")
        if isinstance(exc, pg_errors.InvalidPassword) or "authentication failed" in detail:
            return DatabaseUnusable(f"cannot use {where}: {detail}")
        if transient(exc):  # libpq itself failed (refused, timed out, connection dropped) …
            verb = "cannot reach" if opening else "lost the connection to"
            return ServerUnreachable(f"{verb} PostgreSQL server {self.where}: {detail}")
        if opening:
            return DatabaseUnusable(f"cannot use {where}: {detail}")
        return StoreError(f"{where}: {detail}")

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own (autocommit), outside the pool, for the caller to close:
        `steplog sql` runs the user's statement on one, so nothing it sets outlives it."""
        return psycopg.connect(self._conninfo, autocommit=True)

    def error_for(self, exc: psycopg.Error) -> StoreError:
        """The one-line StoreError for a driver error on this store (no password in it)."""
        return self._error(exc)

    def scrub(self, exc: BaseException | str) -> str:
        """A driver's message on one line, without any password."""
        return self._scrub(exc)

    def _gave_up(
        self, exc: psycopg.Error, retries: _Retries, *, unsure: str | None = None
    ) -> StoreError:
        """The error after the last try: the last failure's, with how long steplog tried (when
        it did) and, for an append whose COMMIT went unanswered, that its outcome is unknown."""
        if isinstance(exc, PoolTimeout):
            error = self._unreachable(opening=False)
        else:
            error = self._error(exc)
        notes = []
        if unsure:
            notes.append(
                f"whether {unsure} was stored is unknown: the log holds all of it or none,"
                " and resume goes on from what it holds"
            )
        if transient(exc) and retries.budget_s > 0:
            self._given_up = True
            notes.append(
                f"gave up after {retries.elapsed:.1f} s of retries (STEPLOG_PG_RETRY_S="
                f"{self.retry_s:g})"
            )
        elif transient(exc) and self.retry_s > 0:
            notes.append(
                "not retried: the server has not answered since an earlier operation gave up"
                f" after {self.retry_s:g} s (STEPLOG_PG_RETRY_S)"
            )
        if not notes:
            return error
        return type(error)(f"{error}; {'; '.join(notes)}")

    # -- connections ---------------------------------------------------------------------------

    def _retries(self) -> _Retries:
        """The budget of a new operation: retry_s, or one try once an operation gave up."""
        return _Retries(0.0 if self._given_up else self.retry_s)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Every connection of the store's own (the pool's, a retry's, the listener)."""
        if self.statement_timeout_ms > 0:
            conn.execute(f"SET statement_timeout = {int(self.statement_timeout_ms)}")

    def _connect_directly(self, left_s: float) -> psycopg.Connection[Any]:
        """A new connection, not the pool's, for a retry; its connect timeout fits the time the
        retries have left (libpq's least is 2 s)."""
        timeout = max(2, min(math.ceil(self._connect_timeout_s), math.ceil(max(left_s, 0))))
        conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=timeout)
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _try_connection(self, retries: _Retries) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one try; driver errors pass through as they are, for the caller to
        judge. A first try takes the pool's, unless the pool is still recovering from a failure
        (no connection ready); a retry, or a try meanwhile, connects directly."""
        if retries.failed == 0 and not self._pool_still_recovering():
            with self._pool.connection(timeout=self._pool_wait()) as conn:
                self._pool_recovering = False
                yield conn
        else:
            conn = self._connect_directly(retries.left())
            try:
                yield conn
            finally:
                conn.close()
        self._given_up = False  # this try worked

    def _pool_wait(self) -> float:
        """How long a first try waits for the pool: with retries on, at most half of them, so
        that direct connections get the rest."""
        if self.retry_s <= 0:
            return self._pool.timeout
        return max(0.1, min(self._pool.timeout, POOL_WAIT_WHEN_RETRYING_S, self.retry_s / 2))

    def _pool_still_recovering(self) -> bool:
        if not self._pool_recovering:
            return False
        if self._pool.get_stats().get("pool_available", 0) > 0:
            return False
        now = time.monotonic()
        if now - self._pool_poked >= POOL_POKE_EVERY_S:
            # a pool that gave up reconnecting grows only when asked (a client waits, check())
            self._pool_poked = now
            with suppress(psycopg.Error):
                self._pool.check()
        return True

    def _failed_try(self, exc: psycopg.Error, retries: _Retries) -> bool:
        """After a try failed with `exc`: whether to try again (having paused)."""
        if transient(exc):
            self._pool_recovering = True
        return retries.again(exc)

    def _retrying(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """work(conn), tried again on a new connection after a transient failure (within
        retry_s): for work that may be run twice (a read; an idempotent write)."""
        retries = self._retries()
        while True:
            try:
                with self._try_connection(retries) as conn:
                    return work(conn)
            except psycopg.Error as exc:
                if not self._failed_try(exc, retries):
                    raise self._gave_up(exc, retries) from exc

    @contextmanager
    def _session(
        self, setup: Callable[[psycopg.Connection[Any], ExitStack], None] | None = None
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection with `setup` done on it (BEGIN, the lock …), both retried after a
        transient failure, which cannot have changed anything yet. What the caller then does
        with it is not retried (it cannot be run again from here): a driver error there, or at
        the COMMIT that ends it, becomes a StoreError."""
        retries = self._retries()
        while True:
            attempt = ExitStack()
            try:
                conn = attempt.enter_context(self._try_connection(retries))
                if setup is not None:
                    setup(conn, attempt)
                break
            except psycopg.Error as exc:
                _unwind(attempt, exc)
                if not self._failed_try(exc, retries):
                    raise self._gave_up(exc, retries) from exc
            except BaseException as exc:
                _unwind(attempt, exc)
                raise
        try:
            with attempt:
                yield conn
        except PoolTimeout as exc:
            raise self._unreachable(opening=False) from exc
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection (autocommit) that answered a first round trip (the pool does not check
        its connections when retries are on); getting it is retried, driver errors become
        StoreErrors."""
        with self._session(_round_trip) as conn:
            yield conn

    def _unreachable(self, *, opening: bool = True) -> StoreError:
        """The pool had no connection to give within its timeout: one direct attempt (bounded
        by connect_timeout) says why, in libpq's words."""
        try:
            psycopg.connect(self._conninfo, autocommit=True).close()
        except psycopg.Error as exc:
            return self._error(exc, opening=opening)
        verb = "cannot reach" if opening else "lost the connection to"
        return ServerUnreachable(
            f"{verb} PostgreSQL server {self.where}: no connection within"
            f" {self._pool_wait():.0f} s (the server answers again now)"
        )

    def _lock_events(self, conn: psycopg.Connection[Any]) -> None:
        """LOCK TABLE events IN EXCLUSIVE MODE, waited for at most the busy timeout, inside the
        transaction on `conn`."""
        if self.busy_timeout_ms <= 0:  # "do not wait", as on SQLite (lock_timeout 0 waits forever)
            conn.execute("LOCK TABLE events IN EXCLUSIVE MODE NOWAIT")
            return
        conn.execute(f"SET LOCAL lock_timeout = {int(self.busy_timeout_ms)}")
        statement_ms = self.statement_timeout_ms
        if 0 < statement_ms <= self.busy_timeout_ms:  # the wait may take the whole busy timeout
            conn.execute(f"SET LOCAL statement_timeout = {self.busy_timeout_ms + statement_ms}")
            conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            conn.execute(f"SET LOCAL statement_timeout = {statement_ms}")
        else:
            conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")

    def _begin_locked(self, conn: psycopg.Connection[Any], stack: ExitStack) -> None:
        stack.enter_context(conn.transaction())
        self._lock_events(conn)

    @contextmanager
    def write_transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """BEGIN; LOCK TABLE events IN EXCLUSIVE MODE … COMMIT, rolled back on any error: the
        write lock of SQLite's BEGIN IMMEDIATE, waited for at most the busy timeout. Getting
        the connection, the BEGIN and the lock are retried; the caller's work is not."""
        self.require_writable()
        with self._session(self._begin_locked) as conn:
            yield conn

    # -- writing -------------------------------------------------------------------------------

    def append(
        self,
        job_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        blobs: Sequence[Blob] = (),
    ) -> list[StoredEvent]:
        """Append a batch to one job in one transaction, or nothing at all.

        expected_version: the job's version the caller last saw (0 = the job must not exist);
        None appends at the head whatever it is.
        """
        prepared = [(e.ts, e.level, e.type, e.step, e.data_json()) for e in events]
        return self.append_rows(job_id, prepared, expected_version=expected_version, blobs=blobs)

    def append_rows(
        self,
        job_id: str,
        prepared: Sequence[tuple[str, str, str, str | None, str]],
        *,
        expected_version: int | None = None,
        blobs: Sequence[Blob] = (),
    ) -> list[StoredEvent]:
        """append() of rows already serialised, (ts, level, type, step, data JSON) each, kept
        exactly (a fork's or an import's copied history).

        A transient failure is retried (within retry_s): at once if the try failed before its
        COMMIT was sent (the server rolled it back); if it failed during the COMMIT, the next
        try looks for the batch first (see _append_try)."""
        if not job_id:
            raise StoreError("job_id must not be empty")
        if not prepared:
            return []
        self.require_writable()
        retries = self._retries()
        unsure: list[StoredEvent] | None = None  # a batch whose COMMIT went unanswered
        while True:
            committing: list[list[StoredEvent]] = []
            try:
                with self._try_connection(retries) as conn:
                    return self._append_try(
                        conn, job_id, prepared, expected_version, blobs, unsure, committing
                    )
            except pg_errors.UniqueViolation as exc:
                raise VersionConflict(f"job {job_id}: another writer appended first") from exc
            except (pg_errors.IntegrityError, pg_errors.DataError) as exc:
                reason = exc.diag.message_primary or self._scrub(exc)  # psycopg's own: no diag
                raise StoreError(f"job {job_id}: event refused by the database: {reason}") from exc
            except psycopg.Error as exc:
                if committing:
                    unsure = committing[0]
                if not self._failed_try(exc, retries):
                    what = None
                    if unsure is not None:
                        what = f"the last append to job {job_id} ({_versions(unsure)})"
                    raise self._gave_up(exc, retries, unsure=what) from exc

    def _append_try(
        self,
        conn: psycopg.Connection[Any],
        job_id: str,
        prepared: Sequence[tuple[str, str, str, str | None, str]],
        expected_version: int | None,
        blobs: Sequence[Blob],
        unsure: list[StoredEvent] | None,
        committing: list[list[StoredEvent]],
    ) -> list[StoredEvent]:
        """One try of append_rows. `unsure`: the rows of an earlier try whose COMMIT went
        unanswered. Under the events lock that try has ended, committed or rolled back (it held
        the lock until then), so the rows at its versions say which: if they are its rows, they
        are the answer; if not, this try appends as any other. The rows computed here go into
        `committing` once the COMMIT is about to be sent."""
        with conn.transaction():
            self._lock_events(conn)
            if unsure is not None:
                landed = self._stored_batch(conn, job_id, unsure)
                if landed is not None:
                    return landed
            stored = self.append_txn(conn, job_id, prepared, expected_version, blobs)
            committing.append(stored)
        return stored

    @staticmethod
    def _stored_batch(
        conn: psycopg.Connection[Any], job_id: str, batch: list[StoredEvent]
    ) -> list[StoredEvent] | None:
        """The rows the log holds at `batch`'s versions of the job, if they are `batch`'s own
        (same hashes, which cover every field but seq), else None."""
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE job_id = %s AND version BETWEEN %s AND %s"
            " ORDER BY version",
            (job_id, batch[0].version, batch[-1].version),
        ).fetchall()
        found = [StoredEvent._make(row) for row in rows]
        if [ev.hash for ev in found] != [ev.hash for ev in batch]:
            return None
        return found

    def append_txn(
        self,
        conn: psycopg.Connection[Any],
        job_id: str,
        prepared: Sequence[tuple[str, str, str, str | None, str]],
        expected_version: int | None,
        blobs: Sequence[Blob],
    ) -> list[StoredEvent]:
        """The append inside a caller's write_transaction (so several writes can share one)."""
        head = conn.execute(
            "SELECT version, last_hash, created_ts FROM streams WHERE job_id = %s", (job_id,)
        ).fetchone()
        version, prev_hash, created_ts = head if head else (0, GENESIS_HASH, prepared[0][0])
        if expected_version is not None and expected_version != version:
            raise VersionConflict(
                f"job {job_id} is at version {version}, expected {expected_version}"
            )
        if blobs:
            with conn.cursor() as cur:
                cur.executemany(_INSERT_BLOB, [blob_row(b) for b in blobs])
        seq0 = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        stored = link(job_id, seq0, version, prev_hash, prepared)
        columns = list(zip(*stored))
        conn.execute(_INSERT_EVENTS, (job_id, list(columns[0]), *(list(c) for c in columns[2:])))
        last = stored[-1]
        conn.execute(
            "INSERT INTO streams (job_id, version, last_hash, last_seq, created_ts, updated_ts)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (job_id) DO UPDATE SET version = excluded.version,"
            " last_hash = excluded.last_hash, last_seq = excluded.last_seq,"
            " updated_ts = excluded.updated_ts",
            (job_id, last.version, last.hash, last.seq, created_ts, last.ts),
        )
        for project in self._projectors:
            project(conn, stored)
        return stored

    def put_blob(self, content: Blob) -> str:
        """Store one blob (if not there yet); its own short transaction, no events lock.
        Retried like a read: a second insert of the same blob does nothing."""
        self.require_writable()
        row = blob_row(content)
        self._retrying(lambda conn: conn.execute(_INSERT_BLOB, row))
        return row[0]

    def put_blobs(self, contents: Sequence[Blob]) -> None:
        """Store several blobs (those not there yet) in one transaction, without the events
        lock: a whole database's blobs arrive this way, a batch at a time (`steplog copy`)."""
        self.require_writable()
        if not contents:
            return
        rows = [blob_row(b) for b in contents]

        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT_BLOB, rows)

        self._retrying(insert)  # retried like put_blob: a blob stored twice is stored once

    # -- reading -------------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for reads, autocommit. Getting it is retried, not what the
        caller reads on it: `read(work)` retries that too."""
        with self._connection() as conn:
            yield conn

    def read(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """work(conn) on a connection for reads, run again on a new connection after a
        transient failure (LogReads and the projection lookups read through it)."""
        return self._retrying(work)

    def table_names(self) -> set[str]:
        return self._retrying(lambda conn: set(self._read_header(conn)[1]))

    def schema_problems(self) -> tuple[int, list[str]]:
        """`verify`: the schema version, and how the schema differs from schema_postgres.sql's."""
        from steplog.eventstore import postgres_checks

        return self._retrying(postgres_checks.schema_problems)

    def integrity_problems(self) -> list[str]:
        """`verify`: PostgreSQL checks its own pages (checksums, WAL); nothing to add here."""
        return []

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._retrying(lambda conn: conn.execute(sql, tuple(params)).fetchall())

    def _batched(self, sql: str, params: tuple, key_index: int) -> Iterator[StoredEvent]:
        """Keyset pagination so memory stays bounded however long the log is; no connection is
        held while the caller works on a batch (and each batch is retried on its own)."""
        last = params[0]
        while True:
            rows = self._fetch(sql, (last, *params[1:], READ_BATCH))
            yield from map(stored_from_row, rows)
            if len(rows) < READ_BATCH:
                return
            last = rows[-1][key_index]

    def read_job(
        self,
        job_id: str,
        *,
        after_version: int = 0,
        until_version: int | None = None,
        hashes: bool = True,
    ) -> Iterator[StoredEvent]:
        until = until_version if until_version is not None else 2**62
        columns = _COLUMNS if hashes else _COLUMNS_WITHOUT_HASHES
        sql = (
            f"SELECT {columns} FROM events"
            " WHERE version > %s AND job_id = %s AND version <= %s ORDER BY version LIMIT %s"
        )
        yield from self._batched(sql, (after_version, job_id, until), key_index=2)

    def read_all(
        self,
        *,
        after_seq: int = 0,
        until_seq: int | None = None,
        data_for: Sequence[str] | None = None,
    ) -> Iterator[StoredEvent]:
        """Every event in global order. `data_for` (a fold's needs) limits which events carry
        their data: the others come with "{}", and no event with its hashes (""), as on SQLite."""
        until = until_seq if until_seq is not None else 2**62
        if data_for is None:
            sql = (
                f"SELECT {_COLUMNS} FROM events WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s"
            )
            yield from self._batched(sql, (after_seq, until), key_index=0)
            return
        sql = (
            "SELECT seq, job_id, version, ts, level, type, step,"
            " CASE WHEN type = ANY(%s::text[]) THEN data::text ELSE '{}' END, '', ''"
            " FROM events WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s"
        )
        wanted = list(data_for)
        last = after_seq
        while True:  # _batched's cursor leads its parameters; here the type list does
            rows = self._fetch(sql, (wanted, last, until, READ_BATCH))
            yield from map(stored_from_row, rows)
            if len(rows) < READ_BATCH:
                return
            last = rows[-1][0]

    def job_version(self, job_id: str) -> int:
        rows = self._fetch("SELECT version FROM streams WHERE job_id = %s", (job_id,))
        return rows[0][0] if rows else 0

    def job_exists(self, job_id: str) -> bool:
        return self.job_version(job_id) > 0

    def last_seq(self) -> int:
        return self._fetch("SELECT coalesce(max(seq), 0) FROM events", ())[0][0]

    def wait_for_events(self, after_seq: int, timeout: float) -> int:
        """Block until the log holds a seq above `after_seq`, or `timeout` seconds pass; returns
        last_seq(). Woken by the NOTIFY of a commit (LISTEN on steplog_events), not by polling.
        A listening connection that fails is made again (within retry_s); a NOTIFY missed
        meanwhile is not lost, since last_seq() is read after each LISTEN."""
        deadline = time.monotonic() + max(0.0, timeout)
        retries: _Retries | None = None
        while True:
            try:
                listener = self._listen()
                while True:
                    seq = self.last_seq()  # after LISTEN: a commit from now on also notifies
                    left = deadline - time.monotonic()
                    if seq > after_seq or left <= 0:
                        return seq
                    for _ in listener.notifies(timeout=left, stop_after=1):
                        pass
                    retries = None  # the listener works: a later failure starts afresh
            except psycopg.Error as exc:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                retries = retries or self._retries()
                if not self._failed_try(exc, retries):
                    raise self._gave_up(exc, retries) from exc

    def _listen(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            self._listener = self._connect_directly(self._connect_timeout_s)
            self._listener.execute(f"LISTEN {CHANNEL}")
        return self._listener

    def find_blobs(self, shas: Sequence[str]) -> dict[str, bytes]:
        """Many blobs in few queries; those not stored are simply absent from the answer."""
        found: dict[str, bytes] = {}
        wanted = list(dict.fromkeys(shas))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._fetch(
                "SELECT sha256, content FROM blobs WHERE sha256 = ANY(%s::text[])", (chunk,)
            )
            for sha, content in rows:
                found[sha] = bytes(content)
        return found

    def get_blobs(self, shas: Sequence[str]) -> dict[str, bytes]:
        """Many blobs in few queries; raises StoreError naming the first one missing."""
        found = self.find_blobs(shas)
        for sha in shas:
            if sha not in found:
                raise StoreError(f"blob {sha[:12]} is missing from the database")
        return found

    def get_blob(self, sha256: str) -> bytes:
        rows = self._fetch("SELECT content FROM blobs WHERE sha256 = %s", (sha256,))
        if not rows:
            raise StoreError(f"blob {sha256[:12]} is missing from the database")
        return bytes(rows[0][0])


def _versions(batch: Sequence[StoredEvent]) -> str:
    first, last = batch[0].version, batch[-1].version
    return f"version {first}" if first == last else f"versions {first}-{last}"


def _keepalives_unless_set(url: str) -> dict[str, str]:
    """KEEPALIVES, less any the URL (or conninfo) sets itself."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return {}  # make_conninfo says why, in the caller
    return {key: value for key, value in KEEPALIVES.items() if key not in given}


def _secrets_of(url: str) -> list[str]:
    """The password of a URL or conninfo, as written and as decoded, to scrub from messages."""
    found = []
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        password = None
    for secret in (password, url_password(url)):
        if secret and secret not in found:
            found.append(secret)
    return sorted(found, key=len, reverse=True)
