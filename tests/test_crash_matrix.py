"""Kill -9 at every named fault point, resume, and get exactly what a clean run gets.

For each point (executor/faults.py lists them): the CLI really dies (returncode -9); `steplog
resume` then reaches the same manifest and the same workspace, byte for byte, as a run that
was never interrupted; every step called its provider exactly once across crash and resume
(the offline provider's call log, or the HTTP fake server's request list); no temp file or
half-written file is left. Pairs of points kill the resume too.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_process import comparable_manifest, signal_when, spawn, status_json, steplog
from tests.fake_llm_server import FakeLLMServer, last_user_message
from tests.on_disk import calls, db_rows, workspace_files

pytestmark = pytest.mark.slow

# plan -> build (files: app.py, tests/test_app.py, README.md) -> docs, review, notes (a fan-out)
PIPELINE = """\
name = "crashy"

[inputs.idea]
default = "a tiny tool"

[providers.local]
kind = "offline"
model = "offline-1"{provider_extra}

[steps.plan]
provider = "local"
prompt = "Design {{{{ inputs.idea }}}}."
output = "text"

[steps.build]
needs = ["plan"]
provider = "local"
prompt = \"\"\"Implement as files. {{"files": []}}
{{{{ steps.plan.output }}}}\"\"\"
output = "files"

[steps.docs]
needs = ["build"]
provider = "local"
prompt = "Document {{% for p in steps.build.files %}}{{{{ p }}}} {{% endfor %}}"
output = "text"{fan_extra}

[steps.review]
needs = ["build"]
provider = "local"
prompt = "Review {{% for p in steps.build.files %}}{{{{ p }}}} {{% endfor %}}"
output = "json"{fan_extra}

