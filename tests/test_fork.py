"""`replay --until POINT --fork NEW_JOB`: the fork is the source's prefix, the source is untouched."""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.commands import timeline
from steplog.commands.fork import fork_job
from steplog.commands.jobs import (
    Rejected,
    ResumeCommand,
    RunCommand,
    execute,
    fold_job,
    prepare_resume,
    prepare_run,
)
from steplog.commands.replay import replay
from steplog.eventstore.events import parse_data
from steplog.projections import breaker, cache, manifest
from steplog.projections.tables import SQLITE, read_cache_table
from tests.cli_process import status_json, steplog
from tests.on_disk import EXAMPLE, db_rows, event_count, workspace_files
from tests.strategies import append_batches, assert_chain, dump, fresh_store, interleaved_batches


def _point(syntax: str, ev) -> str:
    if syntax == "version":
        return str(ev.version)
    if syntax == "ts":
        return ev.ts
    return f"{ev.type}:{ev.step}" if ev.step else ev.type


def _without(rows: dict[str, list[tuple]], job: str) -> dict[str, list[tuple]]:
    """A dump without the fork's own rows (and the shared cache index and breakers, checked as
    folds: the fork's copied calls count in the breakers of their endpoints)."""
    out = {}
    for table, items in rows.items():
        if table in ("cache_index", "breakers"):
            continue
        out[table] = [r for r in items if job not in r]
    return out


@settings(max_examples=40)
@given(interleaved_batches(), st.data())
def test_the_forks_fold_equals_replay_of_the_source_at_the_point(batches, data):
    with fresh_store() as store, tempfile.TemporaryDirectory() as tmp:
        append_batches(store, batches)
        source = data.draw(st.sampled_from(sorted({b.job_id for b in batches})), label="source")
        chosen = data.draw(st.sampled_from(list(store.read_job(source))), label="event")
        point = _point(data.draw(st.sampled_from(["version", "ts", "type"])), chosen)
        fork = next(f"fork{n}" for n in range(100) if not store.job_exists(f"fork{n}"))
        before = dump(store.conn)
        view = replay(store, source, point)

        result = fork_job(store, source, point, fork, workspace=Path(tmp) / "ws")

        copied = list(store.read_job(fork))
        assert_chain(copied)  # its own versions 1..n+1 and hash chain
        *prefix, forked = copied
        assert [(e.ts, e.level, e.type, e.step, e.data_json) for e in prefix] == [
            (e.ts, e.level, e.type, e.step, e.data_json) for e in view.events
        ]
        assert forked.type == "job.forked"
        marker = parse_data(forked.type, forked.data_json)
        assert (marker.source_job, marker.until_version) == (source, view.version)
        assert marker.source_hash == view.events[-1].hash
        # the fold of the fork, ignoring job.forked and the job id, is the replay at the point
        folded = manifest.project(fork, prefix).to_manifest()
        expected = view.state.to_manifest()
        for doc in (folded, expected):
            doc.pop("job_id"), doc.pop("last_seq")
        assert folded == expected
        own = {
            k: (
                e.response_sha256,
                source if e.origin_job == fork else e.origin_job,
                e.origin_step,
                e.tokens_in,
                e.tokens_out,
            )
            for k, e in cache.project(prefix).items()
        }
        assert own == {
            k: (e.response_sha256, e.origin_job, e.origin_step, e.tokens_in, e.tokens_out)
            for k, e in view.cache.items()
        }
        # the fork: no owner, its own workspace, resumable
        state = fold_job(store, fork)
        assert state.status == "created" and state.owner is None
        assert state.workspace == str(result.workspace)
        # the source and every other job are untouched; the shared cache is still the fold
        assert _without(dump(store.conn), fork) == _without(before, fork)
        assert read_cache_table(store.conn) == cache.project(store.read_all())
        assert SQLITE.read_breakers_table(store.conn) == breaker.project(store.read_all())
        restored = workspace_files(result.workspace) if result.workspace.exists() else {}
        assert sorted(restored) == result.files
        for path in result.files:
            assert hashlib.sha256(restored[path]).hexdigest() in {
                e.data["sha256"] for e in prefix if e.type == "file.written"
            }


