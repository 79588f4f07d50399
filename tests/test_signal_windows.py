"""Signals that land outside the event loop's handlers: before they exist, after they are gone.

There the old path applies (KeyboardInterrupt, then job.interrupted). These tests put a real
signal, sent to this process, at exactly those places, on a real database:
- after the job ended (job.succeeded committed, the loop's handlers removed): the job stays
  succeeded, nothing is appended after its end;
- a second signal while that path appends job.interrupted: the record is not cut off.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from steplog.commands import jobs
from steplog.commands.jobs import Interrupted, RunCommand, execute, prepare_run
from steplog.commands.queries import fold_job
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections.store import open_store
from tests.pipeline_files import dag_pipeline


def _prepared(tmp_path: Path, store: SQLiteEventStore) -> jobs.Prepared:
    path = dag_pipeline(tmp_path, {"a": ([], 0), "b": (["a"], 0)})
    return prepare_run(store, RunCommand(pipeline_path=path, job_id="j", workspace=tmp_path / "w"))


def _types(store: SQLiteEventStore) -> list[str]:
    return [ev.type for ev in store.read_job("j")]


def test_a_signal_after_the_job_ended_leaves_it_ended(tmp_path, monkeypatch):
    store = open_store(tmp_path / "s.db")
    prepared = _prepared(tmp_path, store)

    @contextmanager
    def then_signal() -> Iterator[None]:
        yield  # the run is over: job.succeeded committed, the loop and its handlers gone
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    monkeypatch.setattr(jobs, "_long_lived_heap", then_signal)
    try:
        outcome = execute(store, prepared, say=lambda line: None)
    except Interrupted:
        outcome = None
    except KeyboardInterrupt:  # pragma: no cover - the bug this test is about, not pytest's
        pytest.fail("the signal escaped execute() as KeyboardInterrupt")
    types = _types(store)
    assert types[-1] == "job.succeeded", types
    assert "job.interrupted" not in types
    assert fold_job(store, "j").status == "succeeded"
    assert outcome is not None and outcome.succeeded


def test_a_second_signal_while_job_interrupted_is_appended_does_not_cut_it_off(
    tmp_path, monkeypatch
):
    store = open_store(tmp_path / "s.db")
    prepared = _prepared(tmp_path, store)
    append = store.append

    def append_after_a_signal(job_id, events, **kwargs):  # type: ignore[no-untyped-def]
        if any(e.type == "job.interrupted" for e in events):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, as the record is written
        return append(job_id, events, **kwargs)

    @contextmanager
    def signal_first() -> Iterator[None]:
        os.kill(os.getpid(), signal.SIGINT)  # before the loop and its handlers exist
        yield

    monkeypatch.setattr(store, "append", append_after_a_signal)
    monkeypatch.setattr(jobs, "_long_lived_heap", signal_first)
    try:
        with pytest.raises(Interrupted) as stopped:
            execute(store, prepared, say=lambda line: None)
    except KeyboardInterrupt:  # pragma: no cover - the bug this test is about, not pytest's
        pytest.fail("the second signal cut off the job.interrupted append")
    assert stopped.value.exit_code == 130
    assert _types(store)[-1] == "job.interrupted"
    assert fold_job(store, "j").status == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_after_job_resumed_before_the_run_starts_is_one_line_and_resumable(
    tmp_path, monkeypatch, sig, code
):
    """`resume` checks the workspace for hand-edited files after job.resumed is committed and
    before the run takes over the signals (a big workspace takes a while): Ctrl-C there."""
    from steplog.commands.cli import run as cli_run
    from tests.cli_inprocess import steplog_here

    db = tmp_path / "s.db"
    path = tmp_path / "p.toml"
    text = """name = "w"
[providers.local]
kind = "offline"
model = "offline-1"
[steps.a]
provider = "local"
prompt = "A."
[steps.b]
needs = ["a"]
provider = "local"
prompt = "B {{ steps.a.output }}"
"""
    path.write_text(text + "options = { fail = true }\n")
    first = steplog_here(db, "run", str(path), "--job-id", "k", "--workspace", str(tmp_path / "k"))
    assert first.code == 1, first.err  # b failed: the job waits for a resume
    path.write_text(text)

    def warnings_then_ctrl_c(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), sig)
        return []

    monkeypatch.setattr(cli_run.drift, "warnings", warnings_then_ctrl_c)
    try:
        stopped = steplog_here(db, "resume", "k")
    except KeyboardInterrupt:  # pragma: no cover - the bug this test is about, not pytest's
        pytest.fail("Ctrl-C before the run escaped as KeyboardInterrupt")
    assert stopped.code == code, stopped.err
    assert stopped.err.count("\n") == 1 and "continue with: steplog resume k" in stopped.err
    with open_store(db) as s:
        events = list(s.read_job("k"))
        assert [ev.type for ev in events][-2:] == ["job.resumed", "job.interrupted"]
        assert f'"signal":"{signal.Signals(sig).name}"' in events[-1].data_json
        assert fold_job(s, "k").status == "interrupted"
    monkeypatch.undo()
    resumed = steplog_here(db, "resume", "k")
    assert resumed.code == 0, resumed.err


_SIGTERM_AFTER_THE_LOOP = """
import os, signal, sys
from contextlib import contextmanager
from pathlib import Path
from steplog.commands import jobs
from steplog.projections.store import open_store

@contextmanager
def then_sigterm():
    yield  # the loop is closed: its handlers are gone, job.interrupted not yet appended
    os.kill(os.getpid(), signal.SIGTERM)

