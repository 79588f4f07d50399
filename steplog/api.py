"""`Steplog`: the Python API over one steplog database. The CLI and the web UI are its clients.

    from steplog import Steplog

    with Steplog("steplog.db") as sl:
        result = sl.run("examples/factory/pipeline.toml", inputs={"idea": "a chess clock"})
        print(result.status, result.steps["architect"].output)

Every method validates first and raises `Rejected` (nothing appended) for what the CLI refuses
with exit 2. `run`/`resume` return a JobResult whatever the job's outcome; call
`result.raise_for_status()` to turn a failed job into `JobFailed`. The sync methods install no
signal handler, change no process-wide state and print nothing unless asked
(`handle_signals=True` is what the CLI passes); `arun`/`aresume` run inside the caller's event
loop. Heavy modules are imported by the methods that need them, so `import steplog` is cheap.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable

from steplog.commands.queries import LATEST
from steplog.errors import Rejected
from steplog.executor.shutdown import DEFAULT_GRACE_S

if TYPE_CHECKING:
    from steplog.commands.batch import BatchOutcome, BatchPlan
    from steplog.commands.jobs import Prepared, RunCommand
    from steplog.commands.queue import CancelResult, Submitted, SubmittedBatch
    from steplog.commands.show import StepAttempt
    from steplog.commands.worker import WorkerReport
    from steplog.eventstore.record import EventStore, StoredEvent
    from steplog.executor.runner import Observer
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
        VerifyReport,
    )
    from steplog.projections.manifest import JobState

DEFAULT_DB = "steplog.db"


class Steplog:
    """One steplog database (a SQLite file), opened on first use and closed by `close()` or
    at the end of a `with` block.

    Read methods refuse a database that does not exist (a typo in the path would otherwise
    leave an empty file behind), and `plan` answers for it without creating it; `run` and
    `import_` create it once they have validated what they were given (a refused one leaves
    no file).
    """

    def __init__(self, db: str | os.PathLike[str] = DEFAULT_DB) -> None:
        from steplog.eventstore.config import is_postgres_url, redact_url

        # a postgresql:// URL is never made a Path (which would fold its //)
        self.url: str | None = str(db) if is_postgres_url(db) else None
        self.path: Path | None = None if self.url is not None else Path(db)
        # what messages and repr show: the path, or the URL with its password masked
        self.where = redact_url(self.url) if self.url is not None else str(self.path)
        self._store: EventStore | None = None

    @property
    def location(self) -> str | Path:
        """The database as given: the SQLite path or the PostgreSQL URL (with its password)."""
        return self.url if self.url is not None else self.path  # type: ignore[return-value]

    def __enter__(self) -> Steplog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Steplog({self.where!r})"

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- the store -----------------------------------------------------------------------------

    def open_store(self, *, write: bool = False, create: bool | None = None) -> EventStore:
        """The store, opened once. write: the caller appends, so a read-only file is refused
        before anything starts. create (default: write): a missing file is created; else it
        is refused."""
        if self._store is None:
            creating = write if create is None else create
            from steplog.projections.store import open_store

            if self.path is None:  # PostgreSQL: an empty database gets steplog's tables if creating
                self._store = open_store(self.location, create=creating)
            elif not creating and not self.path.exists():
                raise Rejected(
                    f"no database at {self.path}; start one with: steplog run PIPELINE.toml"
                )
            else:
                self._store = open_store(self.path)
        if write:
            self._store.require_writable()
        return self._store

    def database_exists(self) -> bool:
        """Whether the log is there yet (the SQLite file; steplog's tables in the PostgreSQL
        database), found out without creating it."""
        if self._store is not None:
            return True
        if self.path is not None:
            return self.path.exists()
        from steplog.eventstore.errors import DatabaseNotCreated

        try:
            self.open_store(create=False)
        except DatabaseNotCreated:
            return False
        return True

    def _reader(self) -> EventStore:
        return self.open_store()

    # -- running jobs --------------------------------------------------------------------------

    def prepare_run(
        self,
        pipeline: str | os.PathLike[str],
        inputs: dict[str, str] | None = None,
        job_id: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        *,
        ignore_breaker: bool = False,
        overwrite: bool = False,
    ) -> Prepared:
        """Validate a run and append its opening events (job.created, job.started); the
        returned plan is then given to `execute`/`aexecute`. `run` is both in one call."""
        from steplog.commands.jobs import check_run_before_creating, prepare_run

        command = _run_command(pipeline, inputs, job_id, workspace, ignore_breaker, overwrite)
        # a refused run leaves no database file
        loaded = None if self.database_exists() else check_run_before_creating(command)
        return prepare_run(self.open_store(write=True), command, loaded=loaded)

    def prepare_resume(
        self,
        job_id: str,
        *,
        pipeline: str | os.PathLike[str] | None = None,
        force: bool = False,
        ignore_breaker: bool = False,
    ) -> Prepared:
        """Validate a resume (the job exists, has work left, no live process runs it …) and
        append job.resumed."""
        from steplog.commands.jobs import ResumeCommand, prepare_resume

        command = ResumeCommand(
            job_id=self.resolve_job(job_id),
            pipeline_path=Path(pipeline) if pipeline is not None else None,
            force=force,
            ignore_breaker=ignore_breaker,
        )
        return prepare_resume(self.open_store(write=True, create=False), command)

    def execute(
        self,
        prepared: Prepared,
        *,
        observer: Observer | None = None,
        handle_signals: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
        say: Callable[[str], None] | None = None,
    ) -> JobResult:
        """Run a prepared job to its end in a new event loop.

        handle_signals: the CLI's behaviour — the first SIGINT/SIGTERM stops new steps and lets
        calls in flight finish within `grace_s`, the second cancels them; job.interrupted is
        recorded and `Interrupted` raised. Main thread only. It also keeps the cyclic GC off
        the objects loaded before the run (process-wide, hence only when asked). `say`
        receives the lines the drain would print (default: nothing is printed).
        """
        from steplog.commands import jobs

        store = self.open_store(write=True)
        if handle_signals:
            jobs.execute(
                store,
                prepared,
                observer,
                grace_s=grace_s,
                say=say or _silent,
                freeze_gc=True,
            )
        else:
            import anyio

            _refuse_inside_a_loop()
            anyio.run(jobs.run_in_loop, store, prepared, observer)
        return self.result(prepared.job_id)

    async def aexecute(self, prepared: Prepared, *, observer: Observer | None = None) -> JobResult:
        """`execute` inside the caller's event loop. Cancelling it records job.interrupted
        (signal "cancelled"); `resume` continues from there."""
        from steplog.commands.jobs import run_in_loop

        await run_in_loop(self.open_store(write=True), prepared, observer)
        return self.result(prepared.job_id)

    def run(
        self,
        pipeline: str | os.PathLike[str],
        inputs: dict[str, str] | None = None,
        job_id: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        *,
        ignore_breaker: bool = False,
        overwrite: bool = False,
        observer: Observer | None = None,
        handle_signals: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> JobResult:
        """Run PIPELINE (a TOML file) as a new job and return its result, succeeded or not.

        inputs override the pipeline's defaults; job_id defaults to job_<utc time>_<random>;
        workspace (where files steps write) to runs/<job_id>. Raises Rejected before anything
        is appended when the pipeline, an input, a key, the workspace or the database is bad,
        and when the workspace already holds files the job would overwrite, unless
        overwrite=True (each file replaced is then kept as a blob, `file.written` reason
        modified_outside).
        """
        prepared = self.prepare_run(
            pipeline, inputs, job_id, workspace, ignore_breaker=ignore_breaker, overwrite=overwrite
        )
        return self.execute(
            prepared, observer=observer, handle_signals=handle_signals, grace_s=grace_s
        )

    async def arun(
        self,
        pipeline: str | os.PathLike[str],
        inputs: dict[str, str] | None = None,
        job_id: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        *,
        ignore_breaker: bool = False,
        overwrite: bool = False,
        observer: Observer | None = None,
    ) -> JobResult:
        """`run` inside the caller's event loop (asyncio or trio, through anyio)."""
        prepared = self.prepare_run(
            pipeline, inputs, job_id, workspace, ignore_breaker=ignore_breaker, overwrite=overwrite
        )
        return await self.aexecute(prepared, observer=observer)

    def resume(
        self,
        job_id: str,
        *,
        pipeline: str | os.PathLike[str] | None = None,
        force: bool = False,
        ignore_breaker: bool = False,
        observer: Observer | None = None,
        handle_signals: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> JobResult:
        """Continue a failed or interrupted job: completed steps are skipped, committed answers
        reused, failed and interrupted steps run again. pipeline: use this file instead of
        the job's own (e.g. with a fixed prompt; the steps it changes run again)."""
        prepared = self.prepare_resume(
            job_id, pipeline=pipeline, force=force, ignore_breaker=ignore_breaker
        )
        return self.execute(
            prepared, observer=observer, handle_signals=handle_signals, grace_s=grace_s
        )

    async def aresume(
        self,
        job_id: str,
        *,
        pipeline: str | os.PathLike[str] | None = None,
        force: bool = False,
        ignore_breaker: bool = False,
        observer: Observer | None = None,
    ) -> JobResult:
        """`resume` inside the caller's event loop."""
        prepared = self.prepare_resume(
            job_id, pipeline=pipeline, force=force, ignore_breaker=ignore_breaker
        )
        return await self.aexecute(prepared, observer=observer)

    # -- the queue -----------------------------------------------------------------------------

    def submit(
        self,
        pipeline: str | os.PathLike[str],
        inputs: dict[str, str] | None = None,
        job_id: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        *,
        ignore_breaker: bool = False,
        overwrite: bool = False,
    ) -> Submitted:
        """Queue PIPELINE as a new job for a worker (`work`, `steplog worker`): every check of
        `run`, then job.created only. Raises Rejected (nothing appended) where `run` would."""
        from steplog.commands.jobs import check_run_before_creating
        from steplog.commands.queue import submit

        command = _run_command(pipeline, inputs, job_id, workspace, ignore_breaker, overwrite)
        # a refused submit leaves no database file
        loaded = None if self.database_exists() else check_run_before_creating(command)
        return submit(self.open_store(write=True), command, loaded)

    def submit_batch(
        self,
        pipeline: str | os.PathLike[str],
        inputs_file: str | os.PathLike[str],
        *,
        inputs: dict[str, str] | None = None,
        job_id_prefix: str | None = None,
        batch: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        ignore_breaker: bool = False,
        overwrite: bool = False,
    ) -> SubmittedBatch:
        """Queue one job of PIPELINE per row of INPUTS_FILE (.jsonl or .csv) for the workers:
        every row checked as `run_batch` checks it, then every job.created in one transaction,
        or nothing (Rejected naming FILE:LINE)."""
        from steplog.commands.queue import SubmittedBatch

        plan, states = self.prepare_batch(
            pipeline,
            inputs_file,
            inputs=inputs,
            job_id_prefix=job_id_prefix,
            batch=batch,
            workspace=workspace,
            ignore_breaker=ignore_breaker,
            overwrite=overwrite,
        )
        return SubmittedBatch(
            batch=plan.batch,
            pipeline=plan.pipeline.name,
            job_ids=[state.job_id for state in states],
            status="queued",
        )

    def cancel(
        self, job_id: str, reason: str = "", *, wait: bool = False, timeout_s: float = 120.0
    ) -> CancelResult:
        """Cancel a job: a queued one at once (it never starts); a running one's owner is asked
        to stop it as on SIGTERM and records job.cancelled. wait: until it is no longer running
        (at most timeout_s). A cancelled job can be resumed."""
        from steplog.commands.queue import CancelResult, cancel, wait_cancelled

        store = self.open_store(write=True, create=False)
        job = self.resolve_job(job_id)
        done = cancel(store, job, reason)
        if wait and done.status != "cancelled":
            state = wait_cancelled(store, job, timeout_s)
            done = CancelResult(job_id=job, status=state.status, worker=done.worker)
        return done

    def workers(self) -> list[dict[str, Any]]:
        """Every worker (and run/resume process) the log knows: alive or not, host, pid, its
        jobs, the last heartbeat and its age; the most recently started first."""
        from steplog.commands.queue import workers

        return workers(self._reader())

    def work(
        self,
        concurrency: int = 1,
        *,
        drain: bool = True,
        worker_id: str | None = None,
        pipeline_dir: str | os.PathLike[str] | None = None,
        lease_s: float | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        ignore_breaker: bool = False,
        handle_signals: bool = False,
        say: Callable[[str], None] | None = None,
    ) -> WorkerReport:
        """Run a worker in this process: claim queued jobs (and jobs whose owner's lease is
        gone) and run up to `concurrency` at once, until the queue is empty (drain) or, with
        handle_signals (main thread only), a SIGINT/SIGTERM stops it."""
        from steplog.commands.worker import WorkerCommand, work

        _refuse_inside_a_loop()
        command = WorkerCommand(
            concurrency=concurrency,
            worker_id=worker_id,
            drain=drain,
            pipeline_dir=Path(pipeline_dir) if pipeline_dir is not None else None,
            lease_s=lease_s,
            grace_s=grace_s,
            ignore_breaker=ignore_breaker,
        )
        store = self.open_store(write=True, create=False)
        return work(store, command, say=say or _silent, handle_signals=handle_signals)

    def prepare_batch(
        self,
        pipeline: str | os.PathLike[str],
        inputs_file: str | os.PathLike[str],
        *,
        inputs: dict[str, str] | None = None,
        job_id_prefix: str | None = None,
        batch: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        ignore_breaker: bool = False,
        overwrite: bool = False,
    ) -> tuple[BatchPlan, list[JobState]]:
        """Validate a batch (the pipeline, then every row of the inputs file as `run`
        validates a job) and append every job's job.created in one transaction, or nothing.
        The jobs are `created`; `execute_batch` runs them."""
        from steplog.commands.batch import (
            BatchCommand,
            check_batch,
            check_batch_before_creating,
            create_batch,
        )

        command = BatchCommand(
            pipeline_path=Path(pipeline),
            inputs_file=Path(inputs_file),
            inputs=_check_inputs(inputs),
            job_id_prefix=job_id_prefix,
            batch=batch,
            workspace=Path(workspace) if workspace is not None else None,
            ignore_breaker=ignore_breaker,
            overwrite=overwrite,
        )
        if not self.database_exists():
            check_batch_before_creating(command)  # a refused batch leaves no database file
        store = self.open_store(write=True)
        plan = check_batch(store, command)
        return plan, create_batch(store, plan)

    def execute_batch(
        self,
        plan: BatchPlan,
        states: list[JobState],
        *,
        jobs: int = 4,
        observer_for: Callable[[str], Observer | None] | None = None,
        handle_signals: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
        say: Callable[[str], None] | None = None,
    ) -> BatchResult:
        """Run the batch's created jobs in one new event loop, at most `jobs` at once.

        handle_signals: as for `execute`, but the batch is not raised out of: the first
        SIGINT/SIGTERM starts no more jobs and drains the running ones (job.interrupted each),
        and the result says which were interrupted and which never started (`signal` set).
        """
        from steplog.commands import batch as batches

        store = self.open_store(write=True)
        if handle_signals:
            outcome = batches.execute_batch(
                store,
                plan,
                states,
                jobs=jobs,
                observer_for=observer_for,
                grace_s=grace_s,
                say=say or _silent,
            )
        else:
            import anyio

            _refuse_inside_a_loop()
            outcome = anyio.run(
                lambda: batches.run_batch_in_loop(
                    store, plan, states, jobs=jobs, observer_for=observer_for
                )
            )
        return self._batch_result(outcome)

    async def aexecute_batch(
        self,
        plan: BatchPlan,
        states: list[JobState],
        *,
        jobs: int = 4,
        observer_for: Callable[[str], Observer | None] | None = None,
    ) -> BatchResult:
        """`execute_batch` inside the caller's event loop; cancelling it records
        job.interrupted (signal "cancelled") for each running job."""
        from steplog.commands.batch import run_batch_in_loop

        store = self.open_store(write=True)
        outcome = await run_batch_in_loop(store, plan, states, jobs=jobs, observer_for=observer_for)
        return self._batch_result(outcome)

    def run_batch(
        self,
        pipeline: str | os.PathLike[str],
        inputs_file: str | os.PathLike[str],
        *,
        jobs: int = 4,
        inputs: dict[str, str] | None = None,
        job_id_prefix: str | None = None,
        batch: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        ignore_breaker: bool = False,
        overwrite: bool = False,
        handle_signals: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> BatchResult:
        """Run PIPELINE once per row of INPUTS_FILE (.jsonl or .csv), at most `jobs` at once,
        and return every job's result. `inputs` are defaults each row may override; a row's
        `id` names its job, else job_id_prefix (default: the batch's name and "-") and its row
        number; workspace is the directory holding each job's own <job_id>/ (default runs/).
        Raises Rejected, nothing appended, for any bad row (naming FILE:LINE) or any refusal
        `run` would make for one of the jobs."""
        plan, states = self.prepare_batch(
            pipeline,
            inputs_file,
            inputs=inputs,
            job_id_prefix=job_id_prefix,
            batch=batch,
            workspace=workspace,
            ignore_breaker=ignore_breaker,
            overwrite=overwrite,
        )
        return self.execute_batch(
            plan, states, jobs=jobs, handle_signals=handle_signals, grace_s=grace_s
        )

    def _batch_result(self, outcome: BatchOutcome) -> BatchResult:
        from steplog.models import BatchResult

        results = {job: self.result(job) for job in outcome.job_ids}
        by_status: dict[str, list[str]] = {}
        for job, result in results.items():
            by_status.setdefault(result.status, []).append(job)
        return BatchResult(
            batch=outcome.batch,
            jobs=results,
            succeeded=by_status.get("succeeded", []),
            failed=by_status.get("failed", []),
            not_started=by_status.get("queued", []),
            interrupted=by_status.get("interrupted", []),
            taken=outcome.taken,
            signal=outcome.signal,
            llm_calls=sum(r.llm_calls for r in results.values()),
            tokens=sum(r.tokens_in + r.tokens_out for r in results.values()),
            cost=sum(r.cost for r in results.values()),
        )

    def result(self, job_id: str) -> JobResult:
        """The job as it stands, with each succeeded step's output (from its blob)."""
        from steplog.commands.results import job_result

        return job_result(self._reader(), self.job_state(job_id))

    # -- reading the log -----------------------------------------------------------------------

    def resolve_job(self, job: str | None) -> str:
        """A job id as given, or the most recently updated job for None or "@latest"."""
        from steplog.commands.queries import resolve_job

        return resolve_job(self._reader(), LATEST if job is None else job)

    def job_state(self, job_id: str | None = None) -> JobState:
        """The job's fold itself (what `status` renders); refused for an unknown job."""
        from steplog.commands.queries import status

        return status(self._reader(), job_id)

    def status_document(self, job_id: str | None = None) -> dict[str, Any]:
        """`status` as the plain JSON document `steplog status --json` prints."""
        from steplog.commands.queries import manifest_document

        return manifest_document(self.job_state(job_id))

    def status(self, job_id: str | None = None) -> JobStatus:
        """The job's manifest folded from its log (default: the most recently updated job)."""
        from steplog.models import JobStatus

        return JobStatus.model_validate(self.status_document(job_id))

    def jobs(self, limit: int = 50, *, batch: str | None = None) -> list[JobSummary]:
        """The most recently updated jobs first; of one batch only when `batch` is given."""
        from steplog.commands import queries
        from steplog.models import JobSummary

        rows = queries.jobs(self._reader(), limit, batch)
        return [JobSummary.model_validate(row) for row in rows]

    def stored_events(
        self,
        job_id: str,
        *,
        type: str | None = None,
        step: str | None = None,
        level: str | None = None,
        after: int = 0,
    ) -> Iterator[StoredEvent]:
        """The job's events as stored (a lazy iterator, read in batches), filtered: type is a
        glob ('llm.*'), level is the lowest to include, after is a version to start after."""
        from steplog.commands import queries

        found = queries.events(
            self._reader(), self.resolve_job(job_id), type_glob=type, step=step, level=level
        )
        return (ev for ev in found if ev.version > after) if after else found

    def events(
        self,
        job_id: str,
        *,
        type: str | None = None,
        step: str | None = None,
        level: str | None = None,
        after: int = 0,
    ) -> Iterator[Event]:
        """`stored_events` as typed Event models."""
        return map(
            _event, self.stored_events(job_id, type=type, step=step, level=level, after=after)
        )

    def follow(
        self, job_id: str, *, interval_s: float = 0.2, wait_s: float = 10.0
    ) -> Iterator[Event]:
        """The job's events, old then new as they are committed; the iterator ends after the
        event that leaves the job succeeded, failed, cancelled or interrupted. A job not
        created yet (and a database not there yet) is waited for up to wait_s seconds:
        another process may be starting it."""
        from steplog.commands.follow import Cursor, follow_iter, wait_for_file

        waiting = self._store is None and self.path is not None
        waited = wait_for_file(self.path, wait_s) if waiting else 0.0  # type: ignore[arg-type]
        self._check_waited(waited, wait_s)
        store, job = self._reader(), self.resolve_job(job_id)
        # an unknown job is refused now, not at next()
        Cursor(store, job, wait_s=max(0.0, wait_s - waited))
        return map(_event, follow_iter(store, job, interval_s=interval_s, wait_s=0))

    async def afollow(
        self, job_id: str, *, interval_s: float = 0.2, wait_s: float = 10.0
    ) -> AsyncIterator[Event]:
        """`follow` for an event loop: waiting for new events does not block it."""
        import anyio

        from steplog.commands.follow import CREATE_POLL_S, follow_async

        waited = 0.0
        while self._store is None and self.path and not self.path.exists() and waited < wait_s:
            await anyio.sleep(CREATE_POLL_S)
            waited += CREATE_POLL_S
        self._check_waited(waited, wait_s)
        found = follow_async(
            self._reader(),
            self.resolve_job(job_id),
            interval_s=interval_s,
            wait_s=max(0.0, wait_s - waited),
        )
        async for ev in found:
            yield _event(ev)

    def show(self, job_id: str, step: str, attempt: int | None = None) -> StepAttempt:
        """One attempt of `step` (default: its latest): the rendered system prompt and prompt,
        the answer, the output, tokens, cost, duration, the calls and retries, the cache key,
        and the files it wrote — all read from the log and its blobs."""
        from steplog.commands.show import show_step

        return show_step(self._reader(), self.resolve_job(job_id), step, attempt)

    # -- what the web UI reads (cheap: the projection tables, one job's slice of the log) ---

    def job_rows(self) -> list[dict[str, Any]]:
        """Every job as the `jobs` projection table holds it (job_id, pipeline, status,
        created_ts, updated_ts), most recently updated first; no job is folded."""
        from steplog.commands import queries

        return queries.jobs(self._reader(), 2**62)

    def read_events(
        self, job_id: str, *, after: int = 0, until: int | None = None
    ) -> Iterator[StoredEvent]:
        """The job's events with a version above `after` (up to `until`), read from there
        rather than from the job's first event; refused for an unknown job."""
        store, job = self._reader(), self.resolve_job(job_id)
        if not store.job_exists(job):
            raise Rejected(f"unknown job {job}")
        return store.read_job(job, after_version=after, until_version=until)

    def last_seq(self) -> int:
        """The newest event's seq in the whole log (0 when it is empty)."""
        return self._reader().last_seq()

    def wait_for_events(self, after_seq: int, timeout: float) -> int:
        """Block until the log holds a seq above `after_seq` or `timeout` passes; returns the
        last seq (PostgreSQL: woken by NOTIFY; SQLite: a cheap poll of the last seq)."""
        return self._reader().wait_for_events(after_seq, timeout)

    def jobs_changed(self, after_seq: int, limit: int = 10_000) -> tuple[int, list[str]]:
        """The jobs that have events above `after_seq` (at most `limit` events read), and the
        seq read up to."""
        last, changed = after_seq, {}
        found = self._reader().read_all(after_seq=after_seq, data_for=("job.created",))
        for count, ev in enumerate(found):
            if count >= limit:
                break
            last, changed[ev.job_id] = ev.seq, True
        return last, list(changed)

    def files_at(self, job_id: str, version: int) -> dict[str, bytes]:
        """path -> content of every file the job had written by event `version` (its last
        write of each path), as `replay --fork` restores them; content the log lacks is left
        out."""
        from steplog.commands.fork import files_at_point

        events = list(self.read_events(job_id, until=version))
        return files_at_point(self._reader(), events)[0]

    def _check_waited(self, waited: float, wait_s: float) -> None:
        """follow waited for a database `run` was to create: refuse it if it never came."""
        from steplog.commands.follow import no_database

        if waited and self.path is not None and not self.path.exists():
            raise Rejected(no_database(self.path, wait_s))

    def replay(self, job_id: str, until: str | int) -> ReplayState:
        """The job as it was at a point of its log: an event number, an ISO timestamp, or
        TYPE[:STEP] (its first match). The same fold as "now", over a prefix."""
        from steplog.commands.queries import replay_document
        from steplog.commands.replay import replay
        from steplog.models import ReplayState

        view = replay(self._reader(), self.resolve_job(job_id), str(until))
        return ReplayState.model_validate(replay_document(view))

    def fork(
        self,
        job_id: str,
        until: str | int,
        new_job_id: str,
        workspace: str | os.PathLike[str] | None = None,
    ) -> ForkResult:
        """A new job whose history is JOB's up to `until`, with the files it had written then
        restored in its workspace (default runs/<new_job_id>); `resume` it to go on."""
        from steplog.commands.fork import fork_document, fork_job
        from steplog.models import ForkResult

        done = fork_job(
            self.open_store(write=True, create=False),
            self.resolve_job(job_id),
            str(until),
            new_job_id,
            Path(workspace) if workspace is not None else None,
        )
        return ForkResult.model_validate(fork_document(done))

    def plan(
        self,
        pipeline: str | os.PathLike[str],
        inputs: dict[str, str] | None = None,
        *,
        job_id: str | None = None,
    ) -> PlanReport:
        """Predict, without calling a provider, which steps the cache would serve and why the
        others miss; with job_id, what resuming that job with this pipeline file would do.

        A database that does not exist yet is not created: the plan is made against an empty
        history and says so (`database_exists` False). `predicts_failure` is what makes
        `steplog plan` exit 1: a step that will fail, or a refusal `run` would make.
        """
        from steplog.commands import plan
        from steplog.models import PlanReport

        given = _check_inputs(inputs)
        if job_id is None and not self.database_exists():
            from steplog.projections.store import open_empty_store

            with open_empty_store() as empty:
                report = plan.plan_new_run(empty, Path(pipeline), given, database_exists=False)
        elif job_id is None:
            report = plan.plan_new_run(self._reader(), Path(pipeline), given)
        else:
            report = plan.plan_for_resume(
                self._reader(), self.resolve_job(job_id), Path(pipeline), given
            )
        return PlanReport.model_validate(report.document())

    def verify(self, job_id: str | None = None) -> VerifyReport:
        """Check hash chains, append-only triggers, the schema, SQLite's integrity, every
        projection table against a fresh fold, and every blob against its sha256."""
        from steplog.commands.verify import verify_database
        from steplog.models import VerifyReport

        report = verify_database(self.location, job_id)
        return VerifyReport.model_validate(report.document())

    def export(self, job_id: str, file: str | os.PathLike[str]) -> ExportResult:
        """Write the job's events, with the blobs they point at inline, as JSON lines to FILE
        (replaced atomically); `import_` reads it back."""
        from steplog.commands.interchange import export_job, export_lines, write_atomically
        from steplog.models import ExportResult

        target = Path(file)
        job = self.resolve_job(job_id)
        exported = export_job(self._reader(), job, relative_to=target.parent.resolve())
        write_atomically(target, export_lines(exported))
        return ExportResult(
            job_id=job,
            path=str(target),
            events=exported.events,
            blobs=exported.blobs,
            missing_blobs=exported.missing,
        )

    def import_(self, file: str | os.PathLike[str], job_id: str | None = None) -> ImportResult:
        """Load a steplog export, or the predecessor's events.jsonl, as a new job (all or
        nothing)."""
        from steplog.commands.interchange import import_job, read_checked
        from steplog.models import ImportResult

        checked = None
        if not self.database_exists():
            checked = read_checked(Path(file), job_id)  # a refused import leaves no database
        target, plan = import_job(self.open_store(write=True), Path(file), job_id, checked=checked)
        return ImportResult(
            job_id=target,
            source="predecessor events.jsonl" if plan.predecessor else "steplog export",
            events=len(plan.events),
            blobs=len(plan.blobs),
        )


def _run_command(
    pipeline: str | os.PathLike[str],
    inputs: dict[str, str] | None,
    job_id: str | None,
    workspace: str | os.PathLike[str] | None,
    ignore_breaker: bool,
    overwrite: bool,
) -> RunCommand:
    """What `run` and `submit` check: one command model for both."""
    from steplog.commands.jobs import RunCommand

    return RunCommand(
        pipeline_path=Path(pipeline),
        inputs=_check_inputs(inputs),
        job_id=job_id,
        workspace=Path(workspace) if workspace is not None else None,
        ignore_breaker=ignore_breaker,
        overwrite=overwrite,
    )


def _check_inputs(inputs: dict[str, str] | None) -> dict[str, str]:
    given = dict(inputs or {})
    for name, value in given.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise Rejected(f"input {name!r} must be a string name with a string value")
    return given


def _event(ev: StoredEvent) -> Event:
    from steplog.models import Event

    return Event(**ev.envelope(), seq=ev.seq, version=ev.version)


def _silent(line: str) -> None:
    pass


def _refuse_inside_a_loop() -> None:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "Steplog.run()/resume() start their own event loop; inside one, use await arun()/aresume()"
    )


__all__ = ["LATEST", "Steplog"]
