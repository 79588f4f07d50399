"""Budgets count what was spent: spend (the job's llm.response figures) and the reservations of
calls in flight are two figures; a call is refused only on spend, waits while reservations
alone stand in the way, and resume is refused only while the real spend leaves no room.

Real parts: SQLite files, the fake LLM server on 127.0.0.1 (tests/conftest.py), the executor
in this process.
"""

from __future__ import annotations

import io
import re
import tempfile
import threading
from collections import Counter
from copy import deepcopy
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from steplog.commands.cli.display import PlainDisplay
from steplog.commands.cli.render import print_manifest
from steplog.commands.jobs import RunCommand, execute, prepare_run
from steplog.eventstore.events import (
    BudgetExceeded,
    JobFailed,
    JobInterrupted,
    LLMResponded,
    NewEvent,
    StepFailed,
    StepStarted,
    StepSucceeded,
)
from steplog.eventstore.record import StoredEvent, blob_sha256
from steplog.executor.budget import Spend
from steplog.executor.runner import JobOutcome, JobRunner
from steplog.projections import manifest
from steplog.projections.store import open_store
from tests.fake_llm_server import last_user_message
from tests.on_disk import db_rows, event_count

# $1 a token, in and out, so every figure below is a whole number of dollars.
PRICES = '[prices."fake-model"]\ninput_per_mtok = 1000000.0\noutput_per_mtok = 1000000.0\n'


