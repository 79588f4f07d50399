"""`steplog ui`'s app in this process, through httpx's ASGI transport: every route, its status
codes and 404s, the API against `status --json`, hostile text escaped, the token, the Host and
CSRF checks, bad parameters; and the pure view logic beside it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx
import pytest

from steplog.api import Steplog
from steplog.web import Config, create_app, views
from steplog.web.live import LogWatcher, sse
from steplog.web.security import csrf_token, is_loopback, same_origin
from tests.on_disk import ROOT

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:8484"
HOSTILE = "<script>alert('x')</script> {{ 7 * 7 }} {% if 1 %}yes{% endif %}"
FACTORY = ROOT / "examples" / "factory" / "pipeline.toml"

FAILING = """\
name = "breaks"
[providers.local]
kind = "offline"
model = "offline-1"
[steps.first]
provider = "local"
prompt = "First."
[steps.second]
needs = ["first"]
provider = "local"
prompt = "Second {{ steps.first.output }}"
options = { fail = true }
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Jobs:
    def __init__(self, db: Path, good: str, failed: str, other: str) -> None:
        self.db, self.good, self.failed, self.other = db, good, failed, other


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    root = tmp_path_factory.mktemp("web")
    db = root / "web.db"
    failing = root / "failing.toml"
    failing.write_text(FAILING)
    with Steplog(db) as sl:
        good = sl.run(FACTORY, inputs={"idea": HOSTILE}, workspace=root / "good").job_id
        other = sl.run(FACTORY, inputs={"idea": "a clock"}, workspace=root / "other").job_id
        failed = sl.run(failing, workspace=root / "failed").job_id
    return Jobs(db, good, failed, other)


def client_for(config: Config, base: str = BASE) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(config)), base_url=base)


@pytest.fixture
async def client(jobs: Jobs) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(Config(str(jobs.db), stream_s=0.3, keepalive_s=0.1)) as found:
        yield found


# -- pages --------------------------------------------------------------------------------


async def test_jobs_list_shows_every_job_newest_first(client: httpx.AsyncClient, jobs: Jobs):
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    order = [
        page.text.index(f'data-job-id="{job}"') for job in (jobs.failed, jobs.other, jobs.good)
    ]
    assert order == sorted(order)
    row = re.search(rf'<tr data-job-id="{jobs.good}">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert "succeeded" in row.group(1) and "4/4" in row.group(1) and "factory" in row.group(1)


async def test_jobs_list_filters_and_pages(client: httpx.AsyncClient, jobs: Jobs):
    failed = await client.get("/", params={"status": "failed"})
    assert jobs.failed in failed.text and jobs.good not in failed.text
    factory = await client.get("/", params={"pipeline": "factory"})
    assert jobs.good in factory.text and jobs.failed not in factory.text
    first = await client.get("/", params={"limit": 1})
    assert first.text.count("<tr data-job-id=") == 1 and 'rel="next"' in first.text
    second = await client.get("/", params={"limit": 1, "offset": 1})
    assert jobs.other in second.text and 'rel="prev"' in second.text


async def test_job_page_draws_steps_inputs_totals_and_events(client: httpx.AsyncClient, jobs: Jobs):
    page = await client.get(f"/jobs/{jobs.good}")
    assert page.status_code == 200
    for step in ("architect", "builder", "docs", "qa"):
        assert f'data-step="{step}" data-status="succeeded"' in page.text
    assert "<svg" in page.text  # the timeline
    assert "job.started" in page.text and "job.succeeded" in page.text
    assert f"/jobs/{jobs.good}?until=1" in page.text  # each event opens the job as it was then
    assert 'name="csrf"' in page.text


async def test_failed_job_offers_resume(client: httpx.AsyncClient, jobs: Jobs):
    page = await client.get(f"/jobs/{jobs.failed}")
    assert 'id="resume"' in page.text
    assert "offline provider told to fail" in page.text
    assert 'id="resume"' not in (await client.get(f"/jobs/{jobs.good}")).text


async def test_until_shows_the_job_as_it_was(client: httpx.AsyncClient, jobs: Jobs):
    page = await client.get(f"/jobs/{jobs.good}", params={"until": "step.succeeded:architect"})
    assert page.status_code == 200
    assert 'data-step="architect" data-status="succeeded"' in page.text
    assert 'data-step="qa" data-status="pending"' in page.text
    assert "As it was at event" in page.text
    assert "data-job-stream" not in page.text  # the past does not move
    by_number = await client.get(f"/jobs/{jobs.good}", params={"until": "2"})
    assert "As it was at event 2 of" in by_number.text


async def test_events_table_filters_and_pages(client: httpx.AsyncClient, jobs: Jobs):
    llm = await client.get(f"/jobs/{jobs.good}", params={"type": "llm.*"})
    rows = re.findall(r"<tr data-level=.*?</tr>", llm.text, re.S)
    assert rows and all("llm." in row for row in rows)
    paged = await client.get(f"/jobs/{jobs.good}", params={"limit": 5})
    assert len(re.findall(r"<tr data-level=", paged.text)) == 5
    after = re.search(r'rel="next" href="[^"]*after=(\d+)', paged.text)
    assert after is not None and after.group(1) == "5"
    warnings = await client.get(f"/jobs/{jobs.failed}", params={"level": "error"})
    assert "step.failed" in warnings.text and "step.started" not in warnings.text


async def test_step_page_shows_prompt_answer_and_cache(client: httpx.AsyncClient, jobs: Jobs):
    page = await client.get(f"/jobs/{jobs.good}/steps/builder")
    assert page.status_code == 200
    shown = Steplog(jobs.db).show(jobs.good, "builder")
    assert shown.cache_key and shown.cache_key in page.text
    assert "Cache miss:" in page.text and "first run of this step" in page.text
    assert "Files written" in page.text
    assert "finish reason" in page.text


async def test_compare_lists_the_steps_that_differ(client: httpx.AsyncClient, jobs: Jobs):
    page = await client.get(f"/compare/{jobs.good}/{jobs.other}")
    assert page.status_code == 200
    assert 'class="differs"' in page.text
    assert 'class="d-add"' in page.text and 'class="d-del"' in page.text
    same = await client.get(f"/compare/{jobs.good}/{jobs.good}")
    assert 'class="differs"' not in same.text


async def test_static_assets_come_from_the_package(client: httpx.AsyncClient):
    for name in ("app.css", "app.js"):
        found = await client.get(f"/static/{name}")
        assert found.status_code == 200 and found.content
    assert (await client.get("/static/nothing.js")).status_code == 404


# -- 404 and 400 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/nope",
        "/jobs/nope/steps/x",
        "/compare/nope/nope",
        "/api/jobs/nope",
        "/api/jobs/nope/events",
        "/api/jobs/nope/steps/x",
        "/api/jobs/nope/stream",
        "/no/such/page",
    ],
)
async def test_unknown_things_are_404(client: httpx.AsyncClient, path: str):
    found = await client.get(path)
    assert found.status_code == 404
    if path.startswith("/api/"):
        assert "unknown job nope" in found.json()["error"]


