"""The audit verbs `steplog sql`, `steplog audit`, `steplog verify`, registered on the main CLI."""

from __future__ import annotations

import csv
import io
import itertools
import sys
from typing import Any, Iterable

import click

from steplog.commands.cli.group import (
    app_for,
    cli,
    console,
    echo_json,
    json_option,
    json_text,
    say,
    store_for,
)
from steplog.commands.queries import resolve_job
from steplog.commands.readonly import plain_value


@cli.command("sql")
@click.argument("query")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Bind :NAME in the query (a plain number binds as a number).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row.")
@click.pass_context
def sql_cmd(
    ctx: click.Context, query: str, params: tuple[str, ...], as_json: bool, as_csv: bool
) -> None:
    """Run one read-only SQL query on the database (tables and audit views).

    Anything that would write (INSERT, UPDATE, DELETE, CREATE, DROP, ATTACH, PRAGMA x = y,
    VACUUM …) is refused with exit code 2 and the file is left untouched.

    Example: steplog sql "SELECT * FROM llm_calls WHERE job_id = :job" --param job=job_x --csv
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    from steplog.commands.readonly import parse_params, query_database

    bound = parse_params(params)
    result = query_database(app_for(ctx).location, query, bound)
    if as_json:
        objects = [
            {col: plain_value(v) for col, v in zip(result.columns, row)} for row in result.rows
        ]
        click.echo(json_text(objects, indent=2))
    elif as_csv:
        write_csv(result.columns, ([_csv_value(v) for v in row] for row in result.rows))
    else:
        from steplog.commands.cli.render import print_rows

        print_rows(console(), result.columns, result.rows)


def write_csv(header: list[str], rows: Iterable[list[Any]]) -> None:
    """CSV on stdout, a line per row ending in \\n, each value exactly as given: a field
    holding a newline or a carriage return is quoted (csv quotes a lone \\r only when it is in
    the line terminator, so each row is written with \\r\\n and its ending made \\n)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in itertools.chain([header], rows):
        writer.writerow(row)
        sys.stdout.write(buffer.getvalue()[:-2] + "\n")
        buffer.seek(0)
        buffer.truncate()


def _csv_value(value: Any) -> Any:
    plain = plain_value(value)
    return plain["encoded"] if isinstance(plain, dict) else plain


@cli.command("audit")
@click.argument("job")
@json_option
@click.pass_context
def audit_cmd(ctx: click.Context, job: str, as_json: bool) -> None:
    """Report on JOB from the audit views: step runs, LLM calls with failures and retries,
    tokens and cost, cache hits and tokens saved, files written, failures and why.

    Example: steplog audit job_20261124_101500_ab12cd --json
    """
    from steplog.commands.audit import audit_document
    from steplog.commands.cli.render import print_audit

    store = store_for(ctx)
    doc = audit_document(store, resolve_job(store, job))
    if as_json:
        echo_json(doc)
        return
    print_audit(console(), doc)


@cli.command("verify")
@click.argument("job", required=False)
@json_option
@click.pass_context
def verify_cmd(ctx: click.Context, job: str | None, as_json: bool) -> None:
    """Check the database: hash chains, append-only triggers and schema version, SQLite
    integrity, projection tables against a fresh fold, blobs against their sha256.

    Exit 0 when all is well; 1 naming the first bad event (job, version, seq) and what is wrong.
    JOB limits the hash-chain check to that job. The file is opened read-only.

    Example: steplog verify --json
    """
    from steplog.commands.verify import verify_database

    report = verify_database(app_for(ctx).location, job)
    if as_json:
        echo_json(report.document())
    elif report.ok:
        say(report.summary())
    else:
        for problem in report.problems:
            say(problem.line())
        if report.dropped:
            say(f"… and {report.dropped} more")
    if not report.ok:
        raise SystemExit(1)
