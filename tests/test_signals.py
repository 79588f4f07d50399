"""Ctrl-C and SIGTERM against the real CLI: drain, grace period, second signal, resume.

A call is "in flight" from the moment its llm.request is committed; the tests send the signal
once the database shows that, so what they check does not depend on timing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_process import StderrLines, spawn, status_json, steplog, wait_for
from tests.on_disk import calls, db_rows
from tests.pipeline_files import dag_pipeline

pytestmark = pytest.mark.slow

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# How long a call the test signals during stays in flight: the test process, slowed by a busy
# machine, must get its signal in before the call answers (1.5 s leaves little margin).
CALL_S = 4.0


def _finish(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            with proc.stdout:
                proc.stdout.read()


def _interruption(db: Path) -> dict:
    [(data,)] = db_rows(db, "SELECT data FROM events WHERE type = 'job.interrupted'")
    return json.loads(data)


def _asked(server) -> int:  # type: ignore[no-untyped-def]
    """Chat calls the fake server has received (counted as each request arrives)."""
    return sum(1 for c in server.calls if c["path"].endswith("/chat/completions"))


def _count(db: Path, type_: str, step: str) -> int:
    return db_rows(db, "SELECT count(*) FROM events WHERE type = ? AND step = ?", (type_, step))[0][
        0
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_calls_in_flight_finish_in_the_grace_period_and_are_not_asked_again(tmp_path, sig):
    """Three parallel calls in flight at the signal: all finish and are committed; the step
    after them never starts; exit 130/143; resume calls only that step."""
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    path = dag_pipeline(
        tmp_path,
        {
            "a": ([], 0),
            "b": (["a"], CALL_S),
            "c": (["a"], CALL_S),
            "d": (["a"], CALL_S),
            "e": (["b", "c", "d"], 0),
        },
    )
    proc = spawn(db, "run", str(path), "--job-id", "j", env=env)
    err = StderrLines(proc)
    try:
        wait_for(
            db,
            "SELECT count(*) = 3 FROM events WHERE type = 'llm.request'"
            " AND step IN ('b', 'c', 'd')",
        )
        proc.send_signal(sig)
        notice = err.wait_for("stopping")
    finally:
        _finish(proc)
    assert proc.returncode == CODES[sig], err.text()
    name = signal.Signals(sig).name
    assert notice == (
        f"stopping ({name}): waiting up to 10s for 3 running calls (Ctrl-C again to stop now)"
    )
    assert "Traceback" not in err.text()
    for step in "bcd":  # each answer that came in the grace period is committed with its step
        assert _count(db, "llm.response", step) == 1
        assert _count(db, "step.succeeded", step) == 1
    assert _count(db, "step.started", "e") == 0  # no new step after the signal
    stop = _interruption(db)
    assert stop["signal"] == name
    assert (stop["grace_s"], stop["calls_finished"], stop["calls_cancelled"]) == (10.0, 3, 0)
    assert status_json(db, "j")["status"] == "interrupted"
    assert calls(log) == Counter({"a": 1, "b": 1, "c": 1, "d": 1})

    resumed = steplog(db, "resume", "j", env=env)
    assert resumed.code == 0, resumed.err
    assert calls(log) == Counter({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})  # none asked twice
    assert status_json(db, "j")["status"] == "succeeded"


@pytest.mark.parametrize(
    ("sig", "how"),
    [
        (signal.SIGINT, "second signal"),
        (signal.SIGTERM, "second signal"),
        (signal.SIGINT, "grace over"),
    ],
    ids=["SIGINT-twice", "SIGTERM-twice", "grace-over"],
)
def test_a_second_signal_or_the_end_of_the_grace_cancels_the_call(tmp_path, sig, how, fake_llm):
    """A call that would take a minute: a second signal (grace 600 s, so nothing else could end
    the run in time) or a 1 s grace cancels it; job.interrupted is still recorded, the exit code
    is still the first signal's, and resume asks for that answer once more."""
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("delay", 60.0))  # a slow first byte for the first call only
    provider = (
        'kind = "openai"\n'
        f'base_url = "http://127.0.0.1:{server.port}/v1"\nmodel = "fake-model"\n'
        "max_retries = 0\ntimeout_s = 120"
    )
    path = dag_pipeline(tmp_path, {"a": ([], 0), "b": (["a"], 0)}, provider=provider)
    grace = "600" if how == "second signal" else "1"
    proc = spawn(db, "run", str(path), "--job-id", "j", "--grace", grace, env={})
    err = StderrLines(proc)
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE type = 'llm.request' AND step = 'a'")
        # committed is not yet sent: on a busy machine the request may still be on its way,
        # and a call cancelled before it left would never reach the server
        deadline = time.monotonic() + 30
        while not _asked(server) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(sig)
        err.wait_for("stopping")
        if how == "second signal":
            proc.send_signal(sig)
    finally:
        _finish(proc)
    assert proc.returncode == CODES[sig], err.text()
    assert "Traceback" not in err.text()
    stop = _interruption(db)
    assert stop["calls_finished"] == 0 and stop["calls_cancelled"] == 1
    second = signal.Signals(sig).name if how == "second signal" else None
    assert stop["second_signal"] == second
    assert _count(db, "llm.response", "a") == 0  # the cancelled call has no answer
    assert status_json(db, "j")["status"] == "interrupted"
    assert _asked(server) == 1

    resumed = steplog(db, "resume", "j")
    assert resumed.code == 0, resumed.err
    asked = sum(1 for c in server.calls if c["path"].endswith("/chat/completions"))
    assert asked == 3  # a once more (its answer never came), then b
    assert status_json(db, "j")["status"] == "succeeded"


