"""The executor's own events take a fast path: NewEvent stamps their ts itself (utc_now) and
skips the checks a given ts needs. These properties hold it to the validated path: an event
built the fast way, parsed back from its parts as `steplog import` parses a file
(NewEvent.parse, every check), gives the same row, so the log, its hash chain and every
projection come out identical."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steplog.eventstore.events import NewEvent, utc_now, utc_text
from steplog.eventstore.record import GENESIS_HASH, StoredEvent, chain_hash, check_chain, link
from tests.strategies import Batch, append_batches, dump, fresh_store, interleaved_batches

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_NS = 253_402_300_800 * 10**9 - 1  # 9999-12-31T23:59:59.999999999Z


def datetime_text(ns: int) -> str:
    """The slow, obvious way: datetime's own ISO text, microseconds, Z."""
    moment = EPOCH + timedelta(microseconds=ns // 1000)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


@given(st.integers(min_value=0, max_value=LAST_NS))
def test_utc_text_is_datetimes_iso_text(ns: int) -> None:
    assert utc_text(ns) == datetime_text(ns)


@given(st.lists(st.integers(min_value=0, max_value=LAST_NS), min_size=2, max_size=20))
def test_utc_text_cache_never_serves_another_second(many: list[int]) -> None:
    # the one-second cache, visited out of order and back again
    for ns in [*many, *reversed(many)]:
        assert utc_text(ns) == datetime_text(ns)


def fast(ev: NewEvent) -> NewEvent:
    """The executor's way: typed data, no ts given (stamped now)."""
    return NewEvent.of(ev.data, ev.step, ev.level)  # type: ignore[arg-type]


def validated(ev: NewEvent) -> NewEvent:
    """The way an untyped event from a file is taken in: every field checked."""
    return NewEvent.parse(ev.type, json.loads(ev.data_json()), ev.step, ev.level, ev.ts)


def row(ev: NewEvent) -> tuple:
    return (ev.ts, ev.level, ev.type, ev.step, ev.data_json())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # a store per example
@given(interleaved_batches())
def test_fast_path_rows_equal_validated_rows(batches: list[Batch]) -> None:
    fast_batches = [Batch(b.job_id, [fast(ev) for ev in b.events], b.blobs) for b in batches]
    checked = [Batch(b.job_id, [validated(ev) for ev in b.events], b.blobs) for b in fast_batches]
    for ours, theirs in zip(fast_batches, checked):
        assert [row(ev) for ev in ours.events] == [row(ev) for ev in theirs.events]
    with fresh_store() as a, fresh_store() as b:
        stored_a = append_batches(a, fast_batches)
        stored_b = append_batches(b, checked)
        assert stored_a == stored_b
        tables_a, tables_b = dump(a.conn), dump(b.conn)
        for when_made in (tables_a, tables_b):  # the file's creation time, not the log's
            when_made.pop("schema_migrations")
        assert tables_a == tables_b  # events, chain, blobs and every projection


def test_stamped_ts_is_now() -> None:
    from steplog.eventstore.events import StepStarted

    before = utc_now()
    ev = NewEvent.of(StepStarted(attempt=1, fingerprint="f"), "s")
    assert before <= ev.ts <= utc_now()
    assert NewEvent.parse(ev.type, ev.data.model_dump(), ev.step, ev.level, ev.ts).ts == ev.ts


# -- the append's own fast paths: data_json without model_dump_json's wrapper, and link() --------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interleaved_batches())
def test_data_json_is_model_dump_json(batches: list[Batch]) -> None:
    for batch in batches:
        for ev in batch.events:
            assert ev.data_json() == ev.data.model_dump_json()


def linked_slowly(
    job_id: str, seq: int, version: int, prev_hash: str, prepared: list[tuple]
) -> list[StoredEvent]:
    """What append did before link(): chain_hash per event, StoredEvent._make per row."""
    rows = []
    for offset, (ts, level, type_, step, data_json) in enumerate(prepared, start=1):
        v = version + offset
        h = chain_hash(prev_hash, job_id, v, ts, level, type_, step, data_json)
        rows.append(
            StoredEvent._make(
                (seq + offset, job_id, v, ts, level, type_, step, data_json, prev_hash, h)
            )
        )
        prev_hash = h
    return rows


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_rows = st.lists(st.tuples(_text, _text, _text, st.none() | _text, _text), min_size=1, max_size=8)


@given(
    _text,
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
    st.sampled_from([GENESIS_HASH, "f" * 64]) | _text,
    _rows,
)
def test_link_is_chain_hash_row_by_row(
    job_id: str, seq: int, version: int, prev_hash: str, prepared: list[tuple]
) -> None:
    ours = link(job_id, seq, version, prev_hash, prepared)
    theirs = linked_slowly(job_id, seq, version, prev_hash, prepared)
    assert ours == theirs
    assert all(type(ev) is StoredEvent for ev in ours)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interleaved_batches())
