"""The contract of the log, apart from SQLite: the stored record, the errors, the hash chain."""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from functools import partial
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterable,
    Iterator,
    NamedTuple,
    Protocol,
    Sequence,
    TypeVar,
)

from steplog.errors import Rejected

if TYPE_CHECKING:  # the models import pydantic, which reading the log does not need
    from steplog.eventstore.events import EventData, NewEvent

GENESIS_HASH = "0" * 64
T = TypeVar("T")


class StoreError(Rejected):
    """Base of everything the store refuses; the CLI prints it as one line and exits 2."""


class VersionConflict(StoreError):
    """Someone else appended to the job since the caller read it."""


class DatabaseUnusable(StoreError):
    """The file cannot be used as a steplog database (not SQLite, foreign, newer, unreadable …)."""


class StoredEvent(NamedTuple):
    """An event as it sits in the log. `data_json` is the exact JSON text that was hashed.

    A NamedTuple because folds read millions of these: building one from a row is a C call.
    """

    seq: int
    job_id: str
    version: int
    ts: str
    level: str
    type: str
    step: str | None
    data_json: str
    prev_hash: str
    hash: str

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.data_json)

    def typed(self) -> EventData:
        from steplog.eventstore.events import parse_data

        return parse_data(self.type, self.data_json)

    def envelope(self) -> dict[str, Any]:
        """The predecessor's JSON-lines envelope."""
        return {
            "ts": self.ts,
            "level": self.level,
            "job_id": self.job_id,
            "type": self.type,
            "step": self.step,
            "data": self.data,
        }


