"""A step's outcome and its paid-for answer are kept whatever the answer or the template does:
each test pins a path where one could be lost (real SQLite file, real HTTP server on 127.0.0.1,
real subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_process import steplog
from tests.on_disk import db_rows

pytestmark = pytest.mark.slow

FAST = "backoff_base_s = 0.001\nbackoff_cap_s = 0.005\n"


def one_step(tmp_path: Path, port: int, output: str = "text", provider: str = "") -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        "\n".join(
            [
                'name = "review"',
                "[providers.remote]",
                'kind = "openai"',
                f'base_url = "http://127.0.0.1:{port}/v1"',
                'model = "fake-model"',
                provider,
                "[steps.a]",
                'provider = "remote"',
                'prompt = "Say something."',
                f'output = "{output}"',
            ]
        )
        + "\n"
    )
    return path


def types(db: Path, job: str) -> list[str]:
    sql = "SELECT type FROM events WHERE job_id = ? ORDER BY seq"
    return [t for (t,) in db_rows(db, sql, (job,))]


@pytest.mark.parametrize(
    "output, answer",
    [
        ("json", '{"score": NaN}'),
        ("json", '{"big": Infinity}'),
        ("json", "[" * 100_000),
        ("files", "[" * 100_000),
        ("json", "1" * 5000),
        ("files", "1" * 5000),
    ],
)
def test_a_json_answer_python_reads_but_cannot_store_fails_the_step_and_keeps_the_answer(
    tmp_path, output, answer, fake_llm
):
    """json.loads takes NaN/Infinity (and recurses on deep nesting); the canonical form refuses
    NaN. Either must fail the step as bad_output, with the paid-for answer in the log."""
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("answer", answer))
    result = steplog(db, "run", str(one_step(tmp_path, server.port, output)), "--job-id", "j")
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    assert types(db, "j")[-5:] == [
        "llm.request",
        "llm.response",
        "cache.invalidated",
        "step.failed",
        "job.failed",
    ]
    (error_type,) = db_rows(
        db, "SELECT json_extract(data, '$.error_type') FROM events WHERE type = 'step.failed'"
    )[0]
    assert error_type == "bad_output"
    (sha,) = db_rows(
        db, "SELECT json_extract(data, '$.response_sha256') FROM events WHERE type = 'llm.response'"
    )[0]
    assert db_rows(db, "SELECT count(*) FROM blobs WHERE sha256 = ?", (sha,)) == [(1,)]


def test_the_answer_that_closes_a_circuit_is_committed_before_the_circuit_closes(
    tmp_path, fake_llm
):
    """A success that closes an open breaker: the llm.response (and its blob) must land no later
    than provider.circuit_closed, so a crash right after the close keeps the paid-for answer."""
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("status", 503, None, {}))
    path = one_step(
        tmp_path,
        server.port,
        provider=FAST + "max_retries = 0\nbreaker_failures = 1\nbreaker_cooldown_s = 600\n",
    )
    assert steplog(db, "run", str(path), "--job-id", "first").code == 1
    crashed = steplog(
        db,
        "run",
        str(path),
        "--job-id",
        "second",
        "--ignore-breaker",
        env={"STEPLOG_FAULT": "after:provider.circuit_closed"},
    )
    assert crashed.code != 0
    second = types(db, "second")
    assert "provider.circuit_closed" in second
    assert second.index("llm.response") < second.index("provider.circuit_closed")
    (sha,) = db_rows(
        db,
        "SELECT json_extract(data, '$.response_sha256') FROM events"
        " WHERE type = 'llm.response' AND job_id = 'second'",
    )[0]
    assert db_rows(db, "SELECT count(*) FROM blobs WHERE sha256 = ?", (sha,)) == [(1,)]


@pytest.mark.parametrize(
    "output, answer",
    [
        ("text", "half a pair: \ud800"),
        ("json", '{"a": "\\ud800"}'),
        ("files", json.dumps({"files": [{"path": "a.txt", "content": "half a pair: \ud800"}]})),
        ("files", json.dumps({"files": [{"path": "\ud800.txt", "content": "x"}]})),
    ],
)
def test_an_answer_with_a_lone_surrogate_fails_the_step_not_the_run(
    tmp_path, output, answer, fake_llm
):
    """JSON's \\ud800 escape decodes to a str UTF-8 cannot encode: the step fails with one
    error type, the job ends failed, no traceback."""
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("answer", answer))
    result = steplog(db, "run", str(one_step(tmp_path, server.port, output)), "--job-id", "j")
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    seen = types(db, "j")
    assert seen[-2:] == ["step.failed", "job.failed"]
    assert seen.count("llm.response") == 1
    (error_type,) = db_rows(
        db, "SELECT json_extract(data, '$.error_type') FROM events WHERE type = 'step.failed'"
    )[0]
    assert error_type == ("bad_response" if output == "text" else "bad_output")


def test_a_truncated_answer_refused_by_on_truncation_still_counts_against_the_budget(
    tmp_path, fake_llm
):
    """The cut-off answer was paid for: its tokens are on its llm.response and in the job's
    spend, so the next call's budget check sees them (here: b is refused)."""
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("truncated", "one two three four five six seven eight nine ten"))
    path = tmp_path / "p.toml"
    path.write_text(
        "\n".join(
            [
                'name = "review"',
                "[budget]",
                "max_tokens = 8",
                "[providers.remote]",
                'kind = "openai"',
                f'base_url = "http://127.0.0.1:{server.port}/v1"',
                'model = "fake-model"',
                "max_concurrency = 1",
                "[steps.a]",
                'provider = "remote"',
                'prompt = "Step a."',
                'on_truncation = "error"',
                "[steps.b]",
                'provider = "remote"',
                'prompt = "Step b."',
            ]
        )
        + "\n"
    )
    result = steplog(db, "run", str(path), "--job-id", "j")
    assert result.code == 1, result.err
    assert sum(1 for c in server.calls if c["path"].endswith("/chat/completions")) == 1
    (tokens_out,) = db_rows(
        db, "SELECT json_extract(data, '$.tokens_out') FROM events WHERE type = 'llm.response'"
    )[0]
    assert tokens_out == 10
    failed = dict(
        db_rows(
            db,
            "SELECT step, json_extract(data, '$.error_type') FROM events"
            " WHERE type = 'step.failed'",
        )
    )
    assert failed == {"a": "truncated", "b": "budget_exceeded"}


