"""The job page's actions: resume, fork, cancel. Each is the CLI itself in a subprocess
(`python -m steplog …` on the same database), so it is validated exactly as the CLI validates
it and refused with the CLI's own line; the job then runs in that process, never in the web
server's. The database is named to the child by STEPLOG_DB, not on its command line, where
`ps` would show a PostgreSQL URL's password.

Blocking: the routes run these in the thread pool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steplog.api import Steplog
    from steplog.web.reads import Reader

ACCEPT_POLLS = 300  # resume: polls of POLL_S for the child's job.resumed (or its refusal)
POLL_S = 0.1
FORK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    job_id: str | None = None  # the job to show next (a fork: the new one)


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "steplog", *args]


def _env(location: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    return {**env, "STEPLOG_DB": location}


def _refusal(stderr: str, code: int) -> str:
    """The CLI's one line (without its `error: `), or what exit code the child gave."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        return f"steplog exited with code {code}"
    return lines[-1].removeprefix("error: ")


def _reap(proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
    """Wait for a job's process in a daemon thread (no zombie), then drop its stderr file."""

    def wait() -> None:
        proc.wait()
        stderr_path.unlink(missing_ok=True)

    threading.Thread(target=wait, name=f"steplog-job-{proc.pid}", daemon=True).start()


def _location(reader: Reader) -> str:
    return reader.call(lambda sl: str(sl.location))


def resume(reader: Reader, job_id: str, cwd: Path) -> Outcome:
    """`steplog resume JOB` in its own process: accepted once its job.resumed is in the log
    (or it ended with 0/1), refused with its line if it exits 2 first."""
    before = reader.call(lambda sl: sl.job_state(job_id).version)

    def resumed(sl: Steplog) -> bool:
        found = sl.read_events(job_id, after=before)
        return any(ev.type == "job.resumed" for ev in found)

    handle, name = tempfile.mkstemp(prefix="steplog-ui-resume-", suffix=".err")
    stderr_path = Path(name)
    with os.fdopen(handle, "wb") as stderr:
        proc = subprocess.Popen(
            _argv("resume", job_id, "--quiet"),
            cwd=cwd,
            env=_env(_location(reader)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C on the server does not stop the job
        )
    for _ in range(ACCEPT_POLLS):
        code = proc.poll()
        if code is not None:
            text = stderr_path.read_text(errors="replace")
            stderr_path.unlink(missing_ok=True)
            if code == 2:
                return Outcome(False, _refusal(text, code), job_id)
            return Outcome(True, f"resumed {job_id}: it ended (exit {code})", job_id)
        if reader.call(resumed):
            _reap(proc, stderr_path)
            return Outcome(True, f"resumed {job_id} in process {proc.pid}", job_id)
        reader.wait_for_events(reader.last_seq(), POLL_S)
    _reap(proc, stderr_path)
    return Outcome(True, f"resume of {job_id} started in process {proc.pid}", job_id)


def fork(reader: Reader, job_id: str, until: str, new_job_id: str, cwd: Path) -> Outcome:
    """`steplog replay JOB --until POINT --fork NEW_JOB`: quick, so it is waited for."""
    done = subprocess.run(
        _argv("replay", job_id, "--until", until, "--fork", new_job_id, "--json"),
        cwd=cwd,
        env=_env(_location(reader)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=FORK_TIMEOUT_S,
    )
    if done.returncode != 0:
        return Outcome(False, _refusal(done.stderr, done.returncode), job_id)
    made = json.loads(done.stdout)
    return Outcome(
        True,
        f"forked {made['job_id']} from {job_id} at event {made['until_version']}: "
        "resume it to go on",
        made["job_id"],
    )


def cancel(reader: Reader, job_id: str, cwd: Path) -> Outcome:
    """`steplog cancel JOB`: a queued job never starts; a running one is stopped by its owner
    (a worker or a `run` process, on any host), which records job.cancelled. Resumable."""
    done = subprocess.run(
        _argv("cancel", job_id),
        cwd=cwd,
        env=_env(_location(reader)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=FORK_TIMEOUT_S,
    )
    if done.returncode != 0:
        return Outcome(False, _refusal(done.stderr, done.returncode), job_id)
    return Outcome(True, done.stdout.strip() or f"cancelled {job_id}", job_id)
