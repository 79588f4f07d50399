"""`steplog export` / `steplog import`: round trips, the predecessor's file, and bad lines."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from steplog.commands.interchange import BadImport, export_job, import_job
from tests.cli_process import status_json, steplog
from tests.on_disk import db_rows
from tests.rich_job import RICH_JOB, make_rich_job
from tests.strategies import append_batches, dump, fresh_store, job_batches

FIXTURE = Path(__file__).parent / "fixtures" / "predecessor_events.jsonl"
NEW_ID = "imported_copy_zz"


def _swap_job_id(text: str, old: str, new: str) -> str:
    """Each line's envelope job_id replaced (and nothing else)."""
    out = []
    for line in text.split("\n")[:-1]:
        prefix = line.index('"job_id":')
        end = prefix + len('"job_id":') + len(json.dumps(new, ensure_ascii=False))
        assert line[prefix:end] == '"job_id":' + json.dumps(new, ensure_ascii=False)
        out.append(
            line[:prefix] + '"job_id":' + json.dumps(old, ensure_ascii=False) + line[end:] + "\n"
        )
    return "".join(out)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(job_batches())
def test_export_import_export_is_identical_apart_from_the_job_id(batches):
    job = batches[0].job_id
    with fresh_store() as store, tempfile.TemporaryDirectory() as tmp:
        original = append_batches(store, batches)
        first = export_job(store, job)
        assert first.text() == export_job(store, job).text()  # deterministic
        assert all(len(line.splitlines()) == 1 for line in first.lines())
        path = Path(tmp) / "job.jsonl"
        path.write_text(first.text(), encoding="utf-8")
        target, plan = import_job(store, path, NEW_ID)
        assert target == NEW_ID and not plan.predecessor
        second = export_job(store, NEW_ID).text()
        assert _swap_job_id(second, job, NEW_ID) == first.text()
        copied = list(store.read_job(NEW_ID))
        assert [(e.ts, e.level, e.type, e.step, e.data_json) for e in copied] == [
            (e.ts, e.level, e.type, e.step, e.data_json) for e in original
        ]
        # and into a database of its own, from the file alone
        with fresh_store() as other:
            import_job(other, path)
            assert export_job(other, job).text() == first.text()


@pytest.fixture(scope="module")
def rich_db(tmp_path_factory, module_fake_llm_factory) -> Path:
    return make_rich_job(tmp_path_factory.mktemp("interchange"), module_fake_llm_factory())


@pytest.mark.slow
def test_a_real_job_round_trips_through_the_cli(rich_db, tmp_path):
    out = tmp_path / "rich.jsonl"
    result = steplog(rich_db, "export", RICH_JOB, "--output", str(out))
    assert result.code == 0, result.err
    text = out.read_text()
    assert steplog(rich_db, "export", RICH_JOB).out == text  # stdout: the same bytes
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(list(obj) == ["ts", "level", "job_id", "type", "step", "data"] for obj in lines)
    assert lines[0]["type"] == "steplog.export" and lines[0]["data"]["format"] == 1
    events = [o for o in lines if not o["type"].startswith("steplog.")]
    assert [o["type"] for o in events] == [
        r[0]
        for r in db_rows(
            rich_db, "SELECT type FROM events WHERE job_id = ? ORDER BY version", (RICH_JOB,)
        )
    ]
    blobs = {
        o["data"]["sha256"]: o["data"]["content"] for o in lines if o["type"] == "steplog.blob"
    }
    for sha, content in blobs.items():
        assert hashlib.sha256(content.encode()).hexdigest() == sha
    # every prompt, response, output and the pipeline source and snapshot travel with the job
    refs = {
        v
        for o in events
        for k, v in o["data"].items()
        if k.endswith("sha256") and v and o["type"] != "file.written"
    }
    assert refs <= set(blobs) and len(refs) >= 10

    assert steplog(rich_db, "import", str(out), "--job-id", "rich_copy").code == 0
    again = steplog(rich_db, "export", "rich_copy").out
    assert _swap_job_id(again, RICH_JOB, "rich_copy") == text
    assert (
        status_json(rich_db, "rich_copy")["completed_steps"]
        == status_json(rich_db, RICH_JOB)["completed_steps"]
    )

    # the same with blobs in a sidecar directory, imported into a fresh database
    side = tmp_path / "side"
    side.mkdir()
    result = steplog(
        rich_db, "export", RICH_JOB, "-o", str(side / "rich.jsonl"), "--blobs", str(side / "blobs")
    )
    assert result.code == 0, result.err
    sidecar = (side / "rich.jsonl").read_text()
    assert '"content"' not in sidecar and '"path":"blobs/' in sidecar
    assert sorted(p.name for p in (side / "blobs").iterdir()) == sorted(blobs)
    moved = tmp_path / "moved"
    (side).rename(moved)  # paths are relative to the file: the pair can move together
    fresh = tmp_path / "fresh.db"
    result = steplog(fresh, "import", str(moved / "rich.jsonl"))
    assert result.code == 0, result.err
    assert steplog(fresh, "export", RICH_JOB).out == text
    # the imported job can be resumed? no: it succeeded; but its blobs serve the cache
    assert db_rows(fresh, "SELECT count(*) FROM cache_index")[0][0] >= 4


