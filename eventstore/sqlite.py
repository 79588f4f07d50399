"""The log on one SQLite file: open (pragmas, schema, version checks), append, read, blobs.

Plain `sqlite3` on the append path (bench/ measures it); sqlite-utils for introspection.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from steplog.eventstore.config import (  # noqa: F401 - busy_timeout names: re-exported
    DEFAULT_BUSY_TIMEOUT_MS,
    busy_timeout_from_env,
    sql_file,
)
from steplog.eventstore.errors import DatabaseBusy, DatabaseReadOnly, database_error, is_busy
from steplog.eventstore.reads import LogReads
from steplog.eventstore.record import (
    GENESIS_HASH,
    Blob,
    DatabaseUnusable,
    StoredEvent,
    StoreError,
    TextBlob,
    VersionConflict,
    blob_row,
    blob_sha256,
    blob_size,
    link,
    stored_from_row,
)

if TYPE_CHECKING:  # the event models import pydantic; the store only reads their JSON
    from steplog.eventstore.events import NewEvent

SCHEMA_VERSION = 8
MEMORY = ":memory:"  # the path of a store without a file (SQLite's own name for it)
APPLICATION_ID = 0x53544C47  # "STLG": marks the file as steplog's


SCHEMA_PATH = sql_file("schema.sql")
# A blob this long is written in slices through SQLite's incremental blob I/O: a plain INSERT
# binds a copy of it and builds the row as a second one, 3x its size at once for a 100 MB answer.
BIG_BLOB = 4 * 2**20
_BLOB_SLICE = 2**20
MIGRATIONS_PATH = sql_file("migrations.sql")
SQLITE_MAGIC = b"SQLite format 3\x00"
READ_BATCH = 5000

# The file's tables, in the order SQLite lists them (an open names a stranger's first five).
TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table'"

# The append's statements, their text constant so that sqlite3's statement cache reuses them.
# HEAD_SQL: (last seq of the log, then the job's version, last_hash, created_ts or NULLs).
HEAD_SQL = (
    "SELECT (SELECT coalesce(max(seq), 0) FROM events), s.version, s.last_hash, s.created_ts"
    " FROM (SELECT ? AS job_id) AS j LEFT JOIN streams AS s ON s.job_id = j.job_id"
)
INSERT_EVENTS_SQL = (
    "INSERT INTO events (seq, job_id, version, ts, level, type, step, data, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
NEW_HEAD_SQL = (
    "INSERT INTO streams (job_id, version, last_hash, last_seq, created_ts, updated_ts)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
MOVE_HEAD_SQL = (
    "UPDATE streams SET version = ?, last_hash = ?, last_seq = ?, updated_ts = ? WHERE job_id = ?"
)

# Runs inside the append transaction after the events are inserted: keeps projection tables
# in step with the log (see projections.tables).
Projector = Callable[[sqlite3.Connection, Sequence[StoredEvent]], None]


def schema_statements(text: str) -> list[str]:
    """Split schema.sql into statements the way SQLite does (triggers contain ';')."""
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        current.append(line)
        candidate = "".join(current)
        if sqlite3.complete_statement(candidate):
            if candidate.strip():
                statements.append(candidate.strip())
            current = []
    rest = "".join(current).strip()
    if rest and not all(ln.strip().startswith("--") or not ln.strip() for ln in rest.splitlines()):
        raise StoreError(f"schema.sql ends with an incomplete statement: {rest[:60]!r}")
    return statements


_MIGRATION_HEADER = re.compile(r"^-- migration (\d+): (.+)$", re.MULTILINE)


def migrations(text: str) -> dict[int, tuple[str, list[str]]]:
    """migrations.sql as {version: (description, statements)}; every version up to the current."""
    heads = list(_MIGRATION_HEADER.finditer(text))
    found: dict[int, tuple[str, list[str]]] = {}
    for head, nxt in zip(heads, [*heads[1:], None]):
        body = text[head.end() : nxt.start() if nxt else len(text)]
        found[int(head.group(1))] = (head.group(2).strip(), schema_statements(body))
    if sorted(found) != list(range(2, SCHEMA_VERSION + 1)):
        raise StoreError(f"migrations.sql has versions {sorted(found)}, not 2..{SCHEMA_VERSION}")
    return found


def apply_migrations(
    conn: sqlite3.Connection, from_version: int, schema: Sequence[str]
) -> list[tuple[int, str]]:
    """Inside the caller's transaction: run the sections above `from_version`, then drop every
    view and create the views of schema.sql. Returns (version, description) of each section."""
    steps = migrations(MIGRATIONS_PATH.read_text(encoding="utf-8"))
    applied = []
    for version in range(from_version + 1, SCHEMA_VERSION + 1):
        description, statements = steps[version]
        for statement in statements:
            conn.execute(statement)
        applied.append((version, description))
    views = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")]
    for view in views:
        conn.execute(f'DROP VIEW "{view}"')
    for statement in schema:
        if _CREATE_VIEW.match(statement):
            conn.execute(statement)
    return applied


_CREATE_VIEW = re.compile(r"^(--[^\n]*\n|\s)*CREATE\s+VIEW\b", re.IGNORECASE)


def check_database_file(path: Path, *, empty_ok: bool = True) -> None:
    """Refuse what is no SQLite file before SQLite sees it (its own errors mislead): a
    directory, a device or FIFO, a file without the SQLite header (an empty one if not empty_ok).
    """
    if path.is_dir():
        raise DatabaseUnusable(f"database {path} is a directory")
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: SQLite's errors mislead
        raise DatabaseUnusable(f"database {path} is not a regular file")
    if path.exists() and (path.stat().st_size > 0 or not empty_ok):
        try:
            with path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise DatabaseUnusable(f"cannot read database {path}: {exc.strerror}") from exc
        if head != SQLITE_MAGIC:
            raise DatabaseUnusable(f"{path} is not a SQLite database")


def read_only_reason(path: Path) -> str | None:
    """Why steplog cannot write the existing database at `path`, or None if it can.

    WAL keeps `-wal` and `-shm` files beside the database, so a writer also needs to create
    them in its directory (unless both are there already and writable).
    """
    if not path.is_file():
        return None
    if not os.access(path, os.W_OK):
        return "the file is not writable"
    sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    for sidecar in sidecars:
        # A reader of a read-only file leaves these with the file's mode (0444): made writable
        # again, the file alone is not enough, and SQLite would only say "readonly database".
        if sidecar.exists() and not os.access(sidecar, os.W_OK):
            return f"{sidecar.name} beside it is not writable; delete it or make it writable"
    if not os.access(path.parent, os.W_OK | os.X_OK) and not all(
        os.access(p, os.W_OK) for p in sidecars
    ):
        return f"its directory {path.resolve().parent} is not writable"
    return None


def read_only_uri(path: Path) -> str:
    """A `mode=ro` URI for `path`. In a directory no one can write, with no `-wal` beside the
    file, nobody can be writing it (a writer would need that file), so it is opened
    `immutable=1`: SQLite then reads a WAL-mode file without creating `-shm`, which it cannot."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    wal = path.with_name(path.name + "-wal")
    if not os.access(path.parent, os.W_OK) and not wal.exists():
        uri += "&immutable=1"
    return uri