async def test_unknown_step_is_404_json_naming_the_steps(client: httpx.AsyncClient, jobs: Jobs):
    found = await client.get(f"/api/jobs/{jobs.good}/steps/nope")
    assert found.status_code == 404
    assert "has no step 'nope'" in found.json()["error"]
    page = await client.get(f"/jobs/{jobs.good}/steps/nope")
    assert page.status_code == 404


@pytest.mark.parametrize(
    "path, params",
    [
        ("/", {"offset": "x"}),
        ("/", {"limit": "0"}),
        ("/", {"status": "sleeping"}),
        ("/api/jobs", {"limit": "-1"}),
        ("/api/jobs/{good}/events", {"after": "1.5"}),
        ("/api/jobs/{good}/events", {"level": "LOUD"}),
        ("/api/jobs/{good}/events", {"step": "nope"}),
        ("/api/jobs/{good}/steps/builder", {"attempt": "two"}),
        ("/jobs/{good}", {"until": "999999"}),
        ("/jobs/{good}", {"until": "nothing"}),
        ("/api/jobs/{good}/stream", {"after": "x"}),
    ],
)
async def test_bad_parameters_are_400(
    client: httpx.AsyncClient, jobs: Jobs, path: str, params: dict[str, str]
):
    found = await client.get(path.format(good=jobs.good), params=params)
    assert found.status_code == 400
    if path.startswith("/api/"):
        assert found.json()["error"]


async def test_an_attempt_the_step_lacks_is_404(client: httpx.AsyncClient, jobs: Jobs):
    found = await client.get(f"/api/jobs/{jobs.good}/steps/builder", params={"attempt": "7"})
    assert found.status_code == 404
    assert "has no attempt 7" in found.json()["error"]


# -- the JSON API -------------------------------------------------------------------------


async def test_api_job_is_the_status_json_document(
    client: httpx.AsyncClient, jobs: Jobs, cli: Callable[..., Any]
):
    for job in (jobs.good, jobs.failed):
        printed = cli(jobs.db, "status", job, "--json")
        assert printed.code == 0
        found = await client.get(f"/api/jobs/{job}")
        assert found.status_code == 200
        assert found.json() == json.loads(printed.out)


