"""The PostgreSQL store when things fail: the server stopped mid-run (`pg_ctl stop -m
immediate`), connections cut, a COMMIT whose answer never came, a statement timeout, a database
missing, foreign or newer. Each is one line naming the server (never the password), exit 2,
nothing lost, and `resume` finishes the job; transient failures are retried for a bounded time.

Two servers: the session's shared cluster (tests/conftest.py), for what leaves the server up
(a relay that cuts connections, pg_terminate_backend of this test's backends, a lock, a
database of its own), and a module cluster of this file's own, `own_cluster`, which tests stop,
kill and restart (so the shared one is never disturbed). The own cluster commits synchronously:
an immediate stop must not lose what the server said was committed.

The lost COMMIT is made deterministic by tests/cutting_proxy.py, a TCP relay between the store
and the server: it forwards the COMMIT, waits for the server's answer (so the transaction is
committed), drops it and closes the connection, which is exactly a connection lost during
COMMIT as the client sees it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import psycopg
import pytest

from steplog.eventstore.errors import ServerUnreachable
from steplog.eventstore.postgres import (
    DEFAULT_RETRY_S,
    DEFAULT_STATEMENT_TIMEOUT_MS,
    PostgresEventStore,
    retry_s_from_env,
    statement_timeout_from_env,
    transient,
)
from steplog.eventstore.record import StoreError, VersionConflict
from steplog.projections.store import open_store
from tests.cli_process import spawn, steplog
from tests.cutting_proxy import CuttingProxy
from tests.on_disk import calls
from tests.store_workers import created, started

if TYPE_CHECKING:
    from tests.postgres_cluster import PostgresCluster

slow = pytest.mark.slow  # the cluster is server processes; the CLI runs as a child process

RUN_TIMEOUT_S = 90  # any CLI run here, to the end
WAIT_S = 30  # for a state a running CLI is expected to reach
POLL_S = 0.05
TERMINATE_EVERY_S = 0.25
TERMINATE_ROUNDS = 200  # at most (with WAIT_S-bounded waits, the loop ends well before)
FAIL_RETRY_S = "2"  # STEPLOG_PG_RETRY_S for a run that must give up

STEPS = ("plan", "build", "docs", "review", "notes", "wrap")
# plan -> build (files) -> docs -> review (json) -> notes -> wrap, each answer delayed a little:
# slow enough to stop the server, or cut its connections, while the job runs
PIPELINE = """\
name = "pgfail"

[providers.local]
kind = "offline"
model = "offline-1"
options = {{ delay_s = {delay} }}

[steps.plan]
provider = "local"
prompt = "Design a tiny tool."
output = "text"

[steps.build]
needs = ["plan"]
provider = "local"
prompt = \"\"\"Implement as files. {{"files": []}}
{{{{ steps.plan.output }}}}\"\"\"
output = "files"

[steps.docs]
needs = ["build"]
provider = "local"
prompt = "Document {{% for p in steps.build.files %}}{{{{ p }}}} {{% endfor %}}"
output = "text"

[steps.review]
needs = ["docs"]
provider = "local"
prompt = "Review {{{{ steps.docs.output }}}}"
output = "json"

[steps.notes]
needs = ["review"]
provider = "local"
prompt = "Notes on {{{{ steps.review.output }}}}"
output = "text"

[steps.wrap]
needs = ["notes"]
provider = "local"
prompt = "Wrap up {{{{ steps.notes.output }}}}"
output = "text"
"""


def write_pipeline(directory: Path, delay: float = 0.4) -> Path:
    path = directory / "pipeline.toml"
    path.write_text(PIPELINE.format(delay=delay))
    return path


# -- the servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _own_cluster() -> Iterator[PostgresCluster]:
    try:
        from tests.postgres_cluster import ClusterUnavailable, PostgresCluster
    except ImportError as exc:  # pragma: no cover - psycopg comes with the test extra
        pytest.skip(f"psycopg is not installed ({exc})")
    try:
        cluster = PostgresCluster.start(settings={"synchronous_commit": "on"})
    except ClusterUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI: {exc}", pytrace=False)
        pytest.skip(f"no PostgreSQL for the tests: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_cluster(_own_cluster: PostgresCluster) -> PostgresCluster:
    """This module's server, running (a test before may have left it stopped)."""
    if not _own_cluster.running:
        _own_cluster.restart()
    return _own_cluster


