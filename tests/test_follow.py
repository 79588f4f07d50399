"""`events JOB --follow` in one subprocess while another runs the job (real CLI, real SQLite)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.cli_process import spawn, steplog
from tests.on_disk import EXAMPLE, db_rows

pytestmark = pytest.mark.slow

LOCAL = 'kind = "offline"\nmodel = "offline-1"'
WAIT_S = 60  # bound on every wait; the job itself takes about three seconds


def _types(db: Path, job: str) -> list[str]:
    if not db.exists():
        return []
    try:
        rows = db_rows(db, "SELECT type FROM events WHERE job_id = ? ORDER BY version", (job,))
    except sqlite3.OperationalError:  # the schema may not be there yet
        return []
    return [r[0] for r in rows]


def _reap(*procs: subprocess.Popen[str] | None) -> None:
    """Kill what still runs, and close every pipe (warnings are errors here)."""
    for proc in procs:
        if proc is None:
            continue
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT_S)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_follow_prints_new_events_and_exits_when_the_job_ends(tmp_path):
    db = tmp_path / "s.db"
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(EXAMPLE.read_text().replace(LOCAL, LOCAL + "\noptions = { delay_s = 1.0 }"))
    runner = spawn(db, "run", str(pipeline), "--job-id", "slow", "--quiet")
    everything = steps_only = None
    try:
        deadline = time.monotonic() + WAIT_S
        while "step.started" not in _types(db, "slow") and time.monotonic() < deadline:
            time.sleep(0.05)
        at_start = _types(db, "slow")
        assert "step.started" in at_start and "job.succeeded" not in at_start
        everything = spawn(db, "events", "slow", "--follow", "--json", "--interval", "0.05")
        steps_only = spawn(db, "events", "slow", "-f", "--type", "step.*", "--step", "qa")
        out, err = everything.communicate(timeout=WAIT_S)
        assert everything.returncode == 0, err
        _, run_err = runner.communicate(timeout=WAIT_S)
        assert runner.returncode == 0, run_err
        printed = [json.loads(line) for line in out.splitlines()]
        assert [e["type"] for e in printed] == _types(db, "slow")  # all of them, in order
        assert len(printed) > len(at_start)  # including those committed after it started
        assert printed[-1]["type"] == "job.succeeded"
        qa_out, qa_err = steps_only.communicate(timeout=WAIT_S)
        assert steps_only.returncode == 0, qa_err
        qa_lines = qa_out.splitlines()
        assert [line.split()[3] for line in qa_lines] == ["step.started", "step.succeeded"]
        assert all(" qa " in line for line in qa_lines)
    finally:
        _reap(runner, everything, steps_only)


def test_follow_stops_on_ctrl_c_and_refuses_an_unknown_job(tmp_path):
    db = tmp_path / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "done").code == 0
    assert steplog(db, "events", "done", "--follow").code == 0  # already ended: prints, exits
    assert steplog(db, "replay", "done", "--until", "3", "--fork", "idle").code == 0
    follower = spawn(db, "events", "idle", "--follow", "--json")  # a fork nobody resumes
    try:
        lines: list[str] = []
        assert follower.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + WAIT_S
        while len(lines) < 4 and time.monotonic() < deadline:  # 3 copied events + job.forked
            time.sleep(0.05)
        assert len(lines) == 4
        assert json.loads(lines[-1])["type"] == "job.forked"
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=WAIT_S)
        reader.join(timeout=WAIT_S)
        assert follower.returncode == 0
    finally:
        _reap(follower)
    missing = steplog(db, "events", "nope", "--follow", "--wait", "0.5")
    assert missing.code == 2 and "unknown job nope (waited 0.5 s" in missing.err
