"""A job's result for the Python API: the folded manifest plus each succeeded step's output."""

from __future__ import annotations

import orjson

from steplog.eventstore.record import EventStore
from steplog.executor.outputs import OutputProblem, parse_output
from steplog.models import JobResult, StepResult
from steplog.projections.manifest import JobState


def output_kinds(store: EventStore, job_id: str) -> dict[str, str]:
    """step -> the output kind (text, json, files) its last step.succeeded recorded."""
    kinds: dict[str, str] = {}
    for ev in store.read_job(job_id):
        if ev.type == "step.succeeded" and ev.step is not None:
            kinds[ev.step] = orjson.loads(ev.data_json)["output"]
    return kinds


def job_result(store: EventStore, state: JobState) -> JobResult:
    kinds = output_kinds(store, state.job_id) if state.completed_steps else {}
    wanted = [
        s.output_sha256 for s in state.steps.values() if s.completed and s.output_sha256 is not None
    ]
    contents = store.find_blobs(wanted)
    steps: dict[str, StepResult] = {}
    for name, step in state.steps.items():
        output = None
        blob = contents.get(step.output_sha256 or "") if step.completed else None
        if blob is not None and name in kinds:
            try:
                parsed = parse_output(kinds[name], blob.decode("utf-8"))
                output = parsed.files if parsed.kind == "files" else parsed.value
            except OutputProblem:  # it parsed when it was recorded: only a foreign import
                output = None
        steps[name] = StepResult(
            name=name,
            status=step.status,
            attempts=step.attempts,
            cache_hit=step.cache_hit,
            output=output,
            output_sha256=step.output_sha256,
            files=list(step.files),
            tokens_in=step.tokens_in,
            tokens_out=step.tokens_out,
            cost=step.cost,
            error=step.error,
        )
    return JobResult(
        job_id=state.job_id,
        status=state.status,
        pipeline=state.pipeline,
        workspace=state.workspace,
        steps=steps,
        llm_calls=state.llm_calls,
        cache_hits=state.cache_hits,
        tokens_in=state.tokens_in,
        tokens_out=state.tokens_out,
        cost=state.cost,
        error=state.last_error if state.status != "succeeded" else None,
    )
