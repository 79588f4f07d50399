"""The call path: one step's provider call, with retries, the budget, limits and breakers.

Before each attempt: a slot under the provider's concurrency and rate limits in this process
(step.waiting when the step had to wait), the job's budget, the endpoint's circuit breaker
(breakers.py); a refusal fails the step without an llm.request. Then, for a provider with an
endpoint, the admission transaction (flights.py): the same limits across every process on the
store, and single flight on the cache key (another live call for the key: wait for its answer
and reuse it, Served, or take the call over if it fails or its owner dies). Every attempt is
an llm.request committed before the call and an llm.response after it.
"""

from __future__ import annotations

import random
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import anyio

from steplog.eventstore.events import (
    BudgetExceeded,
    EventData,
    LLMRequested,
    LLMResponded,
    NewEvent,
    Owner,
    StepRetrying,
    StepWaiting,
)
from steplog.eventstore.record import Blob, blob_of_text, blob_sha256
from steplog.executor import budget, cachekey
from steplog.executor.admission import Admit, Decision, Serve, SharedLimits, Wait
from steplog.executor.breakers import Breakers, breaker_endpoint
from steplog.executor.budget import Ledger, Reservation, Spend
from steplog.executor.flights import MAX_WAIT_S, Liveness, Served, SharedCalls, default_alive
from steplog.executor.joblog import JobLog
from steplog.executor.ownership import current_owner
from steplog.executor.pipeline import Pipeline
from steplog.executor.scheduler import Scheduler
from steplog.providers.backoff import RetryPolicy
from steplog.providers.base import (
    LLMRequest,
    LLMResult,
    Provider,
    ProviderBadResponse,
    ProviderError,
    ProviderTruncated,
)
from steplog.providers.breaker import CircuitOpen
from steplog.providers.config import ProviderConfig
from steplog.providers.ratelimit import RateGate
from steplog.providers.registry import build_provider

# In-flight calls per provider unless `max_concurrency` says otherwise. The offline provider has
# nothing to protect, so no limiter (entering one costs a trip through the event loop per call).
DEFAULT_CONCURRENCY: dict[str, int | None] = {"offline": None}
DEFAULT_MAX_CONCURRENCY = 4
# Tries of the admission transaction for one attempt; each try after the first follows a wait
# (bounded by MAX_WAIT_S) or a peek that found the answer changed.
MAX_ADMISSION_TRIES = 10_000


def provider_concurrency(config: ProviderConfig) -> int | None:
    """The calls a provider may have in flight in this process; None: no limit."""
    return config.max_concurrency or DEFAULT_CONCURRENCY.get(config.kind, DEFAULT_MAX_CONCURRENCY)


def import_http(pipeline: Pipeline, steps: Sequence[str]) -> None:
    """Import the HTTP client now if the steps call a provider over HTTP.

    aiohttp takes ~150 ms to import: done before a job opens, not between its job.started and
    its first call, where it would count in the job's time.
    """
    if any(pipeline.provider_for(step).kind != "offline" for step in steps):
        import steplog.providers.client  # noqa: F401


def retry_policy(config: ProviderConfig) -> RetryPolicy:
    return RetryPolicy(
        base_s=config.backoff_base_s,
        cap_s=config.backoff_cap_s,
        max_attempts=config.max_retries + 1,
    )


def prompt_blob(request: LLMRequest) -> bytes:
    """What llm.request's prompt_sha256 names: everything the provider was asked."""
    return cachekey.canonical_json(
        {
            "system": request.system,
            "prompt": request.prompt,
            "model": request.model,
            "options": request.options,
            "output": request.output,
        }
    ).encode("utf-8")


class CallFailed(Exception):
    """The call failed or was refused: its step fails with this error."""

    def __init__(self, error: str, error_type: str) -> None:
        super().__init__(error)
        self.error = error
        self.error_type = error_type


