"""The reads of the log that both stores answer with the same SQL, written once.

The commands and the executor ask the store (never a connection) for what they read beyond a
job's events: the latest job, the files a job wrote, a step's previous runs, an audit view's
rows, the stream heads, every blob. The SQL below is the one both dialects accept; the two
places they differ are the stores' own: the parameter mark (`?` for sqlite3, `%s` for
psycopg) and how a field of the JSON `data` column is read (`JSON_TEXT`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Iterator, Sequence

# Audit views a verb may read by name (schema.sql and schema_postgres.sql define them alike).
AUDIT_VIEWS = frozenset(("llm_calls", "step_runs", "file_writes", "cache_stats", "job_summary"))
BLOB_BATCH = 200  # blobs per read when every blob is read (verify): bounded memory


class LogReads:
    """Mixed into SQLiteEventStore and PostgresEventStore: each gives `reading()` (a connection
    for reads), MARK and JSON_TEXT."""

    MARK = "?"
    JSON_TEXT = "json_extract({column}, '$.{key}')"  # a field of `data`, as text for strings
    DATA_TEXT = "data"  # the data column as its exact JSON text

    def reading(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.MARK) if self.MARK != "?" else sql

    def _json(self, key: str, column: str = "data") -> str:
        return self.JSON_TEXT.format(column=column, key=key)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.reading() as conn:
            return [tuple(row) for row in conn.execute(self._sql(sql), tuple(params)).fetchall()]

    def latest_job_id(self) -> str | None:
        """The most recently updated job (the one whose last event is the newest)."""
        rows = self._all("SELECT job_id FROM streams ORDER BY last_seq DESC LIMIT 1")
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
        with self.reading() as conn:
            cursor = conn.execute(
                self._sql(f"SELECT {names} FROM {view} WHERE job_id = ?{order}"), (job_id,)
            )
            keys = [d[0] for d in cursor.description]
            return [dict(zip(keys, row)) for row in cursor.fetchall()]

    def all_blobs(self) -> Iterator[tuple[str, int, bytes]]:
        """(sha256, size, content) of every blob, in sha256 order, a batch at a time."""
        last = ""
        while True:
            rows = self._all(
                "SELECT sha256, size, content FROM blobs WHERE sha256 > ? ORDER BY sha256 LIMIT ?",
                (last, BLOB_BATCH),
            )
            for sha, size, content in rows:
                yield sha, size, bytes(content)
            if len(rows) < BLOB_BATCH:
                return
            last = rows[-1][0]
