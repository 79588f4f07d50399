"""The CLI verb that copies a whole database to another: copy (SQLite and PostgreSQL)."""

from __future__ import annotations

import click

from steplog.commands.cli.group import cli, echo_json, json_option, quiet_option, say


@cli.command("copy")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@quiet_option
@json_option
def copy_cmd(source: str, destination: str, quiet: bool, as_json: bool) -> None:
    """Copy every job, blob and projection table of database SRC into DST.

    SRC and DST are each a SQLite file or a postgresql:// URL (--db is not used). Events
    arrive exactly as SRC stores them (the same hash chains), in SRC's seq order: into an
    empty DST every event keeps its seq. A missing DST is created (a SQLite file; steplog's
    tables in an empty PostgreSQL database). Run again, it copies only what DST lacks: a job
    already there is skipped, a job of which DST holds a prefix is completed. Refused before
    anything is written, naming the job: a broken hash chain at SRC, a job DST holds with other
    events. SRC is never written.

    Example: steplog copy steplog.db postgresql://steplog@127.0.0.1:5432/steplog
    """
    from steplog.commands.copy import copy_database

    def progress(line: str) -> None:
        if not quiet:
            say(line, err=True)

    def notice(line: str) -> None:  # even with --quiet, as `run` and `import` say it
        say(line, err=True)

    report = copy_database(source, destination, progress=progress, notice=notice)
    if as_json:
        echo_json(report.document())
    else:
        say(report.line())
