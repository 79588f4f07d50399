"""End to end through the real CLI in subprocesses, on real SQLite files; the tests taking the
`database` fixture run once on a SQLite file and once on a PostgreSQL database."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_process import (
    comparable_manifest,
    signal_when,
    spawn,
    status_json,
    steplog,
    wait_for,
)
from tests.fake_llm_server import closed_port
from tests.on_disk import EXAMPLE, calls, db_rows, event_count, workspace_files

pytestmark = pytest.mark.slow


def factory(tmp_path: Path, **replacements: str) -> Path:
    """A copy of the example pipeline, with text replaced (e.g. to make a step fail or slow)."""
    text = EXAMPLE.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


SLOW = {
    'kind = "offline"\nmodel = "offline-1"': 'kind = "offline"\nmodel = "offline-1"\noptions = { delay_s = 0.4 }'
}
# for tests that must act while a call is in flight, even on a slow, busy machine
SLOWER = {
    'kind = "offline"\nmodel = "offline-1"': 'kind = "offline"\nmodel = "offline-1"\noptions = { delay_s = 1.5 }'
}
DOCS_FAILS = {
    '[steps.docs]\nneeds = ["builder"]\nprovider = "local"': '[steps.docs]\nneeds = ["builder"]\nprovider = "local"\noptions = { fail = true }'
}


def test_example_runs_then_second_run_is_served_by_the_cache(tmp_path, database):
    db, log = database, tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    first = steplog(db, "run", str(EXAMPLE), "--job-id", "one", env=env)
    assert first.code == 0, first.err
    assert calls(log) == Counter({"architect": 1, "builder": 1, "docs": 1, "qa": 1})
    files = workspace_files(tmp_path / "runs" / "one")
    assert set(files) == {"app.py", "tests/test_app.py", "README.md"}
    app = tmp_path / "runs" / "one" / "app.py"
    subprocess.run([sys.executable, app, "add", "milk"], check=True, timeout=30)
    listed = subprocess.run(
        [sys.executable, app, "list"], check=True, capture_output=True, text=True, timeout=30
    )
    assert "milk" in listed.stdout

    second = steplog(db, "run", str(EXAMPLE), "--job-id", "two", env=env)
    assert second.code == 0, second.err
    assert calls(log) == Counter({"architect": 1, "builder": 1, "docs": 1, "qa": 1})  # no new call
    doc = status_json(db, "two")
    assert doc["cache_hits"] == 4 and doc["llm_calls"] == 0
    assert (
        doc["completed_steps"] == ["architect", "builder", "docs", "qa"]
        and doc["pending_steps"] == []
    )
    assert workspace_files(tmp_path / "runs" / "two") == files

    # a different input re-runs everything downstream of it
    third = steplog(
        db, "run", str(EXAMPLE), "--job-id", "three", "--input", "idea=a chess clock", env=env
    )
    assert third.code == 0
    assert calls(log)["architect"] == 2


@pytest.mark.parametrize(
    ("name", "replacements", "message"),
    [
        (
            "cycle",
            {"[steps.architect]\nprovider": '[steps.architect]\nneeds = ["qa"]\nprovider'},
            "cycle",
        ),
        (
            "unknown need",
            {'needs = ["architect"]': 'needs = ["architekt"]'},
            "unknown step 'architekt'",
        ),
        (
            "unknown provider",
            {
                '[steps.qa]\nneeds = ["builder"]\nprovider = "local"': '[steps.qa]\nneeds = ["builder"]\nprovider = "cloud"'
            },
            "unknown provider 'cloud'",
        ),
        ("unknown variable", {"{{ inputs.idea }}": "{{ inputs.topic }}"}, "unknown input 'topic'"),
        (
            "unknown key",
            {'output = "files"': 'output = "files"\nretries = 3'},
            "unknown key 'steps.builder.retries'",
        ),
    ],
)
def test_bad_pipeline_exits_2_and_writes_nothing(tmp_path, name, replacements, message):
    db = tmp_path / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "ok").code == 0
    before = event_count(db)
    result = steplog(db, "run", str(factory(tmp_path, **replacements)))
    assert result.code == 2, (name, result.out, result.err)
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert event_count(db) == before


def test_other_rejections_exit_2_and_append_nothing(tmp_path, database):
    db = database
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "done").code == 0
    before = event_count(db)
    cases = [
        (("run", str(EXAMPLE), "--job-id", "done"), "already exists"),
        (("run", str(EXAMPLE), "--input", "colour=red"), "unknown input 'colour'"),
        (("run", str(tmp_path / "missing.toml")), "does not exist"),
        (("resume", "done"), "already succeeded"),
        (("resume", "nope"), "unknown job nope"),
        (("replay", "done", "--until", "999"), "past the end"),
        (("replay", "done", "--until", "step.failed:qa"), "no event"),
        (("replay", "nope", "--until", "1"), "unknown job"),
        (("status", "nope"), "unknown job"),
        (("events", "nope"), "unknown job"),
        (("run", str(EXAMPLE), "--input", "idea"), "is not NAME=VALUE"),
        (("replay", "done"), "Missing option '--until'"),
        (("replay", "done", "--until", "2026-01-01T00:00:00"), "no time zone"),
        (("frobnicate",), "No such command"),
    ]
    for args, message in cases:
        result = steplog(db, *args)
        assert result.code == 2, (args, result.out, result.err)
        assert message in result.err, (args, result.err)
        assert len(result.err.strip().splitlines()) == 1
    assert event_count(db) == before


def test_failed_step_exits_1_then_resume_skips_completed_steps(tmp_path, database):
    db, log = database, tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    pipeline = factory(tmp_path, **DOCS_FAILS)
    failed = steplog(db, "run", str(pipeline), "--job-id", "j", env=env)
    assert failed.code == 1, failed.err
    doc = status_json(db, "j")
    assert doc["status"] == "failed"
    assert (
        doc["steps"]["docs"]["status"] == "failed"
        and "told to fail" in doc["steps"]["docs"]["error"]
    )
    assert doc["steps"]["qa"]["status"] == "succeeded"  # an independent branch still finishes
    assert "docs" in doc["pending_steps"]

    pipeline.write_text(EXAMPLE.read_text())  # the user fixes the pipeline
    resumed = steplog(db, "resume", "j", env=env)
    assert resumed.code == 0, resumed.err
    doc = status_json(db, "j")
    assert doc["status"] == "succeeded" and doc["pending_steps"] == []
    skipped = db_rows(
        db, "SELECT step FROM events WHERE job_id='j' AND type='step.skipped' ORDER BY step"
    )
    assert [r[0] for r in skipped] == ["architect", "builder", "qa"]
    assert calls(log) == Counter({"architect": 1, "builder": 1, "qa": 1, "docs": 1})


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    db = tmp / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "clean").code == 0
    return comparable_manifest(status_json(db, "clean")), workspace_files(tmp / "runs" / "clean")


# The kill -9 matrix over the named fault points is in tests/test_crash_matrix.py.


def test_external_kill_9_mid_call_then_resume(tmp_path, database, clean_run):
    db, log = database, tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    pipeline = factory(tmp_path, **SLOWER)
    proc = spawn(db, "run", str(pipeline), "--job-id", "k", env=env)
    signal_when(
        db,
        proc,
        "SELECT count(*) FROM events WHERE type='llm.request' AND step='builder'",
        signal.SIGKILL,
    )
    assert proc.returncode == -signal.SIGKILL
    assert calls(log)["builder"] == 0  # killed while the provider was still thinking
    resumed = steplog(db, "resume", "k", env=env)
    assert resumed.code == 0, resumed.err
    assert calls(log) == Counter({"architect": 1, "builder": 1, "docs": 1, "qa": 1})
    assert status_json(db, "k")["status"] == "succeeded"


def test_resume_of_a_job_another_live_process_runs_is_refused(tmp_path, database):
    db = database
    pipeline = factory(tmp_path, **SLOWER)
    proc = spawn(db, "run", str(pipeline), "--job-id", "busy", env={})
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE type='step.started'")
        before = event_count(db)
        result = steplog(db, "resume", "busy")
        assert result.code == 2
        assert f"being run by process {proc.pid}" in result.err
        assert db_rows(db, "SELECT count(*) FROM events WHERE type='job.resumed'")[0][0] == 0
        assert event_count(db) >= before
    finally:
        proc.wait(timeout=60)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_records_interruption_and_resume_continues(tmp_path, database, sig, code):
    """The signal comes while b's call is in flight (a minute long, so however late a busy
    machine delivers it, the job cannot have ended first; grace 0 cuts the call off), with c
    still to start. Resume, with the delay taken out of the pipeline, runs b and c only."""
    from tests.pipeline_files import dag_pipeline

    db, log = database, tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    pipeline = dag_pipeline(tmp_path, {"a": ([], 0), "b": (["a"], 60), "c": (["b"], 0)})
    proc = spawn(db, "run", str(pipeline), "--job-id", "t", "--grace", "0", env=env)
    signal_when(db, proc, "SELECT count(*) FROM events WHERE type='llm.request' AND step='b'", sig)
    assert proc.returncode == code
    assert status_json(db, "t")["status"] == "interrupted"
    interrupted = db_rows(db, "SELECT data FROM events WHERE type='job.interrupted'")
    assert [json.loads(data)["signal"] for (data,) in interrupted] == [signal.Signals(sig).name]
    dag_pipeline(tmp_path, {"a": ([], 0), "b": (["a"], 0), "c": (["b"], 0)})
    assert steplog(db, "resume", "t", env=env).code == 0
    assert status_json(db, "t")["status"] == "succeeded"
    assert calls(log) == Counter({"a": 1, "b": 1, "c": 1})  # a not again; b's cut-off call again


def test_events_replay_and_jobs_output(tmp_path, database):
    db = database
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "e").code == 0
    lines = steplog(db, "events", "e", "--type", "file.*", "--json").out.strip().splitlines()
    envelopes = [json.loads(line) for line in lines]
    assert [e["type"] for e in envelopes] == ["file.written"] * 3
    assert set(envelopes[0]) == {"ts", "level", "job_id", "type", "step", "data"}
    assert envelopes[0]["ts"].endswith("Z")
    assert {"path", "sha256", "wrote", "reason"} <= set(envelopes[0]["data"])
    errors = steplog(db, "events", "e", "--level", "warning", "--json").out.strip()
    assert errors == ""

    replayed = json.loads(
        steplog(db, "replay", "e", "--until", "step.succeeded:builder", "--json").out
    )
    assert replayed["completed_steps"] == ["architect", "builder"]
    assert replayed["pending_steps"] == ["docs", "qa"]
    assert (
        replayed["events"][-1]["type"] == "step.succeeded"
        and replayed["events"][-1]["step"] == "builder"
    )
    assert len(replayed["cache_index"]) == 2
    at_ts = json.loads(
        steplog(db, "replay", "e", "--until", replayed["events"][-1]["ts"], "--json").out
    )
    assert at_ts["version"] == replayed["version"]
    assert json.loads(steplog(db, "replay", "e", "--until", "3", "--json").out)["version"] == 3

    listed = json.loads(steplog(db, "jobs", "--json").out)
    assert listed[0]["job_id"] == "e" and listed[0]["status"] == "succeeded"


def _remote_pipeline(tmp_path: Path, port: int, max_retries: int = 0) -> Path:
    """The example with every step but architect on an OpenAI-compatible server at 127.0.0.1:port."""
    text = EXAMPLE.read_text()
    text = text.replace("http://127.0.0.1:8080/v1", f"http://127.0.0.1:{port}/v1")
    text = text.replace("max_retries = 3", f"max_retries = {max_retries}")
    head, sep, steps = text.partition("[steps.builder]")
    path = tmp_path / "remote.toml"
    path.write_text(head + sep + steps.replace('provider = "local"', 'provider = "remote"'))
    return path


KEY_ENV = {"OPENAI_API_KEY": "sk-test"}


def test_missing_api_key_is_refused_before_anything_is_written(tmp_path):
    db = tmp_path / "s.db"
    result = steplog(db, "run", str(_remote_pipeline(tmp_path, closed_port())))
    assert result.code == 2
    assert "OPENAI_API_KEY, which is not set" in result.err
    assert event_count(db) == 0


def test_provider_down_then_back_resumes_with_earlier_steps_skipped(tmp_path, fake_llm_factory):
    db, port = tmp_path / "s.db", closed_port()
    env = {"OPENAI_API_KEY": "sk-e2e-secret-value"}
    pipeline = _remote_pipeline(tmp_path, port)
    failed = steplog(db, "run", str(pipeline), "--job-id", "down", env=env)  # nothing listens yet
    assert failed.code == 1, failed.err
    assert "step builder failed" in failed.err and f"127.0.0.1:{port}" in failed.err
    doc = status_json(db, "down")
    assert doc["steps"]["architect"]["status"] == "succeeded"
    assert doc["steps"]["builder"]["status"] == "failed"
    assert set(doc["pending_steps"]) == {"builder", "docs", "qa"}

    server = fake_llm_factory(port=port)
    resumed = steplog(db, "resume", "down", env=env)
    assert resumed.code == 0, resumed.err
    assert len(server.calls) == 3  # builder, docs, qa; architect is not asked again
    assert all(c["headers"]["Authorization"] == "Bearer sk-e2e-secret-value" for c in server.calls)
    doc = status_json(db, "down")
    assert doc["status"] == "succeeded" and doc["pending_steps"] == []
    skipped = db_rows(db, "SELECT step FROM events WHERE job_id='down' AND type='step.skipped'")
    assert skipped == [("architect",)]
    assert b"sk-e2e-secret-value" not in db.read_bytes()
    assert (tmp_path / "runs" / "down" / "main.py").exists()


def test_retryable_failures_are_retried_and_every_attempt_is_in_the_log(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.extend([("status", 503, None, {}), ("status", 429, None, {"Retry-After": "0"})])
    pipeline = _remote_pipeline(tmp_path, server.port, max_retries=2)
    result = steplog(db, "run", str(pipeline), "--job-id", "r", env=KEY_ENV)
    assert result.code == 0, result.err
    rows = db_rows(
        db,
        "SELECT type, json_extract(data, '$.attempt'), json_extract(data, '$.success'),"
        " json_extract(data, '$.status') FROM events WHERE job_id = 'r' AND step = 'builder'"
        " AND type IN ('llm.request', 'llm.response', 'step.retrying') ORDER BY version",
    )
    assert rows == [
        ("llm.request", 1, None, None),
        ("llm.response", 1, 0, 503),
        ("step.retrying", 1, None, None),
        ("llm.request", 2, None, None),
        ("llm.response", 2, 0, 429),
        ("step.retrying", 2, None, None),
        ("llm.request", 3, None, None),
        ("llm.response", 3, 1, None),
    ]


def test_bad_answers_fail_the_step_and_are_not_cached(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    pipeline = _remote_pipeline(tmp_path, server.port)
    server.faults.append(("answer", '{"files": [{"path": "../../escape.py", "content": "x"}]}'))
    result = steplog(db, "run", str(pipeline), "--job-id", "bad", env=KEY_ENV)
    assert result.code == 1
    assert "escapes the workspace" in result.err
    assert not (tmp_path / "escape.py").exists()
    server.faults.append(("answer", "no files here, sorry"))
    assert steplog(db, "resume", "bad", env=KEY_ENV).code == 1  # not served from the cache
    assert len(server.calls) == 2
    assert steplog(db, "resume", "bad", env=KEY_ENV).code == 0
    reasons = db_rows(
        db, "SELECT json_extract(data, '$.error_type') FROM events WHERE type='step.failed'"
    )
    assert reasons == [("unsafe_path",), ("bad_output",)]


def test_the_api_key_never_reaches_the_database_or_the_terminal(tmp_path, fake_llm):
    db, secret = tmp_path / "s.db", "sk-live-0123456789abcdef"
    server = fake_llm
    pipeline = _remote_pipeline(tmp_path, server.port)
    server.faults.append(
        ("status", 401, {"error": {"message": f"Incorrect API key provided: {secret}"}}, {})
    )
    result = steplog(db, "run", str(pipeline), "--job-id", "k", env={"OPENAI_API_KEY": secret})
    assert result.code == 1
    assert "HTTP 401" in result.err and "Incorrect API key" in result.err
    assert server.calls[0]["headers"]["Authorization"] == f"Bearer {secret}"
    events = steplog(db, "events", "k", "--json")
    for text in (result.out, result.err, events.out):
        assert secret not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
