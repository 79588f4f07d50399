"""Writing a step's files inside the job's workspace: confined, atomic, idempotent."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255


class UnsafePath(ValueError):
    """A path that would land outside the workspace or cannot be a file name."""


@dataclass(frozen=True)
class WriteResult:
    path: str
    sha256: str
    size: int
    wrote: bool
    reason: str  # created | updated | unchanged


def safe_relative(path: str) -> PurePosixPath:
    """Validate a path an LLM produced; returns it normalised, or raises UnsafePath."""
    if not path or not path.strip():
        raise UnsafePath("empty file path")
    if "\x00" in path:
        raise UnsafePath(f"file path {path!r} contains a NUL byte")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafePath(f"file path is longer than {MAX_PATH_BYTES} bytes")
    if "\\" in path:
        raise UnsafePath(f"file path {path!r} uses backslashes; use /")
    pure = PurePosixPath(path)
    if pure.is_absolute() or (len(path) > 1 and path[1] == ":"):
        raise UnsafePath(f"file path {path!r} is absolute")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise UnsafePath(f"file path {path!r} names no file")
    for part in parts:
        if part == "..":
            raise UnsafePath(f"file path {path!r} escapes the workspace with '..'")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise UnsafePath(
                f"a name in file path {path[:60]!r}... is longer than {MAX_NAME_BYTES} bytes"
            )
    return PurePosixPath(*parts)


def _no_symlinks(root: Path, rel: PurePosixPath) -> None:
    current = root
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePath(f"file path {str(rel)!r} goes through a symlink ({part})")


def write_file(root: Path, path: str, content: bytes) -> WriteResult:
    """Write `content` at `root/path` atomically (temp + fsync + rename), unless identical."""
    rel = safe_relative(path)
    root = root.resolve()
    _no_symlinks(root, rel)
    target = root.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(root):
        raise UnsafePath(f"file path {path!r} resolves outside the workspace")
    digest = hashlib.sha256(content).hexdigest()
    if target.is_file():
        if hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            return WriteResult(str(rel), digest, len(content), False, "unchanged")
        reason = "updated"
    elif target.exists():
        raise UnsafePath(f"file path {str(rel)!r} exists and is not a regular file")
    else:
        reason = "created"
    target.parent.mkdir(parents=True, exist_ok=True)
    _no_symlinks(root, rel)  # a directory created concurrently could have been a symlink
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return WriteResult(str(rel), digest, len(content), True, reason)