def chain_hash(
    prev_hash: str,
    job_id: str,
    version: int,
    ts: str,
    level: str,
    type: str,
    step: str | None,
    data_json: str,
) -> str:
    """The hash of one event; covers the previous one, so any edit breaks every later link."""
    material = "\x1f".join(
        (prev_hash, job_id, str(version), ts, level, type, step or "", data_json)
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


_new_stored = tuple.__new__  # StoredEvent from a 10-tuple, without _make's Python frame

# A row of the stores' 10-column event SELECTs as a StoredEvent: map(stored_from_row, rows)
# builds each in C, where StoredEvent._make runs a Python frame and a length check per row.
stored_from_row = partial(_new_stored, StoredEvent)


def link(
    job_id: str,
    seq: int,
    version: int,
    prev_hash: str,
    prepared: Iterable[tuple[str, str, str, str | None, str]],
) -> list[StoredEvent]:
    """The StoredEvents of a batch appended to `job_id` after the log's `seq` and the job's
    `version` (whose hash is `prev_hash`): seq and version counted on, each linked by
    chain_hash. prepared: (ts, level, type, step, data JSON) each."""
    stored: list[StoredEvent] = []
    append = stored.append
    for ts, level, type_, step, data_json in prepared:
        seq += 1
        version += 1
        h = chain_hash(prev_hash, job_id, version, ts, level, type_, step, data_json)
        row = (seq, job_id, version, ts, level, type_, step, data_json, prev_hash, h)
        append(_new_stored(StoredEvent, row))
        prev_hash = h
    return stored


class ChainBreak(NamedTuple):
    """One link of a job's hash chain that does not hold, as check_chain found it."""

    job_id: str
    version: int
    seq: int
    reason: str


def check_chain(events: Iterable[StoredEvent]) -> list[ChainBreak]:
    """Check the hash chain of events as a store returned them (any jobs, each job's events in
    version order, as read_all and read_job give them). Each job must start at version 1 from
    GENESIS_HASH, go up by one, link each prev_hash to the previous hash, and every hash must
    recompute from its fields. The chain continues from what is stored, so one edited event is
    one break. [] means the chain holds."""
    heads: dict[str, tuple[int, str]] = {}
    breaks: list[ChainBreak] = []
    for ev in events:
        version, prev = heads.get(ev.job_id, (0, GENESIS_HASH))
        if ev.version != version + 1:
            breaks.append(
                ChainBreak(ev.job_id, ev.version, ev.seq, f"version {ev.version} follows {version}")
            )
        if ev.prev_hash != prev:
            breaks.append(
                ChainBreak(ev.job_id, ev.version, ev.seq, "prev_hash is not the previous hash")
            )
        expected = chain_hash(
            ev.prev_hash, ev.job_id, ev.version, ev.ts, ev.level, ev.type, ev.step, ev.data_json
        )
        if ev.hash != expected:
            breaks.append(
                ChainBreak(ev.job_id, ev.version, ev.seq, "hash does not match the fields")
            )
        heads[ev.job_id] = (ev.version, ev.hash)
    return breaks


TEXT_SLICE_CHARS = 2**20


def text_sha256(text: str, slice_chars: int = TEXT_SLICE_CHARS) -> str:
    """blob_sha256 of text's UTF-8, encoded a slice at a time (no copy of a large text)."""
    digest = hashlib.sha256()
    for start in range(0, len(text), slice_chars):
        digest.update(text[start : start + slice_chars].encode("utf-8"))
    return digest.hexdigest()


class TextBlob:
    """A blob given as text: its UTF-8 is made a slice at a time, when it is hashed and when it
    is written, so a large answer is never held twice (as text and as bytes) in memory.

    Made by blob_of_text; the one pass here checks that the text encodes (a lone surrogate
    raises UnicodeEncodeError) and gives the blob's sha256 and size."""

    __slots__ = ("text", "sha256", "size")

    def __init__(self, text: str) -> None:
        self.text = text
        digest = hashlib.sha256()
        size = 0
        for piece in self.slices():
            digest.update(piece)
            size += len(piece)
        self.sha256 = digest.hexdigest()
        self.size = size

    def slices(self, slice_chars: int = TEXT_SLICE_CHARS) -> Iterator[bytes]:
        text = self.text
        for start in range(0, len(text), slice_chars):
            yield text[start : start + slice_chars].encode("utf-8")

    def encode(self) -> bytes:
        return self.text.encode("utf-8")


Blob = bytes | TextBlob  # what an append or put_blob stores


def blob_of_text(text: str) -> Blob:
    """text's UTF-8 as a blob: bytes when small, a TextBlob (no whole copy) when large."""
    if len(text) < TEXT_SLICE_CHARS:
        return text.encode("utf-8")
    return TextBlob(text)


def blob_sha256(content: Blob) -> str:
    if isinstance(content, TextBlob):
        return content.sha256
    return hashlib.sha256(content).hexdigest()


def blob_size(content: Blob) -> int:
    return content.size if isinstance(content, TextBlob) else len(content)


def blob_row(content: Blob) -> tuple[str, int, bytes]:
    """(sha256, size, content) of a blob, as the blobs table holds it."""
    if isinstance(content, TextBlob):
        return content.sha256, content.size, content.encode()
    return blob_sha256(content), len(content), content


class EventStore(Protocol):
    """What the rest of steplog needs from a log backend; SQLiteEventStore and PostgresEventStore
    both provide it, and tests/store_contract.py checks that they behave alike. The commands and
    the executor read and write only through it (and projections.store, for the projection
    tables): no SQL outside the backends and the projections' per-dialect modules.

    `write_transaction()` yields the backend's own connection inside a transaction that holds
    the log's write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: LOCK TABLE events IN EXCLUSIVE
    MODE); `append_txn(conn, …)` appends inside it, so that several writes share one commit.
    `reading()` yields a connection for reads, for the projection tables' lookups; `read(work)`
    runs work(conn) on one, again on a new connection if the first failed in transit (PostgreSQL).
    """

    dialect: str  # "sqlite" | "postgresql": which projections module holds its tables' SQL
    where: str  # how messages name the database: a path, or host:port/dbname (no password)
    created: bool  # this open applied the schema to an empty database
    read_only_reason: str | None
    notifies: bool  # wait_for_events is woken by the commit itself (PostgreSQL's NOTIFY)

    # -- writing
    def append(
        self,
        job_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        blobs: Sequence[Blob] = (),
    ) -> list[StoredEvent]: ...

    def append_rows(
        self,
        job_id: str,
        prepared: Sequence[tuple[str, str, str, str | None, str]],
        *,
        expected_version: int | None = None,
        blobs: Sequence[Blob] = (),
    ) -> list[StoredEvent]: ...

    def append_txn(
        self,
        conn: Any,
        job_id: str,
        prepared: Sequence[tuple[str, str, str, str | None, str]],
        expected_version: int | None,
        blobs: Sequence[Blob],
    ) -> list[StoredEvent]: ...

    def write_transaction(self) -> AbstractContextManager[Any]: ...

    def put_blob(self, content: Blob) -> str: ...

    def put_blobs(self, contents: Sequence[Blob]) -> None: ...

    def require_writable(self) -> None: ...

    # -- the log
    def read_job(
        self,
        job_id: str,
        *,
        after_version: int = 0,
        until_version: int | None = None,
        hashes: bool = True,
    ) -> Iterator[StoredEvent]:
        """The job's events in version order. hashes=False (a fold, which never looks at
        them) reads prev_hash and hash as "": about a third of each row's bytes."""
        ...

    def read_all(
        self,
        *,
        after_seq: int = 0,
        until_seq: int | None = None,
        data_for: Sequence[str] | None = None,
    ) -> Iterator[StoredEvent]: ...

    def job_version(self, job_id: str) -> int: ...

    def job_exists(self, job_id: str) -> bool: ...

    def last_seq(self) -> int: ...

    def wait_for_events(self, after_seq: int, timeout: float) -> int: ...

    def latest_job_id(self) -> str | None: ...

    def stream_heads(self) -> dict[str, tuple[int, str, int]]: ...

    def logged_files(self, job_id: str) -> dict[str, tuple[str, str]]: ...

    def cache_runs(self, pipeline: str, step: str, limit: int) -> list[tuple[int, str, str]]: ...

    def view_rows(self, view: str, columns: Sequence[str], job_id: str) -> list[dict[str, Any]]: ...

    # -- blobs
    def get_blob(self, sha256: str) -> bytes: ...

    def get_blobs(self, shas: Sequence[str]) -> dict[str, bytes]: ...

    def find_blobs(self, shas: Sequence[str]) -> dict[str, bytes]: ...

    def all_blobs(self) -> Iterator[tuple[str, int, bytes]]: ...

    def blob_index(self, after: str = "", limit: int = ...) -> list[tuple[str, int]]: ...

    def stored_blobs(self, shas: Sequence[str]) -> set[str]: ...

    # -- the database
    def reading(self) -> AbstractContextManager[Any]: ...

    def read(self, work: Callable[[Any], T]) -> T: ...

    def table_names(self) -> set[str]: ...

    def schema_problems(self) -> tuple[int, list[str]]: ...

    def integrity_problems(self) -> list[str]: ...

    def close(self) -> None: ...
