"""The job page's actions through the app in this process: each runs the real CLI in a
subprocess on the same database, so it is validated and refused as the CLI does it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
import httpx
import pytest

from steplog.api import Steplog
from steplog.web import Config, create_app
from tests.cli_process import spawn, steplog, wait_for
from tests.fake_llm_server import FakeLLMServer
from tests.pipeline_files import dag_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BASE = "http://127.0.0.1:8484"
FLAKY = """\
name = "flaky"
[providers.remote]
kind = "openai"
base_url = "{url}"
model = "fake-1"
api_key_env = "OPENAI_API_KEY"
max_retries = 0
[steps.only]
provider = "remote"
prompt = "Say something."
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def setup(
    tmp_path: Path, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Path, str]]:
    """A job that failed on a 503 (the next call succeeds), and a client of the app on it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    db = tmp_path / "a.db"
    pipeline = tmp_path / "flaky.toml"
    pipeline.write_text(FLAKY.format(url=fake_llm.url))
    fake_llm.faults.append(("status", 503, None, {}))

    def run() -> str:
        with Steplog(db) as sl:
            return sl.run(pipeline, workspace=tmp_path / "w").job_id

    job = await anyio.to_thread.run_sync(run)
    app = create_app(Config(str(db), cwd=tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c, db, job


async def post(c: httpx.AsyncClient, job: str, action: str, **form: str) -> httpx.Response:
    page = await c.get(f"/jobs/{job}")
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return await c.post(
        f"/jobs/{job}/{action}", data={"csrf": found.group(1), **form}, headers={"Origin": BASE}
    )


def status_of(db: Path, job: str) -> str:
    with Steplog(db) as sl:
        return sl.job_state(job).status


def wait_status(db: Path, job: str, wanted: set[str], polls: int = 400) -> str:
    status = ""
    for _ in range(polls):
        with Steplog(db) as sl:
            status = sl.job_state(job).status
        if status in wanted:
            return status
        time.sleep(0.05)
    return status


async def test_resume_runs_the_job_in_its_own_process(setup: tuple[httpx.AsyncClient, Path, str]):
    c, db, job = setup
    assert status_of(db, job) == "failed"
    done = await post(c, job, "resume")
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"/jobs/{job}?notice=resumed")
    status = await anyio.to_thread.run_sync(wait_status, db, job, {"succeeded", "failed"})
    assert status == "succeeded"
    with Steplog(db) as sl:
        resumed = [ev for ev in sl.stored_events(job, type="job.resumed")]
        import os

        assert resumed and resumed[0].data["owner"]["pid"] != os.getpid()


async def test_resume_is_refused_with_the_clis_line(
    setup: tuple[httpx.AsyncClient, Path, str], cli: Callable[..., Any]
):
    c, db, job = setup
    await post(c, job, "resume")
    await anyio.to_thread.run_sync(wait_status, db, job, {"succeeded"})
    said = cli(db, "resume", job)
    assert said.code == 2
    refused = await post(c, job, "resume")
    assert refused.status_code == 409
    line = said.err.strip().removeprefix("error: ")
    assert line and _html(line) in refused.text


async def test_fork_at_an_event_and_its_refusal(
    setup: tuple[httpx.AsyncClient, Path, str], cli: Callable[..., Any]
):
    c, db, job = setup
    forked = await post(c, job, "fork", until="2", new_job_id="the-fork")
    assert forked.status_code == 303
    assert forked.headers["location"].startswith("/jobs/the-fork?notice=forked")
    with Steplog(db) as sl:
        state = sl.job_state("the-fork")
    assert state.forked_from == {"job": job, "until_version": 2}
    said = cli(db, "replay", job, "--until", "999", "--fork", "another")
    refused = await post(c, job, "fork", until="999", new_job_id="another")
    assert refused.status_code == 409 and said.code == 2
    assert _html(said.err.strip().removeprefix("error: ")) in refused.text
    taken = await post(c, job, "fork", until="2", new_job_id="the-fork")
    assert taken.status_code == 409


async def test_cancel_stops_a_running_job_and_records_it_cancelled(tmp_path: Path):
    db = tmp_path / "s.db"
    pipeline = dag_pipeline(tmp_path, {"a": ([], 0), "slow": (["a"], 30)})
    proc = spawn(db, "run", str(pipeline), "--job-id", "long", "--grace", "0")
    try:
        wait_for(db, "SELECT count(*) FROM events WHERE type = 'step.started' AND step = 'slow'")
        app = create_app(Config(str(db), cwd=tmp_path))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            page = await c.get("/jobs/long")
            assert 'id="cancel"' in page.text
            stopped = await post(c, "long", "cancel")
        assert stopped.status_code == 303
        proc.communicate(timeout=30)
        assert proc.returncode == 1  # a run stopped by cancel
        assert status_of(db, "long") == "cancelled"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


async def test_cancel_is_refused_as_the_cli_refuses_it(setup: tuple[httpx.AsyncClient, Path, str]):
    c, db, job = setup
    refused = await post(c, job, "cancel")
    assert refused.status_code == 409
    said = steplog(db, "cancel", job)
    assert said.code == 2
    assert _html(said.err.strip().removeprefix("error: ")) in refused.text


def _html(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


async def test_the_app_on_postgresql(tmp_path: Path, pg_url: str):
    """The same app over a PostgreSQL log: the API, a page, and a stream woken by NOTIFY."""
    failing = tmp_path / "failing.toml"
    failing.write_text(
        'name = "pg"\n[providers.local]\nkind = "offline"\nmodel = "offline-1"\n'
        '[steps.only]\nprovider = "local"\nprompt = "Hi."\noptions = { fail = true }\n'
    )

    def run() -> tuple[str, int, dict[str, Any]]:
        with Steplog(pg_url) as sl:
            job = sl.run(failing, workspace=tmp_path / "w").job_id
            return job, sl.job_state(job).version, sl.status_document(job)

    job, version, document = await anyio.to_thread.run_sync(run)

    def resume() -> None:
        with Steplog(pg_url) as sl:
            sl.resume(job)

    app = create_app(Config(pg_url, cwd=tmp_path, stream_s=3, keepalive_s=0.1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        found = await c.get(f"/api/jobs/{job}")
        assert found.status_code == 200
        assert {k: v for k, v in found.json().items() if k != "owner_alive"} == {
            k: v for k, v in document.items() if k != "owner_alive"
        }
        page = await c.get(f"/jobs/{job}")
        assert page.status_code == 200 and 'data-step="only" data-status="failed"' in page.text
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, resume)
            streamed = await c.get(
                f"/api/jobs/{job}/stream", headers={"Last-Event-ID": str(version)}
            )
    assert "job.resumed" in streamed.text
