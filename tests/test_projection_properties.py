"""Projections are folds: prefix + rest == whole, replay == fold of a prefix, table == fold.

Every example runs on its own new SQLite file (tests.strategies.fresh_store), with events from
tests.strategies (job.created first, then plausible step / llm / cache / file events, several
jobs interleaved and sharing cache keys and blobs).
"""

from __future__ import annotations

import fnmatch
import json
import sqlite3
from datetime import datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from steplog.commands.replay import BadPoint, replay
from steplog.eventstore.events import (
    JobCancelled,
    JobCreated,
    JobStarted,
    JobSucceeded,
    NewEvent,
    Owner,
    StepStarted,
)
from steplog.eventstore.record import StoredEvent
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections import cache, flights, manifest, tables
from steplog.projections.cache import CACHE_EVENT_TYPES
from steplog.projections.sql_tables import BREAKER_COLUMNS
from steplog.projections.tables import (
    PROJECTORS,
    SQLITE,
    apply_job_row,
    read_cache_table,
    read_jobs_table,
    rebuild,
)
from tests.strategies import (
    append_batches,
    by_job,
    fresh_store,
    interleaved_batches,
    job_batches,
)

OWNER = Owner(pid=1, host="h", started="1")


def _created() -> NewEvent:
    return NewEvent.of(
        JobCreated(
            pipeline="p",
            pipeline_fingerprint="f",
            pipeline_sha256="0" * 64,
            steps={"a": []},
            workspace="/ws",
        )
    )


def fold_manifest(job: str, events) -> dict:
    return manifest.project(job, events).to_manifest()


def ts(ev: StoredEvent) -> datetime:
    return datetime.fromisoformat(ev.ts.replace("Z", "+00:00"))


# -- 2. fold(whole) == fold(prefix) continued with the rest -------------------------------------


@settings(max_examples=50, deadline=None)
@given(interleaved_batches())
def test_a_fold_continued_from_any_prefix_equals_the_whole_fold(batches):
    with fresh_store() as store:
        append_batches(store, batches)
        everything = list(store.read_all())
        slim = list(store.read_all(data_for=CACHE_EVENT_TYPES))
        jobs = {job: list(store.read_job(job)) for job in by_job(batches)}

    for job, events in jobs.items():
        whole = fold_manifest(job, events)
        whole_cache = cache.project(events)
        for cut in range(len(events) + 1):
            prefix = manifest.project(job, events[:cut])
            assert manifest.project(job, events[cut:], prefix).to_manifest() == whole, cut
            assert cache.project(events[cut:], cache.project(events[:cut])) == whole_cache, cut
        # folding the job's slice of the global log is the same as folding read_job
        assert fold_manifest(job, [ev for ev in everything if ev.job_id == job]) == whole
        # project's one loop is apply, event after event
        one_by_one = manifest.JobState(job_id=job)
        for ev in events:
            manifest.apply(one_by_one, ev)
        assert one_by_one == manifest.project(job, events)

    whole_cache = cache.project(everything)
    for cut in range(len(everything) + 1):
        assert cache.project(everything[cut:], cache.project(everything[:cut])) == whole_cache
    # the cache fold needs only its own event types' data (what rebuild reads)
    assert cache.project(slim) == whole_cache


def test_a_fold_refuses_another_jobs_event():
    ev = StoredEvent(
        1, "other", 1, "2024-01-01T00:00:00Z", "INFO", "job.started", None, "{}", "", ""
    )
    with pytest.raises(ValueError, match="other"):
        manifest.apply(manifest.JobState(job_id="mine"), ev)
    mine = ev._replace(job_id="mine", data_json='{"owner": null}')
    state = manifest.JobState(job_id="mine")
    with pytest.raises(ValueError, match="other"):
        manifest.project("mine", [mine, ev._replace(version=2, seq=2)], state)
    assert (state.version, state.last_seq, state.status) == (1, 1, "running")  # as apply leaves it


