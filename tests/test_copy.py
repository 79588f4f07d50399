"""`steplog copy SRC DST` (commands/copy.py): a whole database, SQLite and PostgreSQL either side,
on real files and the tests' own PostgreSQL cluster (tests/postgres_cluster.py), with databases
made by real runs of the example pipeline on the offline provider.

The source is built once per module in two stages: stage 1 (job `first`; job `failing` fails at
`docs`), then stage 2 on top of it (job `second`; `failing` resumed with the pipeline fixed; job
`forked`, a fork of `first` at builder, resumed). A copy of the stage-1 file is kept: each of its
jobs is a prefix of the final file's, and its seqs are the final file's first ones.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import pytest

from steplog import Steplog
from steplog.commands import copy as copying
from steplog.commands.copy import CopyRefused, copy_database
from steplog.eventstore import open_event_store
from steplog.eventstore.record import check_chain
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.projections.store import open_store, table_rows
from steplog.projections.tables import TABLE_PROJECTIONS
from tests.cli_inprocess import assert_refused_in_one_line, steplog_here
from tests.on_disk import EXAMPLE

JOBS_STAGE_1 = ["first", "failing"]
JOBS = ["first", "failing", "second", "forked"]


# -- the source database, made by real runs ------------------------------------------------------


def _build_source(root: Path) -> tuple[Path, Path]:
    """(stage-1 file, final file): see the module's docstring."""
    failing_pipeline = root / "failing.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    anchor = '[steps.docs]\nneeds = ["builder"]\nprovider = "local"\n'
    assert anchor in text
    failing_pipeline.write_text(text.replace(anchor, anchor + "options = { fail = true }\n"))
    final = root / "source.db"
    ws = root / "workspaces"
    with Steplog(final) as sl:
        assert sl.run(EXAMPLE, {"idea": "x"}, "first", ws / "first").status == "succeeded"
        failed = sl.run(failing_pipeline, {"idea": "y"}, "failing", ws / "failing")
        assert failed.status == "failed"
    stage_1 = root / "stage1.db"
    shutil.copyfile(final, stage_1)  # closed: SQLite checkpointed its WAL into the file
    with Steplog(final) as sl:
        assert sl.run(EXAMPLE, {"idea": "z"}, "second", ws / "second").status == "succeeded"
        assert sl.resume("failing", pipeline=EXAMPLE).status == "succeeded"
        sl.fork("first", "step.succeeded:builder", "forked", ws / "forked")
        assert sl.resume("forked").status == "succeeded"
    return stage_1, final


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build_source(tmp_path_factory.mktemp("copy-source"))


@pytest.fixture
def source(built: tuple[Path, Path], tmp_path: Path) -> Path:
    """This test's own copy of the final source file."""
    return Path(shutil.copyfile(built[1], tmp_path / "src.db"))


@pytest.fixture
def stage_1(built: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copyfile(built[0], tmp_path / "stage1.db"))


# -- what a database holds -----------------------------------------------------------------------


def _open_plain(location: str | Path) -> Any:
    if isinstance(location, Path):
        return SQLiteEventStore(location, read_only=True)
    return open_event_store(location, create=False)


def dump(location: str | Path) -> dict[str, Any]:
    """Everything a copy promises to carry: each event as stored, the stream heads, every blob
    (by its sha256, size and content hash) and every projection table's rows."""
    store = _open_plain(location)
    try:
        return {
            "events": [tuple(ev) for ev in store.read_all()],
            "heads": store.stream_heads(),
            "blobs": [
                (sha, size, hashlib.sha256(content).hexdigest())
                for sha, size, content in store.all_blobs()
            ],
            "tables": {
                p.table: sorted(tuple(row) for row in table_rows(store, p))
                for p in TABLE_PROJECTIONS
            },
        }
    finally:
        store.close()


def without_seq(events: list[tuple]) -> list[tuple]:
    return [ev[1:] for ev in events]


def assert_same_database(a: dict[str, Any], b: dict[str, Any], *, same_seqs: bool = True) -> None:
    assert without_seq(a["events"]) == without_seq(b["events"])
    if same_seqs:
        assert a["events"] == b["events"]
        assert a["heads"] == b["heads"]
        assert a["tables"] == b["tables"]
    else:
        assert {j: h[:2] for j, h in a["heads"].items()} == {
            j: h[:2] for j, h in b["heads"].items()
        }
    assert a["blobs"] == b["blobs"]


def copy_cli(src: str | Path, dst: str | Path, *args: str) -> Any:
    """`steplog copy SRC DST ARGS` in this process (--db points nowhere: copy does not use it)."""
    return steplog_here(Path("/nonexistent/unused.db"), "copy", str(src), str(dst), *args)


