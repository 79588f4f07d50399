"""Properties of the log and its folds, on real SQLite files (a fresh one per example)."""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commands.replay import BadPoint, replay
from eventstore.events import InvalidEvent, NewEvent, StepStarted
from eventstore.record import GENESIS_HASH, VersionConflict, chain_hash
from eventstore.sqlite import SQLiteEventStore
from projections import cache, manifest
from projections.store import open_store
from projections.tables import apply_job_row, read_cache_table, read_jobs_table, rebuild
from tests.event_strategies import interleaved_jobs, job_created, job_history

SETTINGS = settings(max_examples=60, deadline=None)


@contextmanager
def fresh_store() -> Iterator[SQLiteEventStore]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "s.db")
        try:
            yield store
        finally:
            store.close()


def append_all(store: SQLiteEventStore, job: str, batches: list[list[NewEvent]]) -> None:
    version = 0
    for batch in batches:
        version = store.append(job, batch, expected_version=version)[-1].version


@SETTINGS
@given(job_history())
def test_events_round_trip_unchanged_with_a_valid_hash_chain(batches):
    sent = [ev for batch in batches for ev in batch]
    with fresh_store() as store:
        append_all(store, "j", batches)
        stored = list(store.read_job("j"))
    assert [ev.version for ev in stored] == list(range(1, len(sent) + 1))
    assert all(a.seq < b.seq for a, b in zip(stored, stored[1:]))
    prev = GENESIS_HASH
    for original, ev in zip(sent, stored):
        assert (ev.ts, ev.level, ev.type, ev.step) == (
            original.ts,
            original.level,
            original.type,
            original.step,
        )
        assert ev.typed() == original.data
        assert ev.prev_hash == prev
        assert ev.hash == chain_hash(
            prev, ev.job_id, ev.version, ev.ts, ev.level, ev.type, ev.step, ev.data_json
        )
        prev = ev.hash


@SETTINGS
@given(job_history(), st.data())
def test_fold_of_a_prefix_continued_with_the_rest_equals_the_whole_fold(batches, data):
    with fresh_store() as store:
        append_all(store, "j", batches)
        events = list(store.read_job("j"))
    cut = data.draw(st.integers(min_value=0, max_value=len(events)))
    whole = manifest.project("j", events)
    continued = manifest.project("j", events[cut:], manifest.project("j", events[:cut]))
    assert continued.to_manifest() == whole.to_manifest()
    assert cache.project(events[cut:], cache.project(events[:cut])) == cache.project(events)


@SETTINGS
@given(job_history(), st.data())
def test_replay_until_n_is_the_fold_of_the_first_n_events(batches, data):
    with fresh_store() as store:
        append_all(store, "j", batches)
        events = list(store.read_job("j"))
        n = data.draw(st.integers(min_value=1, max_value=len(events)))
        view = replay(store, "j", str(n))
        assert view.state.to_manifest() == manifest.project("j", events[:n]).to_manifest()
        assert view.cache == cache.project(events[:n])
        assert [ev.version for ev in view.events] == list(range(1, n + 1))
        with pytest.raises(BadPoint, match="past the end"):
            replay(store, "j", str(len(events) + 1))
        target = data.draw(st.sampled_from(events))
        point = f"{target.type}:{target.step}" if target.step else target.type
        first = next(
            ev
            for ev in events
            if ev.type == target.type and (not target.step or ev.step == target.step)
        )
        assert replay(store, "j", point).version == first.version


@settings(max_examples=40, deadline=None)
@given(interleaved_jobs())
def test_projection_tables_equal_the_folds_and_survive_a_rebuild(order):
    with fresh_store() as store:
        versions: dict[str, int] = {}
        for job, batch in order:
            versions[job] = store.append(job, batch, expected_version=versions.get(job, 0))[
                -1
            ].version
        events = list(store.read_all())
        rows: dict = {}
        for ev in events:
            apply_job_row(rows, ev)
        expected_jobs = {job: tuple(row) for job, row in rows.items()}
        expected_cache = cache.project(events)
        assert read_jobs_table(store.conn) == expected_jobs
        assert read_cache_table(store.conn) == expected_cache
        # the jobs table agrees with the full manifest fold too
        for job in versions:
            state = manifest.project(job, store.read_job(job))
            assert expected_jobs[job][:2] == (state.pipeline, state.status)
        assert rebuild(store) == len(events)
        assert read_jobs_table(store.conn) == expected_jobs
        assert read_cache_table(store.conn) == expected_cache


