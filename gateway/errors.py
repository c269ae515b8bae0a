"""The gateway's error codes and the one place exceptions become GraphQL errors.

Every error in a response carries ``extensions.code`` from DESIGN.md. Upstream failures
(``providers.base.UpstreamError``) keep their code and add ``provider`` and, where known,
``status`` and ``retryAfter``. Anything unexpected becomes ``INTERNAL`` with a fixed message:
the stack trace goes to the log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import Enum
from typing import Any

from graphql import GraphQLError

from providers.base import UpstreamError

__all__ = [
    "ErrorCode",
    "GatewayError",
    "format_error",
    "upstream_graphql_error",
]

logger = logging.getLogger("orggraph.errors")


class ErrorCode(str, Enum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    NOT_FOUND = "NOT_FOUND"
    UNSUPPORTED = "UNSUPPORTED"
    QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
    RATE_LIMITED = "RATE_LIMITED"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED"
    UPSTREAM_UNAUTHORIZED = "UPSTREAM_UNAUTHORIZED"
    BAD_UPSTREAM_RESPONSE = "BAD_UPSTREAM_RESPONSE"
    PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
    INTERNAL = "INTERNAL"


class GatewayError(Exception):
    """An error the gateway itself raises on purpose (bad input, missing credentials ...)."""

    def __init__(
        self, code: ErrorCode, message: str, *, provider: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.provider = provider
        self.extra = extra

    def extensions(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code.value}
        if self.provider:
            out["provider"] = self.provider
        out.update(self.extra)
        return out


def _upstream_extensions(error: UpstreamError) -> dict[str, Any]:
    out: dict[str, Any] = {"code": error.code, "provider": error.provider.value}
    if error.status is not None:
        out["status"] = error.status
    if error.retry_after is not None:
        out["retryAfter"] = error.retry_after
    return out


def upstream_graphql_error(
    error: UpstreamError, path: Iterable[str | int] | None = None
) -> GraphQLError:
    """A provider's failure as a response error, for resolvers that keep going without it."""
    return GraphQLError(
        error.message,
        path=list(path) if path is not None else None,
        extensions=_upstream_extensions(error),
    )


def format_error(error: GraphQLError) -> dict[str, Any]:
    """The JSON form of one error, with a DESIGN.md code, and nothing we did not mean to say."""
    original = error.original_error
    # graphql-core wraps resolver exceptions once; unwrap nested GraphQLErrors.
    while isinstance(original, GraphQLError) and original.original_error is not None:
        original = original.original_error

    message = error.message
    extensions: dict[str, Any]
    if isinstance(original, UpstreamError):
        message = original.message
        extensions = _upstream_extensions(original)
    elif isinstance(original, GatewayError):
        message = original.message
        extensions = original.extensions()
    elif original is None or isinstance(original, GraphQLError):
        # Parse/validation errors and errors we built ourselves.
        extensions = dict(error.extensions or {})
        extensions.setdefault("code", ErrorCode.BAD_USER_INPUT.value)
    else:
        logger.error(
            "unexpected error at %s: %s",
            ".".join(str(p) for p in (error.path or [])) or "<operation>",
            type(original).__name__,
            exc_info=original,
        )
        message = "Internal error"
        extensions = {"code": ErrorCode.INTERNAL.value}

    out: dict[str, Any] = {"message": message}
    if error.locations:
        out["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        out["path"] = list(error.path)
    out["extensions"] = extensions
    return out