# -- 3. replay ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(job_batches())
def test_replay_until_n_is_the_fold_of_the_first_n_events_for_every_n(batches):
    job = batches[0].job_id
    with fresh_store() as store:
        append_batches(store, batches)
        events = list(store.read_job(job))
        n = len(events)
        for cut in range(1, n + 1):
            view = replay(store, job, str(cut))
            assert view.state.to_manifest() == fold_manifest(job, events[:cut])
            assert view.cache == cache.project(events[:cut])
            assert view.events == events[:cut]
            assert view.version == view.state.version == cut
        for past in (n + 1, n + 1000):
            with pytest.raises(BadPoint, match="past the end"):
                replay(store, job, str(past))
        with pytest.raises(BadPoint, match="numbered from 1"):
            replay(store, job, "0")
        with pytest.raises(BadPoint, match="unknown job"):
            replay(store, job + "-missing", "1")


def first_index(events: list[StoredEvent], type_: str, step: str | None) -> int:
    return next(
        i
        for i, ev in enumerate(events)
        if fnmatch.fnmatchcase(ev.type, type_) and (step is None or ev.step == step)
    )


@settings(max_examples=50, deadline=None)
@given(job_batches(), st.data())
def test_replay_by_type_and_step_stops_at_the_first_matching_event(batches, data):
    job = batches[0].job_id
    with fresh_store() as store:
        append_batches(store, batches)
        events = list(store.read_job(job))
        target = data.draw(st.sampled_from(events), label="target")
        family = target.type.split(".")[0]
        candidates = [(target.type, None), (f"{family}.*", None), ("*", None)]
        if target.step:
            candidates += [(target.type, target.step), (f"{family}.*", target.step)]
        type_, step = data.draw(st.sampled_from(candidates), label="point")
        point = f"{type_}:{step}" if step else type_
        view = replay(store, job, point)
        i = first_index(events, type_, step)
        assert i <= events.index(target)
        assert view.events == events[: i + 1]
        assert view.version == i + 1
        assert view.state.to_manifest() == fold_manifest(job, events[: i + 1])
        assert view.cache == cache.project(events[: i + 1])
        with pytest.raises(BadPoint, match="no event"):
            replay(store, job, "job.never_happens")
        with pytest.raises(BadPoint, match="no event"):
            replay(store, job, f"{target.type}:no-such-step")


@settings(max_examples=40, deadline=None)
@given(job_batches(), st.data())
def test_replay_until_a_timestamp_folds_every_event_at_or_before_it(batches, data):
    """Timestamps never go backwards within a job (see tests.strategies.Clock)."""
    job = batches[0].job_id
    with fresh_store() as store:
        append_batches(store, batches)
        events = list(store.read_job(job))
        inside = [ev for ev in events if ts(ev) < ts(events[-1])]
        if inside:
            at = data.draw(st.sampled_from(inside), label="at")
            upto = [ev for ev in events if ts(ev) <= ts(at)]
            assert upto == events[: len(upto)]  # a prefix: the clock never goes back
            view = replay(store, job, at.ts)
            assert view.events == upto
            assert view.state.to_manifest() == fold_manifest(job, upto)
            assert view.cache == cache.project(upto)
        with pytest.raises(BadPoint, match="before the job's first event"):
            replay(store, job, "1999-12-31T23:59:59Z")


def test_replay_until_the_last_events_timestamp_is_the_whole_job(store):
    """README: POINT as a timestamp is 'the last event at or before it' (also after the end)."""
    events = [
        NewEvent.of(JobStarted(owner=OWNER)),
        NewEvent.of(StepStarted(attempt=1, fingerprint="f"), step="a"),
        NewEvent.of(JobSucceeded(duration_s=1.0)),
    ]
    store.append("j", events, expected_version=0)
    view = replay(store, "j", events[-1].ts)
    assert view.version == 3
    assert replay(store, "j", "2999-01-01T00:00:00Z").version == 3


# -- 4. tables == folds -------------------------------------------------------------------------