def started() -> NewEvent:
    return NewEvent.of(StepStarted(attempt=1, fingerprint="f"), step="a")


@SETTINGS
@given(st.integers(min_value=0, max_value=5), st.integers(min_value=-2, max_value=8))
def test_a_stale_expected_version_conflicts_and_writes_nothing(extra, expected):
    with fresh_store() as store:
        store.append("j", [job_created(["a"])], expected_version=0)
        for _ in range(extra):
            store.append("j", [started()])
        version = 1 + extra
        before = store.last_seq()
        if expected == version:
            store.append("j", [started()], expected_version=expected)
            assert store.job_version("j") == version + 1
        else:
            with pytest.raises(VersionConflict):
                store.append("j", [started()], expected_version=expected, blobs=[b"orphan"])
            assert store.last_seq() == before and store.job_version("j") == version
            assert store.conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0


def test_two_writers_with_the_same_expected_version_only_one_wins(tmp_path):
    first, second = open_store(tmp_path / "s.db"), open_store(tmp_path / "s.db")
    first.append("j", [job_created(["a"])], expected_version=0)
    first.append("j", [started()], expected_version=1)
    with pytest.raises(VersionConflict):
        second.append("j", [started()], expected_version=1)
    with pytest.raises(VersionConflict):
        second.append("j", [job_created(["a"])], expected_version=0)  # a duplicate job id
    assert [ev.version for ev in second.read_job("j")] == [1, 2]


def test_a_malformed_event_fails_the_whole_batch(tmp_path):
    store = open_store(tmp_path / "s.db")
    store.append("j", [job_created(["a"])], expected_version=0)
    with pytest.raises(InvalidEvent, match="attempt"):
        NewEvent.parse("step.started", {"attempt": 0, "fingerprint": "f"}, step="a")
    with pytest.raises(InvalidEvent, match="unknown event type"):
        NewEvent.parse("step.exploded", {}, step="a")
    with pytest.raises(InvalidEvent, match="does not match"):
        NewEvent(type="step.failed", data=StepStarted(attempt=1, fingerprint="f"), step="a")
    with pytest.raises(InvalidEvent, match="ISO 8601"):
        NewEvent(
            type="step.started",
            data=StepStarted(attempt=1, fingerprint="f"),
            step="a",
            ts="yesterday",
        )
    assert store.job_version("j") == 1


@pytest.mark.parametrize("statement", ["UPDATE events SET type = 'x'", "DELETE FROM events"])
def test_events_are_append_only_for_any_connection(tmp_path, statement):
    store = open_store(tmp_path / "s.db")
    store.append("j", [job_created(["a"]), started()], expected_version=0)
    before = store.conn.execute("SELECT * FROM events").fetchall()
    plain = sqlite3.connect(tmp_path / "s.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        plain.execute(statement)
    plain.close()
    import shutil
    import subprocess

    if shutil.which("sqlite3"):
        shell = subprocess.run(
            ["sqlite3", str(tmp_path / "s.db"), statement],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shell.returncode != 0 and "append-only" in shell.stderr
    assert store.conn.execute("SELECT * FROM events").fetchall() == before


def test_blobs_are_stored_once_by_content(tmp_path):
    store = open_store(tmp_path / "s.db")
    store.append("j", [job_created(["a"])], expected_version=0, blobs=[b"same", b"same"])
    store.append("j", [started()], blobs=[b"same"])
    assert store.conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 1
    import hashlib

    assert store.get_blob(hashlib.sha256(b"same").hexdigest()) == b"same"