@pytest.fixture
def own_url(own_cluster: PostgresCluster) -> Iterator[str]:
    name = own_cluster.create_database()
    try:
        yield own_cluster.url(name)
    finally:
        if not own_cluster.running:
            own_cluster.restart()
        own_cluster.drop_database(name)


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def where(cluster: PostgresCluster, url: str) -> str:
    return f"127.0.0.1:{cluster.port}/{database_of(url)}"


def rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def wait_until(url: str, sql: str, timeout: float = WAIT_S) -> None:
    """Until `sql` (a count) is non-zero on the database a running CLI writes. Bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rows(url, sql)[0][0]:
            return
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for: {sql}")


def snapshot(url: str) -> dict[str, list[str]]:
    """Every row of every table of the database, as text: 'nothing written' is equality."""
    tables = [
        r[0] for r in rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    return {
        t: [r[0] for r in rows(url, f'SELECT t::text FROM "{t}" AS t ORDER BY 1')]
        for t in sorted(tables)
    }


def one_line(cluster: PostgresCluster, url: str, stderr: str) -> str:
    """The one line a failed command printed: naming the server, without the password."""
    assert not cluster.contains_password(stderr), "stderr shows the password"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, cluster.safe(stderr)
    assert lines[0].startswith("error: "), cluster.safe(stderr)
    assert where(cluster, url) in lines[0], cluster.safe(stderr)
    return lines[0]


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"STEPLOG_OFFLINE_CALL_LOG": str(tmp_path / "calls.log"), **extra}


def answered_steps(url: str, job: str) -> set[str]:
    found = rows(
        url,
        "SELECT step FROM events WHERE job_id = %s AND type = 'llm.response'"
        " AND (data ->> 'success')::boolean",
        (job,),
    )
    return {r[0] for r in found}


def assert_finished_once(cluster: PostgresCluster, url: str, tmp_path: Path, job: str) -> None:
    """The job succeeded; every step has one step.succeeded and one successful llm.response
    (no answer was asked for twice), no batch landed twice (no step.started repeated), the
    provider answered no step more often than its llm.requests (each committed before its
    call), and the hash chain holds."""
    status = steplog(url, "status", job, "--json", cwd=tmp_path)
    assert status.code == 0, cluster.safe(status.err)
    assert json.loads(status.out)["status"] == "succeeded"
    counts = Counter(
        (type_, step)
        for type_, step in rows(
            url,
            "SELECT type, step FROM events WHERE job_id = %s"
            " AND (type <> 'llm.response' OR (data ->> 'success')::boolean)",
            (job,),
        )
    )
    for step in STEPS:
        assert counts[("step.succeeded", step)] == 1, (step, counts)
        assert counts[("llm.response", step)] == 1, (step, counts)
        assert calls(tmp_path / "calls.log")[step] <= counts[("llm.request", step)], step
    repeated = rows(
        url,
        "SELECT step, data::text FROM events WHERE job_id = %s AND type = 'step.started'"
        " GROUP BY step, data::text HAVING count(*) > 1",
        (job,),
    )
    assert repeated == []
    verified = steplog(url, "verify", cwd=tmp_path)
    assert verified.code == 0, cluster.safe(verified.out + verified.err)


def prepare_database(url: str) -> None:
    """steplog's tables, so that `run` prints no 'created new database' line."""
    open_store(url).close()


# -- what counts as transient (no server needed) --------------------------------------------------


