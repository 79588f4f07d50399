"""Turn a provider's text into a step's output: text as is, JSON parsed, files extracted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from steplog.eventstore.record import text_sha256
from steplog.executor.cachekey import canonical_json


class OutputProblem(ValueError):
    """The response cannot be used as the step's declared output."""


@dataclass(frozen=True)
class StepOutput:
    kind: str
    text: str  # what was stored as the step's output blob
    value: Any  # what downstream templates see as steps.<name>.output
    files: dict[str, str] = field(default_factory=dict)

    @cached_property
    def sha256(self) -> str:
        """The output blob's sha256: hashed once, however many steps read it."""
        return text_sha256(self.text)


_FENCE = re.compile(r"^```[A-Za-z0-9_+-]*\s*\n(.*?)\n```\s*$", re.DOTALL)
# A fenced block preceded by a heading or label naming its path:  ### path/to/file.py  /  File: x
_LABELLED_BLOCK = re.compile(
    r"^(?:#{1,6}\s+|File:\s*|\*\*)`?(?P<path>[^\s`*]+)`?\**\s*\n```[^\n]*\n(?P<body>.*?)\n```",
    re.MULTILINE | re.DOTALL,
)


# json.loads raises RecursionError, not a JSONDecodeError, on nesting deeper than the stack.
_TOO_DEEP = "response is not usable JSON (nested too deeply to read)"


def _check_text(what: str, text: str) -> None:
    """A JSON "\\ud800" escape decodes to a str that UTF-8 (blobs, files, paths) cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise OutputProblem(f"{what} is not valid Unicode text ({exc.reason})") from exc


def _strip_fence(text: str) -> str:
    match = _FENCE.match(text.strip())
    return match.group(1) if match else text


def _files_from_json(value: Any) -> dict[str, str] | None:
    files = value.get("files") if isinstance(value, dict) else value
    if isinstance(files, dict) and all(isinstance(v, str) for v in files.values()):
        return dict(files)
    if isinstance(files, list):
        out: dict[str, str] = {}
        for item in files:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("path"), str)
                and isinstance(item.get("content"), str)
            ):
                return None
            out[item["path"]] = item["content"]
        return out
    return None


def parse_output(kind: str, text: str) -> StepOutput:
    if kind == "text":
        return StepOutput(kind, text, text)
    if kind == "json":
        try:
            value = json.loads(_strip_fence(text))
        except json.JSONDecodeError as exc:
            raise OutputProblem(
                f"response is not valid JSON ({exc.msg} at line {exc.lineno})"
            ) from exc
        except RecursionError as exc:
            raise OutputProblem(_TOO_DEEP) from exc
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise OutputProblem(f"response is not usable JSON ({exc})") from exc
        try:
            canonical = canonical_json(value)
        except (ValueError, RecursionError) as exc:  # json.loads reads NaN/Infinity; JSON has none
            raise OutputProblem(f"response is not valid JSON ({exc})") from exc
        _check_text("the JSON value", canonical)
        return StepOutput(kind, canonical, value)
    if kind == "files":
        files: dict[str, str] | None = None
        try:
            files = _files_from_json(json.loads(_strip_fence(text)))
        except RecursionError as exc:
            raise OutputProblem(_TOO_DEEP) from exc
        except ValueError:  # JSONDecodeError, or an integer too long to convert: not JSON files
            blocks = {
                m.group("path"): m.group("body") + "\n" for m in _LABELLED_BLOCK.finditer(text)
            }
            files = blocks or None
        if not files:
            raise OutputProblem(
                'response holds no files: expected {"files": [{"path": ..., "content": ...}]} '
                "or fenced blocks under a '### path' heading"
            )
        for path, content in files.items():
            _check_text("a file path", path)
            _check_text(f"file {path!r}", content)
        return StepOutput(kind, text, text, files)
    raise OutputProblem(f"unknown output kind {kind!r}")
