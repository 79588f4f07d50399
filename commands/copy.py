"""`steplog copy SRC DST`: a whole database to another one, SQLite or PostgreSQL either side.

What arrives at DST: every job's events exactly as SRC stores them (ts, level, type, step and
the data JSON text, so each hash chain is byte for byte SRC's), every blob, and the projection
tables, which DST's own projectors keep in each append transaction as for any append. SRC is
opened read-only and never written.

The order, in three passes:

1. Checks, before anything is written at DST. SRC is read once in seq order up to its last seq
   at the start (what a concurrent writer adds later is left for the next copy), recomputing
   every job's hash chain (eventstore.record.check_chain). Each job is then compared with DST's
   head for it (`stream_heads()`): not there (copied whole), there with the same last hash
   (skipped), a prefix of SRC's (the rest is appended, once DST's own chain of that job is
   checked), or anything else — another event at DST's last version, or DST longer than SRC.
   A broken chain at SRC or a job that differs at DST refuses the whole copy in one line naming
   the job(s): nothing is written anywhere, not even a new DST's schema.
2. Blobs: SRC's blob list is paged by sha256 (names and sizes only), those DST lacks are read in
   batches of at most BLOB_BATCH_BYTES (a larger blob alone), each checked against its sha256
   and size, and stored in one transaction per batch. Blobs go first, so no event ever points at
   a blob DST does not hold yet.
3. Events, read from SRC again in seq order, those DST lacks appended in that same order: runs
   of one job's consecutive events, several runs per transaction (at most EVENT_BATCH events),
   each run with expected_version (DST's version of the job as last seen), so a concurrent
   writer at DST conflicts instead of interleaving. Global order at DST is SRC's commit order:
   into an empty DST every event keeps its seq. Before each transaction commits, every hash
   DST computed is compared with SRC's: a chain that would differ is never committed.

Memory holds one batch of events or blobs and a few fields per job, never the database. An
interrupted copy leaves whole transactions behind (each job a prefix of SRC's); running it
again finishes it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from steplog.errors import Rejected
from steplog.eventstore.config import is_postgres_url
from steplog.eventstore.reads import BLOB_BATCH_BYTES, by_bytes
from steplog.eventstore.record import (
    ChainBreak,
    StoredEvent,
    StoreError,
    VersionConflict,
    blob_sha256,
    check_chain,
)
from steplog.projections.leases import worker_of
from steplog.words import counted

if TYPE_CHECKING:
    from steplog.eventstore.record import EventStore

EVENT_BATCH = 1000  # events per DST transaction
EVENT_BATCH_CHARS = 8 * 2**20  # and at most this much data JSON in one
BLOB_PAGE = 1000  # blob names and sizes per page of SRC's list
PROGRESS_EVERY_S = 2.0
SHOWN = 3  # jobs named in a refusal; the rest are counted

Say = Callable[[str], None]


class CopyRefused(Rejected):
    """The copy cannot go ahead (or on) as asked; one line, exit 2."""


@dataclass
class CopyReport:
    """What a copy did: the summary `steplog copy --json` prints."""

    source: str  # how SRC and DST are named: a path, or host:port/dbname (never a password)
    destination: str
    source_seq: int = 0  # SRC's last seq when the copy started: it copied up to there
    created: bool = False  # DST was created (a new SQLite file, or the schema in an empty database)
    jobs_copied: int = 0  # jobs_new + jobs_completed
    jobs_new: int = 0  # not at DST before: copied whole
    jobs_completed: int = 0  # a prefix was at DST: the rest appended
    jobs_skipped: int = 0  # already at DST with the same events
    events: int = 0  # events appended at DST
    blobs: int = 0  # blobs stored at DST
    blob_bytes: int = 0
    blobs_present: int = 0  # SRC's blobs DST held already

    def document(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        detail = f"{counted(self.events, 'event')}, {counted(self.blobs, 'blob')}"
        if self.jobs_completed:
            detail += f"; {counted(self.jobs_completed, 'job')} completed from a prefix"
        return (
            f"copied {counted(self.jobs_copied, 'job')} ({detail}) from {self.source} to"
            f" {self.destination}; skipped {self.jobs_skipped} already there"
        )


@dataclass
class _Job:
    """What the check pass keeps of one job of SRC: a few fields, however long the job."""

    version: int = 0
    last_hash: str = ""
    hash_at_dst: str | None = None  # SRC's hash at DST's version of the job
    dst_version: int = 0  # what DST holds: 0 = not there; its events up to here are skipped
    copy: bool = True


def copy_database(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    progress: Say | None = None,
    notice: Say | None = None,
) -> CopyReport:
    """Copy the database at `source` to `destination` (each a SQLite path or a postgresql://
    URL). `progress` receives progress lines, `notice` the line saying DST was created."""
    say = progress or (lambda _line: None)
    tell = notice or (lambda _line: None)
    _refuse_same_file(source, destination)
    src = _open_source(source)
    dst: EventStore | None = None
    try:
        _refuse_same_server(src, destination)
        dst = _open_destination(destination, create=False)
        if dst is not None:
            dst.require_writable()  # refused before the long read of SRC
        report = CopyReport(src.where, dst.where if dst else _name(destination))
        heads = dst.stream_heads() if dst is not None else {}
        report.source_seq = until = src.last_seq()
        jobs = _check_source(src, until, heads, report)
        if dst is not None:
            _check_destination(dst, jobs, heads, report)
        todo = [job for job in jobs.values() if job.copy]
        remaining = sum(job.version - job.dst_version for job in todo)
        # the streams of workers' leases are copied too, but they are not jobs to count
        counted_jobs = [job for job_id, job in jobs.items() if worker_of(job_id) is None]
        report.jobs_new = sum(1 for job in counted_jobs if job.copy and not job.dst_version)
        report.jobs_copied = sum(1 for job in counted_jobs if job.copy)
        report.jobs_completed = report.jobs_copied - report.jobs_new
        report.jobs_skipped = len(counted_jobs) - report.jobs_copied
        if dst is None:
            dst = _open_destination(destination, create=True)
            assert dst is not None
            report.destination = dst.where
            report.created = dst.created
            if dst.created:
                tell(f"created new database {dst.where}")
            elif dst.stream_heads():  # another process made it meanwhile, and wrote to it
                raise CopyRefused(
                    f"{dst.where} was created by another process while SRC was being checked;"
                    " nothing was copied (run the copy again to compare with what it holds)"
                )
        dst.require_writable()
        say(
            f"copying {counted(report.jobs_copied, 'job')} ({counted(remaining, 'event')}) from"
            f" {report.source} to {report.destination}; {report.jobs_skipped} already there"
        )
        _copy_blobs(src, dst, report, say)
        _copy_events(src, dst, jobs, until, remaining, report, say)
        return report
    finally:
        if dst is not None:
            dst.close()
        src.close()


# -- opening -------------------------------------------------------------------------------------


def _name(location: str | os.PathLike[str]) -> str:
    """How a database not opened yet is named: its path, or host:port/dbname."""
    if is_postgres_url(location):
        from steplog.eventstore.postgres import describe

        return describe(str(location))
    return str(location)


def _refuse_same_file(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    if is_postgres_url(source) or is_postgres_url(destination):
        return
    a, b = Path(source), Path(destination)
    same = a.resolve() == b.resolve()
    if not same and a.exists() and b.exists():
        same = os.path.samefile(a, b)
    if same:
        raise CopyRefused(f"SRC and DST are the same database ({destination}); nothing to copy")


def _refuse_same_server(src: EventStore, destination: str | os.PathLike[str]) -> None:
    """Two URLs naming one database (host, port and database name as libpq resolves them)."""
    if src.dialect == "postgresql" and is_postgres_url(destination):
        if _name(destination) == src.where:
            raise CopyRefused(f"SRC and DST are the same database ({src.where}); nothing to copy")


def _open_source(location: str | os.PathLike[str]) -> EventStore:
    """SRC, never to be written: a SQLite file opened read-only (refused when missing or not
    steplog's), a PostgreSQL database refused when steplog's tables are not there."""
    from steplog.eventstore import open_event_store

    if is_postgres_url(location):
        return open_event_store(location, create=False)
    from steplog.eventstore.sqlite import SQLiteEventStore

    path = Path(location)
    if not path.exists():
        raise CopyRefused(f"no database at {location}; nothing was copied")
    return SQLiteEventStore(path, read_only=True)


def _open_destination(location: str | os.PathLike[str], *, create: bool) -> EventStore | None:
    """DST with its projection tables, or None when it holds no log yet and `create` is False
    (a SQLite path with no file, or an empty one; a PostgreSQL database without steplog's
    tables): it is then created only once every check has passed."""
    from steplog.projections.store import open_store

    if is_postgres_url(location):
        from steplog.eventstore.errors import DatabaseNotCreated

        try:
            return open_store(location, create=create)
        except DatabaseNotCreated:
            if create:
                raise
            return None
    path = Path(location)
    if not create and (not path.exists() or (path.is_file() and path.stat().st_size == 0)):
        return None
    return open_store(path)


# -- the checks ----------------------------------------------------------------------------------


def _check_source(
    src: EventStore, until: int, heads: dict[str, tuple[int, str, int]], report: CopyReport
) -> dict[str, _Job]:
    """One pass over SRC up to `until`: every job's chain recomputed, and where each job's
    events end (the jobs in order of their first seq). Refuses a broken chain, naming its
    job(s)."""
    jobs: dict[str, _Job] = {}

    def noted(events: Iterable[StoredEvent]) -> Iterator[StoredEvent]:
        for ev in events:
            job = jobs.get(ev.job_id)
            if job is None:
                job = jobs[ev.job_id] = _Job()
            job.version, job.last_hash = ev.version, ev.hash
            head = heads.get(ev.job_id)
            if head is not None and head[0] == ev.version:
                job.hash_at_dst = ev.hash
            yield ev

    breaks = check_chain(noted(src.read_all(until_seq=until)))
    if breaks:
        first: dict[str, ChainBreak] = {}
        for found in breaks:
            first.setdefault(found.job_id, found)
        named = [(job, f"version {b.version}: {b.reason}") for job, b in first.items()]
        raise CopyRefused(
            _jobs_phrase(named, f"at {report.source}", "has a broken hash chain")
            + "; nothing was copied (steplog verify names every bad event)"
        )
    return jobs


def _check_destination(
    dst: EventStore,
    jobs: dict[str, _Job],
    heads: dict[str, tuple[int, str, int]],
    report: CopyReport,
) -> None:
    """Each job of SRC against DST's head for it: skipped, completed, or (refused up front,
    for every job) different."""
    differ: list[tuple[str, str]] = []
    for job_id, job in jobs.items():
        head = heads.get(job_id)
        if head is None:
            continue
        version, last_hash, _ = head
        job.dst_version = version
        if version > job.version:
            extra = counted(version - job.version, "event")
            differ.append((job_id, f"DST has {extra} more: version {version}, SRC {job.version}"))
        elif job.hash_at_dst != last_hash:
            differ.append((job_id, f"its event {version} is another one at DST"))
        elif version == job.version:
            job.copy = False
        else:  # a prefix of SRC's: the rest goes on top of it, once DST's own chain holds
            problem = _chain_problem(dst, job_id, version, last_hash)
            if problem:
                differ.append((job_id, problem))
    if differ:
        raise CopyRefused(
            _jobs_phrase(differ, f"at {report.destination}", f"differs from {report.source}")
            + "; nothing was copied"
        )


def _chain_problem(dst: EventStore, job_id: str, version: int, last_hash: str) -> str | None:
    """Why DST's events of the job are not the chain its head names, or None if they are."""
    last: list[StoredEvent] = []

    def kept(events: Iterable[StoredEvent]) -> Iterator[StoredEvent]:
        for ev in events:
            last[:] = [ev]
            yield ev

    breaks = check_chain(kept(dst.read_job(job_id)))
    if breaks:
        return f"its hash chain at DST breaks at version {breaks[0].version}: {breaks[0].reason}"
    if not last or (last[0].version, last[0].hash) != (version, last_hash):
        return "its events at DST do not end at its head"
    return None


