"""Running the real `steplog` CLI in a subprocess, and reading its database afterwards."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "factory" / "pipeline.toml"
CLI_TIMEOUT_S = 60


@dataclass
class Result:
    code: int
    out: str
    err: str


def drop_root_file_powers() -> None:
    """preexec_fn: the child, even as root, obeys file permissions (a 0444 file is read-only to
    it). Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def steplog(
    db: Path,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = CLI_TIMEOUT_S,
    as_plain_user: bool = False,
) -> Result:
    """Run the CLI in a subprocess; as_plain_user: without root's power over file permissions."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    full_env = {**inherited, "STEPLOG_DB": str(db), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "steplog", *args],
        cwd=cwd or db.parent,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=drop_root_file_powers if as_plain_user and os.geteuid() == 0 else None,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def db_rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def event_count(db: Path) -> int:
    if not db.exists():
        return 0
    return db_rows(db, "SELECT count(*) FROM events")[0][0]


def status_json(db: Path, job: str) -> dict:
    result = steplog(db, "status", job, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def comparable_manifest(doc: dict) -> dict:
    """The parts of a manifest that must match between an interrupted and a clean run."""
    return {
        "status": doc["status"],
        "completed_steps": sorted(doc["completed_steps"]),
        "pending_steps": doc["pending_steps"],
        "outputs": {name: s["output_sha256"] for name, s in doc["steps"].items()},
        "files": {name: sorted(s["files"]) for name, s in doc["steps"].items()},
    }


def workspace_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
