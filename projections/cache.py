"""The cache index: cache key -> the response that answers it. A pure fold over events.

Folded over every job's events it is the shared cache (kept as the `cache_index` table); folded
over one job's events it is that job's view of the cache (what it produced and what it reused).
The first successful response for a key wins; `cache.invalidated` removes a key (a response the
step could not use), so the next run asks the provider again.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import orjson

from eventstore.record import StoredEvent

CACHE_EVENT_TYPES = ("llm.response", "cache.hit", "cache.invalidated")


class CacheEntry(NamedTuple):
    cache_key: str
    response_sha256: str
    origin_job: str
    origin_step: str | None
    seq: int
    tokens_in: int = 0
    tokens_out: int = 0


CacheIndex = dict[str, CacheEntry]


def apply(index: CacheIndex, ev: StoredEvent) -> CacheIndex:
    if ev.type not in CACHE_EVENT_TYPES:
        return index
    d = orjson.loads(ev.data_json)
    key = d["cache_key"]
    if ev.type == "cache.invalidated":
        index.pop(key, None)
    elif key in index:
        pass
    elif ev.type == "llm.response":
        if d["success"] and d.get("response_sha256"):
            index[key] = CacheEntry(
                key, d["response_sha256"], ev.job_id, ev.step, ev.seq,
                d.get("tokens_in", 0), d.get("tokens_out", 0),
            )  # fmt: skip
    else:  # cache.hit on a key this fold has not seen: the job's view learns where it came from
        index[key] = CacheEntry(
            key, d["response_sha256"], d["origin_job"], d.get("origin_step"), ev.seq
        )
    return index


def project(events: Iterable[StoredEvent], index: CacheIndex | None = None) -> CacheIndex:
    index = index if index is not None else {}
    for ev in events:
        apply(index, ev)
    return index
