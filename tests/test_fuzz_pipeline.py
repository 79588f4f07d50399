"""Fuzzed pipeline files and --input values: `steplog plan` and `steplog run` (offline provider)
either succeed or exit 2 with one line naming the problem (for `run` also exit 1: the job ran
and a step failed, e.g. a template refused while rendering); never a traceback; a refused
command leaves the database as it was, and `plan` never changes it.

Documents are built as dicts (random structure, names, cycles, unknown keys, wrong types,
template injection and resource bombs) and written by the small TOML writer below, sometimes
cut short or spoiled with bytes that are not UTF-8.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from steplog.executor.limits import MAX_RENDERED_CHARS
from steplog.executor.pipeline import PipelineError, parse_pipeline
from steplog.executor.templates import TemplateProblem, check_template, render
from tests.cli_inprocess import assert_refused_in_one_line, steplog_here
from tests.cli_process import steplog
from tests.on_disk import ROOT, copy_db, db_dump

# A failing example may be a large document: hypothesis warns that its repr is large while
# reporting it, and with warnings as errors that warning would hide the failure.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# -- a small TOML writer (no TOML writer is installed) ----------------------------------------


def toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def toml_document(doc: dict[str, Any]) -> str:
    """Top-level scalars first, then one [table] per dict; dicts of dicts get [a."b"] tables,
    so line numbers in error messages point into real sections."""
    lines = [
        f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)
    ]
    for key, table in doc.items():
        if not isinstance(table, dict):
            continue
        if table and all(isinstance(v, dict) for v in table.values()):
            for sub, body in table.items():
                lines.append(f"\n[{toml_string(key)}.{toml_string(sub)}]")
                lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in body.items()]
        else:
            lines.append(f"\n[{toml_string(key)}]")
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# -- strategies ---------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
# Hypothesis favours small integers and first branches; a weighted coin keeps most documents
# plausible (so they get as far as running) while every kind of spoiling still occurs.
RARELY = st.sampled_from([False] * 7 + [True])
VALID_NAMES = st.sampled_from(["a", "b", "c", "build_2", "x-y", "x" * 64])
ODD_NAMES = st.one_of(
    st.sampled_from(["", ".", "a.b", "é", "名前", "a b", "-a", "1a", "_", "x" * 65]), TEXT
)
JUNK = st.recursive(  # TOML has no null
    st.one_of(st.booleans(), st.integers(), st.floats(), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)

INJECTION = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ self }}",
    "{{ config }}",
    "{{ lipsum.__globals__ }}",
    "{{ range(10**9)|list }}",
    "{{ inputs.x.__class__ }}",
    "{{ inputs['__class__'] }}",
    "{{ steps.a.output.__init__ }}",
]
BOMBS = [
    "{{ 'a' * 10**10 }}",
    "{{ [1] * 10**9 }}",
    "{{ 'x'|center(10**9) }}",
    "{{ 'a'|indent(10**9) }}",
    "{{ 9**(9**9) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ ('a' * 10**6)|replace('a', 'a' * 10**6) }}",
    "{{ inputs.x * 10**9 }}",
]
HOLES = st.sampled_from(["{{ inputs.x }}", "{{ steps.a.output }}", "{{ steps.b.output }}"])
PIECES = st.one_of(
    TEXT,
    HOLES,
    HOLES,
    st.sampled_from(
        [
            "{{ inputs.x }}",
            "{{ inputs.nope }}",
            "{{ steps.a.output }}",
            "{{ steps.b.files }}",
            "{{ steps.a.nope }}",
            "{{ steps[inputs.x].output }}",
            "{% if inputs.x %}y{% endif %}",
            "{{",
            "}}",
            "{%",
            "{% endfor %}",
            "{#",
            "{{ inputs.x | upper }}",
            "{{ 10 // 0 }}",
            "{{ inputs.x ~ inputs.x }}",
            "{% set v = inputs.x %}{{ v * 3 }}",
            "\x00",
            "\r\n",
            "{{ (inputs.x * 100)|length }}",
            "{{ 'é' * 5 }}",
        ]
    ),
    st.sampled_from(INJECTION),
    st.sampled_from(BOMBS),
)
TEMPLATES = st.one_of(
    st.lists(st.one_of(TEXT, HOLES), max_size=4), st.lists(PIECES, max_size=4)
).map("".join)


@st.composite
def step_specs(draw: st.DrawFn, name: str, names: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": "missing" if draw(RARELY) else "local",
        "prompt": draw(TEMPLATES),
    }
    earlier = names[: names.index(name)]
    if draw(st.booleans()):  # every earlier step: a valid DAG in which templates may read them
        spec["needs"] = earlier
    elif draw(st.booleans()):  # any steps: self-loops, cycles, sometimes an unknown name
        pool = [*names, "ghost"] if draw(RARELY) else names
        spec["needs"] = draw(st.lists(st.sampled_from(pool), max_size=3))
    if draw(st.booleans()):
        spec["system"] = draw(TEMPLATES)
    if draw(st.booleans()):
        spec["output"] = draw(st.sampled_from(["text", "json", "files", "text", "yaml"]))
    if draw(RARELY):  # a wrong type or an unknown key
        spec[draw(st.sampled_from(["prompt", "needs", "provider", "tmperature", "options"]))] = (
            draw(JUNK)
        )
    return spec


@st.composite
def pipelines(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(VALID_NAMES, min_size=1, max_size=4, unique=True))
    if draw(RARELY):
        names.append(draw(ODD_NAMES.filter(lambda n: n not in names)))
    doc: dict[str, Any] = {"name": draw(TEXT) if draw(RARELY) else "fuzz"}
    if not draw(RARELY):
        doc["inputs"] = {"x": {"default": draw(TEXT)}}
    doc["providers"] = {"local": {"kind": "offline", "model": "m"}}
    if draw(RARELY):
        doc["providers"]["local"] = draw(st.dictionaries(TEXT, JUNK, max_size=3))
    doc["steps"] = {name: draw(step_specs(name, names)) for name in names}
    if draw(RARELY):
        doc[draw(TEXT)] = draw(JUNK)  # an unknown top-level key (or a known one, wrong type)
    return doc


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    text = toml_document(draw(pipelines())).encode("utf-8")
    spoil = draw(st.sampled_from(["none"] * 8 + ["cut", "bytes"]))
    if spoil == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif spoil == "bytes":  # bytes that are not UTF-8, or random bytes in the middle
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    return text


# -- the harness --------------------------------------------------------------------------------

GOOD = """\
name = "seed"
[inputs.x]
default = "hello"
[providers.local]
kind = "offline"
model = "m"
[steps.a]
provider = "local"
prompt = "say {{ inputs.x }}"
"""


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory) -> Path:
    """A database that already holds a succeeded job: refusals must leave it exactly so."""
    tmp = tmp_path_factory.mktemp("seed")
    (tmp / "p.toml").write_text(GOOD)
    db = tmp / "seed.db"
    result = steplog_here(
        db, "run", str(tmp / "p.toml"), "--job-id", "seed", "--workspace", str(tmp / "ws"), "-q"
    )
    assert result.code == 0, result.err
    return db


def check_command(db: Path, args: list[str], *, may_fail_job: bool) -> None:
    """The rule for every fuzzed command: 0, or 2 with one line and the database unchanged;
    1 only for `run` of a job that started and failed (a step's answer or render failed)."""
    before = db_dump(db)
    result = steplog_here(db, *args)
    event(f"{args[0]} exit {result.code}")
    if result.code == 0:
        return
    if result.code == 1 and may_fail_job:
        assert "failed" in result.err and result.err.count("\n") == 1, result.err[:500]
        return
    assert_refused_in_one_line(result)
    assert db_dump(db) == before, f"refused ({result.err.strip()}) but the database changed"


RUN_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@RUN_SETTINGS
@given(documents())
@example(
    toml_document(
        {
            "name": "c",
            "providers": {"local": {"kind": "offline"}},
            "steps": {"a": {"provider": "local", "prompt": "p", "needs": ["a"]}},
        }
    ).encode()
)
@example(b'name = "x"\n[steps.a]\nprompt = "\xff"\n')
@example(b"[steps\n")
def test_fuzzed_pipeline_files_plan_and_run_or_are_refused_in_one_line(seeded_db, document):
    with tempfile.TemporaryDirectory(prefix="steplog-fuzz-") as tmp:
        db = copy_db(seeded_db, Path(tmp) / "t.db")
        path = Path(tmp) / "pipeline.toml"
        path.write_bytes(document)
        before = db_dump(db)
        plan = steplog_here(db, "plan", str(path))
        if plan.code == 1:  # a prediction of failure: said in the plan, not as an error
            assert " will fail" in plan.out or " would be refused: " in plan.out, plan.out
            assert plan.err == "", plan.err
        elif plan.code != 0:
            assert_refused_in_one_line(plan)
        assert db_dump(db) == before, "plan changed the database"
        check_command(
            db, ["run", str(path), "--workspace", str(Path(tmp) / "ws"), "-q"], may_fail_job=True
        )


def _one_step(template: str) -> str:
    return toml_document(
        {
            "name": "bomb",
            "inputs": {"x": {"default": "hello"}},
            "providers": {"local": {"kind": "offline", "model": "m"}},
            "steps": {"a": {"provider": "local", "prompt": template}},
        }
    )


@pytest.mark.parametrize("template", INJECTION)
def test_injection_is_refused_when_the_pipeline_loads(seeded_db, tmp_path, template):
    """Private names and names other than inputs/steps: `run` and `plan` exit 2, nothing written."""
    db = copy_db(seeded_db, tmp_path / "t.db")
    path = tmp_path / "p.toml"
    path.write_text(_one_step(template))
    before = db_dump(db)
    for args in (["plan", str(path)], ["run", str(path), "--workspace", str(tmp_path / "w"), "-q"]):
        assert_refused_in_one_line(steplog_here(db, *args))
    assert db_dump(db) == before


@pytest.mark.parametrize("template", BOMBS)
def test_resource_bombs_fail_their_step_refused_by_the_sandbox(seeded_db, tmp_path, template):
    """Found only when rendering: the step fails with the sandbox's refusal (a render error,
    exit 1, as tests/test_step_outcomes.py fixes for any template error), never a MemoryError,
    and `plan` predicts it (exit 1) without writing anything."""
    db = copy_db(seeded_db, tmp_path / "t.db")
    path = tmp_path / "p.toml"
    path.write_text(_one_step(template))
    before = db_dump(db)
    plan = steplog_here(db, "plan", str(path), "--json")
    assert plan.code == 1, plan.err  # it predicts a failure
    (step,) = json.loads(plan.out)["steps"]
    assert step["action"] == "fail" and "refused by the template sandbox" in step["reason"]
    assert db_dump(db) == before
    result = steplog_here(
        db, "run", str(path), "--job-id", "b", "--workspace", str(tmp_path / "w"), "-q"
    )
    assert result.code == 1 and result.err.count("\n") == 1, result.err
    assert "refused by the template sandbox" in result.err and "MemoryError" not in result.err


def test_a_prompt_of_over_a_megabyte_runs(seeded_db, tmp_path):
    db = copy_db(seeded_db, tmp_path / "t.db")
    big = "word é 名 " * 150_000  # about 1.6 MB of UTF-8
    doc = {
        "name": "big",
        "inputs": {"x": {"default": "hello"}},
        "providers": {"local": {"kind": "offline", "model": "m"}},
        "steps": {"a": {"provider": "local", "prompt": big + "{{ inputs.x }}"}},
    }
    path = tmp_path / "p.toml"
    path.write_text(toml_document(doc))
    assert len(path.read_bytes()) > 1_000_000
    assert steplog_here(db, "plan", str(path)).code == 0
    result = steplog_here(db, "run", str(path), "--workspace", str(tmp_path / "ws"), "-q")
    assert result.code == 0, result.err


# -- --input values -----------------------------------------------------------------------------

INPUT_TEXT = st.text(st.characters(), max_size=30)  # surrogates included: non-UTF-8 argv


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["x", " x ", "x "]), INPUT_TEXT).map("=".join),
            st.tuples(INPUT_TEXT, INPUT_TEXT).map("=".join),
            INPUT_TEXT,
            st.just("x=" + "v=" * 20_000),
        ),
        max_size=3,
    ),
    st.sampled_from(["plan", "run"]),
)
@example(["x=\udcff"], "run")
@example(["x=a\x00b"], "run")
@example(["=v"], "plan")
@example(["x=1", "x=2"], "run")
def test_fuzzed_input_values_succeed_or_are_refused_in_one_line(seeded_db, given_inputs, verb):
    with tempfile.TemporaryDirectory(prefix="steplog-fuzz-") as tmp:
        db = copy_db(seeded_db, Path(tmp) / "t.db")
        path = Path(tmp) / "p.toml"
        path.write_text(GOOD)
        args = [verb, str(path)]
        for item in given_inputs:
            args += ["--input", item]
        if verb == "run":
            args += ["--workspace", str(Path(tmp) / "ws"), "-q"]
        check_command(db, args, may_fail_job=False)


