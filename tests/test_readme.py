"""The README is the manual: its SQL recipes run on a database made by real pipeline runs and
return what they should, and every verb is documented."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections import Counter, defaultdict
from typing import Any, Callable

import click
import pytest

from steplog.commands.cli import cli
from tests.audit_fixture import Event, build_audit_db, raw_events
from tests.on_disk import ROOT

README = (ROOT / "README.md").read_text()


def sql_recipes() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", README, re.DOTALL)
    statements: list[str] = []
    for block in blocks:
        current = ""
        for line in block.splitlines(keepends=True):
            current += line
            if sqlite3.complete_statement(current):
                statements.append(current.strip())
                current = ""
    return statements


def title(statement: str) -> str:
    return statement.splitlines()[0].removeprefix("--").strip()


class Fixture:
    def __init__(self, root) -> None:
        self.root = root
        self.db = build_audit_db(root)
        self.events = raw_events(self.db)

    def of(self, type_: str, job: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type == type_ and (job is None or e.job_id == job)]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Fixture:
    return Fixture(tmp_path_factory.mktemp("readme"))


# -- what each recipe must answer, computed from the raw events, not from the views ------------


def _model_jobs(fx: Fixture, rows: list[tuple]) -> None:
    assert rows == [("first",)]  # `second` called only offline-flaky; its other steps were hits
    wanted = sorted({e.job_id for e in fx.of("llm.request") if e.data["model"] == "offline-1"})
    assert [r[0] for r in rows] == wanted


def _tokens_per_step(fx: Fixture, rows: list[tuple]) -> None:
    calls = Counter(e.step for e in fx.of("llm.request"))
    tin, tout = defaultdict(int), defaultdict(int)
    for e in fx.of("llm.response"):
        tin[e.step] += e.data["tokens_in"]
        tout[e.step] += e.data["tokens_out"]
    assert {r[0]: r[1:] for r in rows} == {
        s: (calls[s], tin[s], tout[s], tin[s] + tout[s]) for s in calls
    }
    assert calls["flaky"] == 5 and [r[4] for r in rows] == sorted(
        (r[4] for r in rows), reverse=True
    )


def _files(fx: Fixture, rows: list[tuple]) -> None:
    assert [r[1] for r in rows] == ["app.py", "tests/test_app.py", "README.md"]
    for step, path, sha, wrote, reason, size in rows:
        content = (fx.root / "runs" / "first" / path).read_bytes()
        assert (step, sha, wrote, reason, size) == (
            "builder",
            hashlib.sha256(content).hexdigest(),
            1,
            "created",
            len(content),
        )


def _failed_steps(fx: Fixture, rows: list[tuple]) -> None:
    failed = fx.of("step.failed")
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        (e.job_id, e.step, e.data["attempt"], e.ts, e.data["error_type"], e.data["error"])
        for e in failed
    ]
    assert [(r[0], r[1], r[4]) for r in rows] == [
        ("first", "flaky", "unavailable"),
        ("second", "flaky", "unavailable"),
    ]
    assert all("told to fail" in r[5] for r in rows)


def _cache_saved(fx: Fixture, rows: list[tuple]) -> None:
    paid = sum(
        e.data["tokens_in"] + e.data["tokens_out"]
        for e in fx.of("llm.response", "first")
        if e.step in ("architect", "builder", "qa")
    )
    assert paid > 0
    assert rows == [
        ("local", "offline-1", 3, 3, 0.5, paid),
        ("broken", "offline-flaky", 0, 3, 0.0, 0),
    ]


def _retries(fx: Fixture, rows: list[tuple]) -> None:
    assert rows == [("broken", 5, 2, 4, "unavailable"), ("local", 3, 0, 0, None)]


def _slowest(fx: Fixture, rows: list[tuple]) -> None:
    durations = sorted((e.data["duration_s"] for e in fx.of("llm.response")), reverse=True)
    assert [r[5] for r in rows] == durations[:10] and len(rows) == 8


def _cost(fx: Fixture, rows: list[tuple]) -> None:
    tokens = sum(e.data["tokens_in"] + e.data["tokens_out"] for e in fx.of("llm.response", "first"))

    def cost(job: str) -> float | None:
        costs = [e.data.get("cost") for e in fx.of("llm.response", job)]
        return None if all(c is None for c in costs) else sum(c or 0 for c in costs)

    assert rows == [
        ("first", "audit", "succeeded", cost("first"), tokens, 6),
        ("second", "audit", "failed", cost("second"), 0, 2),
    ]


def _glance(fx: Fixture, rows: list[tuple]) -> None:
    assert [r[:8] for r in rows] == [
        ("second", "failed", 4, 3, 1, 2, 2, 3),
        ("first", "succeeded", 4, 4, 0, 6, 2, 0),
    ]
    assert all(r[8] > 0 for r in rows)


def _timeline(fx: Fixture, rows: list[tuple]) -> None:
    assert [r[:3] + (r[5],) for r in rows] == [
        ("architect", 1, "succeeded", 0),
        ("flaky", 1, "failed", 0),
        ("builder", 1, "succeeded", 0),
        ("qa", 1, "succeeded", 0),
        ("architect", None, "skipped", None),
        ("builder", None, "skipped", None),
        ("qa", None, "skipped", None),
        ("flaky", 2, "succeeded", 0),
    ]


def _reused(fx: Fixture, rows: list[tuple]) -> None:
    hits = fx.of("cache.hit")
    assert rows == [(e.job_id, e.step, e.data["origin_job"], e.data["tokens_saved"]) for e in hits]
    assert {(r[0], r[1], r[2]) for r in rows} == {
        ("second", s, "first") for s in ("architect", "builder", "qa")
    }


def _prompt_answer(fx: Fixture, rows: list[tuple]) -> None:
    [(attempt, prompt, answer)] = rows
    assert attempt == 1
    assert b"Design a command-line todo list." in prompt
    [response] = [e for e in fx.of("llm.response", "first") if e.step == "architect"]
    assert hashlib.sha256(answer).hexdigest() == response.data["response_sha256"]


def _statuses(fx: Fixture, rows: list[tuple]) -> None:
    last = {e.job_id: e.version for e in fx.events}
    assert [(r[0], r[2], r[5]) for r in rows] == [
        ("first", "succeeded", last["first"]),
        ("second", "failed", last["second"]),
    ]


def _why_again(fx: Fixture, rows: list[tuple]) -> None:
    expected = []
    for miss in reversed([e for e in fx.of("cache.miss") if e.step == "builder"]):
        for change in miss.data.get("changed") or [None]:
            part, name = (change["part"], change["name"]) if change else (None, None)
            expected.append((miss.job_id, miss.data["reason"], part, name))
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == expected
    assert rows[-1][2] == "first run of this step"  # the fixture's builder missed once, first


EXPECTED: dict[str, Callable[[Fixture, list[tuple]], Any]] = {
    "Which jobs called a given model in the last 7 days": _model_jobs,
    "Tokens per step across all jobs (a fork's copied calls counted once, in their source)": _tokens_per_step,
    "Every file a job wrote, with its hash": _files,
    "Which steps failed, and why": _failed_steps,
    "How much the cache saved, per provider and model": _cache_saved,
    "Retries per provider: attempts after the first, and failed attempts": _retries,
    "The slowest calls": _slowest,
    "Jobs that cost the most (by tokens where the provider reports no cost)": _cost,
    "Jobs at a glance, most recent first": _glance,
    "A job's timeline: every step run, retried and resumed ones included": _timeline,
    "Answers reused from the cache, and the job that paid for them": _reused,
    "The prompt and the answer of a call (blobs are stored once, by sha256)": _prompt_answer,
    "Why did this step call the model again? What changed since its previous run, one row per change": _why_again,
    "Job statuses (a projection table kept in the append transaction), most recent first": _statuses,
}


def test_there_are_at_least_eight_recipes_and_each_has_its_expected_answer():
    titles = [title(s) for s in sql_recipes()]
    assert len(titles) >= 8
    assert sorted(titles) == sorted(EXPECTED)


@pytest.mark.parametrize("statement", sql_recipes(), ids=title)
def test_sql_recipe_returns_what_it_should(fx, statement):
    statement = statement.replace("qwen2.5-coder-7b", "offline-1").replace("'JOB'", "'first'")
    conn = sqlite3.connect(f"file:{fx.db}?mode=ro", uri=True)
    try:
        rows = conn.execute(statement).fetchall()
    finally:
        conn.close()
    EXPECTED[title(statement)](fx, rows)


def test_every_cli_verb_has_help_with_an_example_and_a_readme_section():
    ctx = click.Context(cli)  # the verbs load on demand: ask the group for each one
    commands = {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}
    for name, command in commands.items():
        assert command.help, name
        assert f"### `steplog {name}" in README, f"README has no section for `steplog {name}`"
    for name in ("sql", "audit", "verify"):
        assert "Example: steplog " + name in commands[name].help


def test_every_provider_key_is_in_the_providers_key_table():
    """One table documents a provider's keys; a key added to ProviderConfig must appear there."""
    from steplog.providers.config import ProviderConfig

    start = README.index("Every key of a provider table:")
    table = README[start : README.index("\n\n", README.index("| key |", start))]
    documented = set(
        re.findall(r"`(\w+)`", "\n".join(line.split("|")[1] for line in table.splitlines()[3:]))
    )
    assert set(ProviderConfig.model_fields) <= documented, (
        set(ProviderConfig.model_fields) - documented
    )


