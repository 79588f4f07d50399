"""PostgreSQL schema upgrades: a database written at schema 1 (the DDL of that version, applied by hand
here, holding the rows an older steplog wrote) is upgraded when it is opened, in one transaction
under the advisory lock, and the upgrade is recorded in schema_migrations; the upgraded database
equals a new one, its views answer as SQLite's do, and verify passes. Views are dropped and
created again by every upgrade; what stops one (a failing section, a view built on steplog's, a
role that may not change the schema, a newer schema) leaves the database as it was. Several
processes opening an old or a current database at once apply each migration once: a
contract-style pair of tests run on both stores."""

from __future__ import annotations

import ast
import os
import shutil
import sqlite3
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest

from steplog.commands.verify import verify_database
from steplog.eventstore import postgres as postgres_module
from steplog.eventstore.config import sql_file
from steplog.eventstore.errors import DatabaseReadOnly
from steplog.eventstore.postgres import (
    MIGRATIONS_PATH,
    SCHEMA_PATH,
    SCHEMA_VERSION,
    migrations,
    views_part,
)
from steplog.eventstore.reads import AUDIT_VIEWS
from steplog.eventstore.record import DatabaseUnusable
from steplog.eventstore.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from steplog.projections.store import open_store
from tests.audit_fixture import build_audit_db
from tests.on_disk import ROOT
from tests.store_contract import run_processes
from tests.test_postgres_views import assert_views_equal

pytestmark = pytest.mark.slow  # the cluster is a server process; the races spawn processes

# schema_postgres.sql as it was at version 1 (the tables, triggers and index; no view), without
# its comments: what an older steplog applied to an empty database. Frozen here, as
# tests/data/schema_v1.db freezes SQLite's first schema.
V1_SCHEMA = """
CREATE TABLE steplog_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE events (
    seq       bigint PRIMARY KEY CHECK (seq >= 1),
    job_id    text   NOT NULL,
    version   bigint NOT NULL CHECK (version >= 1),
    ts        text   NOT NULL,
    level     text   NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARNING', 'ERROR')),
    type      text   NOT NULL,
    step      text,
    data      json   NOT NULL,
    prev_hash text   NOT NULL,
    hash      text   NOT NULL,
    UNIQUE (job_id, version)
);

CREATE FUNCTION steplog_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'steplog: % (% refused)', TG_ARGV[0], TG_OP;
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION steplog_refuse_change('events is append-only');
ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only;

CREATE FUNCTION steplog_notify_append() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
BEGIN
    SELECT max(seq) INTO last FROM appended;
    IF last IS NOT NULL THEN
        PERFORM pg_notify('steplog_events', last::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION steplog_notify_append();

CREATE TABLE blobs (
    sha256  text   PRIMARY KEY,
    size    bigint NOT NULL CHECK (size >= 0),
    content bytea  NOT NULL
);

CREATE TRIGGER blobs_immutable
    BEFORE UPDATE OR DELETE OR TRUNCATE ON blobs
    FOR EACH STATEMENT EXECUTE FUNCTION steplog_refuse_change('blobs are immutable');
ALTER TABLE blobs ENABLE ALWAYS TRIGGER blobs_immutable;

CREATE TABLE streams (
    job_id     text   PRIMARY KEY,
    version    bigint NOT NULL,
    last_hash  text   NOT NULL,
    last_seq   bigint NOT NULL,
    created_ts text   NOT NULL,
    updated_ts text   NOT NULL
);

CREATE TABLE jobs (
    job_id     text PRIMARY KEY,
    pipeline   text,
    status     text NOT NULL,
    created_ts text NOT NULL
);

CREATE TABLE cache_index (
    cache_key       text   PRIMARY KEY,
    response_sha256 text   NOT NULL,
    origin_job      text   NOT NULL,
    origin_step     text,
    seq             bigint NOT NULL,
    tokens_in       bigint NOT NULL DEFAULT 0,
    tokens_out      bigint NOT NULL DEFAULT 0
);

CREATE TABLE cache_refused (
    cache_key       text   NOT NULL,
    response_sha256 text   NOT NULL,
    seq             bigint NOT NULL,
    PRIMARY KEY (cache_key, response_sha256)
);

CREATE INDEX events_cache_runs
    ON events (step, (data ->> 'pipeline'), seq)
    WHERE type IN ('cache.hit', 'cache.miss');

CREATE TABLE breakers (
    endpoint text             PRIMARY KEY,
    status   text             NOT NULL,
    failures bigint           NOT NULL,
    until    double precision NOT NULL,
    provider text             NOT NULL,
    seq      bigint           NOT NULL
);

CREATE TABLE schema_migrations (
    version     integer PRIMARY KEY,
    ts          text    NOT NULL,
    description text    NOT NULL
);
"""
V1_CREATED = "2026-11-20T09:00:00.000000Z"
# every table an older steplog wrote, and its columns (the same on SQLite)
TABLES = {
    "events": "seq, job_id, version, ts, level, type, step, data, prev_hash, hash",
    "blobs": "sha256, size, content",
    "streams": "job_id, version, last_hash, last_seq, created_ts, updated_ts",
    "jobs": "job_id, pipeline, status, created_ts",
    "cache_index": "cache_key, response_sha256, origin_job, origin_step, seq, tokens_in,"
    " tokens_out",
    "cache_refused": "cache_key, response_sha256, seq",
    "breakers": "endpoint, status, failures, until, provider, seq",
}


