"""What a run or resume will do: which steps run, and which completed steps are reused.

Pure: a plan is computed from the job's folded state and the pipeline as it is now, before
anything is appended, so `steplog plan --job` and `resume` decide the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from steplog.errors import Rejected
from steplog.executor.pipeline import Pipeline
from steplog.projections.manifest import JobState

REUSED = "completed in an earlier run"


@dataclass
class Plan:
    """Steps to execute and outputs of steps already done."""

    run: list[str]  # in topological order
    reuse: dict[str, tuple[str, str]] = field(default_factory=dict)  # step -> (output sha, reason)
    attempts: dict[str, int] = field(default_factory=dict)  # step -> attempts made so far

    def reused_outputs_read(self, pipeline: Pipeline) -> dict[str, str]:
        """step -> output sha256 of the reused steps whose output a step to run reads."""
        read = set().union(*(pipeline.references.get(s, ()) for s in self.run))
        return {name: sha for name, (sha, _) in self.reuse.items() if name in read}


def plan_resume(state: JobState, pipeline: Pipeline) -> tuple[Plan, list[str]]:
    """Skip completed steps whose definition is unchanged; re-run the rest and their dependants.

    Returns the plan and the completed steps whose definition changed.
    """
    if set(pipeline.spec.steps) != set(state.steps):
        now, then = sorted(pipeline.spec.steps), sorted(state.steps)
        raise Rejected(
            f"job {state.job_id} was created with steps {', '.join(then)}; the pipeline now has "
            f"{', '.join(now)}: run it as a new job"
        )
    completed = [s for s in pipeline.order if state.steps[s].completed]
    changed = [s for s in completed if state.steps[s].fingerprint != pipeline.step_fingerprints[s]]
    rerun = set(changed) | pipeline.downstream(set(changed))
    reuse = {s: (state.steps[s].output_sha256 or "", REUSED) for s in completed if s not in rerun}
    plan = Plan(
        run=[s for s in pipeline.order if s not in reuse],
        reuse=reuse,
        attempts={s: step.attempts for s, step in state.steps.items()},
    )
    return plan, changed