def test_the_events_table_lists_the_fields_of_every_provider_and_reliability_event():
    """What the README says llm.*, step.retrying/waiting, budget and provider.* events carry is
    exactly what their models define."""
    from steplog.eventstore.events import EVENT_TYPES

    rows = {}
    for line in README[README.index("## Events") : README.index("## The cache")].splitlines():
        cells = line.split("|")
        if len(cells) > 3 and cells[1].strip().startswith("`"):
            for name in re.findall(r"`([a-z_.]+)`", cells[1]):
                rows[name] = cells[2]
    for type_ in (
        "llm.request",
        "llm.response",
        "step.retrying",
        "step.waiting",
        "budget.exceeded",
        "provider.circuit_opened",
        "provider.circuit_half_open",
        "provider.circuit_closed",
    ):
        # a field is named in backticks, before any parenthesis that explains it
        named = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", rows[type_])))
        assert named == set(EVENT_TYPES[type_].model_fields), type_
    for type_, model in EVENT_TYPES.items():  # every type has a row naming each of its fields
        assert type_ in rows, type_
        named = set(re.findall(r"`(\w+)`", rows[type_]))
        assert set(model.model_fields) <= named, (type_, set(model.model_fields) - named)


VIEWS = ("llm_calls", "step_runs", "file_writes", "cache_stats", "job_summary")