def test_connection_failures_are_transient_and_statement_failures_are_not():
    from psycopg import errors as pg_errors
    from psycopg_pool import PoolClosed, PoolTimeout

    assert transient(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert transient(psycopg.OperationalError("connection failed: ... Connection refused"))
    assert transient(pg_errors.AdminShutdown("terminating connection"))
    assert transient(PoolTimeout("couldn't get a connection after 2.00 sec"))
    assert transient(
        psycopg.OperationalError("connection failed: FATAL:  the database system is starting up")
    )
    assert not transient(
        psycopg.OperationalError('connection failed: FATAL:  database "x" does not exist')
    )
    assert not transient(
        psycopg.OperationalError("connection failed: FATAL:  password authentication failed")
    )
    assert not transient(pg_errors.QueryCanceled("canceling statement due to statement timeout"))
    assert not transient(pg_errors.LockNotAvailable("lock timeout"))
    assert not transient(pg_errors.UniqueViolation("duplicate key"))
    assert not transient(PoolClosed("the pool is closed"))
    assert not transient(ValueError("not a driver error"))


def test_the_retry_time_and_the_statement_timeout_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("STEPLOG_PG_RETRY_S", raising=False)
    monkeypatch.delenv("STEPLOG_PG_STATEMENT_TIMEOUT_MS", raising=False)
    assert retry_s_from_env() == DEFAULT_RETRY_S == 15
    assert statement_timeout_from_env() == DEFAULT_STATEMENT_TIMEOUT_MS
    monkeypatch.setenv("STEPLOG_PG_RETRY_S", "0.5")
    monkeypatch.setenv("STEPLOG_PG_STATEMENT_TIMEOUT_MS", "0")
    assert (retry_s_from_env(), statement_timeout_from_env()) == (0.5, 0)
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("STEPLOG_PG_RETRY_S", bad)
        with pytest.raises(StoreError, match="STEPLOG_PG_RETRY_S must be a number of seconds"):
            retry_s_from_env()
    monkeypatch.setenv("STEPLOG_PG_STATEMENT_TIMEOUT_MS", "1.5")
    with pytest.raises(StoreError, match="STEPLOG_PG_STATEMENT_TIMEOUT_MS must be a whole"):
        statement_timeout_from_env()


# -- a lost COMMIT and cut connections, through the relay ------------------------------------------


@pytest.fixture
def relay(pg_cluster: PostgresCluster) -> Iterator[CuttingProxy]:
    with CuttingProxy(pg_cluster.port) as proxy:
        yield proxy


def relayed(pg_cluster: PostgresCluster, relay: CuttingProxy, url: str) -> str:
    return relay.url(url, pg_cluster.port)


class Projected:
    """A projector that counts the batches it saw inside append transactions, and sends a
    statement of its own (a place the relay can cut: after the inserts, before the COMMIT)."""

    MARKER = b"projected here"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, conn: Any, stored: Any) -> None:
        self.batches.append([ev.version for ev in stored])
        conn.execute("SELECT 'projected here'")


@slow
def test_a_commit_whose_answer_is_lost_is_found_and_returned_not_appended_twice(
    pg_cluster, pg_url, relay
):
    projected = Projected()
    with PostgresEventStore(
        relayed(pg_cluster, relay, pg_url), retry_s=10, projectors=[projected]
    ) as store:
        first = store.append("j", [created("j")], expected_version=0)
        relay.arm(b"COMMIT\x00", after_reply=True)
        stored = store.append("j", [started(1), started(2)], expected_version=1)
        assert relay.fired.is_set() and relay.cuts == 1
        # what the server committed, with its seqs; not a VersionConflict for our own batch
        assert [(ev.seq, ev.version) for ev in stored] == [(2, 2), (3, 3)]
        assert list(store.read_job("j")) == first + stored
        assert projected.batches == [[1], [2, 3]]  # the retry found the batch: no second try
        assert store.append("j", [started(3)], expected_version=3)[0].version == 4
    assert rows(pg_url, "SELECT count(*), max(version) FROM events") == [(4, 4)]


