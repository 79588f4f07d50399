"""Properties of the audit views and of verify over random plausible logs (tests/strategies.py):
each view equals a plain Python fold of the same events, and verify passes every log the store
writes and names the one event whose bytes were changed."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.commands.verify import verify_database
from steplog.eventstore.record import StoredEvent
from steplog.projections import manifest
from tests.strategies import append_batches, fresh_store, job_batches, names, pools

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def logs(draw: st.DrawFn):
    """Interleaved batches of 1-3 jobs sharing one pool; the pool's blobs are all stored."""
    pool = draw(pools)
    jobs = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    queues = {job: draw(job_batches(pool, job)) for job in jobs}
    order = []
    while queues:
        job = draw(st.sampled_from(sorted(queues)))
        order.append(queues[job].pop(0))
        if not queues[job]:
            del queues[job]
    return pool, order


def written(store, pool, batches) -> list[StoredEvent]:
    for blob in pool.blobs:
        store.put_blob(blob)
    return append_batches(store, batches)


def query(store, sql: str) -> list[tuple]:
    return store.conn.execute(sql).fetchall()


# -- the folds the views must equal --------------------------------------------------------------


def copied(events: list[StoredEvent]) -> dict[int, int]:
    """seq -> 1 when the event is before its job's latest job.forked (a fork's copied history)."""
    forked_at: dict[str, int] = {}
    for ev in events:
        if ev.type == "job.forked":
            forked_at[ev.job_id] = ev.version
    return {ev.seq: int(ev.version < forked_at.get(ev.job_id, 0)) for ev in events}


def fold_llm_calls(events: list[StoredEvent]) -> list[tuple[Any, ...]]:
    """A request is answered by the next llm.* event of its job and step, if that is a response
    to the same attempt and key."""
    rows: list[list[Any]] = []
    pending: dict[tuple[str, str | None], int] = {}
    for ev in events:
        if ev.type not in ("llm.request", "llm.response"):
            continue
        d = orjson.loads(ev.data_json)
        at = pending.pop((ev.job_id, ev.step), None)
        if ev.type == "llm.request":
            rows.append([ev.seq, ev.job_id, ev.step, d["attempt"], d["cache_key"], None, None])
            pending[(ev.job_id, ev.step)] = len(rows) - 1
        elif at is not None and rows[at][3:5] == [d["attempt"], d["cache_key"]]:
            rows[at][5:] = [int(d["success"]), d.get("tokens_in", 0)]
    return [tuple(r) for r in rows]


LIFECYCLE = (
    "job.resumed",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.interrupted",
    "job.forked",
)


def fold_step_runs(events: list[StoredEvent]) -> list[tuple[Any, ...]]:
    rows: list[list[Any]] = []
    running: dict[tuple[str, str | None], int] = {}
    for ev in events:
        key = (ev.job_id, ev.step)
        if ev.type in LIFECYCLE:
            for (job, _), at in running.items():
                if job == ev.job_id:
                    rows[at][4] = "interrupted"  # unless it ends later; see below
            continue
        if ev.type not in ("step.started", "step.succeeded", "step.failed", "step.skipped"):
            if ev.type == "cache.hit" and key in running:
                rows[running[key]][5] = 1
            continue
        d = orjson.loads(ev.data_json)
        at = running.pop(key, None)
        if at is not None:
            if ev.type in ("step.succeeded", "step.failed"):
                rows[at][4] = ev.type.removeprefix("step.")
                if ev.type == "step.succeeded":
                    rows[at][5] = int(d["cache_hit"])
            else:
                rows[at][4] = "interrupted"
        if ev.type == "step.started":
            rows.append([ev.seq, ev.job_id, ev.step, d["attempt"], "running", 0])
            running[key] = len(rows) - 1
        elif ev.type == "step.skipped":
            rows.append([ev.seq, ev.job_id, ev.step, None, "skipped", None])
    return [tuple(r) for r in rows]


@SETTINGS
@given(logs())
def test_llm_calls_pairs_every_request_as_a_fold_of_the_log_does(log):
    pool, batches = log
    with fresh_store() as store:
        events = written(store, pool, batches)
        view = query(
            store,
            "SELECT seq, job_id, step, attempt, cache_key, success, tokens_in, copied"
            " FROM llm_calls ORDER BY seq",
        )
        marks = copied(events)
        assert view == [(*row, marks[row[0]]) for row in fold_llm_calls(events)]


@SETTINGS
@given(logs())
def test_step_runs_is_a_fold_of_the_log(log):
    pool, batches = log
    with fresh_store() as store:
        events = written(store, pool, batches)
        view = query(
            store,
            "SELECT seq, job_id, step, attempt, status, cache_hit, copied FROM step_runs"
            " ORDER BY seq",
        )
        marks = copied(events)
        assert view == [(*row, marks[row[0]]) for row in fold_step_runs(events)]


