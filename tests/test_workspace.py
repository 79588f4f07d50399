"""Files a step writes stay inside the workspace, land atomically, and are not rewritten needlessly."""

from __future__ import annotations

import hashlib
import os

import pytest

from executor.outputs import OutputProblem, parse_output
from executor.workspace import UnsafePath, write_file


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
