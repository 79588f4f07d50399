"""Schema 2: a database written at schema 1 is upgraded at open, in one transaction, and then
equals a database created new; the audit views answer on it."""

from __future__ import annotations

import re
import shutil
import sqlite3
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings

from steplog.eventstore import sqlite as store_module
from steplog.eventstore.record import DatabaseUnusable
from steplog.eventstore.sqlite import SCHEMA_VERSION, migrations
from steplog.projections import flights
from steplog.projections.store import open_store
from steplog.projections.tables import SQLITE
from tests.strategies import append_batches, interleaved_batches

V1 = Path(__file__).parent / "data" / "schema_v1.db"
VIEWS = ("llm_calls", "step_runs", "file_writes", "cache_stats", "job_summary")


def _normal(sql: str | None) -> str:
    no_comments = re.sub(r"--[^\n]*", "", sql or "")
    spaced = " ".join(no_comments.replace("IF NOT EXISTS ", "").split())
    # ALTER TABLE … ADD COLUMN writes ", col TYPE" just before the closing parenthesis
    return re.sub(r" ?([,()]) ?", r"\1", spaced)


def schema_of(path: Path) -> set[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    finally:
        conn.close()
    return {(t, n, _normal(s)) for t, n, s in rows}


def rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    shutil.copy(V1, path)
    return path


def test_the_checked_in_database_is_at_schema_1():
    assert rows(V1, "PRAGMA user_version") == [(1,)]
    names = {n for (n,) in rows(V1, "SELECT name FROM sqlite_master")}
    assert not names & {*VIEWS, "schema_migrations"}


def test_opening_a_schema_1_database_upgrades_it_and_records_the_migration(v1, tmp_path):
    events_before = rows(v1, "SELECT * FROM events ORDER BY seq")
    open_store(v1).close()
    assert rows(v1, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(8,)]
    assert rows(v1, "SELECT value FROM steplog_meta") == [("8",)]
    applied = rows(v1, "SELECT * FROM schema_migrations ORDER BY version")
    assert [v for v, _, _ in applied] == [2, 3, 4, 5, 6, 7, 8]
    assert len({ts for _, ts, _ in applied}) == 1 and applied[0][1].endswith("Z")  # one transaction
    d2, d3, d4, d5, d6, d7, d8 = [d for _, _, d in applied]
    assert "audit views" in d2 and "cache_refused" in d3
    assert "unanswered" in d4 and "reserve" in d5
    assert "workers" in d6 and "jobs.batch" in d7 and "calls_in_flight" in d8
    assert rows(v1, "SELECT * FROM events ORDER BY seq") == events_before
    # the upgraded file has exactly the schema of a new one
    fresh = tmp_path / "new.db"
    open_store(fresh).close()
    assert schema_of(v1) == schema_of(fresh)
    open_store(v1).close()  # a second open applies nothing
    assert len(rows(v1, "SELECT * FROM schema_migrations")) == 7


def test_every_view_answers_on_the_upgraded_database(v1):
    open_store(v1).close()
    summary = {
        r[0]: r
        for r in rows(
            v1,
            "SELECT job_id, status, steps, steps_succeeded,"
            " steps_failed, calls, failed_calls, cache_hits,"
            " tokens_saved FROM job_summary",
        )
    }
    assert summary == {
        "first": ("first", "succeeded", 4, 4, 0, 6, 2, 0, 0),
        "second": ("second", "failed", 4, 3, 1, 2, 2, 3, 530),
    }
    # resumed job: flaky ran twice (the first run with a retry); its calls pair up by position
    flaky = rows(
        v1,
        "SELECT attempt, success, error_class, tokens_out FROM llm_calls"
        " WHERE job_id = 'first' AND step = 'flaky' ORDER BY seq",
    )
    assert flaky == [(1, 0, "unavailable", 0), (2, 0, "unavailable", 0), (1, 1, None, 73)]
    runs = rows(
        v1,
        "SELECT step, attempt, status, cache_hit FROM step_runs"
        " WHERE job_id = 'first' ORDER BY seq",
    )
    assert runs == [
        ("architect", 1, "succeeded", 0),
        ("flaky", 1, "failed", 0),
        ("builder", 1, "succeeded", 0),
        ("qa", 1, "succeeded", 0),
        ("architect", None, "skipped", None),
        ("builder", None, "skipped", None),
        ("qa", None, "skipped", None),
        ("flaky", 2, "succeeded", 0),
    ]
    files = rows(v1, "SELECT job_id, path, wrote, reason FROM file_writes ORDER BY seq")
    assert [f[1] for f in files] == ["app.py", "tests/test_app.py", "README.md"] * 2
    stats = rows(
        v1, "SELECT provider, model, hits, misses, tokens_saved FROM cache_stats ORDER BY provider"
    )
    assert stats == [("broken", "offline-flaky", 0, 3, 0), ("local", "offline-1", 3, 3, 530)]


def test_a_failing_migration_leaves_the_database_as_it_was(v1, tmp_path, monkeypatch):
    good = store_module.MIGRATIONS_PATH.read_text()
    broken = tmp_path / "migrations.sql"
    broken.write_text(good + "\nCREATE TABLE events (oops INTEGER);\n")
    monkeypatch.setattr(store_module, "MIGRATIONS_PATH", broken)
    with pytest.raises(DatabaseUnusable, match="already exists"):
        open_store(v1)
    assert rows(v1, "PRAGMA user_version") == [(1,)]
    names = {n for (n,) in rows(v1, "SELECT name FROM sqlite_master")}
    assert not names & {*VIEWS, "schema_migrations"}
    assert rows(v1, "SELECT count(*) FROM events") == [(62,)]


def test_stores_opening_an_old_database_at_once_migrate_it_once(v1):
    barrier = threading.Barrier(4)

    def open_it() -> None:
        barrier.wait(timeout=10)
        open_store(v1).close()

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(open_it) for _ in range(4)]:
            future.result(timeout=60)
    assert rows(v1, "SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in range(2, SCHEMA_VERSION + 1)
    ]


def test_migrations_file_covers_every_version_up_to_the_current():
    found = migrations(store_module.MIGRATIONS_PATH.read_text())
    assert sorted(found) == list(range(2, SCHEMA_VERSION + 1))
    # a section with no statement only re-creates the views, and says so
    assert all(statements or "views only" in what for what, statements in found.values())


@settings(max_examples=15, deadline=None)
@given(interleaved_batches(max_jobs=3))
def test_migration_8_folds_the_calls_a_schema_7_history_left_in_flight(batches):
    """A schema-7 file whose history holds calls never answered (a process killed mid-call)
    gets them as calls_in_flight rows, exactly as the fold has them; answered calls, offline
    calls and the calls of a job that ended leave none."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "old.db"
        with closing(open_store(db)) as store:
            append_batches(store, batches)
            expected = flights.project(store.read_all())
        conn = sqlite3.connect(db)
        with conn:  # back to schema 7: no table, no index, no record of migration 8
            conn.execute("DROP TABLE calls_in_flight")
            conn.execute("DROP INDEX events_llm_requests")
            conn.execute("DELETE FROM schema_migrations WHERE version = 8")
            conn.execute("UPDATE steplog_meta SET value = '7' WHERE key = 'schema_version'")
            conn.execute("PRAGMA user_version = 7")
        conn.close()
        with closing(open_store(db)) as upgraded:
            assert SQLITE.read_flights_table(upgraded.conn) == expected
        assert rows(db, "PRAGMA user_version") == [(8,)]