[steps.notes]
needs = ["build"]
provider = "local"
prompt = "Notes on {{% for p in steps.build.files %}}{{{{ p }}}} {{% endfor %}}"
output = "text"{fan_extra}
"""
STEPS = ("plan", "build", "docs", "review", "notes")
ONCE = Counter({s: 1 for s in STEPS})
TEMP = re.compile(r"(^|/)\.steplog-\d+-[0-9a-f]{16}\.tmp$")


def write_pipeline(directory: Path, *, provider_extra: str = "", fan_extra: str = "") -> Path:
    path = directory / "pipeline.toml"
    path.write_text(PIPELINE.format(provider_extra=provider_extra, fan_extra=fan_extra))
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[dict, dict[str, bytes]]:
    tmp = tmp_path_factory.mktemp("clean")
    db = tmp / "s.db"
    result = steplog(db, "run", str(write_pipeline(tmp)), "--job-id", "clean")
    assert result.code == 0, result.err
    files = workspace_files(tmp / "runs" / "clean")
    assert set(files) == {"app.py", "tests/test_app.py", "README.md"}
    return comparable_manifest(status_json(db, "clean")), files


def temps(workspace: Path) -> list[str]:
    return [p for p in workspace_files(workspace) if TEMP.search(p)] if workspace.exists() else []


def kill_at(db: Path, point: str, *args: str, env: dict[str, str]) -> None:
    result = steplog(db, *args, env={**env, "STEPLOG_FAULT": point})
    assert result.code == -signal.SIGKILL, (point, result.code, result.err)
    last = db_rows(
        db,
        "SELECT type FROM events WHERE job_id = 'k' AND type LIKE 'job.%'"
        " ORDER BY version DESC LIMIT 1",
    )
    assert last in ([("job.started",)], [("job.resumed",)]), last  # died running: no end


def assert_like_clean(db: Path, workspace: Path, clean: tuple[dict, dict[str, bytes]]) -> None:
    manifest, files = clean
    assert comparable_manifest(status_json(db, "k")) == manifest
    assert workspace_files(workspace) == files  # byte for byte; no temp file left either


# Every point kills the first run; each is reached on the way to a clean finish.
# (after:cache.miss and after:step.started of a step that calls its provider are the same commit
# as its after:llm.request; after:file.written the same as after:step.succeeded.)
POINTS = [
    "after:job.started",
    "after:step.succeeded:plan",
    "after:llm.request:build",
    "after:llm.response:build",
    "before:file.write:build",
    "mid:file.write:build",
    "before:file.rename:build",
    "after:file.rename:build",  # the first of three files landed, the others not
    "before:step.succeeded:build",
    "after:file.written:build",
    "after:step.started:review",  # a fan-out step with its request committed
    "after:llm.response:notes",
    "before:step.succeeded:docs",
]
# Points where a step's answer has arrived but is not committed yet (text and json steps commit
# it with step.succeeded, in one transaction): a crash there is a crash during the call.
UNCOMMITTED = {"before:step.succeeded:docs"}


# On PostgreSQL, the points where the commit protocol differs in kind: a request committed
# with its answer to come, an answer committed, a file half-written, an answer not committed.
POSTGRES_POINTS = [
    "after:llm.request:build",
    "after:llm.response:build",
    "mid:file.write:build",
    "before:step.succeeded:docs",
]


@pytest.mark.parametrize(
    ("database", "point"),
    [("sqlite", p) for p in POINTS] + [("postgresql", p) for p in POSTGRES_POINTS],
    indirect=["database"],
)
def test_kill_9_at_a_fault_point_then_resume_matches_a_clean_run(tmp_path, clean, database, point):
    db, log = database, tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    workspace = tmp_path / "runs" / "k"
    kill_at(db, point, "run", str(write_pipeline(tmp_path)), "--job-id", "k", env=env)
    _, clean_files = clean
    if point.startswith(("mid:file.write", "before:file.rename")):
        # the kill left our temp file, and nothing under the final name
        (left,) = temps(workspace)
        partial = (workspace / left).read_bytes()
        assert "app.py" not in workspace_files(workspace)
        assert clean_files["app.py"].startswith(partial)
        assert (len(partial) < len(clean_files["app.py"])) == point.startswith("mid:")
    if point == "after:file.rename:build":
        assert set(workspace_files(workspace)) == {"app.py"}
    resumed = steplog(db, "resume", "k", env=env)
    assert resumed.code == 0, (point, resumed.err)
    assert_like_clean(db, workspace, clean)
    # each committed answer reused: each step called once, except a text/json step killed
    # before its one transaction (llm.response + step.succeeded): that answer never landed
    expected = ONCE + Counter({point.rsplit(":", 1)[1]: 1}) if point in UNCOMMITTED else ONCE
    assert calls(log) == expected, point


def test_kill_9_during_a_cache_hit_then_resume(tmp_path, clean):
    """A second job served from the cache: killed writing a cached answer's files (its
    cache.hit is committed with them), then, resuming, after a fan-out step's cache.hit."""
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    pipeline = str(write_pipeline(tmp_path))
    assert steplog(db, "run", pipeline, "--job-id", "warm", env=env).code == 0
    workspace = tmp_path / "runs" / "k"
    kill_at(db, "mid:file.write:build", "run", pipeline, "--job-id", "k", env=env)
    assert len(temps(workspace)) == 1
    kill_at(db, "after:cache.hit:review", "resume", "k", env=env)
    assert temps(workspace) == []  # the dead process's temp file was swept
    assert steplog(db, "resume", "k", env=env).code == 0
    assert_like_clean(db, workspace, clean)
    assert calls(log) == ONCE  # all from the warm job; the crashed job never called
    hits = db_rows(
        db, "SELECT count(DISTINCT step) FROM events WHERE job_id = 'k' AND type = 'cache.hit'"
    )
    assert hits == [(len(STEPS),)]


