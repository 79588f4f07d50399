"""One count of calls, end to end: after a kill -9 with calls in flight, every verb and view
states the same calls made, answered, failed and unanswered (the property over arbitrary logs
is in tests/test_audit_properties.py; this is the real process, killed for real)."""

from __future__ import annotations

import json
import signal

import pytest

from steplog.commands.cli.render import calls_text
from tests.cli_process import signal_when, spawn, status_json, steplog
from tests.on_disk import db_rows
from tests.pipeline_files import dag_pipeline

pytestmark = pytest.mark.slow

# a answers at once; b1..b3 are in flight (a minute each) when the process is killed
FAN_OUT = {"a": ([], 0), "b1": (["a"], 60), "b2": (["a"], 60), "b3": (["a"], 60)}
IN_FLIGHT = "SELECT count(*) = 3 FROM events WHERE type = 'llm.request' AND step LIKE 'b%'"


def figures_everywhere(db, job: str) -> dict[str, tuple[int, int, int, int]]:
    """(made, answered, failed, unanswered) as status --json, audit --json, the job_summary view
    and the llm_calls view each state them."""
    doc = status_json(db, job)
    audit = steplog(db, "audit", job, "--json")
    assert audit.code == 0, audit.err
    summary = json.loads(audit.out)["summary"]
    (view,) = db_rows(
        db,
        "SELECT calls, answered_calls, failed_calls, unanswered_calls FROM job_summary"
        " WHERE job_id = ?",
        (job,),
    )
    (calls,) = db_rows(
        db,
        "SELECT count(*), count(*) FILTER (WHERE success = 1), count(*) FILTER (WHERE success = 0),"
        " count(*) FILTER (WHERE success IS NULL) FROM llm_calls WHERE job_id = ?",
        (job,),
    )
    return {
        "status --json": (
            doc["llm_calls"],
            doc["llm_answered"],
            doc["llm_failures"],
            doc["llm_unanswered"],
        ),
        "audit --json": (
            summary["calls"],
            summary["answered_calls"],
            summary["failed_calls"],
            summary["unanswered_calls"],
        ),
        "job_summary": tuple(view),
        "llm_calls": tuple(calls),
    }


def test_after_kill_9_mid_call_every_verb_counts_the_same_calls(tmp_path):
    db = tmp_path / "s.db"
    pipeline = dag_pipeline(tmp_path, FAN_OUT)
    proc = spawn(db, "run", str(pipeline), "--job-id", "k")
    signal_when(db, proc, IN_FLIGHT, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    killed = figures_everywhere(db, "k")
    assert set(killed.values()) == {(4, 1, 0, 3)}, killed  # 3 requests a paid API may bill
    text = steplog(db, "status", "k")
    assert text.code == 0 and calls_text(4, 1, 0, 3) in text.out, text.out
    audit = steplog(db, "audit", "k")
    assert audit.code == 0 and calls_text(4, 1, 0, 3) in audit.out, audit.out

    # resume asks again for the three cut-off answers only (a's is reused); its closing line
    # counts the job's calls as status does: the three abandoned ones stay counted
    dag_pipeline(tmp_path, {name: (needs, 0) for name, (needs, _) in FAN_OUT.items()})
    resumed = steplog(db, "resume", "k")
    assert resumed.code == 0, resumed.err
    after = figures_everywhere(db, "k")
    assert set(after.values()) == {(7, 4, 0, 3)}, after
    closing = resumed.out.strip().splitlines()[-1]
    assert closing.startswith("job k succeeded") and calls_text(7, 4, 0, 3) in closing, closing
