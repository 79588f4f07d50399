"""Shared test setup: hypothesis profiles, a store on a real SQLite file, the fake LLM server
and the in-process CLI runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import settings

from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections.store import open_store
from tests.cli_inprocess import Outcome, steplog_here
from tests.fake_llm_server import FakeLLMServer

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


# -- the fake LLM server (tests/fake_llm_server.py), on 127.0.0.1 -----------------------------

StartServer = Callable[..., FakeLLMServer]


def _servers() -> Iterator[StartServer]:
    """start(**options) -> a running FakeLLMServer (options as FakeLLMServer takes them: responder,
    port, call_log, delay, fail_first); every one started is stopped when the scope ends."""
    started: list[FakeLLMServer] = []

    def start(**options: Any) -> FakeLLMServer:
        server = FakeLLMServer(**options).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def fake_llm_factory() -> Iterator[StartServer]:
    """For a test that needs options (a responder, a port known in advance) or several servers."""
    yield from _servers()


@pytest.fixture(scope="module")
def module_fake_llm_factory() -> Iterator[StartServer]:
    """The same for module-scoped fixtures (a clean run made once, then checked many times)."""
    yield from _servers()


@pytest.fixture
def fake_llm(fake_llm_factory: StartServer) -> FakeLLMServer:
    """A fake LLM server of this test's own, with the default responder."""
    return fake_llm_factory()


@pytest.fixture(scope="module")
def _module_fake_llm(module_fake_llm_factory: StartServer) -> FakeLLMServer:
    return module_fake_llm_factory()


@pytest.fixture
def shared_fake_llm(_module_fake_llm: FakeLLMServer) -> FakeLLMServer:
    """One fake LLM server for the whole module (starting one per test adds up), reset before each
    test: no faults queued, no calls recorded, the default model list, no key required."""
    _module_fake_llm.reset()
    return _module_fake_llm


# -- the CLI in this process ------------------------------------------------------------------


@pytest.fixture
def cli() -> Callable[..., Outcome]:
    """cli(db, *args) -> Outcome: tests.cli_inprocess.steplog_here, main(argv) in this process
    (an exception escaping main fails the test)."""
    return steplog_here
