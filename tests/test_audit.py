"""`steplog sql`, `steplog audit` and `steplog verify` on a database made by real pipeline runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from steplog.commands import verify as verify_module
from steplog.commands.verify import verify_database
from steplog.eventstore.sqlite import SCHEMA_PATH, SCHEMA_VERSION, schema_statements
from steplog.projections.tables import TableProjection
from tests.audit_fixture import build_audit_db

V1 = Path(__file__).parent / "data" / "schema_v1.db"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_audit_db(tmp_path_factory.mktemp("audit"))


@pytest.fixture
def db(built: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture database (its workspace stays with the original)."""
    copy = tmp_path / "audit.db"
    shutil.copy(built, copy)
    return copy


def files_of(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists()}


def edit(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            for statement in statements:
                conn.execute(statement)
    finally:
        conn.close()


def trigger(name: str) -> str:
    """schema.sql's CREATE TRIGGER statement for `name`."""
    (statement,) = [
        s
        for s in schema_statements(SCHEMA_PATH.read_text())
        if s.startswith(f"CREATE TRIGGER IF NOT EXISTS {name}\n")
    ]
    return statement


# -- steplog sql -------------------------------------------------------------------------------


def test_sql_answers_as_json_csv_and_a_table(db, cli):
    query = "SELECT job_id, status, calls FROM job_summary ORDER BY job_id"
    as_json = cli(db, "sql", query, "--json")
    assert as_json.code == 0, as_json.err
    assert json.loads(as_json.out) == [
        {"job_id": "first", "status": "succeeded", "calls": 6},
        {"job_id": "second", "status": "failed", "calls": 2},
    ]
    as_csv = cli(db, "sql", query, "--csv")
    assert as_csv.out.splitlines() == [
        "job_id,status,calls",
        "first,succeeded,6",
        "second,failed,2",
    ]
    table = cli(db, "sql", query)
    assert table.code == 0 and "succeeded" in table.out and "2 rows" in table.out
    empty = cli(db, "sql", "SELECT job_id FROM jobs WHERE 0", "--csv")
    assert empty.out.splitlines() == ["job_id"]


def test_sql_binds_named_parameters_numbers_as_numbers(db, cli):
    result = cli(
        db,
        "sql",
        "SELECT job_id, step FROM llm_calls WHERE attempt = :n AND step = :step ORDER BY seq",
        "--param",
        "n=2",
        "-p",
        "step=flaky",
        "--json",
    )
    assert result.code == 0, result.err
    assert json.loads(result.out) == [
        {"job_id": "first", "step": "flaky"},
        {"job_id": "second", "step": "flaky"},
    ]
    missing = cli(db, "sql", "SELECT :nope")
    assert missing.code == 2 and "nope" in missing.err


REFUSED = [
    "INSERT INTO jobs VALUES ('x', 'p', 'created', '2026-01-01T00:00:00Z')",
    "REPLACE INTO jobs VALUES ('first', 'p', 'created', '2026-01-01T00:00:00Z')",
    "UPDATE jobs SET status = 'failed'",
    "DELETE FROM cache_index",
    "DROP TABLE jobs",
    "DROP VIEW llm_calls",
    "DROP TRIGGER events_append_only_update",
    "CREATE TABLE evil (x)",
    "CREATE TEMP TABLE scratch (x)",
    "CREATE INDEX evil ON events (ts)",
    "CREATE VIEW evil AS SELECT 1",
    "ALTER TABLE jobs ADD COLUMN x",
    "ATTACH DATABASE '{dir}/other.db' AS other",
    "DETACH DATABASE main",
    "PRAGMA user_version = 7",
    "PRAGMA main.user_version = 7",
    "PRAGMA user_version(7)",
    "PRAGMA query_only = 0",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA writable_schema = 1",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "VACUUM",
    "VACUUM INTO '{dir}/copy.db'",
    "REINDEX",
    "ANALYZE",
    "BEGIN IMMEDIATE",
    "SAVEPOINT s",
    "WITH x AS (SELECT 1) INSERT INTO jobs SELECT 'y', 'p', 'created', 'ts' FROM x",
    "WITH x AS (SELECT 1) DELETE FROM jobs",
    "EXPLAIN DELETE FROM jobs",
    "SELECT 1; DELETE FROM jobs",
    " -- a comment first\n/* and another */ delete from jobs",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_sql_refuses_every_kind_of_write_and_leaves_the_file_byte_identical(db, cli, statement):
    assert cli(db, "sql", "SELECT count(*) FROM events").code == 0  # -shm/-wal exist from here on
    before = files_of(db)
    result = cli(db, "sql", statement.format(dir=db.parent))
    assert result.code == 2
    assert result.err.startswith("error: ") and len(result.err.strip().splitlines()) == 1
    assert "read-only" in result.err or "one statement" in result.err
    assert files_of(db) == before
    assert not (db.parent / "other.db").exists() and not (db.parent / "copy.db").exists()


def test_sql_reads_through_pragmas_that_only_report(db, cli):
    result = cli(db, "sql", "PRAGMA table_info(events)", "--json")
    assert result.code == 0, result.err
    assert [c["name"] for c in json.loads(result.out)][:3] == ["seq", "job_id", "version"]
    result = cli(db, "sql", "SELECT name FROM pragma_table_info('jobs') ORDER BY cid", "--csv")
    assert result.out.split() == ["name", "job_id", "pipeline", "status", "created_ts", "batch"]


def test_sql_bad_sql_and_a_missing_database_are_one_line_errors(tmp_path, db, cli):
    syntax = cli(db, "sql", "SELECT FROM WHERE")
    assert syntax.code == 2 and syntax.err.startswith("error: SQL error")
    absent = tmp_path / "absent.db"
    missing = cli(absent, "sql", "SELECT 1")
    assert missing.code == 2 and "no database" in missing.err and not absent.exists()


def test_sql_upgrades_an_old_database_so_the_views_answer(tmp_path, cli):
    old = tmp_path / "old.db"
    shutil.copy(V1, old)
    result = cli(old, "sql", "SELECT job_id, cache_hits FROM job_summary ORDER BY job_id", "--csv")
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["job_id,cache_hits", "first,0", "second,3"]


# -- steplog audit -----------------------------------------------------------------------------


def test_audit_json_tells_the_whole_story_of_a_resumed_job(db, built, cli):
    result = cli(db, "audit", "first", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    s = doc["summary"]
    assert (s["status"], s["steps"], s["steps_succeeded"], s["calls"], s["failed_calls"]) == (
        "succeeded",
        4,
        4,
        6,
        2,
    )
    assert (
        s["tokens_in"] + s["tokens_out"]
        == sum((c["tokens_in"] or 0) + (c["tokens_out"] or 0) for c in doc["llm_calls"])
        > 0
    )
    assert [e["type"] for e in doc["lifecycle"]] == [
        "job.created",
        "job.started",
        "job.failed",
        "job.resumed",
        "job.succeeded",
    ]
    assert [(r["step"], r["status"]) for r in doc["step_runs"] if r["step"] == "flaky"] == [
        ("flaky", "failed"),
        ("flaky", "succeeded"),
    ]
    assert doc["retries"] == {"flaky": 1}
    assert [(f["what"], f["step"], f["kind"]) for f in doc["failures"]] == [
        ("step", "flaky", "unavailable"),
        ("call", "flaky", "unavailable"),
        ("call", "flaky", "unavailable"),
    ]
    workspace = built.parent / "runs" / "first"
    assert {f["path"]: f["sha256"] for f in doc["files"]} == {
        p: hashlib.sha256((workspace / p).read_bytes()).hexdigest()
        for p in ("app.py", "tests/test_app.py", "README.md")
    }


def test_audit_text_shows_cache_reuse_and_the_failure(db, cli):
    result = cli(db, "audit", "second")
    assert result.code == 0, result.err
    assert "second (audit): failed" in result.out
    assert "cache: 3 hits, 1 miss," in result.out
    assert "cache hit: architect reused first/architect" in result.out
    assert "step flaky attempt 1 (unavailable): provider 'broken'" in result.out


def test_audit_of_an_unknown_job_is_refused(db, cli):
    result = cli(db, "audit", "nope")
    assert result.code == 2 and result.err.strip() == "error: unknown job nope"


# -- steplog verify ----------------------------------------------------------------------------


def test_verify_passes_a_clean_database_without_touching_it(db, cli):
    before = db.read_bytes()
    result = cli(db, "verify")
    assert result.code == 0, result.out
    count = sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0]
    assert result.out.startswith(f"ok: {count} events in 2 jobs")
    assert (
        "jobs, cache_index, cache_refused, breakers, workers, calls_in_flight match a fresh fold"
        in (result.out)
    )
    one = cli(db, "verify", "second")
    [(second,)] = (
        sqlite3.connect(db)
        .execute("SELECT count(*) FROM events WHERE job_id = 'second'")
        .fetchall()
    )
    assert one.code == 0 and one.out.startswith(f"ok: job second: {second} events, its hash")
    assert "its jobs rows match a fold of its events" in one.out
    assert db.read_bytes() == before


def test_verify_of_one_job_reads_that_job_alone(db, cli):
    """verify JOB checks the job's chain, row and blobs from its own events: an edit in
    another job is not its concern (verify without a job finds it), an edit in its own is."""
    first = (
        sqlite3.connect(db)
        .execute("SELECT seq FROM events WHERE job_id = 'first' ORDER BY seq LIMIT 1 OFFSET 2")
        .fetchone()[0]
    )
    edit(
        db,
        "DROP TRIGGER events_append_only_update",
        f"UPDATE events SET ts = '2020-01-01T00:00:00.000000Z' WHERE seq = {first}",
        trigger("events_append_only_update"),
    )
    alone = cli(db, "verify", "second")
    assert alone.code == 0, alone.out
    whole = cli(db, "verify")
    assert whole.code == 1 and f"seq {first}): hash does not match" in whole.out
    own = cli(db, "verify", "first", "--json")
    doc = json.loads(own.out)
    assert own.code == 1 and doc["job"] == "first"
    assert [(p["check"], p["seq"]) for p in doc["problems"]] == [("chain", first)]


def _an_llm_request(db: Path) -> tuple[int, str, int]:
    return (
        sqlite3.connect(db)
        .execute(
            "SELECT seq, job_id, version FROM events WHERE type = 'llm.request'"
            " AND data LIKE '%offline-1%' ORDER BY seq LIMIT 1 OFFSET 1"
        )
        .fetchone()
    )


def test_verify_names_the_event_whose_data_was_edited(db, cli):
    seq, job, version = _an_llm_request(db)
    edit(
        db,
        "DROP TRIGGER events_append_only_update",
        f"UPDATE events SET data = replace(data, 'offline-1', 'offline-2') WHERE seq = {seq}",
        trigger("events_append_only_update"),
    )
    result = cli(db, "verify")
    assert result.code == 1
    assert result.out.splitlines()[0] == (
        f"event (job {job}, version {version}, seq {seq}): hash does not match the event's"
        " content (edited after append)"
    )
    doc = json.loads(cli(db, "verify", "--json").out)
    assert not doc["ok"] and (doc["problems"][0]["seq"], doc["problems"][0]["check"]) == (
        seq,
        "chain",
    )


def test_verify_reports_the_edit_and_the_dropped_trigger_together(db, cli):
    seq, job, version = _an_llm_request(db)
    edit(
        db,
        "DROP TRIGGER events_append_only_update",
        f"UPDATE events SET data = replace(data, 'offline-1', 'offline-2') WHERE seq = {seq}",
    )
    lines = cli(db, "verify").out.splitlines()
    assert lines[0].startswith(f"event (job {job}, version {version}, seq {seq}): hash")
    assert "schema: trigger events_append_only_update is missing" in lines


@pytest.mark.parametrize(
    "name", ["events_append_only_update", "events_append_only_delete", "blobs_immutable_update"]
)
def test_verify_reports_a_dropped_trigger(db, cli, name):
    edit(db, f"DROP TRIGGER {name}")
    result = cli(db, "verify")
    assert result.code == 1 and result.out.splitlines() == [f"schema: trigger {name} is missing"]


def test_verify_reports_a_trigger_that_was_replaced_by_a_harmless_one(db, cli):
    edit(
        db,
        "DROP TRIGGER events_append_only_delete",
        "CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events BEGIN SELECT 1; END",
    )
    result = cli(db, "verify")
    assert result.code == 1
    assert "schema: trigger events_append_only_delete differs from schema.sql" in result.out


def test_verify_reports_a_tampered_projection_row_as_drift(db, cli):
    edit(db, "UPDATE jobs SET status = 'succeeded' WHERE job_id = 'second'")
    result = cli(db, "verify")
    assert result.code == 1
    assert result.out.splitlines() == [
        "projection: projection jobs: row job_id='second' drifted from the log:"
        " status='succeeded' (fold: 'failed')"
    ]


def test_verify_reports_a_missing_cache_index_row(db, cli):
    key = sqlite3.connect(db).execute("SELECT min(cache_key) FROM cache_index").fetchone()[0]
    edit(db, f"DELETE FROM cache_index WHERE cache_key = '{key}'")
    result = cli(db, "verify")
    assert result.code == 1
    assert f"projection cache_index: row cache_key='{key}' is missing" in result.out


def test_verify_reports_a_tampered_blob(db, cli):
    sha = sqlite3.connect(db).execute("SELECT min(sha256) FROM blobs").fetchone()[0]
    edit(
        db,
        "DROP TRIGGER blobs_immutable_update",
        f"UPDATE blobs SET content = CAST('forged' AS BLOB), size = 6 WHERE sha256 = '{sha}'",
        trigger("blobs_immutable_update"),
    )
    result = cli(db, "verify")
    assert result.code == 1
    assert result.out.splitlines()[0].startswith(f"blob: blob {sha[:12]}: content hashes to ")


def test_verify_does_not_upgrade_an_old_database_it_reports_it(tmp_path, cli):
    old = tmp_path / "old.db"
    shutil.copy(V1, old)
    before = old.read_bytes()
    result = cli(old, "verify")
    assert result.code == 1
    expects = f"schema: schema version is 1, this steplog expects {SCHEMA_VERSION}"
    assert expects in result.out.splitlines()[0]
    assert old.read_bytes() == before


def test_verify_of_an_unknown_job_is_refused(db, cli):
    result = cli(db, "verify", "nope")
    assert result.code == 2 and "unknown job nope" in result.err


def test_a_new_projection_table_is_checked_by_adding_one_registry_entry(db, monkeypatch):
    """What another projection table gets from verify: one TableProjection, nothing else."""
    edit(
        db,
        "CREATE TABLE step_starts (job_id TEXT PRIMARY KEY, starts INTEGER NOT NULL)",
        "INSERT INTO step_starts SELECT job_id, count(*) FROM events"
        " WHERE type = 'step.started' GROUP BY job_id",
    )

    def count(state: dict, ev) -> None:
        if ev.type == "step.started":
            state[ev.job_id] = state.get(ev.job_id, 0) + 1

    entry = TableProjection("step_starts", ("job_id", "starts"), dict, count, lambda s: s.items())
    monkeypatch.setattr(
        verify_module, "TABLE_PROJECTIONS", (*verify_module.TABLE_PROJECTIONS, entry)
    )
    report = verify_database(db)
    assert report.ok
    assert report.projections == [p.table for p in verify_module.TABLE_PROJECTIONS]
    assert report.projections[-1] == "step_starts"
    edit(db, "UPDATE step_starts SET starts = starts + 1 WHERE job_id = 'first'")
    report = verify_database(db)
    assert [p.message for p in report.problems] == [
        "projection step_starts: row job_id='first' drifted from the log: starts=6 (fold: 5)"
    ]
