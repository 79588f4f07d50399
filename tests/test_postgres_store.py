"""What only the PostgreSQL store has to show (the shared properties are the contract's, in
tests/test_store_contract.py): the tests' cluster itself, the schema beside schema.sql, the
triggers from `psql`, NOTIFY on commit, one-line errors that name the server and never the
password, read-only roles, the write lock's timeout, and a server that goes away."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading

import psycopg
import pytest

from steplog.errors import Rejected
from steplog.eventstore import open_event_store
from steplog.eventstore.errors import (
    DatabaseBusy,
    DatabaseMissing,
    DatabaseReadOnly,
    ServerUnreachable,
)
from steplog.eventstore.postgres import CHANNEL, SCHEMA_PATH, SCHEMA_VERSION, PostgresEventStore
from steplog.eventstore.record import DatabaseUnusable, StoreError
from steplog.eventstore.sqlite import SQLiteEventStore
from tests.on_disk import ROOT
from tests.postgres_cluster import PostgresCluster, free_port
from tests.store_workers import created, started

pytestmark = pytest.mark.slow  # every test here needs the cluster (server processes)


def one_line_without_password(cluster: PostgresCluster, message: str) -> str:
    assert not cluster.contains_password(message), "the message shows the password"
    assert "\n" not in message, cluster.safe(message)
    return message


# -- the cluster ------------------------------------------------------------------------------


def test_the_cluster_listens_on_loopback_only_and_gives_each_test_its_own_database(
    pg_cluster, pg_database, pg_url
):
    assert pg_cluster.admin("SHOW listen_addresses") == [("127.0.0.1",)]
    with psycopg.connect(pg_url) as conn:
        assert conn.info.host == "127.0.0.1" and conn.info.port == pg_cluster.port
        assert conn.execute("SELECT current_database()").fetchone() == (pg_database,)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
    names = {r[0] for r in pg_cluster.admin("SELECT datname FROM pg_database")}
    assert pg_database in names
    assert "password" not in repr(pg_cluster).lower()


# -- the schema -------------------------------------------------------------------------------


def sqlite_columns(tmp_path) -> dict[str, list[str]]:
    SQLiteEventStore(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        ]
        return {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    finally:
        conn.close()


def test_the_tables_and_views_have_schema_sqls_names_and_columns(pg_url, tmp_path):
    PostgresEventStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    postgres: dict[str, list[str]] = {}
    for table, column in rows:
        postgres.setdefault(table, []).append(column)
    sqlite = sqlite_columns(tmp_path)
    assert set(postgres) == set(sqlite)  # every table and view, with the same names
    for table in postgres:
        assert postgres[table] == sqlite[table], table
    assert postgres["events"] == [
        "seq",
        "job_id",
        "version",
        "ts",
        "level",
        "type",
        "step",
        "data",
        "prev_hash",
        "hash",
    ]


def test_a_new_database_records_its_schema_version_and_migration(pg_url):
    assert SCHEMA_PATH.read_text().startswith(
        f"-- steplog schema for PostgreSQL, version {SCHEMA_VERSION}."
    )
    PostgresEventStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        meta = dict(conn.execute("SELECT key, value FROM steplog_meta").fetchall())
        migrations = conn.execute("SELECT version, description FROM schema_migrations").fetchall()
    assert meta == {"application": "steplog", "schema_version": str(SCHEMA_VERSION)}
    assert migrations == [(SCHEMA_VERSION, f"created at schema {SCHEMA_VERSION}")]


def test_stores_opening_one_empty_database_at_once_all_succeed_and_create_it_once(pg_url):
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def open_one() -> None:
        barrier.wait(timeout=60)
        try:
            with PostgresEventStore(pg_url) as store:
                outcomes.append(store.last_seq())
        except Exception as exc:  # reported below
            outcomes.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert outcomes == [0, 0, 0, 0]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (1,)


# -- append-only, from psql --------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE events",
        "TRUNCATE blobs",
        "TRUNCATE events, blobs CASCADE",
        "DELETE FROM blobs",
        "UPDATE events SET level = 'INFO' WHERE false",  # refused even when it matches nothing
        "SET session_replication_role = replica; UPDATE events SET level = 'INFO'",
        "INSERT INTO blobs VALUES ((SELECT sha256 FROM blobs LIMIT 1), 0, '')"
        " ON CONFLICT (sha256) DO UPDATE SET content = excluded.content",
    ],
)
def test_psql_cannot_truncate_delete_or_rewrite_events_and_blobs(
    pg_cluster, pg_database, pg_url, statement
):
    kept = hashlib.sha256(b"kept").hexdigest()
    with PostgresEventStore(pg_url) as store:
        store.append("j", [created("j"), started(1)], blobs=[b"kept"])
        before = list(store.read_all())
    done = pg_cluster.psql(pg_database, statement)
    assert done.returncode != 0, statement
    assert "steplog: " in done.stderr and " refused)" in done.stderr, done.stderr
    with PostgresEventStore(pg_url) as store:
        assert list(store.read_all()) == before
        assert store.get_blob(kept) == b"kept"


def test_psql_cannot_insert_a_row_that_takes_an_existing_seq_or_version(
    pg_cluster, pg_database, pg_url
):
    with PostgresEventStore(pg_url) as store:
        (ev,) = store.append("j", [created("j")])
    for seq, version in ((1, 2), (2, 1)):
        done = pg_cluster.psql(
            pg_database,
            "INSERT INTO events SELECT %d, job_id, %d, ts, level, type, step, data, prev_hash, hash"
            " FROM events WHERE seq = 1" % (seq, version),
        )
        assert done.returncode != 0 and "duplicate key" in done.stderr, done.stderr
    with PostgresEventStore(pg_url) as store:
        assert list(store.read_all()) == [ev]


# -- NOTIFY on commit ----------------------------------------------------------------------------


def test_each_commit_notifies_its_last_seq_and_a_rollback_notifies_nothing(pg_url):
    with PostgresEventStore(pg_url) as store, psycopg.connect(pg_url, autocommit=True) as listen:
        listen.execute(f"LISTEN {CHANNEL}")
        store.append("j", [created("j"), started(1)])
        store.append("k", [created("k")])
        with pytest.raises(RuntimeError):
            with store.write_transaction() as conn:
                store.append_txn(
                    conn, "x", [(created("x").ts, "INFO", "job.created", None, "{}")], 0, []
                )
                raise RuntimeError("roll back")
        store.append("j", [started(2)])
        got = list(listen.notifies(timeout=30, stop_after=3))
        assert [(n.channel, n.payload) for n in got] == [
            (CHANNEL, "2"),
            (CHANNEL, "3"),
            (CHANNEL, "4"),
        ]
        assert list(listen.notifies(timeout=0.2)) == []  # the rolled-back batch sent none


def test_wait_for_events_is_woken_by_an_append_from_another_store(pg_url):
    with PostgresEventStore(pg_url) as follower, PostgresEventStore(pg_url) as writer:
        writer.append("j", [created("j")])
        assert follower.wait_for_events(0, timeout=30) == 1
        appended = threading.Event()

        def append_later() -> None:
            appended.wait(timeout=60)
            writer.append("j", [started(1)])

        thread = threading.Thread(target=append_later)
        thread.start()
        appended.set()
        try:
            assert follower.wait_for_events(1, timeout=120) == 2
        finally:
            thread.join(timeout=60)


# -- one line, naming the server, never the password ------------------------------------------


def test_a_server_that_does_not_answer_is_one_line_naming_it(pg_cluster):
    port = free_port()  # nothing listens there
    url = f"postgresql://postgres:{pg_cluster._password}@127.0.0.1:{port}/steplog"
    with pytest.raises(ServerUnreachable) as caught:
        open_event_store(url, connect_timeout_s=5)
    message = one_line_without_password(pg_cluster, str(caught.value))
    assert message.startswith(f"cannot reach PostgreSQL server 127.0.0.1:{port}/steplog: ")
    assert "refused" in message.lower()
    assert isinstance(caught.value, DatabaseUnusable) and isinstance(caught.value, Rejected)


def test_a_missing_database_is_one_line_naming_the_server_and_the_database(pg_cluster):
    url = pg_cluster.url("no_such_db")
    with pytest.raises(DatabaseMissing) as caught:
        open_event_store(url)
    message = one_line_without_password(pg_cluster, str(caught.value))
    assert message == (
        f"cannot use PostgreSQL database 127.0.0.1:{pg_cluster.port}/no_such_db:"
        " the server has no such database (createdb it first)"
    )


def test_a_wrong_password_is_refused_without_showing_either_password(pg_cluster, pg_database):
    wrong = "not-the-" + "password-123"
    url = pg_cluster.url(pg_database).replace(pg_cluster._password, wrong)
    with pytest.raises(DatabaseUnusable) as caught:
        open_event_store(url)
    message = one_line_without_password(pg_cluster, str(caught.value))
    assert wrong not in message
    assert "password authentication failed" in message
    assert f"127.0.0.1:{pg_cluster.port}/{pg_database}" in message


def test_a_database_holding_other_tables_is_not_taken_over(pg_cluster, pg_url):
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(DatabaseUnusable) as caught:
        PostgresEventStore(pg_url)
    message = one_line_without_password(pg_cluster, str(caught.value))
    assert message.endswith("is not a steplog database (it holds tables invoices)")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('events')").fetchone() == (None,)


def test_a_newer_schema_is_refused_naming_both_versions(pg_cluster, pg_url):
    PostgresEventStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE steplog_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(DatabaseUnusable) as caught:
        PostgresEventStore(pg_url)
    message = one_line_without_password(pg_cluster, str(caught.value))
    assert message.endswith(
        f"was written by a newer steplog (schema 99; this steplog knows up to {SCHEMA_VERSION})"
    )


def test_a_database_not_encoded_in_utf8_is_refused(pg_cluster):
    name = pg_cluster.create_database(encoding="SQL_ASCII")
    try:
        with pytest.raises(DatabaseUnusable, match="is encoded SQL_ASCII; steplog needs UTF8"):
            PostgresEventStore(pg_cluster.url(name))
    finally:
        pg_cluster.drop_database(name)


def test_postgres_scheme_and_the_redacted_url(pg_cluster, pg_database):
    url = pg_cluster.url(pg_database).replace("postgresql://", "postgres://")
    with open_event_store(url) as store:
        assert isinstance(store, PostgresEventStore)
        assert store.where == f"127.0.0.1:{pg_cluster.port}/{pg_database}"
        assert store.url == f"postgres://postgres:***@127.0.0.1:{pg_cluster.port}/{pg_database}"


def test_text_with_a_nul_character_is_refused_in_one_line_and_nothing_is_written(pg_url):
    with PostgresEventStore(pg_url) as store:
        with pytest.raises(StoreError, match="job bad\x00job: event refused by the database: "):
            store.append("bad\x00job", [created("x")])
        assert store.last_seq() == 0


# -- read-only roles and the write lock -----------------------------------------------------------


def test_a_read_only_session_reads_but_is_refused_writes_up_front(pg_url):
    with PostgresEventStore(pg_url) as store:
        written = store.append("j", [created("j")])
    read_only = pg_url + "?options=-c%20default_transaction_read_only%3Don"
    with PostgresEventStore(read_only) as store:
        assert list(store.read_all()) == written
        with pytest.raises(DatabaseReadOnly, match="read-only .default_transaction_read_only"):
            store.require_writable()
        with pytest.raises(DatabaseReadOnly):
            store.append("j", [started(1)])
        with pytest.raises(DatabaseReadOnly):
            store.put_blob(b"x")


def test_a_role_without_insert_privilege_is_read_only_and_says_which_it_lacks(
    pg_cluster, pg_database, pg_url
):
    PostgresEventStore(pg_url).close()
    role = f"reader_{pg_database}"
    pg_cluster.admin(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        with psycopg.connect(pg_url) as conn:
            conn.execute(f'GRANT SELECT ON events, blobs, streams, steplog_meta TO "{role}"')
        with PostgresEventStore(pg_url + f"?options=-c%20role%3D{role}") as store:
            assert store.read_only_reason == (
                f"role {role} lacks INSERT on events, UPDATE on events, INSERT on blobs,"
                " INSERT on streams, UPDATE on streams"
            )
            assert store.last_seq() == 0
            with pytest.raises(DatabaseReadOnly):
                store.append("j", [created("j")])
    finally:
        with psycopg.connect(pg_url) as conn:
            conn.execute(f'REVOKE ALL ON events, blobs, streams, steplog_meta FROM "{role}"')
        pg_cluster.admin(f'DROP ROLE "{role}"')


def test_a_writer_that_cannot_get_the_lock_in_time_is_busy_and_writes_nothing(pg_url):
    with (
        PostgresEventStore(pg_url) as holder,
        PostgresEventStore(pg_url, busy_timeout_ms=200) as waiter,
    ):
        with holder.write_transaction() as conn:
            holder.append_txn(
                conn, "h", [(created("h").ts, "INFO", "job.created", None, "{}")], 0, []
            )
            with pytest.raises(DatabaseBusy, match=r"held the events lock for more than 200 ms"):
                waiter.append("w", [created("w")])
        assert [ev.job_id for ev in waiter.read_all()] == ["h"]
        assert waiter.append("w", [created("w")])[0].seq == 2
    with (
        PostgresEventStore(pg_url) as holder,
        PostgresEventStore(pg_url, busy_timeout_ms=0) as impatient,
    ):  # 0: do not wait at all, as on SQLite
        with holder.write_transaction():
            with pytest.raises(DatabaseBusy, match=r"for more than 0 ms"):
                impatient.append("w", [started(1)])
        assert impatient.job_version("w") == 1


# -- a server that goes away -----------------------------------------------------------------------


def test_a_server_stopped_under_an_open_store_is_one_line_and_nothing_half_written():
    cluster = PostgresCluster.start()
    try:
        name = cluster.create_database()
        store = PostgresEventStore(cluster.url(name), connect_timeout_s=1, retry_s=1)
        try:
            store.append("j", [created("j")])
            cluster.stop()
            with pytest.raises(ServerUnreachable) as caught:
                store.append("j", [started(1)])
            message = one_line_without_password(cluster, str(caught.value))
            assert f"PostgreSQL server 127.0.0.1:{cluster.port}/{name}" in message
            assert "s of retries (STEPLOG_PG_RETRY_S=1)" in message, message
        finally:
            store.close()
    finally:
        cluster.stop()


# -- the README ---------------------------------------------------------------------------------


def test_the_readme_scaling_out_example_runs(pg_cluster, pg_url, capsys, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Scaling out") :]
    section = section[: section.index("\n## ", 3)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    example_url = "postgresql://steplog@127.0.0.1:5432/steplog"
    assert example_url in code
    code = code.replace(example_url, pg_url).replace(
        '"examples/factory/pipeline.toml"',
        repr(str(ROOT / "examples" / "factory" / "pipeline.toml")),
    )
    monkeypatch.chdir(tmp_path)  # its workspace, runs/JOB, lands here
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == "succeeded True\n"


def test_a_cluster_whose_test_run_was_killed_is_reaped_by_the_next_start(tmp_path):
    """kill -9 of a test process leaves its postmaster running (its own session) and its
    directory behind; the next cluster start stops that server and deletes the directory."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.postgres_cluster import reap_abandoned

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tests.postgres_cluster import PostgresCluster;"
            " c = PostgresCluster.start(); print(c.root, flush=True); time.sleep(600)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        root = Path(child.stdout.readline().strip())
        server = int((root / "data" / "postmaster.pid").read_text().split()[0])
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    os.kill(server, 0)  # still running after its owner died
    assert root in reap_abandoned()
    assert not root.exists()
    with pytest.raises(ProcessLookupError):
        for _ in range(200):  # the reaper waited for it; give the kernel a moment to clear it
            os.kill(server, 0)
            time.sleep(0.05)
