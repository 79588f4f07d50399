"""The Python API (steplog.Steplog): the README's examples run, results equal what the CLI shows,
and the sync and async forms leave the host process as they found it."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from steplog import (
    Event,
    JobFailed,
    JobResult,
    JobStatus,
    Rejected,
    Steplog,
    SteplogError,
)
from steplog.eventstore.record import StoreError
from tests.cli_inprocess import steplog_here
from tests.on_disk import ROOT

EXAMPLE = ROOT / "examples" / "factory" / "pipeline.toml"
README = (ROOT / "README.md").read_text()

TWO_STEPS = """
name = "two"
[providers.local]
kind = "offline"
[steps.a]
provider = "local"
prompt = "A."
[steps.b]
needs = ["a"]
provider = "local"
prompt = "B {{ steps.a.output }}"
"""


def python_examples() -> list[str]:
    section = README[README.index("## Python API") :]
    section = section[: section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def pipeline(tmp_path: Path, text: str = TWO_STEPS, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def count_rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()


def test_the_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    examples = python_examples()
    assert len(examples) == 2 and "arun" in examples[1]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for code in examples:
        exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "succeeded" in out and "still responsive" in out and "job.succeeded" in out
    with Steplog(tmp_path / "runs" / "api.db") as sl:
        assert [j.status for j in sl.jobs()] == ["succeeded", "succeeded"]
        assert sl.verify().ok


def test_run_returns_outputs_and_status_equals_the_cli_document(tmp_path):
    db = tmp_path / "s.db"
    with Steplog(db) as sl:
        result = sl.run(EXAMPLE, {"idea": "a chess clock"}, "j", tmp_path / "ws")
        assert isinstance(result, JobResult) and result.succeeded
        assert result.raise_for_status() is result
        assert set(result.steps) == {"architect", "builder", "docs", "qa"}
        files = result.steps["builder"].output
        assert isinstance(files, dict) and files
        for path, content in files.items():  # a files step's output is what it wrote
            assert (tmp_path / "ws" / path).read_text() == content
        assert isinstance(result.steps["architect"].output, str)
        status = sl.status("j")
        assert isinstance(status, JobStatus) and status.status == "succeeded"
        assert sl.status().job_id == sl.status("@latest").job_id == "j"
    shown = steplog_here(db, "status", "j", "--json")
    assert shown.code == 0
    assert json.loads(shown.out) == status.model_dump(mode="json")
    assert result.tokens_in == status.tokens_in and result.llm_calls == status.llm_calls


def test_a_failed_job_is_returned_then_raise_for_status_raises_job_failed(tmp_path):
    path = pipeline(
        tmp_path, TWO_STEPS.replace('prompt = "B', 'options = { fail = true }\nprompt = "B')
    )
    with Steplog(tmp_path / "s.db") as sl:
        result = sl.run(path, job_id="f", workspace=tmp_path / "ws")
        assert result.status == "failed" and result.error
        assert result.steps["a"].status == "succeeded" and result.steps["b"].status == "failed"
        with pytest.raises(JobFailed, match="job f failed") as caught:
            result.raise_for_status()
        assert caught.value.result is result
        assert isinstance(caught.value, SteplogError)
        path.write_text(TWO_STEPS)
        resumed = sl.resume("f")
        assert resumed.succeeded and resumed.steps["a"].output == result.steps["a"].output


def test_bad_input_raises_rejected_and_appends_nothing(tmp_path):
    db = tmp_path / "s.db"
    with Steplog(db) as sl:
        sl.run(pipeline(tmp_path), job_id="ok", workspace=tmp_path / "ws")
        before = count_rows(db)
        cases = [
            lambda: sl.run(pipeline(tmp_path, "name = 1", "bad.toml")),
            lambda: sl.run(pipeline(tmp_path), job_id="ok"),  # exists
            lambda: sl.run(pipeline(tmp_path), job_id="bad id!"),
            lambda: sl.run(pipeline(tmp_path), inputs={"nope": "x"}),
            lambda: sl.resume("ok"),  # succeeded already
            lambda: sl.resume("missing"),
            lambda: sl.status("missing"),
            lambda: list(sl.events("missing")),
            lambda: sl.follow("missing", wait_s=0.2),
            lambda: sl.replay("ok", 999),
            lambda: sl.fork("ok", 2, "ok"),
            lambda: sl.verify("missing"),
            lambda: sl.export("missing", tmp_path / "x.jsonl"),
        ]
        for case in cases:
            with pytest.raises(Rejected):
                case()
        assert count_rows(db) == before
    with pytest.raises(Rejected, match="no database at"):
        Steplog(tmp_path / "typo.db").status()
    assert not (tmp_path / "typo.db").exists()


def test_sync_run_changes_no_process_state_prints_nothing_and_works_off_the_main_thread(
    tmp_path, capsys
):
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    thresholds = gc.get_threshold()
    results: list[JobResult] = []
    with Steplog(tmp_path / "s.db") as sl:
        worker = threading.Thread(
            target=lambda: results.append(sl.run(pipeline(tmp_path), workspace=tmp_path / "w"))
        )
        worker.start()
        worker.join(60)
        results.append(sl.run(pipeline(tmp_path), workspace=tmp_path / "m"))
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0
    assert capsys.readouterr() == ("", "")


def test_arun_runs_inside_a_running_loop_beside_another_task(tmp_path):
    slow = TWO_STEPS.replace("[steps.a]", "[providers.local.options]\ndelay_s = 0.2\n[steps.a]")
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(asyncio.get_running_loop().time())
            await asyncio.sleep(0.01)

    async def main() -> JobResult:
        with Steplog(tmp_path / "s.db") as sl:
            task = asyncio.create_task(ticker())
            result = await sl.arun(pipeline(tmp_path, slow), job_id="a")
            task.cancel()
            with pytest.raises(RuntimeError, match="use await arun"):
                sl.run(pipeline(tmp_path))
            follow = [ev async for ev in sl.afollow("a")]
            assert isinstance(follow[0], Event) and follow[-1].type == "job.succeeded"
            return result

    result = asyncio.run(main())
    assert result.succeeded
    assert len(ticks) > 10  # the other task kept running through the 0.4 s of calls


def test_cancelling_arun_records_the_interruption_and_resume_reuses_committed_answers(tmp_path):
    slow_b = TWO_STEPS.replace('prompt = "B', 'options = { delay_s = 30 }\nprompt = "B')

    async def main(sl: Steplog) -> None:
        task = asyncio.create_task(sl.arun(pipeline(tmp_path, slow_b), job_id="c"))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if any(e.type == "llm.request" and e.step == "b" for e in sl.events("c")):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with Steplog(tmp_path / "s.db") as sl:
        asyncio.run(main(sl))
        status = sl.status("c")
        assert status.status == "interrupted"
        assert [e.data["signal"] for e in sl.events("c", type="job.interrupted")] == ["cancelled"]
        pipeline(tmp_path)  # b answers at once now
        resumed = sl.resume("c")
        assert resumed.succeeded
        asked = [e.step for e in sl.events("c", type="llm.request")]
        assert asked.count("a") == 1  # a's committed answer was reused, not asked again


def test_follow_ends_with_the_job_and_events_filter(tmp_path):
    with Steplog(tmp_path / "s.db") as sl:
        sl.run(pipeline(tmp_path), job_id="f", workspace=tmp_path / "ws")
        every = list(sl.events("f"))
        assert [e.version for e in every] == list(range(1, len(every) + 1))
        assert [e.type for e in sl.follow("f")] == [e.type for e in every]
        assert {e.type for e in sl.events("f", type="llm.*")} == {"llm.request", "llm.response"}
        assert {e.step for e in sl.events("f", step="b")} == {"b"}
        assert [e.version for e in sl.events("f", after=3)] == list(range(4, len(every) + 1))
        assert all(e.level in ("WARNING", "ERROR") for e in sl.events("f", level="warning"))
        state = sl.replay("f", "step.succeeded:a")
        assert state.completed_steps == ["a"] and state.pending_steps == ["b"]
        fork = sl.fork("f", "step.succeeded:a", "g", tmp_path / "g")
        assert fork.source_job == "f" and fork.until_version == state.version
        assert sl.resume("g").steps["b"].cache_hit is True


def test_follow_waits_a_bounded_time_for_a_job_about_to_be_created(tmp_path):
    db = tmp_path / "s.db"
    with Steplog(db) as sl:
        sl.run(pipeline(tmp_path), job_id="first", workspace=tmp_path / "w0")
        seen: list[str] = []
        follower = threading.Thread(target=lambda: seen.extend(e.type for e in sl.follow("soon")))
        follower.start()
        time.sleep(0.3)  # the follower is waiting: "soon" does not exist yet
        sl.run(pipeline(tmp_path), job_id="soon", workspace=tmp_path / "w1")
        follower.join(30)
        assert seen[0] == "job.created" and seen[-1] == "job.succeeded"
        started = time.monotonic()
        with pytest.raises(Rejected, match=r"unknown job never \(waited 0.3 s"):
            sl.follow("never", wait_s=0.3)
        assert 0.3 <= time.monotonic() - started < 5


def test_the_readme_table_names_every_public_method():
    section = README[README.index("## Python API") :]
    section = section[: section.index("\n## ", 3)]
    public = {
        name
        for name, member in vars(Steplog).items()
        if callable(member) and not name.startswith("_")
    }
    undocumented = {
        name for name in public if f"`{name}(" not in section and f"`await {name}(" not in section
    }
    assert not undocumented, undocumented


def test_show_is_the_document_steplog_show_prints(tmp_path):
    db = tmp_path / "s.db"
    with Steplog(db) as sl:
        sl.run(EXAMPLE, {"idea": "a sundial"}, "j", tmp_path / "ws").raise_for_status()
        shown = sl.show("@latest", "architect")
        assert shown.job_id == "j" and shown.step == "architect" and shown.attempt == 1
        assert shown.prompt and "a sundial" in shown.prompt and shown.answer
        builder = sl.show("j", "builder")
        assert builder.files and all(f.path for f in builder.files)
        with pytest.raises(Rejected, match="has no step 'nosuch'"):
            sl.show("j", "nosuch")
    cli = steplog_here(db, "show", "j", "architect", "--json")
    assert cli.code == 0 and json.loads(cli.out) == shown.model_dump(mode="json")


@pytest.mark.parametrize(
    "url", ["postgresql://u:pw-secret-9@127.0.0.1:1/x", "postgres://u:pw-secret-9@127.0.0.1/x"]
)
def test_a_postgres_url_no_server_answers_is_one_line_without_its_password(
    tmp_path, monkeypatch, url
):
    """A URL is opened as PostgreSQL, never folded by Path() into a file path; a server that
    is not there is one line naming it without the password, and no file is made."""
    monkeypatch.chdir(tmp_path)
    app = Steplog(url)
    assert "pw-secret-9" not in repr(app) and app.path is None
    with pytest.raises(StoreError) as refused:
        app.jobs()
    assert "pw-secret-9" not in str(refused.value) and "127.0.0.1:" in str(refused.value)
    shown = steplog_here(tmp_path / "unused.db", "--db", url, "status")
    assert shown.code == 2 and shown.err.count("\n") == 1, shown.err
    assert "pw-secret-9" not in shown.err and "cannot reach PostgreSQL server" in shown.err
    assert list(tmp_path.iterdir()) == []


DYNAMIC_READ = """
name = "dynamic"
[providers.local]
kind = "offline"
[steps.slow]
provider = "local"
prompt = "slow"
options = { delay_s = 0.3 }
[steps.quick]
provider = "local"
prompt = "quick"
[steps.join]
needs = ["slow"]
provider = "local"
prompt = "saw:{% for name in steps %} {{ name }}{% endfor %}"
"""


def test_a_template_iterating_steps_sees_its_upstream_steps_only_and_after_a_resume(tmp_path):
    # `quick` finishes first but is not upstream of `join`: its output must not leak into the
    # text by timing. After a resume, the reused `slow` is still there to be read.
    failing = DYNAMIC_READ.replace('prompt = "saw:', 'options = { fail = true }\nprompt = "saw:')
    path = pipeline(tmp_path, failing)
    with Steplog(tmp_path / "s.db") as sl:
        first = sl.run(path, job_id="d", workspace=tmp_path / "ws")
        assert first.steps["join"].status == "failed"
        path.write_text(DYNAMIC_READ)
        resumed = sl.resume("d")
        assert resumed.succeeded and resumed.steps["slow"].status == "skipped"
        assert "Request: saw: slow\n" in resumed.steps["join"].output
        misses = list(sl.events("d", type="cache.miss", step="join"))
        assert [sorted(e.data["detail"]["upstream"]) for e in misses] == [["slow"], ["slow"]]
        fresh = sl.run(path, job_id="e", workspace=tmp_path / "ws2")
        assert fresh.steps["join"].cache_hit  # the same text, so the same key


FAN_IN = """
name = "fan-in"
[providers.local]
kind = "offline"
[steps.delta]
provider = "local"
prompt = "d"
[steps.alpha]
provider = "local"
prompt = "a"
[steps.gamma]
provider = "local"
prompt = "g"
[steps.beta]
provider = "local"
prompt = "b"
[steps.summary]
needs = ["alpha", "beta", "gamma", "delta"]
provider = "local"
prompt = "{% for name in steps %}{{ name }} {% endfor %}"
"""


@pytest.mark.slow  # two processes, with different string-hash seeds
def test_a_template_iterating_steps_renders_the_same_text_in_every_process(tmp_path):
    from tests.cli_process import steplog

    path = pipeline(tmp_path, FAN_IN)
    db = tmp_path / "s.db"
    for seed, job in (("1", "one"), ("2", "two"), ("3", "three")):
        ran = steplog(
            db,
            "run",
            str(path),
            "--job-id",
            job,
            "-q",
            "--workspace",
            str(tmp_path / job),
            env={"PYTHONHASHSEED": seed},
        )
        assert ran.code == 0, ran.err
    with Steplog(db) as sl:
        for job in ("one", "two", "three"):
            summary = sl.status(job).steps["summary"]
            assert summary.cache_hit is (job != "one")
        # pipeline order (the file's, as no need reorders them), whatever the hash seed
        fourth = sl.run(path, job_id="four", workspace=tmp_path / "four")
        assert "Request: delta alpha gamma beta\n" in fourth.steps["summary"].output
