"""`steplog plan` through the real CLI: predictions match the run that follows, and so do reasons."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_process import steplog
from tests.on_disk import EXAMPLE, db_rows, event_count

pytestmark = pytest.mark.slow

LOCAL = 'kind = "offline"\nmodel = "offline-1"'
QA_PROMPT = "Review this project for bugs and missing tests. Answer with JSON."


def _calls(log: Path) -> Counter[str]:
    return Counter(log.read_text().split()) if log.exists() else Counter()


def _pipeline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def _plan(db: Path, *args: str) -> dict:
    result = steplog(db, "plan", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _cache_events(db: Path, job: str) -> dict[str, tuple[str, dict]]:
    rows = db_rows(
        db, "SELECT step, type, data FROM events WHERE job_id = ? AND type LIKE 'cache.%'", (job,)
    )
    return {step: (type_, json.loads(data)) for step, type_, data in rows}


def test_plan_names_the_changed_option_and_the_run_records_the_same(tmp_path):
    db, log = tmp_path / "s.db", tmp_path / "calls.log"
    env = {"STEPLOG_OFFLINE_CALL_LOG": str(log)}
    base = EXAMPLE.read_text().replace(LOCAL, LOCAL + "\noptions = { temperature = 0 }")
    pipeline = _pipeline(tmp_path, base)

    first = _plan(db, str(pipeline))
    assert [(s["step"], s["action"]) for s in first["steps"]] == [
        ("architect", "miss"),
        ("builder", "depends"),
        ("docs", "depends"),
        ("qa", "depends"),
    ]
    assert first["steps"][0]["reason"] == "first run of this step"
    assert first["steps"][1]["reason"] == "depends on architect (will be re-run)"
    assert steplog(db, "run", str(pipeline), "--job-id", "one", env=env).code == 0

    # unchanged: every step from the cache, under exactly the key the next run uses
    again = _plan(db, str(pipeline))
    assert [s["action"] for s in again["steps"]] == ["hit"] * 4
    assert steplog(db, "run", str(pipeline), "--job-id", "two", env=env).code == 0
    hits = _cache_events(db, "two")
    assert {s["step"]: s["cache_key"] for s in again["steps"]} == {
        step: data["cache_key"] for step, (type_, data) in hits.items() if type_ == "cache.hit"
    }

    pipeline.write_text(base.replace("temperature = 0 }", "temperature = 0.7 }"))
    before, calls_before = event_count(db), _calls(log)
    text = steplog(db, "plan", str(pipeline))
    assert text.code == 0, text.err
    assert "architect  provider call  options.temperature 0 → 0.7" in text.out
    assert "depends on architect (will be re-run); also options.temperature 0 → 0.7" in text.out
    predicted = _plan(db, str(pipeline))
    assert event_count(db) == before and _calls(log) == calls_before  # plan called nothing
    architect = predicted["steps"][0]
    assert architect["changed"] == [
        {"part": "provider", "name": "options.temperature", "old": 0, "new": 0.7}
    ]

    assert steplog(db, "run", str(pipeline), "--job-id", "three", env=env).code == 0
    kind, miss = _cache_events(db, "three")["architect"]
    assert kind == "cache.miss"
    assert miss["cache_key"] == architect["cache_key"]
    assert miss["changed"] == architect["changed"] and miss["reason"] == architect["reason"]
    assert miss["previous_key"] == architect["previous_key"] == hits["architect"][1]["cache_key"]
    assert miss["previous_job"] == "two"
    assert miss["detail"]["provider"]["options"] == {"temperature": 0.7}
    # the manual's recipe answers "why did this step call the model again?"
    why = db_rows(
        db,
        "SELECT step, json_extract(data, '$.reason') FROM events"
        " WHERE job_id = 'three' AND type = 'cache.miss' ORDER BY seq",
    )
    assert why[0] == ("architect", "options.temperature 0 → 0.7")
    assert why[1][0] == "builder"
    assert why[1][1].startswith("options.temperature 0 → 0.7; upstream architect output changed (")


def test_an_edited_downstream_prompt_is_the_only_call(tmp_path):
    db = tmp_path / "s.db"
    pipeline = _pipeline(tmp_path, EXAMPLE.read_text())
    assert steplog(db, "run", str(pipeline), "--job-id", "one").code == 0
    pipeline.write_text(EXAMPLE.read_text().replace(QA_PROMPT, QA_PROMPT + " Be brief."))
    plan = _plan(db, str(pipeline))
    assert {s["step"]: s["action"] for s in plan["steps"]} == {
        "architect": "hit",
        "builder": "hit",
        "docs": "hit",
        "qa": "miss",
    }
    qa = plan["steps"][3]
    assert [(c["part"], c["name"]) for c in qa["changed"]] == [("template", "prompt")]
    assert qa["reason"].startswith("prompt template changed (")


def test_plan_for_resuming_a_failed_job_after_the_fix(tmp_path):
    db = tmp_path / "s.db"
    failing = EXAMPLE.read_text().replace(
        '[steps.docs]\nneeds = ["builder"]\nprovider = "local"',
        '[steps.docs]\nneeds = ["builder"]\nprovider = "local"\noptions = { fail = true }',
    )
    pipeline = _pipeline(tmp_path, failing)
    assert steplog(db, "run", str(pipeline), "--job-id", "job").code == 1
    pipeline.write_text(EXAMPLE.read_text())
    before = event_count(db)
    plan = _plan(db, str(pipeline), "--job", "job")
    assert plan["job"] == "job"
    assert {s["step"]: s["action"] for s in plan["steps"]} == {
        "architect": "skip",
        "builder": "skip",
        "docs": "miss",
        "qa": "skip",
    }
    assert plan["steps"][2]["reason"] == "options.fail true → (unset)"
    assert event_count(db) == before
    assert steplog(db, "resume", "job").code == 0
    _, miss = _cache_events(db, "job")["docs"]  # the last cache event of docs: the resume's
    assert miss["reason"] == "options.fail true → (unset)"


def test_plan_rejections_exit_2(tmp_path):
    db = tmp_path / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "done").code == 0
    before = event_count(db)
    cases = [
        (["plan", str(EXAMPLE), "--job", "nope"], "unknown job nope"),
        (["plan", str(EXAMPLE), "--job", "done"], "already succeeded"),
        (["plan", str(EXAMPLE), "--job", "done", "--input", "idea=x"], "--input cannot be used"),
        (["plan", str(EXAMPLE), "--input", "topic=x"], "unknown input 'topic'"),
        (["plan", str(tmp_path / "missing.toml")], "does not exist"),
    ]
    for args, message in cases:
        result = steplog(db, *args)
        assert result.code == 2, (args, result.err)
        assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert event_count(db) == before
