"""The audit views on PostgreSQL (schema_postgres.sql) against SQLite's (schema.sql): for the same
events, `SELECT * FROM view` gives equal rows on both stores, value for value and type for type;
`steplog audit JOB --json` prints the same document; `WHERE job_id = ...` reaches the index;
and every recipe of the README's "Auditing with SQL" runs in `psql`.

The same events: real runs (the audit pipeline of tests/audit_fixture.py, a fork of it, and
the same runs made on PostgreSQL through the Python API), copied event by event into the other
store with their exact text, and hypothesis-generated logs (tests/strategies.py) appended to
both. Rows are compared after ordering both by a key, value by value with its type. The one
allowance (schema_postgres.sql says why): the columns SQLite computes with round() are compared
to the digits rounded to.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from steplog.api import Steplog
from steplog.commands.audit import audit_document
from steplog.eventstore.events import JobCreated
from steplog.projections.store import open_store
from tests.audit_fixture import DATA, build_audit_db
from tests.cli_inprocess import steplog_here
from tests.on_disk import ROOT
from tests.strategies import Batch, append_batches, fresh_store, interleaved_batches

pytestmark = pytest.mark.slow  # the cluster is a server process; psql runs as one too

# each view, and the columns its rows are ordered by for the comparison
VIEWS = {
    "llm_calls": ("seq",),
    "step_runs": ("seq",),
    "file_writes": ("seq",),
    "cache_stats": ("provider", "model"),
    "job_summary": ("job_id",),
}
# Columns SQLite computes with round(), and the decimals: equal to those digits (SQLite's own
# double can be the one next to the correctly rounded value; schema_postgres.sql says why).
ROUNDED = {
    ("job_summary", "duration_s"): 6,
    ("job_summary", "cost_reserved"): 9,
    ("cache_stats", "hit_rate"): 4,
}
# A float sum: SQLite up to 3.42 adds in order, as PostgreSQL does; 3.43+ compensates the
# rounding (Kahan-Babuska), which can change the last bit.
SUMMED = {("job_summary", "cost")} if sqlite3.sqlite_version_info >= (3, 43, 0) else set()


# -- comparing ----------------------------------------------------------------------------------


def rows_of(store: Any, view: str, where: str = "") -> tuple[list[str], list[tuple[Any, ...]]]:
    """The view's columns and its rows (`SELECT *`), as the store's driver returns them."""
    with store.reading() as conn:
        cursor = conn.execute(f"SELECT * FROM {view}{where}")
        columns = [d[0] for d in cursor.description]
        return columns, [tuple(row) for row in cursor.fetchall()]


def ordered(view: str, columns: list[str], rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    at = [columns.index(c) for c in VIEWS[view]]
    return sorted(rows, key=lambda row: [(row[i] is None, row[i] or "") for i in at])


def same_value(view: str, column: str, sqlite_value: Any, postgres_value: Any) -> bool:
    if type(sqlite_value) is not type(postgres_value):
        return False
    if sqlite_value == postgres_value:
        return True
    if isinstance(sqlite_value, float) and (view, column) in ROUNDED:
        digits = ROUNDED[(view, column)]
        return round(sqlite_value, digits) == round(postgres_value, digits)
    if isinstance(sqlite_value, float) and (view, column) in SUMMED:
        return math.isclose(sqlite_value, postgres_value, rel_tol=1e-12)
    return False


def differences(view: str, sqlite_store: Any, postgres_store: Any, where: str = "") -> list[str]:
    """Every way the view's rows differ between the stores, one line each ([] when equal)."""
    lite_columns, lite_rows = rows_of(sqlite_store, view, where)
    pg_columns, pg_rows = rows_of(postgres_store, view, where)
    if lite_columns != pg_columns:
        return [f"{view}: columns {lite_columns} on SQLite, {pg_columns} on PostgreSQL"]
    if len(lite_rows) != len(pg_rows):
        return [f"{view}: {len(lite_rows)} rows on SQLite, {len(pg_rows)} on PostgreSQL"]
    lite_rows = ordered(view, lite_columns, lite_rows)
    pg_rows = ordered(view, pg_columns, pg_rows)
    found = []
    for lite, pg in zip(lite_rows, pg_rows):
        key = {c: lite[lite_columns.index(c)] for c in VIEWS[view]}
        for column, a, b in zip(lite_columns, lite, pg):
            if not same_value(view, column, a, b):
                found.append(f"{view} {key} {column}: SQLite {a!r}, PostgreSQL {b!r}")
    return found


