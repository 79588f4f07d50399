"""Fuzzed `replay --until POINT` (and `--fork`) on a real job's database: a view of the job, or
exit 2 with one line naming the problem; never a traceback, never a change when refused (and
`replay` without --fork never changes the database at all)."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from steplog.eventstore.events import EVENT_TYPES
from tests.cli_inprocess import assert_refused_in_one_line, steplog_here
from tests.cli_process import steplog
from tests.on_disk import EXAMPLE, copy_db, db_dump


@pytest.fixture(scope="module")
def job_db(tmp_path_factory) -> tuple[Path, list[str]]:
    """The factory example run offline: a job of 5 steps and a few dozen events."""
    tmp = tmp_path_factory.mktemp("replay")
    db = tmp / "r.db"
    result = steplog_here(
        db, "run", str(EXAMPLE), "--job-id", "job1", "--workspace", str(tmp / "ws"), "-q"
    )
    assert result.code == 0, result.err
    events = steplog_here(db, "events", "job1", "--json")
    stamps = [json.loads(line)["ts"] for line in events.out.splitlines()]
    return db, stamps


def _timestamps(stamps: list[str]) -> st.SearchStrategy[str]:
    """Around the job's own events, in any time zone and spelling, valid or not."""
    first = datetime.fromisoformat(stamps[0].replace("Z", "+00:00"))
    moments = st.builds(
        lambda seconds, minutes: first + timedelta(seconds=seconds) - timedelta(minutes=minutes),
        st.floats(-5, 120, allow_nan=False),
        st.sampled_from([0, 0, 60, -60, 330]),
    )
    zones = st.sampled_from(
        [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-14))]
    )
    spelled = st.builds(
        lambda m, z, spec: m.astimezone(z).isoformat(timespec=spec),
        moments,
        zones,
        st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    )
    return st.one_of(
        st.sampled_from(stamps),
        spelled,
        spelled.map(lambda s: s.replace("+00:00", "Z")),
        spelled.map(lambda s: s[:19]),  # no time zone: refused, named
        st.sampled_from(
            [
                "2026-02-30T00:00:00Z",
                "0001-01-01T00:00:00+14:00",
                "9999-12-31T23:59:59-14:00",
                "2026-01-01",
                "2026-13-01T00:00:00Z",
            ]
        ),
    )


def points(stamps: list[str]) -> st.SearchStrategy[str]:
    types = sorted(EVENT_TYPES)
    steps = ["architect", "builder", "docs", "qa", "review", "nope", "", "*"]
    return st.one_of(
        st.integers(-(10**30), 10**30).map(str),
        st.integers(0, 60).map(str),
        st.integers(0, 60).map(lambda n: f"  {n:05d} "),
        st.text(st.sampled_from("0123456789²٣߀"), min_size=1, max_size=6),
        st.just("9" * 5000),
        _timestamps(stamps),
        st.tuples(
            st.sampled_from([*types, "step.*", "*", "job.nope", "[", "llm"]), st.sampled_from(steps)
        ).map(lambda t: ":".join(t) if t[1] else t[0]),
        st.text(max_size=30).filter(lambda s: "\x00" not in s),  # argv cannot carry NUL
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_fuzzed_until_points_show_a_view_or_are_refused_in_one_line(job_db, data):
    db, stamps = job_db
    point = data.draw(points(stamps), label="point")
    as_json = data.draw(st.booleans(), label="json")
    before = db_dump(db)
    result = steplog_here(db, "replay", "job1", "--until", point, *(["--json"] if as_json else []))
    event(f"replay exit {result.code}")
    if result.code != 0:
        assert_refused_in_one_line(result)
    assert db_dump(db) == before, "replay changed the database"


@pytest.mark.parametrize(
    "point, message",
    [
        ("²", "is not an event number"),  # str.isdigit() is true, int() refused it: a traceback
        ("٣", "is not an event number"),  # an Arabic-Indic 3 is not event 3
        ("9" * 5000, "past the end of the job"),  # int() refuses 4300+ digits: was a traceback
        ("0" * 40 + "3", None),  # leading zeros: still event 3
        ("-1", "is not an event number"),
        ("2026-01-01T00:00:00", "has no time zone"),
        ("0001-01-01T00:00:00+14:00", "before the job's first event"),
    ],
)
def test_until_regressions(job_db, point, message):
    db, _ = job_db
    result = steplog_here(db, "replay", "job1", "--until", point)
    if message is None:
        assert result.code == 0, result.err
        assert result.out == steplog_here(db, "replay", "job1", "--until", point.lstrip("0")).out
        return
    assert_refused_in_one_line(result, mentions=message)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_fuzzed_forks_create_a_job_or_are_refused_without_a_trace(job_db, data):
    source, stamps = job_db
    point = data.draw(
        st.one_of(st.integers(-2, 60).map(str), st.integers(1, 26).map(str), points(stamps)),
        label="point",
    )
    new_job = data.draw(
        st.one_of(
            st.sampled_from(["fork1"] * 6 + ["job1", "x" * 65, "a b", ""]),
            st.text(max_size=10).filter(lambda s: "\x00" not in s),
        ),
        label="new job",
    )
    with tempfile.TemporaryDirectory(prefix="steplog-fuzz-") as tmp:
        db = copy_db(source, Path(tmp) / "f.db")
        before = db_dump(db)
        result = steplog_here(
            db,
            "replay",
            "job1",
            "--until",
            point,
            "--fork",
            new_job,
            "--workspace",
            str(Path(tmp) / "ws"),
        )
        event(f"fork exit {result.code}")
        if result.code == 0:
            assert steplog_here(db, "status", new_job, "--json").code == 0
            return
        assert_refused_in_one_line(result)
        assert db_dump(db) == before


@pytest.mark.slow
def test_the_real_cli_names_bad_points_in_one_line(job_db, tmp_path):
    """A few of the above through the console script in a subprocess."""
    db = copy_db(job_db[0], tmp_path / "c.db")
    before = db_dump(db)
    for point, message in (("²", "not an event number"), ("9" * 5000, "past the end")):
        result = steplog(db, "replay", "job1", "--until", point)
        assert result.code == 2 and message in result.err, result.err
        assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert db_dump(db) == before
