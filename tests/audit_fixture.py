"""A database made by real runs of tests/data/audit_pipeline.toml (offline provider, one step
whose provider always fails), for the audit views, `steplog sql/audit/verify` and the README.
The runs go through the CLI in this process (tests.cli_inprocess), so that the tests reading
the database need no subprocess.

Jobs: `first` fails at flaky (two attempts), `second` reuses three answers from the cache and
fails the same way, then `first` is resumed with the provider mended and succeeds.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from tests.cli_inprocess import steplog_here

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Event:
    seq: int
    job_id: str
    version: int
    ts: str
    type: str
    step: str | None
    data: dict


def build_audit_db(root: Path) -> Path:
    for name in ("audit_pipeline.toml", "audit_pipeline_fixed.toml"):
        shutil.copy(DATA / name, root / name)
    db = root / "audit.db"
    first = steplog_here(db, "run", "audit_pipeline.toml", "--job-id", "first", "-q", cwd=root)
    assert first.code == 1, first.err
    second = steplog_here(db, "run", "audit_pipeline.toml", "--job-id", "second", "-q", cwd=root)
    assert second.code == 1, second.err
    resumed = steplog_here(
        db, "resume", "first", "--pipeline", "audit_pipeline_fixed.toml", "-q", cwd=root
    )
    assert resumed.code == 0, resumed.err
    return db


def raw_events(db: Path) -> list[Event]:
    """The log as stored, parsed in Python: the independent answer the views are checked against."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT seq, job_id, version, ts, type, step, data FROM events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    return [Event(*row[:6], orjson.loads(row[6])) for row in rows]