def test_appended_rows_are_the_slow_paths_rows(batches: list[Batch]) -> None:
    """Every row the store wrote (seq, version, prev_hash, hash) is what chain_hash and the
    model's own model_dump_json give, and the chain reads back whole."""
    with fresh_store() as store:
        stored = append_batches(store, batches)
        heads: dict[str, tuple[int, str]] = {}
        for ev in stored:
            version, prev = heads.get(ev.job_id, (0, GENESIS_HASH))
            row = (ev.ts, ev.level, ev.type, ev.step, ev.data_json)
            assert [ev] == linked_slowly(ev.job_id, ev.seq - 1, version, prev, [row])
            heads[ev.job_id] = (ev.version, ev.hash)
        assert list(store.read_all()) == stored
        assert check_chain(store.read_all()) == []


# -- step.skipped rows built without a model per event (a resume's batch) ------------------------

# lone surrogates and empty names too: both ways must refuse them alike
_any_text = st.text(st.characters(blacklist_categories=()), max_size=20) | st.sampled_from(
    ["", "\ud800", "a\udfffb", "\ufffd", "\x00\x1f\x7f\u2028", '"\\']
)
# and values that are not text at all (the model refuses them, or takes a str subclass)
_any_value = _any_text | st.none() | st.integers() | st.builds(type("Name", (str,), {}), _any_text)
_skips = st.lists(st.tuples(_any_value, _any_value, _any_value, _any_value), max_size=6)


def skipped_the_validated_way(skips: list[tuple[str, str, str, str]]) -> list[tuple]:
    from steplog.eventstore.events import StepSkipped

    rows = []
    for step, reason, fingerprint, sha in skips:
        data = StepSkipped(reason=reason, fingerprint=fingerprint, output_sha256=sha)
        ev = NewEvent.of(data, step)
        rows.append((ev.ts, ev.level, ev.type, ev.step, ev.data_json()))
    return rows


def outcome(build, skips):  # type: ignore[no-untyped-def]
    """The rows without their ts (stamped now), or the error the build raised."""
    try:
        return [row[1:] for row in build(skips)]
    except Exception as exc:  # InvalidEvent, a model's ValidationError, a step that is no text
        return ("refused", type(exc).__name__, str(exc))


@given(_skips)
def test_step_skipped_rows_are_the_validated_paths_rows(skips) -> None:  # type: ignore[no-untyped-def]
    from steplog.eventstore.events import step_skipped_rows

    before = utc_now()
    assert outcome(step_skipped_rows, skips) == outcome(skipped_the_validated_way, skips)
    try:
        rows = step_skipped_rows(skips)
    except Exception:
        return
    for ts, level, type_, step, data_json in rows:
        assert before <= ts <= utc_now()
        again = NewEvent.parse(type_, json.loads(data_json), step, level, ts)  # every check
        assert (again.ts, again.level, again.type, again.step, again.data_json()) == (
            ts, level, type_, step, data_json
        )  # fmt: skip
