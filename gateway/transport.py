"""GraphQL over HTTP: reading a request's parameters and shaping the answer's HTTP envelope.

Follows the GraphQL-over-HTTP specification: ``application/graphql-response+json`` is negotiated
through ``Accept`` (then request errors, those that stop execution before it starts, answer 4xx),
``application/json`` stays the default for older clients (request errors in a well-formed request
answer 200 there, as the spec asks). POST bodies must be ``application/json``: any of the "simple"
content types a browser may send cross-origin without a preflight (``text/plain``, forms) is
refused with 415, so no other site can make a user's browser run an operation. GET (and HEAD, a
GET without a body) carries the parameters in the query string and only ever runs queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.errors import ErrorCode

__all__ = [
    "GRAPHQL_RESPONSE_JSON",
    "JSON",
    "NOT_ACCEPTABLE",
    "NO_STORE",
    "VARY",
    "GraphQLParams",
    "RequestRejected",
    "cache_headers",
    "error_body",
    "json_depth_exceeds",
    "negotiate",
    "read_params",
]

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
NOT_ACCEPTABLE = ""
MAX_VARIABLES_DEPTH = 32
"""Our input types nest two levels; 32 leaves room for any client while keeping far from the
recursion limits of the JSON encoders that variables go through."""
VARY = "Authorization, Accept"
"""Answers depend on the caller's key, and on Accept for their media type."""
NO_STORE = {"Cache-Control": "private, no-store", "Vary": VARY}


@dataclass(frozen=True, slots=True)
class GraphQLParams:
    query: str | None
    operation_name: str | None
    variables: dict[str, Any] | None
    extensions: dict[str, Any] | None


class RequestRejected(Exception):
    """The request cannot run: answered with ``status`` and one error, never executed."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        status: int,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers or {}


def error_body(code: ErrorCode | str, message: str, **extensions: Any) -> bytes:
    value = code.value if isinstance(code, ErrorCode) else code
    return orjson.dumps(
        {"errors": [{"message": message, "extensions": {"code": value, **extensions}}]}
    )


def cache_headers(max_age: float) -> dict[str, str]:
    """A response the response cache may reuse may also be reused by the caller's own cache,
    for as long; it is one tenant's, so never by a shared cache."""
    seconds = int(max_age)
    if seconds < 1:
        return NO_STORE
    return {"Cache-Control": f"private, max-age={seconds}", "Vary": VARY}


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media:
            ranges.append((media.lower(), quality))
    return ranges


def negotiate(accept: str | None) -> str:
    """The response media type for an ``Accept`` header, or ``NOT_ACCEPTABLE``.

    No header (or ``*/*``) means ``application/json``, which every client understands; an
    explicit ``application/graphql-response+json`` wins over ``application/json`` at equal
    quality, as the spec recommends."""
    if not accept:
        return JSON
    best, best_quality = NOT_ACCEPTABLE, 0.0
    for media, quality in _media_ranges(accept):
        if quality <= 0:
            continue
        if media == GRAPHQL_RESPONSE_JSON:
            candidate = GRAPHQL_RESPONSE_JSON
        elif media in (JSON, "application/*", "*/*"):
            candidate = JSON
        else:
            continue
        if quality > best_quality or (
            quality == best_quality and candidate == GRAPHQL_RESPONSE_JSON
        ):
            best, best_quality = candidate, quality
    return best


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _bad(message: str, status: int = 400) -> RequestRejected:
    return RequestRejected(ErrorCode.BAD_USER_INPUT, message, status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit`` bytes: from
    ``Content-Length`` when sent, else while it streams in (chunked bodies have no length)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _bad("Request body too large", 413)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _bad("Request body too large", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise _bad("The request body was not received whole") from None
    return b"".join(chunks)


def _json_param(raw: str | None, key: str) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad(f"'{key}' is not valid JSON") from None


async def read_params(request: Request, *, max_body_bytes: int) -> GraphQLParams:
    """The GraphQL parameters of a GET/HEAD (query string) or POST (JSON body) request."""
    if request.method in ("GET", "HEAD"):
        query_params = request.query_params
        raw: dict[str, Any] = {
            "query": query_params.get("query"),
            "operationName": query_params.get("operationName"),
            "variables": _json_param(query_params.get("variables"), "variables"),
            "extensions": _json_param(query_params.get("extensions"), "extensions"),
        }
    else:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != JSON:
            raise _bad("POST bodies must be application/json", 415)
        body = await _read_body(request, max_body_bytes)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _bad("Request body is not valid JSON") from None
        if isinstance(parsed, list):
            raise _bad("Batched requests are not supported")
        if not isinstance(parsed, dict):
            raise _bad("Request body must be a JSON object")
        raw = parsed

    query, operation_name = raw.get("query"), raw.get("operationName")
    variables, extensions = raw.get("variables"), raw.get("extensions")
    if query is not None and not isinstance(query, str):
        raise _bad("'query' must be a string")
    if operation_name is not None and not isinstance(operation_name, str):
        raise _bad("'operationName' must be a string")
    if variables is not None and not isinstance(variables, dict):
        raise _bad("'variables' must be an object")
    if extensions is not None and not isinstance(extensions, dict):
        raise _bad("'extensions' must be an object")
    if json_depth_exceeds(variables, MAX_VARIABLES_DEPTH) or json_depth_exceeds(
        extensions, MAX_VARIABLES_DEPTH
    ):
        raise _bad(f"'variables' and 'extensions' may nest at most {MAX_VARIABLES_DEPTH} deep")
    return GraphQLParams(query, operation_name, variables, extensions)


def graphql_response(
    body: bytes, *, media_type: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status_code=status, media_type=media_type, headers=headers)
