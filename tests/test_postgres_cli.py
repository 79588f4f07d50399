"""The verbs on a PostgreSQL database: the same output as on a SQLite file for the same runs,
`sql` refusing every write (functions with side effects too) and leaving the database as it
was, `verify` naming an event edited behind the triggers, `events --follow` woken by NOTIFY,
read verbs refusing an empty database without creating tables in it. In this process (the
CLI's main(argv)); the subprocess end-to-end tests over both stores take the `database`
fixture (tests/test_cli_e2e.py, tests/test_crash_matrix.py, tests/test_concurrency.py)."""

from __future__ import annotations

import json
import re
import threading

import pytest

from steplog import Steplog
from tests.cli_inprocess import assert_refused_in_one_line, steplog_here
from tests.on_disk import EXAMPLE

pytestmark = pytest.mark.slow  # the cluster is started with initdb and postgres: processes

TIMES = re.compile(
    r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?Z?"  # timestamps
    r"|\d+(\.\d+)?(s|ms)\b"  # durations as shown
    r'|(?<="duration_s":) ?[-\d.e]+|(?<="elapsed_s":) ?[-\d.e]+'  # durations in JSON
)


@pytest.fixture
def pg(pg_url, pg_cluster, tmp_path):
    """A PostgreSQL database holding two runs of the example (j1, then j2 from the cache)."""
    for job, idea in (("j1", "a chess clock"), ("j2", "a chess clock")):
        done = steplog_here(
            pg_url,
            "run",
            str(EXAMPLE),
            "--job-id",
            job,
            "--input",
            f"idea={idea}",
            "-q",
            cwd=tmp_path,
        )
        assert done.code == 0, pg_cluster.safe(done.err)
    return pg_url


@pytest.fixture
def lite(tmp_path):
    """The same two runs on a SQLite file."""
    db = tmp_path / "lite" / "s.db"
    db.parent.mkdir()
    for job in ("j1", "j2"):
        done = steplog_here(
            db,
            "run",
            str(EXAMPLE),
            "--job-id",
            job,
            "--input",
            "idea=a chess clock",
            "-q",
            cwd=db.parent,
        )
        assert done.code == 0, done.err
    return db


TIMED_KEYS = ("ts", "duration_s", "elapsed_s", "started", "finished", "created", "updated")


def same_shape(text: str) -> str:
    """Output with what differs between two runs (times, durations) blanked."""
    return TIMES.sub("<t>", text)


