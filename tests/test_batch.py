"""Batches: `steplog run PIPELINE --inputs FILE --jobs N`, `jobs --batch`, `Steplog.run_batch`,
and the inputs file's parser (commands/batchfile.py).

The CLI runs in this process (tests.cli_inprocess) against real SQLite files, and against a
PostgreSQL database in the slow lane; the signal test runs the real console script.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog import Steplog
from steplog.commands.batchfile import BatchFileError, job_specs, parse_rows
from steplog.errors import Rejected
from tests.cli_inprocess import assert_refused_in_one_line, steplog_here
from tests.on_disk import db_rows
from tests.pipeline_files import dag_pipeline

PIPELINE = """\
name = "briefs"

[inputs.idea]
description = "what to design"

[inputs.tone]
default = "plain"

[providers.local]
kind = "offline"
model = "offline-1"

[steps.draft]
provider = "local"
prompt = "Design {{ inputs.idea }} in a {{ inputs.tone }} tone.{{ 1 // (inputs.idea != 'boom') }}"

[steps.review]
needs = ["draft"]
provider = "local"
prompt = "Review: {{ steps.draft.output }}"
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A SQLite file, or (slow lane) a PostgreSQL database of this test's own."""
    if request.param == "sqlite":
        return tmp_path / "s.db"
    from tests.backends import PostgresDatabase

    return PostgresDatabase(request.getfixturevalue("pg_url"), tmp_path)


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "briefs.toml"
    path.write_text(PIPELINE)
    return path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run(db: Any, *args: str, cwd: Path):  # type: ignore[no-untyped-def]
    return steplog_here(db, *args, cwd=cwd)


def event_count(db: Any) -> int:
    if not db.exists():
        return 0
    return db_rows(db, "SELECT count(*) FROM events")[0][0]


def expected_summary(db: Any, batch: str) -> str:
    """The closing line, computed from the raw events of the batch's jobs."""
    jobs = [j for (j,) in db_rows(db, "SELECT job_id FROM jobs WHERE batch = ?", (batch,))]
    ended = Counter()
    calls = answered = failed = tokens = 0
    for job in jobs:
        rows = db_rows(
            db, "SELECT type, data FROM events WHERE job_id = ? ORDER BY version", (job,)
        )
        last = [t for t, _ in rows if t.startswith("job.")][-1]
        ended[last] += 1
        for type_, data in rows:
            if type_ == "llm.request":
                calls += 1
            elif type_ == "llm.response":
                d = json.loads(data)
                answered += d["success"]
                failed += not d["success"]
                tokens += d["tokens_in"] + d["tokens_out"]
    return (
        f"batch {batch}: {len(jobs)} jobs, {ended['job.succeeded']} succeeded, "
        f"{ended['job.failed']} failed; calls {calls}: {answered} answered, {failed} failed, "
        f"{calls - answered - failed} unanswered, {tokens} tokens, $0.00"
    )


# -- a batch end to end ---------------------------------------------------------------------------


