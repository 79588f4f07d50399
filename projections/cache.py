"""The cache index: cache key -> the response that answers it. A pure fold over events.

Folded over every job's events it is the shared cache (kept as the `cache_index` table); folded
over one job's events it is that job's view of the cache (what it produced and what it reused).
The first successful response for a key wins; `cache.invalidated` removes a key (a response the
step could not use), so the next run asks the provider again. The refusal is sticky: the refused
(key, response) pair is remembered, and no later event (a `cache.hit` committed by a job that
read the answer before it was refused, a fork's copy of the history before the refusal) can
put that answer back.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import orjson

from steplog.eventstore.record import StoredEvent

CACHE_EVENT_TYPES = ("llm.response", "cache.hit", "cache.invalidated")


class CacheEntry(NamedTuple):
    cache_key: str
    response_sha256: str
    origin_job: str
    origin_step: str | None
    seq: int
    tokens_in: int = 0
    tokens_out: int = 0


class CacheIndex(dict[str, CacheEntry]):
    """cache key -> the entry serving it, plus `refused`: (key, response sha) -> seq of the
    first `cache.invalidated` that refused that answer. Equal only if both parts are."""

    __slots__ = ("refused",)

    def __init__(self, entries: dict[str, CacheEntry] | None = None) -> None:
        super().__init__(entries or {})
        self.refused: dict[tuple[str, str], int] = {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, dict):
            return NotImplemented
        return dict.__eq__(self, other) and self.refused == getattr(other, "refused", {})

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal


def apply(index: CacheIndex, ev: StoredEvent) -> CacheIndex:
    if ev.type not in CACHE_EVENT_TYPES:
        return index
    d = orjson.loads(ev.data_json)
    key = d["cache_key"]
    if ev.type == "cache.invalidated":
        refused = d.get("response_sha256")
        if refused is None:  # written before refusals named their answer: forget the key
            index.pop(key, None)
            return index
        index.refused.setdefault((key, refused), ev.seq)
        if key in index and index[key].response_sha256 == refused:
            del index[key]
    elif key in index or (key, d.get("response_sha256")) in index.refused:
        pass
    elif ev.type == "llm.response":
        if d["success"] and d.get("response_sha256"):
            index[key] = CacheEntry(
                key,
                d["response_sha256"],
                ev.job_id,
                ev.step,
                ev.seq,
                d.get("tokens_in", 0),
                d.get("tokens_out", 0),
            )
    else:  # cache.hit on a key this fold has not seen: the job's view learns where it came from
        index[key] = CacheEntry(
            key, d["response_sha256"], d["origin_job"], d.get("origin_step"), ev.seq
        )
    return index


def project(events: Iterable[StoredEvent], index: CacheIndex | None = None) -> CacheIndex:
    index = index if index is not None else CacheIndex()
    for ev in events:
        apply(index, ev)
    return index