def make_v1(cluster: Any, rows_from: Path | None = None) -> str:
    """A new database at schema 1, as steplog 1 left it: its DDL, steplog_meta and its
    schema_migrations row, and (rows_from) every row of a SQLite log's tables. Its name."""
    name = cluster.create_database()
    with psycopg.connect(cluster.url(name)) as conn:  # one transaction, committed on exit
        conn.execute(V1_SCHEMA)
        conn.execute(
            "INSERT INTO steplog_meta (key, value)"
            " VALUES ('application', 'steplog'), ('schema_version', '1')"
        )
        conn.execute(
            "INSERT INTO schema_migrations (version, ts, description)"
            " VALUES (1, %s, 'created at schema 1')",
            (V1_CREATED,),
        )
        if rows_from is not None:
            copy_tables(rows_from, conn)
    return name


def copy_tables(db: Path, conn: psycopg.Connection[Any]) -> None:
    lite = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for table, columns in TABLES.items():
            marks = ", ".join(
                "%s::json" if c.strip() == "data" else "%s" for c in columns.split(",")
            )
            # steplog 1 kept no leases: the streams of today's (worker:<id>) are left out
            where = " WHERE substr(job_id, 1, 7) <> 'worker:'" if "job_id," in columns else ""
            rows = lite.execute(f"SELECT {columns} FROM {table}{where}").fetchall()
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
    finally:
        lite.close()


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """One statement on its own connection (autocommit); its rows, if it returns any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return [tuple(r) for r in cursor.fetchall()] if cursor.description else []


def meta(url: str) -> dict[str, str]:
    return dict(query(url, "SELECT key, value FROM steplog_meta"))


def views_in(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")}


def catalog(url: str) -> dict[str, list[tuple]]:
    """What a schema is, from PostgreSQL's catalogs: relations, columns, constraints, indexes,
    views' definitions, triggers and their state, functions with their bodies."""
    here = "n.nspname = current_schema()"
    sql = {
        "relations": "SELECT c.relname, c.relkind FROM pg_class AS c"
        f" JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE {here}",
        "columns": "SELECT table_name, ordinal_position, column_name, data_type, is_nullable,"
        " coalesce(column_default, '') FROM information_schema.columns"
        " WHERE table_schema = current_schema()",
        "constraints": "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint AS c"
        f" JOIN pg_namespace AS n ON n.oid = c.connamespace WHERE {here}",
        "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()",
        "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = current_schema()",
        "triggers": "SELECT t.tgname, t.tgenabled, pg_get_triggerdef(t.oid) FROM pg_trigger AS t"
        " JOIN pg_class AS c ON c.oid = t.tgrelid"
        f" JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE {here} AND NOT t.tgisinternal",
        "functions": "SELECT p.proname, pg_get_function_arguments(p.oid),"
        " pg_get_function_result(p.oid), p.provolatile, p.proisstrict, p.proparallel,"
        " regexp_replace(p.prosrc, '\\s+', ' ', 'g') FROM pg_proc AS p"
        f" JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE {here}",
    }
    return {kind: sorted(query(url, statement)) for kind, statement in sql.items()}


@pytest.fixture(scope="module")
def audit_db(tmp_path_factory) -> Path:
    return build_audit_db(tmp_path_factory.mktemp("migrations"))


