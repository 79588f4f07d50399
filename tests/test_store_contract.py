"""The store contract (tests/store_contract.py) on each backend: a real SQLite file, and a real
PostgreSQL database on the tests' own throw-away cluster (tests/postgres_cluster.py)."""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    max_examples = 20  # tests/test_store.py runs more of the same on SQLite

    @contextmanager
    def fresh_location(self) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="steplog-contract-") as tmp:
            yield str(Path(tmp) / "steplog.db")

    def raw_statement(self, location: str, sql: str) -> str | None:
        conn = sqlite3.connect(location, isolation_level=None)
        try:
            conn.execute(sql)
            return None
        except sqlite3.DatabaseError as exc:
            return str(exc)
        finally:
            conn.close()

    def tamper(self, location: str, job_id: str, version: int, data_json: str) -> None:
        conn = sqlite3.connect(location, isolation_level=None)
        try:
            conn.execute("DROP TRIGGER events_append_only_update")
            conn.execute(
                "UPDATE events SET data = ? WHERE job_id = ? AND version = ?",
                (data_json, job_id, version),
            )
        finally:
            conn.close()


@pytest.mark.slow  # the cluster is a server process (initdb, postgres); psql runs as one too
class TestPostgresStore(StoreContract):
    max_examples = 8  # a database per example
    holds_nul_in_indexed_rows = False

    cluster: Any = None

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _cluster(cls, pg_cluster: Any) -> None:
        cls.cluster = pg_cluster  # class-scoped, so hypothesis sees no function-scoped fixture

    @contextmanager
    def fresh_location(self) -> Iterator[str]:
        name = self.cluster.create_database()
        try:
            yield self.cluster.url(name)
        finally:
            self.cluster.drop_database(name)

    def raw_statement(self, location: str, sql: str) -> str | None:
        """Through `psql`, the server's own client, as a person would."""
        done = self.cluster.psql(location.rsplit("/", 1)[1], sql)
        return done.stderr.strip() if done.returncode != 0 else None

    def tamper(self, location: str, job_id: str, version: int, data_json: str) -> None:
        """As the superuser, who may switch the trigger off for one transaction."""
        import psycopg

        with psycopg.connect(location) as conn:  # one transaction, committed on exit
            conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
            conn.execute(
                "UPDATE events SET data = %s::json WHERE job_id = %s AND version = %s",
                (data_json, job_id, version),
            )
            conn.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only")
