"""Review of the input/database path: a command that fails leaves nothing behind, in one line."""

from __future__ import annotations

import os

import pytest

from tests.cli_helpers import EXAMPLE, db_rows, steplog


def _refused(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.err)
    assert result.err.count("\n") == 1 and result.err.startswith("error: "), result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in result.err, result.err


@pytest.mark.parametrize(
    "args",
    [
        ["status"], ["status", "j"], ["jobs"], ["events", "j"], ["events", "j", "--follow"],
        ["audit", "j"], ["export", "j"], ["timeline", "j", "-o", "-"],
        ["replay", "j", "--until", "1"], ["replay", "j", "--until", "1", "--fork", "k"],
        ["resume", "j"],
    ],
)  # fmt: skip
def test_a_verb_that_needs_a_job_creates_no_database_and_no_directory(tmp_path, args):
    """A typo in --db, or a directory not there yet: the verb says so; it used to leave an empty
    database (and its directory) behind while answering `unknown job`."""
    db = tmp_path / "missing" / "steplog.db"
    _refused(steplog(db, *args, cwd=tmp_path), "no database at", str(db))
    assert not db.parent.exists()


def test_plan_before_the_first_run_still_works(tmp_path):
    result = steplog(tmp_path / "new.db", "plan", str(EXAMPLE), cwd=tmp_path)
    assert result.code == 0, result.err


def _seeded(tmp_path):
    db = tmp_path / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "seed", "-q").code == 0
    return db


def test_a_workspace_under_a_file_is_refused_before_the_job_starts(tmp_path):
    """Found only when the first file step wrote, it failed the job after the calls before it
    were paid for; now it is refused up front and nothing is recorded."""
    db = _seeded(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = db_rows(db, "SELECT count(*) FROM events")
    result = steplog(db, "run", str(EXAMPLE), "--job-id", "w", "--workspace", "afile/sub", "-q")
    _refused(result, "workspace", "afile")
    assert db_rows(db, "SELECT count(*) FROM events") == before


def test_an_unwritable_workspace_is_refused_before_the_job_starts(tmp_path):
    db = _seeded(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    before = db_rows(db, "SELECT count(*) FROM events")
    result = steplog(
        db, "run", str(EXAMPLE), "--job-id", "w", "--workspace", str(locked / "w"), "-q",
        as_plain_user=True,
    )  # fmt: skip
    if result.code == 0 and os.access(locked, os.W_OK):  # pragma: no cover - no way to drop root
        pytest.skip("cannot run the CLI without root's power over permissions")
    _refused(result, "not writable")
    assert db_rows(db, "SELECT count(*) FROM events") == before


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_grace_of_nan_is_refused(tmp_path, how):
    """click's FloatRange lets NaN through (it compares false with both bounds)."""
    db = _seeded(tmp_path)
    args, env = (["--grace", "nan"], None) if how == "option" else ([], {"STEPLOG_GRACE_S": "nan"})
    result = steplog(db, "run", str(EXAMPLE), "--job-id", "g", "-q", *args, env=env)
    _refused(result, "--grace")
    assert db_rows(db, "SELECT count(*) FROM events WHERE job_id = 'g'") == [(0,)]
