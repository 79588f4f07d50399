"""Reading the file-based predecessor's `runs/<job_id>/events.jsonl` as a steplog job.

The predecessor wrote the same envelope (ts, level, job_id, type, step, data) but leaner data:
no attempts, fingerprints or blobs, and no job.created. Each of its lines becomes one steplog
event; what it did not record is filled in as documented in the README ("Importing the
predecessor's events.jsonl"); what steplog cannot hold is refused, naming the line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from steplog.commands.interchange import BadImport, ImportPlan, parse_event
from steplog.eventstore.events import NewEvent
from steplog.eventstore.record import blob_sha256

# Stands in for every blob the predecessor never stored (pipeline file, outputs, prompts).
NOT_RECORDED = (
    b"# Imported from the predecessor's events.jsonl, which did not record this content\n"
    b"# (pipeline file, step output or prompt). steplog cannot resume from it.\n"
)
NOT_RECORDED_SHA = blob_sha256(NOT_RECORDED)
FORGET_REASON = "imported from the predecessor, whose answer was not recorded"
OWNER = {"pid": 0, "host": "predecessor", "started": "imported"}

# predecessor type -> steplog type; anything else has no counterpart and is refused
MAPPED = (
    "job.created",
    "job.started",
    "job.resumed",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.interrupted",
    "step.started",
    "step.succeeded",
    "step.failed",
    "step.skipped",
    "step.retrying",
    "llm.request",
    "llm.response",
    "cache.hit",
    "cache.miss",
    "cache.invalidated",
    "file.written",
    "provider.circuit_opened",
    "provider.circuit_closed",
)
REQUIRED = ("ts", "level", "job_id", "type")


def _seconds(a: str, b: str) -> float:
    parse = datetime.fromisoformat
    try:
        delta = parse(b.replace("Z", "+00:00")) - parse(a.replace("Z", "+00:00"))
    except (ValueError, TypeError):  # TypeError: one has a time zone, the other not
        return 0.0
    return max(0.0, round(delta.total_seconds(), 6))


class _Mapper:
    """Per-job memory the mapping needs: attempts, the open step's cache key and model.

    As in steplog's own log, a step.* attempt is the step's run number within the job and an
    llm.* / step.retrying attempt the call number within the current run (retries)."""

    def __init__(self, job_id: str, first_ts: str) -> None:
        self.job_id = job_id
        self.first_ts = first_ts
        self.attempt: dict[str, int] = {}
        self.call: dict[str, int] = {}
        self.started_ts: dict[str, str] = {}
        self.cache_key: dict[str, str] = {}
        self.cache_hit: dict[str, bool] = {}
        self.model: dict[str, str] = {}

    def fill(self, type_: str, step: str | None, ts: str, d: dict[str, Any]) -> dict[str, Any]:
        """The steplog data for a predecessor event: its own fields win over what is filled in."""
        s = step or ""
        attempt = max(1, self.attempt.get(s, 1))
        call = max(1, self.call.get(s, 1))
        since_start = _seconds(self.started_ts.get(s, ts), ts)
        key = self.cache_key.get(s, "")
        if type_ in ("job.started", "job.resumed"):
            base: dict[str, Any] = {"owner": OWNER}
            if type_ == "job.resumed":
                base["pipeline_fingerprint"] = ""
            if "owner" in d:  # a steplog-vocabulary line (e.g. from `steplog events --json`)
                return {**base, **d}
            return base  # its data (pipeline name, inputs) went into job.created
        if type_ == "job.succeeded":
            return {"duration_s": _seconds(self.first_ts, ts), **d}
        if type_ == "job.failed":
            return {
                "error": "failed (no message recorded)",
                "duration_s": _seconds(self.first_ts, ts),
                **d,
            }
        if type_ == "job.interrupted":
            return {"signal": "unknown", **d}
        if type_ == "step.started":
            self.attempt[s] = self.attempt.get(s, 0) + 1
            self.call[s] = 0
            self.started_ts[s] = ts
            self.cache_hit[s] = False
            return {"attempt": self.attempt[s], "fingerprint": "", **d}
        if type_ == "step.succeeded":
            return {
                "output_sha256": NOT_RECORDED_SHA,
                "output": "text",
                "cache_hit": self.cache_hit.get(s, False),
                "cache_key": key,
                "duration_s": since_start,
                "fingerprint": "",
                **d,
            }
        if type_ == "step.failed":
            return {
                "error": "failed (no message recorded)",
                "error_type": "predecessor",
                "attempt": attempt,
                "duration_s": since_start,
                **d,
            }
        if type_ == "step.skipped":
            return {
                "reason": "completed in an earlier run",
                "fingerprint": "",
                "output_sha256": NOT_RECORDED_SHA,
                **d,
            }
        if type_ == "step.retrying":
            return {"attempt": call, "delay_s": 0.0, "error": "", **d}
        if type_ in ("cache.hit", "cache.miss"):
            if isinstance(d.get("cache_key"), str):
                self.cache_key[s] = d["cache_key"]
            if type_ == "cache.miss":
                return d
            self.cache_hit[s] = True
            return {
                "response_sha256": NOT_RECORDED_SHA,
                "origin_job": self.job_id,
                "origin_step": step,
                **d,
            }
        if type_ == "llm.request":
            if isinstance(d.get("model"), str):
                self.model[s] = d["model"]
            self.call[s] = self.call.get(s, 0) + 1
            return {
                "kind": str(d.get("provider", "")),
                "attempt": self.call[s],
                "cache_key": key,
                "prompt_sha256": NOT_RECORDED_SHA,
                "model": "",
                "provider": "",
                **d,
            }
        if type_ == "llm.response":
            # no response blob: an imported answer never enters the shared cache
            return {
                "model": self.model.get(s, ""),
                "attempt": call,
                "cache_key": key,
                "success": True,
                **d,
            }
        if type_ == "file.written":
            return {"size": 0, **d}
        return d


def _synthetic_created(lines: list[tuple[int, dict[str, Any]]], job_id: str) -> NewEvent:
    """job.created from what the predecessor's job.started and step lines say."""
    pipeline, inputs = "predecessor", {}
    steps: dict[str, list[str]] = {}
    first_start = next((n for n, obj in lines if obj["type"] == "job.started"), None)
    for number, obj in lines:
        data = obj.get("data") or {}
        if number == first_start:
            for key, value in data.items():
                if key in ("pipeline", "name", "dag") and isinstance(value, str):
                    pipeline = value
                elif key == "inputs" and isinstance(value, dict):
                    inputs.update({k: _scalar(number, k, v) for k, v in value.items()})
                else:
                    inputs[key] = _scalar(number, key, value)
        if obj.get("step"):
            steps.setdefault(obj["step"], [])
    created = {
        "pipeline": pipeline,
        "pipeline_fingerprint": "",
        "pipeline_sha256": NOT_RECORDED_SHA,
        "inputs": inputs,
        "steps": steps,
        "workspace": f"runs/{job_id}",
    }
    return NewEvent.parse("job.created", created, None, "INFO", lines[0][1]["ts"])