def assert_views_equal(sqlite_store: Any, postgres_store: Any) -> None:
    found = [d for view in VIEWS for d in differences(view, sqlite_store, postgres_store)]
    assert found == [], "\n".join(found[:20])


def same_document(sqlite_doc: Any, postgres_doc: Any, path: str = "") -> list[str]:
    """Where two audit documents differ (the JSON of `steplog audit`, parsed), one line each;
    job_summary's rounded columns are compared as the view comparison does."""
    if isinstance(sqlite_doc, dict) and isinstance(postgres_doc, dict):
        if sqlite_doc.keys() != postgres_doc.keys():
            return [f"{path}: keys {sorted(sqlite_doc)} against {sorted(postgres_doc)}"]
        return [
            line
            for key in sqlite_doc
            for line in same_document(sqlite_doc[key], postgres_doc[key], f"{path}.{key}")
        ]
    if isinstance(sqlite_doc, list) and isinstance(postgres_doc, list):
        if len(sqlite_doc) != len(postgres_doc):
            return [f"{path}: {len(sqlite_doc)} items against {len(postgres_doc)}"]
        return [
            line
            for n, (a, b) in enumerate(zip(sqlite_doc, postgres_doc))
            for line in same_document(a, b, f"{path}[{n}]")
        ]
    column = path.rsplit(".", 1)[-1]
    view = "job_summary" if path.startswith(".summary.") else "-"
    if same_value(view, column, sqlite_doc, postgres_doc):
        return []
    return [f"{path}: SQLite {sqlite_doc!r}, PostgreSQL {postgres_doc!r}"]


# -- the same log in both stores --------------------------------------------------------------


def copy_log(source: Any, target: Any) -> None:
    """Every blob and event of `source` into the empty `target`, in the same global order and
    with each event's exact text (append_rows keeps ts, level, type, step and data as given), so
    seqs, versions and hashes come out equal; the target's projection tables follow its appends."""
    for _, _, content in source.all_blobs():
        target.put_blob(content)
    run: list[Any] = []

    def flush() -> None:
        if run:
            target.append_rows(
                run[0].job_id,
                [(ev.ts, ev.level, ev.type, ev.step, ev.data_json) for ev in run],
                expected_version=run[0].version - 1,
            )
            run.clear()

    for ev in source.read_all():
        if run and run[-1].job_id != ev.job_id:
            flush()
        run.append(ev)
    flush()
    assert list(target.read_all()) == list(source.read_all())


@contextmanager
def postgres_store(cluster: Any) -> Iterator[Any]:
    """A store (with its projection tables) on a new database of the cluster, dropped after."""
    name = cluster.create_database()
    try:
        with closing(open_store(cluster.url(name))) as store:
            yield store
    finally:
        cluster.drop_database(name)


@dataclasses.dataclass
class Runs:
    """A log made by real runs, in the store it was made in and copied into the other one."""

    root: Path
    sqlite: Any
    postgres: Any
    sqlite_db: Path
    postgres_url: str
    jobs: list[str]


def fork_and_resume(cli_db: str | Path, root: Path) -> None:
    """A fork of `first` at its failed flaky step, resumed with the provider mended: the fork's
    copied history (rows with copied = 1) beside a run of its own."""
    forked = steplog_here(
        cli_db, "replay", "first", "--until", "step.failed:flaky", "--fork", "forked", cwd=root
    )
    assert forked.code == 0, forked.err
    resumed = steplog_here(
        cli_db, "resume", "forked", "--pipeline", "audit_pipeline_fixed.toml", "-q", cwd=root
    )
    assert resumed.code == 0, resumed.err


