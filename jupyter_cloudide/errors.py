"""The one exception tree of jupyter_cloudide.

Domain code raises these; the gateway maps them to HTTP statuses (REST), error frames (WS)
and OpenAI-style error bodies (/v1) in one place each. Messages are written for the user:
they must never contain secrets, paths outside the root, or tracebacks.
"""

from __future__ import annotations

from collections.abc import Mapping


class CloudIDEError(Exception):
    """Base of every error we raise on purpose; ``status`` is the HTTP status it maps to."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, object]:
        """The JSON shape sent to clients (REST body and WS error payload)."""
        out: dict[str, object] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class InvalidInputError(CloudIDEError):
    """The request is malformed or fails schema validation (names the field)."""

    status = 400
    code = "invalid_input"


class UnauthorizedError(CloudIDEError):
    """No or bad credentials."""

    status = 401
    code = "unauthorized"


class ForbiddenError(CloudIDEError):
    """Authenticated, but not allowed to do this (or not the owner)."""

    status = 403
    code = "forbidden"


class NotFoundError(CloudIDEError):
    """Missing, or owned by someone else: we never reveal which."""

    status = 404
    code = "not_found"


class ConflictError(CloudIDEError):
    """The state changed under the request (e.g. an approval already decided)."""

    status = 409
    code = "conflict"


class PayloadTooLargeError(CloudIDEError):
    """The body is above the route's size limit."""

    status = 413
    code = "payload_too_large"


class RateLimitedError(CloudIDEError):
    """A per-user rate limit is exhausted; ``headers`` carry Retry-After and x-ratelimit-*."""

    status = 429
    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        out["retry_after_s"] = round(self.retry_after_s, 3)
        return out


class ServiceUnavailableError(CloudIDEError):
    """A component this request needs is not ready or is down (db starting, Redis gone)."""

    status = 503
    code = "unavailable"


class BudgetExceededError(CloudIDEError):
    """The caller's spending budget is used up: retrying will not help until it is raised or
    the period ends (``/v1`` answers 429 with ``x-should-retry: false``)."""

    status = 429
    code = "budget_exceeded"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers={"x-should-retry": "false", **(headers or {})})
