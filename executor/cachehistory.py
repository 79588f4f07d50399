"""The previous run of a step that a cache miss is explained against.

Not merely the latest run of a step of that name: the closest one — the run whose key parts
differ least from this one's, the same inputs first (executor.explain.closest) — among the
step's recent cache.hit/cache.miss events of the same pipeline name, in any job. One indexed
query (schema.sql: events_cache_runs, a partial index on step and the event's pipeline name,
over cache events only; the store's cache_runs) reads them, newest first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import orjson

from steplog.eventstore.events import CacheDetail
from steplog.executor.explain import PreviousRun, closest

if TYPE_CHECKING:
    from steplog.eventstore.record import EventStore

# How many of the step's latest distinct keys are compared: enough for a pipeline run over a
# few dozen inputs, a bounded cost for a miss.
CANDIDATES = 32


def previous_runs(
    store: EventStore, pipeline: str, step: str, limit: int = CANDIDATES
) -> list[PreviousRun]:
    """The step's latest runs with distinct keys, newest first (at most `limit`), each with
    the inputs of its job (job.created, one primary-key read per job)."""
    runs: dict[str, PreviousRun] = {}
    inputs: dict[str, dict[str, str] | None] = {}
    # a key run many times appears many times: read a few rows per wanted key
    for seq, job_id, data_json in store.cache_runs(pipeline, step, limit * 4):
        data = orjson.loads(data_json)
        if data["cache_key"] in runs:
            continue
        if job_id not in inputs:
            first = next(store.read_job(job_id, until_version=1), None)
            inputs[job_id] = orjson.loads(first.data_json).get("inputs") if first else None
        runs[data["cache_key"]] = PreviousRun(
            seq=seq,
            job_id=job_id,
            cache_key=data["cache_key"],
            parts=dict(data.get("parts") or {}),
            detail=data.get("detail"),
            job_inputs=inputs[job_id],
        )
        if len(runs) == limit:
            break
    return list(runs.values())


def previous_run(
    store: EventStore,
    pipeline: str,
    step: str,
    detail: CacheDetail | Mapping[str, Any] | None = None,
    parts: Mapping[str, str] | None = None,
    *,
    unknown: tuple[str, ...] = (),
    job_inputs: Mapping[str, str] | None = None,
) -> PreviousRun | None:
    """The run to explain this one against: the closest to `detail`/`parts` and the job's
    inputs (without them, the latest). `unknown`: detail parts not known yet (e.g. upstream
    output), not compared."""
    runs = previous_runs(store, pipeline, step, limit=CANDIDATES if detail or parts else 1)
    if not runs:
        return None
    if detail is None and parts is None:
        return runs[0]
    return closest(runs, detail, parts or {}, unknown=unknown, job_inputs=job_inputs)
