"""Cache keys: sha256 over canonical JSON of everything that decides an LLM answer.

The key is built from four parts, each hashed on its own so that a miss can say which part
changed: the provider identity (kind, model, every option sent — never a key or URL), the step
id, the rendered input (system, prompt, output kind) and the step's code fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

KEY_VERSION = 1


# The definition of the text: json.dumps with these options (one encoder for every call:
# json.dumps with options builds a new encoder each time).
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)

# orjson nests at most 255 containers; deeper (or a cycle) is left to the encoder above.
_ORJSON_MAX_DEPTH = 254


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, UTF-8 kept, NaN refused.

    Every step builds several (its key, its parts): a value orjson writes exactly as the
    encoder does is written by orjson, 3-4x faster; any other goes to the encoder.
    """
    if _same_in_orjson(value, 0):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:  # an int past 64 bits, a lone surrogate
            pass
    return _ENCODER.encode(value)


def _same_in_orjson(value: Any, depth: int) -> bool:
    """Whether orjson writes `value` as _ENCODER does: str (keys too), int, bool, None and
    lists, tuples and dicts of them, escaped the same way to the character
    (tests/test_cachekey.py). A float is not (1e-07 there, 1e-7 here); nor is a subclass or a
    type orjson writes and json refuses (a datetime, a dataclass)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if depth > _ORJSON_MAX_DEPTH:
        return False
    if kind is dict:
        if not all(type(k) is str for k in value):
            return False
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    for item in items:  # scalars checked here: a call for each would double the walk's cost
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if not _same_in_orjson(item, depth + 1):
            return False
    return True


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def key_parts(
    *, provider: dict[str, Any], step: str, rendered: dict[str, Any], fingerprint: str
) -> dict[str, str]:
    return parts_with(
        fixed_parts(provider=provider, step=step, fingerprint=fingerprint), rendered=rendered
    )


def fixed_parts(*, provider: dict[str, Any], step: str, fingerprint: str) -> tuple[str, str, str]:
    """The parts a step's definition decides (provider, step, code): the same for every run
    of that step in one pipeline, so they can be hashed once."""
    return _digest(provider), _digest(step), _digest(fingerprint)


def parts_with(fixed: tuple[str, str, str], *, rendered: dict[str, Any]) -> dict[str, str]:
    """All four parts, in the order the events carry them, from the fixed three and the
    rendered input."""
    provider, step, code = fixed
    return {"provider": provider, "step": step, "input": _digest(rendered), "code": code}


def cache_key(parts: dict[str, str]) -> str:
    return _digest({"v": KEY_VERSION, **parts})