def expected_jobs_table(everything: list[StoredEvent]) -> dict[str, tuple]:
    """The `jobs` rows from the manifest fold of each job (jobs with a job.created)."""
    out = {}
    for job in dict.fromkeys(ev.job_id for ev in everything):
        state = manifest.project(job, (ev for ev in everything if ev.job_id == job))
        if state.created_ts is not None:
            out[job] = (state.pipeline, state.status, state.created_ts, state.batch)
    return out


def job_row_fold(events) -> dict[str, tuple]:
    rows: dict = {}
    for ev in events:
        apply_job_row(rows, ev)
    return {job: tuple(row) for job, row in rows.items()}


@settings(max_examples=50, deadline=None)
@given(interleaved_batches(), st.data())
def test_projection_tables_equal_the_folds_after_every_append_and_a_rebuild(batches, data):
    with fresh_store() as store:
        seen: list[StoredEvent] = []
        versions: dict[str, int] = {}
        for batch in batches:
            stored = store.append(
                batch.job_id,
                batch.events,
                expected_version=versions.get(batch.job_id, 0),
                blobs=batch.blobs,
            )
            versions[batch.job_id] = stored[-1].version
            seen += stored
            assert read_jobs_table(store.conn) == job_row_fold(seen)
            assert read_cache_table(store.conn) == cache.project(seen)
            assert SQLITE.read_flights_table(store.conn) == flights.project(seen)

        everything = list(store.read_all())
        jobs_table, cache_table = read_jobs_table(store.conn), read_cache_table(store.conn)
        assert jobs_table == expected_jobs_table(everything) == job_row_fold(everything)
        assert cache_table == cache.project(everything)

        flights_table = SQLITE.read_flights_table(store.conn)
        assert flights_table == flights.project(everything)

        breakers_table = SQLITE.read_breakers_table(store.conn)
        assert rebuild(store) == len(everything)
        assert read_jobs_table(store.conn) == jobs_table
        assert read_cache_table(store.conn) == cache_table
        assert SQLITE.read_flights_table(store.conn) == flights_table
        assert SQLITE.read_breakers_table(store.conn) == breakers_table

        # damaged tables: rebuild restores them from the log alone
        with store.write_transaction() as conn:
            if data.draw(st.booleans(), label="drop some jobs rows"):
                conn.execute(
                    "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs ORDER BY job_id"
                    " LIMIT (SELECT count(*) / 2 + 1 FROM jobs))"
                )
            conn.execute("UPDATE jobs SET status = 'bogus', pipeline = NULL")
            conn.execute("DELETE FROM cache_index WHERE seq % 2 = 1")
            conn.execute("UPDATE cache_index SET tokens_in = -1")
            conn.execute("DELETE FROM calls_in_flight WHERE seq % 2 = 0")
            conn.execute("UPDATE calls_in_flight SET owner = 'stale'")
            conn.execute(
                "INSERT OR IGNORE INTO cache_index (cache_key, response_sha256, origin_job, seq)"
                " VALUES ('stale-key', 'x', 'nobody', 0)"
            )
            conn.execute(
                "INSERT OR IGNORE INTO jobs (job_id, pipeline, status, created_ts)"
                " VALUES ('ghost-job', 'p', 'running', 'x')"
            )
            conn.execute("UPDATE cache_refused SET seq = seq + 1")
            conn.execute(
                "INSERT OR IGNORE INTO cache_refused (cache_key, response_sha256, seq)"
                " VALUES ('stale-key', 'x', 0)"
            )
            conn.execute("UPDATE breakers SET failures = failures + 1")
            conn.execute(
                f"INSERT OR IGNORE INTO breakers ({BREAKER_COLUMNS})"
                " VALUES ('ghost-endpoint', 'open', 3, 0.0, 'p', 0)"
            )
        assert rebuild(store) == len(everything)
        assert read_jobs_table(store.conn) == jobs_table
        assert read_cache_table(store.conn) == cache_table
        assert SQLITE.read_flights_table(store.conn) == flights_table
        assert SQLITE.read_breakers_table(store.conn) == breakers_table


