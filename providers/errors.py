"""The upstream error taxonomy, grouped by cause.

Adapters raise these; the gateway maps each ``code`` into ``extensions.code`` exactly once.
Messages are ours, never a raw upstream body.
"""

from __future__ import annotations

from typing import ClassVar

from providers.records import ProviderName

__all__ = [
    "BadUpstreamResponse",
    "InvalidCursor",
    "OperationUnsupported",
    "UpstreamError",
    "UpstreamForbidden",
    "UpstreamNotFound",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnauthorized",
    "UpstreamUnavailable",
]


class UpstreamError(Exception):
    """Something went wrong talking to a provider. Messages are ours, never a raw body."""

    code: ClassVar[str] = "UPSTREAM_UNAVAILABLE"

    def __init__(
        self,
        provider: ProviderName,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message
        self.status = status
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    code = "UPSTREAM_TIMEOUT"


class UpstreamUnavailable(UpstreamError):
    """Connection failures and 5xx answers."""

    code = "UPSTREAM_UNAVAILABLE"


class UpstreamRateLimited(UpstreamError):
    code = "UPSTREAM_RATE_LIMITED"


class UpstreamUnauthorized(UpstreamError):
    """The upstream rejected the tenant's credentials (or the token exchange failed)."""

    code = "UPSTREAM_UNAUTHORIZED"


class UpstreamForbidden(UpstreamError):
    """The credentials are valid but may not see or change this object."""

    code = "FORBIDDEN"


class UpstreamNotFound(UpstreamError):
    code = "NOT_FOUND"


class UpstreamRejected(UpstreamError):
    """The upstream refused the input (400/409/422): the caller's input was wrong."""

    code = "BAD_USER_INPUT"


class BadUpstreamResponse(UpstreamError):
    """Unparsable or wrongly-shaped body, or a status the API does not document."""

    code = "BAD_UPSTREAM_RESPONSE"


class OperationUnsupported(UpstreamError):
    """The provider's API has no way to do what was asked."""

    code = "UNSUPPORTED"


class InvalidCursor(UpstreamError):
    """A pagination cursor that this adapter did not produce: for link-paginated APIs, one that
    is not a page of the list it claims to continue (see ``page_link``)."""

    code = "BAD_USER_INPUT"
