"""The reads of the log that both stores answer with the same SQL, written once.

The commands and the executor ask the store (never a connection) for what they read beyond a
job's events: the latest job, the files a job wrote, a step's previous runs, an audit view's
rows, the stream heads, every blob, a page of the blobs' names and sizes. The SQL below is the one both dialects accept; the two
places they differ are the stores' own: the parameter mark (`?` for sqlite3, `%s` for
psycopg) and how a field of the JSON `data` column is read (`JSON_TEXT`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

# Audit views a verb may read by name (schema.sql and schema_postgres.sql define them alike).
AUDIT_VIEWS = frozenset(("llm_calls", "step_runs", "file_writes", "cache_stats", "job_summary"))
BLOB_BATCH = 1000  # blob names and sizes per page when every blob is read (verify, copy)
BLOB_BATCH_BYTES = 32 * 2**20  # blob content read at once (a larger blob: alone)
T = TypeVar("T")


@dataclass(frozen=True)
class QueryResult:
    """What `steplog sql` got back: the column names and the rows."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


class LogReads:
    """Mixed into SQLiteEventStore and PostgresEventStore: each gives `reading()` (a connection
    for reads), MARK and JSON_TEXT."""

    MARK = "?"
    JSON_TEXT = "json_extract({column}, '$.{key}')"  # a field of `data`, as text for strings
    DATA_TEXT = "data"  # the data column as its exact JSON text

    def reading(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def read(self, work: Callable[[Any], T]) -> T:
        """work(conn) on the connection for reads. PostgreSQL runs it again on a new connection
        after a transient failure (so `work` only reads); SQLite's file has no such failure."""
        with self.reading() as conn:
            return work(conn)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.MARK) if self.MARK != "?" else sql

    def _json(self, key: str, column: str = "data") -> str:
        return self.JSON_TEXT.format(column=column, key=key)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        query, values = self._sql(sql), tuple(params)
        return self.read(lambda conn: [tuple(r) for r in conn.execute(query, values).fetchall()])

    def latest_job_id(self) -> str | None:
        """The most recently updated job (the one whose last event is the newest); the streams
        of workers' leases (worker:<id>, a name no job can have) are not jobs."""
        rows = self._all(
            "SELECT job_id FROM streams WHERE substr(job_id, 1, 7) <> 'worker:'"
            " ORDER BY last_seq DESC LIMIT 1"
        )
        return rows[0][0] if rows else None

    def stream_heads(self) -> dict[str, tuple[int, str, int]]:
        """job_id -> (version, last_hash, last_seq) as `streams` holds them."""
        rows = self._all("SELECT job_id, version, last_hash, last_seq FROM streams")
        return {job: (version, last_hash, last_seq) for job, version, last_hash, last_seq in rows}

    def logged_files(self, job_id: str) -> dict[str, tuple[str, str]]:
        """path -> (step, sha256) of the last file.written at that path in the job's log."""
        rows = self._all(
            f"SELECT step, {self._json('path')}, {self._json('sha256')} FROM events"
            " WHERE job_id = ? AND type = 'file.written' ORDER BY version",
            (job_id,),
        )
        return {path: (step, sha) for step, path, sha in rows}

    def cache_runs(self, pipeline: str, step: str, limit: int) -> list[tuple[int, str, str]]:
        """(seq, job_id, data JSON) of the step's latest cache.hit/cache.miss events in any job
        of the pipeline, newest first. The WHERE terms repeat the partial index's expression and
        condition (events_cache_runs in both schemas) so that the index answers it."""
        return self._all(self.cache_runs_sql(), (step, pipeline, limit))

    def cache_runs_sql(self) -> str:
        """cache_runs' query (parameters: step, pipeline, limit), to EXPLAIN in the tests."""
        return self._sql(
            f"SELECT seq, job_id, {self.DATA_TEXT} FROM events"
            " WHERE type IN ('cache.hit', 'cache.miss') AND step = ?"
            f" AND {self._json('pipeline')} = ?"
            " ORDER BY seq DESC LIMIT ?"
        )

    def view_rows(self, view: str, columns: Sequence[str], job_id: str) -> list[dict[str, Any]]:
        """One job's rows of an audit view, in seq order (job_summary: its one row)."""
        if view not in AUDIT_VIEWS:
            raise ValueError(f"no audit view {view!r}")
        order = "" if view == "job_summary" else " ORDER BY seq"
        names = ", ".join(columns) if columns else "*"
        query = self._sql(f"SELECT {names} FROM {view} WHERE job_id = ?{order}")

        def rows(conn: Any) -> list[dict[str, Any]]:
            cursor = conn.execute(query, (job_id,))
            keys = [d[0] for d in cursor.description]
            return [dict(zip(keys, row)) for row in cursor.fetchall()]

        return self.read(rows)

    def blob_index(self, after: str = "", limit: int = BLOB_BATCH) -> list[tuple[str, int]]:
        """(sha256, size) of up to `limit` blobs whose sha256 sorts after `after`, in sha256
        order, without their content: one page of the blob list however much the blobs weigh
        (`steplog copy` fetches the content itself in batches bounded in bytes)."""
        return self._all(
            "SELECT sha256, size FROM blobs WHERE sha256 > ? ORDER BY sha256 LIMIT ?",
            (after, limit),
        )

    def stored_blobs(self, shas: Sequence[str]) -> set[str]:
        """Which of `shas` the database holds, found without reading their content."""
        found: set[str] = set()
        wanted = list(dict.fromkeys(shas))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = self._all(f"SELECT sha256 FROM blobs WHERE sha256 IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return found

    def all_blobs(self) -> Iterator[tuple[str, int, bytes]]:
        """(sha256, size, content) of every blob, in sha256 order: a page of names and sizes
        at a time, the content read in batches of at most BLOB_BATCH_BYTES (a larger blob
        alone), so memory holds one batch however large the blobs are."""
        after = ""
        while True:
            page = self.blob_index(after, BLOB_BATCH)
            for batch in by_bytes(page, BLOB_BATCH_BYTES):
                found = self.find_blobs([sha for sha, _ in batch])
                for sha, size in batch:
                    if sha in found:  # (gone meanwhile: only a hand-made DELETE can do that)
                        yield sha, size, found.pop(sha)
            if len(page) < BLOB_BATCH:
                return
            after = page[-1][0]


def by_bytes(blobs: Sequence[tuple[str, int]], limit: int) -> Iterator[list[tuple[str, int]]]:
    """(sha256, size) pairs grouped into batches of at most `limit` bytes (a larger one alone)."""
    batch: list[tuple[str, int]] = []
    weight = 0
    for sha, size in blobs:
        if batch and weight + size > limit:
            yield batch
            batch, weight = [], 0
        batch.append((sha, size))
        weight += size
    if batch:
        yield batch