def test_two_hundred_jobs_from_jsonl_all_succeed_and_the_summary_is_what_the_log_holds(
    db, pipeline, tmp_path
):
    rows = [{"idea": f"gadget number {n}"} for n in range(200)]
    write_jsonl(tmp_path / "ideas.jsonl", rows)
    result = run(
        db, "run", str(pipeline), "--inputs", "ideas.jsonl", "--jobs", "8", "--batch", "b",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "batch b: 200 jobs of briefs from ideas.jsonl, at most 8 at once"
    assert (
        len([ln for ln in lines if re.match(r"job b-\d{3} succeeded \(\d+/200 done\)", ln)]) == 200
    )
    assert lines[-1] == expected_summary(db, "b")
    assert lines[-1].startswith(
        "batch b: 200 jobs, 200 succeeded, 0 failed; calls 400: 400 answered"
    )
    statuses = db_rows(db, "SELECT status, count(*) FROM jobs WHERE batch = 'b' GROUP BY status")
    assert statuses == [("succeeded", 200)]
    # ids: the batch name and the row number, zero-padded; inputs as `run` resolves them
    doc = json.loads(run(db, "status", "b-007", "--json", cwd=tmp_path).out)
    assert doc["batch"] == "b" and doc["inputs"] == {"idea": "gadget number 6", "tone": "plain"}
    assert doc["workspace"] == str((tmp_path / "runs" / "b-007").resolve())
    text = run(db, "status", "b-007", cwd=tmp_path).out
    assert "batch b\n" in text


def test_a_csv_batch_with_ids_defaults_from_input_and_a_workspace_parent(db, pipeline, tmp_path):
    (tmp_path / "ideas.csv").write_text(
        'id,idea,tone\nclock,"a chess clock, with two buttons",\ntimer,an egg timer,dry\n'
    )
    result = run(
        db, "run", str(pipeline), "--inputs", "ideas.csv", "--input", "tone=warm",
        "--workspace", "out", "--batch", "c", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.out.splitlines() == [expected_summary(db, "c")]
    clock = json.loads(run(db, "status", "clock", "--json", cwd=tmp_path).out)
    timer = json.loads(run(db, "status", "timer", "--json", cwd=tmp_path).out)
    # an empty cell is not given: the --input default applies; a row's value overrides it
    assert clock["inputs"] == {"idea": "a chess clock, with two buttons", "tone": "warm"}
    assert timer["inputs"] == {"idea": "an egg timer", "tone": "dry"}
    assert clock["workspace"] == str((tmp_path / "out" / "clock").resolve())


def test_a_failing_row_makes_exit_1_while_the_others_succeed(db, pipeline, tmp_path):
    write_jsonl(
        tmp_path / "ideas.jsonl",
        [{"idea": "fine"}, {"idea": "boom", "id": "bad"}, {"idea": "also fine"}],
    )
    result = run(
        db, "run", str(pipeline), "--inputs", "ideas.jsonl", "--job-id", "t-", "--batch", "f",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 1, result.err
    assert result.out.splitlines()[-1] == expected_summary(db, "f")
    assert "2 succeeded, 1 failed" in result.out.splitlines()[-1]
    assert "job bad failed" in result.out and "ZeroDivisionError" in result.out
    assert "1 job failed, first bad: step draft failed" in result.err
    listed = json.loads(run(db, "jobs", "--batch", "f", "--json", cwd=tmp_path).out)
    assert {(r["job_id"], r["status"], r["batch"]) for r in listed} == {
        ("t-1", "succeeded", "f"),
        ("bad", "failed", "f"),
        ("t-3", "succeeded", "f"),
    }


def test_jobs_batch_lists_only_that_batch_with_the_columns_of_jobs(db, pipeline, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"idea": "one"}, {"idea": "two"}])
    write_jsonl(tmp_path / "b.jsonl", [{"idea": "three"}])
    for name in ("a", "b"):
        done = run(db, "run", str(pipeline), "--inputs", f"{name}.jsonl", "--batch", name, "-q",
                   cwd=tmp_path)  # fmt: skip
        assert done.code == 0, done.err
    assert run(db, "run", str(pipeline), "--input", "idea=alone", "--job-id", "solo", "-q",
               cwd=tmp_path).code == 0  # fmt: skip
    everything = json.loads(run(db, "jobs", "--json", cwd=tmp_path).out)
    of_a = json.loads(run(db, "jobs", "--batch", "a", "--json", cwd=tmp_path).out)
    assert sorted(r["job_id"] for r in of_a) == ["a-1", "a-2"]
    assert of_a == [r for r in everything if r["batch"] == "a"]  # same rows, same order
    assert [r["batch"] for r in everything if r["job_id"] == "solo"] == [None]
    table = run(db, "jobs", "--batch", "b", cwd=tmp_path).out
    assert "b-1" in table and "a-1" not in table and "solo" not in table
    assert table.splitlines()[1].split() == ["┃", "job", "┃", "pipeline", "┃", "status", "┃",
                                             "created", "┃", "updated", "┃"]  # fmt: skip
    assert_refused_in_one_line(run(db, "jobs", "--batch", "zz", cwd=tmp_path), mentions="zz")
    with Steplog(str(db)) as sl:  # (a URL stays a str)
        assert [j.job_id for j in sl.jobs(batch="b")] == ["b-1"]


# -- refusals: one line, exit 2, nothing appended -------------------------------------------------

REFUSALS = [
    ("empty.jsonl", b"", "empty.jsonl: no rows"),
    ("blank.jsonl", b"\n  \n", "blank.jsonl: no rows"),
    ("header.csv", b"idea\n", "header.csv: no rows under its header"),
    ("bad.jsonl", b'{"idea": "a"}\n{"idea": \n', "bad.jsonl:2: not a JSON object"),
    ("list.jsonl", b'{"idea": "a"}\n["x"]\n', "list.jsonl:2: expected a JSON object, found a list"),
    ("num.jsonl", b'{"idea": 3}\n', "num.jsonl:1: 'idea' is a number; inputs are text"),
    ("unknown.jsonl", b'{"idea": "a"}\n{"idae": "b"}\n',
     "unknown.jsonl:2: unknown key 'idae'; did you mean 'idea'?"),
    ("unknown.csv", b"idea,colour\na,b\n", "unknown.csv:1: unknown column 'colour'"),
    ("missing.jsonl", b'{"idea": "a"}\n{"tone": "dry"}\n',
     "missing.jsonl:2: input 'idea' is required"),
    ("dup.jsonl", b'{"idea": "a", "id": "x"}\n\n{"idea": "b", "id": "x"}\n',
     "dup.jsonl:3: duplicate job id 'x' (also line 1)"),
    ("badid.jsonl", b'{"idea": "a", "id": "no spaces"}\n',
     "badid.jsonl:1: id 'no spaces' is not a valid job id"),
    ("utf.jsonl", b'{"idea": "a"}\n{"idea": "caf\xe9"}\n', "utf.jsonl:2: not valid UTF-8"),
    ("cells.csv", b"idea,tone\na,b,c\n", "cells.csv:2: 3 values for 2 columns"),
    ("twice.jsonl", b'{"idea": "a", "idea": "b"}\n', "twice.jsonl:1: key 'idea' is given twice"),
    ("ideas.txt", b"idea\n", "an inputs file must end in .jsonl (JSON lines) or .csv"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "says"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_bad_inputs_file_is_refused_in_one_line_and_appends_nothing(
    tmp_path, pipeline, name, content, says
):
    db = tmp_path / "s.db"
    assert run(db, "run", str(pipeline), "--input", "idea=x", "--job-id", "before", "-q",
               cwd=tmp_path).code == 0  # fmt: skip
    before = event_count(db)
    (tmp_path / name).write_bytes(content)
    result = run(db, "run", str(pipeline), "--inputs", name, cwd=tmp_path)
    assert_refused_in_one_line(result, mentions=says)
    assert event_count(db) == before
    assert not (tmp_path / "runs").exists() or sorted(
        p.name for p in (tmp_path / "runs").iterdir()
    ) == ["before"]


def test_other_refusals_append_nothing_and_a_refused_first_batch_creates_no_database(
    db, pipeline, tmp_path
):
    write_jsonl(tmp_path / "ok.jsonl", [{"idea": "a"}, {"idea": "b", "id": "taken"}])
    first = run(db, "run", str(pipeline), "--inputs", "missing.jsonl", cwd=tmp_path)
    assert_refused_in_one_line(first, mentions="inputs file missing.jsonl does not exist")
    assert not db.exists()  # refused before the database was made
    assert run(db, "run", str(pipeline), "--input", "idea=x", "--job-id", "taken", "-q",
               cwd=tmp_path).code == 0  # fmt: skip
    before = event_count(db)
    cases = [
        (["--inputs", "ok.jsonl"], "ok.jsonl:2: job taken already exists"),
        (["--inputs", "ok.jsonl", "--batch", "has space"], "batch name 'has space' is not valid"),
        (["--inputs", "ok.jsonl", "--job-id", "9-"], "ok.jsonl:1: job id '9-1'"),
        (["--inputs", "ok.jsonl", "--input", "colour=red"], "unknown input 'colour'"),
        (["--jobs", "2"], "--jobs is for a batch"),
    ]
    (tmp_path / "runs" / "ws-x").parent.mkdir(exist_ok=True)
    for args, says in cases:
        result = run(db, "run", str(pipeline), *args, cwd=tmp_path)
        assert result.code == 2, (args, result.err)
        assert says in result.err, (args, result.err)
        assert event_count(db) == before, args
    # a workspace that cannot be one: refused naming the row
    write_jsonl(tmp_path / "ws.jsonl", [{"idea": "a", "id": "ok1"}, {"idea": "b", "id": "ws-x"}])
    (tmp_path / "runs" / "ws-x").write_text("a file where the workspace would be")
    result = run(db, "run", str(pipeline), "--inputs", "ws.jsonl", cwd=tmp_path)
    assert_refused_in_one_line(result, mentions="ws.jsonl:2: workspace")
    assert event_count(db) == before
    # a batch name in use
    assert run(db, "run", str(pipeline), "--inputs", "ws.jsonl", "--workspace", "w2", "--batch",
               "once", "-q", cwd=tmp_path).code == 0  # fmt: skip
    before = event_count(db)
    write_jsonl(tmp_path / "more.jsonl", [{"idea": "c"}])
    again = run(db, "run", str(pipeline), "--inputs", "more.jsonl", "--batch", "once", cwd=tmp_path)
    assert_refused_in_one_line(again, mentions="batch once already has 2 jobs")
    assert event_count(db) == before


def test_the_api_runs_a_batch_and_returns_every_jobs_result(tmp_path, pipeline):
    write_jsonl(tmp_path / "ideas.jsonl", [{"idea": "one"}, {"idea": "boom", "id": "bad"}])
    with Steplog(tmp_path / "s.db") as sl:
        result = sl.run_batch(
            pipeline, tmp_path / "ideas.jsonl", jobs=2, batch="api", workspace=tmp_path / "w"
        )
        assert list(result.jobs) == ["api-1", "bad"]
        assert (result.succeeded, result.failed, result.not_started) == (["api-1"], ["bad"], [])
        assert not result.all_succeeded and result.signal is None
        assert result.jobs["api-1"].steps["review"].output
        assert result.llm_calls == sum(r.llm_calls for r in result.jobs.values())
        with pytest.raises(Rejected, match="batch api already has 2 jobs"):
            sl.run_batch(pipeline, tmp_path / "ideas.jsonl", batch="api")


def test_a_created_job_the_batch_never_started_resumes_from_the_start(tmp_path, pipeline):
    write_jsonl(tmp_path / "ideas.jsonl", [{"idea": "one"}, {"idea": "two"}])
    db = tmp_path / "s.db"
    with Steplog(db) as sl:
        plan, states = sl.prepare_batch(pipeline, tmp_path / "ideas.jsonl", batch="later")
        assert [s.status for s in states] == ["queued", "queued"]
    assert db_rows(db, "SELECT count(*) FROM events") == [(2,)]  # job.created each, no more
    result = run(db, "resume", "later-2", "-q", cwd=tmp_path)
    assert result.code == 0, result.err
    assert json.loads(run(db, "status", "later-2", "--json", cwd=tmp_path).out)["status"] == (
        "succeeded"
    )
    assert run(db, "verify", cwd=tmp_path).code == 0


# -- Ctrl-C mid-batch (a real process) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_batch_interrupts_the_running_jobs_and_leaves_the_rest_resumable(
    tmp_path, sig
):
    from tests.cli_process import StderrLines, spawn, steplog, wait_for

    db = tmp_path / "s.db"
    path = dag_pipeline(tmp_path, {"a": ([], 30.0), "b": (["a"], 0)})
    write_jsonl(tmp_path / "rows.jsonl", [{"id": f"r{n}"} for n in range(6)])
    proc = spawn(db, "run", str(path), "--inputs", "rows.jsonl", "--jobs", "2", "--batch", "s",
                 "--grace", "0")  # fmt: skip
    err = StderrLines(proc)
    try:
        wait_for(db, "SELECT count(*) = 2 FROM events WHERE type = 'llm.request'")
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        with proc.stdout:
            out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    name = signal.Signals(sig).name
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err.text()
    assert "Traceback" not in err.text()
    running = {j for (j,) in db_rows(db, "SELECT job_id FROM events WHERE type = 'job.started'")}
    assert len(running) == 2
    stops = db_rows(db, "SELECT job_id, data FROM events WHERE type = 'job.interrupted'")
    assert {j for j, _ in stops} == running
    for _, data in stops:
        d = json.loads(data)
        assert (d["signal"], d["grace_s"], d["calls_cancelled"]) == (name, 0.0, 1)
    statuses = dict(db_rows(db, "SELECT job_id, status FROM jobs WHERE batch = 's'"))
    rest = sorted(set(statuses) - running)
    assert len(rest) == 4 and {statuses[j] for j in rest} == {"queued"}
    assert {statuses[j] for j in running} == {"interrupted"}
    assert out.splitlines()[-1].startswith(
        "batch s: 6 jobs, 0 succeeded, 0 failed, 2 interrupted, 4 not started; calls 2: "
        "0 answered, 0 failed, 2 unanswered"
    )
    assert f"batch s stopped ({name}); 6 jobs left to run: steplog resume JOB" in err.text()
    # a job never started runs from the start (a file without the 30 s sleep, same steps)
    fast = dag_pipeline(tmp_path, {"a": ([], 0), "b": (["a"], 0)}, name="fast.toml")
    resumed = steplog(db, "resume", rest[0], "--pipeline", str(fast), "--quiet")
    assert resumed.code == 0, resumed.err
    assert dict(db_rows(db, "SELECT job_id, status FROM jobs"))[rest[0]] == "succeeded"


# -- the parser -------------------------------------------------------------------------------

keys = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1)
values = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))
row_lists = st.lists(st.dictionaries(keys, values, max_size=4), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(row_lists, st.booleans())
def test_any_rows_written_as_json_lines_parse_back_as_they_were(rows, ascii_only):
    text = "".join(json.dumps(row, ensure_ascii=ascii_only) + "\n" for row in rows)
    parsed = parse_rows("f.jsonl", text.encode("utf-8"), "jsonl")
    assert [row.values for row in parsed.rows] == rows
    assert [row.line for row in parsed.rows] == list(range(1, len(rows) + 1))


cells = st.text(st.characters(blacklist_characters="\x00\r", blacklist_categories=("Cs",)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(cells, min_size=2, max_size=2), min_size=1, max_size=8))
def test_any_rows_written_as_csv_parse_back_without_their_empty_cells(records):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["idea", "tone"])
    writer.writerows(records)
    parsed = parse_rows("f.csv", out.getvalue().encode("utf-8"), "csv")
    wanted = [{k: v for k, v in zip(("idea", "tone"), r) if v != ""} for r in records]
    assert [row.values for row in parsed.rows] == wanted


