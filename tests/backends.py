"""One end-to-end test, both stores: the `database` fixture (tests/conftest.py) gives a SQLite
file's Path, or a PostgresDatabase that the same helpers take in its place.

A PostgresDatabase looks enough like the Path the subprocess helpers expect (tests/cli_process.py
sets STEPLOG_DB to str(db) and runs the CLI in db.parent; tests/on_disk.db_rows reads rows), so
a test written for a SQLite file runs unchanged against a PostgreSQL database. Its str() holds
the cluster's password: the fixture's id is the backend's name, and assertion messages must use
`cluster.safe()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg


@dataclass(frozen=True)
class PostgresDatabase:
    url: str  # with the password: never printed
    home: Path  # where the CLI runs (its workspaces land in runs/ here)
    name: str = field(default="")

    @property
    def parent(self) -> Path:
        return self.home

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:  # os.fspath(), as for a Path: the URL
        return self.url

    def exists(self) -> bool:
        """Whether steplog's log is there yet (its events table)."""
        return bool(self.rows("SELECT to_regclass('events') IS NOT NULL")[0][0])

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement (SQLite's `?` marks), its rows; json values as their stored text."""
        from psycopg.types.json import set_json_loads

        with psycopg.connect(self.url, autocommit=True) as conn:
            set_json_loads(lambda text: text, conn)
            if params:
                cur = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)
            else:
                cur = conn.execute(sql)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
