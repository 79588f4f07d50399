"""Choosing a store by where it lives (a SQLite path or a postgresql:// URL), naming it in a
message without its password, and the hash-chain check both stores' readers share. No server
here: what needs the PostgreSQL cluster is in tests/test_postgres_store.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from steplog.errors import Rejected
from steplog.eventstore import PostgresDriverMissing, check_chain, open_event_store
from steplog.eventstore.config import is_postgres_url, redact_url, url_password
from steplog.eventstore.record import GENESIS_HASH, StoredEvent, chain_hash
from steplog.eventstore.sqlite import SQLiteEventStore
from tests.on_disk import ROOT
from tests.store_workers import created, started


@pytest.mark.parametrize(
    "location, postgres",
    [
        ("postgresql://u@h/db", True),
        ("postgres://u:p@h:5433/db?sslmode=require", True),
        ("POSTGRESQL://h/db", True),
        ("runs/demo.db", False),
        ("postgresql.db", False),
        ("./postgres://x", False),
        (Path("postgresql://x"), False),  # a Path is a file, whatever its name
    ],
)
def test_a_location_is_a_postgres_url_or_a_sqlite_path(location, postgres):
    assert is_postgres_url(location) is postgres


@pytest.mark.parametrize(
    "url, shown, password",
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db", "s3cret"),
        ("postgres://:pw@h/db", "postgres://:***@h/db", "pw"),
        ("postgresql://u@h/db", "postgresql://u@h/db", None),
        ("postgresql://h/db?password=x%26y&sslmode=require", None, "x%26y"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db", "p%40ss"),
    ],
)
def test_a_url_is_shown_with_its_password_blanked(url, shown, password):
    assert redact_url(url) == (shown or "postgresql://h/db?password=***&sslmode=require")
    assert url_password(url) == password


def test_a_sqlite_path_opens_the_sqlite_store(tmp_path):
    with open_event_store(tmp_path / "s.db") as store:
        assert isinstance(store, SQLiteEventStore)
        store.append("j", [created("j")])
    with open_event_store(str(tmp_path / "s.db")) as store:
        assert store.last_seq() == 1


def test_a_postgres_url_without_psycopg_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails, as uninstalled
    monkeypatch.delitem(sys.modules, "steplog.eventstore.postgres", raising=False)
    with pytest.raises(PostgresDriverMissing) as caught:
        open_event_store("postgresql://steplog:hunter2@127.0.0.1:9/team")  # loopback, unused
    message = str(caught.value)
    assert message == (
        "cannot open postgresql://steplog:***@127.0.0.1:9/team: the PostgreSQL store needs"
        " psycopg and psycopg-pool; install them with: pip install 'steplog[postgres]'"
    )
    assert isinstance(caught.value, Rejected)  # the CLI's exit 2


@pytest.mark.slow
def test_importing_steplog_and_opening_a_sqlite_store_imports_no_psycopg(tmp_path):
    code = (
        "import sys, steplog, steplog.eventstore as e\n"
        f"e.open_event_store({str(tmp_path / 's.db')!r}).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('psycopg')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_describe_names_host_port_and_database_as_libpq_resolves_them(monkeypatch):
    from steplog.eventstore.postgres import describe

    for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    assert describe("postgresql://u:pw@db.example:6543/team") == "db.example:6543/team"
    assert describe("postgresql://u@db.example/team") == "db.example:5432/team"
    assert describe("postgresql:///team?host=/run/postgresql") == "/run/postgresql:5432/team"
    monkeypatch.setenv("PGHOST", "envhost")
    monkeypatch.setenv("PGUSER", "alice")
    assert describe("postgresql://") == "envhost:5432/alice"


# -- the chain check -------------------------------------------------------------------------------


def chain(job_id: str, n: int, first_seq: int = 1) -> list[StoredEvent]:
    events, prev = [], GENESIS_HASH
    for version in range(1, n + 1):
        e = created(job_id) if version == 1 else started(version)
        data = e.data_json()
        h = chain_hash(prev, job_id, version, e.ts, e.level, e.type, e.step, data)
        seq = first_seq + version - 1
        events.append(
            StoredEvent(seq, job_id, version, e.ts, e.level, e.type, e.step, data, prev, h)
        )
        prev = h
    return events


def test_check_chain_accepts_interleaved_jobs_and_reports_each_broken_link_once():
    a, b = chain("a", 4), chain("b", 2, first_seq=5)
    assert check_chain([a[0], b[0], a[1], a[2], b[1], a[3]]) == []
    edited = a[1]._replace(data_json='{"attempt": 9, "fingerprint": "x"}')
    assert [(x.job_id, x.version, x.reason) for x in check_chain([a[0], edited, *a[2:]])] == [
        ("a", 2, "hash does not match the fields")
    ]
    assert [(x.version, x.reason) for x in check_chain([a[0], a[2], a[3]])] == [
        (3, "version 3 follows 1"),
        (3, "prev_hash is not the previous hash"),
    ]
    assert [(x.version, x.reason) for x in check_chain(a[1:])] == [
        (2, "version 2 follows 0"),
        (2, "prev_hash is not the previous hash"),
    ]