@slow
def test_a_connection_cut_before_the_commit_is_retried_and_lands_once(pg_cluster, pg_url, relay):
    projected = Projected()
    with PostgresEventStore(
        relayed(pg_cluster, relay, pg_url), retry_s=10, projectors=[projected]
    ) as store:
        store.append("j", [created("j")])
        relay.arm(Projected.MARKER)  # the try dies with its rows inserted: rolled back
        stored = store.append("j", [started(1)], expected_version=1)
        assert relay.cuts == 1
        assert [(ev.seq, ev.version) for ev in stored] == [(2, 2)]
        assert projected.batches == [[1], [2], [2]]  # tried twice, committed once
        relay.arm(b"INSERT INTO events")  # cut before the rows are in
        assert store.append("j", [started(2)], expected_version=2)[0].version == 3
        assert relay.cuts == 2
    assert rows(pg_url, "SELECT seq, version FROM events ORDER BY seq") == [(1, 1), (2, 2), (3, 3)]


@slow
def test_without_retries_a_lost_commit_says_its_outcome_is_unknown(pg_cluster, pg_url, relay):
    """Why the retry must look before it appends again: the batch did land."""
    with PostgresEventStore(relayed(pg_cluster, relay, pg_url), retry_s=0) as store:
        store.append("j", [created("j")])
        relay.arm(b"COMMIT\x00", after_reply=True)
        with pytest.raises(ServerUnreachable) as caught:
            store.append("j", [started(1), started(2)], expected_version=1)
        message = str(caught.value)
        assert not pg_cluster.contains_password(message) and "\n" not in message
        assert message.startswith(
            f"lost the connection to PostgreSQL server 127.0.0.1:{relay.port}"
        )
        assert "whether the last append to job j (versions 2-3) was stored is unknown" in message
        assert "retries" not in message
        assert store.job_version("j") == 3  # it was committed
        with pytest.raises(VersionConflict):  # what a blind second append would meet
            store.append("j", [started(1), started(2)], expected_version=1)


@slow
def test_a_lost_commit_with_the_server_gone_says_unknown_and_how_long_it_tried(
    pg_cluster, pg_url, relay
):
    with PostgresEventStore(relayed(pg_cluster, relay, pg_url), retry_s=1.5) as store:
        store.append("j", [created("j")])
        relay.arm(b"COMMIT\x00", after_reply=True)
        relay.refusing = True  # every new connection is closed at once
        t0 = time.monotonic()
        with pytest.raises(ServerUnreachable) as caught:
            store.append("j", [started(1)], expected_version=1)
        took = time.monotonic() - t0
        message = str(caught.value)
        assert "\n" not in message and not pg_cluster.contains_password(message)
        assert "whether the last append to job j (version 2) was stored is unknown" in message
        assert re.search(r"gave up after 1\.\d s of retries \(STEPLOG_PG_RETRY_S=1\.5\)", message)
        assert 1.4 < took < 10, took
        # until the server answers again, a later operation gets one try, not another 1.5 s
        t0 = time.monotonic()
        with pytest.raises(ServerUnreachable, match="not retried: the server has not answered"):
            store.job_version("j")
        assert time.monotonic() - t0 < 5
        relay.refusing = False
        assert store.job_version("j") == 2  # it had landed; and the store works again
        assert store.append("j", [started(2)], expected_version=2)[0].version == 3


@slow
def test_reads_ride_through_cut_connections(pg_cluster, pg_url, relay):
    with PostgresEventStore(relayed(pg_cluster, relay, pg_url), retry_s=10) as store:
        written = store.append("j", [created("j"), started(1)], blobs=[b"kept"])
        sha = store.put_blob(b"kept")
        for marker, read in (
            (b"FROM events WHERE version >", lambda: list(store.read_job("j"))),
            (b"FROM events WHERE seq >", lambda: list(store.read_all())),
            (b"FROM streams WHERE job_id", lambda: store.job_version("j")),
            (b"FROM blobs WHERE sha256 =", lambda: store.get_blob(sha)),
            (b"FROM streams WHERE substr", lambda: store.latest_job_id()),
        ):
            relay.arm(marker)
            cuts = relay.cuts
            answer = read()
            assert relay.cuts == cuts + 1, marker
            assert answer in (written, 2, b"kept", "j"), (marker, answer)
        relay.cut_all()  # every idle connection of the pool gone at once
        assert store.last_seq() == 2
        relay.cut_all()
        with store.reading() as conn:  # a caller's own reads: on a connection that answers
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (2,)
        relay.arm(b"INSERT INTO blobs")
        assert store.put_blob(b"again") == store.put_blob(b"again")


