"""`steplog show JOB STEP`: every field of every attempt is what the log holds.

Real runs through the in-process CLI: the example pipeline offline, the same again (every step a
cache hit), one with hostile input text, a job whose step fails after a retry and then succeeds
on resume, a call retried after a 503 that then answers (tokens and cost), and a step that never
started. The expected values are read independently, with SQL over the events, the audit views
and the blobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from steplog.commands.show import show_step
from steplog.eventstore.events import (
    CacheMiss,
    JobCreated,
    JobInterrupted,
    JobStarted,
    LLMRequested,
    NewEvent,
    Owner,
    StepStarted,
)
from steplog.projections.store import open_store
from steplog.words import visible
from tests.cli_inprocess import Outcome, assert_refused_in_one_line, steplog_here
from tests.fake_llm_server import FakeLLMServer
from tests.on_disk import EXAMPLE, ROOT

DATA = Path(__file__).parent / "data"
# What a terminal or rich would act on: markup, an escape sequence, a bell, a carriage return.
HOSTILE = "[bold]x[/bold] [red]r[/] [link=file:///etc]l[/link] \x1b[31mred\x1b[0m\x07 \r end"
ANSWER = "Answer: [bold]not bold[/bold]\n\x1b[2J\x1b]0;title\x07 tab\there\r\n\u00e9\u2603 \\n\n"

RETRY_PIPELINE = """
name = "retry"
[providers.remote]
kind = "openai"
base_url = "{url}"
model = "m"
timeout_s = 5
max_retries = 2
backoff_base_s = 0.01
backoff_cap_s = 0.01
[prices."m"]
input_per_mtok = 1.5
output_per_mtok = 2.5
[steps.ask]
provider = "remote"
system = "Be [i]brief[/i]."
prompt = "Say {{{{ '[bold]' }}}}hello{{{{ '[/bold]' }}}}\\u001b[0m."
"""

BLOCKED_PIPELINE = """
name = "blocked"
[providers.broken]
kind = "offline"
model = "offline-flaky"
max_retries = 0
options = { fail = true }
[steps.first]
provider = "broken"
prompt = "First."
[steps.second]
needs = ["first"]
provider = "broken"
prompt = "Then {{ steps.first.output }}."
[steps.huge]
provider = "broken"
prompt = "{{ 'a' * 10**10 }}"
"""


def ok(result: Outcome, code: int = 0) -> Outcome:
    assert result.code == code, (result.code, result.err[-2000:])
    return result


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Path:
    """One database holding every kind of attempt."""
    root = tmp_path_factory.mktemp("show")
    db = root / "show.db"

    def run(*args: str, code: int = 0) -> None:
        ok(steplog_here(db, *args, "--quiet"), code)

    run("run", str(EXAMPLE), "--job-id", "fact", "--workspace", str(root / "fact"))
    run("run", str(EXAMPLE), "--job-id", "again", "--workspace", str(root / "again"))
    run(
        "run",
        str(EXAMPLE),
        "--job-id",
        "hostile",
        "--workspace",
        str(root / "hostile"),
        "--input",
        f"idea={HOSTILE}",
    )
    for name in ("audit_pipeline.toml", "audit_pipeline_fixed.toml"):
        shutil.copy(DATA / name, root / name)
    flaky = ("--job-id", "flaky", "--workspace", str(root / "flaky"))
    run("run", str(root / "audit_pipeline.toml"), *flaky, code=1)
    run("resume", "flaky", "--pipeline", str(root / "audit_pipeline_fixed.toml"))
    with FakeLLMServer() as server:
        server.faults.extend([("status", 503, None, {}), ("answer", ANSWER)])
        (root / "retry.toml").write_text(RETRY_PIPELINE.format(url=server.url))
        run("run", str(root / "retry.toml"), "--job-id", "retry", "--workspace", str(root / "r"))
    (root / "blocked.toml").write_text(BLOCKED_PIPELINE)
    run(
        "run",
        str(root / "blocked.toml"),
        "--job-id",
        "blocked",
        "--workspace",
        str(root / "b"),
        code=1,
    )
    return db


# -- the oracle: what the log holds, read with SQL -----------------------------------------------


def rows(conn: sqlite3.Connection, sql: str, *params: Any) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def blob(conn: sqlite3.Connection, sha: str | None) -> bytes | None:
    found = conn.execute("SELECT content FROM blobs WHERE sha256 = ?", (sha,)).fetchone()
    return bytes(found[0]) if found else None


def text_of(conn: sqlite3.Connection, sha: str | None) -> str | None:
    content = blob(conn, sha)
    return None if content is None else content.decode("utf-8")


def expected(db: Path, job: str, step: str, attempt: int | None = None) -> dict[str, Any]:
    """The attempt as the audit views, the events and the blobs have it."""
    conn = sqlite3.connect(db)
    try:
        runs = rows(
            conn,
            "SELECT * FROM step_runs WHERE job_id = ? AND step = ? ORDER BY seq",
            job,
            step,
        )
        started = [r for r in runs if r["attempt"] is not None]
        run = (
            started[-1] if attempt is None else [r for r in started if r["attempt"] == attempt][-1]
        )
        after = [r["seq"] for r in runs if r["seq"] > run["seq"]]
        until = after[0] if after else 2**62
        window = (job, step, run["seq"], until)
        calls = rows(
            conn,
            "SELECT attempt AS number, provider, kind, model, response_model, success, status,"
            " error, error_class, duration_s, tokens_in, tokens_out, cost, prompt_sha256,"
            " response_sha256 FROM llm_calls"
            " WHERE job_id = ? AND step = ? AND seq > ? AND seq < ? ORDER BY seq",
            *window,
        )
        for call in calls:
            call["success"] = None if call["success"] is None else bool(call["success"])
            call["tokens_in"] = call["tokens_in"] or 0
            call["tokens_out"] = call["tokens_out"] or 0
        files = rows(
            conn,
            "SELECT path, sha256, wrote, reason, size FROM file_writes"
            " WHERE job_id = ? AND step = ? AND seq > ? AND seq < ? ORDER BY seq",
            *window,
        )
        for f in files:
            f["wrote"] = bool(f["wrote"])

        def data(type_: str) -> dict[str, Any] | None:
            found = conn.execute(
                "SELECT data FROM events WHERE job_id = ? AND step = ? AND seq > ? AND seq < ?"
                " AND type = ? ORDER BY seq DESC LIMIT 1",
                (*window, type_),
            ).fetchone()
            return json.loads(found[0]) if found else None

        hit, miss, succeeded = data("cache.hit"), data("cache.miss"), data("step.succeeded")
        retries = conn.execute(
            "SELECT count(*) FROM events WHERE job_id = ? AND step = ? AND seq > ? AND seq < ?"
            " AND type = 'step.retrying'",
            window,
        ).fetchone()[0]
        asked = calls[-1] if calls else None
        if asked is None and hit is not None:
            [asked] = rows(
                conn,
                "SELECT provider, model, prompt_sha256 FROM llm_calls WHERE job_id = ?"
                " AND step = ? AND cache_key = ? ORDER BY seq DESC LIMIT 1",
                hit["origin_job"],
                hit["origin_step"],
                hit["cache_key"],
            )
        prompt_text = text_of(conn, asked["prompt_sha256"]) if asked else None
        prompt_blob = json.loads(prompt_text) if prompt_text is not None else {}
        answered = [c for c in calls if c["success"]]
        response_sha = hit["response_sha256"] if hit else None
        if answered:
            response_sha = answered[-1]["response_sha256"]
        output_sha = succeeded["output_sha256"] if succeeded else None
        kind = succeeded["output"] if succeeded else prompt_blob.get("output")
        answer = text_of(conn, response_sha)
        output_text = text_of(conn, output_sha)
        output: Any = output_text
        if output_text is not None and kind == "json":
            output = json.loads(output_text)
        elif output_text is not None and kind == "files":
            output = [f["path"] for f in files]
        with_response = [c for c in calls if c["success"] is not None]
        count = len(started)
        named = [asked["prompt_sha256"] if asked else None, response_sha, output_sha]
        missing = [sha for sha in dict.fromkeys(named) if sha and blob(conn, sha) is None]
    finally:
        conn.close()
    return {
        "job_id": job,
        "step": step,
        "attempt": run["attempt"],
        "attempts": count,
        "status": run["status"],
        "started": run["started"],
        "finished": run["finished"],
        "duration_s": run["duration_s"],
        "output_kind": kind,
        "provider": asked["provider"] if asked else None,
        "model": asked["model"] if asked else None,
        "system": prompt_blob.get("system"),
        "prompt": prompt_blob.get("prompt"),
        "answer": answer,
        "output_text": output_text,
        "output": output,
        "tokens_in": sum(c["tokens_in"] for c in calls),
        "tokens_out": sum(c["tokens_out"] for c in calls),
        "cost": None
        if any(c["cost"] is None for c in with_response)
        else sum(c["cost"] for c in with_response),
        "cache_hit": True if hit else False if miss else None,
        "cache_key": (hit or miss or {}).get("cache_key"),
        "origin_job": hit["origin_job"] if hit else None,
        "origin_step": hit["origin_step"] if hit else None,
        "tokens_saved": hit["tokens_saved"] if hit else None,
        "error": run["error"],
        "error_type": run["error_type"],
        "retries": retries,
        "calls": calls,
        "files": files,
        "prompt_sha256": asked["prompt_sha256"] if asked else None,
        "response_sha256": response_sha,
        "output_sha256": output_sha,
        "missing_blobs": missing,
    }


def attempts_in(db: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT job_id, step, attempt FROM step_runs WHERE attempt IS NOT NULL ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def shown(db: Path, *args: str) -> dict[str, Any]:
    return json.loads(ok(steplog_here(db, "show", *args, "--json")).out)


# -- every field ---------------------------------------------------------------------------------


def test_the_fixture_has_every_kind_of_attempt(logged):
    found = {(job, step): shown(logged, job, step) for job, step, _ in attempts_in(logged)}
    assert {a["status"] for a in found.values()} == {"succeeded", "failed"}
    assert found["again", "builder"]["cache_hit"] is True
    assert found["again", "builder"]["origin_job"] == "fact"
    assert found["retry", "ask"]["retries"] == 1 and found["retry", "ask"]["cost"] > 0
    assert found["flaky", "flaky"]["attempt"] == 2 and found["flaky", "flaky"]["attempts"] == 2
    assert {a["output_kind"] for a in found.values()} == {"text", "json", "files", None}
    huge = found["blocked", "huge"]  # failed rendering its prompt: before any cache lookup
    assert huge["error_type"] == "template_error" and huge["cache_hit"] is None
    assert huge["prompt"] is None and huge["output_kind"] is None and huge["calls"] == []


def test_every_field_of_every_attempt_is_what_the_log_holds(logged):
    checked = 0
    for job, step, attempt in attempts_in(logged):
        got = shown(logged, job, step, "--attempt", str(attempt))
        assert got == expected(logged, job, step, attempt), (job, step, attempt)
        checked += 1
    assert checked == 20


def test_the_default_is_the_latest_attempt(logged):
    assert shown(logged, "flaky", "flaky") == expected(logged, "flaky", "flaky", 2)
    first = shown(logged, "flaky", "flaky", "--attempt", "1")
    assert first["status"] == "failed" and first["error_type"] == "unavailable"
    assert first["retries"] == 1 and [c["success"] for c in first["calls"]] == [False, False]
    assert first["answer"] is None and first["output"] is None


def test_the_service_returns_the_same_model(logged):
    store = open_store(logged)
    try:
        model = show_step(store, "retry", "ask")
    finally:
        store.close()
    assert model.model_dump(mode="json") == expected(logged, "retry", "ask")
    with pytest.raises(Exception, match="frozen"):
        model.step = "other"  # type: ignore[misc]


def test_a_retried_call_that_then_answered(logged):
    got = shown(logged, "retry", "ask")
    assert got["status"] == "succeeded" and got["answer"] == ANSWER
    assert [(c["number"], c["success"], c["status"]) for c in got["calls"]] == [
        (1, False, 503),
        (2, True, None),
    ]
    [paid] = [c for c in got["calls"] if c["success"]]
    assert got["tokens_in"] == paid["tokens_in"] > 0 and got["tokens_out"] == paid["tokens_out"]
    price = paid["tokens_in"] * 1.5 / 1e6 + paid["tokens_out"] * 2.5 / 1e6
    assert got["cost"] == pytest.approx(price)
    assert got["system"] == "Be [i]brief[/i]." and got["prompt"] == "Say [bold]hello[/bold]\x1b[0m."


# -- the raw parts -------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["prompt", "system", "answer", "output"])
def test_a_raw_part_is_the_text_as_stored_and_nothing_else(logged, part):
    for job, step, attempt in attempts_in(logged):
        want = expected(logged, job, step, attempt)
        args = ("show", job, step, f"--{part}", "--attempt", str(attempt))
        result = steplog_here(logged, *args)
        value = want["output_text"] if part == "output" else want[part]
        if part == "system" and want["prompt"] is not None:
            value = value or ""
        if value is None:
            assert_refused_in_one_line(result, mentions=f"has no {part}")
        else:
            assert ok(result).out == value, (job, step, part)
            assert result.err == ""


def test_files_are_listed_in_sha256sums_format(logged):
    result = ok(steplog_here(logged, "show", "fact", "builder", "--files"))
    want = expected(logged, "fact", "builder")["files"]
    assert len(want) == 3
    assert result.out == "".join(f"{f['sha256']}  {f['path']}\n" for f in want)
    assert ok(steplog_here(logged, "show", "fact", "architect", "--files")).out == ""


@pytest.mark.slow
def test_sha256sum_checks_the_workspace_against_the_listing(logged):
    listing = ok(steplog_here(logged, "show", "fact", "builder", "--files")).out
    check = subprocess.run(
        ["sha256sum", "-c", "-"],
        input=listing,
        cwd=logged.parent / "fact",
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
def test_raw_parts_are_byte_exact_through_a_real_pipe(logged):
    """In a subprocess stdout is a real file: the bytes must be the blob's, with no escape
    sequence stripped (click.echo would) and no newline added."""
    conn = sqlite3.connect(logged)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    try:
        for job, step, part, sha in (
            ("retry", "ask", "answer", expected(logged, "retry", "ask")["response_sha256"]),
            (
                "hostile",
                "architect",
                "output",
                expected(logged, "hostile", "architect")["output_sha256"],
            ),
        ):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "steplog",
                    "--db",
                    str(logged),
                    "show",
                    job,
                    step,
                    f"--{part}",
                ],
                capture_output=True,
                env={**env, "LC_ALL": "C", "TERM": "xterm"},
                cwd=ROOT,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == blob(conn, sha)
    finally:
        conn.close()


# -- hostile text --------------------------------------------------------------------------------


def test_hostile_text_is_printed_unchanged_in_every_form(logged):
    want = expected(logged, "hostile", "architect")
    assert HOSTILE in want["prompt"] and "[bold]x[/bold]" in want["answer"]
    assert (
        ok(steplog_here(logged, "show", "hostile", "architect", "--prompt")).out == want["prompt"]
    )
    assert (
        ok(steplog_here(logged, "show", "hostile", "architect", "--answer")).out == want["answer"]
    )
    summary = ok(steplog_here(logged, "show", "hostile", "architect")).out
    # read for a terminal: as stored, control characters but newline and tab shown escaped
    assert visible(want["prompt"], keep="\n\t") in summary
    assert visible(want["answer"], keep="\n\t") in summary
    assert "\x1b" not in summary and "\x07" not in summary and "\r" not in summary
    assert "[bold]x[/bold] [red]r[/] [link=file:///etc]l[/link] \\x1b[31mred" in summary
    assert shown(logged, "hostile", "architect")["prompt"] == want["prompt"]
    retry = ok(steplog_here(logged, "show", "retry", "ask")).out
    assert visible(ANSWER, keep="\n\t") in retry and "Be [i]brief[/i]." in retry


def test_the_summary_labels_each_part(logged):
    out = ok(steplog_here(logged, "show", "again", "qa")).out
    want = expected(logged, "again", "qa")
    assert out.startswith("job again  step qa  attempt 1 of 1  succeeded\n")
    assert "cache hit: answer from fact/qa" in out
    for label in ("--- prompt ---", "--- answer ---", "--- output (json, as stored) ---"):
        assert label in out
    assert want["output_text"] in out and want["answer"] in out
    failed = ok(steplog_here(logged, "show", "flaky", "flaky", "--attempt", "1")).out
    assert "error (unavailable): provider 'broken'" in failed and "retries 1" in failed
    assert "--- answer ---" not in failed
    files = ok(steplog_here(logged, "show", "fact", "builder")).out
    assert "--- files ---\napp.py  created" in files


# -- refusals ------------------------------------------------------------------------------------


def test_each_refusal_is_one_line_and_exit_2(logged, tmp_path):
    cases = [
        (("show", "nojob", "builder"), "unknown job nojob"),
        (
            ("show", "fact", "nostep"),
            "job fact has no step 'nostep'; its steps: architect, builder, docs, qa",
        ),
        (("show", "fact", "builder", "--attempt", "2"), "has no attempt 2 (it has 1 attempt)"),
        (("show", "flaky", "flaky", "--attempt", "3"), "(it has 2 attempts)"),
        (("show", "fact", "builder", "--attempt", "0"), "--attempt"),
        (("show", "blocked", "second"), "step second of job blocked has not started yet"),
        (("show", "blocked", "first", "--answer"), "has no answer in the log: it failed"),
        (("show", "blocked", "first", "--output"), "has no output"),
        (
            ("show", "blocked", "huge", "--prompt"),
            "has no prompt in the log: it failed (template_error)",
        ),
        (("show", "blocked", "huge", "--system"), "has no system prompt"),
        (("show", "fact", "builder", "--prompt", "--answer"), "exclude each other"),
        (("show", "fact", "builder", "--files", "--json"), "exclude each other"),
        (("show", "fact"), "Missing argument 'STEP'"),
    ]
    for args, mentions in cases:
        assert_refused_in_one_line(steplog_here(logged, *args), mentions=mentions)
    assert_refused_in_one_line(
        steplog_here(tmp_path / "none.db", "show", "j", "s"), mentions="no database at"
    )


# -- an attempt with no end, and blobs the database lacks ----------------------------------------


def test_an_attempt_without_an_end_is_running_then_interrupted(tmp_path):
    """Written through the store as a process cut off mid-call leaves it: step.started and an
    llm.request whose prompt blob was never stored (an import without blobs)."""
    db = tmp_path / "s.db"
    store = open_store(db)
    prompt_sha = hashlib.sha256(b"never stored").hexdigest()
    try:
        store.append(
            "cut",
            [
                NewEvent.of(
                    JobCreated(
                        pipeline="p",
                        pipeline_fingerprint="f" * 64,
                        pipeline_sha256=hashlib.sha256(b"pipeline").hexdigest(),
                        steps={"a": [], "b": ["a"]},
                        workspace=str(tmp_path / "ws"),
                    )
                ),
                NewEvent.of(JobStarted(owner=Owner(pid=1, host="elsewhere", started="1"))),
                NewEvent.of(StepStarted(attempt=1, fingerprint="s" * 64), "a"),
                NewEvent.of(CacheMiss(cache_key="k" * 64), "a"),
                NewEvent.of(
                    LLMRequested(
                        provider="local",
                        kind="offline",
                        model="m",
                        prompt_tokens=3,
                        attempt=1,
                        cache_key="k" * 64,
                        prompt_sha256=prompt_sha,
                    ),
                    "a",
                ),
            ],
        )
    finally:
        store.close()
    running = shown(db, "cut", "a")
    assert running == expected(db, "cut", "a")
    assert running["missing_blobs"] == [prompt_sha]
    assert running["status"] == "running" and running["calls"][0]["success"] is None
    assert running["prompt"] is None and running["provider"] == "local"
    assert_refused_in_one_line(
        steplog_here(db, "show", "cut", "a", "--prompt"), mentions="lacks 1 blob "
    )
    assert_refused_in_one_line(steplog_here(db, "show", "cut", "b"), mentions="has not started yet")
    store = open_store(db)
    try:
        store.append("cut", [NewEvent.of(JobInterrupted(signal="SIGKILL"))])
    finally:
        store.close()
    assert shown(db, "cut", "a")["status"] == "interrupted" == expected(db, "cut", "a")["status"]
