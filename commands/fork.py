"""`replay JOB --until POINT --fork NEW_JOB`: a new job whose history is JOB's up to POINT.

The fork's log is a copy of the source's prefix — every event keeps its type, step, level,
data (byte for byte) and ts — followed by `job.forked`, all appended to NEW_JOB in one
transaction, with the fork's own versions and hash chain. The source is not touched.

Workspace: the fork gets its own (runs/NEW_JOB, or --workspace), which must not exist or be
empty; every file the prefix had written is restored there from the content the log holds
(the blob with the file's sha256, or the step's answer it was written from), so a resumed fork
sees the files it would have seen at POINT (a file whose content the log does not hold, e.g.
from a log imported without its blobs, is listed in job.forked's files_missing instead).
job.created keeps the source's workspace (it is a copy); job.forked records the fork's, and
the manifest fold takes it from there.

Ownership: job.forked clears the owner (the source's live process does not run the fork) and
leaves the fork in status `created`, so `steplog resume NEW_JOB` is never refused for an owner.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from steplog.commands.jobs import check_job_id, check_workspace
from steplog.commands.replay import replay
from steplog.errors import Rejected
from steplog.eventstore.events import JobForked, NewEvent, parse_data
from steplog.eventstore.record import EventStore, StoredEvent, StoreError, VersionConflict
from steplog.executor.outputs import OutputProblem, parse_output
from steplog.executor.workspace import UnsafePath, safe_relative, write_file


@dataclass(frozen=True)
class ForkResult:
    job_id: str
    source_job: str
    until_version: int
    events: int  # copied from the source, job.forked not counted
    workspace: Path
    files: list[str]
    missing: list[str]  # written by the prefix, but their content is not in the log


def fork_document(result: ForkResult) -> dict[str, Any]:
    """What `replay --fork --json` prints (and steplog.models.ForkResult holds)."""
    return {
        "job_id": result.job_id,
        "source_job": result.source_job,
        "until_version": result.until_version,
        "events_copied": result.events,
        "workspace": str(result.workspace),
        "files_restored": result.files,
        "files_missing": result.missing,
    }


def files_at_point(
    store: EventStore, events: list[StoredEvent]
) -> tuple[dict[str, bytes], list[str]]:
    """path -> content of every file the prefix wrote (the last write of each path wins), and
    the paths whose content the log does not hold.

    Each file.written names a sha256; its content is the blob with that hash if the log holds
    one, else the file of that name in the answer the step last received before the write
    (llm.response / cache.hit / step.succeeded / step.skipped), checked against the hash.
    """
    answers: dict[str, str] = {}  # step -> sha of the answer its files come from
    wanted: dict[str, tuple[str, str | None, str]] = {}  # path -> (sha, step, answer sha)
    for ev in events:
        if ev.type not in (
            "llm.response",
            "cache.hit",
            "step.succeeded",
            "step.skipped",
            "file.written",
        ):
            continue
        d = orjson.loads(ev.data_json)
        if ev.type == "file.written":
            wanted[d["path"]] = (d["sha256"], ev.step, answers.get(ev.step or "", ""))
        elif ev.type == "llm.response":
            if d.get("success") and d.get("response_sha256"):
                answers[ev.step or ""] = d["response_sha256"]
        elif ev.type == "cache.hit":
            answers[ev.step or ""] = d["response_sha256"]
        else:
            answers[ev.step or ""] = d["output_sha256"]
    if not wanted:
        return {}, []
    shas = [sha for sha, _, _ in wanted.values()]
    held = store.find_blobs(shas)
    parsed: dict[str, dict[str, bytes]] = {}
    out: dict[str, bytes] = {}
    missing: list[str] = []
    for path, (sha, _step, answer) in wanted.items():
        if sha in held:
            out[path] = held[sha]
            continue
        if answer not in parsed:
            parsed[answer] = {}
            if answer:
                try:
                    text = store.get_blob(answer).decode("utf-8")
                    files = parse_output("files", text).files
                    parsed[answer] = {
                        str(safe_relative(p)): c.encode("utf-8") for p, c in files.items()
                    }
                except (StoreError, OutputProblem, UnsafePath, UnicodeDecodeError):
                    pass
        content = parsed[answer].get(path)
        if content is None or hashlib.sha256(content).hexdigest() != sha:
            missing.append(path)  # e.g. a log imported without its blobs
            continue
        out[path] = content
    return out, sorted(missing)


def _check_workspace(workspace: Path) -> None:
    if workspace.exists() and (not workspace.is_dir() or any(workspace.iterdir())):
        raise Rejected(
            f"workspace {workspace} already exists and is not empty; choose another with "
            "--workspace"
        )


def fork_job(
    store: EventStore,
    source: str,
    point: str,
    new_job: str,
    workspace: Path | None = None,
) -> ForkResult:
    """Validate everything, append the fork in one transaction, then restore its files."""
    check_job_id(new_job)
    if not store.job_exists(source):
        raise Rejected(f"unknown job {source}")
    if store.job_exists(new_job):
        raise Rejected(f"job {new_job} already exists; choose another name for the fork")
    view = replay(store, source, point)  # BadPoint (exit 2) for a point past the end, …
    prefix = view.events
    root = (workspace or Path("runs") / new_job).resolve()
    _check_workspace(root)
    check_workspace(root)  # writable, before the fork is in the log
    files, missing = files_at_point(store, prefix)
    for ev in prefix:
        parse_data(ev.type, ev.data_json)  # the vocabulary still accepts every copied event
    forked = NewEvent.of(
        JobForked(
            source_job=source,
            until_version=view.version,
            point=point,
            source_hash=prefix[-1].hash,
            source_version=store.job_version(source),
            workspace=str(root),
            files_restored=len(files),
            files_missing=missing,
        )
    )
    rows = [(ev.ts, ev.level, ev.type, ev.step, ev.data_json) for ev in prefix]
    rows.append((forked.ts, forked.level, forked.type, forked.step, forked.data_json()))
    try:
        store.append_rows(new_job, rows, expected_version=0)
    except VersionConflict as exc:
        raise Rejected(f"job {new_job} already exists; choose another name for the fork") from exc
    try:
        root.mkdir(parents=True, exist_ok=True)
        for path, content in sorted(files.items()):
            write_file(root, path, content)
    except (OSError, UnsafePath) as exc:
        # The fork is in the log already; say so rather than pretend nothing happened.
        raise StoreError(
            f"job {new_job} was forked, but restoring its files in {root} failed: {exc}; "
            "resuming it rewrites the files of the steps it re-runs only"
        ) from exc
    return ForkResult(new_job, source, view.version, len(prefix), root, sorted(files), missing)