class SQLiteEventStore(LogReads):
    """The event log in one SQLite file. One connection; writers use IMMEDIATE transactions.

    read_only: open an existing database without ever writing it (`verify`): mode=ro, no
    schema applied or upgraded, every write refused."""

    dialect = "sqlite"
    notifies = False  # SQLite tells no one of a commit: wait_for_events polls

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        projectors: Sequence[Projector] = (),
        synchronous: str | None = None,
        busy_timeout_ms: int | None = None,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.where = str(path)  # how messages name the database
        self.opened_read_only = read_only
        self._projectors = list(projectors)
        if busy_timeout_ms is None:
            busy_timeout_ms = busy_timeout_from_env()
        self.busy_timeout_ms = busy_timeout_ms
        self._busy_timeout_s = busy_timeout_ms / 1000
        # MEMORY: an empty log that lives in this connection only (no file, no WAL), for
        # questions asked of a database that does not exist yet (`plan`, checks before `run`)
        self.in_memory = str(path) == MEMORY
        self.created = False  # this open applied schema.sql to an empty file (it made the log)
        if not self.in_memory:
            check_database_file(self.path)
        # Set when the file exists but cannot be written: the store then only reads (mode=ro)
        # and every write is refused with this reason before it reaches SQLite.
        self.read_only_reason = None if self.in_memory else read_only_reason(self.path)
        if read_only:
            if not self.path.is_file():
                raise DatabaseUnusable(f"no database at {self.path}")
            check_database_file(self.path, empty_ok=False)
            peek_steplog_file(self.path)
            self.read_only_reason = self.read_only_reason or "opened read-only"
        try:
            if not self.in_memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnusable(
                f"cannot create directory {self.path.parent}: {exc.strerror}"
            ) from exc
        try:
            self.conn = sqlite3.connect(
                read_only_uri(self.path) if self.read_only_reason else self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=busy_timeout_ms / 1000,
                uri=bool(self.read_only_reason),
            )
        except sqlite3.DatabaseError as exc:
            raise database_error(self.path, exc, opening=True) from exc
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._prepare(synchronous or os.environ.get("STEPLOG_SYNCHRONOUS", "NORMAL"))
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise database_error(self.path, exc, opening=True) from exc
        except BaseException:
            self.conn.close()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _prepare(self, synchronous: str) -> None:
        app_id, user_version, tables = self._read_header()
        self._check_usable(app_id, user_version, tables)
        if self.read_only_reason:
            if self.opened_read_only and not tables:
                raise DatabaseUnusable(f"{self.path} is not a steplog database (it is empty)")
            if not self.opened_read_only and (not tables or user_version < SCHEMA_VERSION):
                raise DatabaseReadOnly(
                    f"database {self.path} needs an upgrade to schema {SCHEMA_VERSION}"
                    f" (it is at {user_version}) but is read-only ({self.read_only_reason})"
                )
            self.conn.execute("PRAGMA query_only = ON")
            return
        if not self.in_memory:
            self._use_wal()
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise StoreError(
                f"STEPLOG_SYNCHRONOUS must be NORMAL, FULL or EXTRA, not {synchronous!r}"
            )
        self.conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self.conn.execute("PRAGMA foreign_keys = ON")
        if not tables or user_version < SCHEMA_VERSION:
            self._create_or_upgrade()

    def _read_header(self, conn: sqlite3.Connection | None = None) -> tuple[int, int, list[str]]:
        """application_id, user_version and the tables, read in one transaction so a concurrent
        open applying the schema is seen either not at all or whole. Inside the caller's
        transaction when `conn` is given."""
        own = conn is None
        conn = conn or self.conn
        if own:
            conn.execute("BEGIN")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            user_version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = [row[0] for row in conn.execute(TABLES_SQL)]
        finally:
            if own:
                conn.execute("ROLLBACK")
        return app_id, user_version, tables

    def _check_usable(self, app_id: int, user_version: int, tables: list[str]) -> None:
        if app_id not in (0, APPLICATION_ID):
            raise DatabaseUnusable(
                f"{self.path} belongs to another application (application_id {app_id})"
            )
        if app_id == 0 and tables:
            raise DatabaseUnusable(
                f"{self.path} is not a steplog database (it holds tables {', '.join(tables[:5])})"
            )
        if user_version > SCHEMA_VERSION:
            raise DatabaseUnusable(
                f"{self.path} was written by a newer steplog (schema {user_version}; "
                f"this steplog knows up to {SCHEMA_VERSION})"
            )

    def _use_wal(self) -> None:
        """Switch to WAL. Changing the journal mode needs the file to itself and SQLite does not
        wait for that (no busy handler), so a switch racing another open is retried here."""
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        if mode.lower() != "wal":
            raise DatabaseUnusable(f"cannot switch {self.path} to WAL mode")

    def _create_or_upgrade(self) -> None:
        """Apply schema.sql to an empty file, or migrations.sql to an older one: one transaction.

        Re-reads the header under the write lock: another process may have done it meanwhile.
        """
        schema = schema_statements(SCHEMA_PATH.read_text(encoding="utf-8"))
        with self.write_transaction() as conn:
            app_id, user_version, tables = self._read_header(conn)
            self._check_usable(app_id, user_version, tables)
            if not tables:
                self.created = True
                for statement in schema:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                applied = [(SCHEMA_VERSION, f"created at schema {SCHEMA_VERSION}")]
            elif user_version < SCHEMA_VERSION:
                applied = apply_migrations(conn, user_version, schema)
            else:
                return
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(
                "INSERT INTO steplog_meta (key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            from steplog.eventstore.events import utc_now

            now = utc_now()
            conn.executemany(
                "INSERT INTO schema_migrations (version, ts, description) VALUES (?, ?, ?)",
                [(version, now, description) for version, description in applied],
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SQLiteEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def require_writable(self) -> None:
        """Refuse up front, before a write verb starts anything, if the file is read-only."""
        if self.read_only_reason:
            raise DatabaseReadOnly(
                f"database {self.path} is read-only ({self.read_only_reason});"
                " read verbs (status, jobs, events, sql, verify) still work"
            )

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE, waiting at most the busy timeout for the write lock.

        SQLite's busy handler does the waiting in most cases; some BUSY answers skip it (e.g.
        a WAL reset or recovery by another connection), so those are retried here with jittered
        backoff until the same deadline. Past it: DatabaseBusy, with nothing written.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.002
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseBusy(
                        f"database {self.path} is locked: another process held its write lock "
                        f"for more than {self.busy_timeout_ms} ms (STEPLOG_BUSY_TIMEOUT_MS)"
                    ) from exc
                time.sleep(min(left, pause * (0.5 + random.random())))
                pause = min(pause * 2, 0.1)

    @contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""
        self.require_writable()
        self._begin_immediate()
        try:
            yield self.conn
        except BaseException:
            # SQLite may already have rolled back (it does on SQLITE_FULL and some I/O errors);
            # a second ROLLBACK would raise and hide the error that matters.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    # -- writing -------------------------------------------------------------------------------

    def append(
        self,
        job_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        blobs: Sequence[Blob] = (),
    ) -> list[StoredEvent]:
        """Append a batch to one job in one IMMEDIATE transaction, or nothing at all.

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
        exactly (a fork's or an import's copied history)."""
        if not job_id:
            raise StoreError("job_id must not be empty")
        if not prepared:
            return []
        try:
            with self.write_transaction() as conn:
                return self.append_txn(conn, job_id, prepared, expected_version, blobs)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise VersionConflict(f"job {job_id}: another writer appended first") from exc
            raise StoreError(f"job {job_id}: event refused by the database: {exc}") from exc
        except DatabaseBusy:
            raise
        except sqlite3.DatabaseError as exc:  # disk full, corrupt page, I/O error …
            if is_busy(exc):
                raise  # another writer holds the lock: the caller decides whether to retry
            raise database_error(self.path, exc) from exc

    def append_txn(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        prepared: Sequence[tuple[str, str, str, str | None, str]],
        expected_version: int | None,
        blobs: Sequence[Blob],
    ) -> list[StoredEvent]:
        """The append inside a caller's transaction (so several writes can share one)."""
        # One statement reads the job's head and the log's last seq (blobs touch neither).
        seq0, version, prev_hash, created_ts = conn.execute(HEAD_SQL, (job_id,)).fetchone()
        known = version is not None  # the job has a head (streams row) to move
        if not known:
            version, prev_hash, created_ts = 0, GENESIS_HASH, prepared[0][0]
        if expected_version is not None and expected_version != version:
            raise VersionConflict(
                f"job {job_id} is at version {version}, expected {expected_version}"
            )
        if blobs:
            _insert_blobs(conn, blobs)
        # The rows are the StoredEvents themselves (tuples): built once, inserted as they are.
        stored = link(job_id, seq0, version, prev_hash, prepared)
        conn.executemany(INSERT_EVENTS_SQL, stored)
        last = stored[-1]
        if known:  # move the head read above: an UPDATE, not an INSERT that fails first
            conn.execute(MOVE_HEAD_SQL, (last.version, last.hash, last.seq, last.ts, job_id))
        else:
            conn.execute(
                NEW_HEAD_SQL, (job_id, last.version, last.hash, last.seq, created_ts, last.ts)
            )
        for project in self._projectors:
            project(conn, stored)
        return stored

    def put_blob(self, content: Blob) -> str:
        with self.write_transaction() as conn:
            _insert_blobs(conn, [content])
        return blob_sha256(content)

    def put_blobs(self, contents: Sequence[Blob]) -> None:
        """Store several blobs (those not there yet) in one transaction, without events: a
        whole database's blobs arrive this way, a batch at a time (`steplog copy`)."""
        if not contents:
            return
        try:
            with self.write_transaction() as conn:
                _insert_blobs(conn, contents)
        except DatabaseBusy:
            raise
        except sqlite3.DatabaseError as exc:  # disk full, corrupt page, I/O error …
            if is_busy(exc):
                raise
            raise database_error(self.path, exc) from exc

    # -- reading -------------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection reads go through (LogReads, the projection lookups)."""
        yield self.conn

    def schema_problems(self) -> tuple[int, list[str]]:
        """`verify`: the schema version, and how the schema differs from schema.sql's."""
        from steplog.eventstore import sqlite_checks

        return sqlite_checks.schema_problems(self.conn)

    def integrity_problems(self) -> list[str]:
        """`verify`: what PRAGMA integrity_check finds ([] when the file is sound)."""
        from steplog.eventstore import sqlite_checks

        return sqlite_checks.integrity_problems(self.conn)

    def table_names(self) -> set[str]:
        from steplog.eventstore import sqlite_checks

        return sqlite_checks.table_names(self.conn)

    _COLUMNS = "seq, job_id, version, ts, level, type, step, data, prev_hash, hash"
    _COLUMNS_WITHOUT_HASHES = "seq, job_id, version, ts, level, type, step, data, '', ''"

    def _batched(self, sql: str, params: tuple, key_index: int) -> Iterator[StoredEvent]:
        """Keyset pagination so memory stays bounded however long the log is."""
        last = params[0]
        while True:
            rows = self.conn.execute(sql, (last, *params[1:], READ_BATCH)).fetchall()
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
        columns = self._COLUMNS if hashes else self._COLUMNS_WITHOUT_HASHES
        sql = (
            f"SELECT {columns} FROM events WHERE version > ? AND job_id = ? AND version <= ?"
            " ORDER BY version LIMIT ?"
        )
        # params[0] is the moving cursor; job_id and the bound follow it.
        yield from self._batched(sql, (after_version, job_id, until), key_index=2)

    def read_all(
        self,
        *,
        after_seq: int = 0,
        until_seq: int | None = None,
        data_for: Sequence[str] | None = None,
    ) -> Iterator[StoredEvent]:
        """Every event in global order. `data_for` (a fold's needs) limits which events carry
        their data and hashes: the others come with "{}" and "", which saves most of the cost
        of reading a long log for a fold that looks at few event types."""
        until = until_seq if until_seq is not None else 2**62
        columns = self._COLUMNS
        if data_for is not None:
            wanted = ", ".join("'" + t.replace("'", "''") + "'" for t in data_for)
            columns = (
                f"seq, job_id, version, ts, level, type, step,"
                f" CASE WHEN type IN ({wanted}) THEN data ELSE '{{}}' END, '', ''"
            )
        sql = f"SELECT {columns} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
        yield from self._batched(sql, (after_seq, until), key_index=0)

    def job_version(self, job_id: str) -> int:
        row = self.conn.execute(
            "SELECT version FROM streams WHERE job_id = ?", (job_id,)
        ).fetchone()
        return row[0] if row else 0

    def job_exists(self, job_id: str) -> bool:
        return self.job_version(job_id) > 0

    def last_seq(self) -> int:
        return self.conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]

    def wait_for_events(self, after_seq: int, timeout: float) -> int:
        """Block until the log holds a seq above `after_seq`, or `timeout` seconds pass; returns
        last_seq(). SQLite tells no one of a commit, so this polls last_seq (one rowid lookup),
        backing off from 5 ms to 100 ms; the PostgreSQL store is woken by NOTIFY instead."""
        deadline = time.monotonic() + max(0.0, timeout)
        pause = 0.005
        while True:
            seq = self.last_seq()
            left = deadline - time.monotonic()
            if seq > after_seq or left <= 0:
                return seq
            time.sleep(min(left, pause))
            pause = min(pause * 2, 0.1)

    def find_blobs(self, shas: Sequence[str]) -> dict[str, bytes]:
        """Many blobs in few queries; those not stored are simply absent from the answer."""
        found: dict[str, bytes] = {}
        wanted = list(dict.fromkeys(shas))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for sha, content in self.conn.execute(
                f"SELECT sha256, content FROM blobs WHERE sha256 IN ({marks})", chunk
            ):
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
        row = self.conn.execute("SELECT content FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            raise StoreError(f"blob {sha256[:12]} is missing from the database")
        return bytes(row[0])


def peek_steplog_file(path: Path) -> int:
    """The schema version of the steplog database at `path`, refusing a file that is not one
    (or is newer) before a read-only open touches it. With no -wal beside it the whole database
    is in the main file, and immutable=1 reads the header without creating -shm/-wal (a
    read-only connection to a WAL-mode file leaves both behind otherwise, beside a file that may
    belong to another application)."""
    uri = read_only_uri(path)
    if "immutable" not in uri and not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise database_error(path, exc, opening=True) from exc
    if app_id != APPLICATION_ID:
        raise DatabaseUnusable(f"{path} is not a steplog database")
    if version > SCHEMA_VERSION:
        raise DatabaseUnusable(
            f"{path} was written by a newer steplog (schema {version};"
            f" this steplog knows up to {SCHEMA_VERSION})"
        )
    return version


def _insert_blobs(conn: sqlite3.Connection, blobs: Sequence[Blob]) -> None:
    """INSERT OR IGNORE of each blob inside the caller's transaction; a large one slice by slice."""
    small = [b for b in blobs if blob_size(b) < BIG_BLOB]
    conn.executemany(
        "INSERT OR IGNORE INTO blobs (sha256, size, content) VALUES (?, ?, ?)",
        [blob_row(b) for b in small],
    )
    for big in blobs:
        if blob_size(big) >= BIG_BLOB:
            _insert_big_blob(conn, big)


def _insert_big_blob(conn: sqlite3.Connection, content: Blob) -> None:
    """INSERT OR IGNORE of one large blob, its bytes copied into the row slice by slice (a
    TextBlob's encoded a slice at a time: the answer's whole UTF-8 is never made)."""
    sha = blob_sha256(content)
    if conn.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (sha,)).fetchone():
        return  # content-addressed: the same sha256 already holds the same bytes
    size = blob_size(content)
    cursor = conn.execute(
        "INSERT INTO blobs (sha256, size, content) VALUES (?, ?, zeroblob(?))", (sha, size, size)
    )
    if isinstance(content, TextBlob):
        pieces: Iterator[bytes | memoryview] = content.slices()
    else:
        view = memoryview(content)
        pieces = (view[start : start + _BLOB_SLICE] for start in range(0, size, _BLOB_SLICE))
    with conn.blobopen("blobs", "content", cursor.lastrowid) as blob:
        for piece in pieces:
            blob.write(piece)