@pytest.mark.slow
def test_arguments_that_are_not_utf8_are_refused_by_the_real_cli(seeded_db, tmp_path):
    """The console script, in a subprocess: bytes that are not UTF-8 reach Python as lone
    surrogates (surrogateescape); they are refused in one line before anything is opened."""
    db = copy_db(seeded_db, tmp_path / "t.db")
    (tmp_path / "p.toml").write_text(GOOD)
    before = db_dump(db)
    for args in (
        ["run", "p.toml", "--input", "x=caf\udce9", "-q"],
        ["status", "\udcff"],
        ["replay", "seed", "--until", "step.\udcff"],
        ["run", "p.toml", "--workspace", "w\udcffs", "-q"],
    ):
        result = steplog(db, *args)
        assert result.code == 2, result.err
        assert "is not valid UTF-8" in result.err and result.err.count("\n") == 1, result.err
    assert db_dump(db) == before


# -- the sandbox's size limits, in a process with a memory ceiling ---------------------------

BOMB_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))
    from hypothesis import given, settings, strategies as st
    from steplog.executor.limits import MAX_RENDERED_CHARS
    from steplog.executor.templates import TemplateProblem, render

    CONTEXT = {"inputs": {"x": "ab\\tc\\n" * 1000}, "steps": {"a": {"output": "o" * 100000}}}

    def attempt(source):
        try:
            text = render(source, CONTEXT, where="t")
        except TemplateProblem as exc:
            # a refusal by the sandbox, not a MemoryError/OverflowError that happened to be caught
            assert "MemoryError" not in str(exc) and "OverflowError" not in str(exc), (source, exc)
            return
        assert len(text) <= MAX_RENDERED_CHARS, (source, len(text))

    for source in sys.argv[1:]:
        attempt(source)

    BASES = ["'ab'", "inputs.x", "steps.a.output", "[1, 2]", "7", "('x'|center(4000000))"]
    OPS = ["{b} * {n}", "{n} * {b}", "{b} ** {n}", "{b} + {b}", "{b} ~ {b}", "{b}|center({n})",
           "{b}|indent({n})", "{b}|replace('a', {b})", "{b}|join({b})", "'%{n}d' % 1",
           "'{{:>{n}}}'.format({b})", "{b}|wordwrap(1)", "({b}|string).expandtabs({n})",
           "({b}|string).replace('', {b}|string)", "({b}|string).ljust({n})"]

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(BASES),
                              st.sampled_from(["3", "10**6", "10**7", "10**9", "10**12"])),
                    min_size=1, max_size=3))
    def compositions(chain):
        expr = "inputs.x"
        for op, base, n in chain:
            expr = "(" + op.format(b=expr if base == "inputs.x" else base, n=n) + ")"
        attempt("{{ " + expr + " }}")
        attempt("{% for i in [1,2,3,4,5,6,7,8] %}{{ " + expr + " }}{% endfor %}")

    compositions()
    print("ok")
    """
)


@pytest.mark.slow
def test_template_resource_bombs_are_refused_under_a_memory_ceiling():
    """Rendered in a child process limited to 1.5 GB of address space and 120 s: every bomb is
    refused by the sandbox (or renders within the limit); none runs the child out of memory."""
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, *INJECTION[:1], *BOMBS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# -- pure checks (fast, many examples) ----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(TEMPLATES)
def test_check_and_render_raise_only_template_problems(source):
    """Load-time check, then a render on known inputs: a TemplateProblem or text within the
    limit, never another exception (parse_pipeline turns TemplateProblem into PipelineError)."""
    try:
        check_template(source, where="t", inputs={"x"})
    except TemplateProblem:
        return
    context = {
        "inputs": {"x": "v"},
        "steps": {"a": {"output": "o", "files": {}}, "b": {"output": "o", "files": {}}},
    }
    try:
        text = render(source, context, where="t")
    except TemplateProblem:
        return
    assert len(text) <= MAX_RENDERED_CHARS


def test_private_names_are_refused_when_the_pipeline_loads():
    for template in (
        "{{ inputs.x.__class__ }}",
        "{{ inputs['_x'] }}",
        "{% if inputs.x._y %}{% endif %}",
    ):
        doc = {
            "name": "p",
            "inputs": {"x": {"default": "v"}},
            "providers": {"local": {"kind": "offline"}},
            "steps": {"a": {"provider": "local", "prompt": template}},
        }
        with pytest.raises(PipelineError, match="names starting with _ are refused"):
            parse_pipeline(toml_document(doc), "p.toml")


def _toml_outcome(loads: Any, text: str) -> tuple[str, Any]:
    try:
        return "parsed", loads(text)
    except ValueError as exc:  # TOMLDecodeError (both modules') is a ValueError
        return type(exc).__name__, str(exc)


# Spoiled TOML: the documents' text with pieces of TOML syntax and raw characters spliced in
TOML_PIECES = st.sampled_from(
    [
        "[",
        "]",
        "=",
        '"',
        "'",
        '"""',
        "\\",
        "\n",
        ",",
        "{",
        "}",
        ".",
        "#",
        "1979-05-27",
        "inf",
        "\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(documents(), st.lists(st.tuples(st.integers(0, 10**6), TOML_PIECES | TEXT), max_size=4))
