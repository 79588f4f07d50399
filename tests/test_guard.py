"""Nothing of the user's is lost or silently repeated, and messages say what a verb will do or
did (issue 11).

Everything here runs the real CLI in this process (main(argv)) or the Python API, on real SQLite
files and real workspaces; the example pipeline's offline provider answers."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from steplog import Rejected, Steplog
from steplog.commands import follow
from steplog.projections.store import open_store
from tests.cli_inprocess import Outcome, assert_refused_in_one_line, steplog_here
from tests.on_disk import EXAMPLE, db_rows, event_count, workspace_files

WAIT_S = 60  # a bound on waits, never a timing assertion


def run(db: Path, cwd: Path, *args: str, pipeline: Path = EXAMPLE) -> Outcome:
    return steplog_here(db, "run", str(pipeline), "-q", *args, cwd=cwd)


def file_events(db: Path, job: str) -> dict[str, tuple[str, str, dict]]:
    rows = db_rows(
        db,
        "SELECT level, data FROM events WHERE job_id = ? AND type = 'file.written' ORDER BY version",
        (job,),
    )
    out = {}
    for level, data in rows:
        d = json.loads(data)
        out[d["path"]] = (d["reason"], level, d)
    return out


def pipeline_text(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- a workspace that already holds files ---------------------------------------------------------


def test_a_file_the_cached_answer_would_replace_is_refused_until_overwrite(tmp_path):
    db = tmp_path / "s.db"
    assert run(db, tmp_path, "--job-id", "first").code == 0
    ours = workspace_files(tmp_path / "runs" / "first")
    assert sorted(ours) == ["README.md", "app.py", "tests/test_app.py"]
    mine = tmp_path / "mine"
    for path, content in ours.items():  # the same project, with app.py edited by the user
        (mine / path).parent.mkdir(parents=True, exist_ok=True)
        (mine / path).write_bytes(content)
    users = b"# my own app, not to be lost\n"
    (mine / "app.py").write_bytes(users)
    before, on_disk = event_count(db), workspace_files(mine)

    refused = run(db, tmp_path, "--job-id", "second", "--workspace", str(mine))
    assert_refused_in_one_line(refused, mentions="already holds 1 file the job would overwrite")
    assert "(app.py)" in refused.err and "--overwrite" in refused.err
    assert "README.md" not in refused.err  # same content: left as it is, not in the way
    assert event_count(db) == before  # nothing appended: no job.created
    assert workspace_files(mine) == on_disk  # not a byte changed

    done = run(db, tmp_path, "--job-id", "second", "--workspace", str(mine), "--overwrite")
    assert done.code == 0, done.err
    assert (mine / "app.py").read_bytes() == ours["app.py"]  # the step's answer is the file
    written = file_events(db, "second")
    reason, level, data = written["app.py"]
    assert (reason, level) == ("modified_outside", "WARNING")
    assert data["found_sha256"] == hashlib.sha256(users).hexdigest()
    assert db_rows(db, "SELECT content FROM blobs WHERE sha256 = ?", (data["found_sha256"],)) == [
        (users,)
    ]  # what was replaced is kept
    assert written["README.md"][0] == "unchanged"


def test_identical_files_are_not_in_the_way_of_a_second_run_into_the_same_workspace(tmp_path):
    db, ws = tmp_path / "s.db", tmp_path / "out"
    assert run(db, tmp_path, "--job-id", "one", "--workspace", str(ws)).code == 0
    again = run(db, tmp_path, "--job-id", "two", "--workspace", str(ws))
    assert again.code == 0, again.err
    assert {r for r, _, _ in file_events(db, "two").values()} == {"unchanged"}


def test_any_file_may_be_in_the_way_of_a_step_that_has_not_answered_yet(tmp_path):
    """Nothing cached: builder's paths are known only once it answers, so every file counts."""
    db, ws = tmp_path / "new" / "s.db", tmp_path / "project"
    ws.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (ws / name).write_text(name)
    (ws / ".steplog-1-0123456789abcdef.tmp").write_text("a temp file of ours: not counted")
    refused = run(db, tmp_path, "--workspace", str(ws))
    assert_refused_in_one_line(
        refused, mentions="already holds 5 files (a.txt, b.txt, c.txt and 2 more)"
    )
    assert "that step builder may overwrite" in refused.err
    assert not db.parent.exists()  # refused before the database was created

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)  # directories hold nothing to lose
    assert run(db, tmp_path, "--workspace", str(empty)).code == 0