@SETTINGS
@given(logs())
def test_job_summary_agrees_with_the_manifest_fold(log):
    pool, batches = log
    with fresh_store() as store:
        events = written(store, pool, batches)
        rows = store.conn.execute("SELECT * FROM job_summary").fetchall()
        names_ = [d[0] for d in store.conn.execute("SELECT * FROM job_summary LIMIT 0").description]
        summary = {r[0]: dict(zip(names_, r)) for r in rows}
        assert set(summary) == {ev.job_id for ev in events}
        for job, row in summary.items():
            mine = [ev for ev in events if ev.job_id == job]
            state = manifest.project(job, mine)
            steps = state.steps.values()
            assert (row["status"], row["started"], row["finished"]) == (
                state.status,
                state.started_ts,
                state.finished_ts,
            )
            if state.elapsed_s is None:
                assert row["duration_s"] is None
            else:
                assert abs(row["duration_s"] - state.elapsed_s) < 0.002
            created = orjson.loads(mine[0].data_json)
            assert row["steps"] == len(created["steps"])
            assert row["steps_succeeded"] == sum(
                s.status in ("succeeded", "skipped") for s in steps
            )
            assert row["steps_failed"] == sum(s.status == "failed" for s in steps)
            assert (row["tokens_in"], row["tokens_out"], row["failed_calls"]) == (
                state.tokens_in,
                state.tokens_out,
                state.llm_failures,
            )
            assert (row["cache_hits"], row["cache_misses"]) == (
                state.cache_hits,
                state.cache_misses,
            )
            assert row["calls"] == sum(ev.type == "llm.request" for ev in mine)


@SETTINGS
@given(logs())
def test_every_verb_counts_calls_made_answered_failed_and_unanswered_alike(log):
    """One count of calls: the manifest fold (status), job_summary, audit's document and the
    llm_calls view agree on the four figures for any log."""
    from steplog.commands.audit import audit_document

    pool, batches = log
    with fresh_store() as store:
        events = written(store, pool, batches)
        for job in {ev.job_id for ev in events}:
            state = manifest.project(job, [ev for ev in events if ev.job_id == job])
            folded = (
                state.llm_calls,
                state.llm_answered,
                state.llm_failures,
                state.llm_unanswered,
            )
            (summary,) = query(
                store,
                "SELECT calls, answered_calls, failed_calls, unanswered_calls FROM job_summary"
                f" WHERE job_id = '{job}'",
            )
            (view,) = query(
                store,
                "SELECT count(*), coalesce(sum(success = 1), 0), coalesce(sum(success = 0), 0),"
                f" coalesce(sum(success IS NULL), 0) FROM llm_calls WHERE job_id = '{job}'",
            )
            doc = audit_document(store, job)["summary"]
            audited = tuple(
                doc[k] for k in ("calls", "answered_calls", "failed_calls", "unanswered_calls")
            )
            assert folded == summary == audited
            assert folded[0] == view[0] and folded[3] == view[3]
            per_step = [(s.llm_calls, s.llm_unanswered) for s in state.steps.values()]
            assert sum(c for c, _ in per_step) == state.llm_calls
            assert sum(u for _, u in per_step) == state.llm_unanswered


@SETTINGS
@given(logs())
def test_spent_and_reserved_are_the_same_figures_in_the_fold_job_summary_and_audit(log):
    """Spent is the sum of the job's llm.response figures everywhere; reserved is what the
    unanswered requests of the run under way hold, while it runs, and 0 otherwise."""
    from steplog.commands.audit import audit_document

    pool, batches = log
    with fresh_store() as store:
        events = written(store, pool, batches)
        for job in {ev.job_id for ev in events}:
            mine = [ev for ev in events if ev.job_id == job]
            state = manifest.project(job, mine)
            data = [orjson.loads(ev.data_json) for ev in mine if ev.type == "llm.response"]
            assert abs(state.cost - sum(d.get("cost") or 0 for d in data)) < 1e-6
            assert state.tokens_in + state.tokens_out == sum(
                d.get("tokens_in", 0) + d.get("tokens_out", 0) for d in data
            )
            (row,) = query(
                store,
                "SELECT coalesce(cost, 0), tokens_reserved, cost_reserved FROM job_summary"
                f" WHERE job_id = '{job}'",
            )
            doc = audit_document(store, job)["summary"]
            assert abs(row[0] - state.cost) < 1e-6
            assert row[1] == doc["tokens_reserved"] == state.tokens_reserved
            assert abs(row[2] - state.cost_reserved) < 1e-6 and row[2] == doc["cost_reserved"]
            if state.status != "running":
                assert (state.tokens_reserved, state.cost_reserved) == (0, 0.0)
            assert state.tokens_reserved >= 0 and state.cost_reserved >= 0


@SETTINGS
@given(logs(), st.data())
def test_verify_passes_any_log_and_names_the_one_event_changed(log, data):
    pool, batches = log
    with fresh_store() as store:
        events = written(store, pool, batches)
        path = store.path
        report = verify_database(path)
        assert report.ok, [p.line() for p in report.problems]
        assert report.events == len(events)
        target = data.draw(st.sampled_from(events))
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("DROP TRIGGER events_append_only_update")
            conn.execute("UPDATE events SET data = data || ' ' WHERE seq = ?", (target.seq,))
        conn.close()
        report = verify_database(path)
    assert [(p.seq, p.message) for p in report.problems if p.check != "schema"] == [
        (target.seq, "hash does not match the event's content (edited after append)")
    ]
    assert report.problems[0].seq == target.seq
