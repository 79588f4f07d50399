"""What SQLite's failures mean for the user, in one line naming the database file.

The one place that turns a `sqlite3.Error` into a StoreError: the store uses it while opening
a file, the CLI for an error that reaches it mid-command (a corrupt page read late, a disk that
fills during a run). Codes are SQLite's primary result codes (the low byte of the extended one).
"""

from __future__ import annotations

import os
import sqlite3

from steplog.errors import Rejected
from steplog.eventstore.record import DatabaseUnusable, StoreError


class DatabaseReadOnly(DatabaseUnusable):
    """The file (or the directory WAL needs beside it) cannot be written: reading still works."""


class DatabaseCorrupt(DatabaseUnusable):
    """SQLite found the file damaged (SQLITE_CORRUPT / SQLITE_NOTADB)."""


class DatabaseFull(StoreError):
    """A write failed for lack of space (disk full, quota, file size limit). Nothing of the
    failed transaction was committed; what was committed before is intact."""


class DatabaseBusy(StoreError, sqlite3.OperationalError):
    """Another connection held the write lock past the busy timeout.

    A StoreError, so the CLI prints it as one line (exit 2); still an OperationalError, so code
    that catches SQLite's own "database is locked" keeps working.
    """


class DatabaseIOFailure(StoreError):
    """The operating system refused a read or write of the database file."""


_FULL = sqlite3.SQLITE_FULL
_READONLY = sqlite3.SQLITE_READONLY
_CANTOPEN = sqlite3.SQLITE_CANTOPEN
_CORRUPT = sqlite3.SQLITE_CORRUPT
_NOTADB = sqlite3.SQLITE_NOTADB
_IOERR = sqlite3.SQLITE_IOERR
_BUSY = sqlite3.SQLITE_BUSY
_LOCKED = sqlite3.SQLITE_LOCKED
# Extended IOERR codes of a failed write: SQLite reports ENOSPC as SQLITE_FULL but any other
# failed write (EFBIG past a file size limit, EDQUOT over a quota) as one of these.
_IOERR_WRITES = {
    sqlite3.SQLITE_IOERR_WRITE,
    sqlite3.SQLITE_IOERR_FSYNC,
    sqlite3.SQLITE_IOERR_TRUNCATE,
}


def is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds a lock (SQLITE_BUSY / SQLITE_LOCKED): not a broken database."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_BUSY, _LOCKED)


def database_error(
    path: str | os.PathLike[str] | None, exc: sqlite3.Error, *, opening: bool = False
) -> StoreError:
    """The StoreError to raise (`from exc`) for `exc` on the database at `path`."""
    detail = str(exc) or type(exc).__name__
    where = f"database {path}" if path is not None else "the database"
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    error: type[StoreError]
    if primary == _FULL:
        error, reason = DatabaseFull, f"disk full ({detail})"
    elif code in _IOERR_WRITES:
        error, reason = DatabaseFull, f"disk full or file size limit reached ({detail})"
    elif primary == _READONLY:
        error, reason = DatabaseReadOnly, f"read-only ({detail})"
    elif primary == _CORRUPT:
        error, reason = DatabaseCorrupt, f"corrupt ({detail}); restore it from a backup"
    elif primary == _NOTADB:
        error, reason = DatabaseCorrupt, f"not a SQLite database ({detail})"
    elif primary == _CANTOPEN:
        error = DatabaseUnusable
        reason = f"cannot open it ({detail}); check the file and its directory are accessible"
    elif primary == _IOERR:
        error, reason = DatabaseIOFailure, f"I/O error ({detail})"
    elif primary in (_BUSY, _LOCKED):
        error, reason = StoreError, f"locked by another process ({detail})"
    else:
        error, reason = StoreError, detail
    if opening:
        return (DatabaseUnusable if error is StoreError else error)(f"cannot use {where}: {reason}")
    return error(f"{where}: {reason}")


# -- PostgreSQL (steplog.eventstore.postgres); defined here so that catching them needs no psycopg --


class ServerUnreachable(DatabaseUnusable):
    """The PostgreSQL server did not answer, or the connection to it was lost mid-command."""


class DatabaseMissing(DatabaseUnusable):
    """The PostgreSQL server answered, but has no database of that name."""


class PostgresDriverMissing(DatabaseUnusable):
    """A postgresql:// URL, but psycopg (the `postgres` extra) is not installed."""


class DatabaseNotCreated(DatabaseMissing):
    """The PostgreSQL database exists but holds no steplog log yet, and a read verb (which
    never creates one) was asked of it."""


class QueryRefused(Rejected):
    """A statement `steplog sql` will not run (it would write, or it is not valid SQL)."""
