"""Fuzzed event payloads through the store's append API: for every event type, random data
(right types, wrong types, missing and extra fields, huge and non-finite numbers, huge strings,
lone surrogates, NUL), random steps, levels and timestamps. Each event is either refused with
InvalidEvent (or a StoreError) and the database is unchanged, or accepted, and then it reads back
unchanged, the job folds, and `status` shows it.

tests/test_store.py covers plausible histories, forged levels and non-finite floats on three
types; this file covers arbitrary payloads on every type.
"""

from __future__ import annotations

import itertools
import json
import typing
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from steplog.eventstore.events import EVENT_TYPES, InvalidEvent, JobCreated, NewEvent
from steplog.eventstore.record import StoreError
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections import manifest
from steplog.projections.store import open_store
from tests.cli_inprocess import steplog_here
from tests.on_disk import db_dump

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

ODD_TEXT = st.one_of(
    st.text(max_size=10),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
    st.sampled_from(["", "\x00", "a\x00b", "\u2028", "é" * 3]),
    st.builds(lambda: "x" * 300_000),  # (built, so that the strategy's repr stays short)
)
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), ODD_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(ODD_TEXT, inner, max_size=3)
    ),
    max_leaves=6,
)


def _typed(annotation: Any) -> st.SearchStrategy[Any]:
    """A value of the field's own type, with the odd edges (surrogates, huge ints, NaN)."""
    origin = typing.get_origin(annotation)
    if annotation is str:
        return ODD_TEXT
    if annotation is int:
        return st.one_of(st.integers(-5, 100), st.integers(-(2**80), 2**80))
    if annotation is float:
        return st.floats()
    if annotation is bool:
        return st.booleans()
    if annotation is type(None):
        return st.none()
    if annotation is Any:
        return JUNK
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of([_typed(a) for a in typing.get_args(annotation)])
    if origin is list:
        (item,) = typing.get_args(annotation)
        return st.lists(_typed(item), max_size=3)
    if origin is dict:
        key, value = typing.get_args(annotation)
        return st.dictionaries(_typed(key), _typed(value), max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _payload(annotation)
    return JUNK


def _payload(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, info in model.model_fields.items():
            how = draw(st.sampled_from(["typed"] * 14 + ["junk", "omit"]))
            if how == "typed":
                data[name] = draw(_typed(info.annotation))
            elif how == "junk":
                data[name] = draw(JUNK)
        if draw(st.sampled_from([False] * 7 + [True])):
            data[draw(ODD_TEXT)] = draw(JUNK)
        return data

    return build()


@st.composite
def events(draw: st.DrawFn) -> tuple[str, Any, Any, Any, Any]:
    type_ = draw(st.sampled_from(sorted(EVENT_TYPES)))
    data = draw(st.one_of(_payload(EVENT_TYPES[type_]), _payload(EVENT_TYPES[type_]), JUNK))
    step = draw(st.one_of(st.none(), st.just("a"), ODD_TEXT))
    level = draw(st.sampled_from([None] * 4 + ["DEBUG", "INFO", "ERROR", "TRACE", ""]))
    ts = draw(
        st.one_of(
            st.none(),
            st.none(),
            st.sampled_from(
                [
                    "2026-01-02T03:04:05Z",
                    "2026-01-02T03:04:05.123456789Z",
                    "2026-02-30T00:00:00Z",
                    "2026-01-02 03:04:05",
                    "",
                ]
            ),
            ODD_TEXT,
        )
    )
    return type_, data, step, level, ts


def _created() -> NewEvent:
    return NewEvent.of(
        JobCreated(
            pipeline="p",
            pipeline_fingerprint="f",
            pipeline_sha256="0" * 64,
            steps={"a": []},
            workspace="w",
        )
    )


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> Iterator[SQLiteEventStore]:
    """One store for all examples (creating a schema per example would cost most of the time);
    each example appends to a job of its own."""
    store = open_store(tmp_path_factory.mktemp("events") / "e.db")
    yield store
    store.close()


JOB_NUMBERS = itertools.count()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events())
@example(
    (
        "job.created",
        {
            "pipeline": "\ud800",
            "pipeline_fingerprint": "f",
            "pipeline_sha256": "0" * 64,
            "steps": {},
            "workspace": "w",
        },
        None,
        None,
        None,
    )
)
@example(("step.started", {"attempt": 1, "fingerprint": "f"}, "\udc80", None, None))
@example(
    (
        "llm.response",
        {
            "provider": "p",
            "model": "m",
            "duration_s": 1.0,
            "success": True,
            "attempt": 1,
            "cache_key": "k",
            "tokens_in": 2**70,
        },
        "a",
        None,
        None,
    )
)
@example(
    (
        "cache.miss",
        {
            "cache_key": "k",
            "detail": {
                "provider": {},
                "output": "",
                "fingerprint": "",
                "templates": {},
                "rendered": {},
                "upstream": {"\ud800": ""},
            },
        },
        None,
        None,
        None,
    )
)  # a surrogate in a key was written as U+FFFD: read back changed
@example(
    (
        "cache.miss",
        {"cache_key": "k", "changed": [{"part": "p", "name": "n", "old": float("nan")}]},
        None,
        None,
        None,
    )
)  # NaN in an Any field was written as null
def test_any_payload_is_refused_cleanly_or_round_trips(shared_store, generated):
    type_, data, step, level, ts = generated
    store, job = shared_store, f"j{next(JOB_NUMBERS)}"
    store.append(job, [_created()], expected_version=0)
    before = db_dump(store.path)
    try:
        ev = NewEvent.parse(type_, data, step, level, ts)
        stored = store.append(job, [ev], expected_version=1)
    except (InvalidEvent, StoreError) as exc:
        event(f"refused: {type(exc).__name__}")
        assert str(exc) and "\n" not in str(exc).strip()
        assert not store.conn.in_transaction
        assert db_dump(store.path) == before
        return
    event("accepted")
    (back,) = list(store.read_job(job, after_version=1))
    assert back == stored[0]
    assert (back.type, back.step, back.level, back.ts) == (ev.type, ev.step, ev.level, ev.ts)
    assert back.typed() == ev.data
    assert json.loads(back.data_json) == json.loads(ev.data_json())
    manifest.project(job, store.read_job(job))  # the job still folds


def test_surrogates_are_refused_as_invalid_events(tmp_path):
    """Lone surrogates cannot be written as UTF-8 (JSON text, SQLite): refused, not a crash."""
    with open_store(tmp_path / "s.db") as store:
        store.append("j", [_created()], expected_version=0)
        before = db_dump(store.path)
        for make in (
            lambda: NewEvent.parse("step.started", {"attempt": 1, "fingerprint": "\ud800"}, "a"),
            lambda: NewEvent.parse("step.started", {"attempt": 1, "fingerprint": "f"}, "\udc80"),
        ):
            with pytest.raises(InvalidEvent, match="UTF-8"):
                store.append("j", [make()], expected_version=1)
        assert db_dump(store.path) == before
    assert steplog_here(tmp_path / "s.db", "status", "j", "--json").code == 0
