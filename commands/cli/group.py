"""The `steplog` group and what every verb shares: the store for --db, option decorators for
--json, --quiet, --input, --workspace and --grace, and JSON and console output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console

from steplog.commands.jobs import Rejected
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.executor.shutdown import DEFAULT_GRACE_S
from steplog.projections.store import open_store


def console() -> Console:
    """Rich output; wide when piped so tables are not cut to 80 columns."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def store_for(
    ctx: click.Context, *, write: bool = False, create: bool | None = None
) -> SQLiteEventStore:
    """The store for this command. write: the verb appends, so a read-only file is refused
    here, before anything starts. create (default: write): a missing file is created; else it
    is refused, so a read verb or a typo in --db leaves no empty database (or directory)."""
    store = ctx.obj.get("store")
    if store is None:
        path = ctx.obj["db"]
        if not (write if create is None else create) and not Path(path).exists():
            raise Rejected(f"no database at {path}; start one with: steplog run PIPELINE.toml")
        store = ctx.obj["store"] = open_store(ctx.obj["db"])
        ctx.call_on_close(store.close)
    if write:
        store.require_writable()
    return store


def parse_inputs(values: tuple[str, ...]) -> dict[str, str]:
    inputs = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--input")
        inputs[name.strip()] = value
    return inputs


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="STEPLOG_DB",
    default="steplog.db",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite file holding the event log (env STEPLOG_DB).",
)
@click.version_option(package_name="steplog")
@click.pass_context
def cli(ctx: click.Context, db: Path) -> None:
    """steplog: durable multi-step LLM pipelines on an append-only SQLite event log."""
    ctx.ensure_object(dict)
    ctx.obj["db"] = db


def _not_nan(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # FloatRange lets NaN through: it compares false with both bounds
        raise click.BadParameter("nan is not a number of seconds", ctx=ctx, param=param)
    return value


def grace_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--grace",
        "grace_s",
        envvar="STEPLOG_GRACE_S",
        default=DEFAULT_GRACE_S,
        show_default=True,
        type=click.FloatRange(0, 3600),
        callback=_not_nan,
        metavar="SECONDS",
        help="On Ctrl-C/SIGTERM, how long running provider calls may finish before they are "
        "cancelled (0: at once; env STEPLOG_GRACE_S).",
    )(func)