@pytest.fixture(scope="module")
def made_on_sqlite(tmp_path_factory, pg_cluster) -> Iterator[Runs]:
    """The audit fixture's runs on SQLite through the CLI (first fails, second reuses answers
    and fails, first resumed: what tests/test_readme.py runs the recipes on); then copied to
    PostgreSQL."""
    root = tmp_path_factory.mktemp("views-sqlite")
    db = build_audit_db(root)
    name = pg_cluster.create_database()
    try:
        with closing(open_store(db)) as lite, closing(open_store(pg_cluster.url(name))) as pg:
            copy_log(lite, pg)
            yield Runs(root, lite, pg, db, pg_cluster.url(name), ["first", "second"])
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def made_on_postgres(tmp_path_factory, pg_cluster) -> Iterator[Runs]:
    """The same runs made on PostgreSQL through the Python API (`Steplog(url)`), and a fork of
    first resumed, through the CLI with `--db URL`; then copied to a SQLite file."""
    root = tmp_path_factory.mktemp("views-postgres")
    for name in ("audit_pipeline.toml", "audit_pipeline_fixed.toml"):
        shutil.copy(DATA / name, root / name)
    name = pg_cluster.create_database()
    url = pg_cluster.url(name)
    try:
        with Steplog(url) as app:
            first = app.run(root / "audit_pipeline.toml", job_id="first", workspace=root / "w1")
            second = app.run(root / "audit_pipeline.toml", job_id="second", workspace=root / "w2")
            again = app.resume("first", pipeline=root / "audit_pipeline_fixed.toml")
        assert (first.status, second.status, again.status) == ("failed", "failed", "succeeded")
        fork_and_resume(url, root)
        db = root / "copy.db"
        with closing(open_store(url)) as pg, closing(open_store(db)) as lite:
            copy_log(pg, lite)
            yield Runs(root, lite, pg, db, url, ["first", "second", "forked"])
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(params=["made_on_sqlite", "made_on_postgres"])
def runs(request) -> Runs:
    return request.getfixturevalue(request.param)


# -- real runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
def test_each_view_has_equal_rows_on_both_stores_for_real_runs(runs, view):
    found = differences(view, runs.sqlite, runs.postgres)
    assert found == [], "\n".join(found[:20])
    _, rows = rows_of(runs.postgres, view)
    assert rows, f"{view} is empty: the runs should give it rows"


def test_the_runs_cover_what_the_views_tell_apart(runs):
    """Not a vacuous comparison: the log has retries, failed and answered calls, cache hits,
    skipped and failed runs, files written, and (the runs made on PostgreSQL) a fork's copied
    history."""
    _, calls = rows_of(runs.postgres, "llm_calls")
    _, step_runs = rows_of(runs.postgres, "step_runs")
    columns, summary = rows_of(runs.postgres, "job_summary")
    success = [c[8] for c in calls]
    assert 0 in success and 1 in success and any(c[13] > 1 for c in calls)  # attempt
    assert {r[3] for r in step_runs} >= {"succeeded", "failed", "skipped"}
    if "forked" in runs.jobs:  # copied
        assert {c[-1] for c in calls} == {0, 1} and {r[-1] for r in step_runs} == {0, 1}
    by_job = {row[0]: dict(zip(columns, row)) for row in summary}
    assert sorted(by_job) == sorted(runs.jobs)
    assert by_job["second"]["cache_hits"] == 3 and by_job["second"]["tokens_saved"] > 0
    assert all(isinstance(row["duration_s"], float) for row in by_job.values())


def test_steplog_audit_json_is_the_same_document_on_both_stores(runs):
    for job in runs.jobs:
        on_sqlite = steplog_here(runs.sqlite_db, "audit", job, "--json", cwd=runs.root)
        on_postgres = steplog_here(runs.postgres_url, "audit", job, "--json", cwd=runs.root)
        assert (on_sqlite.code, on_postgres.code) == (0, 0), (on_sqlite.err, on_postgres.err)
        lite, pg = json.loads(on_sqlite.out), json.loads(on_postgres.out)
        found = same_document(lite, pg)
        assert found == [], "\n".join(found[:20])
        assert lite["step_runs"] and lite["llm_calls"]


def test_one_jobs_rows_are_equal_and_the_same_as_the_whole_views(runs):
    """`WHERE job_id = ...` (what `steplog audit` asks) gives that job's rows of the whole view."""
    for view in ("llm_calls", "step_runs", "file_writes", "job_summary"):
        columns, everything = rows_of(runs.postgres, view)
        for job in runs.jobs:
            where = f" WHERE job_id = '{job}'"
            assert differences(view, runs.sqlite, runs.postgres, where) == []
            _, mine = rows_of(runs.postgres, view, where)
            at = columns.index("job_id")
            assert sorted(mine, key=repr) == sorted(
                (r for r in everything if r[at] == job), key=repr
            )


