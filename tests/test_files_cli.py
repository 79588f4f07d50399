"""Files through the real CLI: paths an LLM makes up, planted symlinks, files edited by hand."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_process import status_json, steplog
from tests.fake_llm_server import FakeLLMServer, last_user_message
from tests.on_disk import calls, db_rows, event_count, workspace_files

pytestmark = pytest.mark.slow

PIPELINE = """\
name = "files"

[providers.remote]
kind = "openai"
base_url = "{url}"
model = "m"
max_retries = 0

[steps.build]
provider = "remote"
prompt = 'STEP=build answer with {{"files": [...]}}'
output = "files"

[steps.docs]
needs = ["build"]
provider = "remote"
prompt = "STEP=docs {{% for p in steps.build.files %}}{{{{ p }}}} {{% endfor %}}"
"""

GOOD = [
    {"path": "main.py", "content": "print('ok')\n"},
    {"path": "pkg/util.py", "content": "X = 1\n"},
]
# one of each kind through the CLI; tests/test_workspace.py tries thousands in-process
NASTY = ["../outside/escaped.py", "/tmp/absolute.py", "CON", "/".join(["deep"] * 1100), "a\x00b.py"]


class Answers:
    """What the fake server answers for the build step; the test changes it between runs."""

    def __init__(self) -> None:
        self.files: list[dict[str, str]] = GOOD

    def __call__(self, body: dict) -> str:
        prompt = last_user_message(body)
        if prompt.startswith("STEP=build"):
            return json.dumps({"files": self.files})
        return "docs for " + prompt[10:80]


@pytest.fixture
def server(fake_llm_factory):
    answers = Answers()
    srv = fake_llm_factory(responder=answers)
    srv.answers = answers  # type: ignore[attr-defined]
    return srv


def _requests(server: FakeLLMServer) -> Counter[str]:
    return Counter(
        last_user_message(c["body"]).split()[0] for c in server.calls if c["method"] == "POST"
    )


@pytest.mark.parametrize("bad", NASTY)
def test_a_path_the_llm_makes_up_is_refused_and_the_job_stays_resumable(tmp_path, server, bad):
    outside = tmp_path / "outside"
    outside.mkdir()
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(PIPELINE.format(url=server.url))
    db = tmp_path / "s.db"
    server.answers.files = [GOOD[0], {"path": bad, "content": "evil\n"}]
    failed = steplog(db, "run", str(pipeline), "--job-id", "j")
    assert failed.code == 1, failed.err
    doc = status_json(db, "j")
    assert doc["status"] == "failed" and doc["steps"]["build"]["status"] == "failed"
    error_type = db_rows(
        db, "SELECT json_extract(data, '$.error_type') FROM events WHERE type = 'step.failed'"
    )
    assert error_type == [("unsafe_path",)]
    assert "Traceback" not in failed.err
    created, failure = failed.err.strip().splitlines()  # a new database, then the one failure
    assert created == f"created new database {db}" and failure.startswith("job j failed: ")
    # all or nothing: the answer's good file is not written either, nothing lands outside
    assert not (tmp_path / "runs" / "j").exists() or workspace_files(tmp_path / "runs" / "j") == {}
    assert list(outside.iterdir()) == [] and not Path("/tmp/absolute.py").exists()
    # the refused answer is not served again from the cache: resume asks anew
    server.answers.files = GOOD
    resumed = steplog(db, "resume", "j")
    assert resumed.code == 0, resumed.err
    assert set(workspace_files(tmp_path / "runs" / "j")) == {"main.py", "pkg/util.py"}
    assert _requests(server) == Counter({"STEP=build": 2, "STEP=docs": 1})


def test_symlinks_planted_in_the_workspace_are_never_followed(tmp_path, server):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.py"
    victim.write_text("the user's own file\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    os.symlink(victim, ws / "main.py")  # a file symlink to outside
    os.symlink(outside, ws / "pkg")  # a directory symlink to outside
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(PIPELINE.format(url=server.url))
    db = tmp_path / "s.db"
    failed = steplog(db, "run", str(pipeline), "--job-id", "j", "--workspace", str(ws))
    assert failed.code == 1 and "symlink" in failed.err, failed.err
    assert victim.read_text() == "the user's own file\n"
    assert sorted(os.listdir(outside)) == ["victim.py"]
    # the user removes the links; the answer was fine, so resume writes it without a new call
    (ws / "main.py").unlink()
    (ws / "pkg").unlink()
    assert steplog(db, "resume", "j").code == 0
    assert workspace_files(ws) == {"main.py": b"print('ok')\n", "pkg/util.py": b"X = 1\n"}
    assert _requests(server) == Counter({"STEP=build": 1, "STEP=docs": 1})


# -- files edited by hand between runs -------------------------------------------------------------

OFFLINE = """\
name = "edited"

