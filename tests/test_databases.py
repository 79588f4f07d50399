"""Databases steplog cannot (fully) use: corrupt, foreign, newer, read-only, full, old.

Every case: one `error: ...` line on stderr naming the problem and the file, exit code 2, and
the data that was there still there (the file byte for byte, or every committed event and a
passing `steplog verify` once the cause is gone). Real files in tmp_path; the user-facing
checks run the real CLI in subprocesses; the wide verb-by-kind matrix runs the same entry point
(`commands.cli.main`) in-process (tests.cli_inprocess), since a subprocess each would cost a
minute.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from steplog.eventstore.errors import DatabaseFull, database_error
from steplog.eventstore.record import StoreError
from steplog.eventstore.sqlite import SCHEMA_VERSION
from steplog.projections.store import open_store
from tests.cli_inprocess import steplog_here
from tests.cli_process import file_size_limit, needs_permissions, status_json, steplog
from tests.on_disk import EXAMPLE, ROOT, db_rows
from tests.test_store import created

V1 = Path(__file__).parent / "data" / "schema_v1.db"
PAGE = 4096


# -- building databases -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A database holding one succeeded job "one" (checkpointed: no -wal), and its export (made
    in this process, so that the in-process matrix below needs no subprocess)."""
    base = tmp_path_factory.mktemp("good")
    db = base / "s.db"
    ran = steplog_here(db, "run", str(EXAMPLE), "--job-id", "one", "-q", cwd=base)
    assert ran.code == 0, ran.err
    exported = steplog_here(db, "export", "one", cwd=base)
    assert exported.code == 0, exported.err
    export = base / "one.jsonl"
    export.write_text(exported.out)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for sidecar in ("s.db-wal", "s.db-shm"):
        (base / sidecar).unlink(missing_ok=True)
    return db, export


def copy_of(good: tuple[Path, Path], tmp_path: Path) -> Path:
    db = tmp_path / "s.db"
    shutil.copy(good[0], db)
    return db


def _overwrite(db: Path, first_page: int, pages: int) -> None:
    """Overwrite whole pages (1-based) with a pattern no b-tree page starts with."""
    data = bytearray(db.read_bytes())
    start, end = (first_page - 1) * PAGE, min(len(data), (first_page - 1 + pages) * PAGE)
    data[start:end] = b"\xa5" * (end - start)
    db.write_bytes(bytes(data))


def middle_pages(db: Path) -> None:
    pages = db.stat().st_size // PAGE
    _overwrite(db, pages // 3, pages // 3)


def events_root_page(db: Path) -> None:
    """Only the events table's page: the file opens, reading the log then fails."""
    [(root,)] = db_rows(db, "SELECT rootpage FROM sqlite_master WHERE name = 'events'")
    _overwrite(db, root, 1)


def truncated(db: Path) -> None:
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])


def header_then_garbage(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[:100] + bytes((i * 37 + 11) % 251 for i in range(len(data) - 100)))


def not_sqlite(db: Path) -> None:
    db.write_text("name,total\nwidget,9.5\n" * 200)


def foreign_tables(db: Path) -> None:
    db.unlink()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (9.5)")
    conn.close()


