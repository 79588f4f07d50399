"""The contract of the log, apart from SQLite: the stored record, the errors, the hash chain."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Protocol, Sequence

from steplog.errors import Rejected

if TYPE_CHECKING:  # the models import pydantic, which reading the log does not need
    from steplog.eventstore.events import EventData, NewEvent

GENESIS_HASH = "0" * 64


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


def blob_sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def text_sha256(text: str, slice_chars: int = 2**20) -> str:
    """blob_sha256 of text's UTF-8, encoded a slice at a time (no copy of a large text)."""
    digest = hashlib.sha256()
    for start in range(0, len(text), slice_chars):
        digest.update(text[start : start + slice_chars].encode("utf-8"))
    return digest.hexdigest()


class EventStore(Protocol):
    """What the rest of steplog needs from a log backend."""

    def append(
        self,
        job_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        blobs: Sequence[bytes] = (),
    ) -> list[StoredEvent]: ...

    def read_job(
        self, job_id: str, *, after_version: int = 0, until_version: int | None = None
    ) -> Iterator[StoredEvent]: ...

    def read_all(
        self, *, after_seq: int = 0, until_seq: int | None = None
    ) -> Iterator[StoredEvent]: ...

    def job_version(self, job_id: str) -> int: ...

    def get_blob(self, sha256: str) -> bytes: ...