async def test_api_jobs_lists_with_totals(client: httpx.AsyncClient, jobs: Jobs):
    found = (await client.get("/api/jobs")).json()
    assert found["total"] == 3 and [j["job_id"] for j in found["jobs"]][-1] == jobs.good
    good = found["jobs"][-1]
    assert good["steps"] == 4 and good["steps_done"] == 4 and good["calls"] == 4
    assert good["tokens"] > 0 and good["cache_hits"] == 0
    only = (await client.get("/api/jobs", params={"status": "failed"})).json()
    assert [j["job_id"] for j in only["jobs"]] == [jobs.failed]


async def test_api_events_after_n(client: httpx.AsyncClient, jobs: Jobs):
    everything = (await client.get(f"/api/jobs/{jobs.good}/events")).json()["events"]
    later = (await client.get(f"/api/jobs/{jobs.good}/events", params={"after": 20})).json()
    assert [e["version"] for e in later["events"]] == [
        e["version"] for e in everything if e["version"] > 20
    ]
    assert later["next_after"] is None
    first = everything[0]
    assert first["type"] == "job.created" and set(first) >= {"ts", "level", "data", "seq"}


async def test_api_step_is_the_show_document(client: httpx.AsyncClient, jobs: Jobs):
    found = await client.get(f"/api/jobs/{jobs.good}/steps/architect")
    assert found.status_code == 200
    assert found.json() == Steplog(jobs.db).show(jobs.good, "architect").model_dump(mode="json")


# -- hostile text -------------------------------------------------------------------------


async def test_text_from_the_log_is_escaped_everywhere(client: httpx.AsyncClient, jobs: Jobs):
    paths = [
        "/",
        f"/jobs/{jobs.good}",
        f"/jobs/{jobs.good}/steps/architect",
        f"/jobs/{jobs.good}/steps/builder",
        f"/compare/{jobs.other}/{jobs.good}",
    ]
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; {{ 7 * 7 }}"
    for path in paths:
        page = await client.get(path)
        assert page.status_code == 200
        assert "<script>alert" not in page.text, path
        assert "49" not in re.findall(r"alert.{0,40}", page.text), path
    job = await client.get(f"/jobs/{jobs.good}")
    assert escaped in job.text  # the input, as text
    step = await client.get(f"/jobs/{jobs.good}/steps/architect")
    assert "{{ 7 * 7 }}" in step.text and "{% if 1 %}yes{% endif %}" in step.text


# -- the streams --------------------------------------------------------------------------


def sse_messages(body: str) -> list[dict[str, str]]:
    messages = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            messages.append(fields)
    return messages


async def test_job_stream_sends_the_state_then_honours_last_event_id(
    client: httpx.AsyncClient, jobs: Jobs
):
    found = await client.get(f"/api/jobs/{jobs.good}/stream")
    assert found.status_code == 200
    assert found.headers["content-type"].startswith("text/event-stream")
    [message] = sse_messages(found.text)
    version = Steplog(jobs.db).job_state(jobs.good).version
    assert message["event"] == "state" and message["id"] == str(version)
    state = json.loads(message["data"])
    assert state["totals"]["status"] == "succeeded"
    assert set(state["steps"]) == {"architect", "builder", "docs", "qa"}
    again = await client.get(
        f"/api/jobs/{jobs.good}/stream", headers={"Last-Event-ID": str(version)}
    )
    assert sse_messages(again.text) == []  # nothing new since then
    assert ": keepalive" in again.text


