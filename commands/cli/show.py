"""`steplog show JOB STEP`: one attempt of a step, its parts labelled or one part raw.

`--PART` writes the text exactly as stored: no rich markup, and not through click.echo, which
drops escape sequences when the output is not a terminal. The labelled summary is for reading:
its text is as stored too, except control characters, shown escaped (words.visible): on its
one-line fields every one, in its blocks (prompt, answer …) all but newline and tab.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from steplog.commands.cli.group import app_for, cli, echo_json, json_option
from steplog.errors import Rejected
from steplog.words import counted, money, one_line, seconds, visible

if TYPE_CHECKING:
    from steplog.commands.show import StepAttempt

PARTS = ("system", "prompt", "answer", "output", "files")


def write_raw(text: str) -> None:
    """`text` as UTF-8 bytes, nothing added or taken away."""
    out = sys.stdout
    buffer = getattr(out, "buffer", None)
    if buffer is None:  # a text stream with no bytes below it (a test's StringIO)
        out.write(text)
        out.flush()
        return
    out.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


def _missing(shown: StepAttempt, part: str) -> Rejected:
    why = {"running": "it is running", "interrupted": "it was interrupted"}.get(
        shown.status, f"it {shown.status}"
    )
    if shown.error_type:
        why += f" ({shown.error_type})"
    if shown.missing_blobs:
        lacks = counted(len(shown.missing_blobs), "blob")
        why += f"; the database lacks {lacks} {', '.join(s[:12] for s in shown.missing_blobs)}"
    return Rejected(
        f"attempt {shown.attempt} of step {shown.step} in job {shown.job_id} has no {part} "
        f"in the log: {why}"
    )


def part_text(shown: StepAttempt, part: str) -> str:
    """What `--PART` prints: the text as stored, or the files in sha256sum's format."""
    if part == "files":
        return "".join(f"{f.sha256}  {f.path}\n" for f in shown.files)
    if part == "system":
        if shown.prompt is None:  # no call was prepared: whether it had a system prompt is unknown
            raise _missing(shown, "system prompt")
        return shown.system or ""
    value = {"prompt": shown.prompt, "answer": shown.answer, "output": shown.output_text}[part]
    if value is None:
        raise _missing(shown, part)
    return value


def _block(label: str, text: str) -> str:
    text = visible(text, keep="\n\t")
    return f"--- {label} ---\n{text}" + ("" if text.endswith("\n") or not text else "\n")


def summary(shown: StepAttempt) -> str:
    """Every part, labelled, for reading."""
    lines = [
        f"job {shown.job_id}  step {shown.step}  attempt {shown.attempt} of {shown.attempts}  "
        f"{shown.status}",
        f"started {shown.started}  finished {shown.finished or '-'}  duration "
        + seconds(shown.duration_s, "-"),
    ]
    cost = "unpriced" if shown.cost is None else money(shown.cost)
    lines.append(
        f"provider {shown.provider or '-'}  model {shown.model or '-'}  tokens in "
        f"{shown.tokens_in} out {shown.tokens_out}  cost {cost}  output {shown.output_kind or '-'}"
    )
    if shown.cache_hit:
        lines.append(
            f"cache hit: answer from {shown.origin_job}/{shown.origin_step or '-'} "
            f"({counted(shown.tokens_saved or 0, 'token')} saved)  key {shown.cache_key}"
        )
    elif shown.cache_hit is False:
        lines.append(f"cache miss  key {shown.cache_key}")
    lines.append(f"calls {len(shown.calls)}  retries {shown.retries}")
    for call in shown.calls:
        outcome = {True: "ok", False: "failed", None: "no response"}[call.success]
        took = seconds(call.duration_s, "-")
        detail = f"  {call.error_class}: {call.error}" if call.error else ""
        lines.append(
            f"  call {call.number}: {outcome}  {call.provider} {call.model}  {took}  tokens in "
            f"{call.tokens_in} out {call.tokens_out}{detail}"
        )
    if shown.error is not None:
        lines.append(f"error ({shown.error_type}): {shown.error}")
    if shown.missing_blobs:
        lines.append(f"missing blobs: {', '.join(shown.missing_blobs)}")
    text = "".join(one_line(ln) + "\n" for ln in lines)
    if shown.prompt is not None:
        text += _block("system prompt", shown.system) if shown.system is not None else ""
        text += _block("prompt", shown.prompt)
    if shown.answer is not None:
        text += _block("answer", shown.answer)
    if shown.output_text is not None and shown.output_kind == "json":
        text += _block("output (json, as stored)", shown.output_text)
    if shown.files:
        rows = "".join(
            f"{one_line(f.path)}  {f.reason}  "
            f"{counted(f.size, 'byte') if f.size is not None else '- bytes'}  {f.sha256}\n"
            for f in shown.files
        )
        text += _block("files", rows)
    return text


@cli.command("show")
@click.argument("job")
@click.argument("step")
@click.option("--system", is_flag=True, help="Print only the rendered system prompt, raw.")
@click.option("--prompt", is_flag=True, help="Print only the rendered prompt, raw.")
@click.option("--answer", is_flag=True, help="Print only the provider's answer, raw.")
@click.option("--output", is_flag=True, help="Print only the step's output as stored, raw.")
@click.option("--files", is_flag=True, help="Print only the files written: 'SHA256  PATH' lines.")
@click.option(
    "--attempt",
    type=click.IntRange(1, 2**63 - 1),
    help="Which attempt (default: the latest).",
)
@json_option
@click.pass_context
def show(
    ctx: click.Context,
    job: str,
    step: str,
    system: bool,
    prompt: bool,
    answer: bool,
    output: bool,
    files: bool,
    attempt: int | None,
    as_json: bool,
) -> None:
    """Show one attempt of STEP in JOB: rendered prompt, answer, output, cost, files.

    --prompt, --answer, --output (and --system) print that text alone, byte for byte as the
    log holds it, for a pipe or a file; --files prints the files the attempt wrote in the
    format of sha256sum; --json prints every part as one JSON object.

    Example: steplog show job_x builder --answer > answer.txt
    """
    chosen = [name for name, on in zip(PARTS, (system, prompt, answer, output, files)) if on]
    if len(chosen) + as_json > 1:
        raise click.UsageError(
            "--system, --prompt, --answer, --output, --files and --json exclude each other"
        )

    shown = app_for(ctx).show(job, step, attempt)
    if as_json:
        echo_json(shown.model_dump(mode="json"))
    elif chosen:
        write_raw(part_text(shown, chosen[0]))
    else:
        write_raw(summary(shown))