@slow
def test_a_write_transaction_is_retried_until_it_holds_the_lock(pg_cluster, pg_url, relay):
    with PostgresEventStore(relayed(pg_cluster, relay, pg_url), retry_s=10) as store:
        relay.arm(b"LOCK TABLE events")
        with store.write_transaction() as conn:
            store.append_txn(
                conn, "j", [(created("j").ts, "INFO", "job.created", None, "{}")], 0, []
            )
        assert relay.cuts == 1
        assert store.job_version("j") == 1


# -- the server stopped and started again ----------------------------------------------------------


@slow
def test_a_server_restarted_within_the_retry_time_is_ridden_through(own_cluster, own_url):
    with PostgresEventStore(own_url, retry_s=30) as store:
        store.append("j", [created("j")])
        own_cluster.stop("immediate", remove=False)
        restarter = threading.Timer(1.0, own_cluster.restart)
        restarter.start()
        try:
            stored = store.append("j", [started(1)], expected_version=1)
        finally:
            restarter.join(timeout=120)
        assert stored[0].version == 2
        t0 = time.monotonic()
        for attempt in range(2, 6):  # the pool recovers meanwhile: no wait of seconds each
            store.append("j", [started(attempt)])
        assert time.monotonic() - t0 < 5
        assert [ev.version for ev in store.read_job("j")] == [1, 2, 3, 4, 5, 6]


@slow
def test_retries_stop_after_the_retry_time_and_then_try_once(own_cluster, own_url):
    with PostgresEventStore(own_url, retry_s=1.0, connect_timeout_s=2) as store:
        store.append("j", [created("j")])
        own_cluster.stop("immediate", remove=False)
        t0 = time.monotonic()
        with pytest.raises(ServerUnreachable) as caught:
            store.append("j", [started(1)], expected_version=1)
        took = time.monotonic() - t0
        assert 0.9 < took < 8, took
        message = str(caught.value)
        assert message.startswith(
            f"lost the connection to PostgreSQL server {where(own_cluster, own_url)}: "
        )
        assert "Connection refused" in message and "gave up after 1.0 s of retries" in message
        assert "\n" not in message and not own_cluster.contains_password(message)
        t0 = time.monotonic()
        with pytest.raises(ServerUnreachable, match="not retried"):
            list(store.read_job("j"))
        assert time.monotonic() - t0 < 5
        own_cluster.restart()
        assert store.job_version("j") == 1  # nothing of the failed append; the store works again


@slow
def test_a_statement_timeout_is_one_line_and_not_retried(pg_cluster, pg_url):
    prepare_database(pg_url)
    with PostgresEventStore(pg_url, statement_timeout_ms=300, retry_s=10) as store:
        store.append("j", [created("j")])
        with psycopg.connect(pg_url) as holder:  # a transaction that keeps streams locked
            holder.execute("LOCK TABLE streams IN ACCESS EXCLUSIVE MODE")
            t0 = time.monotonic()
            with pytest.raises(StoreError) as caught:
                store.append("j", [started(1)], expected_version=1)
            took = time.monotonic() - t0
            holder.rollback()
        message = str(caught.value)
        assert message == (
            f"PostgreSQL database {where(pg_cluster, pg_url)}: a statement ran past the"
            " statement timeout of 300 ms (STEPLOG_PG_STATEMENT_TIMEOUT_MS) and was cancelled;"
            " its transaction wrote nothing"
        )
        assert took < 3, took  # once, not retried for 10 s
        assert store.job_version("j") == 1