class ProviderCalls:
    """The providers of a run, their limits, and the job's spend against its budget."""

    def __init__(
        self,
        log: JobLog,
        pipeline: Pipeline,
        scheduler: Scheduler,
        *,
        spent: Spend,
        ignore_breaker: bool,
        clock: Callable[[], float],
        rng: random.Random,
        owner: Owner | None = None,
        alive: Liveness = default_alive,
    ) -> None:
        self.log = log
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.rng = rng
        self.breakers = Breakers(log, ignore_breaker=ignore_breaker, clock=clock)
        # who makes this run's calls (recorded in llm.request), and who still counts as alive
        self.owner = owner or current_owner()
        self.shared = SharedCalls(log, clock=clock, alive=alive, owner=self.owner)
        self.providers: dict[str, Provider] = {}
        self.limiters: dict[str, anyio.CapacityLimiter] = {}
        self.gates: dict[str, RateGate] = {}
        # the job's spend so far (all runs) and the estimates its calls in flight reserve
        self.ledger = Ledger(pipeline.spec.budget, spent)
        self._released = anyio.Event()  # set, then replaced, as each reservation is released

    async def open(self, stack: AsyncExitStack, steps: Sequence[str]) -> None:
        """Build the providers the steps use (and their limits), closed with `stack`."""
        used = {self.pipeline.spec.steps[step].provider for step in steps}
        configs = {name: c for name, c in self.pipeline.spec.providers.items() if name in used}
        remote = [c for c in configs.values() if c.kind != "offline"]
        for name, config in configs.items():
            limit = provider_concurrency(config)
            client = None
            if config.kind != "offline":
                # the provider's own pool, as many connections as it may have calls in flight
                from steplog.providers.client import client_url, http_client  # see import_http

                connections = limit or DEFAULT_MAX_CONCURRENCY
                client = http_client(connections, url=client_url(config))
                await stack.enter_async_context(client)
            self.providers[name] = build_provider(name, config, client)
            if limit is not None:
                self.limiters[name] = anyio.CapacityLimiter(limit)
            if config.requests_per_minute:
                self.gates[name] = RateGate(config.requests_per_minute)
        if remote and self.log.store.notifies:  # waiters are woken by the store's NOTIFY
            wakeup = self.shared.wakeup
            waker = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(waker.cancel_scope.cancel)  # runs first: then the group exits
            waker.start_soon(wakeup.run)
            wakeup.running = True

    async def call(
        self,
        name: str,
        request: LLMRequest,
        key: str,
        head: list[NewEvent],
        miss: NewEvent | None = None,
    ) -> tuple[str, list[NewEvent], list[Blob]]:
        """Call the provider with retries; every attempt is a request/response pair in the log.

        `head` is the step's events not committed yet; `miss`, its cache.miss, is committed with
        the first llm.request (or with a refusal), not with a step.waiting: a step that waited
        and was then served another job's answer (Served) records a cache.hit, no miss. Failed
        attempts are committed here (with any breaker transition they cause); the successful
        llm.response is returned uncommitted (with its blob) so the caller commits it with
        whatever the answer settles, unless it closes the endpoint's breaker: then it is
        committed here, with the close.
        """
        config = self.pipeline.provider_for(name)
        provider = self.providers[self.pipeline.spec.steps[name].provider]
        policy = retry_policy(config)
        endpoint = breaker_endpoint(config)
        limits = SharedLimits(config.max_concurrency, config.requests_per_minute)
        price = self.pipeline.spec.prices.get(request.model)
        blob = prompt_blob(request)
        prompt_sha = blob_sha256(blob)
        prompt_tokens = len(request.prompt.split()) + len((request.system or "").split())
        estimate = budget.estimate(prompt_tokens, request.options, price)
        pending = list(head)  # this step's events not committed yet
        held: list[NewEvent] = [miss] if miss is not None else []  # the cache.miss, held back
        blobs: list[Blob] = [blob]
        waited: list[bool] = [False]  # this attempt recorded its step.waiting

        async def note(data: EventData) -> None:
            """Commit an event now, after the step's pending ones (and its cache.miss)."""
            await self.log.commit([*pending, *held, NewEvent.of(data, name)])
            pending.clear()
            held.clear()

        async def note_wait(data: StepWaiting) -> None:
            """step.waiting, once per attempt; the cache.miss stays held back."""
            if waited[0]:
                return
            waited[0] = True
            await self.log.commit([*pending, NewEvent.of(data, name)])
            pending.clear()

        def cost(tokens_in: int, tokens_out: int) -> float | None:
            found = budget.cost_of(price, tokens_in, tokens_out)
            return 0.0 if found is None and config.kind == "offline" else found

        for call in range(1, policy.max_attempts + 1):
            failed: Exception | None = None
            waited[0] = False
            async with self._slot(provider.name, config, note_wait):
                await self._budget_room(request, provider.name, estimate, note, note_wait)
                # reserved at once, so a parallel step's check sees this call's estimate
                reservation = self.ledger.reserve(estimate)
                try:
                    if pending and endpoint is not None and not self.breakers.ignore_breaker:
                        if not self.breakers.is_closed(endpoint):
                            # admit may claim the half-open probe for this attempt: its
                            # step.started goes first
                            await self.log.commit([*pending, *held])
                            pending.clear()
                            held.clear()
                    try:
                        await self.breakers.admit(name, provider.name, endpoint, config)
                    except CircuitOpen as exc:
                        if pending or held:
                            await self.log.commit([*pending, *held])
                        raise CallFailed(str(exc), exc.error_class) from exc
                    requested = LLMRequested(
                        provider=provider.name,
                        kind=provider.kind,
                        model=request.model,
                        prompt_tokens=prompt_tokens,
                        attempt=call,
                        cache_key=key,
                        prompt_sha256=prompt_sha,
                        endpoint=endpoint,
                        owner=self.owner if endpoint is not None else None,
                        **self._reserved_fields(reservation),
                    )

                    def batch() -> list[NewEvent]:
                        # built when admitted: the llm.request's ts is when it was admitted
                        return [*pending, *held, NewEvent.of(requested, name)]  # noqa: B023

                    for _ in range(MAX_ADMISSION_TRIES):
                        decision: Decision = Admit()
                        # In flight from here: a stop that finds this llm.request committed (or
                        # being committed) lets the call run its grace period instead of cutting
                        # it. The admission transaction is synchronous: nothing runs between it
                        # and entering `calling`.
                        with self.scheduler.calling(name):
                            if endpoint is not None:
                                decision = self.shared.try_admit(
                                    name, endpoint, key, limits, batch, blobs
                                )
                            else:
                                await self.log.commit(batch(), blobs)
                            if isinstance(decision, Admit):
                                self.shared.returned.discard(name)
                                pending.clear()
                                held.clear()
                                blobs = []
                                t = time.monotonic()
                                failed, result, response = await self._complete(provider, request)
                                self.shared.returned.add(name)
                                break
                        assert endpoint is not None
                        await self._not_admitted(name, provider.name, endpoint, key, limits,
                                                 decision, pending, note_wait)  # fmt: skip
                    else:
                        if pending or held:
                            await self.log.commit([*pending, *held])
                        raise CallFailed("no place under the shared limits", "limit_wait")
                finally:
                    self._release(reservation)
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
                self.ledger.spend(Spend(sum(used), cost(*used) or 0.0))
                outcome = [NewEvent.of(failure, name)]
                retry = policy.should_retry(exc, call)
                delay = policy.delay(call, exc.retry_after, self.rng) if retry else 0.0
                if retry:
                    retrying = StepRetrying(
                        attempt=call, delay_s=delay, error=str(exc), retry_after_s=exc.retry_after
                    )
                    outcome.append(NewEvent.of(retrying, name))
                refused = await self.breakers.commit_outcome(
                    name,
                    provider.name,
                    endpoint,
                    config,
                    outcome,
                    False,
                    exc.retryable,
                    retry_in=delay if retry else None,
                )
                if retry and refused is None and not self.scheduler.draining:
                    await anyio.sleep(delay)
                    continue
                if retry and refused is None:  # stopping: no new attempt; resume makes it
                    self.scheduler.cancel(name)
                    await anyio.lowlevel.checkpoint()
                raise CallFailed(str(exc) + (refused or ""), exc.error_class) from exc
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
                await self.log.commit([NewEvent.of(failure, name)])
                raise CallFailed(error, "internal_error") from failed
            assert result is not None and response is not None
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
            self.ledger.spend(Spend(result.tokens_in + result.tokens_out, spent or 0.0))
            event = NewEvent.of(answered, name)
            if endpoint is not None and not self.breakers.is_closed(endpoint):
                # the close is caused by this answer: both in one transaction, the answer first,
                # so no crash or failed write between them loses the paid-for answer
                await self.breakers.commit_outcome(
                    name, provider.name, endpoint, config, [event], True, False, blobs=[response]
                )
                return result.text, [], []
            return result.text, [event], [response]
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _complete(
        self, provider: Provider, request: LLMRequest
    ) -> tuple[Exception | None, LLMResult | None, Blob | None]:
        """The provider's answer (and its UTF-8 blob), or the exception it raised."""
        try:
            result: LLMResult = await provider.complete(request)
        except Exception as exc:  # judged by the caller, once the slot is free
            return exc, None, None
        try:
            return None, result, blob_of_text(result.text)
        except UnicodeEncodeError as exc:  # e.g. a lone "\ud800" JSON escape
            bad = ProviderBadResponse(
                f"the answer is not valid Unicode text ({exc.reason})", provider=provider.name
            )
            return bad, None, None

    async def _not_admitted(
        self,
        step: str,
        provider: str,
        endpoint: str,
        key: str,
        limits: SharedLimits,
        decision: Decision,
        pending: list[NewEvent],
        note_wait: Callable[[StepWaiting], Awaitable[None]],
    ) -> None:
        """A call the admission transaction did not admit: raise Served when the key's answer
        is committed, else record step.waiting (once) and wait until a new try may succeed."""
        if isinstance(decision, Wait):
            following = decision.following
            await note_wait(
                StepWaiting(
                    provider=provider,
                    reason=decision.reason,
                    limit=decision.limit,
                    wait_s=round(decision.wait_s, 3) if decision.wait_s is not None else None,
                    following_job=following.job_id if following else None,
                    following_step=following.step if following else None,
                )
            )
            decision = await self.shared.until_changed(step, endpoint, key, limits, decision)
            if isinstance(decision, Wait):
                raise CallFailed(
                    f"waited {MAX_WAIT_S:g} s for {decision.reason.replace('_', ' ')}"
                    f" on {endpoint} (shared by every process on this store)",
                    "limit_wait",
                )
        if isinstance(decision, Serve):
            entry = self.shared.entry(key)
            if entry is not None:
                raise Served(entry, list(pending))

    @asynccontextmanager
    async def _slot(
        self,
        provider: str,
        config: ProviderConfig,
        note: Callable[[StepWaiting], Awaitable[None]],
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

    async def _budget_room(
        self,
        request: LLMRequest,
        provider: str,
        estimate: Spend,
        note: Callable[[EventData], Awaitable[None]],
        note_wait: Callable[[StepWaiting], Awaitable[None]],
    ) -> None:
        """Return once the budget has room for this call; CallFailed when it never will.

        While only the reservations of calls in flight stand in the way, the call waits for
        them to end (step.waiting, reason budget): each ends as spend or is released.
        """
        waited = False
        while True:
            released = self._released  # taken before the check: a release during `note` counts
            verdict, over = self.ledger.verdict(estimate)
            if verdict == "go":
                return
            limits = self.ledger.limits
            assert limits is not None and over is not None
            if verdict == "refuse":
                await note(self._overrun(request, provider, over, estimate))
                raise CallFailed(
                    budget.refusal_text(limits, over, self.ledger, estimate), "budget_exceeded"
                )
            if not waited:
                waited = True
                limit = budget.limit_value(limits, over)
                await note_wait(StepWaiting(provider=provider, reason="budget", limit=limit))
            await released.wait()

    def _reserved_fields(self, reservation: Reservation) -> dict[str, Any]:
        """llm.request's record of the reservation, when the job has a budget."""
        if self.ledger.limits is None:
            return {}
        return {
            "tokens_reserved": reservation.amount.tokens,
            "cost_reserved": reservation.amount.cost,
        }

    def _release(self, reservation: Reservation) -> None:
        self.ledger.release(reservation)
        self._released.set()
        self._released = anyio.Event()

    def _overrun(
        self, request: LLMRequest, provider: str, over: budget.Limit, estimate: Spend
    ) -> BudgetExceeded:
        limits = self.ledger.limits
        assert limits is not None
        spent, reserved = self.ledger.spent, self.ledger.reserved
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
            tokens_reserved=reserved.tokens,
            cost_reserved=reserved.cost,
            calls_in_flight=self.ledger.in_flight,
        )
