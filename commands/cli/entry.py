"""`main(argv)`: the console entry point. User errors become one line on stderr and exit 2.

Exit codes: 0 ok, 1 the job failed, 2 the command was rejected or its input is bad,
130/143 interrupted by SIGINT/SIGTERM (the job stays resumable).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

import click

from steplog.commands.cli.group import cli, say
from steplog.errors import Rejected, Terminated

# Every error steplog refuses a command with (PipelineError, StoreError, InvalidEvent, BadPoint …)
USER_ERRORS = (Rejected,)
# A database that breaks under us mid-command (corrupt page, disk full, locked too long)
DATABASE_ERRORS = (sqlite3.DatabaseError, sqlite3.OperationalError)


def _check_arguments(args: list[str]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates, which neither the log (JSON)
    nor SQLite can hold: refuse them here rather than half-way through a command."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            try:  # show the bytes as given: b'\xff' rather than '\udcff'
                shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                shown = arg.encode("utf-8", "backslashreplace").decode("utf-8")
            raise click.UsageError(f"argument '{shown}' is not valid UTF-8") from None
        if "\0" in arg:  # a real command line cannot carry NUL; main() called from Python can
            raise click.UsageError(f"argument {arg!r} contains a NUL character")


def _driver_error_line(obj: dict[str, Any], exc: Exception) -> str | None:
    """A PostgreSQL driver error that no store method turned into a StoreError, as one line
    naming the database without its password; None for anything else (a bug: a traceback)."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    from steplog.eventstore.config import redact_url

    app = obj.get("app")
    where = app.where if app is not None else "the database"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if app is not None and app.url:
        from steplog.eventstore.config import url_password

        secret = url_password(app.url)
        first = first.replace(secret, "***") if secret else first
    return f"PostgreSQL database {redact_url(where)}: {first}"


def main(argv: list[str] | None = None) -> int:
    """Run one command line (default: sys.argv[1:]) and return its exit code. User errors become
    one line on stderr and 2; nothing but that code leaves this function."""
    args = sys.argv[1:] if argv is None else list(argv)
    obj: dict[str, Any] = {}  # the group fills in "db", so an error can name the file
    try:
        _check_arguments(args)
        cli.main(args=args, prog_name="steplog", standalone_mode=False, obj=obj)
    except SystemExit as exc:  # a verb's own exit code (1: the job failed, 130/143: a signal)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except USER_ERRORS as exc:
        say(f"error: {exc}", err=True)
        return 2
    except DATABASE_ERRORS as exc:
        from steplog.eventstore.errors import database_error

        say(f"error: {database_error(obj.get('db'), exc)}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        if exc.ctx is not None and not args:
            click.echo(exc.ctx.get_help())  # bare `steplog`: show what it can do
            return 0
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        say(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except click.ClickException as exc:
        say(f"error: {exc.format_message()}", err=True)
        return 2
    except click.exceptions.Abort as exc:  # a signal before a job was ours to record it on
        click.echo("aborted", err=True)
        return 143 if isinstance(exc.__cause__, Terminated) else 130
    except OSError as exc:  # the output could not be written: a full disk behind `>` …
        # (click itself ends a closed pipe, `| head`, quietly with exit 1.) fd 1 now goes
        # nowhere, so the flush at exit cannot print a second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = f"{exc.filename}: " if exc.filename else ""
        say(f"error: cannot write: {where}{exc.strerror or exc}", err=True)
        return 2
    except Exception as exc:
        line = _driver_error_line(obj, exc)
        if line is None:
            raise
        say(f"error: {line}", err=True)
        return 2
    return 0
