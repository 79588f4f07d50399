"""steplog/heap.py: the GC's settings while a job is run (frozen heap) or folded, parsed, laid out
or verified (paused), and the process put back as it was found."""

from __future__ import annotations

import gc
import threading

import pytest

from steplog.commands import timeline, verify
from steplog.commands.queries import fold_job
from steplog.commands.replay import replay
from steplog.eventstore.events import JobCreated, NewEvent, StepStarted
from steplog.heap import _PAUSE, _RUN, THRESHOLDS, gc_paused, long_lived_heap
from steplog.projections import manifest
from steplog.projections.store import open_store

OWN = (701, 11, 12)  # not the defaults: restoring "the defaults" would not pass


@pytest.fixture(autouse=True)
def _own_settings():
    before = gc.get_threshold()
    gc.set_threshold(*OWN)
    yield
    gc.set_threshold(*before)
    gc.enable()


def as_found() -> bool:
    return gc.get_threshold() == OWN and gc.get_freeze_count() == 0 and gc.isenabled()


def test_nested_uses_share_the_outermost_and_the_last_one_out_restores():
    with long_lived_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0 and gc.get_threshold() == THRESHOLDS
        with long_lived_heap(), gc_paused():
            assert gc.get_threshold() == THRESHOLDS and not gc.isenabled()
            assert gc.get_freeze_count() == frozen  # not frozen a second time
            with gc_paused():
                pass
            assert not gc.isenabled()  # the inner pause left it to the outer one
        assert gc.isenabled() and gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() == frozen
    assert as_found() and not _RUN.holders and not _PAUSE.holders


def test_an_error_inside_still_restores():
    with pytest.raises(RuntimeError), long_lived_heap(), gc_paused():
        raise RuntimeError("boom")
    assert as_found()


def test_a_callers_own_settings_are_kept():
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # it was off before: not turned on
    gc.enable()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with long_lived_heap():
            assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > frozen - 1000  # not thawed (a few frozen objects die)
        assert gc.get_threshold() == OWN
    finally:
        gc.unfreeze()


def test_a_restore_cut_short_is_finished_by_the_next_use(monkeypatch):
    """A signal between two of the restoring calls: the next use must not take the half-put-
    back state for the process's own (or the GC would stay off, or frozen, for good)."""
    calls = {"n": 0}
    enable = gc.enable

    def interrupted() -> None:
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(gc, "enable", interrupted)
    with pytest.raises(KeyboardInterrupt), gc_paused():
        pass
    assert calls["n"] == 1 and not gc.isenabled()  # cut short: still paused
    monkeypatch.setattr(gc, "enable", enable)
    with gc_paused():
        assert not gc.isenabled()
    assert as_found()

    unfreeze = gc.unfreeze
    monkeypatch.setattr(gc, "unfreeze", interrupted)
    with pytest.raises(KeyboardInterrupt), long_lived_heap():
        pass
    assert gc.get_freeze_count() > 0
    monkeypatch.setattr(gc, "unfreeze", unfreeze)
    with long_lived_heap():
        pass
    assert as_found()


def test_overlapping_uses_on_two_threads_restore_only_when_both_are_out():
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first() -> None:
        with long_lived_heap(), gc_paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with long_lived_heap(), gc_paused():
            second_in.set()
            first_out.wait(10)
            seen["after the first left"] = (gc.get_threshold(), gc.isenabled())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen["after the first left"] == (THRESHOLDS, True)  # no pause off the main thread
    assert as_found()


def test_a_pause_off_the_main_thread_does_nothing_but_a_run_still_shares():
    seen: list[object] = []

    def worker() -> None:
        with gc_paused():
            seen.append(gc.isenabled())
        with long_lived_heap():
            seen.append(gc.get_threshold())

    with gc_paused():
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(10)
        assert not gc.isenabled()  # the main thread's pause is untouched by the other thread
    assert seen == [False, THRESHOLDS]  # (the process-wide pause was on: it saw it, kept it)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert seen[2:] == [True, THRESHOLDS] and as_found()


def test_garbage_made_between_runs_is_collected_not_frozen():
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.collect()
    for _ in range(50):
        for _ in range(300):
            Cycle()
        with long_lived_heap():
            pass
    assert sum(isinstance(o, Cycle) for o in gc.get_objects()) <= 300
    assert as_found()


def test_a_paused_call_leaves_its_garbage_to_be_collected():
    """Unlike a freeze, a pause moves nothing to the oldest generation: the cycles made around
    many short calls are collected as they would be without them."""

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    for _ in range(50):
        for _ in range(300):
            Cycle()
        with gc_paused():
            pass
    alive = sum(isinstance(o, Cycle) for o in gc.get_objects())
    assert alive < 50 * 300 // 2  # collections ran in between; frozen every time, all 15,000 lived
    assert as_found()


def test_folds_replays_timelines_and_verify_run_paused_and_leave_the_process_as_it_was(
    tmp_path, monkeypatch
):
    seen: list[bool] = []
    apply = manifest.apply

    def watched(state, ev):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return apply(state, ev)

    monkeypatch.setattr(manifest, "apply", watched)
    project = manifest.project
    monkeypatch.setattr(
        manifest, "project", lambda *a, **k: (seen.append(gc.isenabled()), project(*a, **k))[1]
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
    for _ in range(2):  # a decorator makes a fresh context for every call
        assert fold_job(store, "j").steps["a"].status == "running"
    assert replay(store, "j", "1").version == 1
    assert len(seen) >= 3 and set(seen) == {False}  # the folds (project), replay (apply)
    timeline.build("j", store.read_job("j"))
    assert len(seen) >= 4 and set(seen) == {False}  # timeline.build's fold
    chain_hash = verify.chain_hash
    monkeypatch.setattr(
        verify, "chain_hash", lambda *a: (seen.append(gc.isenabled()), chain_hash(*a))[1]
    )
    for job in ("j", None):  # verify JOB, and the whole database
        before = len(seen)
        problems = verify.verify(store, job).problems
        assert [p.message for p in problems] == ["blob 000000000000 it points at is missing"]
        assert len(seen) > before and set(seen) == {False}
    assert as_found()


def test_run_checks_parse_the_pipeline_paused(tmp_path, monkeypatch):
    from steplog.commands import jobs
    from steplog.executor import pipeline

    seen: list[bool] = []
    loads = pipeline.tomli.loads
    monkeypatch.setattr(
        pipeline.tomli, "loads", lambda text: (seen.append(gc.isenabled()), loads(text))[1]
    )
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "p"\n[providers.local]\nkind = "offline"\n'
        '[steps.a]\nprovider = "local"\nprompt = "hi"\n'
    )
    cmd = jobs.RunCommand(pipeline_path=path, job_id="j", workspace=tmp_path / "w")
    assert jobs.check_run_before_creating(cmd).order == ["a"]
    assert seen == [False] and as_found()