def _jobs_phrase(named: list[tuple[str, str]], where: str, what: str) -> str:
    """`job J WHERE WHAT (why)`, or `3 jobs WHERE WHAT: a (why), b (why), c (why) and 2 more`
    (WHAT in the singular: its first word takes the plural)."""
    if len(named) == 1:
        job, why = named[0]
        return f"job {job} {where} {what} ({why})"
    verb, _, rest = what.partition(" ")
    plural = {"has": "have", "differs": "differ"}.get(verb, verb)
    shown = ", ".join(f"{job} ({why})" for job, why in named[:SHOWN])
    more = f" and {len(named) - SHOWN} more" if len(named) > SHOWN else ""
    return f"{len(named)} jobs {where} {plural} {rest}: {shown}{more}"


# -- blobs ---------------------------------------------------------------------------------------


def _copy_blobs(src: EventStore, dst: EventStore, report: CopyReport, say: Say) -> None:
    """Every blob of SRC that DST lacks, a bounded batch at a time."""
    ticker = _Ticker(say)
    after = ""
    while True:
        page = src.blob_index(after, BLOB_PAGE)
        if not page:
            return
        after = page[-1][0]
        present = dst.stored_blobs([sha for sha, _ in page])
        report.blobs_present += len(present)
        wanted = [(sha, size) for sha, size in page if sha not in present]
        for batch in by_bytes(wanted, BLOB_BATCH_BYTES):
            contents = _read_blobs(src, batch, report.source)
            dst.put_blobs(contents)
            report.blobs += len(contents)
            report.blob_bytes += sum(map(len, contents))
            del contents
            ticker.tick(
                lambda: f"... {counted(report.blobs, 'blob')} copied ({_mib(report.blob_bytes)})"
            )
        if len(page) < BLOB_PAGE:
            return


