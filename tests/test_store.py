"""The event store on real SQLite files: round trip and hash chain, append-only, optimistic
concurrency, atomic batches, content-addressed blobs, and what opening a file accepts.

Properties make a fresh database per hypothesis example (tests.strategies.fresh_store); plain
tests use the `store` / `db_path` fixtures (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import steplog.eventstore.sqlite
from steplog.eventstore.events import (
    InvalidEvent,
    JobCreated,
    JobStarted,
    JobSucceeded,
    LLMResponded,
    NewEvent,
    Owner,
    StepFailed,
    StepStarted,
)
from steplog.eventstore.record import DatabaseUnusable, StoreError, VersionConflict
from steplog.eventstore.sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLITE_MAGIC, SQLiteEventStore
from steplog.projections.store import open_store
from steplog.projections.tables import read_jobs_table
from tests.strategies import (
    append_batches,
    assert_chain,
    by_job,
    dump,
    fresh_store,
    interleaved_batches,
    job_batches,
    job_events,
    pools,
)

OWNER = Owner(pid=1, host="h", started="1")


def created(steps=("a",)) -> NewEvent:
    return NewEvent.of(
        JobCreated(
            pipeline="p",
            pipeline_fingerprint="f" * 64,
            pipeline_sha256="0" * 64,
            steps={s: [] for s in steps},
            workspace="/tmp/ws",
        )
    )


def started(step: str = "a", attempt: int = 1) -> NewEvent:
    return NewEvent.of(StepStarted(attempt=attempt, fingerprint="f"), step=step)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def count(store: SQLiteEventStore, table: str) -> int:
    return store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# -- 1. round trip and hash chain ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(interleaved_batches())
def test_events_round_trip_unchanged_with_versions_seqs_and_a_valid_hash_chain(batches):
    with fresh_store() as store:
        returned = append_batches(store, batches)
        everything = list(store.read_all())
        per_job = {job: list(store.read_job(job)) for job in by_job(batches)}
        versions = {job: store.job_version(job) for job in per_job}

    assert everything == returned  # append returns exactly what was stored
    assert [ev.seq for ev in everything] == list(range(1, len(everything) + 1))
    for job, sent in by_job(batches).items():
        stored = per_job[job]
        assert len(stored) == len(sent) == versions[job]
        assert [ev.version for ev in stored] == list(range(1, len(sent) + 1))
        assert all(a.seq < b.seq for a, b in zip(stored, stored[1:]))
        assert [ev for ev in everything if ev.job_id == job] == stored
        for original, ev in zip(sent, stored):
            assert ev.job_id == job
            assert (ev.ts, ev.level, ev.type, ev.step) == (
                original.ts,
                original.level,
                original.type,
                original.step,
            )
            assert ev.data_json == original.data_json()
            assert ev.typed() == original.data
            assert type(ev.typed()) is type(original.data)
        assert_chain(stored)
        assert stored[0].prev_hash == "0" * 64


@settings(max_examples=40, deadline=None)
@given(job_batches(), st.data())
def test_read_job_bounds_select_exactly_the_versions_between(batches, data):
    with fresh_store() as store:
        append_batches(store, batches)
        job = batches[0].job_id
        n = store.job_version(job)
        after = data.draw(st.integers(0, n), label="after_version")
        until = data.draw(st.integers(after, n + 2), label="until_version")
        part = list(store.read_job(job, after_version=after, until_version=until))
        whole = list(store.read_job(job))
        tail = list(store.read_all(after_seq=whole[after - 1].seq if after else 0))
    assert part == whole[after:until]
    assert [ev for ev in tail if ev.job_id == job] == whole[after:]


def test_reads_page_through_long_logs(store, monkeypatch):
    """Keyset pagination: read in pages of 3, every event comes back once and in order."""
    monkeypatch.setattr(steplog.eventstore.sqlite, "READ_BATCH", 3)
    for job in ("j1", "j2"):
        store.append(job, [created()], expected_version=0)
    for i in range(10):
        store.append("j1" if i % 3 else "j2", [started(attempt=i + 1), started(attempt=i + 1)])
    everything = list(store.read_all())
    assert [ev.seq for ev in everything] == list(range(1, 23))
    for job in ("j1", "j2"):
        mine = [ev for ev in everything if ev.job_id == job]
        assert list(store.read_job(job)) == mine
        assert list(store.read_job(job, after_version=2, until_version=7)) == mine[2:7]
    assert list(store.read_all(after_seq=4, until_seq=17)) == everything[4:17]


def test_the_chain_check_detects_an_edit(db_path, store):
    """assert_chain is a real check: edit one row (triggers dropped by hand) and it fails."""
    store.append("j", [created(), started(), started(attempt=2)], expected_version=0)
    plain = sqlite3.connect(db_path)
    with plain:
        plain.execute("DROP TRIGGER events_append_only_update")
        plain.execute(
            "UPDATE events SET data = ? WHERE seq = 2", ('{"attempt":9,"fingerprint":"f"}',)
        )
    plain.close()
    with pytest.raises(AssertionError, match="event 2: hash"):
        assert_chain(list(store.read_job("j")))


# -- 10. blobs ----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=6),
    st.lists(st.binary(max_size=300), max_size=6),
)
def test_blobs_are_content_addressed_stored_once_and_returned_byte_identical(first, second):
    with fresh_store() as store:
        store.append("j", [created()], expected_version=0, blobs=first + first)
        store.append("j", [started()], expected_version=1, blobs=second + first)
        distinct = {sha(b): b for b in first + second}
        assert count(store, "blobs") == len(distinct)
        for key, content in distinct.items():
            got = store.get_blob(key)
            assert type(got) is bytes and got == content
        assert store.get_blobs([*distinct, *distinct]) == distinct
        sizes = dict(store.conn.execute("SELECT sha256, size FROM blobs").fetchall())
        assert sizes == {key: len(content) for key, content in distinct.items()}
        for content in distinct.values():
            assert store.put_blob(content) == sha(content)
        assert count(store, "blobs") == len(distinct)


def test_a_missing_blob_is_a_store_error(store):
    with pytest.raises(StoreError, match="missing"):
        store.get_blob(sha(b"never stored"))
    with pytest.raises(StoreError, match="missing"):
        store.get_blobs([store.put_blob(b"here"), sha(b"not here")])


# -- 5. append-only -----------------------------------------------------------------------------

REFUSED = [
    "UPDATE events SET data = '{}'",
    "UPDATE events SET hash = 'x' WHERE seq = 1",
    "UPDATE events SET job_id = 'other' WHERE seq = 2",
    "DELETE FROM events",
    "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)",
]


@pytest.fixture
def logged(store):
    store.append("j", [created(), started()], expected_version=0, blobs=[b"content"])
    store.append("k", [created()], expected_version=0)
    return store


@pytest.mark.parametrize("statement", REFUSED)
def test_events_refuse_update_and_delete_on_the_store_connection(logged, statement):
    before = dump(logged.conn)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        logged.conn.execute(statement)
    assert not logged.conn.in_transaction
    assert dump(logged.conn) == before


@pytest.mark.parametrize("statement", REFUSED)
def test_events_refuse_update_and_delete_from_a_plain_sqlite3_connection(
    db_path, logged, statement
):
    before = dump(logged.conn)
    plain = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            with plain:  # commits on success, rolls back on error
                plain.execute(statement)
    finally:
        plain.close()
    assert dump(logged.conn) == before


@pytest.mark.slow
@pytest.mark.parametrize("statement", REFUSED)
def test_events_refuse_update_and_delete_from_the_sqlite3_shell(db_path, logged, statement):
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command-line shell is not installed")
    before = dump(logged.conn)
    shell = subprocess.run(
        ["sqlite3", str(db_path), statement], capture_output=True, text=True, timeout=30
    )
    assert shell.returncode != 0
    assert "append-only" in shell.stderr
    assert dump(logged.conn) == before


def test_blobs_refuse_update(db_path, logged):
    before = dump(logged.conn)
    plain = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            with plain:
                plain.execute("UPDATE blobs SET content = x'00'")
    finally:
        plain.close()
    assert dump(logged.conn) == before


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT OR REPLACE INTO events SELECT seq, job_id, version, ts, level, type, step,"
        " '{\"forged\":true}', prev_hash, hash FROM events WHERE seq = 1",
        "REPLACE INTO blobs (sha256, size, content) SELECT sha256, 6, x'666f72676564' FROM blobs",
    ],
)
def test_insert_or_replace_cannot_rewrite_events_or_blobs(db_path, logged, statement):
    before = dump(logged.conn)
    plain = sqlite3.connect(db_path)
    try:
        with contextlib.suppress(sqlite3.DatabaseError), plain:
            plain.execute(statement)
    finally:
        plain.close()
    assert dump(logged.conn) == before


# -- 6. optimistic concurrency ------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(job_batches(), st.integers(-3, 60), st.lists(st.binary(max_size=20), max_size=3))
def test_a_stale_expected_version_conflicts_and_writes_nothing(batches, expected, blobs):
    with fresh_store() as store:
        append_batches(store, batches)
        job = batches[0].job_id
        version = store.job_version(job)
        assume(expected != version)
        before = dump(store.conn)
        with pytest.raises(VersionConflict, match=f"version {version}"):
            store.append(
                job, [started(), started()], expected_version=expected, blobs=[b"new", *blobs]
            )
        assert not store.conn.in_transaction
        assert store.job_version(job) == version
        assert dump(store.conn) == before  # no event, no blob, no projection row
        # and the current version still appends
        store.append(job, [started()], expected_version=version)
        assert store.job_version(job) == version + 1
        assert_chain(list(store.read_job(job)))


def test_expected_version_zero_means_the_job_must_not_exist(store):
    store.append("j", [created()], expected_version=0)
    before = dump(store.conn)
    with pytest.raises(VersionConflict):
        store.append("j", [created()], expected_version=0)
    assert dump(store.conn) == before
    store.append("k", [created()], expected_version=0)  # another job id is fine
    assert (store.job_version("j"), store.job_version("k")) == (1, 1)


def test_two_store_objects_on_one_file_only_one_wins(db_path):
    first, second = open_store(db_path), open_store(db_path)
    try:
        first.append("j", [created()], expected_version=0)
        first.append("j", [started()], expected_version=1)
        with pytest.raises(VersionConflict):
            second.append("j", [started(attempt=2)], expected_version=1)
        with pytest.raises(VersionConflict):
            second.append("j", [created()], expected_version=0)
        assert [ev.version for ev in second.read_job("j")] == [1, 2]
    finally:
        first.close()
        second.close()


def test_two_stores_racing_with_the_same_expected_version_exactly_one_wins(db_path):
    """Both threads pass the barrier and append at once; BEGIN IMMEDIATE serialises them."""
    stores = [open_store(db_path), open_store(db_path)]
    try:
        stores[0].append("j", [created()], expected_version=0)
        for round_ in range(15):
            version = stores[0].job_version("j")
            barrier = threading.Barrier(2)

            def attempt(i: int, version=version, barrier=barrier, round_=round_) -> str:
                barrier.wait(timeout=10)
                try:
                    stores[i].append(
                        "j",
                        [started(attempt=round_ + 1)],
                        expected_version=version,
                        blobs=[f"{round_}/{i}".encode()],
                    )
                except VersionConflict:
                    return "lost"
                return "won"

            with ThreadPoolExecutor(2) as pool:
                outcome = [f.result(timeout=30) for f in [pool.submit(attempt, i) for i in (0, 1)]]
            assert sorted(outcome) == ["lost", "won"]
            assert stores[1].job_version("j") == version + 1
            winner = outcome.index("won")
            stored = {r[0] for r in stores[0].conn.execute("SELECT sha256 FROM blobs")}
            assert sha(f"{round_}/{winner}".encode()) in stored
            assert sha(f"{round_}/{1 - winner}".encode()) not in stored
        assert_chain(list(stores[1].read_job("j")))
    finally:
        for s in stores:
            s.close()


# -- 7. atomic batches --------------------------------------------------------------------------


def test_a_batch_whose_last_event_does_not_parse_writes_nothing(logged):
    before = dump(logged.conn)

    def build_batch() -> list[NewEvent]:
        return [
            started(),
            NewEvent.parse("step.started", {"attempt": 2, "fingerprint": "f"}, step="a"),
            NewEvent.parse("step.started", {"attempt": 0, "fingerprint": "f"}, step="a"),
        ]

    with pytest.raises(InvalidEvent, match=r"step.started: data.attempt"):
        logged.append("j", build_batch(), expected_version=2, blobs=[b"orphan"])
    for kind, data in [
        ("step.exploded", {}),
        ("step.started", {"attempt": 1}),  # a required field missing
        ("step.started", {"attempt": 1, "fingerprint": "f", "typo": 1}),  # an unknown field
        ("llm.response", {"provider": "p"}),
    ]:
        with pytest.raises(InvalidEvent):
            logged.append("j", [started(), NewEvent.parse(kind, data, step="a")])
    assert dump(logged.conn) == before


def test_an_event_whose_type_does_not_match_its_data_is_refused(logged):
    before = dump(logged.conn)
    with pytest.raises(InvalidEvent, match="does not match"):
        logged.append(
            "j",
            [started(), NewEvent(type="step.failed", data=StepStarted(attempt=1, fingerprint="f"))],
        )
    with pytest.raises(InvalidEvent, match="level"):
        NewEvent(
            type="step.started",
            data=StepStarted(attempt=1, fingerprint="f"),
            level="TRACE",  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidEvent, match="ISO 8601"):
        NewEvent(type="step.started", data=StepStarted(attempt=1, fingerprint="f"), ts="now")
    with pytest.raises(InvalidEvent, match="non-empty"):
        NewEvent.of(StepStarted(attempt=1, fingerprint="f"), step="")
    assert dump(logged.conn) == before


def forged(event: NewEvent) -> NewEvent:
    """An event that got past the Python checks but that the database refuses (CHECK on level),
    to fail a batch *inside* the append transaction."""
    object.__setattr__(event, "level", "TRACE")
    return event


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_a_batch_failing_inside_the_transaction_writes_nothing_and_stores_no_blob(data):
    pool = data.draw(pools, label="pool")
    history = data.draw(job_batches(pool=pool, job_id="j"), label="history")
    more = data.draw(job_events(pool), label="more")[1:]  # a plausible continuation
    new_blobs = data.draw(st.lists(st.binary(min_size=1, max_size=40), max_size=3))
    with fresh_store() as store:
        append_batches(store, history)
        version = store.job_version("j")
        assume(b"\x00orphan" not in pool.blobs)
        before = dump(store.conn)
        batch = [*more, forged(started())]
        with pytest.raises(StoreError, match="refused by the database"):
            store.append("j", batch, expected_version=version, blobs=[*new_blobs, b"\x00orphan"])
        assert not store.conn.in_transaction
        assert dump(store.conn) == before
        assert store.job_version("j") == version
        with pytest.raises(StoreError, match="missing"):
            store.get_blob(sha(b"\x00orphan"))
        # the store is still usable, and the chain continues from the last committed event
        if more:
            store.append("j", more, expected_version=version)
        assert_chain(list(store.read_job("j")))


def test_a_failing_first_batch_leaves_no_trace_of_the_job(store):
    before = dump(store.conn)
    with pytest.raises(StoreError):
        store.append("new", [created(), forged(started())], expected_version=0, blobs=[b"b"])
    assert dump(store.conn) == before
    assert store.job_version("new") == 0 and "new" not in read_jobs_table(store.conn)
    store.append("new", [created()], expected_version=0)
    assert store.job_version("new") == 1


def test_a_projector_failure_rolls_the_batch_back(store):
    """A second job.created for a job breaks the `jobs` primary key inside the transaction."""
    store.append("j", [created()], expected_version=0)
    before = dump(store.conn)
    with pytest.raises(StoreError):
        store.append("j", [started(), created()], blobs=[b"orphan"])
    assert dump(store.conn) == before


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("make", ["job.succeeded", "step.failed", "llm.response"])
def test_a_non_finite_float_is_refused_or_round_trips(store, value, make):
    data = {
        "job.succeeded": lambda: JobSucceeded(duration_s=value),
        "step.failed": lambda: StepFailed(error="e", error_type="t", attempt=1, duration_s=value),
        "llm.response": lambda: LLMResponded(
            provider="p", model="m", duration_s=value, success=True, attempt=1, cache_key="k"
        ),
    }[make]
    try:
        event = NewEvent.of(data(), step="a")
        store.append("j", [created(), event])
    except (ValidationError, InvalidEvent, StoreError):
        return  # refused before anything was written: fine
    back = list(store.read_job("j"))[1].typed()  # accepted: then it must read back
    assert back.duration_s == value or (math.isnan(value) and math.isnan(back.duration_s))


@pytest.mark.parametrize(
    "ts",
    [
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:61:00Z",
    ],
)
def test_a_timestamp_that_is_no_date_is_refused(ts):
    with pytest.raises(InvalidEvent):
        NewEvent(type="job.started", data=JobStarted(owner=OWNER), ts=ts)


# -- 8. opening files ---------------------------------------------------------------------------


def test_a_fresh_file_gets_the_schema_version_wal_and_the_meta_row(tmp_path):
    path = tmp_path / "sub" / "dir" / "steplog.db"  # missing directories are created
    with open_store(path) as store:
        conn = store.conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT key, value FROM steplog_meta").fetchall() == [
            ("schema_version", str(SCHEMA_VERSION))
        ]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        assert {"events", "blobs", "streams", "jobs", "cache_index", "steplog_meta"} <= tables
        store.append("j", [created()], expected_version=0)
    # a second open applies nothing again and sees the log
    with open_store(path) as again:
        assert again.conn.execute("SELECT count(*) FROM steplog_meta").fetchone()[0] == 1
        assert again.job_version("j") == 1
    # an empty file (e.g. made by `touch`) counts as new
    empty = tmp_path / "empty.db"
    empty.touch()
    with open_store(empty) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_stores_opening_a_new_file_at_the_same_time_all_succeed(tmp_path):
    for round_ in range(40):
        path = tmp_path / f"new-{round_}.db"
        barrier = threading.Barrier(4)

        def open_it(path=path, barrier=barrier) -> None:
            barrier.wait(timeout=10)
            open_store(path).close()

        with ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(open_it) for _ in range(4)]:
                future.result(timeout=60)
        with open_store(path) as store:
            assert store.conn.execute("SELECT count(*) FROM steplog_meta").fetchone()[0] == 1


def _newer(path: Path) -> None:
    open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


def _foreign_tables(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (9.5)")
    conn.close()


def _other_application(path: Path) -> None:
    _foreign_tables(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()


def _not_sqlite(path: Path) -> None:
    path.write_text("name,total\nwidget,9.5\n" * 40)


def _truncated(path: Path) -> None:
    with open_store(path) as store:
        store.append("j", [created()], expected_version=0)
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_newer, rf"newer steplog \(schema {SCHEMA_VERSION + 1}; this steplog knows up to"),
        (_foreign_tables, r"is not a steplog database \(it holds tables invoices\)"),
        (_other_application, r"belongs to another application \(application_id 1234\)"),
        (_not_sqlite, r"is not a SQLite database"),
        (_truncated, r"cannot use database"),
    ],
)
def test_unusable_files_are_refused_with_a_clear_message_and_left_unchanged(db_path, make, message):
    make(db_path)
    before = db_path.read_bytes()
    with pytest.raises(DatabaseUnusable, match=message) as refused:
        open_store(db_path)
    assert str(db_path) in str(refused.value)
    del refused
    assert db_path.read_bytes() == before


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=2000))
def test_any_file_that_is_not_sqlite_is_refused_and_left_unchanged(content):
    assume(not content.startswith(SQLITE_MAGIC))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.db"
        path.write_bytes(content)
        with pytest.raises(DatabaseUnusable, match="not a SQLite database"):
            open_store(path)
        assert path.read_bytes() == content
        assert sorted(p.name for p in path.parent.iterdir()) == ["x.db"]  # no -wal / -shm


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(DatabaseUnusable, match="is a directory"):
        open_store(tmp_path)