# -- generated logs ---------------------------------------------------------------------------


def without_nul_in_pipeline_names(batches: list[Batch]) -> list[Batch]:
    """PostgreSQL text cannot hold NUL, and the `jobs` projection stores job.created's pipeline
    name as text: the PostgreSQL store refuses such a name. NUL stays everywhere else in event
    data, where the views must read it as SQLite's do."""
    out = []
    for batch in batches:
        events = []
        for ev in batch.events:
            if isinstance(ev.data, JobCreated) and "\x00" in ev.data.pipeline:
                data = ev.data.model_copy(update={"pipeline": ev.data.pipeline.replace("\x00", "")})
                ev = dataclasses.replace(ev, data=data)
            events.append(ev)
        out.append(batch._replace(events=events))
    return out


@settings(max_examples=30, deadline=None)
@given(interleaved_batches().map(without_nul_in_pipeline_names))
def test_every_view_and_audit_document_is_equal_on_both_stores_for_generated_logs(
    pg_cluster, batches
):
    with fresh_store() as lite, postgres_store(pg_cluster) as pg:
        written = append_batches(lite, batches)
        assert append_batches(pg, batches) == written  # the same seqs, versions and hashes
        assert_views_equal(lite, pg)
        for job in sorted({ev.job_id for ev in written}):
            found = same_document(audit_document(lite, job), audit_document(pg, job))
            assert found == [], "\n".join(found[:20])


def test_text_with_a_nul_ends_there_as_on_sqlite_and_the_rest_of_the_event_reads(pg_cluster):
    """SQLite's json_extract ends a string at its first NUL; PostgreSQL cannot unescape one at
    all. The views cut the string there on both, and read the event's other fields; an escaped
    backslash before the NUL, and a literal backslash-u text, are left alone."""
    from steplog.eventstore.events import NewEvent, StepFailed, StepStarted
    from tests.strategies import job_created

    error = "bad \x00 byte"
    error_type = "kept: \\u0000 as text, cut after two backslashes: \\\\\x00 gone \x00"
    events = [
        job_created(["a"]),
        NewEvent.of(StepStarted(attempt=2, fingerprint="f\x00"), step="a"),
        NewEvent.of(
            StepFailed(error=error, error_type=error_type, attempt=2, duration_s=0.5), step="a"
        ),
    ]
    with fresh_store() as lite, postgres_store(pg_cluster) as pg:
        lite.append("j", events, expected_version=0)
        pg.append("j", events, expected_version=0)
        assert_views_equal(lite, pg)
        columns, rows = rows_of(pg, "step_runs")
        (row,) = [dict(zip(columns, r)) for r in rows]
    assert row["error"] == "bad "
    assert row["error_type"] == "kept: \\u0000 as text, cut after two backslashes: \\\\"
    assert (row["status"], row["attempt"], row["duration_s"]) == ("failed", 2, 0.5)


# -- WHERE job_id = ... stays an index lookup ---------------------------------------------------


def scans_of_events(plan: dict) -> list[dict]:
    found = [plan] if plan.get("Relation Name") == "events" else []
    for child in plan.get("Plans", []):
        found += scans_of_events(child)
    return found


PAD_COPIES = 300  # other jobs beside the audit runs: about 19,000 events in all


@pytest.fixture(scope="module")
def large_log(made_on_sqlite, pg_cluster) -> Iterator[str]:
    """The audit runs among 300 copies of themselves under other job ids, analysed: a log in
    which reading every event costs what it does in use. (On the audit runs' 62 events alone,
    the planner may rightly walk a whole index, depending on when autovacuum last analysed the
    table, which says nothing about the views' conditions.)"""
    import psycopg

    name = pg_cluster.create_database()
    url = pg_cluster.url(name)
    try:
        with closing(open_store(url)) as pg:
            copy_log(made_on_sqlite.sqlite, pg)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO events (seq, job_id, version, ts, level, type, step, data, "
                "prev_hash, hash) "
                "SELECT seq + n * 1000000, job_id || '_pad' || n, version, ts, level, type, "
                "step, data, prev_hash, hash FROM events, generate_series(1, %s) AS n",
                (PAD_COPIES,),
            )
            conn.execute("ANALYZE")
        yield url
    finally:
        pg_cluster.drop_database(name)