def test_resume_is_not_refused_for_files_in_the_jobs_own_workspace(tmp_path):
    """The workspace is the job's: a file found where a re-run step writes is replaced and kept
    as a blob (modified_outside), as before."""
    db = tmp_path / "s.db"
    failing = EXAMPLE.read_text().replace(
        '[steps.builder]\nneeds = ["architect"]\nprovider = "local"',
        '[steps.builder]\nneeds = ["architect"]\nprovider = "local"\noptions = { fail = true }',
    )
    path = pipeline_text(tmp_path, failing)
    assert run(db, tmp_path, "--job-id", "j", pipeline=path).code == 1
    ws = tmp_path / "runs" / "j"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "app.py").write_bytes(b"put here by hand\n")
    path.write_text(EXAMPLE.read_text())
    resumed = steplog_here(db, "resume", "j", "-q", cwd=tmp_path)
    assert resumed.code == 0, resumed.err
    assert file_events(db, "j")["app.py"][0] == "modified_outside"


def test_the_python_api_refuses_a_file_in_the_way_unless_overwrite(tmp_path):
    db, ws = tmp_path / "s.db", tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("mine")
    with Steplog(db) as sl:
        with pytest.raises(Rejected, match=r"already holds 1 file \(notes.txt\)"):
            sl.run(EXAMPLE, job_id="a", workspace=ws)
        assert not db.exists()  # a refused run creates no database
        result = sl.run(EXAMPLE, job_id="a", workspace=ws, overwrite=True)
        assert result.status == "succeeded"
    assert (ws / "notes.txt").read_text() == "mine"  # not a path the job wrote


# -- a database that does not exist ---------------------------------------------------------------


def test_plan_on_a_missing_database_creates_nothing_and_says_so(tmp_path):
    db = tmp_path / "typo" / "s.db"
    planned = steplog_here(db, "plan", str(EXAMPLE), cwd=tmp_path)
    assert planned.code == 0, planned.err
    assert planned.err == (
        f"note: no database at {db} yet; planned against an empty history "
        "(every step a first run), and no file was created\n"
    )
    assert "architect  provider call  first run of this step" in planned.out
    document = steplog_here(db, "plan", str(EXAMPLE), "--json", cwd=tmp_path)
    assert json.loads(document.out)["database_exists"] is False
    assert_refused_in_one_line(
        steplog_here(db, "plan", str(EXAMPLE), "--job", "j"), mentions="no database at"
    )
    report = Steplog(db).plan(EXAMPLE)
    assert report.database_exists is False and report.summary["miss"] == 1
    assert not db.parent.exists()

    assert run(db, tmp_path, "--job-id", "j").code == 0
    known = steplog_here(db, "plan", str(EXAMPLE), "--json")
    assert known.err == "" and json.loads(known.out)["database_exists"] is True


def test_run_on_a_missing_database_says_in_one_line_that_it_created_it(tmp_path):
    db = tmp_path / "runs" / "x.db"
    bad = run(db, tmp_path, "--input", "topic=x")
    assert_refused_in_one_line(bad, mentions="unknown input 'topic'")
    assert not db.exists()  # refused: no file left behind, and no "created" line
    with pytest.raises(Rejected):
        Steplog(db).run(EXAMPLE, inputs={"topic": "x"})
    assert not db.exists()

    first = run(db, tmp_path, "--job-id", "one")  # --quiet, and still said
    assert first.code == 0
    assert first.err == f"created new database {db}\n"
    assert first.out.startswith("job one succeeded")
    second = run(db, tmp_path, "--job-id", "two")
    assert second.code == 0 and second.err == ""


def test_only_the_open_that_made_the_log_counts_as_creating_it(tmp_path):
    """Two runs racing on a new file both find it missing; only the one whose open applied the
    schema says it created the database."""
    db = tmp_path / "s.db"
    first, second = open_store(db), open_store(db)
    try:
        assert (first.created, second.created) == (True, False)
    finally:
        first.close()
        second.close()
    with open_store(db) as again:
        assert again.created is False