def test_ids_come_from_the_id_key_else_the_prefix_and_the_zero_padded_row_number():
    text = "".join(json.dumps({"idea": str(n)}) + "\n" for n in range(11))
    text += json.dumps({"idea": "named", "id": "mine"}) + "\n"
    parsed = parse_rows("f.jsonl", text.encode(), "jsonl")
    specs = job_specs(parsed, {"idea": None, "tone": "plain"}, given={"tone": "dry"}, prefix="e-")
    assert [s.job_id for s in specs] == [f"e-{n:02d}" for n in range(1, 12)] + ["mine"]
    assert specs[0].inputs == {"idea": "0", "tone": "dry"}
    with pytest.raises(BatchFileError, match="keeps for job ids"):
        job_specs(parsed, {"id": None}, prefix="e-")


# -- the live display ---------------------------------------------------------------------------


def test_the_live_table_shows_each_job_and_the_batch_totals(tmp_path, pipeline):
    from rich.console import Console

    from steplog.commands.cli.display import BatchLiveDisplay

    write_jsonl(tmp_path / "ideas.jsonl", [{"idea": "one"}, {"idea": "boom", "id": "bad"}])
    with Steplog(tmp_path / "s.db") as sl:
        plan, states = sl.prepare_batch(
            pipeline, tmp_path / "ideas.jsonl", batch="live", workspace=tmp_path / "w"
        )
        display = BatchLiveDisplay("live", states, console=Console(file=io.StringIO()))

        def shown() -> str:
            out = io.StringIO()
            Console(file=out, width=160).print(display.render())
            return out.getvalue()

        caption = "0/2 done · 0 succeeded · 0 failed · 0 running · 2 waiting · $0.00"
        assert caption in " ".join(shown().split())  # (the caption wraps to the table)
        sl.execute_batch(plan, states, jobs=1, observer_for=display.observer_for)
    text = shown()
    assert "batch live · 2 jobs" in text
    assert re.search(r"live-1 +│ succeeded +│ +2/2 │ +2 │", text), text
    assert re.search(r"bad +│ failed +│ +0/2 │", text), text
    caption = "2/2 done · 1 succeeded · 1 failed · 0 running · 0 waiting · $0.00"
    assert caption in " ".join(text.split())