@pytest.fixture
def v1_url(pg_cluster, audit_db) -> Iterator[str]:
    """A schema 1 database holding the audit fixture's log (tests/audit_fixture.py)."""
    name = make_v1(pg_cluster, rows_from=audit_db)
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)


def pretend_v1(url: str, *statements: str) -> None:
    """Turn a new (current) database back into one that says it is at schema 1, keeping its
    views, after running `statements`: what an upgrade must clear up."""
    with psycopg.connect(url) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.execute("UPDATE steplog_meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("DELETE FROM schema_migrations")
        conn.execute(
            "INSERT INTO schema_migrations VALUES (1, %s, 'created at schema 1')", (V1_CREATED,)
        )


# -- upgrading schema 1 -------------------------------------------------------------------------


def test_the_schema_1_database_made_by_hand_is_what_steplog_1_wrote(v1_url):
    assert meta(v1_url) == {"application": "steplog", "schema_version": "1"}
    assert views_in(v1_url) == set()
    assert query(v1_url, "SELECT count(*) FROM events") == [(62,)]


def test_opening_a_schema_1_database_upgrades_it_and_records_the_migration(v1_url):
    events_before = query(v1_url, "SELECT seq, hash, data::text FROM events ORDER BY seq")
    open_store(v1_url).close()
    assert SCHEMA_VERSION == 5
    assert meta(v1_url) == {"application": "steplog", "schema_version": "5"}
    applied = query(v1_url, "SELECT version, ts, description FROM schema_migrations ORDER BY 1")
    assert [(v, d) for v, _, d in applied] == [
        (1, "created at schema 1"),
        (2, migrations_2()),
        (3, migrations(MIGRATIONS_PATH.read_text())[3][0]),
        (4, migrations(MIGRATIONS_PATH.read_text())[4][0]),
        (5, migrations(MIGRATIONS_PATH.read_text())[5][0]),
    ]
    assert applied[0][1] == V1_CREATED and applied[1][1].endswith("Z")
    assert applied[1][1] == applied[2][1] == applied[3][1] == applied[4][1]  # one transaction
    assert "audit views" in applied[1][2] and "workers" in applied[2][2]
    assert "jobs.batch" in applied[3][2] and "calls_in_flight" in applied[4][2]
    assert views_in(v1_url) == set(AUDIT_VIEWS)
    assert query(v1_url, "SELECT seq, hash, data::text FROM events ORDER BY seq") == events_before
    open_store(v1_url).close()  # a second open applies nothing
    assert len(query(v1_url, "SELECT * FROM schema_migrations")) == 5


def migrations_2() -> str:
    return migration_description(2)


def migration_description(version: int) -> str:
    return migrations(MIGRATIONS_PATH.read_text())[version][0]


def test_the_upgraded_databases_views_answer_as_sqlites_and_verify_passes(v1_url, audit_db):
    with closing(open_store(v1_url)) as pg, closing(open_store(audit_db)) as lite:
        assert_views_equal(lite, pg)
        with pg.reading() as conn:
            summary = conn.execute(
                "SELECT job_id, status, calls, cache_hits FROM job_summary ORDER BY job_id"
            ).fetchall()
    assert summary == [("first", "succeeded", 6, 0), ("second", "failed", 2, 3)]
    report = verify_database(v1_url)
    assert report.ok, [p.line() for p in report.problems]
    assert (report.schema_version, report.events) == (SCHEMA_VERSION, 62)


def test_an_upgraded_database_has_exactly_the_schema_of_a_new_one(v1_url, pg_url):
    open_store(v1_url).close()
    open_store(pg_url).close()
    upgraded, new = catalog(v1_url), catalog(pg_url)
    for kind in new:
        assert upgraded[kind] == new[kind], kind
    assert {name for name, kind in new["relations"] if kind == "v"} == set(AUDIT_VIEWS)


def test_a_failing_migration_leaves_the_database_as_it_was(v1_url, tmp_path, monkeypatch):
    broken = tmp_path / "migrations_postgres.sql"
    broken.write_text(MIGRATIONS_PATH.read_text() + "\nCREATE TABLE events (oops int);\n")
    monkeypatch.setattr(postgres_module, "MIGRATIONS_PATH", broken)
    before = catalog(v1_url)
    with pytest.raises(DatabaseUnusable, match='relation "events" already exists'):
        open_store(v1_url)
    assert catalog(v1_url) == before
    assert meta(v1_url)["schema_version"] == "1"
    assert query(v1_url, "SELECT version FROM schema_migrations") == [(1,)]
    assert query(v1_url, "SELECT count(*) FROM events") == [(62,)]


def test_every_upgrade_drops_steplogs_views_and_creates_them_again(pg_url):
    open_store(pg_url).close()
    new = catalog(pg_url)["views"]
    pretend_v1(
        pg_url,
        "DROP VIEW job_summary, llm_calls",
        "CREATE VIEW llm_calls AS SELECT 1 AS stale",  # an older definition, say
    )
    open_store(pg_url).close()
    assert catalog(pg_url)["views"] == new
    assert [v for v, _ in query(pg_url, "SELECT version, description FROM schema_migrations")] == [
        *range(1, SCHEMA_VERSION + 1)
    ]


def test_a_view_built_on_steplogs_stops_the_upgrade_in_one_line_naming_it(pg_cluster, pg_url):
    open_store(pg_url).close()
    pretend_v1(pg_url, "CREATE VIEW my_calls AS SELECT job_id, cost FROM llm_calls")
    before = catalog(pg_url)
    with pytest.raises(DatabaseUnusable) as caught:
        open_store(pg_url)
    message = str(caught.value)
    assert "\n" not in message and not pg_cluster.contains_password(message)
    assert message.endswith(
        "needs an upgrade to schema 5 (it is at 1), which creates steplog's views again, but"
        " view my_calls depends on view llm_calls: drop it first (and create it again after)"
    )
    assert catalog(pg_url) == before  # my_calls too


def test_a_read_only_session_is_refused_the_upgrade_in_one_line(pg_cluster, v1_url):
    before = catalog(v1_url)
    read_only = v1_url + "?options=-c%20default_transaction_read_only%3Don"
    with pytest.raises(DatabaseReadOnly) as caught:
        open_store(read_only)
    message = str(caught.value)
    assert "\n" not in message and not pg_cluster.contains_password(message)
    assert "needs an upgrade to schema 5 (it is at 1) but is read-only (cannot execute " in message
    assert message.endswith(" in a read-only transaction)")
    assert catalog(v1_url) == before and meta(v1_url)["schema_version"] == "1"


def test_a_role_that_may_append_but_not_change_the_schema_is_refused_the_upgrade(
    pg_cluster, pg_database, v1_url
):
    role = f"writer_{pg_database}"
    pg_cluster.admin(f'CREATE ROLE "{role}" NOLOGIN')
    tables = ", ".join(TABLES) + ", steplog_meta, schema_migrations"
    try:
        with psycopg.connect(v1_url) as conn:
            conn.execute(f'GRANT SELECT, INSERT, UPDATE ON {tables} TO "{role}"')
        with pytest.raises(
            DatabaseReadOnly, match=r"may not change its schema \((permission denied|must be owner)"
        ):
            open_store(v1_url + f"?options=-c%20role%3D{role}")
        assert meta(v1_url)["schema_version"] == "1" and views_in(v1_url) == set()
    finally:
        with psycopg.connect(v1_url) as conn:
            conn.execute(f'REVOKE ALL ON {tables} FROM "{role}"')
        pg_cluster.admin(f'DROP ROLE "{role}"')


def test_a_newer_schema_is_refused_and_left_as_it_is(pg_url):
    open_store(pg_url).close()
    query(pg_url, "UPDATE steplog_meta SET value = '6' WHERE key = 'schema_version'")
    before = catalog(pg_url)
    with pytest.raises(DatabaseUnusable, match=r"newer steplog \(schema 6; this steplog knows up"):
        open_store(pg_url)
    assert catalog(pg_url) == before


# -- the files ----------------------------------------------------------------------------------


def test_the_migrations_file_covers_every_version_and_the_views_part_the_five_views():
    found = migrations(MIGRATIONS_PATH.read_text())
    assert sorted(found) == list(range(2, SCHEMA_VERSION + 1))
    # a section with no statement only re-creates the views, and says so
    assert all(script or "views only" in what for what, script in found.values())
    part, views = views_part(SCHEMA_PATH.read_text())
    assert sorted(views) == sorted(AUDIT_VIEWS)
    assert part.startswith("-- Audit views ---") and "CREATE TABLE" not in part
    assert SCHEMA_PATH.read_text().startswith(
        f"-- steplog schema for PostgreSQL, version {SCHEMA_VERSION}."
    )


def test_the_migrations_file_ships_in_the_wheel_beside_the_schema():
    tree = ast.parse((ROOT / "setup.py").read_text())
    (shipped,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SQL_FILES"
    ]
    assert {"schema_postgres.sql", "migrations_postgres.sql"} <= set(shipped)
    assert (
        MIGRATIONS_PATH == sql_file("migrations_postgres.sql") == ROOT / "migrations_postgres.sql"
    )


# -- racing opens, on both stores ---------------------------------------------------------------


def open_at_once(location: str, barrier: Any, results: Any) -> None:
    """A spawned process: wait for the others, open the store (creating or upgrading it if it
    must), report."""
    try:
        barrier.wait(timeout=120)
        open_store(location).close()
        results.put(("opened", os.getpid()))
    except BaseException:
        results.put(("error", traceback.format_exc()))


class MigrationRace:
    """Processes opening one database at the same moment: each migration is applied once,
    whoever gets there first, and a current database is left alone. Hooks: old_location()
    and new_location() (context managers giving a database at the store's first schema and a
    new one), migration_rows(location), versions_after_upgrade."""

    versions_after_upgrade: ClassVar[list[int]]

    def old_location(self) -> AbstractContextManager[str]:
        raise NotImplementedError

    def new_location(self) -> AbstractContextManager[str]:
        raise NotImplementedError

    def migration_rows(self, location: str) -> list[tuple]:
        raise NotImplementedError

    def test_processes_opening_an_old_database_at_once_apply_each_migration_once(self):
        with self.old_location() as location:
            reports = run_processes(open_at_once, [(location,)] * 3)
            assert sorted(r[0] for r in reports) == ["opened"] * 3
            rows = self.migration_rows(location)
        assert [row[0] for row in rows] == self.versions_after_upgrade
        upgraded = [row for row in rows if row[2] != "created at schema 1"]
        assert len({row[1] for row in upgraded}) == 1  # one transaction

    def test_processes_opening_a_current_database_at_once_apply_nothing(self):
        with self.new_location() as location:
            open_store(location).close()
            before = self.migration_rows(location)
            reports = run_processes(open_at_once, [(location,)] * 2)
            assert sorted(r[0] for r in reports) == ["opened"] * 2
            assert self.migration_rows(location) == before
        assert len(before) == 1


class TestSQLiteMigrationRace(MigrationRace):
    versions_after_upgrade = list(range(2, SQLITE_SCHEMA_VERSION + 1))

    @contextmanager
    def old_location(self) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="steplog-race-") as tmp:
            path = Path(tmp) / "old.db"
            shutil.copy(Path(__file__).parent / "data" / "schema_v1.db", path)
            yield str(path)

    @contextmanager
    def new_location(self) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="steplog-race-") as tmp:
            yield str(Path(tmp) / "new.db")

    def migration_rows(self, location: str) -> list[tuple]:
        conn = sqlite3.connect(location)
        try:
            return conn.execute(
                "SELECT version, ts, description FROM schema_migrations ORDER BY version"
            ).fetchall()
        finally:
            conn.close()