def verify_ok(location: str | Path) -> None:
    done = steplog_here(location, "verify")  # type: ignore[arg-type]
    assert done.code == 0 and done.out.startswith("ok: "), (done.out + done.err)[-2000:]


def statuses(location: str | Path) -> dict[str, str]:
    found = {}
    for job in JOBS:
        text = steplog_here(location, "status", job)  # type: ignore[arg-type]
        document = steplog_here(location, "status", job, "--json")  # type: ignore[arg-type]
        assert text.code == 0 and document.code == 0, text.err + document.err
        found[job] = text.out + document.out
    return found


# -- SQLite to SQLite ----------------------------------------------------------------------------


def test_a_copy_into_a_new_file_holds_every_event_blob_and_table_as_the_source(source, tmp_path):
    dst = tmp_path / "new" / "dst.db"
    done = copy_cli(source, dst)
    assert done.code == 0, done.err
    assert done.err.startswith(f"created new database {dst}\n")
    assert done.out == (
        f"copied 4 jobs ({len(dump(source)['events'])} events, {len(dump(source)['blobs'])} blobs)"
        f" from {source} to {dst}; skipped 0 already there\n"
    )
    assert_same_database(dump(source), dump(dst))  # every seq kept: DST was empty
    verify_ok(source)
    verify_ok(dst)
    assert statuses(dst) == statuses(source)


def test_copying_again_copies_nothing_and_says_so_in_json(source, tmp_path):
    dst = tmp_path / "dst.db"
    assert copy_cli(source, dst).code == 0
    before = dump(dst)
    again = copy_cli(source, dst, "--json")
    assert again.code == 0, again.err
    report = json.loads(again.out)
    assert report["jobs_skipped"] == 4 and report["jobs_copied"] == 0
    assert (report["events"], report["blobs"], report["created"]) == (0, 0, False)
    assert report["blobs_present"] == len(before["blobs"])
    assert report["source_seq"] == len(before["events"])
    assert dump(dst) == before
    quiet = copy_cli(source, dst, "-q")
    assert quiet.err == "" and quiet.out.endswith("; skipped 4 already there\n")


def test_jobs_of_which_dst_holds_a_prefix_are_completed_in_the_sources_order(
    stage_1, source, tmp_path
):
    dst = tmp_path / "dst.db"
    assert copy_cli(stage_1, dst).code == 0
    assert_same_database(dump(stage_1), dump(dst))
    done = copy_cli(source, dst, "--json")
    assert done.code == 0, done.err
    report = json.loads(done.out)
    assert (report["jobs_new"], report["jobs_completed"], report["jobs_skipped"]) == (2, 1, 1)
    assert report["events"] == len(dump(source)["events"]) - len(dump(stage_1)["events"])
    # stage 1's seqs are the source's first ones, and the rest arrived in the source's order
    assert_same_database(dump(source), dump(dst))
    verify_ok(dst)


def test_small_batches_page_through_events_and_blobs_alike(source, tmp_path, monkeypatch):
    monkeypatch.setattr(copying, "EVENT_BATCH", 7)
    monkeypatch.setattr(copying, "BLOB_PAGE", 5)
    monkeypatch.setattr(copying, "BLOB_BATCH_BYTES", 1500)
    dst = tmp_path / "dst.db"
    report = copy_database(source, dst)
    assert report.events == len(dump(source)["events"]) and report.blobs > 5
    assert_same_database(dump(source), dump(dst))
    verify_ok(dst)


def test_a_job_that_differs_at_dst_is_refused_naming_it_and_nothing_is_written(
    source, stage_1, tmp_path
):
    dst = tmp_path / "dst.db"
    with Steplog(dst) as sl:  # another job under the same name
        assert sl.run(EXAMPLE, {"idea": "other"}, "second", tmp_path / "ws").status == "succeeded"
    before = dump(dst)
    done = copy_cli(source, dst)
    assert_refused_in_one_line(done, mentions="job second at ")
    assert f"differs from {source}" in done.err and "nothing was copied" in done.err
    assert dump(dst) == before  # not even the other jobs: refused up front

    ahead = tmp_path / "ahead.db"  # DST holds more of `failing` than SRC (stage 1) does
    assert copy_cli(source, ahead).code == 0
    before = dump(ahead)
    done = copy_cli(stage_1, ahead)
    assert_refused_in_one_line(done, mentions="job failing at ")
    assert "DST has " in done.err and " more: version " in done.err
    assert dump(ahead) == before