async def test_streams_follow_new_events(tmp_path: Path):
    import anyio

    db = tmp_path / "live.db"
    failing = tmp_path / "failing.toml"
    failing.write_text(FAILING)

    def setup() -> tuple[str, int, int]:
        with Steplog(db) as sl:
            job = sl.run(failing, workspace=tmp_path / "w").job_id
            version, seq = sl.job_state(job).version, sl.last_seq()
            sl.fork(job, "3", "forked")  # after `seq`: the jobs stream resumed from it tells
            return job, version, seq

    job, version, seq = await anyio.to_thread.run_sync(setup)

    def resume() -> None:
        with Steplog(db) as own:
            own.resume(job)  # fails again, appending to the job

    async with client_for(Config(str(db), stream_s=2, keepalive_s=0.05)) as c:
        jobs_stream = await c.get("/api/stream", headers={"Last-Event-ID": str(seq)})
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, resume)
            job_stream = await c.get(
                f"/api/jobs/{job}/stream", headers={"Last-Event-ID": str(version)}
            )
    changed = [
        j["job_id"] for m in sse_messages(jobs_stream.text) for j in json.loads(m["data"])["jobs"]
    ]
    assert "forked" in changed
    messages = sse_messages(job_stream.text)
    updates = [json.loads(m["data"]) for m in messages]
    assert updates, job_stream.text
    with Steplog(db) as sl:
        (resumed,) = [e.version for e in sl.events(job, type="job.resumed")]
    # The resume may land before the stream's first read of the job (then its first message is
    # the whole state, already past job.resumed) or after it (then an update lists the event).
    first_is_state = "events" not in updates[0] and int(messages[0]["id"]) >= resumed
    listed = any(e["type"] == "job.resumed" for u in updates for e in u.get("events", []))
    assert first_is_state or listed, job_stream.text
    assert all("events" in u for u in updates[1:])
    assert all(int(m["id"]) > version for m in messages)


async def test_log_watcher_wakes_every_waiter_with_one_poller():
    import anyio

    seqs = iter(range(1, 1000))
    calls: list[int] = []

    def wait(after: int, timeout: float) -> int:
        calls.append(after)
        return next(seqs)

    watcher = LogWatcher(wait)
    results: list[int] = []

    async def waiter() -> None:
        results.append(await watcher.wait_beyond(0, 5))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(waiter)
    assert results and all(r >= 1 for r in results)
    assert len(calls) < 5  # the waiters shared the polls


# -- the guard ----------------------------------------------------------------------------


async def test_loopback_server_refuses_another_host_name(jobs: Jobs):
    async with client_for(Config(str(jobs.db)), base="http://evil.example") as c:
        found = await c.get("/")
    assert found.status_code == 403
    async with client_for(Config(str(jobs.db)), base="http://localhost:8484") as c:
        assert (await c.get("/")).status_code == 200


async def test_token_is_needed_on_every_request(jobs: Jobs):
    config = Config(str(jobs.db), token="s3cret-token")
    async with client_for(config, base="http://192.0.2.1:8484") as c:
        assert (await c.get("/")).status_code == 401
        assert (await c.get("/api/jobs")).status_code == 401
        assert (await c.get("/api/jobs", params={"token": "wrong-token"})).status_code == 401
        bearer = await c.get("/api/jobs", headers={"Authorization": "Bearer s3cret-token"})
        assert bearer.status_code == 200
        header = await c.get("/api/jobs", headers={"X-Steplog-Token": "s3cret-token"})
        assert header.status_code == 200
        once = await c.get("/", params={"token": "s3cret-token", "status": "failed"})
        assert once.status_code == 303 and once.headers["location"] == "/?status=failed"
        assert "steplog_token=" in once.headers["set-cookie"]
        # the cookie now carries it
        assert (await c.get("/")).status_code == 200
        assert (await c.get(f"/jobs/{jobs.good}")).status_code == 200


async def _csrf(c: httpx.AsyncClient, job: str) -> str:
    page = await c.get(f"/jobs/{job}")
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return found.group(1)


async def test_actions_need_the_csrf_token_and_the_same_origin(
    client: httpx.AsyncClient, jobs: Jobs
):
    token = await _csrf(client, jobs.failed)
    url = f"/jobs/{jobs.failed}/resume"
    no_origin = await client.post(url, data={"csrf": token})
    assert no_origin.status_code == 403
    foreign = await client.post(
        url, data={"csrf": token}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403 and "cross-origin" in foreign.text
    no_token = await client.post(url, data={}, headers={"Origin": BASE})
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    wrong = await client.post(url, data={"csrf": "0" * 64}, headers={"Origin": BASE})
    assert wrong.status_code == 403
    other_session = csrf_token("another secret", "another session")
    stolen = await client.post(url, data={"csrf": other_session}, headers={"Origin": BASE})
    assert stolen.status_code == 403
    assert Steplog(jobs.db).job_state(jobs.failed).status == "failed"  # nothing ran


async def test_actions_need_the_token_too(jobs: Jobs):
    config = Config(str(jobs.db), token="s3cret-token")
    async with client_for(config) as c:
        refused = await c.post(f"/jobs/{jobs.failed}/resume", headers={"Origin": BASE})
        assert refused.status_code == 401


async def test_get_does_not_act(client: httpx.AsyncClient, jobs: Jobs):
    assert (await client.get(f"/jobs/{jobs.failed}/resume")).status_code == 405


# -- the pure parts -----------------------------------------------------------------------


def test_dag_layers_put_each_step_after_what_it_needs():
    steps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    assert views.dag_layers(steps) == [["a", "e"], ["b", "c"], ["d"]]
    chain = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(10_000)}
    assert len(views.dag_layers(chain)) == 10_000  # no recursion limit


