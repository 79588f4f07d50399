"""The call path: one step's provider call, with retries, the budget, limits and breakers.

Before each attempt: a slot under the provider's concurrency and rate limits (step.waiting
when the step had to wait), the job's budget, the endpoint's circuit breaker (breakers.py); a
refusal fails the step without an llm.request. Every attempt is an llm.request committed
before the call and an llm.response after it.
"""

from __future__ import annotations

import random
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import anyio
import httpx

from steplog.eventstore.events import (
    BudgetExceeded,
    EventData,
    LLMRequested,
    LLMResponded,
    NewEvent,
    StepRetrying,
    StepWaiting,
)
from steplog.eventstore.record import blob_sha256
from steplog.executor import budget, cachekey
from steplog.executor.breakers import Breakers, breaker_endpoint
from steplog.executor.budget import Ledger, Reservation, Spend
from steplog.executor.joblog import JobLog
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
    ) -> None:
        self.log = log
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.rng = rng
        self.breakers = Breakers(log, ignore_breaker=ignore_breaker, clock=clock)
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

    async def call(
        self, name: str, request: LLMRequest, key: str, head: list[NewEvent]
    ) -> tuple[str, list[NewEvent], list[bytes]]:
        """Call the provider with retries; every attempt is a request/response pair in the log.

        `head` is the step's events not committed yet. Failed attempts are committed here (with
        any breaker transition they cause); the successful llm.response is returned uncommitted
        (with its blob) so the caller commits it with whatever the answer settles, unless it
        closes the endpoint's breaker: then it is committed here, with the close.
        """
        config = self.pipeline.provider_for(name)
        provider = self.providers[self.pipeline.spec.steps[name].provider]
        policy = retry_policy(config)
        endpoint = breaker_endpoint(config)
        price = self.pipeline.spec.prices.get(request.model)
        blob = prompt_blob(request)
        prompt_sha = blob_sha256(blob)
        prompt_tokens = len(request.prompt.split()) + len((request.system or "").split())
        estimate = budget.estimate(prompt_tokens, request.options, price)
        pending = list(head)  # this step's events not committed yet
        blobs: list[bytes] = [blob]

        async def note(data: EventData) -> None:
            """Commit an event now, after the step's pending ones."""
            await self.log.commit([*pending, NewEvent.of(data, name)])
            pending.clear()

        def cost(tokens_in: int, tokens_out: int) -> float | None:
            found = budget.cost_of(price, tokens_in, tokens_out)
            return 0.0 if found is None and config.kind == "offline" else found

        for call in range(1, policy.max_attempts + 1):
            failed: Exception | None = None
            async with self._slot(provider.name, config, note):
                await self._budget_room(request, provider.name, estimate, note)
                # reserved at once, so a parallel step's check sees this call's estimate
                reservation = self.ledger.reserve(estimate)
                try:
                    if pending and endpoint is not None and not self.breakers.ignore_breaker:
                        if not self.breakers.is_closed(endpoint):
                            # admit may claim the half-open probe for this attempt: its
                            # step.started goes first
                            await self.log.commit(pending)
                            pending.clear()
                    try:
                        await self.breakers.admit(name, provider.name, endpoint, config)
                    except CircuitOpen as exc:
                        if pending:
                            await self.log.commit(pending)
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
                        **self._reserved_fields(reservation),
                    )
                    # In flight from here: a stop that finds this llm.request committed (or
                    # being committed) lets the call run its grace period instead of cutting it.
                    with self.scheduler.calling(name):
                        await self.log.commit([*pending, NewEvent.of(requested, name)], blobs)
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

    async def _budget_room(
        self,
        request: LLMRequest,
        provider: str,
        estimate: Spend,
        note: Callable[[EventData], Awaitable[None]],
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
                await note(StepWaiting(provider=provider, reason="budget", limit=limit))
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
