"""Cache keys: sha256 over canonical JSON of everything that decides an LLM answer.

The key is built from four parts, each hashed on its own so that a miss can say which part
changed: the provider identity (kind, model, every option sent — never a key or URL), the step
id, the rendered input (system, prompt, output kind) and the step's code fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_VERSION = 1


# One encoder for every call: json.dumps with options builds a new encoder each time.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, UTF-8 kept, NaN refused."""
    return _ENCODER.encode(value)


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
