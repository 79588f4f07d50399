"""Shared test setup: hypothesis profiles, a store on a real SQLite file, and the in-process
CLI runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import settings

from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections.store import open_store
from tests.cli_inprocess import Outcome, steplog_here

# tests.strategies holds shared asserts (assert_chain): let pytest explain their failures too.
pytest.register_assert_rewrite("tests.strategies")

# "ci" (the default): no deadline, since SQLite on a loaded CI machine has slow moments, and
# every failure prints the blob that reproduces it (@reproduce_failure). Examples stay random.
# Each property sets its own (modest) max_examples.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "steplog.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteEventStore]:
    """A store with the projection tables, on a fresh file (not for @given tests: see
    tests.strategies.fresh_store)."""
    opened = open_store(db_path)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def cli() -> Callable[..., Outcome]:
    """cli(db, *args) -> Outcome: tests.cli_inprocess.steplog_here, main(argv) in this process
    (an exception escaping main fails the test)."""
    return steplog_here