def ctrl_c_once_a_is_asked(stored):
    if any(ev.type == "llm.request" and ev.step == "a" for ev in stored):
        os.kill(os.getpid(), signal.SIGINT)

jobs._long_lived_heap = then_sigterm
store = open_store(sys.argv[1])
cmd = jobs.RunCommand(pipeline_path=Path(sys.argv[2]), job_id="j", workspace=Path(sys.argv[3]))
prepared = jobs.prepare_run(store, cmd)
try:
    jobs.execute(store, prepared, observer=ctrl_c_once_a_is_asked, say=lambda line: None)
except jobs.Interrupted as stop:
    sys.exit(stop.exit_code)
sys.exit(0)
"""


@pytest.mark.slow
def test_sigterm_after_the_loop_closed_still_records_the_interruption(tmp_path):
    """The event loop, removing its SIGTERM handler at the end of the run, puts back the
    default action (die at once), not steplog's: a SIGTERM between the loop's end and the
    job.interrupted append must still be recorded, in a real process."""
    import subprocess
    import sys

    db = tmp_path / "s.db"
    path = dag_pipeline(tmp_path, {"a": ([], 0.2), "b": (["a"], 0)})
    script = tmp_path / "child.py"
    script.write_text(_SIGTERM_AFTER_THE_LOOP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(script), str(db), str(path), str(tmp_path / "w")],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-2000:])
    with open_store(db) as store:
        assert [ev.type for ev in store.read_job("j")][-1] == "job.interrupted"
        assert fold_job(store, "j").status == "interrupted"


# -- a `run` whose opening events are appended inside the loop (prepare_run(open_in_loop=True))


def _deferred(tmp_path: Path, store: SQLiteEventStore, job_id: str = "j") -> jobs.Prepared:
    path = dag_pipeline(tmp_path, {"a": ([], 0), "b": (["a"], 0)})
    cmd = RunCommand(pipeline_path=path, job_id=job_id, workspace=tmp_path / "w")
    return prepare_run(store, cmd, open_in_loop=True)


def test_a_signal_before_a_deferred_opening_leaves_nothing_in_the_log(tmp_path, monkeypatch):
    store = open_store(tmp_path / "s.db")
    prepared = _deferred(tmp_path, store)
    assert list(store.read_all()) == [] and not prepared.opened

    @contextmanager
    def signal_first() -> Iterator[None]:
        os.kill(os.getpid(), signal.SIGINT)  # before the loop: the job is not in the log yet
        yield

    monkeypatch.setattr(jobs, "_long_lived_heap", signal_first)
    with pytest.raises(KeyboardInterrupt):  # no job to record it on, no lease to end
        execute(store, prepared, say=lambda line: None)
    assert list(store.read_all()) == []


def test_a_signal_as_the_deferred_opening_commits_is_the_runs_and_the_job_resumes(
    tmp_path, monkeypatch
):
    store = open_store(tmp_path / "s.db")
    prepared = _deferred(tmp_path, store)
    append_opening = jobs.append_opening

    def opening_then_signal(*args, **kwargs):  # type: ignore[no-untyped-def]
        stored = append_opening(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # inside the loop: its handler takes it
        return stored

    monkeypatch.setattr(jobs, "append_opening", opening_then_signal)
    with pytest.raises(Interrupted) as stopped:
        execute(store, prepared, say=lambda line: None)
    assert stopped.value.exit_code == 130
    types = _types(store)
    assert types[:2] == ["job.created", "job.started"] and types[-1] == "job.interrupted", types
    assert "job.succeeded" not in types
    assert prepared.opened and fold_job(store, "j").status == "interrupted"
    lease = prepared.lease
    assert lease is not None
    assert [ev.type for ev in store.read_job(lease.stream)] == ["worker.started", "worker.stopped"]
    monkeypatch.undo()
    resumed = jobs.prepare_resume(store, jobs.ResumeCommand(job_id="j"))
    assert execute(store, resumed, say=lambda line: None).succeeded


def test_a_deferred_opening_refused_in_the_loop_leaves_no_lease(tmp_path):
    store = open_store(tmp_path / "s.db")
    first, second = _deferred(tmp_path, store), _deferred(tmp_path, store)
    jobs.open_job(store, first)  # the same job id, opened meanwhile by another run
    with pytest.raises(jobs.Rejected, match="job j already exists"):
        execute(store, second, say=lambda line: None)
    assert second.lease is not None and not store.job_exists(second.lease.stream)
    assert _types(store) == ["job.created", "job.started"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_runs_deferred_opening_exits_with_its_own_code(
    tmp_path, monkeypatch, sig, code
):
    """`steplog run` commits the job's opening inside the event loop: a signal just before it
    leaves no job behind, and the exit code still says which signal it was."""
    from tests.cli_inprocess import steplog_here

    path = dag_pipeline(tmp_path, {"a": ([], 0)})
    db = tmp_path / "s.db"

    @contextmanager
    def signal_first() -> Iterator[None]:
        os.kill(os.getpid(), sig)  # before the loop and its handlers exist
        yield

    monkeypatch.setattr(jobs, "_long_lived_heap", signal_first)
    stopped = steplog_here(
        db, "run", str(path), "--job-id", "j", "--workspace", str(tmp_path / "w")
    )
    assert stopped.code == code, stopped.err
    assert stopped.err.splitlines()[-1] == "aborted"
    with open_store(db) as store:
        assert list(store.read_all()) == []