def test_import_into_a_missing_database_says_so_and_a_refused_one_creates_nothing(tmp_path):
    db = tmp_path / "s.db"
    assert run(db, tmp_path, "--job-id", "j").code == 0
    exported = tmp_path / "j.jsonl"
    assert steplog_here(db, "export", "j", "-o", str(exported)).code == 0
    other = tmp_path / "other.db"
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert_refused_in_one_line(
        steplog_here(other, "import", str(tmp_path / "bad.jsonl")), mentions="line 1"
    )
    with pytest.raises(Rejected):
        Steplog(other).import_(tmp_path / "bad.jsonl")
    assert not other.exists()
    imported = steplog_here(other, "import", str(exported))
    assert imported.code == 0 and imported.err == f"created new database {other}\n"


# -- plan's exit code -------------------------------------------------------------------------------


def test_plan_exits_1_when_it_predicts_a_refusal_or_a_failing_step(tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    assert run(db, tmp_path, "--job-id", "seed").code == 0
    remote = pipeline_text(
        tmp_path,
        EXAMPLE.read_text().replace(
            '[steps.architect]\nprovider = "local"', '[steps.architect]\nprovider = "remote"'
        ),
    )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    before = event_count(db)
    text = steplog_here(db, "plan", str(remote))
    assert text.code == 1 and text.err == ""
    assert text.out.splitlines()[-1] == (
        "run would be refused: provider 'remote' reads its API key from OPENAI_API_KEY, "
        "which is not set"
    )
    document = steplog_here(db, "plan", str(remote), "--json")
    assert document.code == 1 and len(json.loads(document.out)["refusals"]) == 1
    assert Steplog(db).plan(remote).predicts_failure
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    assert steplog_here(db, "plan", str(remote)).code == 0  # plan calls no provider

    bomb = pipeline_text(
        tmp_path,
        'name = "b"\n[providers.l]\nkind = "offline"\n[steps.a]\nprovider = "l"\n'
        "prompt = \"{{ 'a' * 10**10 }}\"\n",
        "bomb.toml",
    )
    failing = steplog_here(db, "plan", str(bomb))
    assert failing.code == 1 and " will fail " in failing.out
    assert steplog_here(db, "plan", str(EXAMPLE)).code == 0
    assert not Steplog(db).plan(EXAMPLE).predicts_failure
    assert_refused_in_one_line(steplog_here(db, "plan", str(tmp_path / "nope.toml")))
    assert event_count(db) == before


# -- timeline without -o ----------------------------------------------------------------------------


def test_timeline_without_output_writes_beside_the_jobs_workspace_from_any_directory(tmp_path):
    db = tmp_path / "s.db"
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    assert run(db, project, "--job-id", "j").code == 0  # workspace project/runs/j
    custom = tmp_path / "out" / "ws"
    assert run(db, project, "--job-id", "k", "--workspace", str(custom)).code == 0

    drawn = steplog_here(db, "timeline", "j", cwd=elsewhere)
    assert drawn.code == 0, drawn.err
    target = project / "runs" / "j.timeline.svg"
    assert drawn.out.startswith(f"wrote {target} ")
    assert target.read_text().startswith("<svg")
    assert not (elsewhere / "runs").exists()
    assert steplog_here(db, "timeline", "k", cwd=elsewhere).code == 0
    assert (tmp_path / "out" / "k.timeline.svg").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == []


# -- export and blobs -------------------------------------------------------------------------------


def test_exporting_a_real_run_warns_of_nothing(tmp_path):
    db = tmp_path / "s.db"
    assert run(db, tmp_path, "--job-id", "j").code == 0
    to_file = steplog_here(db, "export", "j", "-o", str(tmp_path / "j.jsonl"))
    assert to_file.code == 0
    assert to_file.err.count("\n") == 1 and to_file.err.startswith("wrote ")
    assert "warning" not in to_file.err and "no blob" not in to_file.err
    to_stdout = steplog_here(db, "export", "j")
    assert to_stdout.code == 0 and to_stdout.err == ""
    result = Steplog(db).export("j", tmp_path / "api.jsonl")
    assert result.missing_blobs == []
    assert (tmp_path / "api.jsonl").read_bytes() == (tmp_path / "j.jsonl").read_bytes()


def test_a_blob_that_is_really_missing_is_named(tmp_path):
    """A log imported without one of its blobs (the prompt of architect's call): the events
    still point at it, and export says which one, where."""
    db = tmp_path / "s.db"
    assert run(db, tmp_path, "--job-id", "j").code == 0
    full = tmp_path / "j.jsonl"
    assert steplog_here(db, "export", "j", "-o", str(full)).code == 0
    lines = [json.loads(line) for line in full.read_text().splitlines()]
    (request,) = [e for e in lines if e["type"] == "llm.request" and e["step"] == "architect"]
    gone = request["data"]["prompt_sha256"]
    users = [e for e in lines if e["type"] != "steplog.blob" and gone in json.dumps(e["data"])]
    assert users == [request]  # no other event points at that blob
    kept = [e for e in lines if not (e["type"] == "steplog.blob" and e["data"]["sha256"] == gone)]
    assert len(kept) == len(lines) - 1
    kept[0]["data"]["blobs"] -= 1
    crafted = tmp_path / "crafted.jsonl"
    crafted.write_text("".join(json.dumps(e) + "\n" for e in kept))
    other = tmp_path / "other.db"  # blobs are shared by a database's jobs: j's would be found
    assert steplog_here(other, "import", str(crafted), "--job-id", "k").code == 0

    exported = steplog_here(other, "export", "k", "-o", str(tmp_path / "k.jsonl"))
    assert exported.code == 0
    warning = exported.err.splitlines()[-1]
    assert warning == (
        "warning: 1 blob the events point at is not in the database, so not exported: "
        f"{gone} (prompt_sha256 of llm.request architect, event {request_version(other, 'k')})"
    )
    assert Steplog(other).export("k", tmp_path / "k2.jsonl").missing_blobs == [gone]
    assert steplog_here(other, "export", "k").err == warning + "\n"


def request_version(db: Path, job: str) -> int:
    (row,) = db_rows(
        db,
        "SELECT version FROM events WHERE job_id = ? AND type = 'llm.request' AND step = 'architect'",
        (job,),
    )
    return row[0]


# -- events --follow --wait -------------------------------------------------------------------------


def test_follow_waits_as_long_as_told_for_a_job_or_database_not_created_yet(tmp_path):
    db = tmp_path / "s.db"
    missing = steplog_here(db, "events", "j", "--follow", "--wait", "0.2")
    assert_refused_in_one_line(missing, mentions=f"no database at {db} (waited 0.2 s")
    with pytest.raises(Rejected, match=r"no database at .* \(waited 0.2 s"):
        Steplog(db).follow("j", wait_s=0.2)
    assert not db.exists()
    assert run(db, tmp_path, "--job-id", "seed").code == 0
    at_once = steplog_here(db, "events", "nope", "--follow", "--wait", "0")
    assert_refused_in_one_line(at_once, mentions="unknown job nope")
    assert "waited" not in at_once.err
    waited = steplog_here(db, "events", "nope", "-f", "--wait", "0.3")
    assert_refused_in_one_line(waited, mentions="unknown job nope (waited 0.3 s")
    assert steplog_here(db, "events", "nope", "-f", "--wait", "-1").code == 2


def test_follow_started_before_the_run_creates_the_database_prints_the_whole_job(
    tmp_path, monkeypatch
):
    """`events --follow` in one terminal, then the very first `run` in another: the follower
    waits for the database and the job, then prints every event and exits with the job."""
    db = tmp_path / "fresh" / "s.db"
    waiting = threading.Event()
    real_wait = follow.wait_for_file

    def wait_for_file(path: Path, wait_s: float) -> float:
        assert not path.exists()  # the run has not started: the follower really waits
        waiting.set()
        return real_wait(path, wait_s)

    monkeypatch.setattr(follow, "wait_for_file", wait_for_file)

    def start_the_run() -> None:
        if waiting.wait(WAIT_S):
            with Steplog(db) as sl:
                sl.run(EXAMPLE, job_id="late", workspace=tmp_path / "ws")

    runner = threading.Thread(target=start_the_run)
    runner.start()
    try:
        followed = steplog_here(db, "events", "late", "--follow", "--json", "--wait", str(WAIT_S))
    finally:
        waiting.set()
        runner.join(WAIT_S)
    assert followed.code == 0, followed.err
    types = [json.loads(line)["type"] for line in followed.out.splitlines()]
    stored = db_rows(db, "SELECT type FROM events WHERE job_id = 'late' ORDER BY version")
    assert types == [t for (t,) in stored] and types[-1] == "job.succeeded"