def test_paging_and_parameters():
    page = views.paginate(list(range(120)), 100, 50)
    assert page.items == list(range(100, 120)) and page.next_offset is None
    assert page.prev_offset == 50 and (page.first, page.last) == (101, 120)
    assert views.int_param("7", "n", 0) == 7 and views.int_param(None, "n", 3) == 3
    for bad in ("-1", "x", "1e3", "٣", "9" * 30):
        with pytest.raises(views.BadParam):
            views.int_param(bad, "n", 0)
    with pytest.raises(views.BadParam):
        views.choice_param("LOUD", "level", views.LEVELS)


def test_diff_lines_mark_what_changed():
    lines = views.diff_lines("a\nb\nc", "a\nB\nc", "old", "new")
    assert [(d.kind, d.text) for d in lines if d.kind in ("add", "del")] == [
        ("del", "-b"),
        ("add", "+B"),
    ]
    assert views.diff_lines("same", "same", "x", "y") == []


def test_security_helpers():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    assert same_origin("http://127.0.0.1:8484", None, "http", "127.0.0.1:8484")
    assert same_origin(None, "http://127.0.0.1:8484/jobs/x", "http", "127.0.0.1:8484")
    assert not same_origin(None, None, "http", "127.0.0.1:8484")
    assert not same_origin("http://127.0.0.1:9999", None, "http", "127.0.0.1:8484")


def test_sse_message_is_one_data_line():
    text = sse({"a": "line\nbreak"}, event="state", id=3).decode()
    assert text == 'id: 3\nevent: state\ndata: {"a": "line\\nbreak"}\n\n'


# -- the verb -----------------------------------------------------------------------------


def test_ui_without_the_extra_is_one_line_exit_2(
    jobs: Jobs, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    found = cli(jobs.db, "ui")
    assert found.code == 2
    assert (
        found.err
        == "error: steplog ui needs the ui extra (starlette, uvicorn): pip install 'steplog[ui]'\n"
    )


def test_ui_refuses_a_missing_database(tmp_path: Path, cli: Callable[..., Any]):
    found = cli(tmp_path / "none.db", "ui")
    assert found.code == 2 and found.err.startswith("error: no database at")
    assert not (tmp_path / "none.db").exists()


def test_ui_refuses_a_short_token(jobs: Jobs, cli: Callable[..., Any]):
    found = cli(jobs.db, "ui", "--token", "abc")
    assert found.code == 2 and "--token" in found.err and found.err.count("\n") == 1


def test_the_jobs_list_folds_only_the_jobs_of_its_page(jobs: Jobs, monkeypatch: pytest.MonkeyPatch):
    from steplog.web.reads import Reader

    folded: list[str] = []
    original = Steplog.job_state

    def counting(self: Steplog, job_id: str | None = None) -> Any:
        folded.append(str(job_id))
        return original(self, job_id)

    monkeypatch.setattr(Steplog, "job_state", counting)
    reader = Reader(Steplog(jobs.db))
    try:
        found = reader.jobs_page(None, None, 1, 1)
    finally:
        reader.close()
    assert found["page"].total == 3 and [j["job_id"] for j in found["jobs"]] == [jobs.other]
    assert folded == [jobs.other]


def test_ui_on_another_address_makes_up_a_token_and_prints_it(
    jobs: Jobs, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
):
    import socket

    import uvicorn

    from steplog.commands.cli import ui

    served: list[Any] = []

    def listen(host: str, port: int) -> socket.socket:  # loopback, whatever was asked
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return sock

    def run(self: Any, sockets: list[socket.socket]) -> None:
        served.append(self.config.app)
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(ui, "_listen", listen)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    found = cli(jobs.db, "ui", "--host", "192.0.2.1", "--port", "0")
    assert found.code == 0, found.err
    printed = re.fullmatch(r"steplog ui: http://192\.0\.2\.1:\d+/\?token=(\S+) \(.*\)\n", found.out)
    assert printed is not None, found.out
    assert len(printed.group(1)) >= 24 and served
    given = cli(jobs.db, "ui", "--host", "192.0.2.1", "--token", "my-own-token")
    assert given.code == 0 and "my-own-token" not in given.out and "with its token" in given.out
    plain = cli(jobs.db, "ui")
    assert plain.code == 0 and "token" not in plain.out
