"""What `run` must not overwrite: files already in the workspace that the new job would replace.

A pipeline does not declare the files it writes: a `files` step's paths are in its answer. So
the check asks what is known before the run:

- a `files` step the cache will serve (its answer is known, as `steplog plan` finds it) writes
  the paths its cached answer names: a file already at one of them with other content would be
  replaced (one with the same content is left as it is, `reason=unchanged`);
- a `files` step that will call its provider writes paths no one knows yet: any file in the
  workspace may be one of them.

Without --overwrite, `run` is refused naming them, before job.created is appended. With it, the
executor's rule holds (executor/workspace.py): a replaced file's content is stored as a blob
first and `file.written` records `reason=modified_outside` at level WARNING.

`resume` is not checked: the workspace is the job's own (files in it when the job was created
were accepted then, with --overwrite), and what was edited since is drift (executor/drift.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from steplog.errors import Rejected
from steplog.eventstore.record import EventStore
from steplog.executor.pipeline import Pipeline
from steplog.executor.workspace import UnsafePath, is_temp_name, read_inside, safe_relative

SHOWN = 3  # files named in the refusal; the rest are counted


@dataclass(frozen=True)
class InTheWay:
    files: list[str]  # relative to the workspace, sorted
    unknown_steps: list[str]  # files steps whose paths are not known before they answer


def existing_files(root: Path) -> list[str]:
    """Every file under root (not following symlinked directories), relative, sorted. Left out:
    steplog's own temp files (the run sweeps those of dead processes) and symlinks, which a
    step never writes through or over (it fails naming the link, executor/workspace.py)."""
    found: list[str] = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = Path(dirpath, name)
            if not is_temp_name(name) and not full.is_symlink():
                found.append(full.relative_to(root).as_posix())
    return sorted(found)


def in_the_way(
    store: EventStore, pipeline: Pipeline, inputs: dict[str, str], root: Path
) -> InTheWay | None:
    """The files of `root` a new run of `pipeline` would (or may) replace; None if none."""
    if not root.is_dir() or not any(s.output == "files" for s in pipeline.spec.steps.values()):
        return None
    present = existing_files(root)
    if not present:
        return None
    from steplog.commands.plan import predict  # plan imports jobs, which imports this lazily

    report = predict(store, pipeline, inputs, explain_misses=False)
    unknown = [
        name
        for name in pipeline.order
        if pipeline.spec.steps[name].output == "files" and name not in report.outputs
    ]
    if unknown:
        return InTheWay(present, unknown)
    replaced: set[str] = set()
    for output in report.outputs.values():
        for path, content in output.files.items():
            try:
                found = read_inside(root, path)
            except (UnsafePath, OSError):
                continue  # the step fails on it (unsafe_path) without writing anything
            digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
            if found is not None and hashlib.sha256(found).hexdigest() != digest:
                replaced.add(str(safe_relative(path)))
    return InTheWay(sorted(replaced), []) if replaced else None


def named(files: list[str]) -> str:
    shown = ", ".join(files[:SHOWN])
    more = len(files) - SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def check_workspace_free(
    store: EventStore, pipeline: Pipeline, inputs: dict[str, str], root: Path
) -> None:
    """Refuse a run whose workspace holds files it would (or may) overwrite."""
    found = in_the_way(store, pipeline, inputs, root)
    if found is None:
        return
    count = f"{len(found.files)} file{'s' if len(found.files) != 1 else ''}"
    if found.unknown_steps:
        steps = ", ".join(found.unknown_steps)
        which = "step" if len(found.unknown_steps) == 1 else "steps"
        what = (
            f"workspace {root} already holds {count} ({named(found.files)}) that {which} "
            f"{steps} may overwrite (a step's files are known only once it answers)"
        )
    else:
        what = (
            f"workspace {root} already holds {count} the job would overwrite ({named(found.files)})"
        )
    raise Rejected(
        f"{what}; choose an empty --workspace, or pass --overwrite to replace them "
        "(what is replaced is kept as a blob)"
    )
