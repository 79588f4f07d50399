"""Several real steplog processes on one database file: racing resumes, ownership, parallel
jobs with readers, a write lock held too long, and a second writer on a running job."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from steplog.eventstore.events import JobResumed, JobStarted, NewEvent, Owner
from steplog.eventstore.record import StoreError
from steplog.eventstore.sqlite import DatabaseBusy, SQLiteEventStore
from steplog.projections.store import open_store
from steplog.projections.tables import PROJECTORS
from tests.cli_process import spawn, status_json, steplog, wait_for
from tests.on_disk import calls, db_rows, event_count
from tests.pipeline_files import dag_pipeline
from tests.test_projection_properties import OWNER, _created

pytestmark = pytest.mark.slow

FAN_OUT = {
    "a": ([], 0.0),
    "b": (["a"], 0.6),
    "c": (["a"], 0.6),
    "d": (["a"], 0.6),
    "e": (["b", "c", "d"], 0.0),
}


# the race: the winner must still be running when the loser (started a moment later, on a
# machine that may be busy) reads the job, or the loser finds a finished job instead
RACE = {name: (needs, 2.0 if delay else 0.0) for name, (needs, delay) in FAN_OUT.items()}


def _reap(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def _clean(err: str) -> None:
    assert "Traceback" not in err, err
    assert "database is locked" not in err, err


def _dead_owner_job(db: Path, path: Path, job: str, env: dict[str, str]) -> None:
    """A job whose process was killed (-9) after its first step: status running, owner gone."""
    killed = steplog(
        db,
        "run",
        str(path),
        "--job-id",
        job,
        env={**env, "STEPLOG_FAULT": "after:step.succeeded:a"},
    )
    assert killed.code == -signal.SIGKILL, killed.err
    assert status_json(db, job)["status"] == "running"


def test_two_resumes_started_together_exactly_one_runs_the_job(tmp_path, database):
    db, log = database, tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    host = socket.gethostname()
    for round_ in range(3):
        job = f"race{round_}"
        # a fresh prompt each round, so the steps are slow again (no cache hit)
        path = dag_pipeline(tmp_path, RACE, name=f"{job}.toml", salt=f" (round {round_})")
        _dead_owner_job(db, path, job, env)
        resumed_before = db_rows(db, "SELECT count(*) FROM events WHERE type = 'job.resumed'")
        # the barrier: both processes exist before either has read the database
        first = spawn(db, "resume", job, env=env)
        second = spawn(db, "resume", job, env=env)
        results = {p.pid: (p, *_reap(p)) for p in (first, second)}
        codes = sorted(p.returncode for p, _, _ in results.values())
        assert codes == [0, 2], {pid: (p.returncode, err) for pid, (p, _, err) in results.items()}
        [winner] = [pid for pid, (p, _, _) in results.items() if p.returncode == 0]
        [loser_err] = [err for p, _, err in results.values() if p.returncode == 2]
        expected = f"error: job {job} is being run by process {winner} on host {host} (worker "
        assert loser_err.strip().startswith(expected) and loser_err.count("\n") == 1
        for _, _, err in results.values():
            _clean(err)
        resumed = db_rows(db, "SELECT count(*) FROM events WHERE type = 'job.resumed'")
        assert resumed[0][0] == resumed_before[0][0] + 1  # exactly one claim per round
        [(data,)] = db_rows(
            db, "SELECT data FROM events WHERE job_id = ? AND type = 'job.resumed'", (job,)
        )
        assert json.loads(data)["owner"]["pid"] == winner
        assert status_json(db, job)["status"] == "succeeded"
    # every step called once per round, across the kill and the race
    assert calls(log) == Counter({step: 3 for step in "abcde"})


def test_an_owner_on_another_host_needs_force(tmp_path):
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    path = dag_pipeline(tmp_path, FAN_OUT)
    _dead_owner_job(db, path, "far", env)
    # what another machine's `steplog resume` would have appended (the store API, as it would)
    store = open_store(db)
    try:
        version = store.job_version("far")
        other = Owner(pid=4242, host=socket.gethostname() + "-elsewhere", started="1")
        resumed = JobResumed(owner=other, pipeline_fingerprint="f" * 64)
        store.append("far", [NewEvent.of(resumed)], expected_version=version)
    finally:
        store.close()
    before = event_count(db)
    refused = steplog(db, "resume", "far", env=env)
    assert refused.code == 2
    assert refused.err.strip() == (
        f"error: job far is being run by process 4242 on host {other.host}; "
        "if that process is gone, resume with --force"
    )
    assert event_count(db) == before

    forced = steplog(db, "resume", "far", "--force", env=env)
    assert forced.code == 0, forced.err
    [(flag,)] = db_rows(
        db,
        "SELECT json_extract(data, '$.forced') FROM events WHERE type = 'job.resumed'"
        " ORDER BY seq DESC LIMIT 1",
    )
    assert flag == 1
    assert status_json(db, "far")["status"] == "succeeded"


def test_four_jobs_at_once_on_one_file_with_readers(tmp_path):
    """Four fan-out jobs in four processes, started together on a file that does not exist yet,
    their commits interleaving; `status`, `jobs` and `events --follow` read meanwhile."""
    db = tmp_path / "s.db"
    steps = {"root": ([], 0.0)}
    steps.update({f"s{i}": (["root"], 0.05) for i in range(8)})
    steps["join"] = ([f"s{i}" for i in range(8)], 0.0)
    jobs = [f"p{i}" for i in range(4)]
    # a different prompt per job: no job is served from another's cache
    paths = [dag_pipeline(tmp_path, steps, name=f"{j}.toml", salt=f" for {j}") for j in jobs]
    writers = [spawn(db, "run", str(p), "--job-id", j, env={}) for p, j in zip(paths, jobs)]
    follower = None
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE job_id = 'p0'")
        follower = spawn(db, "events", "p0", "--follow", "--json", env={})
        for _ in range(40):  # readers while the writers write (bounded)
            if all(w.poll() is not None for w in writers):
                break
            for args in (("status", "--json"), ("jobs", "--json")):
                read = steplog(db, *args)
                assert read.code == 0, read.err
                _clean(read.err)
                json.loads(read.out)
        outputs = [_reap(w) for w in writers]
        followed, follow_err = _reap(follower, timeout=30)
    finally:
        for proc in [*writers, *([follower] if follower else [])]:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    for w, (_out, err) in zip(writers, outputs):
        assert w.returncode == 0, err
        _clean(err)
    assert follower.returncode == 0, follow_err
    _clean(follow_err)
    seen = [json.loads(line)["type"] for line in followed.splitlines() if line.strip()]
    assert seen[0] == "job.created" and seen[-1] == "job.succeeded"
    for job in jobs:
        doc = status_json(db, job)
        assert doc["status"] == "succeeded" and doc["llm_calls"] == 10
    # the jobs really ran at the same time: their events interleave in the global order
    order = [r[0] for r in db_rows(db, "SELECT job_id FROM events ORDER BY seq")]
    switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
    assert switches > len(jobs)
    verified = steplog(db, "verify", "--json")
    assert verified.code == 0, verified.out + verified.err
    assert json.loads(verified.out)["ok"] is True


def test_a_write_lock_held_past_the_busy_timeout_ends_the_run_in_one_line(tmp_path):
    """Another program holds the write lock (BEGIN IMMEDIATE) longer than the busy timeout:
    the run stops with one line and exit 2, nothing half-written; resume reaches success."""
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log), "STEPLOG_BUSY_TIMEOUT_MS": "300"}
    path = dag_pipeline(tmp_path, {"a": ([], 0.0), "b": (["a"], 1.5), "c": (["b"], 0.0)})
    proc = spawn(db, "run", str(path), "--job-id", "j", env=env)
    holder = None
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE type = 'llm.request' AND step = 'b'")
        holder = sqlite3.connect(db, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        before = holder.execute("SELECT count(*) FROM events").fetchone()[0]
        out, err = _reap(proc)  # b's answer cannot be committed while we hold the lock
        holder.execute("ROLLBACK")
    finally:
        if holder is not None:
            holder.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    after = event_count(db)  # the run is over: whatever it wrote would be visible now
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"created new database {db}",
        f"error: database {db} is locked: another process held its write lock for more than "
        "300 ms (STEPLOG_BUSY_TIMEOUT_MS)",
    ]
    assert after == before  # nothing was written while it waited
    assert _status(db) == "running"  # its owner is gone: resumable without --force
    resumed = steplog(db, "resume", "j", env=env)
    assert resumed.code == 0, resumed.err
    assert status_json(db, "j")["status"] == "succeeded"
    verified = steplog(db, "verify")
    assert verified.code == 0, verified.out


def _status(db: Path) -> str:
    return status_json(db, "j")["status"]


def test_a_second_writer_on_a_running_job_ends_the_run_in_one_line(tmp_path):
    """While a run waits for an answer, a job.resumed lands from elsewhere (a forced takeover):
    the run's next commit conflicts; it stops with one line, exit 2, and appends nothing more."""
    db = tmp_path / "s.db"
    path = dag_pipeline(tmp_path, {"a": ([], 0.0), "b": (["a"], 1.5), "c": (["b"], 0.0)})
    proc = spawn(db, "run", str(path), "--job-id", "j", env={})
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE type = 'llm.request' AND step = 'b'")
        store = open_store(db)
        try:
            other = Owner(pid=4242, host="elsewhere", started="1")
            takeover = JobResumed(owner=other, pipeline_fingerprint="f" * 64, forced=True)
            store.append("j", [NewEvent.of(takeover)], expected_version=store.job_version("j"))
            version = store.job_version("j")
        finally:
            store.close()
        out, err = _reap(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 2, err
    assert err.strip().splitlines() == [
        f"created new database {db}",
        "error: job j was appended to by another process while this one ran it; "
        "this run stopped (see: steplog status j)",
    ]
    assert db_rows(db, "SELECT max(version) FROM events WHERE job_id = 'j'") == [(version,)]
    assert steplog(db, "verify").code == 0
    resumed = steplog(db, "resume", "j", "--force")  # the owner "elsewhere" cannot be checked
    assert resumed.code == 0, resumed.err
    assert status_json(db, "j")["status"] == "succeeded"


def test_a_reader_polling_while_a_job_writes_never_fails(tmp_path):
    """status/events in a tight bounded loop against a job that commits every few ms."""
    db = tmp_path / "s.db"
    steps = {f"s{i}": ([f"s{i - 1}"] if i else [], 0.01) for i in range(30)}
    path = dag_pipeline(tmp_path, steps)
    proc = spawn(db, "run", str(path), "--job-id", "j", env={})
    reads = 0
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE job_id = 'j'")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and reads < 30:
            for args in (("status", "j", "--json"), ("events", "j", "--json")):
                read = steplog(db, *args)
                assert read.code == 0, read.err
                _clean(read.err)
            reads += 1
        out, err = _reap(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert reads >= 1


def test_the_store_gives_up_on_a_held_lock_with_a_clear_error(tmp_path):
    """In process: the busy error is a StoreError (one CLI line) and still an OperationalError;
    nothing of the refused batch is written. A bad STEPLOG_BUSY_TIMEOUT_MS is refused."""
    db = tmp_path / "s.db"
    holder, waiter = open_store(db), None
    try:
        holder.append("j", [_created(), NewEvent.of(JobStarted(owner=OWNER))], expected_version=0)
        waiter = SQLiteEventStore(db, projectors=PROJECTORS, busy_timeout_ms=100)
        with holder.write_transaction():
            with pytest.raises(DatabaseBusy) as caught:
                waiter.append("j", [NewEvent.of(JobStarted(owner=OWNER))], expected_version=2)
        assert isinstance(caught.value, StoreError)
        assert isinstance(caught.value, sqlite3.OperationalError)
        assert "more than 100 ms" in str(caught.value)
        assert waiter.job_version("j") == 2  # nothing written
        waiter.append("j", [NewEvent.of(JobStarted(owner=OWNER))], expected_version=2)
    finally:
        holder.close()
        if waiter is not None:
            waiter.close()
    bad = steplog(db, "status", "j", env={"STEPLOG_BUSY_TIMEOUT_MS": "soon"})
    assert bad.code == 2
    assert bad.err.strip() == (
        "error: STEPLOG_BUSY_TIMEOUT_MS must be a whole number of milliseconds, not 'soon'"
    )


def test_the_claim_that_loses_the_append_race_names_the_winner(tmp_path):
    """Both resumes read the job before either appends (the interleaving the process race hits
    only sometimes, forced here): the second append fails the version check and is refused
    with the winner's pid and host; one job.resumed in all."""
    from steplog.commands.jobs import (
        Rejected,
        ResumeCommand,
        RunCommand,
        prepare_resume,
        prepare_run,
    )
    from steplog.eventstore.events import JobInterrupted

    db = tmp_path / "s.db"
    path = dag_pipeline(tmp_path, {"a": ([], 0.0)})
    store = open_store(db)
    try:
        prepare_run(store, RunCommand(pipeline_path=path, job_id="j", workspace=tmp_path / "w"))
        store.append("j", [NewEvent.of(JobInterrupted(signal="SIGINT"))])
    finally:
        store.close()

    winner = open_store(db)

    class ReadThenLoseTheRace(SQLiteEventStore):
        raced = False

        def write_transaction(self):  # type: ignore[no-untyped-def]
            if not self.raced:  # between this claim's read and its append, another claims
                self.raced = True
                prepare_resume(winner, ResumeCommand(job_id="j"))
            return super().write_transaction()

    loser = ReadThenLoseTheRace(db, projectors=PROJECTORS)
    try:
        with pytest.raises(Rejected) as refused:
            prepare_resume(loser, ResumeCommand(job_id="j"))
    finally:
        loser.close()
        winner.close()
    assert str(refused.value).startswith(
        f"job j is being run by process {os.getpid()} on host {socket.gethostname()} (worker run-"
    )
    assert db_rows(db, "SELECT count(*) FROM events WHERE type = 'job.resumed'") == [(1,)]