def test_the_half_open_probe_claim_follows_the_steps_start_in_the_log(tmp_path, fake_llm):
    """The probe's provider.circuit_half_open is this attempt's: it comes after its step.started
    and cache.miss, before its llm.request (a crash after the claim leaves a started attempt)."""
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("status", 503, None, {}))
    path = one_step(
        tmp_path,
        server.port,
        provider=FAST + "max_retries = 0\nbreaker_failures = 1\nbreaker_cooldown_s = 0.001\n",
    )
    assert steplog(db, "run", str(path), "--job-id", "first").code == 1
    result = steplog(db, "run", str(path), "--job-id", "second")
    assert result.code == 0, result.err
    assert types(db, "second")[:7] == [
        "job.created",
        "job.started",
        "step.started",
        "cache.miss",
        "provider.circuit_half_open",
        "llm.request",
        "llm.response",
    ]


def test_a_template_that_raises_at_render_time_fails_its_step_not_the_run(tmp_path):
    """{{ 10 // 0 }} raises ZeroDivisionError inside jinja: a template_error for that step; an
    independent step still runs and the job ends failed, no traceback."""
    db = tmp_path / "s.db"
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "tpl"\n[inputs.n]\ndefault = "0"\n[providers.local]\nkind = "offline"\n'
        '[steps.a]\nprovider = "local"\nprompt = "Ten over n: {{ 10 // (inputs.n | int) }}"\n'
        '[steps.b]\nprovider = "local"\nprompt = "Fine."\n'
    )
    result = steplog(db, "run", str(path), "--job-id", "j")
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    outcomes = dict(
        db_rows(db, "SELECT step, type FROM events WHERE type IN ('step.failed', 'step.succeeded')")
    )
    assert outcomes == {"a": "step.failed", "b": "step.succeeded"}
    (error,) = db_rows(
        db,
        "SELECT json_extract(data, '$.error') FROM events"
        " WHERE type = 'step.failed' AND json_extract(data, '$.error_type')"
        " = 'template_error'",
    )[0]
    assert "ZeroDivisionError" in error and "steps.a.prompt" in error