def _read_blobs(src: EventStore, batch: list[tuple[str, int]], where: str) -> list[bytes]:
    """The batch's content from SRC, each blob checked against its sha256 and size."""
    found = src.find_blobs([sha for sha, _ in batch])
    contents = []
    for sha, size in batch:
        content = found.pop(sha, None)
        if content is None:  # blobs are immutable: only a hand-made DELETE can do this
            raise CopyRefused(f"blob {sha[:12]} vanished from {where} during the copy")
        actual = blob_sha256(content)
        if actual != sha or len(content) != size:
            raise CopyRefused(
                f"blob {sha[:12]} at {where} does not match its sha256 and size (it hashes to"
                f" {actual[:12]}, {len(content)} bytes); the copy stopped before any event was"
                " written (steplog verify reports it)"
            )
        contents.append(content)
    return contents


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# -- events --------------------------------------------------------------------------------------


def _copy_events(
    src: EventStore,
    dst: EventStore,
    jobs: dict[str, _Job],
    until: int,
    remaining: int,
    report: CopyReport,
    say: Say,
) -> None:
    """SRC's events that DST lacks, in SRC's seq order, a transaction per batch."""
    ticker = _Ticker(say)
    versions = {job_id: job.dst_version for job_id, job in jobs.items() if job.copy}
    runs: list[list[StoredEvent]] = []  # consecutive events of one job each
    count = chars = 0
    for ev in src.read_all(until_seq=until):
        job = jobs.get(ev.job_id)
        if job is None or not job.copy or ev.version <= job.dst_version:
            continue
        if runs and runs[-1][-1].job_id == ev.job_id:
            runs[-1].append(ev)
        else:
            runs.append([ev])
        count += 1
        chars += len(ev.data_json)
        if count >= EVENT_BATCH or chars >= EVENT_BATCH_CHARS:
            _append_runs(dst, runs, versions, report)
            runs, count, chars = [], 0, 0
            ticker.tick(lambda: f"... {report.events} of {counted(remaining, 'event')} copied")
    if runs:
        _append_runs(dst, runs, versions, report)


