"""Files a step writes stay inside the workspace, land atomically, and are not rewritten needlessly."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steplog.executor.outputs import OutputProblem, parse_output
from steplog.executor.workspace import UnsafePath, read_inside, sweep_stale_temps, write_file


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../outside.txt",
        "a/../../outside.txt",
        "a\x00b",
        "",
        "C:/x",
        "a\\..\\b",
        "x/" + "n" * 300,
    ],
)
def test_paths_that_escape_or_cannot_exist_are_refused(tmp_path, path):
    with pytest.raises(UnsafePath):
        write_file(tmp_path / "ws", path, b"x")
    assert not (tmp_path / "outside.txt").exists()


def test_symlink_planted_in_workspace_is_refused(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ws / "link")
    with pytest.raises(UnsafePath, match="symlink"):
        write_file(ws, "link/evil.txt", b"x")
    assert list(outside.iterdir()) == []


def test_write_created_unchanged_updated(tmp_path):
    ws = tmp_path / "ws"
    first = write_file(ws, "pkg/mod.py", b"print(1)\n")
    assert (first.wrote, first.reason) == (True, "created")
    assert first.sha256 == hashlib.sha256(b"print(1)\n").hexdigest()
    again = write_file(ws, "pkg/mod.py", b"print(1)\n")
    assert (again.wrote, again.reason) == (False, "unchanged")
    changed = write_file(ws, "./pkg//mod.py", b"print(2)\n")
    assert (changed.wrote, changed.reason, changed.path) == (True, "updated", "pkg/mod.py")
    assert (ws / "pkg/mod.py").read_bytes() == b"print(2)\n"
    assert [p.name for p in (ws / "pkg").iterdir()] == ["mod.py"]  # no temp file left


def test_files_output_formats():
    as_list = parse_output("files", '{"files": [{"path": "a.py", "content": "x"}]}')
    assert as_list.files == {"a.py": "x"}
    as_map = parse_output("files", '```json\n{"files": {"b.py": "y"}}\n```')
    assert as_map.files == {"b.py": "y"}
    fenced = parse_output("files", "### src/c.py\n```python\nprint(3)\n```\n")
    assert fenced.files == {"src/c.py": "print(3)\n"}
    with pytest.raises(OutputProblem, match="no files"):
        parse_output("files", "I could not do it")


def test_json_output_parsing():
    assert parse_output("json", '```json\n{"a": 1}\n```').value == {"a": 1}
    with pytest.raises(OutputProblem, match="not valid JSON"):
        parse_output("json", "{oops")


# -- any path an LLM can produce -------------------------------------------------------------------

_SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "",
            "~",
            "con",
            "NUL",
            "nul.txt",
            "COM1",
            "aux.py",
            "LPT9.log",
            "a.",
            "b ",
            "...",
            ". ",
            "\u202egnp.exe",
            "zero\u200bwidth",
            "\u05e9\u05dc\u05d5\u05dd",
            "\u00e9\u0301",
            "\x00",
            "a\x00b",
            "C:",
            "c:\\x",
            "..\\..",
            "a\\b",
            "\n",
            "tab\there",
            "\ud800",
            "\udfff",
            "n" * 255,
            "n" * 256,
            "\u00e9" * 128,
            "x" * 1000,
            "\U0001f600" * 64,
        ]
    ),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text(alphabet="./\\\x00 ", max_size=6),
)


@st.composite
def llm_paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_SEGMENTS, min_size=1, max_size=6))
    lead = draw(st.sampled_from(["", "", "/", "./", "//", "../", "\\", "C:/"]))
    path = lead + "/".join(parts)
    if draw(st.booleans()) and draw(st.booleans()):
        path = "/".join(["deep"] * draw(st.integers(200, 1100)))  # far past PATH_MAX (4096)
    return path


def _everything_under(root: Path) -> list[Path]:
    return [Path(d) / n for d, dirs, files in os.walk(root) for n in [*dirs, *files]]


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(paths=st.lists(llm_paths(), min_size=1, max_size=4))
def test_any_llm_path_is_refused_or_lands_inside_the_workspace(paths):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ws, outside = base / "ws", base / "outside"
        outside.mkdir()
        for path in paths:
            try:
                result = write_file(ws, path, b"payload")
            except UnsafePath as exc:
                assert str(exc) and "\n" not in str(exc).strip()
                continue
            target = (ws / result.path).resolve()
            assert target.is_relative_to(ws.resolve()), (path, target)
            assert target.read_bytes() == b"payload"
            assert not (ws / result.path).is_symlink()
        assert list(outside.iterdir()) == []  # the sentinel beside the workspace stays empty
        assert {p.name for p in base.iterdir()} <= {"outside", "ws"}
        for p in _everything_under(ws):
            assert not p.is_symlink() and p.resolve().is_relative_to(ws.resolve())
            assert not p.name.startswith(".steplog-")  # no temp file left behind


@pytest.mark.parametrize(
    "path",
    [
        "CON",
        "nul.txt",
        "src/aux.py",
        "COM1",
        "lpt9",
        "notes.",
        "trailing ",
        "a/b./c",
        "x\ny",
        "bell\x07",
        "\ud800.py",
    ],
)
def test_names_windows_reserves_or_that_hide_characters_are_refused(tmp_path, path):
    with pytest.raises(UnsafePath):
        write_file(tmp_path / "ws", path, b"x")
    assert not (tmp_path / "ws").exists() or _everything_under(tmp_path / "ws") == []


def test_unicode_names_that_are_valid_files_land_inside(tmp_path):
    names = [
        "\u202egnp.exe",
        "zero\u200bwidth.txt",
        "\u05e9\u05dc\u05d5\u05dd/\u00e9.md",
        "n" * 255,
    ]
    for name in names:
        result = write_file(tmp_path / "ws", name, b"x")
        assert (tmp_path / "ws" / result.path).read_bytes() == b"x"


def test_a_file_symlink_planted_in_the_workspace_is_not_followed(tmp_path):
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    ws.mkdir()
    outside.mkdir()
    target = outside / "victim.txt"
    target.write_bytes(b"keep me")
    os.symlink(target, ws / "app.py")
    os.symlink(outside / "new.txt", ws / "dangling.py")  # a link to a file that does not exist
    for path in ("app.py", "dangling.py"):
        with pytest.raises(UnsafePath, match="symlink"):
            write_file(ws, path, b"evil")
    assert target.read_bytes() == b"keep me" and sorted(os.listdir(outside)) == ["victim.txt"]
    with pytest.raises(UnsafePath, match="symlink"):
        read_inside(ws, "app.py")


def test_a_directory_symlink_deeper_in_the_path_is_not_followed(tmp_path):
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "src").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, ws / "src" / "pkg")
    with pytest.raises(UnsafePath, match="symlink"):
        write_file(ws, "src/pkg/deeper/mod.py", b"evil")
    assert list(outside.iterdir()) == []


def test_a_directory_swapped_for_a_symlink_during_the_write_is_not_followed(tmp_path):
    """The race the old check-then-write had: the directory is held open, not looked up again."""
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "sub").mkdir(parents=True)
    outside.mkdir()
    swapped = []

    def swap(point: str) -> None:
        if point == "mid:file.write":
            os.rename(ws / "sub", ws / "moved")
            os.symlink(outside, ws / "sub")
            swapped.append(point)

    write_file(ws, "sub/f.txt", b"content", checkpoint=swap)
    assert swapped and list(outside.iterdir()) == []
    assert (ws / "moved" / "f.txt").read_bytes() == b"content"  # landed where it was opened


def test_the_workspace_itself_may_be_reached_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "ws")
    write_file(tmp_path / "ws", "a.txt", b"x")
    assert (real / "a.txt").read_bytes() == b"x"


def test_a_path_through_an_existing_file_is_refused(tmp_path):
    write_file(tmp_path / "ws", "a", b"x")
    with pytest.raises(UnsafePath, match="not a directory"):
        write_file(tmp_path / "ws", "a/b", b"y")
    (tmp_path / "ws" / "d").mkdir()
    with pytest.raises(UnsafePath, match="not a regular file"):
        write_file(tmp_path / "ws", "d", b"y")


# -- atomic: temp file in the same directory, fsync, rename, fsync of the directory ----------------


def test_write_fsyncs_the_temp_file_then_renames_then_fsyncs_the_directory(tmp_path, monkeypatch):
    log: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        log.append(("fsync", "dir" if stat.S_ISDIR(mode) else "file"))
        real_fsync(fd)

    def replace(src, dst, **kw) -> None:
        log.append(("rename", f"{src}->{dst}"))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    seen = []

    def look(point: str) -> None:
        seen.append((point, sorted(os.listdir(tmp_path / "ws" / "pkg"))))

    write_file(tmp_path / "ws", "pkg/m.py", b"print(1)\n", checkpoint=look)
    assert [kind for kind, _ in log] == ["fsync", "rename", "fsync"]
    assert log[0] == ("fsync", "file") and log[2] == ("fsync", "dir")
    # the temp file lives beside the target, under a name of ours
    assert [p for p, _ in seen] == ["mid:file.write", "before:file.rename"]
    (temp,) = seen[0][1]
    assert temp.startswith(f".steplog-{os.getpid()}-") and temp.endswith(".tmp")
    assert log[1][1] == f"{temp}->m.py"


def test_a_failed_write_removes_its_temp_file_and_leaves_the_old_content(tmp_path):
    write_file(tmp_path / "ws", "a.txt", b"old")

    def boom(point: str) -> None:
        if point == "before:file.rename":
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_file(tmp_path / "ws", "a.txt", b"new content", checkpoint=boom)
    assert os.listdir(tmp_path / "ws") == ["a.txt"]
    assert (tmp_path / "ws" / "a.txt").read_bytes() == b"old"


@pytest.mark.slow
def test_stale_temps_of_dead_processes_are_swept_and_nothing_else(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    dead_pid = int(dead.stdout)
    ws = tmp_path / "ws"
    (ws / "deep" / "er").mkdir(parents=True)
    stale = ws / "deep" / "er" / f".steplog-{dead_pid}-{'a' * 16}.tmp"
    stale.write_bytes(b"half")
    mine = ws / f".steplog-{os.getpid()}-{'b' * 16}.tmp"  # a live writer's (ours)
    mine.write_bytes(b"in progress")
    users = [ws / ".steplog-notes.tmp", ws / "keep.tmp", ws / f".steplog-{dead_pid}-xyz.tmp"]
    for f in users:
        f.write_bytes(b"user")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f".steplog-{dead_pid}-{'c' * 16}.tmp").write_bytes(b"not ours to touch")
    os.symlink(outside, ws / "link")
    assert sweep_stale_temps(ws) == [f"deep/er/{stale.name}"]
    assert not stale.exists() and mine.exists() and all(f.exists() for f in users)
    assert len(list(outside.iterdir())) == 1  # a symlinked directory is not walked into


# -- a file changed by someone else ----------------------------------------------------------------


def test_a_file_changed_outside_is_reported_and_its_content_handed_over_first(tmp_path):
    ws = tmp_path / "ws"
    first = write_file(ws, "app.py", b"v1", last_written={})
    assert first.reason == "created"
    log = {"app.py": first.sha256}
    (ws / "app.py").write_bytes(b"edited by hand")
    kept: list[bytes] = []

    def keep(content: bytes) -> None:
        kept.append(content)
        on_disk = {p.read_bytes() for p in ws.iterdir()}
        assert content in on_disk  # handed over while it is still there, before the rename

    second = write_file(ws, "app.py", b"v2", last_written=log, keep=keep)
    assert (second.wrote, second.reason) == (True, "modified_outside")
    assert kept == [b"edited by hand"]
    assert second.found_sha256 == hashlib.sha256(b"edited by hand").hexdigest()
    log["app.py"] = second.sha256
    third = write_file(ws, "app.py", b"v3", last_written=log, keep=keep)
    assert (third.reason, third.found_sha256, len(kept)) == ("updated", None, 1)
    # a file the log has no record of, with other content: not ours either
    (ws / "mine.txt").write_bytes(b"the user's")
    fourth = write_file(ws, "mine.txt", b"generated", last_written=log, keep=keep)
    assert fourth.reason == "modified_outside" and kept[-1] == b"the user's"
    # the same content as found: nothing to write, nothing to keep
    (ws / "app.py").write_bytes(b"v9")
    assert write_file(ws, "app.py", b"v9", last_written=log).reason == "unchanged"


def test_a_file_swapped_for_a_symlink_during_the_write_is_replaced_not_followed(tmp_path):
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"keep me")

    def plant(point: str) -> None:
        if point == "before:file.rename":
            os.symlink(victim, ws / "f.txt")

    write_file(ws, "f.txt", b"ours", checkpoint=plant)
    assert victim.read_bytes() == b"keep me"  # rename replaces the link itself
    assert not (ws / "f.txt").is_symlink() and (ws / "f.txt").read_bytes() == b"ours"


def test_a_fifo_or_directory_where_the_file_goes_is_refused_without_blocking(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    os.mkfifo(ws / "pipe.py")
    with pytest.raises(UnsafePath, match="not a regular file"):
        write_file(ws, "pipe.py", b"x")
