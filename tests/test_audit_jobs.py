"""The audit views, `steplog audit`, `verify` and `timeline` on the kinds of job a real database
holds besides plain runs: a fork cut inside a step, a fork of an ended job, a fork resumed, an
imported predecessor job (with a retry inside one run), and a job whose provider is a closed
port."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from steplog.commands.timeline import build
from steplog.projections.manifest import parse_ts
from steplog.projections.store import open_store
from tests.cli_process import status_json, steplog
from tests.fake_llm_server import closed_port
from tests.on_disk import EXAMPLE, db_rows
from tests.test_readme import sql_recipes

pytestmark = pytest.mark.slow  # the database every test reads is made by the real CLI

PREDECESSOR = Path(__file__).parent / "fixtures" / "predecessor_events.jsonl"

# One run of a step with a retry inside it, then a resume that runs the step again.
REQ = {"provider": "x", "model": "m", "prompt_tokens": 1}
FAILED = {"provider": "x", "duration_s": 1, "success": False}
RETRIED = [
    {"type": "job.started", "data": {"pipeline": "p"}},
    {"type": "step.started", "step": "a"},
    {"type": "llm.request", "step": "a", "data": REQ},
    {"type": "llm.response", "step": "a", "data": FAILED},
    {"type": "step.retrying", "step": "a"},
    {"type": "llm.request", "step": "a", "data": REQ},
    {"type": "llm.response", "step": "a", "data": FAILED},
    {"type": "step.failed", "step": "a", "data": {"error": "gave up"}},
    {"type": "job.failed", "data": {"error": "step a failed"}},
    {"type": "job.started", "data": {}},
    {"type": "step.started", "step": "a"},
    {"type": "llm.request", "step": "a", "data": REQ},
    {"type": "llm.response", "step": "a", "data": {**FAILED, "success": True}},
    {"type": "step.succeeded", "step": "a"},
    {"type": "job.succeeded", "data": {}},
]

DOWN = """\
name = "down"
[providers.remote]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
model = "m1"
max_retries = 0
[steps.only]
provider = "remote"
prompt = "Hello."
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jobs")
    db = root / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "src", "-q").code == 0
    cut = steplog(db, "replay", "src", "--until", "llm.request:builder", "--fork", "cut")
    assert cut.code == 0, cut.err
    assert steplog(db, "replay", "src", "--until", "job.succeeded", "--fork", "ended").code == 0
    again = steplog(db, "replay", "src", "--until", "step.succeeded:builder", "--fork", "again")
    assert again.code == 0, again.err
    assert steplog(db, "resume", "again", "-q").code == 0  # docs and qa: cache hits
    assert steplog(db, "import", str(PREDECESSOR)).code == 0
    retried = root / "retried.jsonl"
    retried.write_text(
        "".join(
            json.dumps({"ts": f"2025-10-22T10:00:{i:02d}Z", "level": "INFO", "job_id": "rt", **o})
            + "\n"
            for i, o in enumerate(RETRIED)
        )
    )
    assert steplog(db, "import", str(retried)).code == 0
    down = root / "down.toml"
    down.write_text(DOWN.format(port=closed_port()))
    assert steplog(db, "run", str(down), "--job-id", "down", "-q").code == 1
    return db