def _append_runs(
    dst: EventStore,
    runs: list[list[StoredEvent]],
    versions: dict[str, int],
    report: CopyReport,
) -> None:
    """One DST transaction appending each run at its job's head; rolled back, nothing of it
    written, if a job moved at DST meanwhile or a hash would differ from SRC's."""
    appended = 0
    with _store_errors(dst), dst.write_transaction() as conn:
        for run in runs:
            job_id = run[0].job_id
            rows = [(ev.ts, ev.level, ev.type, ev.step, ev.data_json) for ev in run]
            try:
                stored = dst.append_txn(conn, job_id, rows, versions[job_id], ())
            except VersionConflict as exc:
                raise CopyRefused(
                    f"job {job_id} was appended to at {report.destination} while it was being"
                    f" copied ({exc}); this batch was not written"
                ) from exc
            for have, want in zip(stored, run):
                if (have.version, have.prev_hash, have.hash) != (
                    want.version,
                    want.prev_hash,
                    want.hash,
                ):
                    raise CopyRefused(
                        f"job {job_id}: event {want.version} would not hash at"
                        f" {report.destination} as it does at {report.source}; this batch was"
                        " not written"
                    )
            versions[job_id] = stored[-1].version
            appended += len(stored)
    report.events += appended


@contextmanager
def _store_errors(store: EventStore) -> Iterator[None]:
    """SQLite's own errors from a write transaction as the one-line StoreErrors the store
    raises elsewhere (PostgreSQL's store translates its own)."""
    try:
        yield
    except StoreError:
        raise
    except sqlite3.IntegrityError as exc:
        raise VersionConflict(f"{store.where}: another writer appended first ({exc})") from exc
    except sqlite3.DatabaseError as exc:
        from steplog.eventstore.errors import database_error

        raise database_error(store.where, exc) from exc


class _Ticker:
    """Calls `say` with a progress line at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.next = time.monotonic() + PROGRESS_EVERY_S

    def tick(self, line: Callable[[], str]) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.say(line())
            self.next = now + PROGRESS_EVERY_S


__all__ = ["CopyRefused", "CopyReport", "copy_database"]
