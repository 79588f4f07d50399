"""The reliability layer against a real HTTP server on 127.0.0.1: circuit breaker, budgets,
concurrency and rate limits, a chaos run, and Ctrl-C in the middle of an HTTP call."""

from __future__ import annotations

import io
import json
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from steplog.commands.cli.display import LiveDisplay, PlainDisplay
from steplog.commands.jobs import RunCommand, execute, prepare_run
from steplog.projections import manifest
from steplog.projections.store import open_store
from steplog.projections.tables import read_breakers_table
from tests.cli_process import spawn, status_json, steplog
from tests.fake_llm_server import FakeLLMServer, default_responder
from tests.on_disk import db_rows, event_count

pytestmark = pytest.mark.slow

FAST = "backoff_base_s = 0.001\nbackoff_cap_s = 0.005\n"


def pipeline(
    tmp_path: Path,
    port: int,
    steps: dict[str, list[str]],
    provider: str = "",
    extra: str = "",
    prompts: dict[str, str] | None = None,
    name: str = "p.toml",
) -> Path:
    """Text steps on one OpenAI-compatible provider at 127.0.0.1:port."""
    lines = [
        'name = "reliability"',
        extra,
        "[providers.remote]",
        'kind = "openai"',
        f'base_url = "http://127.0.0.1:{port}/v1"',
        'model = "fake-model"',
        provider,
    ]
    for step, needs in steps.items():
        prompt = (prompts or {}).get(step) or (
            f"Step {step}." + "".join(f" {{{{ steps.{n}.output }}}}" for n in needs)
        )
        lines += [
            f"[steps.{step}]",
            f"needs = {json.dumps(needs)}",
            'provider = "remote"',
            f"prompt = {json.dumps(prompt)}",
        ]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def run_here(db: Path, path: Path, job_id: str, tmp_path: Path):
    """In this process: real store, real HTTP; returns the outcome and the folded state."""
    store = open_store(db)
    try:
        prepared = prepare_run(
            store, RunCommand(pipeline_path=path, job_id=job_id, workspace=tmp_path / job_id)
        )
        display = PlainDisplay(prepared.state, quiet=True)
        return execute(store, prepared, observer=display), display.state
    finally:
        store.close()


def rows(db: Path, sql: str) -> list[tuple]:
    return db_rows(db, sql)


def completions(server: FakeLLMServer) -> int:
    return sum(1 for c in server.calls if c["path"].endswith("/chat/completions"))


# -- circuit breaker ------------------------------------------------------------------------------


