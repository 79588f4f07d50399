"""Nothing of the user's is lost or silently repeated, and messages say what a verb will do or
did (issue 11).

Everything here runs the real CLI in this process (main(argv)) or the Python API, on real SQLite
files and real workspaces; the example pipeline's offline provider answers."""

from __future__ import annotations

import json
from pathlib import Path

from steplog import Steplog
from tests.cli_inprocess import Outcome, assert_refused_in_one_line, steplog_here
from tests.on_disk import EXAMPLE, db_rows, event_count

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
