"""steplog/heap.py: the GC is frozen while a job is folded, run or laid out, and put back."""

from __future__ import annotations

import gc
import threading

import pytest

from steplog import heap
from steplog.commands import timeline, verify
from steplog.commands.queries import fold_job
from steplog.commands.replay import replay
from steplog.eventstore.events import JobCreated, NewEvent, StepStarted
from steplog.heap import THRESHOLDS, long_lived_heap
from steplog.projections import manifest
from steplog.projections.store import open_store


@pytest.fixture(autouse=True)
def _own_thresholds():
    before = gc.get_threshold()
    gc.set_threshold(701, 11, 12)  # not the defaults: restoring "the defaults" would not pass
    yield
    gc.set_threshold(*before)


def test_nested_uses_share_the_outermost_and_the_last_one_out_restores():
    assert gc.get_freeze_count() == 0
    with long_lived_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0 and gc.get_threshold() == THRESHOLDS
        with long_lived_heap():
            assert gc.get_threshold() == THRESHOLDS
            assert gc.get_freeze_count() == frozen  # not frozen a second time
        assert gc.get_threshold() == THRESHOLDS and gc.get_freeze_count() == frozen
    assert gc.get_threshold() == (701, 11, 12)
    assert gc.get_freeze_count() == 0 and heap._depth == 0


def test_an_error_inside_still_restores():
    with pytest.raises(RuntimeError), long_lived_heap():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (701, 11, 12) and gc.get_freeze_count() == 0


def test_overlapping_uses_on_two_threads_restore_only_when_both_are_out():
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, tuple[int, int, int]] = {}

    def first() -> None:
        with long_lived_heap():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with long_lived_heap():
            second_in.set()
            first_out.wait(10)
            seen["after the first left"] = gc.get_threshold()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen["after the first left"] == THRESHOLDS
    assert gc.get_threshold() == (701, 11, 12) and gc.get_freeze_count() == 0


def test_folds_replays_timelines_and_verify_run_frozen_and_leave_the_process_as_it_was(
    tmp_path, monkeypatch
):
    seen: list[tuple[int, int, int]] = []
    apply = manifest.apply

    def watched(state, ev):  # type: ignore[no-untyped-def]
        seen.append(gc.get_threshold())
        return apply(state, ev)

    monkeypatch.setattr(manifest, "apply", watched)
    project = manifest.project
    monkeypatch.setattr(
        manifest, "project", lambda *a, **k: (seen.append(gc.get_threshold()), project(*a, **k))[1]
    )
    store = open_store(tmp_path / "s.db")
    created = JobCreated(
        pipeline="p",
        pipeline_fingerprint="f",
        pipeline_sha256="0" * 64,
        inputs={},
        workspace="w",
        steps={"a": []},
    )
    store.append(
        "j", [NewEvent.of(created), NewEvent.of(StepStarted(attempt=1, fingerprint="x"), "a")]
    )
    assert fold_job(store, "j").steps["a"].status == "running"
    assert replay(store, "j", "1").version == 1
    assert len(seen) >= 2 and set(seen) == {THRESHOLDS}  # the fold (project), replay (apply)
    timeline.build("j", store.read_job("j"))
    assert len(seen) >= 3 and set(seen) == {THRESHOLDS}  # timeline.build's fold
    chain_hash = verify.chain_hash
    monkeypatch.setattr(
        verify,
        "chain_hash",
        lambda *a: (seen.append(gc.get_threshold()), chain_hash(*a))[1],
    )
    for job in ("j", None):  # verify JOB, and the whole database
        before = len(seen)
        problems = verify.verify(store, job).problems
        assert [p.message for p in problems] == ["blob 000000000000 it points at is missing"]
        assert len(seen) > before and set(seen) == {THRESHOLDS}
    assert gc.get_threshold() == (701, 11, 12) and gc.get_freeze_count() == 0


def test_a_pipeline_is_parsed_frozen_each_time_and_the_process_left_as_it_was(monkeypatch):
    from steplog.executor import pipeline

    seen: list[tuple[int, int, int]] = []
    loads = pipeline.tomli.loads

    def watched(text: str):  # type: ignore[no-untyped-def]
        seen.append(gc.get_threshold())
        return loads(text)

    monkeypatch.setattr(pipeline.tomli, "loads", watched)
    source = 'name = "p"\n[providers.local]\nkind = "offline"\n[steps.a]\nprovider = "local"\nprompt = "hi"\n'
    for _ in range(2):  # the decorator makes a fresh context for every call
        assert pipeline.parse_pipeline(source).order == ["a"]
    assert seen == [THRESHOLDS, THRESHOLDS]
    assert gc.get_threshold() == (701, 11, 12) and gc.get_freeze_count() == 0
