"""The pure parts of the reliability layer: retry policy, breaker machine and fold, rate spacing,
budget arithmetic — with hypothesis where a property says more than examples."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.eventstore.events import (
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    LLMResponded,
    NewEvent,
)
from steplog.executor import budget
from steplog.executor.budget import Budget, Price, Spend
from steplog.executor.pipeline import PipelineError, parse_pipeline
from steplog.projections import breaker as breaker_fold
from steplog.projections.breaker import iso
from steplog.projections.tables import read_breakers_table, rebuild
from steplog.providers import breaker
from steplog.providers.backoff import RETRY_AFTER_CAP_S, RetryPolicy
from steplog.providers.base import ProviderBadResponse, ProviderHTTPError, ProviderUnavailable
from steplog.providers.breaker import BreakerPolicy, BreakerState, CircuitOpen, endpoint_of
from steplog.providers.http import parse_retry_after
from steplog.providers.ratelimit import RateState, reserve
from tests.strategies import fresh_store

# -- retry policy ---------------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    base=st.floats(0, 10),
    cap=st.floats(0, 100),
    ra_cap=st.floats(0, 300),
    attempt=st.integers(1, 10_000),
    retry_after=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    seed=st.integers(0, 2**32),
)
def test_the_delay_always_stays_within_its_bounds(base, cap, ra_cap, attempt, retry_after, seed):
    policy = RetryPolicy(base_s=base, cap_s=cap, retry_after_cap_s=ra_cap)
    delay = policy.delay(attempt, retry_after, random.Random(seed))
    floor = 0.0 if retry_after is None or not retry_after > 0 else min(retry_after, ra_cap)
    assert 0 <= delay <= max(min(cap, base * 2.0 ** min(attempt - 1, 64)), floor)
    assert delay >= floor  # Retry-After honoured, capped
    assert delay <= max(cap, ra_cap)


def test_a_long_retry_after_is_carried_as_sent_and_the_policy_alone_caps_the_wait():
    asked = parse_retry_after("3600")
    assert asked == 3600.0  # what the server said, for the log
    error = ProviderHTTPError("x", provider="p", status=429, retry_after=asked)
    policy = RetryPolicy(base_s=0.5, cap_s=30.0)
    assert policy.delay(1, error.retry_after, random.Random(1)) == RETRY_AFTER_CAP_S == 60.0


def test_the_jitter_range_doubles_up_to_the_cap():
    policy = RetryPolicy(base_s=0.5, cap_s=3.0)
    assert [policy.ceiling(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retryable_statuses_are_retried_while_attempts_remain(status):
    policy = RetryPolicy(max_attempts=3)
    error = ProviderHTTPError("x", provider="p", status=status)
    assert policy.should_retry(error, 1) and policy.should_retry(error, 2)
    assert not policy.should_retry(error, 3)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_are_never_retried(status):
    assert not RetryPolicy(max_attempts=9).should_retry(
        ProviderHTTPError("x", provider="p", status=status), 1
    )


def test_connect_errors_are_retried_bad_answers_and_open_circuits_are_not():
    policy = RetryPolicy(max_attempts=5)
    assert policy.should_retry(ProviderUnavailable("refused", provider="p"), 1)
    assert not policy.should_retry(ProviderBadResponse("junk", provider="p"), 1)
    assert not policy.should_retry(CircuitOpen(provider="p", endpoint="e", retry_after=3), 1)


# -- circuit breaker: the machine ----------------------------------------------------------------

POLICY = BreakerPolicy(failures=3, cooldown_s=10.0, probe_timeout_s=5.0)


def test_opens_after_n_consecutive_failures_then_one_probe_then_closes():
    state, now = BreakerState(), 100.0
    for n in range(1, 4):
        assert breaker.admit(state, POLICY, now).allowed
        state, moved = breaker.on_outcome(state, POLICY, False, True, now)
        assert (moved is None) == (n < 3)
    assert state.status == "open" and state.until == 110.0
    refused = breaker.admit(state, POLICY, 104.0)
    assert not refused.allowed and refused.retry_after == 6.0
    probe = breaker.admit(state, POLICY, 110.0)
    assert probe.allowed and probe.transition is not None and probe.transition.to == "half_open"
    state = breaker.apply(state, probe.transition)
    assert not breaker.admit(state, POLICY, 111.0).allowed  # only one probe
    state, moved = breaker.on_outcome(state, POLICY, True, False, 112.0)
    assert moved is not None and moved.to == "closed" and state == BreakerState()


def test_a_failed_probe_opens_again_and_a_success_resets_the_count():
    state = BreakerState(status="half_open", failures=3, until=20.0)
    state, moved = breaker.on_outcome(state, POLICY, False, True, 15.0)
    assert moved is not None and state.status == "open" and state.until == 25.0
    probing = BreakerState(status="half_open", failures=3, until=20.0)
    state, moved = breaker.on_outcome(probing, POLICY, False, False, 15.0)  # e.g. a 400: it answers
    assert moved is not None and moved.to == "closed" and state == BreakerState()
    closed = BreakerState(failures=2)
    assert breaker.on_outcome(closed, POLICY, True, False, 0)[0].failures == 0
    assert breaker.on_outcome(closed, POLICY, False, False, 0)[0].failures == 2  # a 400: no count


Action = st.one_of(
    st.tuples(st.just("call"), st.floats(0, 8)),
    st.tuples(st.just("outcome"), st.floats(0, 8), st.booleans(), st.booleans()),
)


@settings(max_examples=300)
@given(st.lists(Action, max_size=60), st.integers(1, 5))
def test_never_allows_a_call_while_open_and_exactly_one_probe_when_half_open(actions, failures):
    policy = BreakerPolicy(failures=failures, cooldown_s=10.0, probe_timeout_s=5.0)
    state, now = BreakerState(), 0.0
    for action in actions:
        now += action[1]
        if action[0] == "outcome":
            state, _ = breaker.on_outcome(state, policy, action[2], action[3], now)
            continue
        admission = breaker.admit(state, policy, now)
        if state.status == "closed":
            assert admission.allowed and admission.transition is None
        elif now < state.until:  # open in its cool-down, or half-open with its probe out
            assert not admission.allowed and admission.retry_after > 0
        else:
            assert admission.allowed and admission.transition is not None
            state = breaker.apply(state, admission.transition)
            assert state.status == "half_open"
        # one probe per half-open period: a second caller before an outcome or the lapse waits
        if state.status == "half_open" and now < state.until:
            assert not breaker.admit(state, policy, now).allowed


def test_the_endpoint_keeps_no_credentials():
    url = "https://user:s3cret-password@api.example.test:8443/v1/?api-key=k#frag"
    assert endpoint_of("openai", url) == "openai https://api.example.test:8443/v1"
    assert endpoint_of("offline", None) == "offline"


# -- circuit breaker: the fold and its table ------------------------------------------------------

ENDPOINTS = ["openai http://127.0.0.1:1/v1", "openai http://127.0.0.1:2/v1"]


@st.composite
def breaker_events(draw: st.DrawFn) -> list[NewEvent]:
    out = []
    for _ in range(draw(st.integers(1, 25))):
        endpoint = draw(st.sampled_from([*ENDPOINTS, None]))
        kind = draw(st.sampled_from(["ok", "fail", "open", "half", "closed"]))
        when = iso(draw(st.floats(0, 2e9)))
        if kind in ("ok", "fail"):
            data = LLMResponded(
                provider="p",
                model="m",
                duration_s=0.1,
                success=kind == "ok",
                attempt=1,
                cache_key="k",
                endpoint=endpoint,
                retryable=draw(st.none() | st.booleans()),
            )
        elif kind == "open":
            data = CircuitOpened(
                provider="p", failures=draw(st.integers(1, 9)), retry_at=when, endpoint=endpoint
            )
        elif kind == "half" and endpoint:
            data = CircuitHalfOpen(provider="p", endpoint=endpoint, failures=3, probe_until=when)
        else:
            data = CircuitClosed(provider="p", endpoint=endpoint)
        out.append(NewEvent.of(data, step="s"))
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(breaker_events(), min_size=1, max_size=4))
def test_the_breakers_table_equals_the_fold_for_any_event_sequence(batches):
    with fresh_store() as store:
        seen = []
        for n, batch in enumerate(batches):
            seen += store.append(f"job{n % 2}", batch)
            assert read_breakers_table(store.conn) == breaker_fold.project(seen)
        table = read_breakers_table(store.conn)
        with store.write_transaction() as conn:
            conn.execute("UPDATE breakers SET status = 'bogus'")
        rebuild(store)
        assert read_breakers_table(store.conn) == table


def test_the_fold_counts_only_retryable_failures_and_follows_transitions():
    with fresh_store() as store:
        e = ENDPOINTS[0]
        fail = LLMResponded(
            provider="p",
            model="m",
            duration_s=0,
            success=False,
            attempt=1,
            cache_key="k",
            endpoint=e,
            retryable=True,
        )
        bad = fail.model_copy(update={"retryable": False})
        store.append("j", [NewEvent.of(fail), NewEvent.of(fail), NewEvent.of(bad)])
        assert read_breakers_table(store.conn)[e].failures == 2
        store.append(
            "j",
            [
                NewEvent.of(
                    CircuitOpened(
                        provider="p", failures=2, retry_at="2030-01-01T00:00:00Z", endpoint=e
                    )
                )
            ],
        )
        row = read_breakers_table(store.conn)[e]
        assert row.status == "open" and row.until == breaker_fold.epoch("2030-01-01T00:00:00Z")
        store.append("j", [NewEvent.of(CircuitClosed(provider="p", endpoint=e))])
        assert read_breakers_table(store.conn)[e].state == BreakerState()


# -- rate limit -----------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.floats(0.001, 60), st.lists(st.floats(0, 5), min_size=1, max_size=40))
def test_reserved_starts_are_spaced_by_the_interval_and_never_early(interval, gaps):
    state, now, starts = RateState(), 0.0, []
    for gap in gaps:
        now += gap
        state, wait = reserve(state, interval, now)
        assert wait >= 0
        starts.append(now + wait)
    assert all(b - a >= interval * (1 - 1e-9) for a, b in zip(starts, starts[1:]))


# -- budget ---------------------------------------------------------------------------------------


def test_the_estimate_is_prompt_tokens_plus_max_tokens_priced():
    price = Price(input_per_mtok=3.0, output_per_mtok=15.0)
    est = budget.estimate(1000, {"max_tokens": 2000}, price)
    assert est == Spend(3000, 0.003 + 0.03)
    assert budget.estimate(10, {}, None) == Spend(10, 0.0)
    assert budget.cost_of(price, 1_000_000, 0) == 3.0 and budget.cost_of(None, 5, 5) is None


def test_a_call_that_would_pass_a_limit_is_refused():
    limits = Budget(max_tokens=100, max_cost=1.0)
    assert budget.exceeded(limits, Spend(50, 0.5), Spend(50, 0.5)) is None  # exactly at the limit
    assert budget.exceeded(limits, Spend(50, 0.0), Spend(51, 0.0)) == "max_tokens"
    assert budget.exceeded(limits, Spend(0, 0.6), Spend(0, 0.5)) == "max_cost"
    assert budget.exceeded(None, Spend(10**9, 1e9), Spend(1, 1)) is None


def test_resume_is_blocked_only_while_the_real_spend_leaves_no_room_for_the_refused_call():
    # an old event (before schema 5): its cost_spent included the reservations; never read
    stopped = {"limit": "max_cost", "cost_spent": 0.9, "estimate_tokens": 10, "estimate_cost": 0.3}
    assert budget.blocks_resume(Budget(max_cost=1.0), Spend(5, 0.8), stopped) == "max_cost"
    assert budget.blocks_resume(Budget(max_cost=1.0), Spend(5, 0.7), stopped) is None  # fits
    assert budget.blocks_resume(Budget(max_cost=2.0), Spend(5, 0.8), stopped) is None  # raised
    assert budget.blocks_resume(Budget(max_tokens=14), Spend(5, 0.8), stopped) == "max_tokens"
    assert budget.blocks_resume(None, Spend(10**9, 1e9), stopped) is None
    assert budget.blocks_resume(Budget(max_cost=1.0), Spend(0, 0.8), {"estimate_tokens": 1}) is None


def test_a_call_waits_while_only_reservations_stand_in_the_way_and_is_refused_on_spend():
    ledger = budget.Ledger(Budget(max_cost=1.0), Spend(0, 0.2))
    first = ledger.reserve(Spend(10, 0.5))
    assert ledger.verdict(Spend(10, 0.5)) == ("wait", "max_cost")  # 0.2 + 0.5 + 0.5
    assert ledger.verdict(Spend(10, 0.9)) == ("refuse", "max_cost")  # 0.2 + 0.9: no wait helps
    ledger.release(first)
    ledger.spend(Spend(4, 0.1))
    assert ledger.verdict(Spend(10, 0.5)) == ("go", None)
    assert (ledger.spent, ledger.reserved, ledger.in_flight) == (Spend(4, 0.3), Spend(), 0)
    ledger.release(first)  # a second release changes nothing
    assert (ledger.reserved, ledger.in_flight) == (Spend(), 0)
    free = budget.Ledger(None)
    held = free.reserve(Spend(10**6, 10.0))
    assert free.reserved == Spend() and free.in_flight == 1  # without a budget nothing is held
    free.release(held)
    assert free.in_flight == 0


PRICED = """
name = "p"
[budget]
max_cost = 1.0
[providers.remote]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "big-model"
[steps.a]
provider = "remote"
prompt = "hi"
"""


def test_max_cost_with_an_unpriced_model_is_a_load_time_error_naming_it():
    with pytest.raises(PipelineError, match="'big-model'.*prices"):
        parse_pipeline(PRICED)
    ok = parse_pipeline(
        PRICED + '[prices."big-model"]\ninput_per_mtok = 3.0\noutput_per_mtok = 15.0\n'
    )
    assert ok.spec.prices["big-model"].output_per_mtok == 15.0
    with pytest.raises(PipelineError, match="unknown key 'budget.max_dollars'"):
        parse_pipeline(PRICED.replace("max_cost", "max_dollars"))


def test_a_schema_1_database_gets_the_breakers_table_by_its_migration(tmp_path):
    import shutil

    from steplog.projections.store import open_store
    from tests.on_disk import ROOT

    path = tmp_path / "old.db"
    shutil.copy(ROOT / "tests" / "data" / "schema_v1.db", path)  # written before breakers existed
    store = open_store(path)
    try:
        fail = LLMResponded(
            provider="p",
            model="m",
            duration_s=0,
            success=False,
            attempt=1,
            cache_key="k",
            endpoint=ENDPOINTS[0],
            retryable=True,
        )
        store.append("j", [NewEvent.of(fail)])
        assert read_breakers_table(store.conn)[ENDPOINTS[0]].failures == 1
    finally:
        store.close()
