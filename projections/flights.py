"""Calls in flight: one row per llm.request (of a provider with an endpoint) until its answer.

The shared limits and single flight read it (executor/flights.py): how many calls an endpoint
has in flight, and whether a cache key is being asked for already, by whom. A pure fold over
events, kept as the `calls_in_flight` table in the append transaction. A row leaves with its
step's llm.response, or when its job ends, resumes or is forked (the run that made the call is
over); a row whose owner died stays until then, and the readers decide whether it still counts.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import orjson

from steplog.eventstore.record import StoredEvent

# the job events after which none of the job's earlier calls can still be in flight
JOB_CLEARS = ("job.succeeded", "job.failed", "job.interrupted", "job.cancelled", "job.resumed",
              "job.forked")  # fmt: skip
FLIGHT_EVENT_TYPES = ("llm.request", "llm.response", *JOB_CLEARS)


class FlightRow(NamedTuple):
    job_id: str
    step: str
    endpoint: str
    cache_key: str
    attempt: int
    owner: str | None  # the llm.request's owner as canonical JSON text
    ts: str
    seq: int


Flights = dict[tuple[str, str], FlightRow]


def _endpoint_call(ev: StoredEvent) -> dict[str, object] | None:
    """An llm.request's or llm.response's data when it names an endpoint (text), else None.

    Offline calls (`"endpoint":null`, the common case on the hot path) are skipped unparsed."""
    if ev.type not in ("llm.request", "llm.response") or ev.step is None:
        return None
    if '"endpoint"' not in ev.data_json or '"endpoint":null' in ev.data_json:
        return None
    d = orjson.loads(ev.data_json)
    return d if isinstance(d, dict) and isinstance(d.get("endpoint"), str) else None


def owner_text(owner: object) -> str | None:
    return None if owner is None else orjson.dumps(owner).decode()


def change(ev: StoredEvent) -> tuple[str, FlightRow | None] | None:
    """What the event does to the fold: ("clear", None) for the job's rows, ("land", None)
    for its step's row, ("put", row), or None (nothing)."""
    if ev.type in JOB_CLEARS:
        return ("clear", None)
    d = _endpoint_call(ev)
    if d is None:
        return None
    if ev.type == "llm.response":
        return ("land", None)
    assert ev.step is not None
    row = FlightRow(
        ev.job_id,
        ev.step,
        str(d["endpoint"]),
        str(d["cache_key"]),
        int(d.get("attempt", 1)),  # type: ignore[call-overload]
        owner_text(d.get("owner")),
        ev.ts,
        ev.seq,
    )
    return ("put", row)


def apply(flights: Flights, ev: StoredEvent) -> Flights:
    moved = change(ev)
    if moved is None:
        return flights
    what, row = moved
    if what == "clear":
        for key in [k for k in flights if k[0] == ev.job_id]:
            del flights[key]
    elif what == "land":
        flights.pop((ev.job_id, str(ev.step)), None)
    else:  # one step of a job never runs twice at once: a new request replaces an abandoned one
        assert row is not None
        flights[(row.job_id, row.step)] = row
    return flights


def project(events: Iterable[StoredEvent], flights: Flights | None = None) -> Flights:
    flights = flights if flights is not None else {}
    for ev in events:
        apply(flights, ev)
    return flights
