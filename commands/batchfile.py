"""The inputs file of a batch (`steplog run PIPELINE --inputs FILE`): one job per row.

Pure, no I/O: `parse_rows` turns the file's bytes into rows (JSON lines, or CSV with a header),
and `job_specs` checks every row against the pipeline's inputs and names its job. Every
problem is one `BatchFileError` line naming FILE:LINE and what is wrong, raised before anything
is appended; the caller reads the file and appends the jobs.

- JSON lines (`.jsonl`, `.ndjson`): one JSON object per line, values text; blank lines skipped.
- CSV (`.csv`): a header row naming the columns, then one row per job; an empty cell is a
  value not given (the `--input` default, then the pipeline's default apply).
- The key or column `id` is the job id; without it a job is named PREFIX + its row number,
  zero-padded to the width of the last one (`eval-001` … `eval-200`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Mapping, Sequence

from steplog.errors import Rejected
from steplog.executor.pipeline import NAME_PATTERN
from steplog.words import counted

ID_KEY = "id"
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class BatchFileError(Rejected):
    """An inputs file that cannot make a batch; the message names FILE:LINE and the problem."""


@dataclass(frozen=True)
class Row:
    line: int  # where the row starts in the file, from 1
    values: dict[str, str]  # key -> value as the file gives it (the id too); given keys only


@dataclass(frozen=True)
class ParsedFile:
    name: str  # how messages name the file
    rows: list[Row]
    header_line: int | None = None  # CSV: the line naming the columns (unknown ones are there)


@dataclass(frozen=True)
class JobSpec:
    """One row made a job: its id and its inputs, resolved as `run` resolves them."""

    line: int
    job_id: str
    inputs: dict[str, str] = field(default_factory=dict)


def format_of(path: PurePath) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BatchFileError(
            f"{path}: an inputs file must end in .jsonl (JSON lines) or .csv, not "
            f"{path.suffix or 'no suffix'!r}"
        )
    return fmt


def parse_rows(name: str, data: bytes, fmt: str) -> ParsedFile:
    """The rows of an inputs file; BatchFileError for the first problem, at its line."""
    text = _decode(name, data)
    parsed = _jsonl(name, text) if fmt == "jsonl" else _csv(name, text)
    if not parsed.rows:
        what = "no rows under its header" if parsed.header_line else "no rows"
        raise BatchFileError(f"{name}: {what} (an inputs file holds one job per row)")
    return parsed


def _decode(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BatchFileError(
            f"{name}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise BatchFileError(f"{name}:{line}: holds a NUL character, which no input may")
    return text


def _no_duplicate_keys(name: str, line: int) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise BatchFileError(f"{name}:{line}: key {key!r} is given twice")
            out[key] = value
        return out

    return hook


_JSON_KINDS = {dict: "an object", list: "a list", bool: "true/false", int: "a number"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_KINDS.get(type(value), "a number")


def _jsonl(name: str, text: str) -> ParsedFile:
    rows = []
    # split on \n only: str.splitlines() would also split inside a value at U+2028, \x1c …
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_no_duplicate_keys(name, number))
        except json.JSONDecodeError as exc:
            raise BatchFileError(
                f"{name}:{number}: not a JSON object: {exc.msg} (column {exc.colno})"
            ) from None
        if not isinstance(value, dict):
            raise BatchFileError(f"{name}:{number}: expected a JSON object, found {_kind(value)}")
        for key, item in value.items():
            if not isinstance(item, str):
                raise BatchFileError(
                    f"{name}:{number}: {key!r} is {_kind(item)}; inputs are text, so write it "
                    f"as a JSON string"
                )
        rows.append(Row(number, value))
    return ParsedFile(name, rows)


def _csv(name: str, text: str) -> ParsedFile:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Row] = []
    header: list[str] | None = None
    header_line = 0
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record or (header is None and not any(cell.strip() for cell in record)):
                continue  # a blank line (a row of empty cells is a row of defaults)
            if header is None:
                header, header_line = [cell.strip() for cell in record], line
                _check_header(name, header, line)
                continue
            if len(record) != len(header):
                raise BatchFileError(
                    f"{name}:{line}: {counted(len(record), 'value')} for "
                    f"{counted(len(header), 'column')} ({', '.join(header)})"
                )
            rows.append(Row(line, {k: v for k, v in zip(header, record) if v != ""}))
    except csv.Error as exc:
        raise BatchFileError(f"{name}:{reader.line_num}: not valid CSV: {exc}") from None
    if header is None:
        raise BatchFileError(f"{name}: empty (a CSV inputs file starts with a header row)")
    return ParsedFile(name, rows, header_line)


def _check_header(name: str, header: list[str], line: int) -> None:
    seen: set[str] = set()
    for column in header:
        if not column:
            raise BatchFileError(f"{name}:{line}: a column of the header has no name")
        if column in seen:
            raise BatchFileError(f"{name}:{line}: column {column!r} is named twice")
        seen.add(column)


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    import difflib

    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f" (the pipeline's inputs: {', '.join(known) or 'none'}; and {ID_KEY!r} for the job id)"


def job_specs(
    parsed: ParsedFile,
    declared: Mapping[str, str | None],
    *,
    given: Mapping[str, str] | None = None,
    prefix: str,
) -> list[JobSpec]:
    """Each row as a job, or BatchFileError for the first bad row.

    declared: the pipeline's inputs, name -> default (None: required). given: the `--input`
    values, a default every row may override. prefix: names a job whose row has no `id`.
    """
    name = parsed.name
    if ID_KEY in declared:
        raise BatchFileError(
            f"{name}: the pipeline declares an input named {ID_KEY!r}, which an inputs file "
            f"keeps for job ids; rename that input to run it as a batch"
        )
    given = dict(given or {})
    for key in given:
        if key not in declared:
            raise Rejected(
                f"unknown input {key!r} (declared inputs: {', '.join(declared) or 'none'})"
            )
    width = len(str(len(parsed.rows)))
    first_line: dict[str, int] = {}
    specs = []
    for number, row in enumerate(parsed.rows, start=1):
        for key in row.values:
            if key != ID_KEY and key not in declared:
                where = parsed.header_line or row.line
                what = "column" if parsed.header_line else "key"
                raise BatchFileError(
                    f"{name}:{where}: unknown {what} {key!r}{_did_you_mean(key, list(declared))}"
                )
        job_id = row.values.get(ID_KEY)
        if job_id is None:
            job_id = f"{prefix}{number:0{width}d}"
            if not NAME_PATTERN.fullmatch(job_id):
                raise BatchFileError(
                    f"{name}:{row.line}: job id {job_id!r} (prefix {prefix!r} + row number) is "
                    "not valid (letters, digits, _ and -, at most 64, not starting with a digit)"
                )
        elif not NAME_PATTERN.fullmatch(job_id):
            raise BatchFileError(
                f"{name}:{row.line}: id {job_id!r} is not a valid job id (letters, digits, _ "
                "and -, at most 64, not starting with a digit or -)"
            )
        if job_id in first_line:
            raise BatchFileError(
                f"{name}:{row.line}: duplicate job id {job_id!r} (also line {first_line[job_id]})"
            )
        first_line[job_id] = row.line
        inputs = {}
        for input_name, default in declared.items():
            value = row.values.get(input_name, given.get(input_name, default))
            if value is None:
                raise BatchFileError(
                    f"{name}:{row.line}: input {input_name!r} is required: give it a value in "
                    f"this row, or --input {input_name}=VALUE for every row"
                )
            inputs[input_name] = value
        specs.append(JobSpec(row.line, job_id, inputs))
    return specs


__all__ = [
    "BatchFileError",
    "JobSpec",
    "ParsedFile",
    "Row",
    "format_of",
    "job_specs",
    "parse_rows",
]
