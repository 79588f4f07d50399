"""The real `steplog` console script in a child process (`python -m steplog`): the one way the
tests start it, to the end (`steplog`) or left running (`spawn`).

The child gets this environment without any STEPLOG_* variable, then STEPLOG_DB=db and the
test's `env`; it runs in the database's directory unless told otherwise. A test that calls
anything here starts a process, so it is marked `slow` (tests/conftest.py fails it otherwise).
For many quick calls, tests.cli_inprocess runs the same entry point in this process.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional

import pytest

from tests.on_disk import db_rows

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


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """preexec_fn: no file this process writes may grow past max_bytes. Python ignores SIGXFSZ,
    so a write past the limit fails with EFBIG, as on a full disk."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def _preexec(as_plain_user: bool, max_file_bytes: Optional[int]) -> Optional[Callable[[], None]]:
    steps: list[Callable[[], None]] = []
    if as_plain_user and os.geteuid() == 0:
        steps.append(drop_root_file_powers)
    if max_file_bytes is not None:
        steps.append(file_size_limit(max_file_bytes))
    if not steps:
        return None

    def run_all() -> None:
        for step in steps:
            step()

    return run_all


@functools.cache
def permissions_hold() -> bool:
    """Root ignores file permissions; its CLI children drop that power (drop_root_file_powers)
    unless the container forbids even that. Finding out starts a process."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return True
    try:
        subprocess.run([sys.executable, "-c", "pass"], preexec_fn=drop_root_file_powers, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


class _PermissionsIgnored:
    """The skip condition of needs_permissions: pytest takes bool() of it when a test marked
    with it is set up (so collecting the tests starts no process)."""

    def __bool__(self) -> bool:
        return not permissions_hold()


needs_permissions = pytest.mark.skipif(
    _PermissionsIgnored(), reason="cannot run the CLI without root's power over permissions"
)


def _child_env(db: Path, env: Optional[dict[str, str]]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    return {**inherited, "STEPLOG_DB": str(db), **(env or {})}


def steplog(
    db: Path,
    *args: str,
    cwd: Optional[Path] = None,
    env: Optional[dict[str, str]] = None,
    timeout: float = CLI_TIMEOUT_S,
    as_plain_user: bool = False,
    max_file_bytes: Optional[int] = None,
    stdout: Optional[IO[str]] = None,
) -> Result:
    """Run the CLI to the end. as_plain_user: without root's power over file permissions;
    max_file_bytes: no file the child writes may grow past it (a full disk); stdout: a file the
    child writes its output to instead of a pipe (then `out` is empty)."""
    proc = subprocess.run(
        [sys.executable, "-m", "steplog", *args],
        cwd=cwd or db.parent,
        env=_child_env(db, env),
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        preexec_fn=_preexec(as_plain_user, max_file_bytes),
    )
    return Result(proc.returncode, proc.stdout or "", proc.stderr)


def spawn(
    db: Path, *args: str, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None
) -> subprocess.Popen[str]:
    """Start the CLI and leave it running (stdout and stderr are pipes): the test signals it,
    races it or reads it while it runs, and reaps it."""
    return subprocess.Popen(
        [sys.executable, "-m", "steplog", *args],
        cwd=cwd or db.parent,
        env=_child_env(db, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(db: Path, sql: str, timeout: float = 20) -> None:
    """Until `sql` (a count) is non-zero on the database a running CLI writes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if db.exists() and db_rows(db, sql)[0][0]:
                return
        except Exception:  # the schema may not exist yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {sql}")


def signal_when(db: Path, proc: subprocess.Popen[str], sql: str, sig: int) -> None:
    """Send `sig` to the running CLI once `sql` counts something, and reap it."""
    try:
        wait_for(db, sql)
        proc.send_signal(sig)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


class StderrLines:
    """Collects a Popen's stderr lines in a thread, so a test can wait for one without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 20) -> str:
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((ln for ln in self.lines if text in ln), None), timeout=timeout
            )
        if not found:
            raise AssertionError(f"no stderr line with {text!r} in {timeout}s: {self.lines}")
        return found

    def text(self, timeout: float = 10) -> str:
        self._thread.join(timeout)
        return "\n".join(self.lines)


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