def _scalar(number: int, key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise BadImport(
        f"line {number}: job.started data field {key!r} is not a text or number input; "
        "steplog cannot represent it"
    )


def parse_predecessor(lines: list[tuple[int, dict[str, Any]]]) -> ImportPlan:
    for number, obj in lines:
        for key in REQUIRED:
            if key not in obj:
                raise BadImport(f"line {number}: missing envelope key {key!r}")
        for key in obj:
            if key not in ("ts", "level", "job_id", "type", "step", "data"):
                raise BadImport(f"line {number}: unknown envelope key {key!r}")
        if not isinstance(obj["type"], str) or not isinstance(obj["job_id"], str):
            raise BadImport(f"line {number}: type and job_id must be strings")
        for key in ("ts", "level"):  # read (step times) before each line's event is validated
            if not isinstance(obj[key], str):
                raise BadImport(f"line {number}: {key} must be a string")
        if obj["type"] not in MAPPED:
            raise BadImport(
                f"line {number}: predecessor event type {obj['type']!r} has no steplog counterpart"
            )
        if obj.get("data") is not None and not isinstance(obj["data"], dict):
            raise BadImport(f"line {number}: data must be a JSON object")
        if obj.get("step") is not None and not isinstance(obj["step"], str):
            raise BadImport(f"line {number}: step must be a string or null")
    job = lines[0][1]["job_id"]
    for number, obj in lines:
        if obj["job_id"] != job:
            raise BadImport(
                f"line {number}: job_id {obj['job_id']!r} differs from {job!r} (one job per file)"
            )
    mapper = _Mapper(job, lines[0][1]["ts"])
    events: list[NewEvent] = []
    starts = 0
    for number, obj in lines:
        if obj["type"] == "job.started":
            starts += 1
            if starts > 1:  # the predecessor wrote job.started again when it resumed
                obj = {**obj, "type": "job.resumed"}
        if obj["type"] == "job.created" and number != lines[0][0]:
            raise BadImport(f"line {number}: job.created after the job's first line")
        data = dict(obj.get("data") or {})
        if obj["type"] != "job.created":
            data = mapper.fill(obj["type"], obj.get("step"), obj["ts"], data)
        events.append(parse_event(number, {**obj, "data": data}))
        if obj["type"] == "cache.hit":
            # its answer was never recorded: keep the placeholder out of the shared cache
            forget = {"cache_key": data.get("cache_key"), "reason": FORGET_REASON}
            events.append(
                parse_event(
                    number, {**obj, "type": "cache.invalidated", "level": "WARNING", "data": forget}
                )
            )
    if events[0].type != "job.created":  # its ts and level are valid: the first line parsed
        events.insert(0, _synthetic_created(lines, job))
    blobs = {NOT_RECORDED_SHA: NOT_RECORDED}
    return ImportPlan(job, events, blobs, predecessor=True)


__all__ = ["NOT_RECORDED_SHA", "parse_predecessor"]