def same_shape_json(value: object) -> object:
    """A JSON document with what differs between two runs blanked: every value under a key
    naming a time or a duration, an owner's worker id (random), and any text that is a
    timestamp."""
    if isinstance(value, dict):
        return {
            k: "<t>"
            if (k.endswith(TIMED_KEYS) or k == "worker") and v is not None
            else same_shape_json(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [same_shape_json(v) for v in value]
    if isinstance(value, str):
        return TIMES.sub("<t>", value)
    return value


VERBS = [
    ("status", "j1"),
    ("status", "j2", "--json"),
    ("jobs", "--json"),
    ("events", "j1", "--type", "step.*", "--json"),
    ("replay", "j1", "--until", "step.succeeded:builder", "--json"),
    ("audit", "j2", "--json"),
    ("show", "j1", "builder", "--json"),
    ("plan", str(EXAMPLE), "--input", "idea=a chess clock", "--json"),
]


@pytest.mark.parametrize("args", VERBS, ids=[" ".join(a[:2]) for a in VERBS])
def test_a_verb_prints_the_same_on_postgres_as_on_sqlite(pg, lite, tmp_path, pg_cluster, args):
    on_pg = steplog_here(pg, *args, cwd=tmp_path)
    on_lite = steplog_here(lite, *args, cwd=lite.parent)
    assert (on_pg.code, on_lite.code) == (0, 0), pg_cluster.safe(on_pg.err + on_lite.err)
    out_pg = on_pg.out.replace(str(tmp_path / "runs"), "<runs>")
    out_lite = on_lite.out.replace(str(lite.parent / "runs"), "<runs>")
    if "--json" in args:
        if args[0] == "events":
            out_pg, out_lite = (
                [json.loads(line) for line in out.splitlines()] for out in (out_pg, out_lite)
            )
        else:
            out_pg, out_lite = json.loads(out_pg), json.loads(out_lite)
        assert same_shape_json(out_pg) == same_shape_json(out_lite)
    else:
        assert same_shape(out_pg) == same_shape(out_lite)


def test_verify_passes_then_names_an_event_edited_behind_the_triggers(pg, pg_cluster, tmp_path):
    ok = steplog_here(pg, "verify", cwd=tmp_path)
    assert ok.code == 0 and ok.out.startswith("ok: "), ok.out
    dbname = pg.rsplit("/", 1)[1]
    [(seq, job, version)] = pg_cluster.admin_in(
        dbname,
        "SELECT seq, job_id, version FROM events WHERE type = 'llm.request' ORDER BY seq LIMIT 1",
    )
    pg_cluster.admin_in(
        dbname,
        "ALTER TABLE events DISABLE TRIGGER events_append_only;"
        f" UPDATE events SET data = replace(data::text, 'offline-1', 'offline-2')::json"
        f" WHERE seq = {seq};"
        " ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only",
    )
    bad = steplog_here(pg, "verify", cwd=tmp_path)
    assert bad.code == 1
    assert bad.out.splitlines()[0] == (
        f"event (job {job}, version {version}, seq {seq}): hash does not match the event's"
        " content (edited after append)"
    )


REFUSED = [
    "INSERT INTO jobs VALUES ('x', 'p', 'created', '2026-01-01T00:00:00Z')",
    "UPDATE jobs SET status = 'failed'",
    "DELETE FROM cache_index",
    "TRUNCATE events",
    "DROP TABLE jobs",
    "CREATE TABLE evil (x int)",
    "CREATE TEMP TABLE scratch (x int)",
    "ALTER TABLE jobs ADD COLUMN x int",
    "COPY jobs TO STDOUT",
    "SET search_path = nowhere",
    "LOCK TABLE events",
    "BEGIN",
    "DO $$ BEGIN DELETE FROM jobs; END $$",
    "NOTIFY steplog_events, '1'",
    "LISTEN steplog_events",
    "WITH gone AS (DELETE FROM jobs RETURNING *) SELECT count(*) FROM gone",
    "EXPLAIN ANALYZE DELETE FROM jobs",
    "SELECT 1; DELETE FROM jobs",
    " -- a comment first\n/* and another */ delete from jobs",
    "SELECT nextval('no_such_sequence')",
    "SELECT pg_notify('steplog_events', '1')",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    'SELECT pg_catalog."pg_cancel_backend"(1)',
    "SELECT lo_create(0)",
    "SELECT * FROM jobs WHERE status = (SELECT pg_reload_conf()::text)",
]


def _state(cluster, dbname: str) -> list:
    return cluster.admin_in(
        dbname,
        "SELECT (SELECT count(*) FROM events), (SELECT max(seq) FROM events),"
        " (SELECT count(*) FROM jobs), (SELECT count(*) FROM cache_index),"
        " (SELECT string_agg(status, ',' ORDER BY job_id) FROM jobs),"
        " (SELECT count(*) FROM pg_largeobject_metadata),"
        " (SELECT count(*) FROM pg_class WHERE relname IN ('evil', 'scratch'))",
    )


@pytest.mark.parametrize("statement", REFUSED)
def test_sql_refuses_every_write_and_leaves_the_database_as_it_was(
    pg, pg_cluster, tmp_path, statement
):
    dbname = pg.rsplit("/", 1)[1]
    before = _state(pg_cluster, dbname)
    result = steplog_here(pg, "sql", statement, cwd=tmp_path)
    assert_refused_in_one_line(result)
    assert "read-only" in result.err or "one statement" in result.err, result.err
    assert not pg_cluster.contains_password(result.err)
    assert _state(pg_cluster, dbname) == before


def test_sql_reads_views_with_parameters_as_json_csv_and_a_table(pg, tmp_path):
    rows = steplog_here(
        pg,
        "sql",
        "SELECT step, status, cache_hit FROM step_runs WHERE job_id = :job ORDER BY seq",
        "--param",
        "job=j2",
        "--json",
        cwd=tmp_path,
    )
    assert rows.code == 0, rows.err
    assert json.loads(rows.out) == [
        {"step": s, "status": "succeeded", "cache_hit": 1}
        for s in ("architect", "builder", "docs", "qa")
    ]
    csv = steplog_here(pg, "sql", "SELECT '50%' AS pct, 'a:b' AS colon", "--csv", cwd=tmp_path)
    assert csv.out.splitlines() == ["pct,colon", "50%,a:b"]
    table = steplog_here(pg, "sql", "SELECT count(*) AS n FROM events", cwd=tmp_path)
    assert table.code == 0 and "n" in table.out and table.out.rstrip().endswith("1 row")
    hostile = steplog_here(pg, "sql", "SELECT '[bold]x[/bold] \x1b[31m' AS t", cwd=tmp_path)
    assert "[bold]x[/bold]" in hostile.out and "\x1b" not in hostile.out


def test_read_verbs_refuse_an_empty_database_and_create_nothing(pg_url, pg_cluster, tmp_path):
    dbname = pg_url.rsplit("/", 1)[1]
    for args in (("status",), ("jobs",), ("events", "x"), ("verify",), ("sql", "SELECT 1")):
        result = steplog_here(pg_url, *args, cwd=tmp_path)
        assert_refused_in_one_line(result, mentions="no steplog database at 127.0.0.1:")
        assert not pg_cluster.contains_password(result.err)
    tables = pg_cluster.admin_in(
        dbname, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    )
    assert tables == [(0,)]
    planned = steplog_here(pg_url, "plan", str(EXAMPLE), cwd=tmp_path)
    assert planned.code == 0 and "planned against an empty history" in planned.err
    assert pg_cluster.admin_in(
        dbname, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    ) == [(0,)]
    made = steplog_here(pg_url, "run", str(EXAMPLE), "-q", cwd=tmp_path)
    assert made.code == 0
    assert made.err.startswith("created new database 127.0.0.1:") and dbname in made.err


def test_follow_is_woken_by_notify_not_by_its_wait(pg, tmp_path, monkeypatch):
    """With the fallback wait an hour long, a follower started before the job still sees every
    event as it is committed (steps a few tenths of a second apart): only NOTIFY wakes it."""
    from steplog.commands import follow

    monkeypatch.setattr(follow, "NOTIFIED_WAIT_S", 3600.0)
    slow = tmp_path / "slow.toml"
    slow.write_text(
        EXAMPLE.read_text().replace(
            'kind = "offline"\nmodel = "offline-1"',
            'kind = "offline"\nmodel = "offline-1"\noptions = { delay_s = 0.3 }',
        )
    )
    seen: list[str] = []

    def follow_live() -> None:
        with Steplog(pg) as reader:
            seen.extend(ev.type for ev in reader.follow("live", wait_s=30))

    follower = threading.Thread(target=follow_live, daemon=True)
    follower.start()
    with Steplog(pg) as runner:
        result = runner.run(
            slow, {"idea": "a tide clock"}, job_id="live", workspace=tmp_path / "runs" / "live"
        )
    assert result.status == "succeeded"
    follower.join(timeout=60)
    assert not follower.is_alive(), "the follower was never woken"
    assert seen[0] == "job.created" and seen[-1] == "job.succeeded"
    assert seen.count("step.succeeded") == 4


@pytest.mark.parametrize("source", ["PGPASSWORD", "~/.pgpass"])
def test_the_password_may_come_from_pgpassword_or_pgpass_and_is_never_shown(
    pg_url, pg_cluster, tmp_path, monkeypatch, source
):
    """A URL without a password: libpq finds it in PGPASSWORD or in ~/.pgpass (mode 0600)."""
    bare = pg_cluster.url(pg_url.rsplit("/", 1)[1], password=False)
    secret = pg_url.split("@", 1)[0].rsplit(":", 1)[1]
    if source == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", secret)
    else:
        home = tmp_path / "home"
        home.mkdir()
        pgpass = home / ".pgpass"
        pgpass.write_text(f"127.0.0.1:{pg_cluster.port}:*:postgres:{secret}\n")
        pgpass.chmod(0o600)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.delenv("PGPASSWORD", raising=False)
        monkeypatch.delenv("PGPASSFILE", raising=False)
    done = steplog_here(bare, "run", str(EXAMPLE), "--job-id", "p", cwd=tmp_path)
    assert done.code == 0, pg_cluster.safe(done.err)
    shown = steplog_here(bare, "status", "p", cwd=tmp_path)
    assert shown.code == 0
    for text in (done.out, done.err, shown.out):
        assert not pg_cluster.contains_password(text)
    stored = pg_cluster.admin_in(
        pg_url.rsplit("/", 1)[1],
        f"SELECT count(*) FROM events WHERE data::text LIKE '%' || '{secret}' || '%'",
    )
    assert stored == [(0,)]
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no password anywhere now
    refused = steplog_here(bare, "status", "p", cwd=tmp_path)
    assert_refused_in_one_line(refused, mentions="127.0.0.1:")