class TestPostgresMigrationRace(MigrationRace):
    versions_after_upgrade = list(range(1, SCHEMA_VERSION + 1))
    cluster: Any = None

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _cluster(cls, pg_cluster: Any) -> None:
        cls.cluster = pg_cluster

    @contextmanager
    def old_location(self) -> Iterator[str]:
        name = make_v1(self.cluster)
        try:
            yield self.cluster.url(name)
        finally:
            self.cluster.drop_database(name)

    @contextmanager
    def new_location(self) -> Iterator[str]:
        name = self.cluster.create_database()
        try:
            yield self.cluster.url(name)
        finally:
            self.cluster.drop_database(name)

    def migration_rows(self, location: str) -> list[tuple]:
        return query(location, "SELECT version, ts, description FROM schema_migrations ORDER BY 1")


def test_verify_reports_an_older_schema_and_does_not_upgrade_it(v1_url):
    """verify writes nothing, on PostgreSQL as on SQLite: it names the old version."""
    report = verify_database(v1_url)
    assert not report.ok and report.schema_version == 1
    assert any(
        p.check == "schema" and "schema version is 1, this steplog expects 5" in p.message
        for p in report.problems
    ), [p.line() for p in report.problems]
    again = verify_database(v1_url)
    assert again.schema_version == 1  # still 1: nothing was applied
