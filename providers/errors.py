"""The error tree every LLM provider call fails with (no pydantic here: the circuit breaker
and the log's readers use it without the provider models).

    ProviderError                 anything a provider call can fail with
    ├── ProviderUnavailable       could not reach the server (connect error, read timeout) — retryable
    ├── ProviderHTTPError         the server answered with an error status; retryable for 408/409/429/5xx/529
    ├── ProviderBadResponse       the server answered 2xx with something we cannot use — not retryable
    │   └── ProviderTooLarge      the answer passed the provider's max_response_bytes — not retryable
    ├── ProviderStreamError       the server put an error object inside a 2xx answer or stream;
    │                             retryable when the protocol says the cause is transient
    └── ProviderTruncated         the answer was cut off at the token limit and the step said
                                  on_truncation = "error" — not retryable

Errors carry `retryable` and `retry_after` so the executor decides what to do without knowing
the wire protocol. Messages never contain an API key or an Authorization header.
"""

from __future__ import annotations

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


class ProviderError(Exception):
    """Base of every provider failure. `error_class` is a stable short name for the log."""

    error_class = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status

    def __str__(self) -> str:
        return f"provider {self.provider!r}: {self.message}"


class ProviderUnavailable(ProviderError):
    error_class = "unavailable"

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message, provider=provider, retryable=True)


class ProviderHTTPError(ProviderError):
    error_class = "http_error"

    def __init__(
        self, message: str, *, provider: str, status: int, retry_after: float | None = None
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            status=status,
            retryable=status in RETRYABLE_STATUSES,
            retry_after=retry_after,
        )


class ProviderBadResponse(ProviderError):
    error_class = "bad_response"

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message, provider=provider, status=status, retryable=False)


class ProviderTooLarge(ProviderBadResponse):
    error_class = "too_large"


class ProviderStreamError(ProviderError):
    error_class = "stream_error"

    def __init__(self, message: str, *, provider: str, retryable: bool = False) -> None:
        super().__init__(message, provider=provider, retryable=retryable)


class ProviderTruncated(ProviderError):
    error_class = "truncated"

    def __init__(
        self, message: str, *, provider: str, tokens_in: int = 0, tokens_out: int = 0
    ) -> None:
        super().__init__(message, provider=provider, retryable=False)
        # the cut-off answer was paid for: the runner counts these against the budget
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
