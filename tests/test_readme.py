"""The README is the manual: its SQL recipes run on a real database and every verb is documented."""

from __future__ import annotations

import re
import sqlite3

import pytest

from commands.cli import cli
from tests.cli_helpers import EXAMPLE, ROOT, steplog

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


@pytest.fixture(scope="module")
def example_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    db = tmp / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "JOB").code == 0
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "again").code == 0
    return db


def test_there_are_at_least_eight_recipes():
    assert len(sql_recipes()) >= 8


@pytest.mark.parametrize("statement", sql_recipes(), ids=lambda s: s.splitlines()[0][:50])
def test_sql_recipe_runs_and_answers(example_db, statement):
    statement = statement.replace("qwen2.5-coder-7b", "offline-1")  # the model the example used
    conn = sqlite3.connect(f"file:{example_db}?mode=ro", uri=True)
    try:
        rows = conn.execute(statement).fetchall()
    finally:
        conn.close()
    if "step.retrying" not in statement and "step.failed" not in statement:
        assert rows, statement  # the example run produced something for every other recipe


def test_every_cli_verb_has_help_and_a_readme_section():
    for name, command in cli.commands.items():
        assert command.help, name
        assert f"### `steplog {name}" in README, f"README has no section for `steplog {name}`"
