"""Writing a step's files inside the job's workspace: confined, atomic, idempotent.

Confined: a path an LLM produced is validated (`safe_relative`), then every directory on the
way to the file is opened relative to its parent with O_NOFOLLOW, and the file is created and
renamed through that directory's descriptor: a symlink planted in the workspace, or swapped in
after the check, is never followed out of it.

Atomic: the content goes to a temp file in the target's own directory, named
`.steplog-<pid>-<random>.tmp`; it is fsynced, renamed over the target, and the directory is
fsynced. A crash leaves at worst such a temp file (never a partial file under the final name);
`sweep_stale_temps` removes those of processes that are gone, and the runner calls it before a
job's steps run.

Modified outside: given what the log says steplog last wrote at each path (`last_written`), a
file whose content is neither that nor the new content was changed by someone else; the write
still happens (the step's answer is the file), reported with reason `modified_outside`, and
the content found is handed to `keep` first, so the caller can store it before it is replaced.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
TEMP_PREFIX = ".steplog-"
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\.steplog-(\d+)-[0-9a-f]{16}\.tmp$")
# Names Windows cannot hold: a generated project must check out anywhere.
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x01-\x1f\x7f]")


class UnsafePath(ValueError):
    """A path that would land outside the workspace or cannot be a file name."""


@dataclass(frozen=True)
class WriteResult:
    path: str
    sha256: str
    size: int
    wrote: bool
    reason: str  # created | updated | unchanged | modified_outside
    found_sha256: str | None = None  # modified_outside: the content that was there before


def safe_relative(path: str) -> PurePosixPath:
    """Validate a path an LLM produced; returns it normalised, or raises UnsafePath."""
    if not path or not path.strip():
        raise UnsafePath("empty file path")
    if "\x00" in path:
        raise UnsafePath(f"file path {path!r} contains a NUL byte")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no file name can hold it
        raise UnsafePath(f"file path {path!r} is not valid Unicode text ({exc.reason})") from exc
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise UnsafePath(f"file path is longer than {MAX_PATH_BYTES} bytes")
    if "\\" in path:
        raise UnsafePath(f"file path {path!r} uses backslashes; use /")
    if _CONTROL.search(path):
        raise UnsafePath(f"file path {path!r} contains a control character")
    pure = PurePosixPath(path)
    if pure.is_absolute() or (len(path) > 1 and path[1] == ":"):
        raise UnsafePath(f"file path {path!r} is absolute")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise UnsafePath(f"file path {path!r} names no file")
    for part in parts:
        if part == "..":
            raise UnsafePath(f"file path {path!r} escapes the workspace with '..'")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafePath(
                f"a name in file path {path[:60]!r}... is longer than {MAX_NAME_BYTES} bytes"
            )
        if _RESERVED.match(part) or part[-1] in ". ":
            raise UnsafePath(f"file path {path!r} has a name Windows reserves ({part!r})")
    return PurePosixPath(*parts)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(parent_fd: int, name: str, rel: PurePosixPath, create: bool) -> int:
    """Open `name` under `parent_fd` as a directory, never through a symlink."""
    for _ in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, 0o777, dir_fd=parent_fd)
            except FileExistsError:
                pass  # made concurrently: open it (the loop checks it is a real directory)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                link = stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
                kind = "a symlink" if link else "a file that is not a directory"
                raise UnsafePath(f"file path {str(rel)!r} goes through {kind} ({name})") from exc
            raise
    raise UnsafePath(f"file path {str(rel)!r}: directory {name} vanished while being created")


def _read_existing(dir_fd: int, name: str, rel: PurePosixPath) -> bytes | None:
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"file path {str(rel)!r} is a symlink") from exc
        if exc.errno == errno.EISDIR:
            raise UnsafePath(f"file path {str(rel)!r} exists and is not a regular file") from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(f"file path {str(rel)!r} exists and is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_inside(root: Path, path: str) -> bytes | None:
    """The content of `root/path` reached without following any symlink; None if absent."""
    rel = safe_relative(path)
    try:
        fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        for part in rel.parts[:-1]:
            try:
                child = _open_dir(fd, part, rel, create=False)
            except FileNotFoundError:
                return None
            os.close(fd)
            fd = child
        return _read_existing(fd, rel.parts[-1], rel)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_file(
    root: Path,
    path: str,
    content: bytes,
    *,
    last_written: Mapping[str, str] | None = None,
    keep: Callable[[bytes], object] | None = None,
    checkpoint: Callable[[str], None] | None = None,
) -> WriteResult:
    """Write `content` at `root/path` atomically (temp + fsync + rename + fsync dir).

    `last_written` maps a path to the sha256 the log says steplog last wrote there (None: not
    tracked, a differing file is simply `updated`); `keep(found)` gets the content of a file
    modified outside before it is replaced. `checkpoint(name)` is called at the named
    points `mid:file.write` (half the temp file written) and `before:file.rename`.
    """
    rel = safe_relative(path)
    key = str(rel)
    digest = hashlib.sha256(content).hexdigest()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the workspace itself may be reached via links
    try:
        for part in rel.parts[:-1]:
            child = _open_dir(fd, part, rel, create=True)
            os.close(fd)
            fd = child
        name = rel.parts[-1]
        existing = _read_existing(fd, name, rel)
        found: str | None = None
        if existing is None:
            reason = "created"
        else:
            existing_sha = hashlib.sha256(existing).hexdigest()
            if existing_sha == digest:
                return WriteResult(key, digest, len(content), False, "unchanged")
            if last_written is None or last_written.get(key) == existing_sha:
                reason = "updated"
            else:
                reason, found = "modified_outside", existing_sha
                if keep is not None:
                    keep(existing)
        tmp = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        tmp_fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o666,
            dir_fd=fd,
        )
        try:
            try:
                half = len(content) // 2
                _write_all(tmp_fd, content[:half])
                if checkpoint is not None:
                    checkpoint("mid:file.write")
                _write_all(tmp_fd, content[half:])
                os.fsync(tmp_fd)
            finally:
                os.close(tmp_fd)
            if checkpoint is not None:
                checkpoint("before:file.rename")
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=fd)
            except FileNotFoundError:
                pass
            raise
        os.fsync(fd)
    finally:
        os.close(fd)
    return WriteResult(key, digest, len(content), True, reason, found)


def is_temp_name(name: str) -> bool:
    """A temp file of ours (`.steplog-<pid>-<16 hex>.tmp`), not a file of the workspace."""
    return _TEMP_NAME.match(name) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(root: Path) -> list[str]:
    """Remove temp files of ours left by a process that died mid-write; returns their paths."""
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for dirpath, _dirs, names in os.walk(root):  # does not descend into symlinked directories
        for name in names:
            match = _TEMP_NAME.match(name)
            if match is None or _alive(int(match.group(1))):
                continue
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            full.unlink(missing_ok=True)
            removed.append(str(full.relative_to(root)))
    return sorted(removed)