def test_create_batch_appends_what_also_gives_after_each_job_created_or_nothing(tmp_path, pipeline):
    """What `submit --inputs` builds on: the service creates every job in one transaction,
    with the caller's events after each job.created; a refused one leaves nothing."""
    from steplog.commands.batch import BatchCommand, check_batch, create_batch
    from steplog.eventstore.events import JobCancelled, NewEvent
    from steplog.projections.store import open_store

    write_jsonl(tmp_path / "ideas.jsonl", [{"idea": "one"}, {"idea": "two"}])
    cmd = BatchCommand(
        pipeline_path=pipeline, inputs_file=tmp_path / "ideas.jsonl", batch="q",
        workspace=tmp_path / "w",
    )  # fmt: skip
    store = open_store(tmp_path / "s.db")
    try:
        plan = check_batch(store, cmd)
        states = create_batch(
            store, plan, also=lambda job: [NewEvent.of(JobCancelled(reason=f"row {job.line}"))]
        )
        assert [(s.job_id, s.status, s.version, s.batch) for s in states] == [
            ("q-1", "cancelled", 2, "q"),
            ("q-2", "cancelled", 2, "q"),
        ]
        before = store.last_seq()
        with pytest.raises(Rejected, match="nothing was appended"):
            create_batch(store, plan)  # the same ids again: refused inside the transaction
        assert store.last_seq() == before
    finally:
        store.close()