def pipeline_file(
    path: Path,
    port: int,
    steps: dict[str, dict[str, str]],
    *,
    max_cost: float,
    provider: str = "",
) -> Path:
    """Independent text steps on one OpenAI-compatible provider; prompts `Step NAME.`."""
    lines = [
        'name = "budget"',
        f"[budget]\nmax_cost = {max_cost}",
        PRICES,
        "[providers.remote]",
        'kind = "openai"',
        f'base_url = "http://127.0.0.1:{port}/v1"',
        'model = "fake-model"',
        "options = { max_tokens = 50 }",
        "backoff_base_s = 0.001\nbackoff_cap_s = 0.005\nbreaker_failures = 1000",
        provider,
    ]
    for name, extra in steps.items():
        lines += [f"[steps.{name}]", 'provider = "remote"', f'prompt = "Step {name}."']
        lines += [f"{key} = {value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def llm_responses(db: Path, job: str) -> list[dict]:
    rows = db_rows(db, "SELECT data FROM events WHERE job_id = ? AND type = 'llm.response'", (job,))
    return [orjson.loads(data) for (data,) in rows]


def never_over(db: Path, job: str, max_cost: float) -> None:
    """Replaying the log: at every llm.request, spent so far plus every reservation held then
    (its own included) is within max_cost."""
    spent, held = 0.0, {}
    rows = db_rows(
        db, "SELECT type, step, data FROM events WHERE job_id = ? ORDER BY version", (job,)
    )
    for type_, step, data in rows:
        d = orjson.loads(data)
        if type_ == "llm.request":
            held[step] = d["cost_reserved"]
            assert spent + sum(held.values()) <= max_cost + 1e-9, (step, spent, held)
        elif type_ == "llm.response":
            held.pop(step, None)
            spent += d.get("cost") or 0.0


# -- siblings in flight --------------------------------------------------------------------------

# Each call is estimated at 2 prompt words + max_tokens 50 = $52 and really costs 2 in + 4 out
# ("answer <hex>: Step x.") = $6. max_cost $110 holds two reservations (104), not three (156):
# the old check refused the third sibling at once ($104 "spent" + $52 > $110), though the four
# calls cost $24 in all. Every step starts in the same event-loop tick, before any call is sent,
# so a and b reserve and c and d find only reservations in the way, whatever the timing.
SIBLINGS = {"a": {}, "b": {}, "c": {}, "d": {}}


def test_siblings_in_flight_reserving_max_tokens_wait_instead_of_being_refused(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    path = pipeline_file(tmp_path / "p.toml", fake_llm.port, SIBLINGS, max_cost=110)
    store = open_store(db)
    snapshots: list[tuple[str, manifest.JobState, tuple]] = []
    try:
        prepared = prepare_run(
            store, RunCommand(pipeline_path=path, job_id="j", workspace=tmp_path / "ws")
        )
        display = PlainDisplay(prepared.state, quiet=True)

        def observe(stored: list[StoredEvent]) -> None:
            display(stored)
            for ev in stored:
                if ev.type == "step.waiting":  # what status and SQL show while it waits
                    (row,) = store.conn.execute(
                        "SELECT cost, tokens_reserved, cost_reserved FROM job_summary"
                    ).fetchall()
                    snapshots.append((ev.step or "", deepcopy(display.state), tuple(row)))

        outcome = execute(store, prepared, observer=observe)
    finally:
        store.close()
    assert outcome.succeeded, outcome
    types = Counter(t for (t,) in db_rows(db, "SELECT type FROM events WHERE job_id = 'j'"))
    assert types["budget.exceeded"] == 0 and types["step.failed"] == 0
    assert types["llm.request"] == types["llm.response"] == 4
    waits = db_rows(
        db,
        "SELECT step, json_extract(data, '$.reason'), json_extract(data, '$.limit') FROM events"
        " WHERE type = 'step.waiting' ORDER BY version",
    )
    assert waits == [("c", "budget", 110.0), ("d", "budget", 110.0)]
    # while c and d waited, a and b held $52 each and nothing was spent yet
    for _, state, (cost, tokens_reserved, cost_reserved) in snapshots[:2]:
        assert (state.cost, state.tokens_reserved, state.cost_reserved) == (0.0, 104, 104.0)
        assert (cost, tokens_reserved, cost_reserved) == (None, 104, 104.0)
        shown = io.StringIO()
        print_manifest(Console(file=shown, width=200), state)
        assert "reserved by calls in flight: 104 tokens, $104.000000" in shown.getvalue()
    # spent is the sum of the llm.response costs, everywhere; nothing is reserved any more
    costs = [d["cost"] for d in llm_responses(db, "j")]
    assert costs == [6.0] * 4
    assert db_rows(db, "SELECT cost, tokens_reserved, cost_reserved FROM job_summary") == [
        (24.0, 0, 0.0)
    ]
    state = manifest.project("j", _events(db, "j"))
    assert (state.cost, state.tokens_reserved, state.cost_reserved) == (24.0, 0, 0.0)
    never_over(db, "j", 110)


def _events(db: Path, job: str) -> list[StoredEvent]:
    store = open_store(db)
    try:
        return list(store.read_job(job))
    finally:
        store.close()


# -- a real budget stop, and resume ---------------------------------------------------------------


def test_a_stop_records_spent_and_reserved_apart_and_resume_is_refused_only_on_real_spend(
    tmp_path, fake_llm, cli
):
    """`big` (max_tokens 500: $502) cannot fit under $110 even with nothing spent: it is refused
    at once, while a and b hold $104 between them. The event says $0 spent, $104 reserved; the
    old figure, "$104 spent", was the reservations. Resume then needs spent ($18 once a, b, c
    answered) + $502 to fit: refused at $519, allowed at $520; a phantom $104 would refuse it."""
    db = tmp_path / "s.db"
    steps = {"a": {}, "b": {}, "c": {}, "big": {"options": "{ max_tokens = 500 }"}}
    path = pipeline_file(tmp_path / "p.toml", fake_llm.port, steps, max_cost=110)
    run = cli(db, "run", str(path), "--job-id", "j", "--workspace", str(tmp_path / "ws"), "-q")
    assert run.code == 1, run.err
    assert "$0.000000 spent + $104.000000 reserved by 2 calls in flight" in run.out + run.err
    (stopped,) = db_rows(
        db, "SELECT step, data FROM events WHERE type = 'budget.exceeded' AND job_id = 'j'"
    )
    assert stopped[0] == "big"
    data = orjson.loads(stopped[1])
    assert (data["cost_spent"], data["cost_reserved"], data["estimate_cost"]) == (0.0, 104.0, 502.0)
    assert (data["tokens_spent"], data["tokens_reserved"], data["calls_in_flight"]) == (0, 104, 2)
    spent = sum(d["cost"] for d in llm_responses(db, "j"))
    assert spent == 18.0
    status = cli(db, "status", "j", "--json")
    doc = orjson.loads(status.out)
    assert (doc["cost"], doc["tokens_reserved"], doc["cost_reserved"]) == (18.0, 0, 0.0)
    assert doc["budget_exceeded"]["cost_reserved"] == 104.0

    before = event_count(db)
    refused = cli(db, "resume", "j")
    assert refused.code == 2
    assert "($18.000000 spent of max_cost $110.0;" in refused.err, refused.err
    path.write_text(path.read_text().replace("max_cost = 110", "max_cost = 519"))
    refused = cli(db, "resume", "j")
    assert refused.code == 2 and "$18.000000 spent of max_cost $519.0" in refused.err
    assert event_count(db) == before
    path.write_text(path.read_text().replace("max_cost = 519", "max_cost = 520"))
    resumed = cli(db, "resume", "j", "-q")
    assert resumed.code == 0, resumed.err
    costs = [d["cost"] for d in llm_responses(db, "j")]
    assert sorted(costs) == [6.0, 6.0, 6.0, 6.0]  # big really cost 2 in + 4 out
    (row,) = db_rows(db, "SELECT cost, tokens_reserved, cost_reserved FROM job_summary")
    assert row == (24.0, 0, 0.0)


# -- logs written before schema 5 -----------------------------------------------------------------

OFFLINE = """
name = "old"
[budget]
max_cost = 0.004
[providers.local]
kind = "offline"
[steps.done]
provider = "local"
prompt = "Step done."
[steps.stopped]
provider = "local"
prompt = "Step stopped."
"""


def test_an_old_phantom_budget_stop_reads_and_resumes_on_what_was_really_spent(tmp_path, cli):
    """The issue's log: max_cost $0.004, a budget.exceeded of the old shape (no reserved fields)
    saying $0.003118 spent, while the llm.response costs sum to $0.000094. It folds, status
    shows it, and resume goes ahead: the real spend leaves room for the refused call."""
    db = tmp_path / "s.db"
    path = tmp_path / "p.toml"
    path.write_text(OFFLINE)
    store = open_store(db)
    try:
        prepared = prepare_run(
            store, RunCommand(pipeline_path=path, job_id="old", workspace=tmp_path / "ws")
        )
        fingerprints = prepared.pipeline.step_fingerprints
        answer = b"answer"
        # what the old code wrote: no reserved fields, and "spent" held the reservations
        old_stop = {
            "provider": "local",
            "model": "offline-1",
            "limit": "max_cost",
            "max_tokens": None,
            "max_cost": 0.004,
            "tokens_spent": 3118,
            "cost_spent": 0.003118,
            "estimate_tokens": 1002,
            "estimate_cost": 0.001002,
        }
        NewEvent.parse("budget.exceeded", old_stop, step="stopped")  # still valid (import)
        events = [
            NewEvent.of(StepStarted(attempt=1, fingerprint=fingerprints["done"]), "done"),
            NewEvent.of(
                LLMResponded(
                    provider="local",
                    model="offline-1",
                    duration_s=0.1,
                    tokens_in=47,
                    tokens_out=47,
                    success=True,
                    attempt=1,
                    cache_key="k" * 64,
                    cost=0.000094,
                ),
                "done",
            ),
            NewEvent.of(
                StepSucceeded(
                    output_sha256=blob_sha256(answer),
                    output="text",
                    cache_hit=False,
                    cache_key="k" * 64,
                    duration_s=0.1,
                    fingerprint=fingerprints["done"],
                ),
                "done",
            ),
            NewEvent.of(StepStarted(attempt=1, fingerprint=fingerprints["stopped"]), "stopped"),
            None,  # the old budget.exceeded, as raw JSON below
            NewEvent.of(
                StepFailed(
                    error="budget exceeded", error_type="budget_exceeded", attempt=1, duration_s=0
                ),
                "stopped",
            ),
            NewEvent.of(JobFailed(error="step stopped failed", failed_steps=["stopped"])),
        ]
        rows = [
            (e.ts, e.level, e.type, e.step, e.data_json())
            if e is not None
            else (
                events[3].ts,
                "WARNING",
                "budget.exceeded",
                "stopped",
                orjson.dumps(old_stop).decode(),
            )
            for e in events
        ]
        with store.write_transaction() as conn:
            store.append_txn(conn, "old", rows, prepared.state.version, [answer])
    finally:
        store.close()
    status = cli(db, "status", "old")
    assert status.code == 0, status.err
    assert "stopped at max_cost" in status.out and "cost $0.000094" in status.out
    resumed = cli(db, "resume", "old", "-q")
    assert resumed.code == 0, resumed.err
    doc = orjson.loads(cli(db, "status", "old", "--json").out)
    assert doc["status"] == "succeeded" and doc["budget_exceeded"] is None


# -- any interleaving of calls --------------------------------------------------------------------

ANSWER, RETRY, FINAL, TRUNCATED = "answer", "retry", "final", "truncated"
OUTCOME_FAULTS = {
    ANSWER: None,
    RETRY: ("status", 503, None, {}),
    FINAL: ("status", 400, None, {}),
    TRUNCATED: ("truncated", "cut off here after seven words"),  # paid for, then refused
}


class Switchboard:
    """Holds each completion at the server until the test says how it ends, so calls answer,
    fail and are cancelled in the order a test chooses."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._arrived: Counter[str] = Counter()
        self._outcomes: dict[tuple[str, int], str] = {}
        self._closed = False

    def decide(self, body: dict) -> tuple | None:  # in the server's handler thread
        match = re.search(r"Step (\w+)\.", last_user_message(body))
        step = match.group(1) if match else "?"
        with self._cond:
            self._arrived[step] += 1
            call = (step, self._arrived[step])
            self._cond.notify_all()
            self._cond.wait_for(lambda: call in self._outcomes or self._closed)
            return OUTCOME_FAULTS[self._outcomes.get(call, RETRY)]

    def release(self, step: str, attempt: int, outcome: str) -> None:
        """Wait for the step's attempt to reach the server, then end it so (any thread)."""
        with self._cond:
            self._cond.wait_for(lambda: self._arrived[step] >= attempt or self._closed)
            self._outcomes[(step, attempt)] = outcome
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@st.composite
def interleavings(draw: st.DrawFn):
    """Per step its attempts' outcomes (up to two retried failures, then an answer, a failure
    or a paid-for truncation), the order the server ends them in, and maybe a cancellation of
    everything under way after some of them."""
    steps = [f"s{i}" for i in range(draw(st.integers(1, 4)))]
    scripts = {
        s: [RETRY] * draw(st.integers(0, 2)) + [draw(st.sampled_from([ANSWER, FINAL, TRUNCATED]))]
        for s in steps
    }
    order = draw(st.permutations([s for s in steps for _ in scripts[s]]))
    cancel_after = draw(st.none() | st.integers(0, len(order)))
    return scripts, order, cancel_after


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(interleavings())
def test_spent_is_the_sum_of_llm_responses_and_nothing_stays_reserved(fake_llm, case):
    scripts, order, cancel_after = case
    board = Switchboard()
    fake_llm.reset()
    fake_llm.decide = board.decide
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        steps = {s: {"on_truncation": '"error"'} for s in scripts}
        path = pipeline_file(
            root / "p.toml",
            fake_llm.port,
            steps,
            max_cost=10**9,  # reservations are held, and no call ever waits for room
            provider="max_retries = 2\nmax_concurrency = 8",
        )
        store = open_store(root / "s.db")
        try:
            prepared = prepare_run(
                store, RunCommand(pipeline_path=path, job_id="j", workspace=root / "ws")
            )
            committed = Spend()
            runner: JobRunner

            def observe(stored: list[StoredEvent]) -> None:
                """At every commit: reservations are never negative, none without a call."""
                nonlocal committed
                for ev in stored:
                    if ev.type == "llm.response":
                        d = orjson.loads(ev.data_json)
                        used = d.get("tokens_in", 0) + d.get("tokens_out", 0)
                        committed = committed + Spend(used, d.get("cost") or 0.0)
                ledger = runner.calls.ledger
                assert ledger.in_flight >= 0 and ledger.reserved.tokens >= 0
                assert ledger.reserved.cost >= 0
                if ledger.in_flight == 0:
                    assert ledger.reserved == Spend()
                # an answer is counted as it arrives, and committed with its step's outcome
                assert committed.tokens <= ledger.spent.tokens

            runner = JobRunner(
                store,
                prepared.job_id,
                prepared.pipeline,
                prepared.inputs,
                prepared.workspace,
                version=prepared.state.version,
                observer=observe,
            )

            async def drive() -> None:
                attempts: Counter[str] = Counter()
                for n, step in enumerate(order):
                    if n == cancel_after:
                        break
                    attempts[step] += 1
                    outcome = scripts[step][attempts[step] - 1]
                    await anyio.to_thread.run_sync(board.release, step, attempts[step], outcome)
                if cancel_after is not None:
                    runner.stop_now()

            async def main() -> JobOutcome:
                async with anyio.create_task_group() as group:
                    group.start_soon(drive)
                    outcome = await runner.run(prepared.plan)
                    board.close()  # a drive still waiting for a call that will not come
                return outcome

            if anyio.run(main).interrupted:  # as execute() records a stop
                store.append("j", [NewEvent.of(JobInterrupted(signal="cancelled"))])
            ledger = runner.calls.ledger
            assert ledger.reserved == Spend() and ledger.in_flight == 0
            responses = [
                orjson.loads(data)
                for (data,) in store.conn.execute(
                    "SELECT data FROM events WHERE type = 'llm.response'"
                )
            ]
            tokens = sum(d.get("tokens_in", 0) + d.get("tokens_out", 0) for d in responses)
            cost = sum(d.get("cost") or 0.0 for d in responses)
            assert ledger.spent.tokens == tokens == committed.tokens
            assert abs(ledger.spent.cost - cost) < 1e-9
            state = manifest.project("j", list(store.read_job("j")))
            assert (state.tokens_in + state.tokens_out, state.tokens_reserved) == (tokens, 0)
            assert abs(state.cost - cost) < 1e-9
            if cancel_after is None:  # every call the script ends was made and answered for
                assert len(responses) == len(order)
        finally:
            board.close()
            store.close()
            fake_llm.decide = None


@pytest.mark.parametrize("outcome", [ANSWER, TRUNCATED])
def test_the_switchboard_ends_a_call_as_told(fake_llm, tmp_path, outcome):
    """The interleaving property's harness really drives the calls: one step, one outcome."""
    board = Switchboard()
    fake_llm.decide = board.decide
    path = pipeline_file(
        tmp_path / "p.toml", fake_llm.port, {"s0": {"on_truncation": '"error"'}}, max_cost=10**9
    )
    threading.Thread(target=board.release, args=("s0", 1, outcome), daemon=True).start()
    store = open_store(tmp_path / "s.db")
    try:
        prepared = prepare_run(
            store, RunCommand(pipeline_path=path, job_id="j", workspace=tmp_path / "ws")
        )
        assert execute(store, prepared).succeeded == (outcome == ANSWER)
    finally:
        board.close()
        store.close()
    (success,) = db_rows(
        tmp_path / "s.db",
        "SELECT json_extract(data, '$.success') FROM events WHERE type = 'llm.response'",
    )[0]
    assert success == (outcome == ANSWER)


def test_a_budget_exceeded_event_without_the_reserved_fields_is_still_valid():
    old = BudgetExceeded(
        provider="p", model="m", limit="max_tokens", tokens_spent=5, cost_spent=0, estimate_tokens=9
    )
    assert old.tokens_reserved is None and old.cost_reserved is None and old.calls_in_flight is None
