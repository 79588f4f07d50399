"""CLI verbs for looking at a job and moving it between databases: timeline, export, import."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from steplog.commands.cli.group import app_for, cli, say, store_for
from steplog.commands.queries import resolve_job
from steplog.errors import Rejected
from steplog.words import counted


@cli.command()
@click.argument("job")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="FILE.svg or FILE.html; '-' prints the SVG (default: <JOB>.timeline.svg beside the "
    "job's workspace, e.g. runs/<JOB>.timeline.svg).",
)
@click.option(
    "--width",
    default=1200,
    show_default=True,
    type=click.IntRange(600, 20000),
    help="Picture width in pixels (600 to 20000).",
)
@click.pass_context
def timeline(ctx: click.Context, job: str, output: Path | None, width: int) -> None:
    """Draw JOB as a timeline: one bar per step attempt, dependencies, retries, resumes.

    Example: steplog timeline job_x --output job_x.html
    """
    # Imported here: each verb imports what it needs, and every command pays for its imports.
    from steplog.commands.interchange import write_atomically
    from steplog.commands.timeline import build
    from steplog.commands.timeline_svg import render_html, render_svg

    store = store_for(ctx)
    job = resolve_job(store, job)
    if not store.job_exists(job):
        raise Rejected(f"unknown job {job}")
    tl = build(job, store.read_job(job))
    if output is not None and str(output) == "-":
        sys.stdout.write(render_svg(tl, width))
        return
    # beside the job's workspace (runs/<JOB>.timeline.svg for runs/<JOB>/), wherever this runs;
    # a relative workspace (the predecessor's runs/<JOB>) is taken from here
    parent = Path(tl.workspace).parent if tl.workspace else Path("runs")
    target = output or parent / f"{job}.timeline.svg"
    suffix = target.suffix.lower()
    if suffix not in (".svg", ".html", ".htm"):
        raise Rejected(f"--output must end in .svg or .html, not {target.name!r}")
    text = render_svg(tl, width) if suffix == ".svg" else render_html(tl, width)
    write_atomically(target, text)
    say(f"wrote {target} ({counted(len(tl.bars), 'bar')}, {counted(len(tl.steps), 'step')})")


@cli.command("export")
@click.argument("job")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE instead of standard output.",
)
@click.option(
    "--blobs",
    "blobs",
    default="inline",
    show_default=True,
    metavar="inline|DIR",
    help="Put blob contents in the file, or in DIR/<sha256> beside it.",
)
@click.pass_context
def export_cmd(ctx: click.Context, job: str, output: Path | None, blobs: str) -> None:
    """Write JOB's events (and the blobs they point at) as JSON lines.

    Example: steplog export job_x --output job_x.jsonl
    """
    from steplog.commands.interchange import (
        export_job,
        export_lines,
        missing_warning,
        write_atomically,
    )

    store = store_for(ctx)
    job = resolve_job(store, job)
    blob_dir = None if blobs == "inline" else Path(blobs).resolve()
    # blob lines name their files relative to the export file, so the pair can move together
    base = (output.parent if output is not None else Path.cwd()).resolve()
    exported = export_job(store, job, blob_dir=blob_dir, relative_to=base)
    if output is None:
        sys.stdout.writelines(export_lines(exported))
        sys.stdout.flush()
    else:
        write_atomically(output, export_lines(exported))
        say(
            f"wrote {output}: {counted(exported.events, 'event')}, "
            f"{counted(exported.blobs, 'blob')}",
            err=True,
        )
    warning = missing_warning(exported)
    if warning is not None:
        say(warning, err=True)


@cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--job-id", help="Import under this job id (default: the file's).")
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, job_id: str | None) -> None:
    """Load FILE (a steplog export or the predecessor's events.jsonl) as a new job.

    Example: steplog import job_x.jsonl --job-id job_x_copy
    """
    from steplog.commands.interchange import import_job, read_checked

    created = not app_for(ctx).database_exists()  # this verb is the first to open it
    checked = read_checked(file, job_id) if created else None  # refused: no file left behind
    store = store_for(ctx, write=True)
    if created and store.created:  # (not when another process made it meanwhile)
        click.echo(f"created new database {store.where}", err=True)
    target, plan = import_job(store, file, job_id, checked=checked)
    kind = "predecessor events.jsonl" if plan.predecessor else "steplog export"
    say(
        f"imported job {target} from {file} ({kind}): {counted(len(plan.events), 'event')}, "
        f"{counted(len(plan.blobs), 'blob')}"
    )
