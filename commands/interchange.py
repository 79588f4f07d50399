"""`steplog export` / `steplog import`: one job as JSON lines in the predecessor's envelope.

The file (format 1), one JSON object per line, every line in the envelope
`{"ts", "level", "job_id", "type", "step", "data"}` with the keys in that order:

    line 1      type "steplog.export": data {"format": 1, "events": N, "blobs": M,
                "blob_store": "inline" | "dir"}; ts is the job's first event's ts
    then        the job's events in version order, `data` byte for byte as stored
    blob lines  type "steplog.blob", level DEBUG, step null, placed just before the first event
                that points at the blob (ts copied from it): data {"sha256", "size",
                "encoding": "utf-8" | "base64", "content"} inline, or {"sha256", "size", "path"}
                with the bytes in a sidecar file (`--blobs DIR`: DIR/<sha256>, path relative to
                the export file's directory)

A blob is exported when an event's data has a top-level field ending in `sha256` whose value
the database holds as a blob (file.written hashes name workspace files, usually not stored).
The same job gives the same bytes every time: no clock, no dict reordering, compact separators.

Import parses and validates every line before anything is written, then appends the whole job
(events and blobs) in one transaction. A file whose first line is not the steplog.export header
is read as the predecessor's events.jsonl (commands.predecessor maps it).
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steplog.errors import Rejected
from steplog.eventstore.events import InvalidEvent, NewEvent
from steplog.eventstore.record import EventStore, VersionConflict, blob_sha256
from steplog.executor.pipeline import NAME_PATTERN
from steplog.words import error_path

FORMAT = 1
HEADER_TYPE = "steplog.export"
BLOB_TYPE = "steplog.blob"
ENVELOPE_KEYS = ("ts", "level", "job_id", "type", "step", "data")
_SHA = re.compile(r"[0-9a-f]{64}")


class BadImport(Rejected):
    """An import file that cannot be loaded; the message names the line. Nothing was written."""


# -- export ---------------------------------------------------------------------------------------


def sha_fields(data_json: str) -> list[tuple[str, str]]:
    """(field, sha256) of an event's top-level fields named *sha256, in order.

    A field named `<what>_sha256` points at a blob the database must hold (as `verify` checks).
    `file.written`'s own `sha256` names the content of a workspace file, which lives in the
    step's output blob: it is exported when the database happens to hold it, never missed."""
    if "sha256" not in data_json:
        return []
    data = json.loads(data_json)
    return [
        (k, v)
        for k, v in data.items()
        if k.endswith("sha256") and isinstance(v, str) and _SHA.fullmatch(v)
    ]


def is_blob_ref(name: str) -> bool:
    return name.endswith("_sha256")


