"""Shared test setup: hypothesis profiles, a store on a real SQLite file, a throw-away
PostgreSQL cluster with a database per test, the fake LLM server, the in-process CLI runner,
and the guard that keeps the fast lane free of subprocesses."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest
from hypothesis import settings

from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections.store import open_store
from tests.cli_inprocess import Outcome, steplog_here
from tests.fake_llm_server import FakeLLMServer

if TYPE_CHECKING:  # psycopg (the test extra) is imported only when a test needs the cluster
    from tests.postgres_cluster import PostgresCluster

# tests.strategies holds shared asserts (assert_chain): let pytest explain their failures too.
pytest.register_assert_rewrite("tests.strategies")

# "ci" (the default): no deadline, since SQLite on a loaded CI machine has slow moments, and
# every failure prints the blob that reproduces it (@reproduce_failure). Examples stay random.
# Each property sets its own (modest) max_examples.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The CLI lays tables out to COLUMNS when it is set (README, "Text as it is"); pytest-xdist's
# workers export COLUMNS=80 and LINES=24. The width the runner happens to have must not reach
# the CLI under test (in this process or a child): a test that wants a width sets COLUMNS.
for _variable in ("COLUMNS", "LINES"):
    os.environ.pop(_variable, None)


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


# -- PostgreSQL (tests/postgres_cluster.py), on 127.0.0.1 ----------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this test process's own: under pytest-xdist each worker starts
    its own (about a second), on its own port and directory, so no worker waits for or cleans
    up after another. Only the `slow` lane may use it (initdb and postgres are processes).
    Without the binaries (or psycopg) the tests using it are skipped, except under CI=true,
    where that is a failure: CI must run them (.ci/run installs postgresql)."""
    try:
        from tests.postgres_cluster import ClusterUnavailable, PostgresCluster
    except ImportError as exc:  # psycopg missing: `make` installs it with the test extra
        _no_postgres(f"psycopg is not installed ({exc})")
    try:
        cluster = PostgresCluster.start()
    except ClusterUnavailable as exc:
        _no_postgres(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


def _no_postgres(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required under CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL for the tests: {reason}")


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> Iterator[str]:
    """The name of a new, empty database of this test's own (dropped afterwards)."""
    name = pg_cluster.create_database()
    try:
        yield name
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster, pg_database: str) -> str:
    """postgresql://postgres:PASSWORD@127.0.0.1:PORT/<this test's database>. Holds the cluster's
    password: never put it in an assertion message (pg_cluster.safe() blanks it out)."""
    return pg_cluster.url(pg_database)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Where an end-to-end test keeps its log, once per store: a SQLite file (tmp_path/s.db),
    then a PostgreSQL database of its own (tests/backends.py), the CLI run in tmp_path."""
    if request.param == "sqlite":
        return tmp_path / "s.db"
    from tests.backends import PostgresDatabase

    return PostgresDatabase(request.getfixturevalue("pg_url"), tmp_path)


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


# -- the fast lane: a test not marked slow starts no process ----------------------------------


class SubprocessInFastLane(BaseException):
    """A test outside the `slow` lane started a process. A BaseException, so that code under test
    catching Exception cannot hide it; a recorded attempt fails the test even if it is caught."""


_ATTEMPTS = pytest.StashKey[list]()


def _refuse(item: pytest.Item, what: str) -> None:
    message = (
        f"{item.nodeid} started a process ({what}) but is not marked slow: "
        "add @pytest.mark.slow (or pytestmark) so that `make test-fast` runs no subprocess"
    )
    item.stash[_ATTEMPTS].append(message)
    raise SubprocessInFastLane(message)


def _forbid_processes(monkeypatch: pytest.MonkeyPatch, item: pytest.Item) -> None:
    def popen_init(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        self._child_created = False  # what Popen.__del__ looks at: nothing to reap
        _refuse(item, f"subprocess.Popen({args!r})")

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            _refuse(item, f"os.{name}{args!r}")

        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(name))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Around setup, call and teardown (so module-scoped fixtures a test sets up are covered)."""
    item.stash[_ATTEMPTS] = []
    if item.get_closest_marker("slow") is not None:
        return (yield)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _forbid_processes(monkeypatch, item)
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A phase that tried to start a process fails, even if the code under test swallowed it."""
    report = yield
    attempts = item.stash.get(_ATTEMPTS, [])
    if attempts and report.passed:
        report.outcome = "failed"
        report.longrepr = "\n".join(attempts)
    if attempts:
        attempts.clear()
    return report