@pytest.fixture
def db(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "s.db"
    shutil.copy(built, copy)
    return copy


def rows(db: Path, sql: str, *params) -> list[tuple]:
    return db_rows(db, sql, params)


# -- imported predecessor jobs ---------------------------------------------------------------


def test_an_imported_job_numbers_its_calls_within_each_run_as_steplog_does(db):
    # qa's second call came in a later run (after a resume): it is attempt 1 again, not a retry
    assert rows(
        db, "SELECT step, attempt, success FROM llm_calls WHERE job_id = 'job_abc' ORDER BY seq"
    ) == [("architect", 1, 1), ("qa", 1, 0), ("qa", 1, 1)]
    # a retry inside one run is attempt 2; the resumed run starts at 1 again
    assert rows(db, "SELECT attempt, success FROM llm_calls WHERE job_id = 'rt' ORDER BY seq") == [
        (1, 0),
        (2, 0),
        (1, 1),
    ]
    assert rows(
        db,
        "SELECT json_extract(data, '$.attempt') FROM events WHERE job_id = 'rt'"
        " AND type = 'step.retrying'",
    ) == [(1,)]
    assert rows(
        db, "SELECT step, attempt, status FROM step_runs WHERE job_id = 'rt' ORDER BY seq"
    ) == [("a", 1, "failed"), ("a", 2, "succeeded")]


def test_audit_of_an_imported_job_counts_retries_and_names_unexplained_failures(db):
    doc = json.loads(steplog(db, "audit", "job_abc", "--json").out)
    assert doc["retries"] == {}
    assert json.loads(steplog(db, "audit", "rt", "--json").out)["retries"] == {"a": 1}
    s = doc["summary"]
    assert (s["status"], s["steps"], s["steps_succeeded"], s["calls"], s["failed_calls"]) == (
        "succeeded",
        3,
        3,
        3,
        1,
    )
    text = steplog(db, "audit", "job_abc")
    assert text.code == 0, text.err
    assert "None" not in text.out
    assert "call qa attempt 1: no error recorded" in text.out
    assert "step qa attempt 1 (predecessor): provider timed out" in text.out
    assert "no files written" in steplog(db, "audit", "rt").out


def test_an_imported_job_draws_and_verifies(db, tmp_path):
    out = tmp_path / "abc.svg"
    result = steplog(db, "timeline", "job_abc", "--output", str(out))
    assert result.code == 0 and "(6 bars, 3 steps)" in result.out
    assert steplog(db, "verify").code == 0


# -- forks -------------------------------------------------------------------------------------


def test_a_fork_cut_inside_a_step_shows_that_run_interrupted_not_running(db):
    assert rows(db, "SELECT step, status FROM step_runs WHERE job_id = 'cut' ORDER BY seq") == [
        ("architect", "succeeded"),
        ("builder", "interrupted"),
    ]
    # the copied history is the source's up to the point, in every view
    assert rows(db, "SELECT step, attempt, success FROM llm_calls WHERE job_id = 'cut'") == [
        ("architect", 1, 1),
        ("builder", 1, None),
    ]
    assert rows(
        db,
        "SELECT status, steps, steps_succeeded, calls, finished FROM job_summary"
        " WHERE job_id = 'cut'",
    ) == [("created", 4, 1, 2, None)]


def test_a_fork_of_an_ended_job_is_not_finished_as_status_says(db):
    [(finished, status)] = rows(
        db, "SELECT finished, status FROM job_summary WHERE job_id = 'ended'"
    )
    doc = status_json(db, "ended")
    assert (finished, status) == (doc["finished_ts"], doc["status"]) == (None, "created")
    [(src_calls,)] = rows(db, "SELECT calls FROM job_summary WHERE job_id = 'src'")
    assert rows(db, "SELECT calls, steps_succeeded FROM job_summary WHERE job_id = 'ended'") == [
        (src_calls, 4)
    ]


def test_a_fork_cut_inside_a_step_is_drawn_up_to_its_point(db):
    store = open_store(db)
    try:
        events = list(store.read_job("cut"))
    finally:
        store.close()
    tl = build("cut", events)
    point = (
        parse_ts(events[-2].ts) - parse_ts(events[0].ts)
    ).total_seconds()  # the last copied event
    [cut] = [b for b in tl.bars if b.step == "builder"]
    assert (cut.outcome, cut.end) == ("interrupted", point)
    [marker] = tl.markers
    assert marker.t == point and marker.text == "forked from src at event 10"
    assert tl.span == point  # the wait until the fork was made is no part of the picture


# -- verify covers the breakers projection -----------------------------------------------------


def test_verify_names_a_tampered_or_missing_breaker_row(db):
    [(endpoint, failures)] = rows(db, "SELECT endpoint, failures FROM breakers")
    assert failures == 1
    assert steplog(db, "verify").code == 0
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE breakers SET failures = 0")
    conn.close()
    result = steplog(db, "verify")
    assert result.code == 1
    assert result.out.splitlines() == [
        f"projection: projection breakers: row endpoint={endpoint!r} drifted from the log:"
        " failures=0 (fold: 1)"
    ]
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM breakers")
    conn.close()
    assert f"projection breakers: row endpoint={endpoint!r} is missing" in steplog(db, "verify").out


def test_a_forks_copied_history_is_marked_and_counted_once(db):
    assert rows(db, "SELECT step, copied FROM llm_calls WHERE job_id = 'again' ORDER BY seq") == [
        ("architect", 1),
        ("builder", 1),
    ]
    assert rows(
        db,
        "SELECT step, status, cache_hit, copied FROM step_runs WHERE job_id = 'again' ORDER BY seq",
    ) == [
        ("architect", "succeeded", 0, 1),
        ("builder", "succeeded", 0, 1),
        ("architect", "skipped", None, 0),
        ("builder", "skipped", None, 0),
        ("docs", "succeeded", 1, 0),
        ("qa", "succeeded", 1, 0),
    ]
    assert rows(db, "SELECT DISTINCT copied FROM file_writes WHERE job_id = 'again'") == [(1,)]
    assert rows(
        db,
        "SELECT DISTINCT copied FROM llm_calls WHERE job_id IN ('src', 'job_abc')"
        " UNION SELECT DISTINCT copied FROM step_runs WHERE job_id = 'src'",
    ) == [(0,)]
    # the cache was asked 4 times by src (misses) and twice by the resumed fork (hits); the
    # copies of src's lookups in three forks are no lookups
    assert rows(db, "SELECT hits, misses FROM cache_stats WHERE model = 'offline-1'") == [(2, 4)]
    # job_abc's imported hit: no call in the log paid for it, so no provider to name
    assert rows(db, "SELECT hits, misses FROM cache_stats WHERE provider IS NULL") == [(1, 0)]
    # the fork's own summary includes its copied history, as status does
    [(calls, hits)] = rows(db, "SELECT calls, cache_hits FROM job_summary WHERE job_id = 'again'")
    assert (
        (calls, hits)
        == (2, 2)
        == (status_json(db, "again")["llm_calls"], status_json(db, "again")["cache_hits"])
    )


def test_the_tokens_recipe_counts_each_real_call_once(db):
    [recipe] = [s for s in sql_recipes() if s.startswith("-- Tokens per step across all jobs")]
    got = {r[0]: r[1:] for r in rows(db, recipe)}
    forks = {"cut", "ended", "again"}
    calls: dict[str, list[int]] = {}
    for job, step, data in rows(
        db, "SELECT job_id, step, data FROM events WHERE type = 'llm.response'"
    ):
        if job not in forks:  # every call a fork holds is a copy: none of them called again
            d = json.loads(data)
            c = calls.setdefault(step, [0, 0, 0])
            c[0], c[1], c[2] = c[0] + 1, c[1] + d["tokens_in"], c[2] + d["tokens_out"]
    assert got == {step: (n, tin, tout, tin + tout) for step, (n, tin, tout) in calls.items()}


def test_audit_of_a_fork_marks_its_copied_history(db):
    doc = json.loads(steplog(db, "audit", "again", "--json").out)
    calls = [(c["step"], c["copied"]) for c in doc["llm_calls"]]
    assert calls == [("architect", 1), ("builder", 1)]
    assert [f["copied"] for f in doc["files"]] == [1, 1, 1]
    text = steplog(db, "audit", "again").out
    assert text.count("succeeded (copied)") == 2 and text.count("ok (copied)") == 2
    assert "job.forked" in text