class _AppendsRightAfterItsRead:
    """Another writer that appends once, the moment `rebuild` has finished reading the log."""

    def __init__(self, db_path) -> None:
        # a short busy timeout: if rebuild holds the write lock while it reads, the race is gone
        self.writer = SQLiteEventStore(db_path, projectors=PROJECTORS, busy_timeout_ms=200)
        self.appended = self.tried = False

    def __call__(self) -> None:
        if self.tried:
            return
        self.tried = True
        try:
            self.writer.append("j", [NewEvent.of(JobCancelled(reason="by another process"))])
            self.appended = True
        except sqlite3.OperationalError:
            pass  # locked out: rebuild read and rewrote under one lock


def test_rebuild_loses_no_append_made_while_it_reads(db_path, monkeypatch):
    other = _AppendsRightAfterItsRead(db_path)
    fold = tables.fold_tables

    def fold_then_append(events, **kwargs):
        folded = fold(events, **kwargs)  # the log has been read
        other()
        return folded

    monkeypatch.setattr(tables, "fold_tables", fold_then_append)
    store = SQLiteEventStore(db_path, projectors=PROJECTORS)
    try:
        store.append("j", [_created(), NewEvent.of(JobStarted(owner=OWNER))], expected_version=0)
        rebuild(store)
        assert other.tried and not other.appended  # rebuild read and rewrote under one lock
        everything = list(store.read_all())
        assert read_jobs_table(store.conn) == job_row_fold(everything)
        assert read_cache_table(store.conn) == cache.project(everything)
    finally:
        store.close()
        other.writer.close()


_json_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ['"', "\\", "cache_key", '"cache_key"', '","cache_key":"x', "\x00", "é"]
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_json_text, inner, max_size=3),
    max_leaves=6,
)


# How the JSON text is spelled: orjson's (steplog's own), or json.dumps with escapes for every
# non-ASCII character, or with spaces and new lines; a duplicate key may be spelled with escapes.
_SPELLINGS = {
    "orjson": lambda obj: orjson_text(obj),
    "ascii": lambda obj: json.dumps(obj, ensure_ascii=True, separators=(",", ":")),
    "spaced": lambda obj: json.dumps(obj, ensure_ascii=False, indent=1),
}
_DUPLICATE_KEYS = ['"cache_key"', '"cache\\u005fkey"', '"\\u0063ache_key"']


def orjson_text(obj: object) -> str:
    import orjson

    return orjson.dumps(obj).decode()


@given(
    key=_json_text,
    rest=st.dictionaries(_json_text, _json_values, max_size=4),
    first=st.booleans(),
    spelling=st.sampled_from(sorted(_SPELLINGS)),
    again=st.none() | st.tuples(st.sampled_from(_DUPLICATE_KEYS), _json_text),
)
@example(key="a", rest={"x": 1}, first=True, spelling="orjson", again=('"cache_key"', "b"))
@example(key="a", rest={}, first=True, spelling="orjson", again=('"cache_key"', "a"))
@example(key="a", rest={"d": {"cache_key": "n"}}, first=True, spelling="orjson", again=None)
def test_the_folds_cache_key_shortcut_reads_what_the_parser_reads(
    key, rest, first, spelling, again
):
    """leading_cache_key, on any JSON object however spelled: either None (the fold parses the
    text) or what orjson reads as its cache_key, also with the key not first, nested, or given
    twice (the second time maybe spelled with escapes: the parser keeps the last)."""
    import orjson

    rest = {k: v for k, v in rest.items() if k != "cache_key"}
    ordered = {"cache_key": key, **rest} if first else {**rest, "cache_key": key}
    text = _SPELLINGS[spelling](ordered)
    if again is not None:
        name, value = again
        text = text.rstrip()[:-1] + f",{name}:{orjson_text(value)}}}"
    found = manifest.leading_cache_key(text)
    if found is not None:
        assert found == {"cache_key": orjson.loads(text)["cache_key"]}
    if spelling == "orjson" and first and again is None and "\\" not in text:
        if '"cache_key"' not in text[14 + len(key) :]:
            assert found == {"cache_key": key}  # steplog's own rows do take the shortcut