@pytest.mark.slow
def test_the_predecessors_events_jsonl_imports_and_status_shows_it(tmp_path):
    db = tmp_path / "p.db"
    result = steplog(db, "import", str(FIXTURE))
    assert result.code == 0, result.err
    assert "predecessor" in result.out
    doc = status_json(db, "job_abc")
    assert doc["status"] == "succeeded" and doc["pipeline"] == "factory"
    assert doc["inputs"] == {"idea": "a command-line todo list"}
    assert list(doc["steps"]) == ["architect", "builder", "qa"]
    assert doc["completed_steps"] == ["architect", "builder", "qa"]
    assert doc["runs"] == 2 and doc["steps"]["qa"]["attempts"] == 2
    assert doc["llm_calls"] == 3 and doc["llm_failures"] == 1 and doc["cache_hits"] == 1
    assert doc["steps"]["builder"]["files"] == ["todo.py"]
    text = steplog(db, "status", "job_abc")
    assert text.code == 0 and "job_abc" in text.out and "succeeded" in text.out
    # nothing it lacks is invented as a cache answer
    assert db_rows(db, "SELECT count(*) FROM cache_index")[0][0] == 0
    types = [r[0] for r in db_rows(db, "SELECT type FROM events ORDER BY version")]
    assert types[0] == "job.created" and types.count("job.resumed") == 1
    # once imported, it exports like any job, and that export round-trips
    out = tmp_path / "abc.jsonl"
    assert steplog(db, "export", "job_abc", "-o", str(out)).code == 0
    assert steplog(db, "import", str(out), "--job-id", "abc2").code == 0
    assert _swap_job_id(steplog(db, "export", "abc2").out, "job_abc", "abc2") == out.read_text()


@pytest.mark.slow
def test_a_failed_predecessor_job_resumes_only_with_a_pipeline_file(tmp_path):
    failed = tmp_path / "failed.jsonl"
    failed.write_text("".join(FIXTURE.read_text().splitlines(keepends=True)[:16]))
    db = tmp_path / "p.db"
    assert steplog(db, "import", str(failed)).code == 0
    assert status_json(db, "job_abc")["status"] == "failed"
    refused = steplog(db, "resume", "job_abc")
    assert refused.code == 2 and "resume it with --pipeline FILE" in refused.err
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        'name = "factory"\n[providers.local]\nkind = "offline"\n'
        '[steps.architect]\nprovider = "local"\nprompt = "Design."\n'
        '[steps.builder]\nneeds = ["architect"]\nprovider = "local"\nprompt = "Build."\n'
        '[steps.qa]\nneeds = ["builder"]\nprovider = "local"\nprompt = "Review."\n'
    )
    resumed = steplog(db, "resume", "job_abc", "--pipeline", str(pipeline))
    assert resumed.code == 0, resumed.err
    doc = status_json(db, "job_abc")
    assert doc["status"] == "succeeded"
    assert {s["attempts"] for s in doc["steps"].values()} == {2}  # no definitions: all re-run


def _rich_export(tmp_path: Path) -> list[str]:
    db = tmp_path / "src.db"
    assert (
        steplog(
            db,
            "run",
            str(Path(__file__).parent.parent / "examples/factory/pipeline.toml"),
            "--job-id",
            "src",
        ).code
        == 0
    )
    return steplog(db, "export", "src").out.splitlines()


def _edit(lines: list[str], index: int, change) -> list[str]:
    obj = json.loads(lines[index])
    change(obj)
    return lines[:index] + [json.dumps(obj)] + lines[index + 1 :]


def _blob_index(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if '"steplog.blob"' in line)


def _event_index(lines: list[str], type_: str) -> int:
    return next(i for i, line in enumerate(lines) if f'"type":"{type_}"' in line)


