"""The queue at scale and under shared limits: a batch of 200 jobs queued from a JSONL file
(`submit --inputs`) and run by two workers; a provider's max_concurrency = 2 held across two
workers of --concurrency 4."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from steplog import Steplog
from tests.cli_process import spawn, steplog
from tests.on_disk import db_rows

pytestmark = pytest.mark.slow

BATCH_JOBS = 200

ONE_STEP = """\
name = "brief"
[inputs.topic]
[providers.local]
kind = "offline"
[steps.write]
provider = "local"
prompt = "Write a brief about {{ inputs.topic }}."
"""


def _drain(db, workers: int, concurrency: int, timeout: float = 180) -> None:
    procs = [
        spawn(db, "worker", "-c", str(concurrency), "--drain", "--worker-id", f"w{n}")
        for n in range(workers)
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-500:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def test_a_batch_of_200_jobs_submitted_from_jsonl_is_run_by_two_workers(database, tmp_path):
    db = database
    pipeline = tmp_path / "brief.toml"
    pipeline.write_text(ONE_STEP)
    rows = tmp_path / "topics.jsonl"
    rows.write_text("".join(json.dumps({"topic": f"topic {i}"}) + "\n" for i in range(BATCH_JOBS)))
    queued = steplog(
        db,
        "submit",
        str(pipeline),
        "--inputs",
        str(rows),
        "--job-id",
        "b-",
        "--batch",
        "briefs",
        "--workspace",
        str(tmp_path / "runs"),
        "--json",
    )
    assert queued.code == 0, queued.err
    doc = json.loads(queued.out)
    assert doc["batch"] == "briefs" and doc["status"] == "queued"
    assert len(doc["job_ids"]) == BATCH_JOBS == len(set(doc["job_ids"]))
    assert db_rows(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("queued", BATCH_JOBS)
    ]
    _drain(db, workers=2, concurrency=8)
    assert db_rows(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("succeeded", BATCH_JOBS)
    ]
    listed = json.loads(steplog(db, "jobs", "--batch", "briefs", "--json", "--limit", "500").out)
    assert sorted(j["job_id"] for j in listed) == sorted(doc["job_ids"])
    owners: Counter[str] = Counter()
    with Steplog(str(db)) as sl:
        for job in doc["job_ids"]:
            opened = [ev for ev in sl.stored_events(job, type="job.*") if ev.type == "job.started"]
            assert len(opened) == 1, job  # one claim per job, by one worker
            owners[opened[0].data["owner"]["worker"]] += 1
    assert set(owners) <= {"w0", "w1"} and sum(owners.values()) == BATCH_JOBS


def test_a_refused_row_queues_none_of_the_batch(tmp_path):
    db = tmp_path / "q.db"
    pipeline = tmp_path / "brief.toml"
    pipeline.write_text(ONE_STEP)
    rows = tmp_path / "topics.jsonl"
    rows.write_text('{"topic": "fine"}\n{"topic": "fine too"}\n{"topik": "typo"}\n')
    refused = steplog(db, "submit", str(pipeline), "--inputs", str(rows))
    assert refused.code == 2 and "topics.jsonl:3" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert not db.exists()  # nothing queued, no database left behind


TWO_CALLS = """\
name = "limited"
[inputs.n]
[providers.remote]
kind = "openai"
base_url = "{url}"
model = "m"
max_concurrency = 2
backoff_base_s = 0.01

[steps.one]
provider = "remote"
prompt = "one {{{{ inputs.n }}}}"

[steps.two]
provider = "remote"
prompt = "two {{{{ inputs.n }}}}"
"""


def test_max_concurrency_holds_across_two_workers_of_concurrency_4(database, tmp_path, fake_llm):
    db = database

    def slow(body: dict):
        time.sleep(0.2)
        return None

    fake_llm.decide = slow
    pipeline = tmp_path / "limited.toml"
    pipeline.write_text(TWO_CALLS.format(url=fake_llm.url))
    with Steplog(str(db)) as sl:
        for i in range(8):
            sl.submit(pipeline, {"n": str(i)}, f"l{i}", tmp_path / "runs" / f"l{i}")
    _drain(db, workers=2, concurrency=4)
    assert db_rows(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [("succeeded", 8)]
    assert len(fake_llm.calls) == 16
    assert fake_llm.max_in_flight == 2  # the limit was reached and never passed
