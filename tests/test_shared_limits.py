"""Limits and the cache across processes: real `steplog run` processes on one store (a SQLite
file, then a PostgreSQL database) against one loopback HTTP server that answers with latency
and counts the calls it answers at once. max_concurrency and requests_per_minute hold across
the processes; two processes running the same steps at the same moment make one call per
cache key; a kill -9 of the process making a call hands the call to the one waiting for it."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from steplog.projections.breaker import epoch
from tests.cli_process import spawn, wait_for
from tests.on_disk import db_rows

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 240


def http_pipeline(
    tmp_path: Path, port: int, steps: int, *, provider: str = "", salt: str = "", name: str = ""
) -> Path:
    """`steps` independent text steps on one OpenAI-compatible provider at 127.0.0.1:port;
    pipelines with the same salt have the same cache keys step for step."""
    lines = [
        'name = "shared"',
        "[providers.remote]",
        'kind = "openai"',
        f'base_url = "http://127.0.0.1:{port}/v1"',
        'model = "fake-model"',
        "max_retries = 0",
        provider,
    ]
    for n in range(steps):
        lines += [f"[steps.s{n}]", 'provider = "remote"', f'prompt = "Step {n}{salt}."']
    path = tmp_path / (name or f"p{salt}.toml")
    path.write_text("\n".join(lines) + "\n")
    return path


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    out = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        out.append((proc.returncode, err))
    return out


def completions(server) -> int:
    return sum(1 for c in server.calls if c["method"] == "POST")


def events(db, *types: str) -> list[tuple[str, str, str, dict, str]]:
    """(job_id, type, step, data, ts) of the events of these types, in log order."""
    marks = ", ".join("?" for _ in types)
    rows = db_rows(
        db,
        f"SELECT job_id, type, step, data, ts FROM events WHERE type IN ({marks}) ORDER BY seq",
        types,
    )
    return [(job, kind, step, json.loads(data), ts) for job, kind, step, data, ts in rows]


def test_max_concurrency_holds_across_two_processes(tmp_path, database, fake_llm_factory):
    server = fake_llm_factory(delay=0.15)
    paths = [
        http_pipeline(tmp_path, server.port, 6, provider="max_concurrency = 2", salt=salt)
        for salt in ("x", "y")
    ]
    procs = [spawn(database, "run", str(p), "--job-id", f"j{i}") for i, p in enumerate(paths)]
    for code, err in finish(procs):
        assert code == 0, err
    assert completions(server) == 12
    assert server.max_in_flight <= 2
    assert {d["reason"] for _, _, _, d, _ in events(database, "step.waiting")} <= {"concurrency"}


def test_requests_per_minute_holds_across_two_processes(tmp_path, database, fake_llm_factory):
    server = fake_llm_factory()
    rpm = 120  # one call every 0.5 s, whichever process makes it
    paths = [
        http_pipeline(tmp_path, server.port, 3, provider=f"requests_per_minute = {rpm}", salt=s)
        for s in ("x", "y")
    ]
    procs = [spawn(database, "run", str(p), "--job-id", f"j{i}") for i, p in enumerate(paths)]
    for code, err in finish(procs):
        assert code == 0, err
    starts = sorted(epoch(ts) for *_, ts in events(database, "llm.request"))
    assert len(starts) == completions(server) == 6
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 60 / rpm - 1e-3, gaps  # the recorded starts, not a stopwatch
    assert all(sum(1 for u in starts if t <= u < t + 60) <= rpm for t in starts)


@pytest.mark.parametrize("steps", [60])
def test_two_processes_running_the_same_steps_call_once_per_cache_key(
    tmp_path, database, fake_llm_factory, steps
):
    server = fake_llm_factory(delay=0.02)
    both_running = threading.Event()

    def once_both_run(body):  # so that the runs overlap however the two processes start
        both_running.wait(timeout=RUN_TIMEOUT_S)
        return None

    server.decide = once_both_run
    path = http_pipeline(tmp_path, server.port, steps, provider="max_concurrency = 4")
    procs = [spawn(database, "run", str(path), "--job-id", job) for job in ("a", "b")]
    try:
        wait_for(database, "SELECT count(*) = 2 FROM events WHERE type = 'job.started'", 60)
    finally:
        both_running.set()
    for code, err in finish(procs):
        assert code == 0, err
    assert completions(server) == steps  # 0 duplicates
    assert server.max_in_flight <= 4
    requests = events(database, "llm.request")
    callers = {step: job for job, _, step, _, _ in requests}
    assert len(requests) == len(callers) == steps  # one call per key, from one job or the other
    hits = {(job, step): d for job, _, step, d, _ in events(database, "cache.hit")}
    for step, caller in callers.items():
        other = "b" if caller == "a" else "a"
        assert hits[(other, step)]["origin_job"] == caller, (step, caller)
        assert (caller, step) not in hits
    succeeded = events(database, "step.succeeded")
    assert len(succeeded) == 2 * steps
    # a step that reused the other's answer records no cache.miss
    misses = {(job, step) for job, _, step, _, _ in events(database, "cache.miss")}
    assert misses == {(caller, step) for step, caller in callers.items()}
    waits = [d for _, _, _, d, _ in events(database, "step.waiting")]
    assert any(d["reason"] == "in_flight" for d in waits)  # some waited for the other's call


def test_a_kill_9_of_the_caller_hands_the_call_to_the_waiting_process(
    tmp_path, database, fake_llm_factory
):
    release = threading.Event()
    asked: list[int] = []

    def hold_the_first(body):
        asked.append(1)
        if len(asked) == 1:
            release.wait(timeout=RUN_TIMEOUT_S)  # the first caller never hears back
        return None

    server = fake_llm_factory()
    server.decide = hold_the_first
    try:
        path = http_pipeline(tmp_path, server.port, 1)
        first = spawn(database, "run", str(path), "--job-id", "first")
        wait_for(database, "SELECT count(*) FROM events WHERE type = 'llm.request'", timeout=60)
        second = spawn(database, "run", str(path), "--job-id", "second")
        wait_for(
            database,
            "SELECT count(*) FROM events WHERE type = 'step.waiting' AND job_id = 'second'",
            timeout=60,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=20)
        ((code, err),) = finish([second])
        finish([first])
    finally:
        release.set()
    assert code == 0, err
    assert completions(server) == 2  # the killed call and the one that took it over
    (waiting,) = [d for job, _, _, d, _ in events(database, "step.waiting") if job == "second"]
    assert waiting["reason"] == "in_flight" and waiting["following_job"] == "first"
    answered = [(job, d["success"]) for job, _, _, d, _ in events(database, "llm.response")]
    assert answered == [("second", True)]
    assert not events(database, "cache.hit")