@pytest.mark.parametrize("view", ["llm_calls", "step_runs", "file_writes", "job_summary"])
def test_one_jobs_rows_are_read_through_an_index_never_a_scan_of_every_event(large_log, view):
    """Every read of events in the plan of one job's rows has an index condition: a condition
    the window did not let through would leave a full scan (or a full index scan without
    one)."""
    import psycopg

    with psycopg.connect(large_log) as conn, conn.transaction():
        (plan,) = conn.execute(
            f"EXPLAIN (FORMAT JSON) SELECT * FROM {view} WHERE job_id = %s", ("first",)
        ).fetchone()[0]
    scans = scans_of_events(plan["Plan"])
    assert scans
    for scan in scans:
        condition = scan.get("Index Cond") or scan.get("Recheck Cond")
        assert scan["Node Type"] != "Seq Scan" and condition, scan
    job_scans = [s for s in scans if "job_id" in (s.get("Index Cond") or s.get("Recheck Cond"))]
    assert job_scans  # the view's own read of the job


# -- the README's recipes, in psql ------------------------------------------------------------

README = (ROOT / "README.md").read_text()
POSTGRES_LABEL = "PostgreSQL: "


def statements(block: str) -> list[str]:
    found, current = [], ""
    for line in block.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            found.append(current.strip())
            current = ""
    return found


def recipes(fence: str) -> dict[str, str]:
    """title (a recipe's first line, without `--` and the PostgreSQL label) -> its SQL."""
    blocks = re.findall(rf"```{fence}\n(.*?)```", README, re.DOTALL)
    found = {}
    for block in blocks:
        for statement in statements(block):
            title = statement.splitlines()[0].removeprefix("--").strip()
            found[title.removeprefix(POSTGRES_LABEL)] = statement
    return found


SQLITE_RECIPES = recipes("sql")
POSTGRES_RECIPES = recipes("sql postgresql")


def test_every_postgresql_recipe_is_labelled_and_stands_for_a_sqlite_one():
    assert SQLITE_RECIPES and POSTGRES_RECIPES
    assert set(POSTGRES_RECIPES) <= set(SQLITE_RECIPES)
    for title, statement in POSTGRES_RECIPES.items():
        assert statement.startswith(f"-- {POSTGRES_LABEL}{title}\n"), statement[:80]
        assert statement != SQLITE_RECIPES[title]
    section = README[README.index("## Auditing with SQL") : README.index("## Guarantees")]
    assert "```sql postgresql\n" in section


def _comparable(value: Any) -> Any:
    """A recipe's value as both drivers should agree on it: a PostgreSQL sum of bigint is
    numeric (Decimal), SQLite's an int; a blob is bytes on both."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


@pytest.mark.parametrize("title", sorted(SQLITE_RECIPES))
def test_each_readme_recipe_runs_in_psql_and_answers_as_on_sqlite(
    made_on_sqlite, pg_cluster, title
):
    def concrete(sql: str) -> str:  # as tests/test_readme.py fills in a recipe
        return sql.replace("qwen2.5-coder-7b", "offline-1").replace("'JOB'", "'first'")

    lite_sql = concrete(SQLITE_RECIPES[title])
    pg_sql = concrete(POSTGRES_RECIPES.get(title, SQLITE_RECIPES[title]))
    dbname = made_on_sqlite.postgres_url.rsplit("/", 1)[1]
    done = pg_cluster.psql(dbname, pg_sql)
    assert done.returncode == 0 and done.stderr == "", pg_cluster.safe(done.stderr)
    conn = sqlite3.connect(f"file:{made_on_sqlite.sqlite_db}?mode=ro", uri=True)
    try:
        expected = [tuple(map(_comparable, r)) for r in conn.execute(lite_sql).fetchall()]
    finally:
        conn.close()
    with made_on_sqlite.postgres.reading() as pg:
        got = [tuple(map(_comparable, r)) for r in pg.execute(pg_sql).fetchall()]
    assert got == expected
    assert bool(done.stdout.strip()) == bool(got)
