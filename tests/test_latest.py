"""`@latest` names the most recently updated job wherever a verb takes a JOB."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from steplog.commands.queries import LATEST, latest_job, resolve_job
from steplog.errors import Rejected
from steplog.projections.store import open_store
from tests.cli_inprocess import assert_refused_in_one_line, steplog_here
from tests.on_disk import EXAMPLE

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # workspaces default to runs/JOB under the current directory


@pytest.fixture
def two_jobs(tmp_path: Path) -> Path:
    """`older` succeeded first; `newer`, a failed job, was updated last."""
    db = tmp_path / "s.db"
    shutil.copy(DATA / "audit_pipeline.toml", tmp_path / "audit.toml")
    ran = steplog_here(db, "run", str(EXAMPLE), "--job-id", "older", "-q", "--workspace", "w1")
    assert ran.code == 0, ran.err
    ran = steplog_here(db, "run", str(tmp_path / "audit.toml"), "--job-id", "newer", "-q")
    assert ran.code == 1, ran.err
    return db


def test_the_service_resolves_only_the_shortcut(two_jobs):
    store = open_store(two_jobs)
    try:
        assert latest_job(store) == "newer"
        assert resolve_job(store, LATEST) == "newer"
        assert resolve_job(store, "older") == "older"
        assert resolve_job(store, "nosuchjob") == "nosuchjob"  # the verb says it is unknown
    finally:
        store.close()


@pytest.mark.parametrize(
    "args",
    [
        ("status", "{job}"),
        ("status", "{job}", "--json"),
        ("events", "{job}"),
        ("events", "{job}", "--json", "--type", "step.*"),
        ("events", "{job}", "--follow", "--json"),  # newer has ended: it prints and exits
        ("show", "{job}", "flaky", "--json"),
        ("show", "{job}", "architect", "--answer"),
        ("replay", "{job}", "--until", "3", "--json"),
        ("timeline", "{job}", "--output", "-"),
        ("audit", "{job}", "--json"),
        ("export", "{job}"),
        ("plan", str(DATA / "audit_pipeline.toml"), "--job", "{job}", "--json"),
    ],
    ids=lambda args: " ".join(args),
)
def test_each_verb_reads_the_latest_job(two_jobs, args):
    explicit = steplog_here(two_jobs, *(a.format(job="newer") for a in args))
    latest = steplog_here(two_jobs, *(a.format(job=LATEST) for a in args))
    assert explicit.code == 0, explicit.err
    assert (latest.code, latest.out, latest.err) == (explicit.code, explicit.out, explicit.err)


def test_status_without_a_job_is_the_latest(two_jobs):
    assert steplog_here(two_jobs, "status", LATEST).out == steplog_here(two_jobs, "status").out


def test_the_latest_moves_with_the_log(two_jobs):
    """Updated, not created: a resumed older job becomes the latest."""
    shown = steplog_here(two_jobs, "status", LATEST, "--json")
    assert json.loads(shown.out)["job_id"] == "newer"
    resumed = steplog_here(two_jobs, "resume", LATEST, "-q")  # newer fails again: updated
    assert resumed.code == 1 and "job newer failed" in resumed.err, resumed.err
    fork = steplog_here(two_jobs, "replay", "older", "--until", "5", "--fork", "forked")
    assert fork.code == 0, fork.err
    assert json.loads(steplog_here(two_jobs, "status", LATEST, "--json").out)["job_id"] == "forked"


def test_replay_fork_takes_the_shortcut_for_its_source(two_jobs):
    forked = steplog_here(two_jobs, "replay", LATEST, "--until", "3", "--fork", "copy", "--json")
    assert forked.code == 0, forked.err
    assert json.loads(forked.out)["source_job"] == "newer"


def test_no_jobs_yet_is_one_line_for_every_verb(tmp_path):
    db = tmp_path / "empty.db"
    open_store(db).close()
    for args in (
        ("status",),
        ("status", LATEST),
        ("events", LATEST),
        ("show", LATEST, "builder"),
        ("replay", LATEST, "--until", "1"),
        ("timeline", LATEST, "-o", "-"),
        ("audit", LATEST),
        ("export", LATEST),
        ("resume", LATEST),
        ("plan", str(EXAMPLE), "--job", LATEST),
    ):
        assert_refused_in_one_line(steplog_here(db, *args), mentions=f"no jobs in {db} yet")


def test_the_shortcut_cannot_be_a_job_id(tmp_path):
    ran = steplog_here(tmp_path / "s.db", "run", str(EXAMPLE), "--job-id", LATEST, "-q")
    assert_refused_in_one_line(ran, mentions="is not valid")
    with pytest.raises(Rejected, match="no jobs"):
        store = open_store(tmp_path / "s.db")
        try:
            resolve_job(store, LATEST)
        finally:
            store.close()