def foreign_wal_application(db: Path) -> None:
    """Another application's file, in WAL mode and with its own application_id."""
    foreign_tables(db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA application_id = 1234")
    conn.close()


def newer_steplog(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


def assert_one_error_line(err: str, db: Path, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    assert db.name in lines[0], err
    assert any(w in lines[0] for w in words), err


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file beside the database: nothing may appear (-wal, -shm, -journal) or change."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# -- 1. corrupt files, through the real CLI -----------------------------------------------------

CORE_VERBS = [
    ("run", str(EXAMPLE), "--job-id", "two", "-q"),
    ("resume", "one", "-q"),
    ("status", "one"),
    ("jobs",),
    ("events", "one"),
    ("verify",),
]


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", [middle_pages, truncated, header_then_garbage])
def test_a_corrupt_file_is_refused_by_every_core_verb_and_left_as_it_was(good, tmp_path, corrupt):
    db = copy_of(good, tmp_path)
    corrupt(db)
    before = snapshot(tmp_path)
    for args in CORE_VERBS:
        result = steplog(db, *args)
        assert result.code == 2, (args, result.err)
        assert_one_error_line(result.err, db, "corrupt", "not a SQLite database")
        # The file is in WAL mode: a read-only reader (verify) may leave the -shm index and an
        # empty -wal beside it, as any SQLite reader does; nothing is written to the log.
        assert (tmp_path / "s.db").read_bytes() == before["s.db"], args
        wal = tmp_path / "s.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0, args
        for sidecar in tmp_path.glob("s.db-*"):
            sidecar.unlink()
        assert snapshot(tmp_path) == before, args


@pytest.mark.slow
def test_a_damaged_events_page_fails_the_verbs_that_read_the_log_with_one_line(good, tmp_path):
    db = copy_of(good, tmp_path)
    events_root_page(db)
    before = db.read_bytes()
    for args in [a for a in CORE_VERBS if a[0] != "jobs"]:  # `jobs` reads only the jobs table
        result = steplog(db, *args)
        assert result.code == 2, (args, result.err)
        assert_one_error_line(result.err, db, "corrupt")
        assert db.read_bytes() == before, args
    workspace = tmp_path / "runs" / "two"
    assert not workspace.exists() or not any(workspace.iterdir())


# -- 2. foreign, newer, non-SQLite: every verb that opens the database --------------------------


def every_verb(export: Path) -> list[tuple[str, ...]]:
    return [
        ("run", str(EXAMPLE), "--job-id", "two", "-q"),
        ("resume", "one"),
        ("replay", "one", "--until", "1"),
        ("replay", "one", "--until", "1", "--fork", "fork"),
        ("status",),
        ("status", "one"),
        ("jobs",),
        ("events", "one"),
        ("sql", "SELECT 1"),
        ("audit", "one"),
        ("verify",),
        ("export", "one"),
        ("import", str(export), "--job-id", "imported"),
        ("timeline", "one"),
        ("plan", str(EXAMPLE)),
    ]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (not_sqlite, ("not a SQLite database",)),
        (foreign_tables, ("not a steplog database",)),
        (foreign_wal_application, ("another application", "not a steplog database")),
        (newer_steplog, ("newer steplog",)),
    ],
)
def test_every_verb_refuses_a_file_it_does_not_own_and_leaves_it_byte_identical(
    good, tmp_path, monkeypatch, make, words
):
    db = copy_of(good, tmp_path)
    make(db)
    monkeypatch.chdir(tmp_path)
    journal = db_rows(db, "PRAGMA journal_mode") if make is not not_sqlite else None
    before = snapshot(tmp_path)
    for args in every_verb(good[1]):
        result = steplog_here(db, *args)
        assert result.code == 2, (args, result.err)
        assert_one_error_line(result.err, db, *words)
        assert snapshot(tmp_path) == before, args  # no -wal / -shm, no WAL conversion
    if journal is not None:
        assert db_rows(db, "PRAGMA journal_mode") == journal
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_real_cli_refuses_a_foreign_wal_file_without_touching_it(good, tmp_path):
    db = copy_of(good, tmp_path)
    foreign_wal_application(db)
    before = snapshot(tmp_path)
    for args in [("run", str(EXAMPLE), "-q"), ("verify",), ("sql", "SELECT * FROM invoices")]:
        result = steplog(db, *args)
        assert result.code == 2, (args, result.err)
        assert_one_error_line(result.err, db, "another application", "not a steplog database")
        assert snapshot(tmp_path) == before


# -- 3. read-only file and directory ------------------------------------------------------------


READ_VERBS = [
    ("status", "one"),
    ("jobs",),
    ("events", "one"),
    ("sql", "SELECT count(*) FROM events"),
    ("verify",),
    ("export", "one"),
]


def write_verbs(export: Path) -> list[tuple[str, ...]]:
    return [
        ("run", str(EXAMPLE), "--job-id", "two", "-q"),
        ("resume", "one"),
        ("import", str(export), "--job-id", "imported"),
        ("replay", "one", "--until", "3", "--fork", "fork"),
    ]


def _check_read_only(db: Path, export: Path) -> None:
    before = db.read_bytes()
    for args in READ_VERBS:
        result = steplog(db, *args, as_plain_user=True)
        assert result.code == 0, (args, result.err)
    assert "one" in steplog(db, "jobs", as_plain_user=True).out
    for args in write_verbs(export):
        result = steplog(db, *args, as_plain_user=True)
        assert result.code == 2, (args, result.err)
        assert_one_error_line(result.err, db, "is read-only")
        assert not (db.parent / "runs" / "two").exists()
    assert db.read_bytes() == before


@pytest.mark.slow
@needs_permissions
def test_a_read_only_file_can_be_read_but_not_written(good, tmp_path):
    db = copy_of(good, tmp_path)
    db.chmod(0o444)
    try:
        _check_read_only(db, good[1])
    finally:
        db.chmod(0o644)
    assert steplog(db, "verify").code == 0


@pytest.mark.slow
@needs_permissions
def test_a_database_in_a_read_only_directory_can_be_read_but_not_written(good, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = copy_of(good, folder)
    folder.chmod(0o555)
    try:
        _check_read_only(db, good[1])
        assert sorted(p.name for p in folder.iterdir()) == ["s.db"]
    finally:
        folder.chmod(0o755)
    assert steplog(db, "verify").code == 0


@pytest.mark.slow
@needs_permissions
def test_a_read_only_old_schema_file_says_it_needs_an_upgrade(tmp_path):
    db = tmp_path / "old.db"
    shutil.copy(V1, db)
    db.chmod(0o444)
    try:
        for args in [("jobs",), ("status", "first"), ("sql", "SELECT 1")]:
            result = steplog(db, *args, as_plain_user=True)
            assert result.code == 2, (args, result.err)
            assert_one_error_line(result.err, db, "needs an upgrade")
            assert "read-only" in result.err
    finally:
        db.chmod(0o644)
    assert db.read_bytes() == V1.read_bytes()


# -- 4. a full disk ------------------------------------------------------------------------------

BIG_PAD = "y" * 150_000  # each step's prompt is a ~150 KB blob
STEPS = 12


def big_pipeline(path: Path) -> Path:
    lines = [
        'name = "big"',
        "[inputs.pad]",
        f'default = "{BIG_PAD}"',
        "[providers.local]",
        'kind = "offline"',
        'model = "offline-1"',
    ]
    for i in range(STEPS):
        lines += [
            f"[steps.s{i:02d}]",
            'provider = "local"',
            'output = "text"',
            f'prompt = "step {i}: {{{{ inputs.pad }}}}"',
        ]
        if i:
            lines.append(f'needs = ["s{i - 1:02d}"]')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_stops_with_one_line_and_the_job_resumes(tmp_path):
    db, pipeline = tmp_path / "s.db", big_pipeline(tmp_path / "big.toml")
    failed = steplog(
        db, "run", str(pipeline), "--job-id", "big", "-q", max_file_bytes=1_500_000, timeout=120
    )
    assert failed.code == 2, failed.err
    created, _, error = failed.err.partition("\n")  # a new database, said first (even with -q)
    assert created == f"created new database {db}"
    assert_one_error_line(error, db, "disk full")
    log = "SELECT seq, job_id, version, type, step, hash FROM events ORDER BY seq"
    committed = db_rows(db, log)
    assert committed and any(t == "llm.response" for _, _, _, t, _, _ in committed)
    assert steplog(db, "verify").code == 0
    doc = status_json(db, "big")
    assert doc["status"] == "running" and 0 < len(doc["completed_steps"]) < STEPS

    resumed = steplog(db, "resume", "big", "-q")
    assert resumed.code == 0, resumed.err
    after = db_rows(db, log)
    assert after[: len(committed)] == committed  # every event committed before is still there
    assert status_json(db, "big")["status"] == "succeeded"
    check = steplog(db, "verify")
    assert check.code == 0, check.out + check.err


def test_a_full_database_refuses_the_append_and_keeps_the_log(db_path):
    store = open_store(db_path)
    try:
        store.append("j", [created()], expected_version=0)
        before = list(store.read_all())
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(DatabaseFull, match="disk full") as refused:
            store.append("j", [created()], blobs=[os.urandom(64 * PAGE)])
        assert str(refused.value).startswith(f"database {db_path}: disk full")
        assert isinstance(refused.value, StoreError)
        assert list(store.read_all()) == before
        assert not store.conn.in_transaction
        store.conn.execute("PRAGMA max_page_count = 1073741823")
        store.append("k", [created()], expected_version=0)  # the store still works
        assert [e.job_id for e in store.read_all()] == ["j", "k"]
        assert store.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        store.close()


def test_sqlite_failures_map_to_one_line_naming_the_file(tmp_path):
    def failure(code: int, message: str) -> sqlite3.Error:
        exc = sqlite3.OperationalError(message)
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    db = tmp_path / "x.db"
    cases = {
        sqlite3.SQLITE_FULL: "disk full",
        sqlite3.SQLITE_IOERR_WRITE: "disk full or file size limit",
        sqlite3.SQLITE_READONLY: "read-only",
        sqlite3.SQLITE_CANTOPEN: "cannot open",
        sqlite3.SQLITE_CORRUPT: "corrupt",
        sqlite3.SQLITE_NOTADB: "not a SQLite database",
        sqlite3.SQLITE_IOERR: "I/O error",
    }
    for code, words in cases.items():
        error = database_error(db, failure(code, "what sqlite said"))
        assert isinstance(error, StoreError)
        text = str(error)
        assert text.startswith(f"database {db}:") and words in text and "\n" not in text
        assert "(what sqlite said)" in text
        assert str(database_error(db, failure(code, "x"), opening=True)).startswith(
            f"cannot use database {db}:"
        )


@pytest.mark.slow
def test_a_write_past_the_size_limit_leaves_no_half_written_workspace_file(tmp_path):
    target = tmp_path / "ws" / "out.txt"
    target.parent.mkdir()
    target.write_text("the old content\n")
    script = (
        "import sys; from pathlib import Path; from steplog.executor.workspace import write_file\n"
        "try:\n"
        "    write_file(Path(sys.argv[1]), 'out.txt', b'z' * 200_000)\n"
        "except OSError as exc:\n"
        "    print(exc.errno); sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(target.parent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=file_size_limit(50_000),
    )
    assert result.returncode == 3, result.stderr
    assert int(result.stdout) == 27  # EFBIG
    assert target.read_text() == "the old content\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # temp file removed


# -- 5. schema upgrades through the CLI ----------------------------------------------------------


@pytest.mark.slow
def test_an_upgraded_first_release_database_runs_new_jobs_and_verifies(tmp_path):
    db = tmp_path / "old.db"
    shutil.copy(V1, db)
    events_before = db_rows(db, "SELECT seq, hash FROM events ORDER BY seq")
    listed = steplog(db, "jobs", "--json")
    assert listed.code == 0, listed.err
    assert db_rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    migrated = db_rows(db, "SELECT version FROM schema_migrations ORDER BY version")
    assert [v for (v,) in migrated] == list(range(2, SCHEMA_VERSION + 1))
    ran = steplog(db, "run", str(EXAMPLE), "--job-id", "after-upgrade", "-q")
    assert ran.code == 0, ran.err
    assert db_rows(db, "SELECT seq, hash FROM events ORDER BY seq")[: len(events_before)] == (
        events_before
    )
    checked = steplog(db, "verify")
    assert checked.code == 0, checked.out + checked.err
