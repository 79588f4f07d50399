"""The queue and its workers: submit checks as run does and queues, workers claim each job once,
leases decide who owns a job across processes, a dead or stopped worker's jobs are taken over,
cancel stops a queued job at once and a running one through its owner.

The fast tests run in this process (the API, the CLI's main); the slow ones start real worker
processes on both stores, against the offline provider or a loopback HTTP server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from steplog import Steplog
from steplog.errors import Rejected
from steplog.eventstore.events import JobStarted, NewEvent, Owner, WorkerStarted
from steplog.projections.leases import WorkerRow, lease_alive, stream_of
from tests.cli_inprocess import assert_refused_in_one_line, steplog_here
from tests.cli_process import spawn, steplog, wait_for
from tests.fake_llm_server import last_user_message
from tests.on_disk import EXAMPLE, db_rows, event_count
from tests.pipeline_files import dag_pipeline

# -- the lease and the claim, without I/O ------------------------------------------------------


def _row(beat_ts: str, lease_s: float = 10.0, stopped: str | None = None, jobs: str = "[]"):
    return WorkerRow(
        "w", "worker", "h", 1, "0", lease_s, 1, None, beat_ts, beat_ts, jobs, stopped, 1
    )


def test_a_lease_is_alive_until_lease_s_after_its_last_beat_or_its_stop():
    from steplog.projections.breaker import epoch

    beat = "2026-12-03T10:00:00.000000Z"
    at = epoch(beat)
    assert lease_alive(_row(beat), at + 9.9)
    assert not lease_alive(_row(beat), at + 10.0)
    assert not lease_alive(_row(beat, stopped="2026-12-03T10:00:01.000000Z"), at + 1)


def test_an_owner_whose_worker_id_a_new_process_took_up_is_gone():
    from steplog.executor.ownership import owner_alive
    from steplog.projections.breaker import epoch

    beat = "2026-12-03T10:00:00.000000Z"
    row = _row(beat)._replace(host="elsewhere", pid=7, started="70")
    same = {"pid": 7, "host": "elsewhere", "started": "70", "worker": "w"}
    assert owner_alive(same, row, epoch(beat) + 1) is True
    assert owner_alive({**same, "pid": 6, "started": "60"}, row, epoch(beat) + 1) is False
    assert owner_alive(same, row, epoch(beat) + 10) is False  # its lease ran out


def test_candidates_are_queued_first_and_skip_what_a_live_lease_holds():
    from steplog.commands.worker import candidates
    from steplog.projections.breaker import epoch

    beat = "2026-12-03T10:00:00.000000Z"
    now = epoch(beat) + 1
    live = _row(beat, jobs='["r1"]')
    dead = _row("2026-12-03T09:00:00.000000Z", jobs='["r2"]')._replace(worker_id="old")
    rows = [("q1", "queued"), ("q2", "queued"), ("r1", "running"), ("r2", "running")]
    assert candidates(rows, [live, dead], now, skip={"q2"}) == [
        ("q1", "queued"),
        ("r2", "running"),  # its lease is dead: it is folded, then claimed
    ]


# -- in this process ---------------------------------------------------------------------------


def _refusals(tmp_path: Path) -> list[tuple[str, ...]]:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[steps.a]\nprompt = "hi"\nprovider = "nope"\n')
    return [
        (str(tmp_path / "missing.toml"),),
        (str(bad),),
        (str(EXAMPLE), "--input", "nosuch=1"),
        (str(EXAMPLE), "--job-id", "no spaces"),
        (str(EXAMPLE), "--job-id", "taken"),
        (str(EXAMPLE), "--workspace", str(tmp_path / "a-file")),
        (str(EXAMPLE), "--workspace", str(tmp_path / "a-file" / "under")),
    ]


def test_submit_refuses_what_run_refuses_in_the_same_words_and_appends_nothing(tmp_path):
    db = tmp_path / "s.db"
    (tmp_path / "a-file").write_text("x")
    assert steplog_here(db, "submit", str(EXAMPLE), "--job-id", "taken", cwd=tmp_path).code == 0
    before = event_count(db)
    for args in _refusals(tmp_path):
        run = steplog_here(db, "run", *args, cwd=tmp_path)
        submitted = steplog_here(db, "submit", *args, cwd=tmp_path)
        assert_refused_in_one_line(submitted)
        said = run.err.replace("steplog run --help", "steplog submit --help")  # click's hint
        assert (submitted.code, submitted.err) == (run.code, said), args
        assert event_count(db) == before, args
    fresh = tmp_path / "never.db"  # a refused submit creates no database either
    assert steplog_here(fresh, "submit", str(tmp_path / "missing.toml")).code == 2
    assert not fresh.exists()


def test_submit_queues_and_work_runs_each_job_to_succeeded(tmp_path):
    with Steplog(tmp_path / "s.db") as sl:
        ids = [
            sl.submit(EXAMPLE, {"idea": f"tool {i}"}, f"j{i}", tmp_path / f"w{i}") for i in range(3)
        ]
        assert [s.status for s in ids] == ["queued"] * 3
        assert {j.job_id: j.status for j in sl.jobs()} == {f"j{i}": "queued" for i in range(3)}
        assert sl.status("j0").status == "queued"
        report = sl.work(concurrency=2, drain=True)
        assert sorted(report.succeeded) == ["j0", "j1", "j2"]
        assert {j.status for j in sl.jobs()} == {"succeeded"}
        [worker] = [w for w in sl.workers() if w["kind"] == "worker"]
        assert worker["worker_id"] == report.worker_id and not worker["alive"]
        assert sl.verify().ok
        for i in range(3):
            owners = [e.data["owner"]["worker"] for e in sl.events(f"j{i}", type="job.started")]
            assert owners == [report.worker_id]


def test_cancel_of_a_queued_job_means_it_never_starts_and_resume_continues_it(tmp_path):
    with Steplog(tmp_path / "s.db") as sl:
        sl.submit(EXAMPLE, job_id="c", workspace=tmp_path / "w")
        assert sl.cancel("c", "not today").status == "cancelled"
        assert sl.work(drain=True).succeeded == []
        assert [e.type for e in sl.events("c")] == ["job.created", "job.cancelled"]
        assert sl.status("c").status == "cancelled"
        assert sl.resume("c").succeeded


def test_a_worker_in_a_thread_stops_a_job_cancelled_meanwhile(tmp_path):
    db = tmp_path / "s.db"
    pipeline = dag_pipeline(tmp_path, {"slow": ([], 30)})
    with Steplog(db) as sl:
        sl.submit(pipeline, job_id="t", workspace=tmp_path / "w")
    reports = []

    def work() -> None:
        with Steplog(db) as mine:
            reports.append(mine.work(grace_s=0))

    thread = threading.Thread(target=work)
    thread.start()
    try:
        with Steplog(db) as sl:
            for _ in range(400):  # until the slow call is in flight
                if any(True for _ in sl.events("t", type="llm.request")):
                    break
                time.sleep(0.05)
            assert sl.cancel("t", "stop it", wait=True, timeout_s=60).status == "cancelled"
            assert sl.status("t").status == "cancelled"
    finally:
        thread.join(60)
    assert reports[0].cancelled == ["t"]
    shown = steplog_here(db, "workers")
    assert shown.code == 0 and shown.out.startswith(f"{reports[0].worker_id}  stopped  worker on ")


def test_cancel_refuses_an_unknown_job_and_a_finished_one_in_one_line(tmp_path):
    db = tmp_path / "s.db"
    assert steplog_here(db, "run", str(EXAMPLE), "--job-id", "done", cwd=tmp_path).code == 0
    before = event_count(db)
    assert_refused_in_one_line(steplog_here(db, "cancel", "nosuch"), mentions="unknown job")
    finished = steplog_here(db, "cancel", "done")
    assert_refused_in_one_line(finished, mentions="succeeded")
    assert event_count(db) == before


def test_a_run_holds_a_lease_while_it_runs_and_ends_it(tmp_path):
    with Steplog(tmp_path / "s.db") as sl:
        sl.run(EXAMPLE, job_id="r", workspace=tmp_path / "w")
        [started] = list(sl.events("r", type="job.started"))
        worker = started.data["owner"]["worker"]
        [row] = sl.workers()
        assert (row["worker_id"], row["kind"], row["alive"]) == (worker, "run", False)
        assert row["stopped_ts"] is not None and sl.status().job_id == "r"


def _foreign_owner(db: Path, job_id: str, worker: str, lease_s: float) -> None:
    """A queued job then started by a worker on another host (its process cannot be checked
    from here: only its lease tells)."""
    with Steplog(str(db)) as sl:
        sl.submit(EXAMPLE, job_id=job_id, workspace=db.parent / job_id)
        store = sl.open_store(write=True)
        started = WorkerStarted(
            host="elsewhere", pid=1, started="1", lease_s=lease_s, concurrency=1, kind="worker"
        )
        store.append(stream_of(worker), [NewEvent.of(started)])
        owner = Owner(pid=1, host="elsewhere", started="1", worker=worker)
        store.append(job_id, [NewEvent.of(JobStarted(owner=owner))], expected_version=1)


def test_resume_refuses_a_live_lease_and_takes_over_an_expired_one_without_force(tmp_path):
    db = tmp_path / "s.db"
    _foreign_owner(db, "live", "far-live", lease_s=3600)
    _foreign_owner(db, "gone", "far-gone", lease_s=0.2)
    with Steplog(str(db)) as sl:
        with pytest.raises(Rejected, match=r"job live is being run by .* \(worker far-live\)$"):
            sl.resume("live")
        for _ in range(200):  # until the short lease has run out (its last beat + 0.2 s)
            if not {w["worker_id"]: w for w in sl.workers()}["far-gone"]["alive"]:
                break
            time.sleep(0.05)
        assert sl.resume("gone").succeeded
        [resumed] = list(sl.events("gone", type="job.resumed"))
        assert resumed.data["forced"] is False


# -- worker processes --------------------------------------------------------------------------


def _events(db, job_id: str) -> list[tuple[str, str | None, dict]]:
    rows = db_rows(
        db, "SELECT type, step, data FROM events WHERE job_id = ? ORDER BY version", (job_id,)
    )
    return [(t, s, json.loads(d)) for t, s, d in rows]


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return proc.returncode, out, err


@pytest.mark.slow
def test_submit_then_a_worker_drains_the_queue_on_both_stores(database, tmp_path):
    db = database
    done = steplog(db, "submit", str(EXAMPLE), "--job-id", "j0", "--input", "idea=t0")
    assert (done.code, done.out) == (0, "j0\n"), done.err
    queued = steplog(db, "submit", str(EXAMPLE), "--job-id", "j1", "--json", "-i", "idea=t1")
    assert json.loads(queued.out)["status"] == "queued"
    with Steplog(str(db)) as sl:
        assert sl.status("j1").status == "queued"
        for i in (2, 3):
            sl.submit(EXAMPLE, {"idea": f"t{i}"}, f"j{i}", tmp_path / "runs" / f"j{i}")
    code, out, err = _finish(
        spawn(db, "worker", "--concurrency", "2", "--drain", "--worker-id", "w1")
    )
    assert code == 0, err
    assert "4 jobs succeeded" in out
    states = db_rows(db, "SELECT job_id, status FROM jobs ORDER BY job_id")
    assert states == [(f"j{i}", "succeeded") for i in range(4)]
    listed = json.loads(steplog(db, "workers", "--json").out)
    assert [(w["worker_id"], w["alive"], w["jobs"]) for w in listed] == [("w1", False, [])]
    assert steplog(db, "verify").code == 0


SMALL = """\
name = "small"
[inputs.x]
[providers.local]
kind = "offline"
[steps.a]
provider = "local"
prompt = "a {{ inputs.x }}"
options = { delay_s = 0.01 }
[steps.b]
needs = ["a"]
provider = "local"
prompt = "b {{ steps.a.output }}"
"""


@pytest.mark.slow
def test_workers_started_together_run_each_job_exactly_once(database, tmp_path):
    db = database
    pipeline = tmp_path / "small.toml"
    pipeline.write_text(SMALL)
    with Steplog(str(db)) as sl:
        for i in range(30):
            sl.submit(pipeline, {"x": str(i)}, f"j{i:02}", tmp_path / "runs" / f"j{i:02}")
    procs = [spawn(db, "worker", "-c", "2", "--drain", "--worker-id", f"w{n}") for n in range(4)]
    results = [_finish(p, timeout=120) for p in procs]
    assert [code for code, _, _ in results] == [0] * 4, [err[-400:] for _, _, err in results]
    assert {s for (s,) in db_rows(db, "SELECT status FROM jobs")} == {"succeeded"}
    owners: Counter[str] = Counter()
    for i in range(30):
        events = _events(db, f"j{i:02}")
        opened = [e for e in events if e[0] in ("job.started", "job.resumed")]
        assert [e[0] for e in opened] == ["job.started"], (i, opened)
        owners[opened[0][2]["owner"]["worker"]] += 1
        responses = Counter(s for t, s, _ in events if t == "llm.response")
        assert responses == Counter({"a": 1, "b": 1})
    assert sum(owners.values()) == 30 and set(owners) <= {f"w{n}" for n in range(4)}


HTTP_PIPELINE = """\
name = "remote"

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
prompt = "STEP=build {{{{ steps.plan.output }}}}"