BAD_LINES = {
    "not JSON": (lambda ls: ls[:3] + ["{not json"] + ls[4:], 4, "not JSON"),
    "unknown type": (
        lambda ls: _edit(
            ls, _event_index(ls, "step.started"), lambda o: o.update(type="step.exploded")
        ),
        None,
        "unknown event type 'step.exploded'",
    ),
    "bad data field": (
        lambda ls: _edit(
            ls, _event_index(ls, "step.started"), lambda o: o["data"].update(attempt=0)
        ),
        None,
        "step.started: data.attempt",
    ),
    "unknown data field": (
        lambda ls: _edit(
            ls, _event_index(ls, "llm.request"), lambda o: o["data"].update(api_key="x")
        ),
        None,
        "data.api_key",
    ),
    "missing envelope key": (
        lambda ls: _edit(ls, _event_index(ls, "step.succeeded"), lambda o: o.pop("step")),
        None,
        "missing envelope key 'step'",
    ),
    "bad ts": (
        lambda ls: _edit(
            ls, _event_index(ls, "cache.miss"), lambda o: o.update(ts="2026-11-26 10:00:00")
        ),
        None,
        "is not ISO 8601 UTC",
    ),
    "truncated": (lambda ls: ls[:-1], 1, "the header promises"),
    "impossible date": (
        lambda ls: _edit(
            ls, _event_index(ls, "cache.miss"), lambda o: o.update(ts="2026-02-30T10:00:00Z")
        ),
        None,
        "is not a real time",
    ),
    "blob hash mismatch": (
        lambda ls: _edit(
            ls, _blob_index(ls), lambda o: o["data"].update(content=o["data"]["content"] + "!")
        ),
        None,
        "does not match its sha256",
    ),
    "other job": (
        lambda ls: _edit(ls, _event_index(ls, "job.started"), lambda o: o.update(job_id="other")),
        None,
        "differs from 'src'",
    ),
    "bad level": (
        lambda ls: _edit(ls, _event_index(ls, "job.started"), lambda o: o.update(level="LOUD")),
        None,
        "level 'LOUD'",
    ),
}


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> tuple[list[str], Path]:
    tmp = tmp_path_factory.mktemp("bad")
    return _rich_export(tmp), tmp / "src.db"


@pytest.fixture
def good_lines(good_export) -> list[str]:
    return good_export[0]


