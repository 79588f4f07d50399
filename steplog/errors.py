"""The one exception tree of steplog. Everything the library raises on purpose is a SteplogError.

    SteplogError
     ├── Rejected                  refused before anything was appended: the CLI's exit 2
     │    ├── PipelineError        the pipeline file (steplog.executor.pipeline)
     │    ├── BadPoint             a replay/fork point that is not in the log (steplog.commands.replay)
     │    ├── InvalidEvent         an event whose data fails its model (steplog.eventstore.events)
     │    └── StoreError           the database (steplog.eventstore.record)
     │         ├── VersionConflict     another writer appended to the job first
     │         ├── DatabaseUnusable    not a steplog database, corrupt, newer schema, read-only …
     │         │    ├── DatabaseReadOnly, DatabaseCorrupt            (steplog.eventstore.errors)
     │         │    ├── ServerUnreachable   the PostgreSQL server did not answer, or went away
     │         │    ├── DatabaseMissing     no such PostgreSQL database (createdb it first)
     │         │    │    └── DatabaseNotCreated  it exists, empty, and a read verb creates nothing
     │         │    └── PostgresDriverMissing  a postgresql:// URL without the postgres extra
     │         ├── DatabaseFull, DatabaseBusy, DatabaseIOFailure  (steplog.eventstore.errors)
     │         └── (StoreError itself) any other failure of the database mid-command
     │    └── QueryRefused         a statement `steplog sql` will not run (steplog.eventstore.errors)
     ├── JobFailed                 a job ended failed: JobResult.raise_for_status(); the CLI's exit 1
     └── Interrupted               SIGINT/SIGTERM stopped a run; job.interrupted is recorded (130/143)

`Steplog.run()` returns a JobResult whatever the job's outcome and raises only Rejected (or
Interrupted when it was asked to handle signals). This module imports nothing, so every layer
can subclass it.
"""

from __future__ import annotations

from typing import Any


class SteplogError(Exception):
    """The root of every error steplog raises on purpose."""


class Rejected(SteplogError):
    """A command refused before anything was appended (the CLI's exit code 2)."""


class JobFailed(SteplogError):
    """The job ended failed (the CLI's exit code 1); `result` is its JobResult."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class Interrupted(SteplogError):
    """The run stopped on SIGINT or SIGTERM; job.interrupted is recorded and resume continues."""

    def __init__(self, signal_name: str, report: Any = None) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.report = report  # executor.shutdown.StopReport when the drain ran

    @property
    def exit_code(self) -> int:
        return 143 if self.signal_name == "SIGTERM" else 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (outside the event loop's own
    handlers), so every handler of one catches both and can still tell which signal it was."""


__all__ = ["Interrupted", "JobFailed", "Rejected", "SteplogError", "Terminated"]
