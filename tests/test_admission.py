"""The shared admission policy (executor/admission.py), as properties: single flight before
limits, max_concurrency never passed, requests_per_minute spacing and window kept by any
sequence of admissions, a rate wait that is exactly long enough; and the liveness rule."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.executor.admission import (
    WINDOW_S,
    Admit,
    Flight,
    Serve,
    SharedLimits,
    Wait,
    decide,
    rate_wait,
)
from steplog.executor.flights import FOREIGN_FLIGHT_MAX_AGE_S, default_alive
from steplog.executor.ownership import current_owner

ENDPOINTS = ["openai http://127.0.0.1:1/v1", "openai http://127.0.0.1:2/v1"]
KEYS = ["k1", "k2", "k3"]

flights = st.builds(
    Flight,
    job_id=st.sampled_from(["j1", "j2", "j3"]),
    step=st.sampled_from(["a", "b", "c"]),
    endpoint=st.sampled_from(ENDPOINTS),
    cache_key=st.sampled_from(KEYS),
)
limits = st.builds(
    SharedLimits,
    max_concurrency=st.none() | st.integers(1, 5),
    requests_per_minute=st.none() | st.sampled_from([0.5, 1, 2.5, 10, 60, 600]),
)
times = st.floats(0, 1000, allow_nan=False)


def ask(lim: SharedLimits, live: list[Flight], recent: list[float], now: float, **kw):
    args = dict(job_id="me", step="s", endpoint=ENDPOINTS[0], cache_key="k1", answered=False)
    args.update(kw)
    return decide(lim, live=live, recent=recent, now=now, **args)


@given(limits, st.lists(flights, max_size=8), st.lists(times, max_size=8), times)
def test_an_answered_key_is_served_whatever_else_holds(lim, live, recent, now):
    assert ask(lim, live, sorted(recent, reverse=True), now, answered=True) == Serve()


@given(limits, st.lists(flights, max_size=8), st.lists(times, max_size=8), times)
def test_another_live_call_for_the_key_is_followed_before_any_limit_is_asked(
    lim, live, recent, now
):
    decision = ask(lim, live, sorted(recent, reverse=True), now)
    same = [f for f in live if f.cache_key == "k1" and (f.job_id, f.step) != ("me", "s")]
    if same:
        assert isinstance(decision, Wait) and decision.reason == "in_flight"
        assert decision.following in same
    else:
        assert not (isinstance(decision, Wait) and decision.reason == "in_flight")


@given(limits, st.lists(flights, max_size=8), st.lists(times, max_size=8), times)
def test_admitted_only_under_the_concurrency_cap(lim, live, recent, now):
    decision = ask(lim, live, sorted(recent, reverse=True), now)
    on_endpoint = sum(1 for f in live if f.endpoint == ENDPOINTS[0])
    if isinstance(decision, Admit) and lim.max_concurrency is not None:
        assert on_endpoint < lim.max_concurrency
    if isinstance(decision, Wait) and decision.reason == "concurrency":
        assert on_endpoint >= decision.limit == lim.max_concurrency


@given(st.sampled_from([0.5, 1, 2.5, 10, 60, 600]), st.lists(times, max_size=12), times)
def test_a_rate_wait_is_exactly_long_enough(rpm, recent, now):
    recent = sorted(recent, reverse=True)
    wait = rate_wait(rpm, recent, now)
    assert wait >= 0
    # at now + wait the same history admits
    assert rate_wait(rpm, recent, now + wait) <= 1e-6
    if wait > 1e-6:  # and a little earlier it does not
        assert rate_wait(rpm, recent, now + wait * 0.99 - 1e-6) > 0


@settings(max_examples=200)
@given(
    st.sampled_from([1, 2.5, 10, 60, 600]),
    st.integers(1, 4),
    st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=40),
)
def test_any_sequence_of_admissions_keeps_the_spacing_and_the_window(rpm, cap, asks):
    """Processes ask at arbitrary moments, each waiting as told and asking again; each admitted
    call stays in flight for one second. The starts admitted keep 60/rpm apart, never more than
    rpm in a minute, and never more than `cap` at once."""
    lim = SharedLimits(max_concurrency=cap, requests_per_minute=rpm)
    now, starts = 0.0, []
    for n, gap in enumerate(asks):
        now += gap
        for _ in range(10_000):  # bounded: each round moves the clock on
            live = [
                Flight(f"j{i}", "s", ENDPOINTS[0], f"k{i}")
                for i, t in enumerate(starts)
                if t <= now < t + 1.0
            ]
            decision = ask(lim, live, sorted(starts, reverse=True), now, cache_key=f"new{n}")
            if isinstance(decision, Admit):
                starts.append(now)
                break
            assert isinstance(decision, Wait)
            now += decision.wait_s if decision.wait_s is not None else 0.25
        else:
            raise AssertionError("never admitted")
    for before, after in zip(starts, starts[1:]):
        assert after - before >= WINDOW_S / rpm - 1e-6
    for t in starts:
        assert sum(1 for u in starts if t <= u < t + WINDOW_S) <= max(1, rpm)
        assert sum(1 for u in starts if u <= t < u + 1.0) <= cap


def test_an_owner_counts_while_its_process_lives_and_a_foreign_one_by_age():
    me = current_owner().model_dump()
    assert default_alive(me, 10 * FOREIGN_FLIGHT_MAX_AGE_S)  # alive: age does not matter
    gone = {**me, "started": "not-its-start-time"}  # the pid reused by another process
    assert not default_alive(gone, 0.0)
    dead = {**me, "pid": _a_free_pid()}
    assert not default_alive(dead, 0.0)
    foreign = {**me, "host": "another-host.invalid"}
    assert default_alive(foreign, FOREIGN_FLIGHT_MAX_AGE_S - 1)
    assert not default_alive(foreign, FOREIGN_FLIGHT_MAX_AGE_S)
    assert default_alive(None, 1.0) and not default_alive(None, FOREIGN_FLIGHT_MAX_AGE_S)


def _a_free_pid() -> int:
    for pid in range(4_000_000, 3_000_000, -1):  # bounded; pid_max is usually far below
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid found")


# -- the admission's reads: a count of the endpoint's live calls, not a row object each -----

NOW = 1_800_000_000.0
OWN_OWNER = '{"host":"here","pid":1,"started":"1"}'
flight_rows = st.dictionaries(
    st.tuples(st.sampled_from(["me", "j2", "j3"]), st.sampled_from(["s", "a", "b", "c"])),
    st.tuples(
        st.sampled_from(ENDPOINTS),
        st.sampled_from(KEYS),
        st.sampled_from([None, OWN_OWNER, '{"host":"x","pid":7}', '{"host":"x","pid":8}']),
        st.floats(0, 2 * FOREIGN_FLIGHT_MAX_AGE_S, allow_nan=False),  # the call's age, s
    ),
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(
    flight_rows,
    st.sets(st.sampled_from(["s", "a", "b", "c"])),
    st.sampled_from(["s", "a"]),
    st.sampled_from(KEYS),
    st.none() | st.integers(1, 4),
)
def test_the_admission_decides_as_a_decision_over_every_live_row_would(
    tmp_path_factory, rows, returned, step, key, cap
):
    """SharedCalls._decision reads the key's calls in full but only counts the endpoint's live
    ones; the decision equals decide() over every live row of the endpoint and of the key, as
    the admission read them before (one Flight per row)."""
    from pathlib import Path

    from steplog.executor.flights import SharedCalls
    from steplog.executor.joblog import JobLog
    from steplog.projections.breaker import epoch, iso
    from steplog.projections.store import open_store

    def alive(owner: dict | None, age_s: float) -> bool:  # pid 7 lives, 8 is gone, None: age
        return age_s < FOREIGN_FLIGHT_MAX_AGE_S if owner is None else owner["pid"] == 7

    store = open_store(Path(tmp_path_factory.mktemp("admit")) / "t.db")
    try:
        with store.write_transaction() as conn:
            for seq, ((job, name), (endpoint, cache_key, owner, age)) in enumerate(rows.items()):
                conn.execute(
                    "INSERT INTO calls_in_flight (job_id, step, endpoint, cache_key, attempt,"
                    " owner, ts, seq) VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                    (job, name, endpoint, cache_key, owner, iso(NOW - age), seq + 1),
                )
        calls = SharedCalls(JobLog(store, "me", version=0), clock=lambda: NOW, alive=alive)
        calls.owner_text = OWN_OWNER
        calls.returned = set(returned)
        limits = SharedLimits(cap, None)
        with store.reading() as conn:
            decision = calls._decision(conn, step, ENDPOINTS[0], key, limits)
            every = conn.execute(
                "SELECT job_id, step, endpoint, cache_key, owner, ts FROM calls_in_flight"
                " WHERE endpoint = ? OR cache_key = ?",
                (ENDPOINTS[0], key),
            ).fetchall()

        def holds_its_place(job: str, name: str, owner: str | None, ts: str) -> bool:
            """The liveness rule, written out: this job's own calls until they return, this
            process's, pid 7's (alive), and an unaskable owner's while it is young enough."""
            if job == "me":
                return name not in returned
            if owner == OWN_OWNER:
                return True
            if owner is None:
                return NOW - epoch(ts) < FOREIGN_FLIGHT_MAX_AGE_S
            return '"pid":7' in owner

        live = [
            Flight(job, name, endpoint, cache_key)
            for job, name, endpoint, cache_key, owner, ts in every
            if holds_its_place(job, name, owner, ts)
        ]
        expected = decide(
            limits,
            job_id="me",
            step=step,
            endpoint=ENDPOINTS[0],
            cache_key=key,
            answered=False,
            live=live,
            recent=[],
            now=NOW,
        )
        assert decision == expected
    finally:
        store.close()
