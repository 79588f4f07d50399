"""The store contract: one abstract test class, run against every backend (tests/test_store_contract.py
subclasses it for SQLite and for PostgreSQL). Anchor: eventsourcing's tests/persistence.py.

A subclass provides the hooks:
- fresh_location(): a context manager giving a new, empty place for a log (a file path, a
  database URL) and removing it afterwards;
- make_store(location, **options): the store on it (by default open_event_store);
- raw_statement(location, sql): run one SQL statement beside steplog, as a person with the
  database's own client would; returns the database's error text, or None if it ran;
- tamper(location, job_id, version, data_json): rewrite one event's data behind the triggers'
  back (what an attacker with the file or the superuser could do);
- max_examples: hypothesis examples per property (a PostgreSQL database per example costs more).

Writers that must really race run in processes of their own (tests/store_workers.py, spawned:
the PostgreSQL pool has threads, which fork does not carry), start together at a barrier, and
report to a queue; every wait is bounded.
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
import time
from contextlib import AbstractContextManager, closing, contextmanager
from typing import Any, Callable, ClassVar, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.eventstore import open_event_store
from steplog.eventstore.events import InvalidEvent, NewEvent
from steplog.eventstore.record import (
    GENESIS_HASH,
    TEXT_SLICE_CHARS,
    StoredEvent,
    StoreError,
    TextBlob,
    VersionConflict,
    blob_of_text,
    blob_sha256,
    blob_size,
    check_chain,
)
from steplog.projections import manifest
from tests import store_workers
from tests.store_workers import created, started
from tests.strategies import append_batches, by_job, interleaved_batches, job_batches

PROCESS_TIMEOUT_S = 180
FOLLOW_TIMEOUT_S = 180


def prepared(events: list[NewEvent]) -> list[tuple[str, str, str, str | None, str]]:
    """What append_txn takes: (ts, level, type, step, data_json) per event."""
    return [(e.ts, e.level, e.type, e.step, e.data_json()) for e in events]


def run_processes(target: Callable[..., None], arguments: list[tuple]) -> list[tuple]:
    """Start one spawned process per argument tuple, all released together by a barrier;
    returns what each reported, in the order they reported. Bounded in time: a process that
    does not report fails the test, and every process is reaped (killed if it must be)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(arguments))
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*args, barrier, results), daemon=True)
        for args in arguments
    ]
    for process in processes:
        process.start()
    reports = []
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        for _ in processes:
            try:
                reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"a writer process did not report within {PROCESS_TIMEOUT_S} s")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        results.close()
    errors = [r[1] for r in reports if r[0] == "error"]
    assert not errors, errors[0]
    return reports


