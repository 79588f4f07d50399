"""`steplog plan`: which steps the cache would serve and which would call a provider, and why.

Nothing is called and nothing is appended. Each step is rendered the way the executor would
render it (from the job inputs and the cached or completed outputs upstream), its cache key is
computed the same way, and a predicted miss is explained against the step's previous run with
the same function the executor uses for its cache.miss events. A step that reads the output of
a step that will call a provider cannot be rendered yet: it is reported as depending on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from steplog.commands.jobs import (
    Rejected,
    check_breakers,
    check_budget,
    check_has_work,
    fold_job,
    pipeline_for_resume,
    plan_resume,
)
from steplog.eventstore.events import CacheChange
from steplog.eventstore.record import EventStore
from steplog.executor import explain
from steplog.executor.cachehistory import previous_run
from steplog.executor.outputs import OutputProblem, StepOutput, parse_output
from steplog.executor.pipeline import Pipeline, load_pipeline
from steplog.executor.templates import TemplateProblem
from steplog.heap import gc_paused
from steplog.projections.manifest import JobState
from steplog.projections.store import cache_entry
from steplog.words import counted

Action = Literal["hit", "miss", "skip", "depends", "fail"]

LABELS: dict[str, str] = {
    "hit": "cache hit",
    "miss": "provider call",
    "skip": "skipped",
    "depends": "re-run",
    "fail": "will fail",
}


@dataclass
class StepPlan:
    step: str
    action: Action
    reason: str
    cache_key: str | None = None
    changed: list[CacheChange] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    previous_key: str | None = None
    previous_job: str | None = None
    origin_job: str | None = None

    def document(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "action": self.action,
            "reason": self.reason,
            "cache_key": self.cache_key,
            "changed": [c.model_dump() for c in self.changed],
            "depends_on": self.depends_on,
            "previous_key": self.previous_key,
            "previous_job": self.previous_job,
            "origin_job": self.origin_job,
        }


@dataclass
class PlanReport:
    pipeline: str
    job: str | None
    steps: list[StepPlan]
    # why `run` (or `resume`) would be refused up front, as it would say it: a key variable
    # not set, an open circuit breaker, the budget that stopped the job
    refusals: list[str] = field(default_factory=list)
    database_exists: bool = True  # False: predicted against an empty history, nothing created
    # step -> its output where it is known before the run (cache hits, skipped steps)
    outputs: dict[str, StepOutput] = field(default_factory=dict, repr=False)

    def count(self, action: str) -> int:
        return sum(1 for s in self.steps if s.action == action)

    @property
    def predicts_failure(self) -> bool:
        """A step will fail, or the run would be refused: `steplog plan` exits 1."""
        return bool(self.refusals) or self.count("fail") > 0

    def document(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "job": self.job,
            "database_exists": self.database_exists,
            "summary": {a: self.count(a) for a in LABELS},
            "refusals": self.refusals,
            "steps": [s.document() for s in self.steps],
        }


def _output(store: EventStore, kind: str, sha: str) -> StepOutput | None:
    try:
        return parse_output(kind, store.get_blob(sha).decode("utf-8"))
    except OutputProblem:
        return None


def _depends(
    store: EventStore,
    pipeline: Pipeline,
    name: str,
    inputs: dict[str, str],
    waiting: list[str],
) -> StepPlan:
    """A step whose rendered input is not known yet: say what it waits for, and which of the
    parts that do not depend on upstream output changed since its previous run."""
    reason = f"depends on {', '.join(waiting)} (will be re-run)"
    # upstream output and rendered text are unknown until the upstream steps ran
    known = explain.cache_detail(pipeline, name, system=None, prompt="", inputs=inputs, upstream={})
    unknown = ("upstream", "rendered")
    previous = previous_run(store, pipeline.name, name, known, unknown=unknown, job_inputs=inputs)
    changed: list[CacheChange] = []
    if previous is not None and previous.detail is not None:
        changed = explain.changes_since(previous, known, {}, unknown=unknown)
    if changed:
        reason += "; also " + "; ".join(explain.describe(c) for c in changed)
    return StepPlan(
        name,
        "depends",
        reason,
        changed=changed,
        depends_on=waiting,
        previous_key=previous.cache_key if previous else None,
        previous_job=previous.job_id if previous else None,
    )


def predict(
    store: EventStore,
    pipeline: Pipeline,
    inputs: dict[str, str],
    reuse: dict[str, str] | None = None,
    job: str | None = None,
    *,
    explain_misses: bool = True,
) -> PlanReport:
    """`reuse`: step -> output sha of the steps a resume would skip. explain_misses=False
    leaves a predicted call's reason out (no history is read for it): for a caller that only
    needs to know which outputs are known before the run."""
    reuse = reuse or {}
    outputs: dict[str, StepOutput] = {}
    unsettled: set[str] = set()  # steps whose output is not known before they run
    steps: list[StepPlan] = []
    for name in pipeline.order:
        spec = pipeline.spec.steps[name]
        if name in reuse:
            steps.append(StepPlan(name, "skip", "completed in an earlier run"))
            found = _output(store, spec.output, reuse[name])
            if found is None:
                unsettled.add(name)
            else:
                outputs[name] = found
            continue
        reads = pipeline.reads_in_order.get(name, ())
        waiting = sorted(r for r in reads if r in unsettled)
        if waiting:
            steps.append(_depends(store, pipeline, name, inputs, waiting))
            unsettled.add(name)
            continue
        context = {
            "inputs": inputs,
            "steps": {r: {"output": outputs[r].value, "files": outputs[r].files} for r in reads},
        }
        try:
            system, prompt = pipeline.render_step(name, context)
        except TemplateProblem as exc:
            steps.append(StepPlan(name, "fail", str(exc)))
            unsettled.add(name)
            continue
        parts, key = pipeline.key_for(name, system, prompt)  # the key the executor computes
        entry = cache_entry(store, key)
        if entry is not None:
            found = _output(store, spec.output, entry.response_sha256)
            if found is None:
                steps.append(
                    StepPlan(
                        name,
                        "fail",
                        f"the cached answer is not a usable {spec.output} output",
                        cache_key=key,
                    )
                )
                unsettled.add(name)
                continue
            outputs[name] = found
            origin = f"answer from job {entry.origin_job}"
            if entry.origin_step and entry.origin_step != name:
                origin += f", step {entry.origin_step}"
            steps.append(StepPlan(name, "hit", origin, cache_key=key, origin_job=entry.origin_job))
            continue
        if not explain_misses:
            steps.append(StepPlan(name, "miss", "not in the cache", cache_key=key))
            unsettled.add(name)
            continue
        detail = explain.cache_detail(
            pipeline,
            name,
            system=system,
            prompt=prompt,
            inputs=inputs,
            upstream={r: outputs[r].sha256 for r in reads},
        )
        previous = previous_run(store, pipeline.name, name, detail, parts, job_inputs=inputs)
        why = explain.miss_fields(previous, key, parts, detail)
        steps.append(
            StepPlan(
                name,
                "miss",
                why["reason"],
                cache_key=key,
                changed=why["changed"],
                previous_key=why.get("previous_key"),
                previous_job=why.get("previous_job"),
            )
        )
        unsettled.add(name)
    return PlanReport(pipeline.name, job, steps, outputs=outputs)


def _refusal(check: Callable[[], None]) -> list[str]:
    try:
        check()
    except Rejected as exc:
        return [str(exc)]
    return []


def refusals(
    store: EventStore, pipeline: Pipeline, steps: list[str], state: JobState | None = None
) -> list[str]:
    """What `run` (or `resume`, given the job's state) would refuse the steps with, found
    without a network call: key variables, open breakers, the budget that stopped the job."""
    found = pipeline.missing_keys(steps, os.environ)
    if state is not None:
        found += _refusal(lambda: check_budget(state, pipeline, pipeline.path))
    found += _refusal(lambda: check_breakers(store, pipeline, steps))
    return found


@gc_paused()
def plan_new_run(
    store: EventStore,
    pipeline_path: Path,
    given: dict[str, str],
    *,
    database_exists: bool = True,
) -> PlanReport:
    """database_exists=False: `store` is an empty one standing for a file not there yet."""
    pipeline = load_pipeline(pipeline_path)
    report = predict(store, pipeline, pipeline.resolve_inputs(given))
    report.refusals = refusals(store, pipeline, list(pipeline.order))
    report.database_exists = database_exists
    return report


@gc_paused()
def plan_for_resume(
    store: EventStore, job_id: str, pipeline_path: Path | None, given: dict[str, str]
) -> PlanReport:
    if given:
        raise Rejected("--input cannot be used with --job: a resumed job keeps its inputs")
    state = fold_job(store, job_id)
    check_has_work(state, job_id)
    pipeline = pipeline_for_resume(store, state, pipeline_path)
    plan, _ = plan_resume(state, pipeline)
    reuse = {name: sha for name, (sha, _) in plan.reuse.items()}
    report = predict(store, pipeline, dict(state.inputs), reuse, job=job_id)
    report.refusals = refusals(store, pipeline, plan.run, state)
    return report


def lines(report: PlanReport) -> list[str]:
    """The plan as text: a summary line, then one line per step."""
    what = f"resuming job {report.job}" if report.job else "a new run"
    head = (
        f"plan for {report.pipeline} ({what}): {report.count('hit')} from the cache, "
        f"{counted(report.count('miss'), 'provider call')}, {report.count('depends')} depending on them"
    )
    if report.count("skip"):
        head += f", {report.count('skip')} skipped"
    if report.count("fail"):
        head += f", {report.count('fail')} will fail"
    width = max(len(s.step) for s in report.steps)
    out = [head]
    for s in report.steps:
        out.append(f"  {s.step:<{width}}  {LABELS[s.action]:<13}  {s.reason}")
    verb = "resume" if report.job else "run"
    out += [f"{verb} would be refused: {why}" for why in report.refusals]
    return out


def missing_database_note(path: Path | str) -> str:
    return (
        f"note: no database at {path} yet; planned against an empty history "
        "(every step a first run), and no file was created"
    )
