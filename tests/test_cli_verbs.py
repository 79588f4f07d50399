"""The group loads its verbs on demand: `steplog --help` lists them from one table
(commands/cli/group.py VERBS) without importing them, and that table says what the commands say."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from steplog.commands.cli import cli
from steplog.commands.cli.group import VERBS
from tests.cli_inprocess import steplog_here
from tests.on_disk import EXAMPLE


def all_commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    found = {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}
    assert None not in found.values(), [name for name, cmd in found.items() if cmd is None]
    return found  # type: ignore[return-value]


def test_each_listed_help_line_is_the_commands_own_short_help():
    for name, command in all_commands().items():
        assert VERBS[name][1] == command.get_short_help_str(limit=10**6), name


def test_every_registered_verb_is_listed():
    """A verb a module registers but VERBS does not name could not be found by `steplog NAME`."""
    for module in sorted({module for module, _ in VERBS.values()}):
        importlib.import_module(f"steplog.commands.cli.{module}")
    assert sorted(cli.commands) == sorted(VERBS)
    for name, command in cli.commands.items():  # and each lives in the module VERBS names
        assert command.callback.__module__ == f"steplog.commands.cli.{VERBS[name][0]}", name


def test_the_help_listing_is_clicks_own_for_the_loaded_commands():
    """`steplog --help` without importing the verbs is what click prints with all of them."""
    all_commands()
    for width in (60, 80, 100, 200):
        ctx = click.Context(cli, info_name="steplog", terminal_width=width, max_content_width=width)
        lazy, eager = ctx.make_formatter(), ctx.make_formatter()
        cli.format_commands(ctx, lazy)
        click.Group.format_commands(cli, ctx, eager)  # lists through get_command, as click does
        assert lazy.getvalue() == eager.getvalue() != ""


def test_help_and_an_unknown_verb(tmp_path):
    shown = steplog_here(tmp_path / "none.db", "--help")
    assert shown.code == 0
    for name in VERBS:
        assert f"\n  {name} " in shown.out
    unknown = steplog_here(tmp_path / "none.db", "nosuchverb")
    assert unknown.code == 2 and unknown.err.count("\n") == 1, unknown.err
    assert "No such command 'nosuchverb'" in unknown.err


# sqlite_utils: only `steplog sql` uses it (its import is ~65 ms, and opening a store through
# it turned on recursive_triggers and ran its plugins' hooks on the store's connection)
HEAVY = ("pydantic", "httpx", "anyio", "jinja2", "sqlite_utils")

_PROBE = """
import json, sys
from steplog.commands.cli import main
argv = json.loads(sys.argv[1])
code = main(argv) if argv else 0
heavy = sorted(m for m in {heavy} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy, "rich": "rich" in sys.modules}}), file=sys.stderr)
"""


def probe(argv: list[str], cwd: Path) -> dict:
    """In a fresh interpreter: run `steplog ARGV` (none: only import the CLI) and say which
    heavy libraries it imported."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), json.dumps(argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.slow
def test_importing_the_cli_and_its_help_import_no_heavy_library(tmp_path):
    assert probe([], tmp_path) == {"code": 0, "heavy": [], "rich": False}
    assert probe(["--help"], tmp_path) == {"code": 0, "heavy": [], "rich": False}


@pytest.mark.slow
def test_status_and_jobs_import_neither_pydantic_nor_the_executor_libraries(tmp_path):
    db = tmp_path / "s.db"
    ran = steplog_here(db, "run", str(EXAMPLE), "--workspace", str(tmp_path / "ws"), "-q")
    assert ran.code == 0, ran.err
    for verb in (["status"], ["jobs"], ["status", "--json"], ["jobs", "--json"]):
        found = probe(["--db", str(db), *verb], tmp_path)
        assert found["code"] == 0 and found["heavy"] == [], (verb, found)


@pytest.mark.parametrize("verb", ["run", "submit"])
@pytest.mark.parametrize("database_exists", [False, True])
def test_run_and_submit_read_the_pipeline_file_once(tmp_path, monkeypatch, database_exists, verb):
    """On a new database `run` (and `submit`) checks everything before creating the file, then
    goes on with what it checked: the pipeline file is read and parsed once either way."""
    import steplog.commands.jobs as jobs

    db = tmp_path / "t.db"
    if database_exists:
        steplog_here(db, "run", str(EXAMPLE), "--workspace", str(tmp_path / "ws0"), "-q")
    loads: list[Path] = []
    load = jobs.load_pipeline
    monkeypatch.setattr(jobs, "load_pipeline", lambda path: loads.append(path) or load(path))
    extra = ["-q"] if verb == "run" else []
    ran = steplog_here(db, verb, str(EXAMPLE), "--workspace", str(tmp_path / "ws"), *extra)
    assert ran.code == 0, ran.err
    assert loads == [EXAMPLE]


def test_a_store_leaves_its_connection_as_sqlite3_made_it(tmp_path):
    """Opening the store sets only its own pragmas: recursive_triggers stays off, as in the plain
    sqlite3 shell an auditor uses (schema.sql's REPLACE guard is written for that)."""
    from steplog.projections.store import open_store

    store = open_store(tmp_path / "t.db")
    try:
        assert store.conn.execute("PRAGMA recursive_triggers").fetchone() == (0,)
    finally:
        store.close()


@pytest.mark.slow
def test_an_offline_run_does_not_import_the_http_client(tmp_path):
    """httpx (≈ 40 ms of import, its own CLI included) is for pipelines with an HTTP provider:
    import_http loads it for them before the job opens."""
    found = probe(
        ["--db", str(tmp_path / "t.db"), "run", str(EXAMPLE), "-q", "--workspace", "ws"], tmp_path
    )
    assert found["code"] == 0 and "httpx" not in found["heavy"], found
    assert {"pydantic", "anyio", "jinja2"} <= set(found["heavy"])  # what a run does need
