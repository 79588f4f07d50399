"""steplog: durable multi-step LLM pipelines on an append-only event log.

    from steplog import Steplog

    with Steplog("steplog.db") as sl:
        result = sl.run("pipeline.toml", inputs={"idea": "a todo CLI"}).raise_for_status()

`Steplog` is the API (steplog.api); its results are the pydantic models of steplog.models; every
error it raises on purpose is a `SteplogError` (steplog.errors). The result models are loaded
on first use, so `import steplog` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steplog.api import LATEST, Steplog
from steplog.errors import Interrupted, JobFailed, Rejected, SteplogError

if TYPE_CHECKING:
    from steplog.models import (
        BatchResult,
        Event,
        ExportResult,
        ForkResult,
        ImportResult,
        JobResult,
        JobStatus,
        JobSummary,
        PlanReport,
        ReplayState,
        StepResult,
        StepStatus,
        VerifyReport,
    )

_MODELS = frozenset(
    {
        "BatchResult",
        "Event",
        "ExportResult",
        "ForkResult",
        "ImportResult",
        "JobResult",
        "JobStatus",
        "JobSummary",
        "PlanReport",
        "ReplayState",
        "StepResult",
        "StepStatus",
        "VerifyReport",
    }
)


def __getattr__(name: str) -> Any:
    if name in _MODELS:
        from steplog import models

        return getattr(models, name)
    raise AttributeError(f"module 'steplog' has no attribute {name!r}")


__all__ = [
    "LATEST",
    "BatchResult",
    "Event",
    "ExportResult",
    "ForkResult",
    "ImportResult",
    "Interrupted",
    "JobFailed",
    "JobResult",
    "JobStatus",
    "JobSummary",
    "PlanReport",
    "Rejected",
    "ReplayState",
    "StepResult",
    "StepStatus",
    "Steplog",
    "SteplogError",
    "VerifyReport",
]