def test_grace_zero_cancels_at_once_and_bad_grace_is_refused(tmp_path):
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log), "STEPLOG_GRACE_S": "0"}
    path = dag_pipeline(tmp_path, {"a": ([], 30), "b": (["a"], 0)})
    proc = spawn(db, "run", str(path), "--job-id", "j", env=env)
    err = StderrLines(proc)
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE type = 'llm.request' AND step = 'a'")
        proc.send_signal(signal.SIGTERM)
    finally:
        _finish(proc)
    assert proc.returncode == 143, err.text()
    assert "stopping (SIGTERM): cancelling 1 running call (grace 0)" in err.text()
    assert _interruption(db)["calls_cancelled"] == 1
    assert calls(log) == Counter()  # the offline call was cut off before it answered

    for bad in (("--grace", "-1"), ("--grace", "soon")):
        result = steplog(db, "resume", "j", *bad)
        assert result.code == 2 and "--grace" in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1
    assert db_rows(db, "SELECT count(*) FROM events WHERE type = 'job.resumed'") == [(0,)]


def test_a_signal_while_steps_wait_for_a_slot_starts_none_of_them(tmp_path):
    """max_concurrency 1: one call in flight, two steps waiting for the slot. The signal lets
    the call finish; the waiting steps never call; resume runs them."""
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    provider = 'kind = "offline"\nmodel = "offline-1"\nmax_concurrency = 1'
    path = dag_pipeline(
        tmp_path, {"a": ([], CALL_S), "b": ([], 1.5), "c": ([], 1.5)}, provider=provider
    )
    proc = spawn(db, "run", str(path), "--job-id", "j", env=env)
    err = StderrLines(proc)
    try:
        wait_for(db, "SELECT count(*) = 2 FROM events WHERE type = 'step.waiting'")
        proc.send_signal(signal.SIGINT)
    finally:
        _finish(proc)
    assert proc.returncode == 130, err.text()
    assert db_rows(db, "SELECT count(*) FROM events WHERE type = 'llm.request'") == [(1,)]
    assert db_rows(db, "SELECT count(*) FROM events WHERE type = 'step.succeeded'") == [(1,)]
    assert sum(calls(log).values()) == 1
    resumed = steplog(db, "resume", "j", env=env)
    assert resumed.code == 0, resumed.err
    assert calls(log) == Counter({"a": 1, "b": 1, "c": 1})


def test_a_signal_during_the_last_call_lets_the_job_finish(tmp_path):
    """Nothing is left once the call in flight answers: the job ends as it would have."""
    db = tmp_path / "s.db"
    path = dag_pipeline(tmp_path, {"a": ([], 0), "b": (["a"], CALL_S)})
    proc = spawn(db, "run", str(path), "--job-id", "j", env={})
    err = StderrLines(proc)
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE type = 'llm.request' AND step = 'b'")
        proc.send_signal(signal.SIGINT)
        err.wait_for("stopping")
    finally:
        _finish(proc)
    assert proc.returncode == 0, err.text()
    assert status_json(db, "j")["status"] == "succeeded"
    assert db_rows(db, "SELECT count(*) FROM events WHERE type = 'job.interrupted'") == [(0,)]


class _Recorder:
    """A run with `running` calls in flight; records what the watcher asked of it."""

    def __init__(self, running: int) -> None:
        self.running = running
        self.asked: list[str] = []

    def drain(self) -> int:
        self.asked.append("drain")
        return self.running

    def stop_now(self) -> int:
        self.asked.append("stop_now")
        return self.running


@pytest.mark.parametrize(
    ("running", "grace", "second", "expected"),
    [
        (2, 600.0, True, ("SIGINT", 2, 0, 2)),  # the second signal cuts a long grace short
        (1, 0.05, False, (None, 1, 0, 1)),  # the grace runs out
        (0, 600.0, False, (None, 0, 0, 0)),  # nothing in flight: no grace to wait
    ],
)
def test_the_watcher_drains_then_stops_on_real_signals(running, grace, second, expected):
    import os

    import anyio

    from steplog.executor.shutdown import Shutdown

    said: list[str] = []
    target = _Recorder(running)
    shutdown = Shutdown(grace, said.append)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            await group.start(shutdown.watch, target)
            os.kill(os.getpid(), signal.SIGINT)
            with anyio.fail_after(30):
                while "drain" not in target.asked:
                    await anyio.sleep(0.01)
                if second:
                    os.kill(os.getpid(), signal.SIGINT)
                while "stop_now" not in target.asked:
                    await anyio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)  # a third one changes nothing
            await anyio.sleep(0.05)
            group.cancel_scope.cancel()

    anyio.run(main)
    report = shutdown.report
    assert report is not None and report.signal == "SIGINT"
    assert (
        report.second_signal,
        report.calls_running,
        report.calls_finished,
        report.calls_cancelled,
    ) == expected
    assert target.asked == ["drain", "stop_now"]
    assert len(said) == 1 and said[0].startswith("stopping (SIGINT)")