# -- the CLI: a run the server dies under, and resume ---------------------------------------------


def step_succeeded(job: str, count: int = 1) -> str:
    return (
        f"SELECT count(*) >= {count} FROM events WHERE job_id = '{job}' AND type = 'step.succeeded'"
    )


@slow
def test_a_server_stopped_immediately_mid_run_is_one_line_then_resume_finishes(
    own_cluster, own_url, tmp_path
):
    prepare_database(own_url)
    env = run_env(tmp_path, STEPLOG_PG_RETRY_S=FAIL_RETRY_S)
    proc = spawn(
        own_url, "run", str(write_pipeline(tmp_path)), "--job-id", "k", env=env, cwd=tmp_path
    )
    try:
        wait_until(own_url, step_succeeded("k", 2))
        own_cluster.stop("immediate", remove=False)  # pg_ctl stop -m immediate
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    took = time.monotonic() - stopped
    assert proc.returncode == 2, own_cluster.safe(err)
    line = one_line(own_cluster, own_url, err)
    assert line.startswith("error: lost the connection to PostgreSQL server "), line
    assert "gave up after 2.0 s of retries" in line, line
    assert took < 2 + 20, took
    own_cluster.restart()
    answered = answered_steps(own_url, "k")
    assert {"plan", "build"} <= answered and answered != set(STEPS)
    asked = calls(tmp_path / "calls.log")
    # the run's owner is gone: resume takes the job over without --force
    resumed = steplog(own_url, "resume", "k", env=env, cwd=tmp_path, timeout=RUN_TIMEOUT_S)
    assert resumed.code == 0, own_cluster.safe(resumed.err)
    assert_finished_once(own_cluster, own_url, tmp_path, "k")
    asked_again = calls(tmp_path / "calls.log") - asked
    assert not set(asked_again) & answered, asked_again  # no committed answer asked for again


@slow
def test_a_run_rides_through_a_server_restart_within_the_retry_time(own_cluster, own_url, tmp_path):
    prepare_database(own_url)
    env = run_env(tmp_path, STEPLOG_PG_RETRY_S="60")
    proc = spawn(
        own_url, "run", str(write_pipeline(tmp_path)), "--job-id", "k", env=env, cwd=tmp_path
    )
    try:
        wait_until(own_url, step_succeeded("k", 2))
        own_cluster.stop("immediate", remove=False)
        time.sleep(1.0)
        own_cluster.restart()
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, own_cluster.safe(err)
    assert "job k succeeded" in out
    assert_finished_once(own_cluster, own_url, tmp_path, "k")


@slow
def test_steplogs_backends_terminated_while_a_run_goes_lose_nothing(pg_cluster, pg_url, tmp_path):
    prepare_database(pg_url)
    env = run_env(tmp_path, STEPLOG_PG_RETRY_S="10")
    database = database_of(pg_url)
    terminate = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'steplog' AND datname = %s AND pid <> pg_backend_pid()"
    )
    proc = spawn(
        pg_url,
        "run",
        str(write_pipeline(tmp_path, delay=0.3)),
        "--job-id",
        "k",
        env=env,
        cwd=tmp_path,
    )
    terminated = 0
    try:
        wait_until(pg_url, "SELECT count(*) FROM events WHERE type = 'job.started'")
        for _ in range(TERMINATE_ROUNDS):
            if proc.poll() is not None:
                break
            terminated += pg_cluster.admin(terminate, (database,))[0][0]
            time.sleep(TERMINATE_EVERY_S)
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert terminated > 0
    if proc.returncode != 0:  # it may fail, in one line; resume then finishes
        assert proc.returncode == 2, pg_cluster.safe(err)
        one_line(pg_cluster, pg_url, err)
        resumed = steplog(pg_url, "resume", "k", env=env, cwd=tmp_path, timeout=RUN_TIMEOUT_S)
        assert resumed.code == 0, pg_cluster.safe(resumed.err)
    assert_finished_once(pg_cluster, pg_url, tmp_path, "k")


