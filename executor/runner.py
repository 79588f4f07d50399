"""The anyio DAG runner: executes a validated plan, appending every state change to the log.

Per step: render -> cache key -> cache.hit (no provider call) or cache.miss + llm.request
(committed before the call) -> llm.response (committed right after) -> output parsed -> files
written atomically (file.written) -> step.succeeded. A failure appends step.failed; steps that
depend on it never start; independent branches run to completion; the job ends failed.
"""

from __future__ import annotations

import random
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import anyio
import httpx

from steplog.eventstore.events import (
    BudgetExceeded,
    CacheHit,
    CacheInvalidated,
    CacheMiss,
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    EventData,
    FileWritten,
    JobFailed,
    JobSucceeded,
    LLMRequested,
    LLMResponded,
    NewEvent,
    StepFailed,
    StepRetrying,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StepWaiting,
)
from steplog.eventstore.record import StoredEvent, blob_sha256, text_sha256
from steplog.eventstore.sqlite import SQLiteEventStore
from steplog.executor import budget, cachekey, explain, faults
from steplog.executor.budget import Spend
from steplog.executor.cachehistory import previous_run
from steplog.executor.committer import GroupCommitter
from steplog.executor.outputs import OutputProblem, StepOutput, parse_output
from steplog.executor.pipeline import Pipeline
from steplog.executor.templates import TemplateProblem
from steplog.executor.workspace import UnsafePath, safe_relative, sweep_stale_temps, write_file
from steplog.projections.breaker import iso
from steplog.projections.tables import breaker_row, cache_lookup
from steplog.providers import breaker
from steplog.providers.backoff import RetryPolicy
from steplog.providers.base import (
    LLMRequest,
    LLMResult,
    Provider,
    ProviderBadResponse,
    ProviderError,
    ProviderTruncated,
)
from steplog.providers.breaker import (
    BreakerPolicy,
    BreakerState,
    CircuitOpen,
    Transition,
    endpoint_of,
)
from steplog.providers.config import ProviderConfig
from steplog.providers.ratelimit import RateGate
from steplog.providers.registry import build_provider

Observer = Callable[[Sequence[StoredEvent]], None]

# In-flight calls per provider unless `max_concurrency` says otherwise. The offline provider has
# nothing to protect, so no limiter (entering one costs a trip through the event loop per call).
DEFAULT_CONCURRENCY: dict[str, int | None] = {"offline": None}
DEFAULT_MAX_CONCURRENCY = 4


def retry_policy(config: ProviderConfig) -> RetryPolicy:
    return RetryPolicy(
        base_s=config.backoff_base_s,
        cap_s=config.backoff_cap_s,
        max_attempts=config.max_retries + 1,
    )


def breaker_policy(config: ProviderConfig) -> BreakerPolicy:
    return BreakerPolicy(
        failures=config.breaker_failures,
        cooldown_s=config.breaker_cooldown_s,
        probe_timeout_s=config.timeout_s + config.breaker_cooldown_s,
    )


def breaker_endpoint(config: ProviderConfig) -> str | None:
    """The breaker a provider's calls count against; none for offline (nothing to protect)."""
    return None if config.kind == "offline" else endpoint_of(config.kind, config.base_url)


@dataclass
class Plan:
    """What a run or resume must do: steps to execute and outputs of steps already done."""

    run: list[str]  # in topological order
    reuse: dict[str, tuple[str, str]] = field(default_factory=dict)  # step -> (output sha, reason)
    attempts: dict[str, int] = field(default_factory=dict)  # step -> attempts made so far


@dataclass(frozen=True)
class JobOutcome:
    succeeded: bool
    failed_steps: list[str]
    blocked_steps: list[str]
    interrupted: bool = False  # stopped by drain/stop_now: no job.succeeded/failed was appended


class StepFailure(Exception):
    def __init__(self, error: str, error_type: str) -> None:
        super().__init__(error)
        self.error = error
        self.error_type = error_type


