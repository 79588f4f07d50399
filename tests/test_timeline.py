"""`steplog timeline`: the picture of a real job, checked by parsing the SVG it writes."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from steplog.commands.timeline import build
from steplog.commands.timeline_svg import (
    COLORS,
    GAP_W,
    Layout,
    axis_ticks,
    idle_gaps,
    place_labels,
    render_svg,
)
from steplog.eventstore.events import (
    JobCreated,
    JobInterrupted,
    JobResumed,
    JobStarted,
    NewEvent,
    Owner,
    StepStarted,
    StepSucceeded,
)
from tests.cli_process import steplog
from tests.on_disk import db_rows, event_count
from tests.rich_job import NEEDS, RICH_JOB, STEPS, make_rich_job

SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def rich_db(tmp_path_factory, module_fake_llm_factory) -> Path:
    return make_rich_job(tmp_path_factory.mktemp("timeline"), module_fake_llm_factory())


def _classes(el: ET.Element) -> list[str]:
    return (el.get("class") or "").split()


def _groups(root: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG_NS}g") if cls in _classes(g)]


def _expected_bars(db: Path, job: str) -> list[tuple[str, str]]:
    """(step, outcome) per attempt, straight from the log with SQL (not the code under test)."""
    rows = db_rows(
        db,
        "SELECT type, step, data FROM events WHERE job_id = ? AND type IN"
        " ('step.started', 'step.succeeded', 'step.failed', 'step.skipped') ORDER BY version",
        (job,),
    )
    bars: list[list[str]] = []
    open_: dict[str, list[str]] = {}
    for type_, step, data in rows:
        if type_ == "step.started":
            open_[step] = [step, "running"]
            bars.append(open_[step])
        elif type_ == "step.skipped":
            bars.append([step, "skipped"])
        else:
            bar = open_.pop(step)
            if type_ == "step.failed":
                bar[1] = "failed"
            else:
                bar[1] = "cached" if json.loads(data)["cache_hit"] else "succeeded"
    return sorted((s, o) for s, o in bars)


@pytest.mark.slow
def test_timeline_of_a_real_job_has_one_bar_per_attempt_edges_markers_and_an_axis(
    rich_db, tmp_path
):
    out = tmp_path / "pic.svg"
    result = steplog(rich_db, "timeline", RICH_JOB, "--output", str(out))
    assert result.code == 0, result.err
    root = ET.fromstring(out.read_text())
    assert root.tag == f"{SVG_NS}svg"
    bars = _groups(root, "bar")
    got = sorted((g.get("data-step"), _classes(g)[1]) for g in bars)
    assert got == _expected_bars(rich_db, RICH_JOB)
    # every kind of bar is there: the cache hit, the failure, the retried success, the skips
    assert {o for _, o in got} == {"cached", "succeeded", "failed", "skipped"}
    for g in bars:
        rect = g.find(f"{SVG_NS}rect")
        assert rect is not None and rect.get("fill") == COLORS[_classes(g)[1]]
        assert g.find(f"{SVG_NS}title").text.startswith(g.get("data-step"))
    # retries and failed LLM calls are marked inside the bars they belong to
    marks = {
        (g.get("data-step"), g.get("data-attempt")): sorted(
            _classes(p)[1] for p in g.iter(f"{SVG_NS}path") if "mark" in _classes(p)
        )
        for g in bars
    }
    retries = db_rows(
        rich_db,
        "SELECT step, count(*) FROM events WHERE job_id = ? AND type = 'step.retrying'"
        " GROUP BY step",
        (RICH_JOB,),
    )
    assert dict(retries) == {"research": 2, "draft": 1}
    assert marks[("research", "1")] == ["llm-failed"] * 2 + ["retry"] * 2
    assert marks[("draft", "1")] == ["llm-failed"] * 2 + ["retry"]
    assert marks[("draft", "2")] == []
    # dependencies: one edge per (need -> step) of job.created's steps map
    edges = {
        (p.get("data-from"), p.get("data-to"))
        for p in root.iter(f"{SVG_NS}path")
        if "dep" in _classes(p) and p.get("data-from")
    }
    assert edges == {(need, step) for step, needs in NEEDS.items() for need in needs}
    # the failure and the resume are vertical markers
    assert sorted(_classes(g)[1] for g in _groups(root, "marker")) == ["failed", "resumed"]
    # an axis with increasing ticks, step names on the left, a legend, a title
    # (an axis break's length label is styled as a tick but sits at the break, out of order:
    # the rich job has one when a slow machine leaves 2 s idle, e.g. before the resume)
    in_breaks = {id(t) for g in _groups(root, "gap") for t in g.iter(f"{SVG_NS}text")}
    ticks = [
        t for t in root.iter(f"{SVG_NS}text") if "tick" in _classes(t) and id(t) not in in_breaks
    ]
    assert len(ticks) >= 3
    xs = [float(t.get("x")) for t in ticks]
    assert xs == sorted(xs)
    labels = [t.get("data-step") for t in root.iter(f"{SVG_NS}text") if "label" in _classes(t)]
    assert labels == STEPS
    legend = {g.get("data-kind") for g in _groups(root, "legend-item")}
    assert {"bar", "retry", "llm-failed", "dep", "marker"} <= legend
    title = " ".join(t.text or "" for t in _groups(root, "title")[0].iter(f"{SVG_NS}text"))
    assert RICH_JOB in title and "newsroom" in title and "status succeeded" in title
    assert "duration" in title


@pytest.mark.slow
def test_html_has_the_svg_inline_a_table_and_nothing_external(rich_db, tmp_path):
    out = tmp_path / "pic.html"
    assert steplog(rich_db, "timeline", RICH_JOB, "-o", str(out)).code == 0
    html = out.read_text()
    assert html.count("<svg") == 1 and html.count("<tr title=") == len(STEPS)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"\b(src|href)=", html)
    assert re.findall(r"url\(([^)]*)\)", html) and all(
        u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", html)
    )  # only the picture's own patterns and markers


@pytest.mark.slow
def test_default_output_and_bad_requests(rich_db, tmp_path):
    cwd = tmp_path / "here"
    cwd.mkdir()
    result = steplog(rich_db, "timeline", RICH_JOB, cwd=cwd)
    assert result.code == 0, result.err
    # beside the job's workspace (it ran in the database's directory), not under this cwd
    beside = rich_db.parent / "runs" / f"{RICH_JOB}.timeline.svg"
    assert beside.exists() and not (cwd / "runs").exists()
    printed = steplog(rich_db, "timeline", RICH_JOB, "-o", "-")
    assert printed.out == beside.read_text()
    before = event_count(rich_db)
    for args in (["nope"], [RICH_JOB, "-o", str(tmp_path / "x.png")], [RICH_JOB, "--width", "0"]):
        bad = steplog(rich_db, "timeline", *args)
        assert bad.code == 2 and bad.err.startswith("error: ") and bad.err.count("\n") == 1
    assert event_count(rich_db) == before


def _job(store, events: list[NewEvent], job: str = "j") -> None:
    store.append(job, events, expected_version=0)


def _ev(data, step=None, ts="2026-01-01T00:00:00Z"):
    return NewEvent(type=data.TYPE, data=data, step=step, level=data.LEVEL, ts=ts)


OWNER = Owner(pid=1, host="h", started="1")
CREATED = JobCreated(
    pipeline="p",
    pipeline_fingerprint="f",
    pipeline_sha256="0" * 64,
    steps={"a": [], "b": ["a"]},
    workspace="w",
)


def test_interrupted_crashed_and_running_attempts(store):
    ok = StepSucceeded(
        output_sha256="0" * 64,
        output="text",
        cache_hit=False,
        cache_key="k",
        duration_s=1,
        fingerprint="f",
    )
    _job(
        store,
        [
            _ev(CREATED),
            _ev(JobStarted(owner=OWNER), ts="2026-01-01T00:00:01Z"),
            _ev(StepStarted(attempt=1, fingerprint="f"), "a", "2026-01-01T00:00:02Z"),
            _ev(JobInterrupted(signal="SIGINT"), ts="2026-01-01T00:00:03Z"),
            _ev(JobResumed(owner=OWNER, pipeline_fingerprint="f"), ts="2026-01-01T00:00:04Z"),
            _ev(StepStarted(attempt=2, fingerprint="f"), "a", "2026-01-01T00:00:05Z"),
            _ev(ok, "a", "2026-01-01T00:00:06Z"),
            _ev(StepStarted(attempt=1, fingerprint="f"), "b", "2026-01-01T00:00:07Z"),
            # the process dies here; a second resume finds b started and never ended
            _ev(JobResumed(owner=OWNER, pipeline_fingerprint="f"), ts="2026-01-01T00:00:09Z"),
            _ev(StepStarted(attempt=2, fingerprint="f"), "b", "2026-01-01T00:00:10Z"),
        ],
    )
    tl = build("j", store.read_job("j"))
    assert [(b.step, b.attempt, b.outcome, b.start, b.end) for b in tl.bars] == [
        ("a", 1, "interrupted", 2, 3),
        ("a", 2, "succeeded", 5, 6),
        ("b", 1, "interrupted", 7, 7),
        ("b", 2, "running", 10, 10),
    ]
    assert [(m.kind, m.t) for m in tl.markers] == [
        ("interrupted", 3),
        ("resumed", 4),
        ("crashed", 7),
        ("resumed", 9),
    ]
    root = ET.fromstring(render_svg(tl))
    assert sorted(_classes(g)[1] for g in _groups(root, "bar")) == [
        "interrupted",
        "interrupted",
        "running",
        "succeeded",
    ]
    assert {
        (p.get("data-from"), p.get("data-to"))
        for p in root.iter(f"{SVG_NS}path")
        if p.get("data-from")
    } == {("a", "b")}


def test_forty_steps_fit_one_row_each_with_labels_apart(store):
    names = [f"step_{i:02d}_{'x' * (i % 7)}" for i in range(40)]
    created = JobCreated(
        pipeline="big",
        pipeline_fingerprint="f",
        pipeline_sha256="0" * 64,
        steps={n: names[max(0, i - 3) : i][:2] for i, n in enumerate(names)},
        workspace="w",
    )
    events = [_ev(created), _ev(JobStarted(owner=OWNER))]
    for i, name in enumerate(names):
        events.append(
            _ev(StepStarted(attempt=1, fingerprint="f"), name, f"2026-01-01T00:00:{i:02d}Z")
        )
        ok = StepSucceeded(
            output_sha256="0" * 64,
            output="text",
            cache_hit=i % 5 == 0,
            cache_key="k",
            duration_s=1,
            fingerprint="f",
        )
        events.append(_ev(ok, name, f"2026-01-01T00:00:{i + 1:02d}Z"))
    _job(store, events, "big")
    root = ET.fromstring(render_svg(build("big", store.read_job("big"))))
    labels = [t for t in root.iter(f"{SVG_NS}text") if "label" in _classes(t)]
    ys = [float(t.get("y")) for t in labels]
    assert len(labels) == 40 and all(b - a >= 20 for a, b in zip(ys, ys[1:]))
    assert len(_groups(root, "bar")) == 40
    assert int(root.get("height")) > ys[-1]


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.floats(0, 5e4, allow_nan=False), st.floats(0, 600, allow_nan=False)),
        min_size=1,
        max_size=12,
    )
)
@example([(0.0, 5e-324)])  # a denormal span once underflowed the tick step to log10(0)
def test_axis_ticks_increase_stay_inside_and_labels_never_collide(spans):
    busy = [(a, a + d) for a, d in spans]
    span = max(b for _, b in busy)
    lay = Layout(1200, 150, 1160, 100, span, idle_gaps(busy + [(0, 0)], span))
    for a, b in lay.gaps:
        assert lay.x(b) - lay.x(a) == pytest.approx(GAP_W)
    ticks = axis_ticks(lay, 10)
    xs = [t["x"] for t in ticks]
    assert xs == sorted(xs) and xs[0] >= 150 - 1e-6 and xs[-1] <= 1160 + 1e-6
    shown = [t for t in ticks if t["label"]]
    assert shown
    for left, right in zip(shown, shown[1:]):
        assert right["x"] - left["x"] >= len(left["label"]) * 3.5  # half-widths apart


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.floats(150, 1150),
            st.sampled_from(["resumed", "interrupted (SIGINT)", "job failed", "process gone"]),
        ),
        max_size=8,
    )
)
def test_marker_labels_do_not_overlap(items):
    items = sorted(items)
    placed = place_labels(items, 16, 1192)
    boxes = []
    for (_x, text), (lane, lx, anchor) in zip(items, placed):
        w = len(text) * 7.3 * 0.92
        a, b = (lx, lx + w) if anchor == "start" else (lx - w, lx)
        boxes.append((lane, a, b))
    for i, (lane, a, b) in enumerate(boxes):
        for lane2, a2, b2 in boxes[i + 1 :]:
            assert lane != lane2 or b <= a2 or b2 <= a


def test_a_moment_of_work_after_hours_idle_is_squeezed_and_labels_stay_distinct():
    """A fast job failed, then resumed an hour later: the hour is an axis break, the ticks cover
    only the work (a bounded number of them), and a break's edge never repeats a tick label."""
    busy = [(0.0, 0.0), (0.0, 0.64), (3600.0, 3600.05)]
    lay = Layout(1200, 150, 1160, 100, 3600.05, idle_gaps(busy, 3600.05))
    assert lay.gaps == [(0.64, 3600.0)]
    ticks = axis_ticks(lay, 10)
    assert len(ticks) <= 30
    labels = [t["label"] for t in ticks if t["label"]]
    assert len(labels) == len(set(labels)) and len(labels) >= 4
    assert "0:00.6" in labels and "0:00.64" in labels  # the tick, and the break's start
    assert lay.x(0.64) - lay.x(0.0) > 600  # the work gets the width, not the idle hour