@slow
def test_a_statement_timeout_mid_run_is_one_line_then_resume_finishes(pg_cluster, pg_url, tmp_path):
    prepare_database(pg_url)
    env = run_env(tmp_path, STEPLOG_PG_STATEMENT_TIMEOUT_MS="500")
    proc = spawn(
        pg_url, "run", str(write_pipeline(tmp_path)), "--job-id", "k", env=env, cwd=tmp_path
    )
    try:
        wait_until(pg_url, step_succeeded("k"))
        with psycopg.connect(pg_url) as holder:  # streams locked until the run gives up
            holder.execute("LOCK TABLE streams IN ACCESS EXCLUSIVE MODE")
            locked = time.monotonic()
            out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            took = time.monotonic() - locked
            holder.rollback()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 2, pg_cluster.safe(err)
    line = one_line(pg_cluster, pg_url, err)
    assert "statement timeout of 500 ms (STEPLOG_PG_STATEMENT_TIMEOUT_MS)" in line, line
    assert took < 15, took
    resumed = steplog(pg_url, "resume", "k", env=env, cwd=tmp_path, timeout=RUN_TIMEOUT_S)
    assert resumed.code == 0, pg_cluster.safe(resumed.err)
    assert_finished_once(pg_cluster, pg_url, tmp_path, "k")


# -- a database that is not there, not steplog's, or newer -----------------------------------------


VERBS = [("run", "pipeline.toml", "--job-id", "k"), ("resume", "k"), ("status",)]


def refused_in_one_line(cluster: PostgresCluster, url: str, tmp_path: Path) -> list[str]:
    write_pipeline(tmp_path)
    lines = []
    for verb in VERBS:
        result = steplog(url, *verb, env=run_env(tmp_path), cwd=tmp_path)
        assert result.code == 2, (verb, cluster.safe(result.err))
        assert not cluster.contains_password(result.out)
        lines.append(one_line(cluster, url, result.err))
    assert not (tmp_path / "runs").exists()  # no workspace was made either
    assert not (tmp_path / "calls.log").exists()  # no provider was called
    return lines


@slow
def test_a_missing_database_is_refused_in_one_line_and_not_created(pg_cluster, tmp_path):
    url = pg_cluster.url("steplog_missing_db")
    for line in refused_in_one_line(pg_cluster, url, tmp_path):
        assert line.endswith("the server has no such database (createdb it first)"), line
    names = {r[0] for r in pg_cluster.admin("SELECT datname FROM pg_database")}
    assert "steplog_missing_db" not in names


@slow
def test_a_database_that_is_not_steplogs_is_refused_and_left_as_it_was(
    pg_cluster, pg_url, tmp_path
):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int PRIMARY KEY, total numeric)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5), (2, 12), (3, 0)")
    before = snapshot(pg_url)
    for line in refused_in_one_line(pg_cluster, pg_url, tmp_path):
        assert "is not a steplog database (it holds tables invoices)" in line, line
    assert snapshot(pg_url) == before


@slow
def test_a_database_of_a_newer_schema_is_refused_and_nothing_is_written(
    pg_cluster, pg_url, tmp_path
):
    ran = steplog(
        pg_url, "run", str(write_pipeline(tmp_path, delay=0)), "--job-id", "old", cwd=tmp_path
    )
    assert ran.code == 0, pg_cluster.safe(ran.err)
    (tmp_path / "runs").rename(tmp_path / "old-runs")
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as the superuser
        conn.execute("UPDATE steplog_meta SET value = '99' WHERE key = 'schema_version'")
    before = snapshot(pg_url)
    assert before["events"]
    for line in refused_in_one_line(pg_cluster, pg_url, tmp_path):
        assert "newer" in line and "schema 99" in line, line
    assert snapshot(pg_url) == before