@pytest.fixture
def source_db(good_export) -> Path:
    return good_export[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_a_bad_line_is_named_and_nothing_is_imported(kind, good_lines, source_db, tmp_path):
    make, line_no, message = BAD_LINES[kind]
    lines = make(list(good_lines))
    if line_no is None:  # the one line that differs
        line_no = next(i for i, (a, b) in enumerate(zip(lines, good_lines), start=1) if a != b)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    db = tmp_path / "target.db"
    shutil.copyfile(source_db, db)  # a database that already holds a job
    before = _dump(db)
    result = steplog(db, "import", str(path), "--job-id", "new")
    assert result.code == 2, result.out
    assert result.err.startswith(f"error: line {line_no}: "), result.err
    assert message in result.err and result.err.count("\n") == 1
    assert _dump(db) == before


@pytest.mark.slow
def test_an_existing_job_id_is_refused_unless_renamed(good_lines, tmp_path):
    path = tmp_path / "good.jsonl"
    path.write_text("\n".join(good_lines) + "\n")
    db = tmp_path / "t.db"
    assert steplog(db, "import", str(path)).code == 0
    before = _dump(db)
    again = steplog(db, "import", str(path))
    assert again.code == 2 and "job src already exists" in again.err
    bad_id = steplog(db, "import", str(path), "--job-id", "no spaces please")
    assert bad_id.code == 2 and "not valid" in bad_id.err
    assert _dump(db) == before
    assert steplog(db, "import", str(path), "--job-id", "src2").code == 0


@pytest.mark.slow
def test_predecessor_lines_that_cannot_be_represented_are_refused(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    cases = {
        "provider.call": (
            4,
            lambda o: o.update(type="provider.call"),
            "has no steplog counterpart",
        ),
        "nested input": (
            1,
            lambda o: o["data"].update(config={"a": 1}),
            "not a text or number input",
        ),
        "unknown field": (5, lambda o: o["data"].update(temperature=0.2), "data.temperature"),
        "bad reason": (9, lambda o: o["data"].update(reason="touched"), "data.reason"),
    }
    db = tmp_path / "p.db"
    for name, (line_no, change, message) in cases.items():
        edited = _edit(lines, line_no - 1, change)
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(edited) + "\n")
        result = steplog(db, "import", str(path))
        assert result.code == 2, name
        assert result.err.startswith(f"error: line {line_no}: ") and message in result.err, (
            result.err
        )
    assert not db.exists() or db_rows(db, "SELECT count(*) FROM events")[0][0] == 0


@pytest.mark.slow
def test_bad_files(tmp_path):
    db = tmp_path / "t.db"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for path, message in (
        (empty, "is empty"),
        (tmp_path / "missing.jsonl", "cannot read"),
    ):
        result = steplog(db, "import", str(path))
        assert result.code == 2 and message in result.err, result.err
    with pytest.raises(BadImport, match="line 1: a line must be a JSON object"):
        listed = tmp_path / "list.jsonl"
        listed.write_text("[1, 2]\n")
        from steplog.projections.store import open_store

        with open_store(tmp_path / "x.db") as store:
            import_job(store, listed)


def _dump(db: Path) -> dict:
    conn = sqlite3.connect(db)
    try:
        return dump(conn)
    finally:
        conn.close()


def test_an_export_is_the_job_as_it_was_when_it_was_counted(tmp_path):
    """The file is written a line at a time from a second read of the job: events appended
    between the count and the writing are left out, so the header still equals the body."""
    from steplog.eventstore.events import NewEvent, StepStarted
    from steplog.projections.store import open_store
    from tests.cli_inprocess import steplog_here
    from tests.on_disk import EXAMPLE

    db = tmp_path / "s.db"
    ran = steplog_here(db, "run", str(EXAMPLE), "--job-id", "j", "--workspace", str(tmp_path / "w"))
    assert ran.code == 0, ran.err
    with open_store(db) as store:
        exported = export_job(store, "j")
        before = exported.text()
        version = store.job_version("j")
        late = NewEvent.of(StepStarted(attempt=9, fingerprint="f" * 64), "qa")
        store.append("j", [late], expected_version=version)
        assert exported.text() == before  # the late event is not in it
        lines = [json.loads(line) for line in before.splitlines()]
        header, body = lines[0]["data"], lines[1:]
        blobs = sum(1 for e in body if e["type"] == "steplog.blob")
        assert header["events"] == version == len(body) - blobs
        assert header["blobs"] == blobs > 0
        assert export_job(store, "j").events == version + 1


@pytest.mark.slow  # the descriptor case needs a process of its own
def test_export_follows_a_symlink_given_as_output_and_never_replaces_it(tmp_path):
    """-o LINK writes where the link leads: the file it names is replaced whole (the link
    stays), and a link to a descriptor (/dev/stdout is /proc/self/fd/1) is written through."""
    from tests.cli_process import steplog
    from tests.on_disk import EXAMPLE

    db = tmp_path / "s.db"
    ran = steplog(
        db, "run", str(EXAMPLE), "--job-id", "j", "-q", "--workspace", str(tmp_path / "w")
    )
    assert ran.code == 0, ran.err
    whole = steplog(db, "export", "j").out
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("old\n")
    link.symlink_to(real.name)
    assert steplog(db, "export", "j", "-o", str(link)).code == 0
    assert link.is_symlink() and real.read_text() == whole
    to_stdout = tmp_path / "stdout"
    to_stdout.symlink_to("/proc/self/fd/1")
    through = steplog(db, "export", "j", "-o", str(to_stdout))
    assert through.code == 0, through.err
    assert through.out == whole and to_stdout.is_symlink()


def test_a_blob_directory_that_cannot_take_a_blob_stops_the_export_before_any_line(tmp_path):
    from tests.cli_inprocess import steplog_here
    from tests.on_disk import EXAMPLE

    db = tmp_path / "s.db"
    ran = steplog_here(
        db, "run", str(EXAMPLE), "--job-id", "j", "-q", "--workspace", str(tmp_path / "w")
    )
    assert ran.code == 0, ran.err
    fine = tmp_path / "fine"
    assert steplog_here(db, "export", "j", "--blobs", str(fine)).code == 0
    last = sorted(fine.iterdir())[-1].name  # a blob written after others: half-way
    blocked = tmp_path / "blocked"
    (blocked / last).mkdir(parents=True)  # a directory where that blob's file must go
    stopped = steplog_here(db, "export", "j", "--blobs", str(blocked))
    assert stopped.code == 2 and stopped.out == ""
    assert stopped.err.startswith(f"error: cannot write blobs to {blocked}")
    assert stopped.err.count("\n") == 1