def test_several_jobs_that_differ_are_named_in_one_line(source, tmp_path):
    dst = tmp_path / "dst.db"
    with Steplog(dst) as sl:
        for job in JOBS:
            assert sl.run(EXAMPLE, {"idea": "q"}, job, tmp_path / job).status == "succeeded"
    done = copy_cli(source, dst)
    assert_refused_in_one_line(done, mentions="4 jobs at ")
    assert "first (" in done.err and "failing (" in done.err and "and 1 more" in done.err


def _tamper_sqlite(path: Path, job: str, version: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER events_append_only_update")
        conn.execute(
            "UPDATE events SET data = json_set(data, '$.tampered', 1)"
            " WHERE job_id = ? AND version = ?",
            (job, version),
        )
    finally:
        conn.close()


def test_a_broken_chain_at_src_is_refused_naming_the_job_before_anything_is_written(
    source, tmp_path
):
    _tamper_sqlite(source, "second", 3)
    dst = tmp_path / "dst.db"
    done = copy_cli(source, dst)
    assert_refused_in_one_line(done, mentions="job second at ")
    assert "has a broken hash chain (version 3: hash does not match the fields)" in done.err
    assert not dst.exists()  # refused before DST was created

    existing = tmp_path / "existing.db"
    with Steplog(existing) as sl:
        sl.run(EXAMPLE, {"idea": "w"}, "other", tmp_path / "ws")
    before = dump(existing)
    assert_refused_in_one_line(copy_cli(source, existing), mentions="job second at ")
    assert dump(existing) == before


def test_a_missing_or_foreign_src_and_dst_equal_to_src_are_refused_writing_nothing(
    source, tmp_path
):
    dst = tmp_path / "dst.db"
    missing = copy_cli(tmp_path / "nope.db", dst)
    assert_refused_in_one_line(missing, mentions=f"no database at {tmp_path / 'nope.db'}")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    assert_refused_in_one_line(copy_cli(foreign, dst), mentions="is not a steplog database")
    text = tmp_path / "text.db"
    text.write_text("hello")
    assert_refused_in_one_line(copy_cli(text, dst), mentions="is not a SQLite database")
    assert not dst.exists()
    before = source.read_bytes()
    same = copy_cli(source, tmp_path / "." / "src.db")
    assert_refused_in_one_line(same, mentions="SRC and DST are the same database")
    (tmp_path / "link.db").symlink_to(source)
    assert_refused_in_one_line(copy_cli(source, tmp_path / "link.db"), mentions="same database")
    assert source.read_bytes() == before
    assert_refused_in_one_line(copy_cli(source, foreign), mentions="is not a steplog database")


def test_a_writer_at_dst_during_the_copy_conflicts_instead_of_interleaving(
    source, tmp_path, monkeypatch
):
    """Another process appending to a job being copied: the batch on top of it is refused
    (its expected_version no longer holds) and the other writer's event stays alone."""
    monkeypatch.setattr(copying, "EVENT_BATCH", 5)
    monkeypatch.setattr(copying, "PROGRESS_EVERY_S", 0.0)  # a progress line after every batch
    dst = tmp_path / "dst.db"
    writer: list[Any] = []

    def intrude(line: str) -> None:
        if line.startswith("... ") and " of " in line and not writer:
            other = open_store(dst)
            writer.append(other)
            job = next(iter(other.stream_heads()))
            first = next(other.read_job(job))
            other.append_rows(job, [(first.ts, "INFO", "job.resumed", None, "{}")])

    with pytest.raises(CopyRefused, match="was appended to at .* while it was being copied"):
        copy_database(source, dst, progress=intrude)
    writer[0].close()
    store = SQLiteEventStore(dst, read_only=True)
    try:
        assert check_chain(store.read_all()) == []
    finally:
        store.close()
    again = copy_cli(source, dst)  # the job now differs from SRC's: refused, named
    assert_refused_in_one_line(again, mentions="differs from")


def test_blobs_are_read_a_bounded_batch_at_a_time(tmp_path, monkeypatch):
    """Four 12 MiB blobs (48 MiB): with batches of one blob each, the copy's peak Python memory
    stays near one blob's size, never the sum."""
    monkeypatch.setattr(copying, "BLOB_BATCH_BYTES", 1)
    src = tmp_path / "big.db"
    size = 12 * 2**20
    with open_store(src) as store:
        for n in range(4):
            store.put_blob(bytes([n]) * size)
    dst = tmp_path / "dst.db"
    tracemalloc.start()
    try:
        report = copy_database(src, dst)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.blobs, report.blob_bytes) == (4, 4 * size)
    assert peak < 2.5 * size, f"peak {peak / 2**20:.1f} MiB"
    assert dump(dst)["blobs"] == dump(src)["blobs"]


