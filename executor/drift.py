"""Files of a job's workspace that no longer hold what the log says steplog wrote there.

`resume` skips completed steps, so it never rewrites their files; it reports the ones edited or
deleted by hand instead (see README, "Files"). A step that runs again and finds its file changed
records `file.written` with reason `modified_outside` (executor/workspace.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from steplog.executor.workspace import UnsafePath, read_inside

if TYPE_CHECKING:
    from steplog.executor.plan import Plan


@dataclass(frozen=True)
class Drift:
    step: str
    path: str
    change: Literal["modified", "deleted", "unreadable"]


def find_drift(root: Path, logged: dict[str, tuple[str, str]], steps: Iterable[str]) -> list[Drift]:
    """The files of `steps` whose content differs from the log's, or that are gone."""
    wanted = set(steps)
    found: list[Drift] = []
    for path, (step, sha) in sorted(logged.items()):
        if step not in wanted:
            continue
        try:
            content = read_inside(root, path)
        except (UnsafePath, OSError):  # e.g. a symlink put where the file was
            found.append(Drift(step, path, "unreadable"))
            continue
        if content is None:
            found.append(Drift(step, path, "deleted"))
        elif hashlib.sha256(content).hexdigest() != sha:
            found.append(Drift(step, path, "modified"))
    return found


def describe(drift: Drift) -> str:
    what = {
        "modified": "was edited outside steplog",
        "deleted": "was deleted outside steplog",
        "unreadable": "cannot be read inside the workspace (a symlink or a directory now?)",
    }[drift.change]
    return f"warning: {drift.path} (written by completed step {drift.step}) {what}; left as it is"


def warnings(logged: dict[str, tuple[str, str]], root: Path, plan: Plan) -> list[str]:
    """One line per file of a step the plan skips (reuses) that no longer holds our content;
    `logged` is the store's logged_files() of the job."""
    if not plan.reuse:
        return []
    return [describe(d) for d in find_drift(root, logged, plan.reuse)]