class StoreContract:
    """Every property a store backend must have. Not collected itself (no Test prefix)."""

    max_examples: ClassVar[int] = 20
    holds_nul_in_indexed_rows: ClassVar[bool] = True  # PostgreSQL's json indexes cannot

    # -- hooks ---------------------------------------------------------------------------------

    def fresh_location(self) -> AbstractContextManager[str]:
        raise NotImplementedError

    def make_store(self, location: str, **options: Any) -> Any:
        return open_event_store(location, **options)

    def raw_statement(self, location: str, sql: str) -> str | None:
        raise NotImplementedError

    def tamper(self, location: str, job_id: str, version: int, data_json: str) -> None:
        raise NotImplementedError

    # -- fixtures ------------------------------------------------------------------------------

    @pytest.fixture
    def location(self) -> Iterator[str]:
        with self.fresh_location() as location:
            yield location

    @pytest.fixture
    def store(self, location: str) -> Iterator[Any]:
        with closing(self.make_store(location)) as opened:
            yield opened

    @contextmanager
    def fresh_store(self, **options: Any) -> Iterator[Any]:
        with self.fresh_location() as location, closing(self.make_store(location, **options)) as s:
            yield s

    # -- round trip ----------------------------------------------------------------------------

    def test_arbitrary_batches_round_trip_equal_with_gapless_seqs_and_valid_chains(self):
        @settings(max_examples=self.max_examples, deadline=None)
        @given(interleaved_batches())
        def check(batches):
            with self.fresh_store() as store:
                returned = append_batches(store, batches)
                everything = list(store.read_all())
                per_job = {job: list(store.read_job(job)) for job in by_job(batches)}
                versions = {job: store.job_version(job) for job in per_job}
                last = store.last_seq()
                sent_blobs = {blob for batch in batches for blob in batch.blobs}
                blobs = store.find_blobs([blob_sha256(b) for b in sent_blobs])

            assert everything == returned  # StoredEvent equality: every field as appended
            assert [ev.seq for ev in everything] == list(range(1, len(everything) + 1))
            assert last == len(everything)
            assert check_chain(everything) == []
            for job, sent in by_job(batches).items():
                stored = per_job[job]
                assert stored == [ev for ev in everything if ev.job_id == job]
                assert versions[job] == len(sent) == len(stored)
                assert [e.data_json() for e in sent] == [ev.data_json for ev in stored]
                assert [(e.ts, e.level, e.type, e.step) for e in sent] == [
                    (ev.ts, ev.level, ev.type, ev.step) for ev in stored
                ]
                assert [ev.typed() for ev in stored] == [e.data for e in sent]
                assert stored[0].prev_hash == GENESIS_HASH
            assert blobs == {blob_sha256(b): b for b in sent_blobs}

        check()

    def test_a_nul_in_an_event_postgresql_indexes_is_refused_alike_and_nothing_is_written(
        self, store
    ):
        from steplog.eventstore.events import CacheMiss, LLMRequested, StepFailed

        store.append("j", [created("j")], expected_version=0)
        key = "a" * 64
        indexed = [
            CacheMiss(cache_key=key, parts={}, reason="why\x00"),
            LLMRequested(
                provider="p",
                kind="offline",
                model="m\x00",
                prompt_tokens=1,
                attempt=1,
                cache_key=key,
                prompt_sha256=key,
            ),
        ]
        for data in indexed:
            with pytest.raises(InvalidEvent, match=f"^{data.TYPE}: data holds a NUL character"):
                store.append("j", [NewEvent.of(data, "s")], blobs=[b"kept only with the events"])
        assert store.job_version("j") == 1 and store.last_seq() == 1
        assert store.find_blobs([blob_sha256(b"kept only with the events")]) == {}
        # elsewhere a NUL is data like any other, and a backslash before u0000 is no NUL
        fine = [
            NewEvent.of(StepFailed(error="a\x00b", error_type="t", attempt=1, duration_s=0.5), "s"),
            NewEvent.of(CacheMiss(cache_key=key, parts={}, reason="\\u0000"), "s"),
        ]
        stored = store.append("j", fine)
        assert [ev.typed() for ev in store.read_job("j", after_version=1)] == [e.data for e in fine]
        assert len(stored) == 2

    def test_a_copied_row_holding_such_a_nul_is_kept_where_the_database_can_hold_it(self, store):
        """Rows copied as they are (`steplog copy`, a fork) keep an older log's history: SQLite
        holds an llm.request with a NUL; PostgreSQL cannot, and says so in one line."""
        from steplog.eventstore.events import CacheMiss

        miss = NewEvent.of(CacheMiss(cache_key="k", parts={}), "s")
        row = (miss.ts, "INFO", "cache.miss", "s", miss.data_json().replace('"k"', '"k\\u0000"'))
        store.append("j", [created("j")], expected_version=0)
        if self.holds_nul_in_indexed_rows:
            (stored,) = store.append_rows("j", [row])
            assert stored.data_json == row[4] and store.job_version("j") == 2
        else:
            with pytest.raises(StoreError) as refused:
                store.append_rows("j", [row])
            assert "\n" not in str(refused.value) and store.job_version("j") == 1

    def test_read_job_and_read_all_bounds_select_exactly_what_lies_between(self):
        @settings(max_examples=self.max_examples, deadline=None)
        @given(job_batches(), st.data())
        def check(batches, data):
            with self.fresh_store() as store:
                returned = append_batches(store, batches)
                n = len(returned)
                after = data.draw(st.integers(0, n), label="after")
                until = data.draw(st.none() | st.integers(0, n + 2), label="until")
                job = returned[0].job_id
                by_version = list(store.read_job(job, after_version=after, until_version=until))
                by_seq = list(store.read_all(after_seq=after, until_seq=until))
            top = n if until is None else until
            wanted = [ev for ev in returned if after < ev.version <= top]
            assert by_version == wanted
            assert by_seq == [ev for ev in returned if after < ev.seq <= top]

        check()

    def test_reads_page_through_a_log_longer_than_one_batch(self, store, monkeypatch):
        monkeypatch.setattr(sys.modules[type(store).__module__], "READ_BATCH", 3)
        store.append("j", [created("j")] + [started(n) for n in range(1, 10)], expected_version=0)
        store.append("k", [created("k")], expected_version=0)
        assert [ev.version for ev in store.read_job("j")] == list(range(1, 11))
        assert [ev.seq for ev in store.read_all()] == list(range(1, 12))
        assert [ev.seq for ev in store.read_all(after_seq=4, until_seq=10)] == list(range(5, 11))
        assert [ev.seq for ev in store.read_all(after_seq=2, data_for=["job.created"])] == list(
            range(3, 12)
        )

    def test_read_all_data_for_blanks_the_others_data_and_every_hash(self, store):
        full = store.append("j", [created("j"), started(1)], expected_version=0)
        light = list(store.read_all(data_for=["step.started"]))
        assert light == [
            full[0]._replace(data_json="{}", prev_hash="", hash=""),
            full[1]._replace(prev_hash="", hash=""),
        ]

    def test_read_job_without_hashes_blanks_only_the_hashes(self, store, monkeypatch):
        monkeypatch.setattr(sys.modules[type(store).__module__], "READ_BATCH", 2)  # 2 + 2 pages
        full = store.append("j", [created("j"), *(started(i) for i in range(1, 5))])
        store.append("other", [created("other")])
        light = list(store.read_job("j", hashes=False, after_version=1, until_version=5))
        assert light == [ev._replace(prev_hash="", hash="") for ev in full[1:]]
        assert manifest.project("j", store.read_job("j", hashes=False)) == manifest.project(
            "j", store.read_job("j")
        )

    def test_an_empty_store_has_nothing_and_last_seq_zero(self, store):
        assert store.last_seq() == 0
        assert list(store.read_all()) == []
        assert list(store.read_job("nobody")) == []
        assert store.job_version("nobody") == 0
        assert not store.job_exists("nobody")

    def test_last_seq_job_version_and_job_exists_follow_appends(self, store):
        store.append("a", [created("a"), started(1)], expected_version=0)
        store.append("b", [created("b")])
        store.append("a", [started(2)], expected_version=2)
        assert store.last_seq() == 4
        assert (store.job_version("a"), store.job_version("b")) == (3, 1)
        assert store.job_exists("a") and store.job_exists("b")
        assert [ev.seq for ev in store.read_job("a")] == [1, 2, 4]

    def test_a_second_store_on_the_same_location_sees_every_append(self, location):
        with closing(self.make_store(location)) as one, closing(self.make_store(location)) as two:
            written = one.append("j", [created("j")], expected_version=0)
            assert list(two.read_all()) == written
            more = two.append("j", [started(1)], expected_version=1)
            assert list(one.read_job("j")) == written + more

    def test_an_empty_job_id_is_refused_and_an_empty_batch_writes_nothing(self, store):
        with pytest.raises(StoreError, match="job_id must not be empty"):
            store.append("", [created("x")])
        assert store.append("j", []) == []
        assert store.last_seq() == 0 and not store.job_exists("j")

    # -- optimistic concurrency ----------------------------------------------------------------

    def test_a_stale_expected_version_conflicts_and_writes_nothing(self, store):
        store.append("j", [created("j"), started(1)], expected_version=0)
        before = list(store.read_all())
        for stale in (0, 1, 3):
            with pytest.raises(VersionConflict, match="job j is at version 2"):
                store.append("j", [started(9)], expected_version=stale, blobs=[b"not stored"])
        assert list(store.read_all()) == before
        assert store.find_blobs([blob_sha256(b"not stored")]) == {}

    @pytest.mark.slow  # writer processes
    def test_writer_processes_racing_to_create_one_job_exactly_one_wins(self, location):
        with closing(self.make_store(location)):  # the schema exists before the race
            pass
        reports = run_processes(store_workers.race_to_create, [(location, "raced")] * 4)
        outcomes = sorted(r[0] for r in reports)
        assert outcomes == ["conflict", "conflict", "conflict", "won"]
        with closing(self.make_store(location)) as store:
            (only,) = list(store.read_all())
            assert (only.job_id, only.version, only.seq) == ("raced", 1, 1)

    @pytest.mark.slow  # writer processes
    def test_optimistic_writer_processes_on_one_job_leave_one_unbroken_chain(self, location):
        with closing(self.make_store(location)) as store:
            store.append("shared", [created("shared")], expected_version=0)
        writers, each = 3, 15
        reports = run_processes(
            store_workers.optimistic_appender, [(location, "shared", each)] * writers
        )
        assert [r[0] for r in reports] == ["done"] * writers
        with closing(self.make_store(location)) as store:
            events = list(store.read_job("shared"))
            assert [ev.version for ev in events] == list(range(1, writers * each + 2))
            assert check_chain(events) == []
            assert store.job_version("shared") == writers * each + 1
            assert [ev.seq for ev in store.read_all()] == list(range(1, writers * each + 2))

    # -- transactions --------------------------------------------------------------------------

    def test_appends_in_one_write_transaction_commit_together_or_not_at_all(self, store):
        with store.write_transaction() as conn:
            a = store.append_txn(conn, "a", prepared([created("a")]), 0, [b"one"])
            b = store.append_txn(conn, "b", prepared([created("b"), started(1)]), 0, [])
        assert list(store.read_all()) == a + b
        assert [ev.seq for ev in a + b] == [1, 2, 3]
        with pytest.raises(RuntimeError, match="changed my mind"):
            with store.write_transaction() as conn:
                store.append_txn(conn, "c", prepared([created("c")]), 0, [b"two"])
                raise RuntimeError("changed my mind")
        assert list(store.read_all()) == a + b
        assert not store.job_exists("c")
        assert store.find_blobs([blob_sha256(b"two")]) == {}

    def test_a_projector_sees_each_batch_in_its_transaction_and_its_failure_rolls_back(self):
        seen: list[list[StoredEvent]] = []

        def projector(conn: Any, stored: Any) -> None:
            seen.append(list(stored))
            if any(ev.job_id == "bad" for ev in stored):
                raise RuntimeError("projector refused")

        with self.fresh_store(projectors=[projector]) as store:
            good = store.append("good", [created("good")], expected_version=0)
            with pytest.raises(RuntimeError, match="projector refused"):
                store.append("bad", [created("bad")], expected_version=0)
            assert seen[0] == good and seen[1][0].job_id == "bad"
            assert list(store.read_all()) == good
            again = store.append("good", [started(1)], expected_version=1)
            assert again[0].seq == 2  # the rolled-back batch took no seq

    # -- append-only ---------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE events SET level = 'ERROR'",
            "UPDATE events SET data = '{}' WHERE seq = 1",
            "DELETE FROM events",
            "DELETE FROM events WHERE seq = 2",
            "UPDATE blobs SET size = 0",
        ],
    )
    def test_the_database_refuses_to_change_a_stored_row(self, location, statement):
        with closing(self.make_store(location)) as store:
            store.append("j", [created("j"), started(1)], expected_version=0, blobs=[b"b"])
            before = list(store.read_all()), store.get_blob(blob_sha256(b"b"))
        error = self.raw_statement(location, statement)
        assert error is not None, f"{statement!r} ran"
        assert "steplog:" in error and ("append-only" in error or "immutable" in error)
        with closing(self.make_store(location)) as store:
            assert (list(store.read_all()), store.get_blob(blob_sha256(b"b"))) == before

    # -- hash chain ----------------------------------------------------------------------------

    def test_the_chain_check_finds_an_edit_made_behind_the_triggers(self, location):
        with closing(self.make_store(location)) as store:
            store.append("j", [created("j"), started(1), started(2)], expected_version=0)
            store.append("k", [created("k")], expected_version=0)
            assert check_chain(store.read_all()) == []
        self.tamper(location, "j", 2, '{"attempt": 7, "fingerprint": "w"}')
        with closing(self.make_store(location)) as store:
            events = list(store.read_all())
        breaks = check_chain(events)
        assert [(b.job_id, b.version, b.seq, b.reason) for b in breaks] == [
            ("j", 2, 2, "hash does not match the fields")
        ]
        assert check_chain(ev for ev in events if ev.job_id == "k") == []

    # -- blobs ---------------------------------------------------------------------------------

    @pytest.mark.parametrize("content", [b"", b"hello", bytes(range(256)) * 40])
    def test_blobs_round_trip_byte_identical_and_are_stored_once(self, store, content):
        sha = store.put_blob(content)
        assert sha == blob_sha256(content)
        assert store.put_blob(content) == sha  # idempotent
        store.append("j", [created("j")], blobs=[content, content])
        assert store.get_blob(sha) == content
        assert store.get_blobs([sha, sha]) == {sha: content}
        assert store.find_blobs([sha]) == {sha: content}

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "small é ✓",
            "ascii answer. " * 300_000,  # 4.2 MB: written a slice at a time
            "é✓🙂 mixed widths " * 200_000,  # slices of 2**20 characters, 1–4 bytes each
        ],
        ids=["empty", "small", "large-ascii", "large-multibyte"],
    )
    def test_a_text_blob_is_stored_as_its_utf8_byte_for_byte(self, store, text):
        blob = blob_of_text(text)
        utf8 = text.encode("utf-8")
        assert isinstance(blob, TextBlob) == (len(text) >= TEXT_SLICE_CHARS)
        assert (blob_sha256(blob), blob_size(blob)) == (blob_sha256(utf8), len(utf8))
        assert store.put_blob(blob) == blob_sha256(utf8)
        store.append("j", [created("j")], blobs=[blob_of_text(text), utf8])  # already there
        assert store.get_blob(blob_sha256(utf8)) == utf8
        assert store.blob_index("", 10) == [(blob_sha256(utf8), len(utf8))]

    def test_a_text_that_is_not_valid_unicode_makes_no_blob(self):
        with pytest.raises(UnicodeEncodeError):
            blob_of_text("x" * TEXT_SLICE_CHARS + "\ud800")

    def test_a_missing_blob_is_a_store_error_and_find_blobs_leaves_it_out(self, store):
        present = store.put_blob(b"here")
        absent = blob_sha256(b"nowhere")
        with pytest.raises(StoreError, match=f"blob {absent[:12]} is missing"):
            store.get_blob(absent)
        with pytest.raises(StoreError, match=f"blob {absent[:12]} is missing"):
            store.get_blobs([present, absent])
        assert store.find_blobs([present, absent]) == {present: b"here"}
        assert store.find_blobs([]) == {}

    def test_many_blobs_come_back_in_few_queries(self, store):
        contents = [f"blob {n}".encode() for n in range(1200)]
        store.append("j", [created("j")], blobs=contents)
        shas = [blob_sha256(c) for c in contents]
        assert store.get_blobs(shas) == dict(zip(shas, contents))
        assert store.stored_blobs([*shas, blob_sha256(b"absent")]) == set(shas)

    def test_put_blobs_stores_a_batch_once_and_blob_index_pages_names_and_sizes(self, store):
        contents = [f"blob {n} ".encode() * n for n in range(12)] + [b"x" * (5 * 2**20)]
        store.put_blobs(contents)
        store.put_blobs(contents[:3])  # those already there are left as they are
        store.put_blobs([])
        sizes = {blob_sha256(c): len(c) for c in contents}
        pages, after = [], ""
        while page := store.blob_index(after, 5):
            pages.append(page)
            after = page[-1][0]
        assert [len(p) for p in pages] == [5, 5, 3]
        assert [pair for p in pages for pair in p] == sorted(sizes.items())
        assert store.find_blobs(list(sizes)) == {blob_sha256(c): c for c in contents}
        first, absent = min(sizes), blob_sha256(b"absent")
        assert store.stored_blobs([first, absent, first]) == {first}
        assert store.stored_blobs([]) == set()

    # -- the store object ----------------------------------------------------------------------

    def test_a_writable_store_says_so_and_closes_as_a_context_manager(self, location):
        with self.make_store(location) as store:
            store.require_writable()
            store.append("j", [created("j")])
        with self.make_store(location) as store:
            assert store.last_seq() == 1

    # -- following the log ---------------------------------------------------------------------

    def test_wait_for_events_returns_at_once_when_there_is_more_and_after_a_bound_if_not(
        self, store
    ):
        store.append("j", [created("j"), started(1)])
        assert store.wait_for_events(0, timeout=30) == 2
        assert store.wait_for_events(1, timeout=30) == 2
        assert store.wait_for_events(2, timeout=0.05) == 2  # nothing new: back after the bound

    @pytest.mark.slow  # writer processes
    def test_a_follower_sees_every_seq_of_concurrent_writers_in_order_and_none_late(self, location):
        """Writer processes append to jobs of their own while this process follows the log by
        seq (read_all after its cursor, then wait_for_events). Seqs have no gaps, so the
        follower must see cursor + 1 next, every time: a lower seq becoming visible after a
        higher one would show up as a jump. At the end, nothing appeared below its cursor."""
        writers, batches = 4, 30
        per_writer = 1 + sum(1 + n % 3 for n in range(batches))
        total = writers * per_writer
        with closing(self.make_store(location)) as follower:
            context = multiprocessing.get_context("spawn")
            barrier = context.Barrier(writers)
            results = context.Queue()
            processes = [
                context.Process(
                    target=store_workers.own_job_writer,
                    args=(location, f"w{n}", batches, barrier, results),
                    daemon=True,
                )
                for n in range(writers)
            ]
            for process in processes:
                process.start()
            seen: list[StoredEvent] = []
            jumps: list[tuple[int, int]] = []
            reports: list[tuple] = []
            deadline = time.monotonic() + FOLLOW_TIMEOUT_S
            try:
                # until every writer reported and one more read found nothing new, or a jump
                while not jumps and time.monotonic() < deadline:
                    cursor = seen[-1].seq if seen else 0
                    batch = list(follower.read_all(after_seq=cursor))
                    for ev in batch:
                        if ev.seq != cursor + 1:
                            jumps.append((cursor, ev.seq))
                        cursor = ev.seq
                    seen.extend(batch)
                    if batch:
                        continue
                    if len(reports) == writers:
                        break
                    follower.wait_for_events(cursor, timeout=0.5)
                    while len(reports) < writers:
                        try:
                            reports.append(results.get_nowait())
                        except queue.Empty:
                            break
            finally:
                for process in processes:
                    process.join(timeout=30)
                    if process.is_alive():
                        process.kill()
                        process.join(timeout=10)
                results.close()
            assert jumps == [], f"seqs seen out of order (cursor, next seen): {jumps[:5]}"
            assert [r[0] for r in reports] == ["done"] * writers, reports
            assert len(seen) == total, f"followed {len(seen)} of {total} events"
            assert list(follower.read_all()) == seen  # nothing appeared behind the cursor
        assert check_chain(seen) == []
        for n in range(writers):
            mine = [ev.version for ev in seen if ev.job_id == f"w{n}"]
            assert mine == list(range(1, per_writer + 1))

    # -- projection tables and the contract's reads --------------------------------------------

    def test_projection_tables_equal_a_fresh_fold_and_a_rebuild_rewrites_them_alike(self):
        """The store opened as the verbs open it (projections.store.open_store: the projectors
        of its dialect): after any appends, every projection table holds exactly what its fold
        of the log gives; emptied behind the store's back, rebuild brings back the same rows."""
        from steplog.projections.store import open_store, rebuild, table_rows
        from steplog.projections.tables import TABLE_PROJECTIONS

        def tables(store: Any) -> dict[str, list[tuple]]:
            return {p.table: sorted(table_rows(store, p), key=repr) for p in TABLE_PROJECTIONS}

        @settings(max_examples=self.max_examples, deadline=None)
        @given(interleaved_batches())
        def check(batches):
            with self.fresh_location() as location, closing(open_store(location)) as store:
                append_batches(store, batches)
                events = list(store.read_all())
                kept = tables(store)
                for table in kept:
                    assert self.raw_statement(location, f"DELETE FROM {table}") is None
                assert rebuild(store) == len(events)
                rebuilt = tables(store)
            for projection in TABLE_PROJECTIONS:
                state = projection.start()
                for ev in events:
                    projection.apply(state, ev)
                folded = sorted((tuple(r) for r in projection.rows(state)), key=repr)
                assert kept[projection.table] == folded, projection.table
                assert rebuilt[projection.table] == folded, projection.table

        check()

    def test_the_reads_beyond_a_job_answer_alike(self, store):
        """latest_job_id, stream_heads, logged_files, cache_runs and all_blobs: what the
        commands read besides a job's events, the same on every backend."""
        from steplog.eventstore.events import CacheMiss, FileWritten, parse_data

        s1, s2 = "1" * 64, "2" * 64

        assert store.latest_job_id() is None and store.stream_heads() == {}
        store.append("a", [created("a")])
        file_written = FileWritten(path="x/y.txt", sha256=s1, wrote=True, reason="created", size=3)
        again = FileWritten(path="x/y.txt", sha256=s2, wrote=True, reason="updated", size=4)
        miss = CacheMiss(cache_key="k1", parts={}, pipeline="p")
        store.append(
            "b",
            [created("b"), NewEvent.of(file_written, "s"), NewEvent.of(miss, "s")],
            blobs=[b"one", b"two"],
        )
        store.append("a", [NewEvent.of(again, "t"), NewEvent.of(miss, "s")])
        assert store.latest_job_id() == "a"
        heads = store.stream_heads()
        assert {job: head[0] for job, head in heads.items()} == {"a": 3, "b": 3}
        assert heads["a"][1] == list(store.read_job("a"))[-1].hash
        assert store.logged_files("b") == {"x/y.txt": ("s", s1)}
        assert store.logged_files("a") == {"x/y.txt": ("t", s2)}
        runs = store.cache_runs("p", "s", 10)
        assert [(job, seq) for seq, job, _ in runs] == [("a", 6), ("b", 4)]
        assert all(parse_data("cache.miss", data) == miss for *_, data in runs)
        assert store.cache_runs("q", "s", 10) == [] and store.cache_runs("p", "s", 1)[0][1] == "a"
        assert list(store.all_blobs()) == sorted(
            (blob_sha256(b), len(b), b) for b in (b"one", b"two")
        )
        assert {"events", "blobs", "streams"} <= store.table_names()
        version, problems = store.schema_problems()
        assert version >= 1 and problems == [] and store.integrity_problems() == []
