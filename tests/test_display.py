"""What a person sees: a live table on a terminal, plain lines when piped, one line with --quiet."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from steplog.commands.cli.display import LiveDisplay, PlainDisplay
from steplog.projections.store import open_store
from tests.cli_process import steplog
from tests.on_disk import EXAMPLE
from tests.test_executor import run_job


def test_live_table_shows_each_steps_state_cache_and_tokens(tmp_path):
    store = open_store(tmp_path / "s.db")
    run_job(store, EXAMPLE, "j", tmp_path)
    events = list(store.read_job("j"))
    from steplog.projections.manifest import JobState

    display = LiveDisplay(JobState(job_id="j"), console=Console(file=io.StringIO(), width=120))
    display(events[:8])  # mid-run: architect done, builder running
    out = io.StringIO()
    Console(file=out, width=120).print(display.render())
    text = out.getvalue()
    assert "architect" in text and "succeeded" in text and "running" in text and "miss" in text
    display(events[8:])
    out = io.StringIO()
    Console(file=out, width=120).print(display.render())
    assert "4/4 done" in out.getvalue() and "tokens" in out.getvalue()


@pytest.mark.slow
def test_plain_lines_when_piped_and_one_line_when_quiet(tmp_path):
    db = tmp_path / "s.db"
    plain = steplog(db, "run", str(EXAMPLE), "--job-id", "p")
    lines = plain.out.strip().splitlines()
    assert lines[0].startswith("job p: factory, 4 step(s)")
    assert sum(line.startswith("step.succeeded") for line in lines) == 4
    assert "\x1b[" not in plain.out  # no terminal control codes in a pipe
    quiet = steplog(db, "run", str(EXAMPLE), "--job-id", "q", "--quiet")
    assert quiet.out.strip().splitlines() == [quiet.out.strip()]
    assert quiet.out.startswith(
        "job q succeeded: 4 steps, 4 cache hits, calls 0: 0 answered, 0 failed, 0 unanswered"
    )


def test_plain_display_folds_the_same_state(tmp_path):
    store = open_store(tmp_path / "s.db")
    run_job(store, EXAMPLE, "j", tmp_path)
    from steplog.projections.manifest import JobState

    display = PlainDisplay(JobState(job_id="j"), out=io.StringIO())
    display(list(store.read_job("j")))
    assert display.state.status == "succeeded"
    assert "step.succeeded  builder" in display.out.getvalue()  # type: ignore[attr-defined]