def test_a_fork_of_a_job_owned_by_a_live_process_resumes(tmp_path):
    from steplog.projections.store import open_store

    store = open_store(tmp_path / "s.db")
    prepared = prepare_run(
        store, RunCommand(pipeline_path=EXAMPLE, job_id="src", workspace=tmp_path / "src")
    )
    assert prepared.state.owner is not None  # this very (live) process owns the source
    with pytest.raises(Rejected, match="being run by"):
        prepare_resume(store, ResumeCommand(job_id="src"))
    fork_job(store, "src", "job.started", "fork", workspace=tmp_path / "fork")
    outcome = execute(store, prepare_resume(store, ResumeCommand(job_id="fork")))
    assert outcome.succeeded
    assert fold_job(store, "src").status == "running"  # the source did not move
    assert set(workspace_files(tmp_path / "fork")) == {"app.py", "tests/test_app.py", "README.md"}
    # its picture marks where the copied history ends, not a dead process
    texts = [m.text for m in timeline.build("fork", store.read_job("fork")).markers]
    assert texts[0] == "forked from src at event 2" and "process gone" not in texts
    store.close()


def _calls(log: Path) -> Counter[str]:
    return Counter(log.read_text().split()) if log.exists() else Counter()


QA_PROMPT = "Review this project for bugs and missing tests. Answer with JSON."


@pytest.mark.slow
def test_fix_a_prompt_and_rerun_only_what_follows(tmp_path):
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(EXAMPLE.read_text())
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    assert steplog(db, "run", str(pipeline), "--job-id", "src", env=env).code == 0
    assert _calls(log) == Counter(architect=1, builder=1, docs=1, qa=1)
    source_rows = db_rows(db, "SELECT * FROM events WHERE job_id = 'src' ORDER BY version")
    source_job = db_rows(db, "SELECT * FROM jobs WHERE job_id = 'src'")

    # fork while docs was in flight (its cache.miss is the point; its answer came after)
    forked = steplog(db, "replay", "src", "--until", "cache.miss:docs", "--fork", "fix")
    assert forked.code == 0, forked.err
    assert "continue with: steplog resume fix" in forked.out
    doc = status_json(db, "fix")
    assert doc["status"] == "created" and doc["forked_from"]["job"] == "src"
    assert doc["steps"]["docs"]["status"] == "running" and doc["steps"]["qa"]["status"] == "pending"
    assert workspace_files(tmp_path / "runs" / "fix") == workspace_files(tmp_path / "runs" / "src")

    pipeline.write_text(pipeline.read_text().replace(QA_PROMPT, QA_PROMPT + " Be strict."))
    resumed = steplog(db, "resume", "fix", env=env)
    assert resumed.code == 0, resumed.err
    # architect and builder: completed before the point, skipped; docs (in flight) re-ran and
    # was served by the cache; only the edited qa called its provider
    assert _calls(log) == Counter(architect=1, builder=1, docs=1, qa=2)
    types = db_rows(
        db,
        "SELECT step, type FROM events WHERE job_id = 'fix' AND version > ?"
        " AND type IN ('step.skipped', 'cache.hit', 'cache.miss')",
        (doc["version"],),
    )
    assert sorted(types) == [
        ("architect", "step.skipped"),
        ("builder", "step.skipped"),
        ("docs", "cache.hit"),
        ("qa", "cache.miss"),
    ]
    reason = db_rows(
        db,
        "SELECT json_extract(data, '$.reason') FROM events WHERE job_id = 'fix'"
        " AND type = 'cache.miss' AND step = 'qa' ORDER BY version DESC LIMIT 1",
    )[0][0]
    assert reason.startswith("prompt template changed")
    assert status_json(db, "fix")["status"] == "succeeded"
    # the source is untouched: its events and its row in the jobs table
    assert db_rows(db, "SELECT * FROM events WHERE job_id = 'src' ORDER BY version") == source_rows
    assert db_rows(db, "SELECT * FROM jobs WHERE job_id = 'src'") == source_job


@pytest.mark.slow
def test_fork_rejections_exit_2_and_append_nothing(tmp_path):
    db = tmp_path / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "src").code == 0
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "other").code == 0
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("someone's file")
    before = event_count(db)
    cases = [
        (["replay", "nope", "--until", "3", "--fork", "f"], "unknown job nope"),
        (["replay", "src", "--until", "3", "--fork", "other"], "job other already exists"),
        (["replay", "src", "--until", "3", "--fork", "bad name!"], "is not valid"),
        (["replay", "src", "--until", "999", "--fork", "f"], "past the end"),
        (["replay", "src", "--until", "job.forked", "--fork", "f"], "no event of job src"),
        (["replay", "src", "--until", "3", "--fork", "f", "--workspace", "busy"], "not empty"),
        (["replay", "src", "--until", "3", "--workspace", "w"], "only for --fork"),
    ]
    for args, message in cases:
        result = steplog(db, *args)
        assert result.code == 2, (args, result.out, result.err)
        assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
        assert event_count(db) == before
    assert not (tmp_path / "runs" / "f").exists()
