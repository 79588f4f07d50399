"""Running `steplog` in this process, as the console script would: the one in-process runner.

A subprocess costs ~0.4 s; calling steplog.commands.cli.main(argv) costs milliseconds, so
properties with many examples, and every test that does not need a real process, call it here
(directly, or through the `cli` fixture in tests/conftest.py). main() is what the console
script runs; it returns the exit code and lets no exception out: any that escapes is what a
user would see as a traceback, so it fails the test.
"""

from __future__ import annotations

import contextlib
import io
import traceback
from dataclasses import dataclass
from pathlib import Path

from steplog.commands.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str


class Traceback(AssertionError):
    """main() let an exception other than SystemExit escape: a user would see a traceback."""


def steplog_here(db: Path, *args: str, cwd: Path | None = None) -> Outcome:
    """`steplog --db DB ARGS...`; cwd: the directory it runs in (relative paths, and the default
    workspace runs/JOB, are taken from there), for the call only."""
    out, err = io.StringIO(), io.StringIO()
    here = contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext()
    try:
        with here, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--db", str(db), *args])
    except BaseException as exc:  # noqa: BLE001 - any of them is the bug this helper reports
        shown = [repr(a)[:80] for a in args]
        raise Traceback(
            f"steplog {' '.join(shown)} raised {type(exc).__name__}:\n{traceback.format_exc()}"
        ) from exc
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_refused_in_one_line(result: Outcome, *, mentions: str | None = None) -> None:
    """Exit 2 and exactly one line on stderr (which names the problem)."""
    assert result.code == 2, (result.code, result.err[-500:])
    assert result.err.startswith("error: "), result.err[:500]
    assert result.err.count("\n") == 1 and result.err.endswith("\n"), result.err[:500]
    if mentions is not None:
        assert mentions in result.err, result.err[:500]