def test_a_blob_whose_content_does_not_match_its_sha256_stops_the_copy(source, tmp_path):
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("DROP TRIGGER blobs_immutable_update")
    sha = conn.execute("SELECT sha256 FROM blobs ORDER BY sha256 LIMIT 1").fetchone()[0]
    conn.execute("UPDATE blobs SET content = X'00' WHERE sha256 = ?", (sha,))
    conn.close()
    dst = tmp_path / "dst.db"
    done = copy_cli(source, dst, "--quiet")
    assert done.code == 2
    assert done.err.startswith(f"created new database {dst}\nerror: blob {sha[:12]} at {source}")
    assert done.err.count("\n") == 2 and "does not match its sha256" in done.err
    assert dump(dst)["events"] == []  # blobs go first: no event was written


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def pg_second(pg_cluster: Any) -> Iterator[str]:
    """A second empty database on the cluster, as a URL."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)


def _no_password(pg_cluster: Any, *outcomes: Any) -> None:
    for outcome in outcomes:
        text = outcome.out + outcome.err
        assert not pg_cluster.contains_password(text), pg_cluster.safe(text)


@pytest.mark.slow  # the PostgreSQL cluster is a server process
def test_sqlite_to_postgres_and_back_keeps_every_event_blob_table_and_status(
    source, pg_url, pg_cluster, tmp_path
):
    to_pg = copy_cli(source, pg_url)
    assert to_pg.code == 0, pg_cluster.safe(to_pg.err)
    where = pg_url.rsplit("@", 1)[1]  # 127.0.0.1:PORT/dbname
    assert to_pg.err.startswith(f"created new database {where}\n")
    assert to_pg.out.endswith(f" from {source} to {where}; skipped 0 already there\n")
    assert_same_database(dump(source), dump(pg_url))
    verify_ok(pg_url)  # type: ignore[arg-type]
    again = copy_cli(source, pg_url, "--json")
    assert again.code == 0 and json.loads(again.out)["events"] == 0

    back = tmp_path / "back.db"
    from_pg = copy_cli(pg_url, back)
    assert from_pg.code == 0, pg_cluster.safe(from_pg.err)
    assert from_pg.out.startswith("copied 4 jobs (") and f" from {where} to {back};" in from_pg.out
    assert_same_database(dump(source), dump(back))
    verify_ok(back)
    assert statuses(source) == statuses(pg_url) == statuses(back)
    _no_password(pg_cluster, to_pg, again, from_pg)


@pytest.mark.slow
def test_postgres_to_postgres_completes_prefixes_and_refuses_a_job_that_differs(
    stage_1, source, pg_url, pg_second, pg_cluster, tmp_path
):
    assert copy_cli(stage_1, pg_url).code == 0
    assert copy_cli(source, pg_second).code == 0
    done = copy_cli(pg_second, pg_url, "--json")  # DST holds stage 1: a prefix of every job
    assert done.code == 0, pg_cluster.safe(done.err)
    report = json.loads(done.out)
    assert (report["jobs_new"], report["jobs_completed"], report["jobs_skipped"]) == (2, 1, 1)
    assert_same_database(dump(source), dump(pg_url))
    verify_ok(pg_url)  # type: ignore[arg-type]
    same = copy_cli(pg_url, pg_url + "?connect_timeout=5")  # another URL, the same database
    assert_refused_in_one_line(same, mentions="SRC and DST are the same database")

    other = tmp_path / "other.db"
    with Steplog(other) as sl:
        sl.run(EXAMPLE, {"idea": "other"}, "forked", tmp_path / "ws")
    third = pg_cluster.url(pg_cluster.create_database())
    assert copy_cli(other, third).code == 0
    before = dump(third)
    refused = copy_cli(pg_second, third)
    assert_refused_in_one_line(refused, mentions="job forked at ")
    assert dump(third) == before
    _no_password(pg_cluster, done, refused)


@pytest.mark.slow
def test_a_broken_chain_in_a_postgres_src_is_refused_and_an_empty_src_too(
    source, pg_url, pg_second, pg_cluster, tmp_path
):
    import psycopg

    empty = copy_cli(pg_second, tmp_path / "none.db")
    assert_refused_in_one_line(empty, mentions="no steplog database at ")
    assert not (tmp_path / "none.db").exists()
    assert copy_cli(source, pg_url).code == 0
    with psycopg.connect(pg_url) as conn:  # the superuser, behind the trigger's back
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        conn.execute(
            "UPDATE events SET data = '{\"tampered\":1}'::json WHERE job_id = 'first'"
            " AND version = 2"
        )
    dst = tmp_path / "dst.db"
    done = copy_cli(pg_url, dst)
    assert_refused_in_one_line(done, mentions="job first at ")
    assert "broken hash chain (version 2:" in done.err
    assert not dst.exists()
    _no_password(pg_cluster, empty, done)