# Line breaks to some readers (str.splitlines, editors) though not to JSON: always escaped, so a
# line is a line everywhere. They can only occur inside JSON strings, where the escape is equal.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _envelope(
    ts: str, level: str, job_id: str, type_: str, step: str | None, data_json: str
) -> str:
    head = json.dumps(
        {"ts": ts, "level": level, "job_id": job_id, "type": type_, "step": step},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return (head[:-1] + ',"data":' + data_json + "}").translate(_LINE_BREAKS)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _blob_data_inline(sha: str, content: bytes) -> dict[str, Any]:
    try:
        return {
            "sha256": sha,
            "size": len(content),
            "encoding": "utf-8",
            "content": content.decode("utf-8"),
        }
    except UnicodeDecodeError:
        text = base64.b64encode(content).decode("ascii")
        return {"sha256": sha, "size": len(content), "encoding": "base64", "content": text}


@dataclass
class Exported:
    """An export, counted: `lines()` reads the job again and yields the file's lines one at a
    time, fetching each blob as its first event comes, so memory holds one blob and one batch
    of events however large the job is."""

    events: int
    blobs: int
    missing: list[str] = field(default_factory=list)  # referenced, not in the database
    # missing sha -> where the first event pointing at it is ("output_sha256 of event 9 …")
    missing_where: dict[str, str] = field(default_factory=dict)
    lines: Callable[[], Iterator[str]] = field(default=lambda: iter(()), repr=False)

    def text(self) -> str:
        return "".join(export_lines(self))


def export_job(
    store: EventStore,
    job_id: str,
    *,
    blob_dir: Path | None = None,
    relative_to: Path | None = None,
) -> Exported:
    """The export file of `job_id`, as of now (events appended later are not in it). With
    blob_dir, blob contents go to blob_dir/<sha256> (written here, before any line) and blob
    lines carry their path relative to `relative_to`."""
    refs: dict[int, list[tuple[str, str]]] = {}  # version -> (field, sha) of its blob fields
    where: dict[str, str] = {}  # sha -> the first event pointing at it, for a missing one
    first_ts, last = "", 0
    for ev in store.read_job(job_id):
        first_ts, last = first_ts or ev.ts, ev.version
        found = sha_fields(ev.data_json)
        if found:
            refs[ev.version] = found
        for name, sha in found:
            if is_blob_ref(name) and sha not in where:
                step = f" {ev.step}" if ev.step else ""
                where[sha] = f"{name} of {ev.type}{step}, event {ev.version}"
    if not last:
        raise Rejected(f"unknown job {job_id}")
    present = store.stored_blobs([sha for found in refs.values() for _, sha in found])
    missing = {sha: text for sha, text in where.items() if sha not in present}
    sizes: dict[str, int] = {}  # with blob_dir: each blob's size, for its line
    if blob_dir is not None:
        # every blob file before the first line, one blob in memory at a time: a directory that
        # cannot take them stops the export before anything is written to its output
        try:
            blob_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Rejected(f"cannot write blobs to {blob_dir}: {exc.strerror or exc}") from exc
        for found in refs.values():
            for _, sha in found:
                if sha in present and sha not in sizes:
                    content = store.get_blob(sha)
                    _write_sidecar(blob_dir, sha, content)
                    sizes[sha] = len(content)
    header = {
        "format": FORMAT,
        "events": last,
        "blobs": len(present),
        "blob_store": "inline" if blob_dir is None else "dir",
    }

    def lines() -> Iterator[str]:
        yield _envelope(first_ts, "INFO", job_id, HEADER_TYPE, None, _compact(header))
        emitted: set[str] = set()
        for ev in store.read_job(job_id, until_version=last):
            new = [sha for _, sha in refs.get(ev.version, ()) if sha in present]
            new = [sha for sha in dict.fromkeys(new) if sha not in emitted]
            contents = store.get_blobs(new) if new and blob_dir is None else {}
            for sha in new:
                emitted.add(sha)
                if blob_dir is None:
                    data = _blob_data_inline(sha, contents[sha])
                else:
                    path = blob_dir / sha
                    shown = os.path.relpath(path, relative_to) if relative_to else str(path)
                    data = {"sha256": sha, "size": sizes[sha], "path": Path(shown).as_posix()}
                yield _envelope(ev.ts, "DEBUG", job_id, BLOB_TYPE, None, _compact(data))
            yield _envelope(ev.ts, ev.level, ev.job_id, ev.type, ev.step, ev.data_json)

    return Exported(last, len(present), list(missing), missing, lines)


def missing_warning(exported: Exported, shown: int = 3) -> str | None:
    """One line naming the blobs the events point at that the database lacks, or None."""
    if not exported.missing:
        return None
    count = len(exported.missing)
    named = "; ".join(f"{sha} ({exported.missing_where[sha]})" for sha in exported.missing[:shown])
    more = f"; and {count - shown} more" if count > shown else ""
    noun = "blob the events point at is" if count == 1 else "blobs the events point at are"
    return f"warning: {count} {noun} not in the database, so not exported: {named}{more}"


def _write_sidecar(blob_dir: Path, sha: str, content: bytes) -> None:
    target = blob_dir / sha
    try:
        if target.exists() and blob_sha256(target.read_bytes()) == sha:
            return
        tmp = target.with_name(f".{sha}.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)
    except OSError as exc:
        raise Rejected(f"cannot write blobs to {blob_dir}: {exc.strerror or exc}") from exc


def write_atomically(path: Path, text: str | Iterable[str]) -> None:
    """Write `text` (or its pieces, as they come): a regular file is replaced whole (temp file,
    fsync, rename), so an error half-way leaves the old one; a device or FIFO given as the
    output (`-o /dev/stdout`) is written to, never replaced by a file."""
    pieces = [text] if isinstance(text, str) else text
    # A symlink is followed, never replaced: to the file it names (replaced whole, the link
    # kept), or, for /dev/stdout and its kind (/proc/self/fd/N), to what the descriptor is.
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        if str(target).startswith("/proc/") or (
            target.exists() and not target.is_file() and not target.is_dir()
        ):
            with path.open("wb") as out:
                out.writelines(piece.encode("utf-8") for piece in pieces)
            return
        path = target
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as out:
                out.writelines(piece.encode("utf-8") for piece in pieces)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise Rejected(f"cannot write {path}: {exc.strerror or exc}") from exc


def export_lines(exported: Exported) -> Iterator[str]:
    """The export file's lines, each with its line end, for write_atomically or a stream."""
    return (line + "\n" for line in exported.lines())


# -- import ---------------------------------------------------------------------------------------


class _BlobLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    encoding: Literal["utf-8", "base64"] | None = None
    content: str | None = None
    path: str | None = None


@dataclass
class ImportPlan:
    """Everything a file holds, validated: what one transaction will append."""

    source_job: str
    events: list[NewEvent]
    blobs: dict[str, bytes]
    predecessor: bool


def read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for every non-blank line; BadImport names a line that is not."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadImport(f"cannot read {path}: {exc.strerror or exc}") from exc
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadImport(f"line {number}: not JSON ({exc.msg} at column {exc.colno})") from exc
        except UnicodeDecodeError as exc:
            raise BadImport(f"line {number}: not JSON (not UTF-8 at byte {exc.start})") from exc
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise BadImport(f"line {number}: not usable JSON ({exc})") from exc
        except RecursionError as exc:
            raise BadImport(f"line {number}: not usable JSON (nested too deeply)") from exc
        if not isinstance(value, dict):
            raise BadImport(
                f"line {number}: a line must be a JSON object, not {type(value).__name__}"
            )
        yield number, value


def _envelope_of(number: int, obj: dict[str, Any], required: Iterable[str]) -> None:
    for key in required:
        if key not in obj:
            raise BadImport(f"line {number}: missing envelope key {key!r}")
    for key in obj:
        if key not in ENVELOPE_KEYS:
            raise BadImport(f"line {number}: unknown envelope key {key!r}")
    for key in ("ts", "level", "job_id", "type"):
        if key in obj and not isinstance(obj[key], str):
            raise BadImport(f"line {number}: {key} must be a string")
    if obj.get("step") is not None and not isinstance(obj["step"], str):
        raise BadImport(f"line {number}: step must be a string or null")
    if "data" in obj and obj["data"] is not None and not isinstance(obj["data"], dict):
        raise BadImport(f"line {number}: data must be a JSON object")


def parse_event(number: int, obj: dict[str, Any]) -> NewEvent:
    """One envelope line as a validated event (types, data fields, level, ts, step)."""
    try:
        event = NewEvent.parse(
            obj["type"], obj.get("data"), obj.get("step"), obj["level"], obj["ts"]
        )
        event.data_json()  # text UTF-8 cannot hold (a lone \ud800) is refused here, with its line
    except InvalidEvent as exc:
        raise BadImport(f"line {number}: {exc}") from exc
    return event


def _blob(number: int, obj: dict[str, Any], base: Path) -> tuple[str, bytes]:
    try:
        line = _BlobLine.model_validate(obj.get("data") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = error_path(first["loc"]) or "data"
        raise BadImport(f"line {number}: {BLOB_TYPE}: data.{where}: {first['msg']}") from exc
    if (line.content is None) == (line.path is None):
        raise BadImport(f"line {number}: {BLOB_TYPE} needs either content or path")
    if line.path is not None:
        where = base / line.path
        try:
            content = where.read_bytes()
        except OSError as exc:
            raise BadImport(
                f"line {number}: cannot read blob file {where}: {exc.strerror or exc}"
            ) from exc
    elif line.encoding == "base64":
        try:
            content = base64.b64decode(line.content or "", validate=True)
        except ValueError as exc:
            raise BadImport(f"line {number}: blob content is not valid base64") from exc
    else:
        content = (line.content or "").encode("utf-8")
    actual = blob_sha256(content)
    if actual != line.sha256:
        raise BadImport(
            f"line {number}: blob content does not match its sha256 {line.sha256[:12]} (it hashes to {actual[:12]})"
        )
    if len(content) != line.size:
        raise BadImport(
            f"line {number}: blob {line.sha256[:12]} is {len(content)} bytes, not {line.size}"
        )
    return line.sha256, content


def parse_export(lines: list[tuple[int, dict[str, Any]]], base: Path) -> ImportPlan:
    """A steplog export file (its header already recognised) as an import plan."""
    number, header = lines[0]
    _envelope_of(number, header, ENVELOPE_KEYS)
    fmt = (header.get("data") or {}).get("format")
    if fmt != FORMAT:
        raise BadImport(
            f"line {number}: export format {fmt!r} is not supported (this steplog reads {FORMAT})"
        )
    job = header["job_id"]
    events: list[NewEvent] = []
    blobs: dict[str, bytes] = {}
    for number, obj in lines[1:]:
        _envelope_of(number, obj, ENVELOPE_KEYS)
        if obj["job_id"] != job:
            raise BadImport(
                f"line {number}: job_id {obj['job_id']!r} differs from {job!r} (one job per file)"
            )
        if obj["type"] == BLOB_TYPE:
            sha, content = _blob(number, obj, base)
            blobs[sha] = content
            continue
        if obj["type"] == HEADER_TYPE:
            raise BadImport(f"line {number}: a second {HEADER_TYPE} header")
        ev = parse_event(number, obj)
        if not events and ev.type != "job.created":
            raise BadImport(f"line {number}: the first event must be job.created, not {ev.type}")
        events.append(ev)
    if not events:
        raise BadImport("the file holds no events")
    promised = (header["data"].get("events"), header["data"].get("blobs"))
    if promised != (len(events), len(blobs)):
        raise BadImport(
            f"line {lines[0][0]}: the header promises {promised[0]} events and {promised[1]} blobs,"
            f" the file holds {len(events)} and {len(blobs)} (truncated or edited?)"
        )
    return ImportPlan(job, events, blobs, predecessor=False)


def read_import(path: Path) -> ImportPlan:
    from steplog.commands.predecessor import parse_predecessor  # it builds on this module

    lines = list(read_lines(path))
    if not lines:
        raise BadImport(f"{path} is empty")
    if lines[0][1].get("type") == HEADER_TYPE:
        return parse_export(lines, path.parent)
    return parse_predecessor(lines)


def read_checked(path: Path, job_id: str | None = None) -> tuple[str, ImportPlan]:
    """The whole file validated, and the job id it will be imported as: everything an import
    checks that needs no database (so a refused import into a new database creates no file)."""
    plan = read_import(path)
    target = job_id or plan.source_job
    if not NAME_PATTERN.fullmatch(target):
        raise BadImport(
            f"job id {target!r} is not valid (letters, digits, _ and -, at most 64); choose one with --job-id"
        )
    return target, plan


def import_job(
    store: EventStore,
    path: Path,
    job_id: str | None = None,
    *,
    checked: tuple[str, ImportPlan] | None = None,
) -> tuple[str, ImportPlan]:
    """Validate the whole file (unless `checked`, read_checked's answer, is given), then append
    it as one new job in one transaction."""
    target, plan = checked or read_checked(path, job_id)
    if store.job_exists(target):
        raise BadImport(f"job {target} already exists; import it under another name with --job-id")
    try:
        store.append(target, plan.events, expected_version=0, blobs=list(plan.blobs.values()))
    except VersionConflict as exc:
        raise BadImport(
            f"job {target} already exists; import it under another name with --job-id"
        ) from exc
    return target, plan


__all__ = ["BadImport", "Exported", "ImportPlan", "export_job", "import_job", "read_checked"]