def test_the_pipeline_parser_reads_what_tomllib_reads_the_same_way(document, splices):
    """parse_pipeline uses tomli (tomllib's parser, compiled), which reads TOML 1.1: every file
    the standard library reads (TOML 1.0) means the same to it (so whatever tomli refuses,
    tomllib refuses too). Only 1.1's additions parse where tomllib refused them, and refusals
    may be worded differently where the two grammars part."""
    import tomllib

    import tomli

    text = document.decode("utf-8", errors="replace")
    for at, piece in splices:
        at %= len(text) + 1
        text = text[:at] + piece + text[at:]
    ours, stdlib = _toml_outcome(tomli.loads, text), _toml_outcome(tomllib.loads, text)
    if stdlib[0] == "parsed":  # nan != nan: compare the values' JSON
        assert ours[0] == "parsed"
        assert json.dumps(ours[1], default=str) == json.dumps(stdlib[1], default=str)
    event(f"tomli {ours[0]}, tomllib {stdlib[0]}")


@settings(max_examples=600, deadline=None)
@given(documents())
def test_a_snapshot_gives_back_the_pipeline_it_was_taken_of(document):
    """resume trusts the snapshot of an unchanged file instead of validating it again: what it
    rebuilds must equal what parse_pipeline made (spec, references, fingerprints, order)."""
    try:
        p = parse_pipeline(document.decode("utf-8"), "p.toml")
    except (PipelineError, UnicodeDecodeError):
        event("refused")
        return
    snapshot = p.snapshot()
    assert json.loads(snapshot)["spec"] == p.spec.model_dump(mode="json")
    q = type(p).from_snapshot(snapshot, p.source, p.path)
    assert q is not None and q.spec == p.spec and q.references == p.references
    assert (q.fingerprint, q.step_fingerprints, q.order) == (
        p.fingerprint,
        p.step_fingerprints,
        p.order,
    )
    event("parsed")


def test_the_toml_writer_round_trips():
    import tomllib

    doc = {"name": 'a"b\\c\x00\n', "n": 3, "f": 1.5, "l": [1, "x"], "t": {"k": {"v": True}}}
    assert tomllib.loads(toml_document(doc)) == doc
    assert json.dumps(doc)  # plain data


@pytest.mark.parametrize(
    "template, expected",
    [
        ("{{ '%d' % 123456789012 }}", "123456789012"),  # a value, not a width
        ("{{ '{}'.format(10**10) }}", "10000000000"),
        ("{{ (10**10)|string }}", "10000000000"),
        ("{{ (2**64)|filesizeformat }}", "18.4 EB"),
        ("{{ 'ab' * 3 }}|{{ [1, 2]|join('-') }}|{{ 'x'|center(5) }}", "ababab|1-2|  x  "),
        ("{{ (inputs.x ~ inputs.x)|length }}", str(2 * 4_000_000)),  # big, within the limit
    ],
)
def test_the_limits_refuse_sizes_not_values(template, expected):
    context = {"inputs": {"x": "é" * 4_000_000}, "steps": {}}
    assert render(template, context, where="t") == expected