def test_the_readme_documents_every_column_of_every_view():
    """Each view's columns (as schema.sql defines them) are named in its README paragraph, and
    the README names no column the view lacks, so the manual cannot drift from the schema."""
    from steplog.eventstore.sqlite import SCHEMA_PATH, schema_statements

    mem = sqlite3.connect(":memory:")
    for statement in schema_statements(SCHEMA_PATH.read_text()):
        mem.execute(statement)
    section = README.split("## Auditing with SQL", 1)[1].split("Recipes (", 1)[0]
    parts = re.split(r"\*\*`(\w+)`\*\*", section)
    documented = dict(zip(parts[1::2], parts[2::2]))
    assert sorted(documented) == sorted(VIEWS)
    for view in VIEWS:
        columns = [row[1] for row in mem.execute(f"PRAGMA table_info({view})")]
        named = set(re.findall(r"`(\w+)`", documented[view]))
        missing = [c for c in columns if c not in named]
        assert not missing, f"README does not document {view} columns {missing}"
        table_cells = re.findall(r"^\| ([^|]+) \|", documented[view], re.MULTILINE)
        in_tables = {c for cell in table_cells for c in re.findall(r"`(\w+)`", cell)}
        assert in_tables <= set(columns), f"README documents {view} columns it lacks"
    mem.close()


def test_every_test_the_readme_cites_exists():
    """The Guarantees section names the test proving each promise: a renamed or deleted test
    must take its citation with it."""
    import ast

    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", README))
    assert len(cited) >= 30
    names: dict[str, set[str]] = {}
    for path, test in sorted(cited):
        if path not in names:
            tree = ast.parse((ROOT / path).read_text())
            names[path] = {
                node.name
                for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
        assert test in names[path], f"README cites {path}::{test}, which does not exist"


def test_the_batch_example_runs_as_shown(tmp_path):
    """The worked example of `run --inputs`: its file, its command, its output line for line
    (the lines of the jobs in any order: two run at once)."""
    import shlex

    from tests.cli_inprocess import steplog_here
    from tests.on_disk import ROOT

    section = README.split("### `steplog run PIPELINE.toml --inputs FILE", 1)[1]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    parts = re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]
    [(cat, content)] = [p.split("\n", 1) for p in parts if p.startswith("cat ")]
    [(command, shown)] = [p.split("\n", 1) for p in parts if p.startswith("steplog run ")]
    (tmp_path / cat.split()[1]).write_text(content)
    args = shlex.split(command)[1:]
    args[1] = str(ROOT / args[1])  # examples/factory/pipeline.toml, from the repository
    result = steplog_here(tmp_path / "s.db", *args, cwd=tmp_path)
    assert result.code == 0, result.err
    want, got = shown.splitlines(), result.out.splitlines()
    assert (got[0], got[-1]) == (want[0], want[-1])
    assert sorted(re.sub(r"\(\d/3 done\)", "", ln) for ln in got[1:-1]) == sorted(
        re.sub(r"\(\d/3 done\)", "", ln) for ln in want[1:-1]
    )
    listed = steplog_here(tmp_path / "s.db", "jobs", "--batch", "briefs", "--json")
    assert sorted(row["job_id"] for row in json.loads(listed.out)) == ["briefs-3", "clock", "todo"]
