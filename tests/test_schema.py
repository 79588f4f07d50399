"""Opening databases: the schema is applied once, versioned, and foreign files are refused intact."""

from __future__ import annotations

import sqlite3

import pytest

from steplog.eventstore.record import DatabaseUnusable
from steplog.eventstore.sqlite import APPLICATION_ID, SCHEMA_VERSION
from steplog.projections.store import open_store
from tests.cli_process import steplog


def test_a_new_database_is_versioned_and_in_wal_mode(tmp_path):
    store = open_store(tmp_path / "new" / "s.db")
    conn = store.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM steplog_meta WHERE key='schema_version'").fetchone()[
        0
    ] == str(SCHEMA_VERSION)
    store.close()
    open_store(tmp_path / "new" / "s.db").close()  # reopening applies nothing twice


def newer(path):
    open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


def foreign(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (9.5)")
    conn.commit()
    conn.close()


def other_app(path):
    foreign(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()


def not_sqlite(path):
    path.write_bytes(b"hello, this is a text file\n" * 50)


def truncated(path):
    open_store(path).close()
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (newer, "newer steplog"),
        (foreign, "not a steplog database"),
        (other_app, "another application"),
        (not_sqlite, "not a SQLite database"),
        (truncated, "cannot use database"),
    ],
)
def test_unusable_files_are_refused_and_left_intact(tmp_path, make, message):
    path = tmp_path / "s.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(DatabaseUnusable, match=message):
        open_store(path)
    assert path.read_bytes() == before
    result = steplog(path, "jobs")
    assert (
        result.code == 2
        and result.err.startswith("error: ")
        and len(result.err.strip().splitlines()) == 1
    )
    assert path.read_bytes() == before