def test_breaker_opens_in_a_run_fails_fast_and_refuses_other_processes(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.extend(("status", 503, None, {}) for _ in range(50))
    path = pipeline(
        tmp_path,
        server.port,
        {"a": [], "b": [], "c": []},
        provider=FAST + "max_retries = 6\nbreaker_failures = 3\nbreaker_cooldown_s = 600\n"
        "max_concurrency = 1\n",
    )
    failed = steplog(db, "run", str(path), "--job-id", "first")
    assert failed.code == 1, failed.err
    # three failures opened the circuit; every later attempt failed fast, without a call
    assert completions(server) == 3
    endpoint = f"openai http://127.0.0.1:{server.port}/v1"
    opened = rows(
        db,
        "SELECT json_extract(data, '$.endpoint'), json_extract(data, '$.failures')"
        " FROM events WHERE type = 'provider.circuit_opened'",
    )
    assert opened == [(endpoint, 3)]
    assert rows(db, "SELECT count(*) FROM events WHERE type = 'llm.request'") == [(3,)]
    assert rows(
        db,
        "SELECT count(*) FROM events WHERE type = 'llm.response'"
        " AND json_extract(data, '$.success') = 0",
    ) == [(3,)]
    kinds = rows(
        db, "SELECT json_extract(data, '$.error_type') FROM events WHERE type = 'step.failed'"
    )
    assert len(kinds) == 3 and ("circuit_open",) in kinds
    store = open_store(db)
    assert read_breakers_table(store.conn)[endpoint].status == "open"
    store.close()

    # another process, another job: refused up front, nothing appended, no call
    before = event_count(db)
    for args in (("run", str(path), "--job-id", "second"), ("resume", "first")):
        refused = steplog(db, *args)
        assert refused.code == 2, refused.err
        assert "provider 'remote'" in refused.err and "may be retried after" in refused.err
        assert len(refused.err.strip().splitlines()) == 1
    assert event_count(db) == before and completions(server) == 3

    # --ignore-breaker calls anyway; the provider is back, and its first answer closes it
    server.faults.clear()
    allowed = steplog(db, "run", str(path), "--job-id", "third", "--ignore-breaker")
    assert allowed.code == 0, allowed.err
    assert completions(server) == 6
    server.stop()  # the provider is gone: the resume below must need no call
    closed = rows(db, "SELECT job_id FROM events WHERE type = 'provider.circuit_closed'")
    assert closed == [("third",)]
    assert steplog(db, "resume", "first").code == 0  # closed: nothing refuses it now


def test_breaker_half_opens_after_the_cool_down_and_one_probe_closes_it(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.extend(("status", 529, None, {}) for _ in range(2))
    path = pipeline(
        tmp_path,
        server.port,
        {"a": [], "b": ["a"], "c": ["b"]},
        provider=FAST + "max_retries = 4\nbreaker_failures = 2\nbreaker_cooldown_s = 0.3\n",
    )
    assert steplog(db, "run", str(path), "--job-id", "j").code == 1
    assert completions(server) == 2
    time.sleep(0.35)  # the cool-down
    resumed = steplog(db, "resume", "j")
    assert resumed.code == 0, resumed.err
    assert completions(server) == 5
    trail = rows(
        db,
        "SELECT type, step FROM events WHERE type LIKE 'provider.%'"
        " OR (type = 'llm.request') ORDER BY seq",
    )
    assert trail == [
        ("llm.request", "a"),
        ("llm.request", "a"),
        ("provider.circuit_opened", "a"),
        ("provider.circuit_half_open", "a"),
        ("llm.request", "a"),
        ("provider.circuit_closed", "a"),
        ("llm.request", "b"),
        ("llm.request", "c"),
    ]
    assert status_json(db, "j")["status"] == "succeeded"


def test_calls_waiting_on_a_probe_follow_its_outcome(tmp_path, fake_llm_factory):
    """Half-open lets one probe through; parallel steps wait for it rather than fail."""
    db = tmp_path / "s.db"
    server = fake_llm_factory(responder=_slow(0.2))
    server.faults.extend(("status", 500, None, {}) for _ in range(2))
    path = pipeline(
        tmp_path,
        server.port,
        {"a": [], "b": [], "c": []},
        provider=FAST + "max_retries = 0\nbreaker_failures = 2\nbreaker_cooldown_s = 0.2\n"
        "max_concurrency = 1\n",
    )
    outcome, _ = run_here(db, path, "j", tmp_path)
    assert not outcome.succeeded
    time.sleep(0.25)
    path.write_text(path.read_text().replace("max_concurrency = 1", "max_concurrency = 3"))
    store = open_store(db)
    try:
        from steplog.commands.jobs import ResumeCommand, prepare_resume

        prepared = prepare_resume(store, ResumeCommand(job_id="j"))
        assert execute(store, prepared).succeeded
    finally:
        store.close()
    assert rows(db, "SELECT count(*) FROM events WHERE type = 'provider.circuit_half_open'") == [
        (1,)
    ]


# -- budgets --------------------------------------------------------------------------------------

PRICES = '[prices."fake-model"]\ninput_per_mtok = 1000000.0\noutput_per_mtok = 1000000.0\n'


def test_budget_exceeded_then_resume_refused_then_allowed_after_raising_it(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    # $1 per token. a: estimate 2 + 50 = 52 <= 55, actual 2 in + 4 out = $6.
    # b: 6 spent + (5 prompt words + 50) = 61 > 55: refused before any request.
    path = pipeline(
        tmp_path,
        server.port,
        {"a": [], "b": ["a"]},
        provider="options = { max_tokens = 50 }",
        extra="[budget]\nmax_cost = 55.0\n" + PRICES,
        prompts={"a": "Say hello", "b": "Continue: {{ steps.a.output }}"},
    )
    failed = steplog(db, "run", str(path), "--job-id", "j")
    assert failed.code == 1
    assert "budget exceeded" in failed.err
    assert completions(server) == 1
    assert rows(db, "SELECT step FROM events WHERE type = 'llm.request'") == [("a",)]
    assert rows(
        db, "SELECT json_extract(data, '$.error_type') FROM events WHERE type = 'step.failed'"
    ) == [("budget_exceeded",)]
    assert rows(
        db, "SELECT sum(json_extract(data, '$.cost')) FROM events WHERE type = 'llm.response'"
    ) == [(6.0,)]
    doc = status_json(db, "j")
    assert doc["cost"] == 6.0 and doc["steps"]["a"]["cost"] == 6.0
    assert doc["tokens_in"] + doc["tokens_out"] == 6
    assert doc["budget_exceeded"]["limit"] == "max_cost"
    text = steplog(db, "status", "j")
    assert "cost $6.00\n" in text.out and "stopped at max_cost" in text.out

    before = event_count(db)
    refused = steplog(db, "resume", "j")
    assert refused.code == 2
    assert "$6.000000 spent of max_cost $55.0" in refused.err and "raise [budget]" in refused.err
    assert event_count(db) == before

    path.write_text(path.read_text().replace("max_cost = 55.0", "max_cost = 500.0"))
    resumed = steplog(db, "resume", "j")
    assert resumed.code == 0, resumed.err
    assert completions(server) == 2
    doc = status_json(db, "j")
    assert doc["status"] == "succeeded" and doc["budget_exceeded"] is None
    assert doc["cost"] == doc["tokens_in"] + doc["tokens_out"]


def test_max_tokens_budget_stops_before_the_call_that_would_pass_it(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    path = pipeline(
        tmp_path,
        server.port,
        {"a": [], "b": ["a"], "c": ["b"]},
        extra="[budget]\nmax_tokens = 20\n",
    )
    outcome, state = run_here(db, path, "j", tmp_path)
    assert completions(server) == 2
    assert not outcome.succeeded and outcome.failed_steps == ["c"]
    assert state.tokens_in + state.tokens_out <= 20
    stopped = state.budget_exceeded
    assert stopped is not None and stopped["limit"] == "max_tokens" and stopped["step"] == "c"
    assert stopped["tokens_spent"] == state.tokens_in + state.tokens_out
    assert stopped["tokens_spent"] + stopped["estimate_tokens"] > 20


# -- concurrency and rate limits ------------------------------------------------------------------


def _slow(seconds: float, seen: list[int] | None = None):
    """A responder that holds each answer and records how many were in flight at once."""
    lock, inflight = threading.Lock(), [0]

    def respond(body: dict) -> str:
        with lock:
            inflight[0] += 1
            if seen is not None:
                seen.append(inflight[0])
        time.sleep(seconds)
        with lock:
            inflight[0] -= 1
        return default_responder(body)

    return respond


def test_max_concurrency_bounds_in_flight_calls_and_waiting_is_recorded(tmp_path, fake_llm_factory):
    db, seen = tmp_path / "s.db", []
    server = fake_llm_factory(responder=_slow(0.15, seen))
    steps = {f"s{i}": [] for i in range(6)}
    path = pipeline(tmp_path, server.port, steps, provider="max_concurrency = 2")
    outcome, _ = run_here(db, path, "j", tmp_path)
    assert outcome.succeeded and completions(server) == 6
    assert max(seen) <= 2
    waits = rows(
        db,
        "SELECT step, level, json_extract(data, '$.reason') FROM events"
        " WHERE type = 'step.waiting'",
    )
    assert len(waits) >= 4 and {(lvl, why) for _, lvl, why in waits} == {("DEBUG", "concurrency")}
    # the fold, and so the live display, shows a waiting step as such until its call goes out
    store = open_store(db)
    events = list(store.read_job("j"))
    store.close()
    state = manifest.JobState(job_id="j")
    statuses = set()
    for ev in events:
        manifest.apply(state, ev)
        statuses |= {s.status for s in state.steps.values()}
    assert "waiting" in statuses and state.status == "succeeded"
    first_wait = next(i for i, ev in enumerate(events) if ev.type == "step.waiting")
    live = LiveDisplay(manifest.JobState(job_id="j"), console=Console(file=io.StringIO()))
    live(events[: first_wait + 1])
    screen = io.StringIO()
    Console(file=screen, width=120).print(live.render())
    assert "waiting" in screen.getvalue()
    plain = PlainDisplay(manifest.JobState(job_id="j"), out=io.StringIO())
    plain(events)
    assert "waiting for provider remote's concurrency limit (2 in flight)" in plain.out.getvalue()  # type: ignore[attr-defined]


def test_requests_per_minute_spaces_calls(tmp_path, fake_llm_factory):
    db, stamps = tmp_path / "s.db", []

    def stamp(body: dict) -> str:
        stamps.append(time.monotonic())
        return default_responder(body)

    server = fake_llm_factory(responder=stamp)
    steps = {f"s{i}": [] for i in range(4)}
    path = pipeline(tmp_path, server.port, steps, provider="requests_per_minute = 600")
    outcome, _ = run_here(db, path, "j", tmp_path)
    assert outcome.succeeded and completions(server) == 4
    store = open_store(db)
    plain = PlainDisplay(manifest.JobState(job_id="j"), out=io.StringIO())
    plain(list(store.read_job("j")))
    store.close()
    assert "waiting for provider remote's rate limit (600/min, 0." in plain.out.getvalue()  # type: ignore[attr-defined]
    waits = rows(
        db,
        "SELECT json_extract(data, '$.wait_s') FROM events WHERE type = 'step.waiting'"
        " AND json_extract(data, '$.reason') = 'rate_limit' ORDER BY seq",
    )
    assert len(waits) == 3 and all(w > 0 for (w,) in waits)
    # 0.1 s apart at the client: the last arrival is at least ~0.3 s after the first
    assert max(stamps) - min(stamps) >= 0.2


# -- chaos ----------------------------------------------------------------------------------------


def test_chaos_run_with_random_faults_completes_and_audits_every_failed_attempt(tmp_path, fake_llm):
    """26 steps (fan-out of 8 branches of 3, then a join) against a server failing ~30 % of calls."""
    db, rng = tmp_path / "s.db", random.Random(20261126)
    steps: dict[str, list[str]] = {"root": []}
    for b in range(8):
        steps[f"a{b}"] = ["root"]
        steps[f"b{b}"] = [f"a{b}"]
        steps[f"c{b}"] = [f"b{b}"]
    steps["join"] = [f"c{b}" for b in range(8)]
    kinds = [
        ("status", 429, None, {"Retry-After": "0"}),
        ("status", 500, None, {}),
        ("status", 503, None, {}),
        ("status", 529, None, {}),
        ("drop",),
    ]
    plan = [rng.choice(kinds) if rng.random() < 0.3 else None for _ in range(60)]
    server = fake_llm
    server.faults.extend(plan)
    path = pipeline(
        tmp_path,
        server.port,
        steps,
        provider=FAST + "max_retries = 12\nbreaker_failures = 25\n",
    )
    outcome, state = run_here(db, path, "chaos", tmp_path)
    assert outcome.succeeded, state.last_error
    consumed = plan[: len(plan) - len(server.faults)]
    injected = sum(1 for f in consumed if f is not None)
    assert completions(server) == 26 + injected  # one success per step, and each fault
    assert injected >= 5  # the seed really injected faults
    failures = rows(
        db,
        "SELECT json_extract(data, '$.status'), json_extract(data, '$.error_class')"
        " FROM events WHERE type = 'llm.response'"
        " AND json_extract(data, '$.success') = 0",
    )
    assert len(failures) == injected
    expected = Counter(f[1] if f[0] == "status" else None for f in consumed if f is not None)
    assert Counter(s for s, _ in failures) == expected
    assert rows(db, "SELECT count(*) FROM events WHERE type = 'step.retrying'") == [(injected,)]
    assert state.status == "succeeded" and len(state.completed_steps) == 26


# -- cancellation ---------------------------------------------------------------------------------


def test_a_read_timeout_cancels_the_call_and_the_retry_succeeds(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("delay", 2.0))
    path = pipeline(
        tmp_path, server.port, {"a": []}, provider=FAST + "timeout_s = 0.3\nmax_retries = 1\n"
    )
    outcome, state = run_here(db, path, "j", tmp_path)
    assert outcome.succeeded
    assert rows(
        db,
        "SELECT json_extract(data, '$.success'), json_extract(data, '$.error_class')"
        " FROM events WHERE type = 'llm.response' ORDER BY seq",
    ) == [(0, "unavailable"), (1, None)]
    # every attempt is a complete request/response pair; the timed-out one counts as retryable
    assert rows(db, "SELECT type, count(*) FROM events WHERE type LIKE 'llm.%' GROUP BY type") == [
        ("llm.request", 2),
        ("llm.response", 2),
    ]
    assert rows(
        db,
        "SELECT json_extract(data, '$.retryable') FROM events"
        " WHERE type = 'llm.response' AND json_extract(data, '$.success') = 0",
    ) == [(1,)]


def test_ctrl_c_in_the_middle_of_an_http_call_leaves_the_job_resumable(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("delay", 30.0))  # a slow first byte for the first call
    path = pipeline(tmp_path, server.port, {"a": [], "b": ["a"]})
    proc = spawn(db, "run", str(path), "--job-id", "j", env={"STEPLOG_GRACE_S": "0"})
    try:
        deadline = time.monotonic() + 30
        while completions(server) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert completions(server) == 1  # the request is at the server, its answer is not
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert status_json(db, "j")["status"] == "interrupted"
    assert rows(db, "SELECT count(*) FROM events WHERE type = 'llm.response'") == [(0,)]
    resumed = steplog(db, "resume", "j")
    assert resumed.code == 0, resumed.err
    assert completions(server) == 3  # a again (its first answer never came), then b
    answered = rows(
        db,
        "SELECT step, count(*) FROM events WHERE type = 'llm.response'"
        " AND json_extract(data, '$.success') = 1 GROUP BY step ORDER BY step",
    )
    assert answered == [("a", 1), ("b", 1)]
    assert status_json(db, "j")["status"] == "succeeded"


def test_a_failure_that_opens_the_circuit_is_not_retried_into_it(tmp_path, fake_llm):
    """The retry would be refused by the breaker the failure just opened: no step.retrying, no
    sleep; the step fails with its own error, saying why it was not retried."""
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.extend(("status", 503, None, {}) for _ in range(10))
    path = pipeline(
        tmp_path,
        server.port,
        {"a": []},
        provider=FAST + "max_retries = 5\nbreaker_failures = 2\nbreaker_cooldown_s = 600\n",
    )
    outcome, _ = run_here(db, path, "j", tmp_path)
    assert not outcome.succeeded and completions(server) == 2
    trail = rows(
        db,
        "SELECT type FROM events WHERE type IN ('llm.request', 'llm.response',"
        " 'step.retrying', 'provider.circuit_opened', 'step.failed') ORDER BY seq",
    )
    assert [t for (t,) in trail] == [
        "llm.request",
        "llm.response",
        "step.retrying",
        "llm.request",
        "llm.response",
        "provider.circuit_opened",
        "step.failed",
    ]
    [(error_type, error)] = rows(
        db,
        "SELECT json_extract(data, '$.error_type'),"
        " json_extract(data, '$.error') FROM events"
        " WHERE type = 'step.failed'",
    )
    assert error_type == "http_error" and "HTTP 503" in error
    assert f"not retried: the circuit for openai http://127.0.0.1:{server.port}/v1 is open" in error


def test_a_retry_after_the_cool_down_goes_ahead_as_the_probe(tmp_path, fake_llm):
    """Retry-After (0.3 s) outlasts the cool-down (0.1 s): the retry is the half-open probe."""
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.extend(("status", 429, None, {"Retry-After": "0.3"}) for _ in range(2))
    path = pipeline(
        tmp_path,
        server.port,
        {"a": []},
        provider=FAST + "max_retries = 2\nbreaker_failures = 2\nbreaker_cooldown_s = 0.1\n",
    )
    outcome, _ = run_here(db, path, "j", tmp_path)
    assert outcome.succeeded and completions(server) == 3
    retries = rows(
        db,
        "SELECT json_extract(data, '$.delay_s'), json_extract(data, '$.retry_after_s')"
        " FROM events WHERE type = 'step.retrying' ORDER BY seq",
    )
    assert len(retries) == 2 and all(delay >= 0.3 and asked == 0.3 for delay, asked in retries)
    shown = steplog(db, "events", "j", "--type", "step.retrying", "--json").out
    assert shown.count('"retry_after_s": 0.3') == 2
    store = open_store(db)
    plain = PlainDisplay(manifest.JobState(job_id="j"), out=io.StringIO())
    plain(list(store.read_job("j")))
    store.close()
    assert plain.out.getvalue().count("(the server asked for 0.3s): ") == 2  # type: ignore[attr-defined]
    assert [
        t for (t,) in rows(db, "SELECT type FROM events WHERE type LIKE 'provider.%' ORDER BY seq")
    ] == ["provider.circuit_opened", "provider.circuit_half_open", "provider.circuit_closed"]


def test_status_says_when_the_cost_leaves_out_calls_of_a_model_without_a_price(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    bare = pipeline(tmp_path, server.port, {"a": [], "b": ["a"]})
    ran = steplog(db, "run", str(bare), "--job-id", "bare")
    assert ran.code == 0 and "$0.00 + 2 unpriced calls" in ran.out
    priced = pipeline(
        tmp_path,
        server.port,
        {"a": [], "b": ["a"]},
        extra=PRICES,
        prompts={"a": "Other", "b": "Words {{ steps.a.output }}"},
        name="q.toml",
    )
    assert steplog(db, "run", str(priced), "--job-id", "priced").code == 0
    text = steplog(db, "status", "bare").out
    assert "cost $0.00 + 2 unpriced calls" in text and "$0.00 + 1 unpriced call " in text
    doc = status_json(db, "bare")
    assert doc["unpriced_calls"] == 2 and doc["steps"]["a"]["unpriced_calls"] == 1
    doc = status_json(db, "priced")
    assert doc["unpriced_calls"] == 0 and doc["cost"] > 0
    assert "unpriced" not in steplog(db, "status", "priced").out