def test_kill_9_while_a_fan_out_has_several_calls_in_flight(tmp_path, database):
    """An outside kill -9 with docs, review and notes all waiting on their provider."""
    db, log = database, tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    pipeline = write_pipeline(tmp_path, fan_extra="\noptions = { delay_s = 2 }")
    clean_db = tmp_path / "clean.db"
    assert (
        steplog(
            clean_db,
            "run",
            str(pipeline),
            "--job-id",
            "k",
            "--workspace",
            str(tmp_path / "clean_ws"),
        ).code
        == 0
    )
    clean_doc = comparable_manifest(status_json(clean_db, "k"))
    clean = (clean_doc, workspace_files(tmp_path / "clean_ws"))
    proc = spawn(db, "run", str(pipeline), "--job-id", "k", env=env)
    in_flight = (
        "SELECT count(*) = 3 FROM events WHERE type = 'llm.request'"
        " AND step IN ('docs', 'review', 'notes')"
    )
    signal_when(db, proc, in_flight, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    answered = db_rows(
        db,
        "SELECT count(*) FROM events WHERE type = 'llm.response'"
        " AND step IN ('docs', 'review', 'notes')",
    )
    assert answered == [(0,)] and calls(log) == Counter({"plan": 1, "build": 1})
    assert steplog(db, "resume", "k", env=env).code == 0
    assert_like_clean(db, tmp_path / "runs" / "k", clean)
    # the three calls in flight had no committed answer: asked again, once each, on resume
    assert calls(log) == ONCE


# (first run killed at, resume killed at): the second crash lands inside the recovery.
PAIRS = [
    ("after:llm.response:build", "after:job.resumed"),
    ("mid:file.write:build", "before:file.rename:build"),
    ("after:file.rename:build", "mid:file.write:build"),  # app.py is there: the next file
    ("before:step.succeeded:build", "after:step.started:docs"),
]


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_kill_9_again_during_resume_then_resume_matches_a_clean_run(tmp_path, clean, first, second):
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    workspace = tmp_path / "runs" / "k"
    kill_at(db, first, "run", str(write_pipeline(tmp_path)), "--job-id", "k", env=env)
    kill_at(db, second, "resume", "k", env=env)
    resumed = steplog(db, "resume", "k", env=env)
    assert resumed.code == 0, (first, second, resumed.err)
    assert_like_clean(db, workspace, clean)
    assert calls(log) == ONCE, (first, second)
    resumes = db_rows(db, "SELECT count(*) FROM events WHERE job_id = 'k' AND type = 'job.resumed'")
    assert resumes == [(2,)]


# -- the same promise against a real HTTP server -------------------------------------------------


def _http_responder(body: dict) -> str:
    prompt = last_user_message(body)
    if '{"files"' in prompt:
        files = [
            {"path": "main.py", "content": "print('hi')\n" * 50},
            {"path": "pkg/util.py", "content": "X = 1\n" * 50},
        ]
        return json.dumps({"files": files})
    return "answer to: " + prompt[:60]


HTTP_PIPELINE = """\
name = "crashy-http"

[providers.remote]
kind = "openai"
base_url = "{url}"
model = "m"
max_retries = 0

[steps.plan]
provider = "remote"
prompt = "STEP=plan design it"

[steps.build]
needs = ["plan"]
provider = "remote"
prompt = \"\"\"STEP=build {{"files": []}} {{{{ steps.plan.output }}}}\"\"\"
output = "files"

[steps.docs]
needs = ["build"]
provider = "remote"
prompt = "STEP=docs {{% for p in steps.build.files %}}{{{{ p }}}} {{% endfor %}}"
"""


def _requests_per_step(server: FakeLLMServer) -> Counter[str]:
    found = (
        re.match(r"STEP=(\w+)", last_user_message(c["body"]))
        for c in list(server.calls)
        if c["method"] == "POST"
    )
    return Counter(m.group(1) for m in found if m)


@pytest.fixture(scope="module")
def http_clean(tmp_path_factory, module_fake_llm_factory):
    """The server, and what a clean run against it gets."""
    tmp = tmp_path_factory.mktemp("http")
    server = module_fake_llm_factory(responder=_http_responder)
    pipeline = tmp / "pipeline.toml"
    pipeline.write_text(HTTP_PIPELINE.format(url=server.url))
    ok = steplog(tmp / "s.db", "run", str(pipeline), "--job-id", "k")
    assert ok.code == 0, ok.err
    files = workspace_files(tmp / "runs" / "k")
    assert set(files) == {"main.py", "pkg/util.py"}
    return server, pipeline, (comparable_manifest(status_json(tmp / "s.db", "k")), files)


@pytest.mark.parametrize(
    "point",
    [
        "after:llm.request:build",
        "after:llm.response:build",
        "mid:file.write:build",
        "before:step.succeeded:build",
    ],
)
def test_kill_9_against_a_real_http_provider_calls_it_once_per_step(tmp_path, http_clean, point):
    server, pipeline, clean = http_clean
    server.calls.clear()
    db = tmp_path / "s.db"
    kill_at(db, point, "run", str(pipeline), "--job-id", "k", env={})
    assert steplog(db, "resume", "k").code == 0
    assert_like_clean(db, tmp_path / "runs" / "k", clean)
    assert _requests_per_step(server) == Counter({"plan": 1, "build": 1, "docs": 1}), point