[providers.local]
kind = "offline"
model = "offline-1"

[steps.build]
provider = "local"
prompt = 'Implement it. Answer with {{"files": [...]}}. {tag}'
output = "files"

[steps.docs]
needs = ["build"]
provider = "local"
prompt = "Document {{% for p in steps.build.files %}}{{{{ p }}}} {{% endfor %}}"
output = "text"{docs_extra}
"""


def _offline(tmp_path: Path, tag: str = "v1", docs_fail: bool = False) -> Path:
    path = tmp_path / "pipeline.toml"
    extra = "\noptions = { fail = true }" if docs_fail else ""
    path.write_text(OFFLINE.format(tag=tag, docs_extra=extra))
    return path


def test_resume_reports_files_of_completed_steps_edited_or_deleted_and_leaves_them(tmp_path):
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    failing = str(_offline(tmp_path, docs_fail=True))
    assert steplog(db, "run", failing, "--job-id", "j", env=env).code == 1
    ws = tmp_path / "runs" / "j"
    (ws / "app.py").write_text("# my own fix\n")
    (ws / "README.md").unlink()
    before = workspace_files(ws)
    _offline(tmp_path)  # the user fixes the docs step; build is completed and is skipped
    resumed = steplog(db, "resume", "j", env=env)
    assert resumed.code == 0, resumed.err
    warnings = [ln for ln in resumed.err.splitlines() if ln.startswith("warning:")]
    said = "(written by completed step build) was {} outside steplog; left as it is"
    assert warnings == [
        "warning: README.md " + said.format("deleted"),
        "warning: app.py " + said.format("edited"),
    ]
    assert workspace_files(ws) == before  # nothing silently overwritten or restored
    assert calls(log) == Counter({"build": 1, "docs": 1})  # the failed call logged nothing


def test_a_re_run_step_records_modified_outside_and_keeps_the_hand_edited_content(tmp_path):
    db = tmp_path / "s.db"
    assert steplog(db, "run", str(_offline(tmp_path, docs_fail=True)), "--job-id", "j").code == 1
    ws = tmp_path / "runs" / "j"
    ours = (ws / "app.py").read_bytes()
    mine = b"# edited by hand, do not lose\n" + ours
    (ws / "app.py").write_bytes(mine)
    _offline(tmp_path, tag="v2")  # build's prompt changed: it runs again and rewrites its files
    resumed = steplog(db, "resume", "j")
    assert resumed.code == 0, resumed.err
    assert (ws / "app.py").read_bytes() == ours  # the step's answer is the file
    rows = db_rows(
        db,
        "SELECT path, reason, wrote, json_extract(data, '$.found_sha256'),"
        " json_extract(data, '$.last_written'), level FROM events JOIN file_writes USING (seq)"
        " WHERE file_writes.job_id = 'j' ORDER BY seq",
    )
    first_run, second_run = rows[:3], rows[3:]
    assert {r[1] for r in first_run} == {"created"}
    by_path = {r[0]: r for r in second_run}
    found = hashlib.sha256(mine).hexdigest()
    assert by_path["app.py"][1:] == (
        "modified_outside",
        1,
        found,
        hashlib.sha256(ours).hexdigest(),
        "WARNING",
    )
    assert by_path["tests/test_app.py"][1] == "unchanged"
    assert by_path["README.md"][1] == "updated"  # its content changed with the prompt; not edited
    # nothing the user wrote is lost: the blob, and `export --blobs DIR` writes it to DIR/<sha>
    assert db_rows(db, "SELECT content FROM blobs WHERE sha256 = ?", (found,)) == [(mine,)]
    exported = steplog(
        db, "export", "j", "-o", str(tmp_path / "j.jsonl"), "--blobs", str(tmp_path / "blobs")
    )
    assert exported.code == 0, exported.err
    assert (tmp_path / "blobs" / found).read_bytes() == mine
    warned = (
        steplog(db, "events", "j", "--type", "file.written", "--level", "warning", "--json")
        .out.strip()
        .splitlines()
    )
    assert [json.loads(line)["data"]["reason"] for line in warned] == ["modified_outside"]
    assert steplog(db, "verify").code == 0
    assert event_count(db) > 0
