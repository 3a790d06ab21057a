"""The public error family (API.md, Errors): what a client may be told, with a stable code.

Anything raised that is not a :class:`PublicError` reaches the client only as
``Unexpected error.`` with an ``errorId`` (see ``security.errors``).
"""

from __future__ import annotations

from typing import Any, ClassVar

INTERNAL_MESSAGE = "Unexpected error."


class PublicError(Exception):
    """An error whose message and code are meant for the client."""

    code: ClassVar[str] = "INTERNAL_SERVER_ERROR"
    default_message: ClassVar[str] = INTERNAL_MESSAGE

    def __init__(self, message: str | None = None, **extensions: Any) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.extensions = {"code": self.code, **extensions}


class Unauthenticated(PublicError):
    code = "UNAUTHENTICATED"
    default_message = "Sign in to continue."


class Forbidden(PublicError):
    code = "FORBIDDEN"
    default_message = "Your role does not allow this."


class NotFound(PublicError):
    code = "NOT_FOUND"
    default_message = "Not found."


class BadUserInput(PublicError):
    code = "BAD_USER_INPUT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)


class RateLimited(PublicError):
    code = "RATE_LIMITED"
    default_message = "Too many requests."

    def __init__(
        self, retry_after: int | None, message: str | None = None, **extensions: Any
    ) -> None:
        # None: waiting does not help (a conversation at its cap), so no retryAfter.
        if retry_after is not None:
            extensions["retryAfter"] = retry_after
        super().__init__(message, **extensions)


class PaymentRequired(PublicError):
    code = "PAYMENT_REQUIRED"
    default_message = "Your plan does not allow this."


class UpstreamError(PublicError):
    """The customer's LLM provider failed; the message says how, never with a secret."""

    code = "UPSTREAM_ERROR"
    default_message = "The LLM provider failed."


class Conflict(PublicError):
    code = "CONFLICT"
    default_message = "This conflicts with the current state."


class ServiceUnavailable(PublicError):
    """A backing service (the database, the broker) cannot serve this right now."""

    code = "SERVICE_UNAVAILABLE"
    default_message = "The service is unavailable right now; try again shortly."
    # Seconds a client should wait: over HTTP the Retry-After header of the 503.
    retry_after: ClassVar[int] = 5