[steps.docs]
needs = ["build"]
provider = "remote"
prompt = "STEP=docs {{{{ steps.build.output }}}}"
"""


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_taken_over_and_no_committed_answer_is_asked_again(
    tmp_path, fake_llm
):
    db = tmp_path / "s.db"
    held = threading.Event()
    release = threading.Event()
    asked: Counter[str] = Counter()

    def decide(body: dict) -> None:
        step = last_user_message(body).split()[0]
        asked[step] += 1
        if step == "STEP=build" and asked[step] == 1:  # hold the first build call open
            held.set()
            release.wait(30)
        return None

    fake_llm.decide = decide
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(HTTP_PIPELINE.format(url=fake_llm.url))
    assert steplog(db, "submit", str(pipeline), "--job-id", "k").code == 0
    env = {"STEPLOG_LEASE_S": "2"}
    first = spawn(db, "worker", "--worker-id", "doomed", env=env)
    try:
        assert held.wait(30), "the first worker never asked for build"
        first.kill()  # kill -9, with plan's answer committed and build's call in flight
        first.wait(10)
    finally:
        release.set()
        _finish(first)
    code, out, err = _finish(spawn(db, "worker", "--drain", "--worker-id", "heir", env=env))
    assert code == 0, err
    events = _events(db, "k")
    opened = [(t, d["owner"]["worker"], d.get("taken_over_from")) for t, _, d in events
              if t in ("job.started", "job.resumed")]  # fmt: skip
    assert opened == [("job.started", "doomed", None), ("job.resumed", "heir", "doomed")]
    assert events[-1][0] == "job.succeeded"
    answered = Counter(s for t, s, d in events if t == "llm.response" and d["success"])
    assert answered == Counter({"plan": 1, "build": 1, "docs": 1})
    # plan's committed answer came from the cache; only the call in flight was asked again
    assert asked == Counter({"STEP=plan": 1, "STEP=build": 2, "STEP=docs": 1})


@pytest.mark.slow
def test_sigterm_stops_a_worker_and_queues_its_job_for_the_next_one(database, tmp_path):
    db = database
    pipeline = dag_pipeline(tmp_path, {"slow": ([], 30), "after": (["slow"], 0)})
    assert steplog(db, "submit", str(pipeline), "--job-id", "t").code == 0
    proc = spawn(db, "worker", "--grace", "0", "--worker-id", "w1")
    wait_for(db, "SELECT count(*) FROM events WHERE type = 'llm.request'")
    proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc)
    assert code == 143, err
    types = [t for t, _, _ in _events(db, "t")]
    assert types[-2:] == ["job.interrupted", "job.requeued"]
    assert db_rows(db, "SELECT status FROM jobs WHERE job_id = 't'") == [("queued",)]
    assert db_rows(db, "SELECT stopped_ts IS NOT NULL FROM workers WHERE worker_id = 'w1'") in (
        [(1,)],
        [(True,)],
    )
    fast = dag_pipeline(tmp_path, {"slow": ([], 0), "after": (["slow"], 0)})
    pipeline.write_text(fast.read_text())  # the next worker reads the file as it is now
    code, out, err = _finish(spawn(db, "worker", "--drain"))
    assert code == 0 and "1 job succeeded" in out, err
    [resumed] = [d for t, _, d in _events(db, "t") if t == "job.resumed"]
    assert resumed["taken_over_from"] is None  # given back, not taken over


@pytest.mark.slow
def test_cancel_stops_a_running_job_in_its_worker_and_resume_continues_it(tmp_path):
    db = tmp_path / "s.db"
    pipeline = dag_pipeline(tmp_path, {"slow": ([], 30), "after": (["slow"], 0)})
    assert steplog(db, "submit", str(pipeline), "--job-id", "c").code == 0
    proc = spawn(db, "worker", "--drain", "--grace", "0", "--worker-id", "w1")
    wait_for(db, "SELECT count(*) FROM events WHERE type = 'llm.request'")
    refused = steplog(db, "resume", "c")  # the live lease is refused
    assert refused.code == 2 and "job c is being run by" in refused.err and "w1" in refused.err
    cancelled = steplog(db, "cancel", "c", "--wait", "--reason", "changed my mind")
    assert cancelled.code == 0, cancelled.err
    code, _, err = _finish(proc)
    assert code == 0, err
    events = _events(db, "c")
    assert events[-1][0] == "job.cancelled" and events[-1][2]["reason"] == "changed my mind"
    requests = db_rows(db, "SELECT count(*) FROM events WHERE type = 'worker.cancel_requested'")
    assert requests == [(1,)]
    pipeline.write_text(
        dag_pipeline(tmp_path, {"slow": ([], 0), "after": (["slow"], 0)}, name="q.toml").read_text()
    )
    assert steplog(db, "resume", "c").code == 0
    assert db_rows(db, "SELECT status FROM jobs WHERE job_id = 'c'") == [("succeeded",)]


@pytest.mark.slow
def test_cancel_stops_a_job_that_run_is_running(tmp_path):
    db = tmp_path / "s.db"
    pipeline = dag_pipeline(tmp_path, {"slow": ([], 30)})
    proc = spawn(db, "run", str(pipeline), "--job-id", "r", "--grace", "0")
    wait_for(db, "SELECT count(*) FROM events WHERE type = 'llm.request'")
    assert steplog(db, "cancel", "r", "--wait").code == 0
    code, _, err = _finish(proc)
    assert code == 1 and "job r cancelled (cancelled)" in err, err
    assert _events(db, "r")[-1][0] == "job.cancelled"
