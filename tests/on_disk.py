"""Files: the repository's (the example pipeline), and what a run leaves on disk (database rows
and dumps, copies of a database, workspace files, the offline provider's call log)."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from pathlib import Path

from tests.strategies import dump

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "factory" / "pipeline.toml"


def db_rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """The rows of one statement on a SQLite file, or on a tests.backends.PostgresDatabase."""
    if hasattr(db, "rows"):
        return db.rows(sql, params)
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def event_count(db: Path) -> int:
    if not db.exists():  # (a PostgresDatabase: no events table yet)
        return 0
    return db_rows(db, "SELECT count(*) FROM events")[0][0]


def db_dump(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table ('nothing changed' is dump before == dump after)."""
    conn = sqlite3.connect(db)
    try:
        return dump(conn)
    finally:
        conn.close()


def copy_db(source: Path, target: Path) -> Path:
    """A copy of a closed database (its WAL, if any, goes with it)."""
    shutil.copyfile(source, target)
    for suffix in ("-wal", "-shm"):
        side = source.with_name(source.name + suffix)
        if side.exists():
            shutil.copyfile(side, target.with_name(target.name + suffix))
    return target


def workspace_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def calls(log: Path) -> Counter[str]:
    """The steps the offline provider answered, from its STEPLOG_OFFLINE_CALL_LOG file."""
    return Counter(log.read_text().split()) if log.exists() else Counter()
