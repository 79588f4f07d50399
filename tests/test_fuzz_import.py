"""Fuzzed `steplog import` files: mutations of a real export and of the predecessor's
events.jsonl (lines dropped, duplicated, swapped; fields of another type; random JSON; bytes
that are not UTF-8; huge numbers, NaN, deep nesting; the file cut short). Each either imports
a job that `status`, `events` and `export` can read, or exits 2 with one line and leaves the
database exactly as it was."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.cli_inprocess import assert_refused_in_one_line, steplog_here
from tests.cli_process import steplog
from tests.on_disk import EXAMPLE, ROOT, copy_db, db_dump

PREDECESSOR = ROOT / "tests" / "fixtures" / "predecessor_events.jsonl"
# A failing example is a whole file: hypothesis warns that its repr is large while reporting it,
# and with warnings as errors that warning would hide the failure behind a "flaky" error.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@dataclass
class Sources:
    db: Path
    files: dict[str, list[str]] = field(repr=False)  # hypothesis prints the arguments of a failure


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Sources:
    """A database holding job1 (the factory example, run offline) and two files to mutate:
    job1's export and the predecessor fixture."""
    tmp = tmp_path_factory.mktemp("import")
    db = tmp / "src.db"
    ran = steplog_here(
        db, "run", str(EXAMPLE), "--job-id", "job1", "--workspace", str(tmp / "w"), "-q"
    )
    assert ran.code == 0, ran.err
    exported = steplog_here(db, "export", "job1")
    assert exported.code == 0, exported.err
    return Sources(
        db,
        {"export": exported.out.splitlines(), "predecessor": PREDECESSOR.read_text().splitlines()},
    )


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(-(2**70), 2**70),
        st.floats(),  # NaN and infinities included: Python's json writes and reads them
        st.text(max_size=12),  # lone surrogates included: written as \\udxxx escapes
        st.sampled_from(["", "job.created", "step.started", "a", "2026-01-01T00:00:00Z"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
RAW_LINES = st.sampled_from(
    [
        "[" * 50_000 + "]" * 50_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        '{"ts": ' + "9" * 5000 + "}",
        '{"ts": 1e999999}',
        "NaN",
        "",
        "   ",
        "{",
        '"just a string"',
    ]
)


def _set_field(obj: dict[str, Any], path: list[str], value: Any) -> None:
    target = obj
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value


@st.composite
def mutated(draw: st.DrawFn, lines: list[str]) -> bytes:
    lines = list(lines)
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(
            st.sampled_from(
                ["drop", "duplicate", "swap", "field", "field", "data", "replace", "raw"]
            )
        )
        if kind == "drop":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind in ("field", "data"):
            try:
                obj = json.loads(lines[i])
            except (ValueError, RecursionError):
                continue  # an earlier mutation made it a raw line
            if not isinstance(obj, dict):
                continue
            if kind == "field":
                key = draw(
                    st.sampled_from(["ts", "level", "job_id", "type", "step", "data", "extra"])
                )
                path = [key]
            else:
                data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
                key = draw(st.sampled_from(sorted(data) + ["new_field"]))
                path = ["data", key]
            _set_field(obj, path, draw(JSON_VALUES))
            lines[i] = json.dumps(obj)
        elif kind == "replace":
            lines[i] = json.dumps(draw(JSON_VALUES))
        else:
            lines[i] = draw(RAW_LINES)
    text = ("\n".join(lines) + "\n").encode("utf-8")
    spoil = draw(st.sampled_from(["none"] * 6 + ["cut", "bytes"]))
    if spoil == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif spoil == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=4)) + text[at:]
    return text


def check_import(db: Path, path: Path, job_id: str | None) -> None:
    before = db_dump(db)
    args = ["import", str(path)] + (["--job-id", job_id] if job_id else [])
    result = steplog_here(db, *args)
    event(f"import exit {result.code}")
    if result.code == 0:
        target = job_id or result.out.split("imported job ")[1].split(" ")[0]
        for verb in (
            ["status", target, "--json"],
            ["events", target, "--json"],
            ["export", target],
        ):
            shown = steplog_here(db, *verb)
            assert shown.code == 0, (verb, shown.err)
        return
    assert_refused_in_one_line(result)
    assert db_dump(db) == before, f"refused ({result.err.strip()}) but the database changed"


IMPORT_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@IMPORT_SETTINGS
@given(st.data())
def test_mutated_exports_import_or_are_refused_in_one_line(sources, data):
    source_db, files = sources.db, sources.files
    kind = data.draw(st.sampled_from(["export", "predecessor"]), label="file")
    content = data.draw(mutated(files[kind]), label="content")
    job_id = data.draw(st.sampled_from(["copy", "copy", None]), label="job id")
    with tempfile.TemporaryDirectory(prefix="steplog-fuzz-") as tmp:
        db = copy_db(source_db, Path(tmp) / "t.db")
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(content)
        check_import(db, path, job_id)


REGRESSIONS = {
    # json.loads raised RecursionError / ValueError (not JSONDecodeError): tracebacks
    "deep list": ("[" * 100_000, "nested too deeply"),
    "deep object": ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    "5000-digit integer": ('{"ts": ' + "9" * 5000 + "}", "not usable JSON"),
    # the predecessor's step time, one timestamp with a zone and one without: a TypeError
    "naive timestamp": (
        '{"ts":"2026-01-01T00:00:00Z","level":"INFO","job_id":"p","type":"step.started","step":"a"}\n'
        '{"ts":"2026-01-01T00:00:01","level":"INFO","job_id":"p","type":"step.succeeded","step":"a"}',
        "line 2: step.succeeded: ts",
    ),
    # a lone surrogate (a \ud800 escape) cannot be stored as UTF-8: refused with its line
    "surrogate": (
        '{"ts":"2026-01-01T00:00:00Z","level":"INFO","job_id":"p","type":"step.started","step":"a"}\n'
        '{"ts":"2026-01-01T00:00:01Z","level":"ERROR","job_id":"p","type":"step.failed",'
        '"step":"a","data":{"error":"\\ud800"}}',
        "line 2: step.failed: data holds text that is not valid UTF-8",
    ),
    # a predecessor line whose ts is not a string reached the step-time arithmetic: a traceback
    "ts null": (
        '{"ts":"2026-01-01T00:00:00Z","level":"INFO","job_id":"p","type":"step.started","step":"a"}\n'
        '{"ts":null,"level":"INFO","job_id":"p","type":"step.succeeded","step":"a"}',
        "line 2: ts must be a string",
    ),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_import_regressions(sources, tmp_path, name):
    text, message = REGRESSIONS[name]
    db = copy_db(sources.db, tmp_path / "t.db")
    path = tmp_path / "in.jsonl"
    path.write_text(text + "\n")
    before = db_dump(db)
    assert_refused_in_one_line(steplog_here(db, "import", str(path)), mentions=message)
    assert db_dump(db) == before


@pytest.mark.slow
def test_the_real_cli_refuses_a_deeply_nested_line_in_one_line(sources, tmp_path):
    db = copy_db(sources.db, tmp_path / "t.db")
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "\n")
    before = db_dump(db)
    result = steplog(db, "import", str(path))
    assert result.code == 2 and "line 1: not usable JSON" in result.err, result.err
    assert result.err.count("\n") == 1
    assert db_dump(db) == before