class JobRunner:
    def __init__(
        self,
        store: SQLiteEventStore,
        job_id: str,
        pipeline: Pipeline,
        inputs: dict[str, str],
        workspace: Path,
        *,
        version: int,
        observer: Observer | None = None,
        rng: random.Random | None = None,
        spent: Spend | None = None,
        ignore_breaker: bool = False,
        clock: Callable[[], float] = time.time,
        last_written: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.pipeline = pipeline
        self.inputs = inputs
        self.workspace = workspace
        self.version = version
        self.observer = observer
        self.rng = rng or random.Random()
        self.outputs: dict[str, StepOutput] = {}
        self._steps_context: dict[str, dict[str, Any]] = {}  # what templates see as `steps`
        self.providers: dict[str, Provider] = {}
        self.limiters: dict[str, anyio.CapacityLimiter] = {}
        self.gates: dict[str, RateGate] = {}
        self.spent = spent or Spend()  # the job's tokens and cost so far, all runs
        self._in_flight = Spend()  # estimates of calls under way, reserved against the budget
        self.ignore_breaker = ignore_breaker
        self.clock = clock  # wall time: breakers are shared with other processes
        self._errors: dict[str, str] = {}
        self._attempted: set[str] = set()  # steps that got past their needs and started
        self._committer: GroupCommitter | None = None
        # path -> sha256 steplog last wrote there (from the log, then as this run writes)
        self._last_written: dict[str, str] = dict(last_written or {})
        # Stopping (see executor/shutdown.py): once draining, no step starts and no attempt
        # begins; steps outside a provider call are cancelled through their scopes.
        self._draining = False
        self._scopes: dict[str, anyio.CancelScope] = {}  # steps under way
        self._calling: set[str] = set()  # steps awaiting their provider's answer
        self._steps_scope: anyio.CancelScope | None = None
        # Set once job.succeeded or job.failed is committed: a signal after it changes nothing.
        self.ended: JobOutcome | None = None

    # -- the log ---------------------------------------------------------------------------------

    async def commit(
        self, events: list[NewEvent], blobs: Sequence[bytes] = ()
    ) -> list[StoredEvent]:
        """Append from a step: through the group committer while steps run."""
        if self._committer is None:
            return self.emit(events, blobs)
        return await self._committer.append(events, blobs)

    def emit(self, events: list[NewEvent], blobs: Sequence[bytes] = ()) -> list[StoredEvent]:
        """Append now, in this transaction of our own."""
        stored = self.store.append(self.job_id, events, expected_version=self.version, blobs=blobs)
        self._appended(stored)
        return stored

    def _appended(self, stored: list[StoredEvent]) -> None:
        """After a commit of ours: the job's head moves, the observer sees it, faults may fire."""
        self.version = stored[-1].version
        if self.observer is not None:
            self.observer(stored)
        faults.after_commit([(ev.type, ev.step) for ev in stored])

    @staticmethod
    def _ev(data: EventData, step: str | None = None) -> NewEvent:
        return NewEvent.of(data, step=step)

    # -- the job ---------------------------------------------------------------------------------

    async def run(self, plan: Plan) -> JobOutcome:
        started = time.monotonic()
        self._load_reused(plan)
        if self._last_written or plan.attempts:  # only an earlier run can have left one
            sweep_stale_temps(self.workspace)  # a crash mid-write leaves its temp file behind
        used = {self.pipeline.spec.steps[step].provider for step in plan.run}
        configs = {name: c for name, c in self.pipeline.spec.providers.items() if name in used}
        async with AsyncExitStack() as stack:
            client = None
            remote = [c for c in configs.values() if c.kind != "offline"]
            if remote:
                # Only when a step talks HTTP, and the TLS trust store (~20 ms to load) only when
                # a provider's URL is https: a plain-http client never uses it.
                tls = any((c.base_url or "").startswith("https:") for c in remote)
                client = await stack.enter_async_context(httpx.AsyncClient(verify=tls))
            for name, config in configs.items():
                self.providers[name] = build_provider(name, config, client)
                limit = config.max_concurrency or DEFAULT_CONCURRENCY.get(
                    config.kind, DEFAULT_MAX_CONCURRENCY
                )
                if limit is not None:
                    self.limiters[name] = anyio.CapacityLimiter(limit)
                if config.requests_per_minute:
                    self.gates[name] = RateGate(config.requests_per_minute)
            done = {name: anyio.Event() for name in plan.run}
            ok: dict[str, bool] = {name: True for name in plan.reuse}
            self._committer = committer = GroupCommitter(self.emit)
            async with anyio.create_task_group() as outer:
                outer.start_soon(committer.run)
                async with anyio.create_task_group() as steps:
                    self._steps_scope = steps.cancel_scope
                    for name in plan.run:
                        steps.start_soon(self._step_task, name, plan, done, ok)
                committer.flush()
                outer.cancel_scope.cancel()
            self._committer = None
        failed = [n for n in plan.run if ok.get(n) is False and n in self._attempted]
        blocked = [n for n in plan.run if n not in self._attempted]
        if self._draining and any(ok.get(n) is None for n in plan.run):
            # steps were cancelled or never started: the caller records job.interrupted
            return JobOutcome(False, failed, blocked, interrupted=True)
        duration = round(time.monotonic() - started, 6)
        if failed or blocked:
            error = "steps could not start"
            if failed:
                error = f"step {failed[0]} failed: {self._errors.get(failed[0], 'see its events')}"
            if len(failed) > 1:
                error += f" (and {len(failed) - 1} more: {', '.join(failed[1:])})"
            self.emit([self._ev(JobFailed(error=error, failed_steps=failed, duration_s=duration))])
            self.ended = JobOutcome(False, failed, blocked)
            return self.ended
        self.emit([self._ev(JobSucceeded(duration_s=duration))])
        self.ended = JobOutcome(True, [], [])
        return self.ended

    def _load_reused(self, plan: Plan) -> None:
        """Append step.skipped for every reused step; load the outputs still to be read."""
        read = set().union(*(self.pipeline.references.get(s, ()) for s in plan.run))
        wanted = {name: sha for name, (sha, _) in plan.reuse.items() if name in read}
        contents = self.store.get_blobs(list(wanted.values()))
        for name, sha in wanted.items():
            kind = self.pipeline.spec.steps[name].output
            self._record_output(name, parse_output(kind, contents[sha].decode("utf-8")))
        skipped = []
        for name, (sha, reason) in plan.reuse.items():
            skipped.append(
                self._ev(
                    StepSkipped(
                        reason=reason,
                        fingerprint=self.pipeline.step_fingerprints[name],
                        output_sha256=sha,
                    ),
                    step=name,
                )
            )
        if skipped:
            self.emit(skipped)

    async def _step_task(
        self, name: str, plan: Plan, done: dict[str, anyio.Event], ok: dict[str, bool]
    ) -> None:
        try:
            for need in self.pipeline.spec.steps[name].needs:
                if need in done:
                    await done[need].wait()
                if not ok.get(need, False):
                    ok[name] = False
                    return  # blocked: a dependency failed or never ran
            if self._draining:
                return  # stopping: the step stays pending for resume
            self._attempted.add(name)

            def release() -> None:
                ok[name] = True
                done[name].set()

            with anyio.CancelScope() as scope:
                self._scopes[name] = scope
                try:
                    ok[name] = await self._run_step(name, plan.attempts.get(name, 0) + 1, release)
                finally:
                    del self._scopes[name]
        finally:
            done[name].set()

    # -- stopping --------------------------------------------------------------------------------

    def drain(self) -> int:
        """Start no more steps or attempts; cancel the steps not waiting for a provider's answer.

        Returns the number of provider calls in flight: they may finish (and their steps with
        them) until `stop_now`.
        """
        self._draining = True
        for name, scope in self._scopes.items():
            if name not in self._calling:
                scope.cancel()
        return len(self._calling)

    def stop_now(self) -> int:
        """Cancel every step still under way; returns how many provider calls that cut off."""
        self._draining = True
        cut = len(self._calling)
        if self._steps_scope is not None:
            self._steps_scope.cancel()
        return cut

    # -- one step --------------------------------------------------------------------------------

    def _record_output(self, name: str, output: StepOutput) -> None:
        self.outputs[name] = output
        self._steps_context[name] = {"output": output.value, "files": output.files}

    def _context(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "steps": self._steps_context}

    async def _run_step(self, name: str, attempt: int, release: Callable[[], None]) -> bool:
        """Run one step; `release` lets dependants start once its success is settled in memory.

        Dependants are released just before the success is committed, so their first batch can
        share that transaction (group commit); they reach no provider or file before it lands.
        """
        spec = self.pipeline.spec.steps[name]
        fingerprint = self.pipeline.step_fingerprints[name]
        t0 = time.monotonic()
        started = self._ev(StepStarted(attempt=attempt, fingerprint=fingerprint), name)
        try:
            system, prompt = self.pipeline.render_step(name, self._context())
        except TemplateProblem as exc:
            await self._fail(name, [started], StepFailure(str(exc), "template_error"), attempt, t0)
            return False
        parts, key = self.pipeline.key_for(name, system, prompt)
        detail = explain.cache_detail(
            self.pipeline,
            name,
            system=system,
            prompt=prompt,
            inputs=self.inputs,
            outputs={r: self.outputs[r].text for r in self.pipeline.references.get(name, ())},
        )
        entry = cache_lookup(self.store.conn, key)
        # Events not yet committed, and the blobs they point at: committed together below.
        pending: list[NewEvent] = [started]
        pending_blobs: list[bytes] = []
        if entry is not None:
            text = self.store.get_blob(entry.response_sha256).decode("utf-8")
            hit = CacheHit(
                cache_key=key,
                response_sha256=entry.response_sha256,
                origin_job=entry.origin_job,
                origin_step=entry.origin_step,
                tokens_saved=entry.tokens_in + entry.tokens_out,
                parts=parts,
                pipeline=self.pipeline.name,
                detail=detail,
            )
            pending.append(self._ev(hit, name))
            cache_hit = True
        else:
            request = LLMRequest(
                step=name,
                system=system,
                prompt=prompt,
                model=self.pipeline.model_for(name),
                options=self.pipeline.options_for(name),
                output=spec.output,
                on_truncation=spec.on_truncation,
            )
            previous = previous_run(
                self.store.conn, self.pipeline.name, name, detail, parts, job_inputs=self.inputs
            )
            miss = CacheMiss(
                cache_key=key,
                parts=parts,
                pipeline=self.pipeline.name,
                detail=detail,
                **explain.miss_fields(previous, key, parts, detail),
            )
            pending.append(self._ev(miss, name))
            try:
                text, pending, pending_blobs = await self._call(name, request, key, pending)
            except StepFailure as exc:
                await self._fail(name, [], exc, attempt, t0)
                return False
            cache_hit = False
        try:
            output = parse_output(spec.output, text)
            for path in output.files:
                safe_relative(path)  # an answer naming a bad path is refused before any write
        except (OutputProblem, UnsafePath) as exc:
            # A response the step cannot use must not be served again from the cache.
            refused = entry.response_sha256 if entry else blob_sha256(text.encode("utf-8"))
            invalidated = CacheInvalidated(cache_key=key, reason=str(exc), response_sha256=refused)
            pending.append(self._ev(invalidated, name))
            error_type = "unsafe_path" if isinstance(exc, UnsafePath) else "bad_output"
            await self._fail(
                name, pending, StepFailure(str(exc), error_type), attempt, t0, pending_blobs
            )
            return False
        if output.files:
            if not cache_hit and pending:  # the paid-for answer lands before the workspace moves
                await self.commit(pending, pending_blobs)
                pending, pending_blobs = [], []
            try:
                self._write_files(name, output, pending)
            except (UnsafePath, OSError) as exc:
                error_type = "unsafe_path" if isinstance(exc, UnsafePath) else "io_error"
                failure = StepFailure(f"cannot write files: {exc}", error_type)
                await self._fail(name, pending, failure, attempt, t0, pending_blobs)
                return False
        # A text step's output is its answer, whose blob this commit or the cache holds already:
        # not encoded a second time (an answer may be hundreds of MB).
        same = output.text is text
        output_blobs = [] if same else [output.text.encode("utf-8")]
        succeeded = StepSucceeded(
            output_sha256=text_sha256(text) if same else blob_sha256(output_blobs[0]),
            output=spec.output,
            cache_hit=cache_hit,
            cache_key=key,
            duration_s=round(time.monotonic() - t0, 6),
            fingerprint=fingerprint,
        )
        pending.append(self._ev(succeeded, name))
        self._record_output(name, output)
        faults.reached("before:step.succeeded", name)
        release()
        await self.commit(pending, [*pending_blobs, *output_blobs])
        return True

    def _write_files(self, name: str, output: StepOutput, events: list[NewEvent]) -> None:
        """Write each file, appending its file.written to `events` as it lands."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        for path, content in output.files.items():
            faults.reached("before:file.write", name)
            result = write_file(
                self.workspace,
                path,
                content.encode("utf-8"),
                last_written=self._last_written,
                keep=self.store.put_blob,  # a hand-edited file is kept before it is replaced
                checkpoint=lambda point: faults.reached(point, name),
            )
            outside = result.reason == "modified_outside"
            events.append(
                NewEvent.of(
                    FileWritten(
                        path=result.path,
                        sha256=result.sha256,
                        wrote=result.wrote,
                        reason=result.reason,
                        size=result.size,  # type: ignore[arg-type]
                        found_sha256=result.found_sha256,
                        last_written=self._last_written.get(result.path) if outside else None,
                    ),
                    name,
                    "WARNING" if outside else None,
                )
            )
            self._last_written[result.path] = result.sha256
            if result.wrote:
                faults.reached("after:file.rename", name)

    async def _fail(
        self,
        name: str,
        before: list[NewEvent],
        exc: StepFailure,
        attempt: int,
        t0: float,
        blobs: Sequence[bytes] = (),
    ) -> None:
        failed = StepFailed(
            error=exc.error,
            error_type=exc.error_type,
            attempt=attempt,
            duration_s=round(time.monotonic() - t0, 6),
        )
        self._errors[name] = exc.error
        await self.commit([*before, self._ev(failed, name)], blobs)

    async def _call(
        self, name: str, request: LLMRequest, key: str, head: list[NewEvent]
    ) -> tuple[str, list[NewEvent], list[bytes]]:
        """Call the provider with retries; every attempt is a request/response pair in the log.

        Before each attempt: a slot under the provider's concurrency and rate limits
        (step.waiting when the step had to wait), the job's budget, the endpoint's circuit
        breaker; a refusal fails the step without an llm.request. Failed attempts are committed
        here (with any breaker transition they cause); the successful llm.response is returned
        uncommitted (with its blob) so the caller commits it with whatever the answer settles,
        unless it closes the endpoint's breaker: then it is committed here, with the close.
        """
        config = self.pipeline.provider_for(name)
        provider = self.providers[self.pipeline.spec.steps[name].provider]
        policy = retry_policy(config)
        endpoint = breaker_endpoint(config)
        price = self.pipeline.spec.prices.get(request.model)
        prompt_blob = _prompt_blob(request)
        prompt_sha = blob_sha256(prompt_blob)
        prompt_tokens = len(request.prompt.split()) + len((request.system or "").split())
        estimate = budget.estimate(prompt_tokens, request.options, price)
        pending = list(head)  # this step's events not committed yet
        blobs: list[bytes] = [prompt_blob]

        async def note(data: EventData) -> None:
            """Commit an event now, after the step's pending ones."""
            await self.commit([*pending, self._ev(data, name)])
            pending.clear()

        def cost(tokens_in: int, tokens_out: int) -> float | None:
            found = budget.cost_of(price, tokens_in, tokens_out)
            return 0.0 if found is None and config.kind == "offline" else found

        for call in range(1, policy.max_attempts + 1):
            failed: Exception | None = None
            async with self._slot(provider.name, config, note):
                over = budget.exceeded(
                    self.pipeline.spec.budget, self.spent + self._in_flight, estimate
                )
                if over is not None:
                    await note(self._overrun(request, provider.name, over, estimate))
                    raise StepFailure(self._overrun_text(over, estimate), "budget_exceeded")
                # reserved at once, so a parallel step's check sees this call's estimate
                self._in_flight = self._in_flight + estimate
                try:
                    if pending and endpoint is not None and not self.ignore_breaker:
                        row = breaker_row(self.store.conn, endpoint)
                        if row is not None and row.status != "closed":
                            # _admit may claim the half-open probe for this attempt: its
                            # step.started goes first
                            await self.commit(pending)
                            pending.clear()
                    try:
                        await self._admit(name, provider.name, endpoint, config)
                    except CircuitOpen as exc:
                        if pending:
                            await self.commit(pending)
                        raise StepFailure(str(exc), exc.error_class) from exc
                    requested = LLMRequested(
                        provider=provider.name,
                        kind=provider.kind,
                        model=request.model,
                        prompt_tokens=prompt_tokens,
                        attempt=call,
                        cache_key=key,
                        prompt_sha256=prompt_sha,
                        endpoint=endpoint,
                    )
                    # In flight from here: a stop that finds this llm.request committed (or
                    # being committed) lets the call run its grace period instead of cutting it.
                    self._calling.add(name)
                    await self.commit([*pending, self._ev(requested, name)], blobs)
                    pending.clear()
                    blobs = []
                    t = time.monotonic()
                    try:
                        result: LLMResult = await provider.complete(request)
                    except Exception as exc:  # judged below, once the slot is free
                        failed = exc
                    else:
                        try:
                            response = result.text.encode("utf-8")
                        except UnicodeEncodeError as exc:  # e.g. a lone "\ud800" JSON escape
                            failed = ProviderBadResponse(
                                f"the answer is not valid Unicode text ({exc.reason})",
                                provider=provider.name,
                            )
                finally:
                    self._calling.discard(name)
                    self._in_flight = self._in_flight - estimate
            duration = round(time.monotonic() - t, 6)
            if isinstance(failed, ProviderError):
                exc = failed
                used = (0, 0)
                if isinstance(exc, ProviderTruncated):  # the cut-off answer was paid for
                    used = (exc.tokens_in, exc.tokens_out)
                failure = LLMResponded(
                    provider=provider.name,
                    model=request.model,
                    duration_s=duration,
                    success=False,
                    attempt=call,
                    cache_key=key,
                    status=exc.status,
                    error=str(exc),
                    error_class=exc.error_class,
                    endpoint=endpoint,
                    retryable=exc.retryable,
                    cost=cost(*used),
                    tokens_in=used[0],
                    tokens_out=used[1],
                )
                self.spent = self.spent + Spend(sum(used), cost(*used) or 0.0)
                outcome = [self._ev(failure, name)]
                retry = policy.should_retry(exc, call)
                delay = policy.delay(call, exc.retry_after, self.rng) if retry else 0.0
                if retry:
                    retrying = StepRetrying(
                        attempt=call, delay_s=delay, error=str(exc), retry_after_s=exc.retry_after
                    )
                    outcome.append(self._ev(retrying, name))
                refused = await self._commit_outcome(
                    name,
                    provider.name,
                    endpoint,
                    config,
                    outcome,
                    False,
                    exc.retryable,
                    retry_in=delay if retry else None,
                )
                if retry and refused is None and not self._draining:
                    await anyio.sleep(delay)
                    continue
                if retry and refused is None:  # stopping: no new attempt; resume makes it
                    self._scopes[name].cancel()
                    await anyio.lowlevel.checkpoint()
                raise StepFailure(str(exc) + (refused or ""), exc.error_class) from exc
            if failed is not None:  # a provider bug must fail the step, not wedge the job
                error = f"provider {provider.name!r} raised {type(failed).__name__}: {failed}"
                failure = LLMResponded(
                    provider=provider.name,
                    model=request.model,
                    duration_s=duration,
                    success=False,
                    attempt=call,
                    cache_key=key,
                    error=error,
                    error_class="internal_error",
                    endpoint=endpoint,
                    retryable=False,
                    cost=cost(0, 0),
                )
                await self.commit([self._ev(failure, name)])
                raise StepFailure(error, "internal_error") from failed
            spent = cost(result.tokens_in, result.tokens_out)
            answered = LLMResponded(
                provider=provider.name,
                model=result.model,
                duration_s=duration,
                tokens_in=result.tokens_in,
                tokens_out=result.tokens_out,
                success=True,
                attempt=call,
                cache_key=key,
                response_sha256=blob_sha256(response),
                finish_reason=result.finish_reason,
                endpoint=endpoint,
                cost=spent,
            )
            self.spent = self.spent + Spend(result.tokens_in + result.tokens_out, spent or 0.0)
            event = self._ev(answered, name)
            row = breaker_row(self.store.conn, endpoint) if endpoint is not None else None
            if row is not None and row.status != "closed":
                # the close is caused by this answer: both in one transaction, the answer first,
                # so no crash or failed write between them loses the paid-for answer
                await self._commit_outcome(
                    name, provider.name, endpoint, config, [event], True, False, blobs=[response]
                )
                return result.text, [], []
            return result.text, [event], [response]
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- budget and breaker ----------------------------------------------------------------------

    @asynccontextmanager
    async def _slot(
        self,
        provider: str,
        config: ProviderConfig,
        note: Callable[[EventData], Awaitable[None]],
    ) -> AsyncIterator[None]:
        """A place under the provider's concurrency and rate limits, for one attempt.

        `note` records step.waiting, only when the step really has to wait: the display and
        `status` show the step as waiting until its llm.request.
        """
        limiter = self.limiters.get(provider)
        if limiter is not None:
            try:
                limiter.acquire_nowait()
            except anyio.WouldBlock:
                await note(
                    StepWaiting(provider=provider, reason="concurrency", limit=limiter.total_tokens)
                )
                await limiter.acquire()
        try:
            gate = self.gates.get(provider)
            wait = gate.reserve() if gate is not None else 0.0
            if wait > 0:
                await note(
                    StepWaiting(
                        provider=provider,
                        reason="rate_limit",
                        limit=config.requests_per_minute or 0,
                        wait_s=round(wait, 3),
                    )
                )
                await anyio.sleep(wait)
            yield
        finally:
            if limiter is not None:
                limiter.release()

    def _overrun(
        self, request: LLMRequest, provider: str, over: budget.Limit, estimate: Spend
    ) -> BudgetExceeded:
        limits = self.pipeline.spec.budget
        assert limits is not None
        spent = self.spent + self._in_flight
        return BudgetExceeded(
            provider=provider,
            model=request.model,
            limit=over,
            max_tokens=limits.max_tokens,
            max_cost=limits.max_cost,
            tokens_spent=spent.tokens,
            cost_spent=spent.cost,
            estimate_tokens=estimate.tokens,
            estimate_cost=estimate.cost,
        )

    def _overrun_text(self, over: budget.Limit, estimate: Spend) -> str:
        limits = self.pipeline.spec.budget
        assert limits is not None
        spent = self.spent + self._in_flight
        if over == "max_tokens":
            return (
                f"budget exceeded: {spent.tokens} tokens spent + {estimate.tokens} estimated for "
                f"this call > max_tokens {limits.max_tokens}; no call made"
            )
        return (
            f"budget exceeded: ${spent.cost:.6f} spent + ${estimate.cost:.6f} estimated for "
            f"this call > max_cost ${limits.max_cost}; no call made"
        )

    async def _admit(
        self, step: str, provider: str, endpoint: str | None, config: ProviderConfig
    ) -> None:
        """Consult the endpoint's breaker (as the log has it now); raise CircuitOpen if refused.

        A closed breaker costs one primary-key read. Otherwise the decision and, for the one
        half-open probe, its claim are made in one write transaction, so two processes never
        both probe. A call that finds another call probing waits for the probe's outcome
        (polling the log) instead of failing: closed lets it through, open fails it.
        """
        if endpoint is None or self.ignore_breaker:
            return
        policy = breaker_policy(config)
        pause = 0.02
        while True:
            row = breaker_row(self.store.conn, endpoint)
            if row is None or row.status == "closed":
                return
            decided: list[tuple[BreakerState, breaker.Admission]] = []

            def decide(state: BreakerState) -> list[NewEvent]:
                admission = breaker.admit(state, policy, self.clock())
                decided.append((state, admission))  # noqa: B023 - called at once, in this iteration
                if admission.transition is None:
                    return []
                transition = admission.transition
                return [self._transition_event(step, provider, endpoint, transition, policy)]

            self._breaker_txn(endpoint, decide)
            state, admission = decided[0]
            if admission.allowed:
                return
            if state.status != "half_open":
                raise CircuitOpen(
                    provider=provider, endpoint=endpoint, retry_after=admission.retry_after
                )
            await anyio.sleep(min(pause, admission.retry_after))
            pause = min(pause * 2, 0.5)

    async def _commit_outcome(
        self,
        step: str,
        provider: str,
        endpoint: str | None,
        config: ProviderConfig,
        events: list[NewEvent],
        success: bool,
        counted: bool,
        retry_in: float | None = None,
        blobs: Sequence[bytes] = (),
    ) -> str | None:
        """Commit an attempt's outcome events with the breaker transition they cause, if any.

        `events` is the llm.response, then the step.retrying when `retry_in` (its delay) is
        set. A retry the breaker, as it stands after this outcome, would refuse when the delay
        is over is dropped (no step.retrying, no sleep): the reason is returned, to be added to
        the step's error. None: the retry, if any, goes ahead.
        """
        if endpoint is None:
            if events:
                await self.commit(events, blobs)
            return None
        if success:  # a success only matters to a breaker that is not closed
            row = breaker_row(self.store.conn, endpoint)
            if row is None or row.status == "closed":
                if events:
                    await self.commit(events, blobs)
                return None
        policy = breaker_policy(config)
        refused: list[str] = []

        def decide(state: BreakerState) -> list[NewEvent]:
            now = self.clock()
            after, transition = breaker.on_outcome(state, policy, success, counted, now)
            kept = events
            if retry_in is not None and not self.ignore_breaker and after.status == "open":
                if not breaker.admit(after, policy, now + retry_in).allowed:
                    kept = events[:1]
                    refused.append(
                        f"; not retried: the circuit for {endpoint} is open until {iso(after.until)}"
                    )
            if transition is None:
                return kept
            # the transition follows the llm.response that caused it, before step.retrying
            moved = self._transition_event(step, provider, endpoint, transition, policy)
            return [*kept[:1], moved, *kept[1:]]

        self._breaker_txn(endpoint, decide, blobs)
        return refused[0] if refused else None

    def _transition_event(
        self,
        step: str,
        provider: str,
        endpoint: str,
        transition: Transition,
        policy: BreakerPolicy,
    ) -> NewEvent:
        data: EventData
        if transition.to == "open":
            data = CircuitOpened(
                provider=provider,
                failures=transition.failures,
                retry_at=iso(transition.until),
                endpoint=endpoint,
                cooldown_s=policy.cooldown_s,
            )
        elif transition.to == "half_open":
            data = CircuitHalfOpen(
                provider=provider,
                endpoint=endpoint,
                failures=transition.failures,
                probe_until=iso(transition.until),
            )
        else:
            data = CircuitClosed(provider=provider, endpoint=endpoint)
        return self._ev(data, step)

    def _breaker_txn(
        self,
        endpoint: str,
        decide: Callable[[BreakerState], list[NewEvent]],
        blobs: Sequence[bytes] = (),
    ) -> None:
        """Read the breaker, decide, append: one IMMEDIATE transaction (other processes wait)."""
        with self.store.write_transaction() as conn:
            row = breaker_row(conn, endpoint)
            events = decide(row.state if row else BreakerState())
            if not events:
                return
            prepared = [(e.ts, e.level, e.type, e.step, e.data_json()) for e in events]
            stored = self.store.append_txn(conn, self.job_id, prepared, self.version, blobs)
        self._appended(stored)


def _prompt_blob(request: LLMRequest) -> bytes:
    return cachekey.canonical_json(
        {
            "system": request.system,
            "prompt": request.prompt,
            "model": request.model,
            "options": request.options,
            "output": request.output,
        }
    ).encode("utf-8")
