"""Workers killed at random moments over many jobs, against a loopback server with latency and
injected faults: every job ends succeeded, no step is answered twice, and the server is asked
at most once per step, plus once per injected fault, plus the calls in flight at each kill."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

import pytest

from steplog import Steplog
from tests.cli_process import spawn
from tests.on_disk import db_rows

pytestmark = pytest.mark.slow

JOBS, STEPS, WORKERS, KILLS = 30, 2, 3, 4
LATENCY_S = 0.25
FAULT_EVERY = 7  # every 7th call answers 503 (a retryable fault the step retries)

PIPELINE = """\
name = "chaos"
[inputs.n]
[providers.remote]
kind = "openai"
base_url = "{url}"
model = "m"
max_retries = 4
backoff_base_s = 0.01
backoff_cap_s = 0.05
breaker_failures = 1000

[steps.first]
provider = "remote"
prompt = "first {{{{ inputs.n }}}}"

[steps.second]
needs = ["first"]
provider = "remote"
prompt = "second {{{{ inputs.n }}}} after {{{{ steps.first.output }}}}"
"""


def _log_now(db) -> tuple[dict[str, str | None], set[str], Counter[tuple[str, str]]]:
    """From the log as it is: each job's last owner (worker id), the jobs that ended, and the
    llm.requests still without their llm.response."""
    rows = db_rows(
        db,
        "SELECT job_id, type, step, data FROM events WHERE type IN ('job.started', "
        "'job.resumed', 'job.succeeded', 'job.failed', 'job.interrupted', 'llm.request', "
        "'llm.response') ORDER BY seq",
    )
    owner: dict[str, str | None] = {}
    ended: set[str] = set()
    open_calls: Counter[tuple[str, str]] = Counter()
    for job, kind, step, data in rows:
        if kind in ("job.started", "job.resumed"):
            owner[job] = json.loads(data)["owner"].get("worker")
            ended.discard(job)
        elif kind == "llm.request":
            open_calls[(job, step)] += 1
        elif kind == "llm.response":
            open_calls[(job, step)] -= 1
        else:
            ended.add(job)
    return owner, ended, open_calls


def _busy(db) -> set[str]:
    """Workers that own a job under way."""
    owner, ended, _ = _log_now(db)
    return {w for job, w in owner.items() if job not in ended and w}


def _in_flight(db, worker: str) -> int:
    """The calls a dead worker had in flight (requested, not answered): its heir may ask them
    again."""
    owner, _, open_calls = _log_now(db)
    return sum(n for (job, _), n in open_calls.items() if n > 0 and owner.get(job) == worker)


def test_workers_killed_at_random_lose_no_answer_and_pay_for_few_again(
    database, tmp_path, fake_llm
):
    db = database
    rng = random.Random(13)
    lock = threading.Lock()
    calls = {"n": 0, "faults": 0}

    def decide(body: dict):
        with lock:
            calls["n"] += 1
            fault = calls["n"] % FAULT_EVERY == 0
            calls["faults"] += fault
        time.sleep(LATENCY_S)
        return ("status", 503, None, {}) if fault else None

    fake_llm.decide = decide
    pipeline = tmp_path / "chaos.toml"
    pipeline.write_text(PIPELINE.format(url=fake_llm.url))
    with Steplog(str(db)) as sl:
        for i in range(JOBS):
            sl.submit(pipeline, {"n": str(i)}, f"c{i:02}", tmp_path / "runs" / f"c{i:02}")
    env = {"STEPLOG_LEASE_S": "1.5"}
    names = iter(f"w{n}" for n in range(WORKERS + KILLS))
    live = {}
    for _ in range(WORKERS):
        name = next(names)
        live[name] = spawn(db, "worker", "-c", "2", "--drain", "--worker-id", name, env=env)
    in_flight_at_kills = 0
    finished = []
    try:
        deadline = time.monotonic() + 60
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 0.8))
            busy = sorted(_busy(db) & {n for n, p in live.items() if p.poll() is None})
            while not busy and time.monotonic() < deadline:  # (still starting, or all done)
                if all(p.poll() is not None for p in live.values()):
                    break
                time.sleep(0.1)
                busy = sorted(_busy(db) & {n for n, p in live.items() if p.poll() is None})
            if not busy or time.monotonic() > deadline:
                break
            victim = rng.choice(busy)
            live[victim].kill()  # SIGKILL: no stop recorded, the lease just runs out
            live[victim].communicate(timeout=10)
            finished.append(live.pop(victim))
            in_flight_at_kills += _in_flight(db, victim)
            name = next(names)
            live[name] = spawn(db, "worker", "-c", "2", "--drain", "--worker-id", name, env=env)
        for name, proc in live.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (name, err[-500:])
    finally:
        for proc in [*live.values(), *finished]:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    statuses = db_rows(db, "SELECT status, count(*) FROM jobs GROUP BY status")
    assert statuses == [("succeeded", JOBS)]
    with Steplog(str(db)) as sl:
        per_step: Counter[tuple[str, str]] = Counter()
        for i in range(JOBS):
            for ev in sl.stored_events(f"c{i:02}", type="llm.response"):
                if ev.data["success"]:
                    per_step[(ev.job_id, ev.step)] += 1
    resumed = db_rows(db, "SELECT data FROM events WHERE type = 'job.resumed'")
    takeovers = sum(1 for (data,) in resumed if json.loads(data).get("taken_over_from"))
    print(f"calls {calls}, in flight at the kills {in_flight_at_kills}, takeovers {takeovers}")
    assert takeovers >= 1  # the kills hit workers with jobs under way
    assert len(per_step) == JOBS * STEPS and set(per_step.values()) == {1}, per_step
    assert calls["n"] <= JOBS * STEPS + calls["faults"] + in_flight_at_kills, (
        calls,
        in_flight_at_kills,
    )
