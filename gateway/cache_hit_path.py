"""The way a whole-response cache hit is answered: ``POST /graphql`` served from the response
cache in front of Starlette, as raw ASGI messages, with nothing the answer does not need.

Why: on the bench's cached single-organization scenario (2 cores, wrk with 32 connections),
uvicorn alone answers a fixed JSON body at about 43k requests/s (23 µs a request) and bare
Starlette at about 22k (44 µs); the gateway answered its cache hits at 9.2k (108 µs) through
Starlette's middleware, router, ``Request`` and ``Response``, the request-id and error
middleware's send wrappers, and the general ``/graphql`` handler. A hit needs none of that: the
caller's key, the body, one lookup, and the answer. Through this path, measured in the same
minutes as bare Starlette (five alternating 10 s runs): 17.7k requests/s (56 µs) against 21.6k,
82% of bare (per run 79-89%), from 43% before; access line, metrics and limits all on.

What a hit does here is what the full path does for it (``gateway.app._serve_graphql``), in the
same order and through the same functions: the request id (``gateway.logs.pick_request_id``,
echoed as ``X-Request-Id``), ``Accept`` negotiation, the demo-mode loopback guard, the key's
tenant, the tenant's rate limit, the body (JSON, ``max_body_bytes``), the cache key
(``gateway.cache.request_digest``), the lookup, the metrics (``response`` hit, the request's
count and duration), the access line (``gateway.access.log_access``) and the same headers in
the same order, passed through the app's ``CORSMiddleware`` when CORS is configured.

Anything else falls through to the full path, which then serves the request exactly as if this
path did not exist: a method other than POST, GraphiQL, tracing on, a key that does not
authenticate, ``Accept`` it cannot satisfy, a body that is not a plain query (APQ, extensions,
a batch, invalid JSON, too large), a miss, a host the demo guard refuses, or a rate limit the
tenant is over. What this path has already done goes along in the ASGI scope or the receive
channel, never twice: the body it read is replayed, the request id is kept
(``REQUEST_ID_SCOPE_KEY``), the rate-limit decision it counted is reused
(``RATE_DECISION_SCOPE_KEY``) and a miss is not looked up again (``RESPONSE_MISS_SCOPE_KEY``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from gateway.access import Observed, access_log, log_access
from gateway.cache import request_digest, response_key
from gateway.errors import GatewayError
from gateway.logs import REQUEST_ID_SCOPE_KEY, pick_request_id, request_id
from gateway.transport import (
    JSON,
    MAX_VARIABLES_DEPTH,
    NOT_ACCEPTABLE,
    cache_headers,
    json_depth_exceeds,
    negotiate,
)

if TYPE_CHECKING:
    from gateway.app import Runtime

__all__ = [
    "MEMO_BYTES",
    "MEMO_MAX_BODY_BYTES",
    "RATE_DECISION_SCOPE_KEY",
    "RESPONSE_MISS_SCOPE_KEY",
    "CacheHitPath",
]

logger = logging.getLogger("orggraph.app")

RATE_DECISION_SCOPE_KEY = "orggraph.rate_decision"
"""The tenant's ``RateLimitDecision`` for this request, when this path counted it already."""
RESPONSE_MISS_SCOPE_KEY = "orggraph.response_miss"
"""The whole-response cache key this path found nothing under (the full path counts the miss)."""

MEMO_MAX_BODY_BYTES = 4096
"""Bodies up to this size have what this path reads from them remembered (``_bodies``): a
dashboard repeats the same few bodies, so parsing the JSON and hashing the document once per
body, not once per request, saves about 2 µs a hit (orjson and SHA-256 of a 150-byte body)."""
MEMO_BYTES = 4 * 1024 * 1024
"""Bound on the remembered bodies' bytes; past it the memo starts again."""

_UNSEEN = object()


def _plain_query(body: bytes) -> tuple[str, str | None] | None:
    """(request digest, operation name) of a body the full path would take as a plain query
    with no extensions, whose answer the response cache could hold; else None. The checks are
    ``gateway.transport.read_params``' and the full path's before its lookup: anything they
    would refuse or treat otherwise is None here, and the full path answers it."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    query = parsed.get("query")
    operation_name = parsed.get("operationName")
    variables = parsed.get("variables")
    extensions = parsed.get("extensions")
    if not isinstance(query, str) or not query.strip():
        return None
    if operation_name is not None and not isinstance(operation_name, str):
        return None
    if variables is not None and not isinstance(variables, dict):
        return None
    # APQ, ``cost`` and anything else in extensions: the full path's business.
    if extensions is not None and extensions != {}:
        return None
    if json_depth_exceeds(variables, MAX_VARIABLES_DEPTH):
        return None
    return request_digest(query, operation_name, variables), operation_name


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` with ``messages`` (already taken from it) handed out again first."""
    if not messages:
        return receive
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class CacheHitPath:
    """The app's cache-hit path (module docstring). ``bind`` hands it the runtime once the
    app has started; until then, and whenever ``enabled`` is false, every request goes the
    full way. ``served`` counts the hits it answered (for tests and operators)."""

    def __init__(self) -> None:
        self.enabled = True
        """False sends every request the full way (tests compare the two answers)."""
        self.served = 0
        self._runtime: Runtime | None = None
        self._host_allowed: Callable[[str], bool] | None = None
        self._cors: CORSMiddleware | None = None
        self._max_body = 0
        self._allowed_hosts: set[bytes] = set()
        self._media_types: dict[bytes | None, str] = {}
        self._envelopes: dict[int, list[tuple[bytes, bytes]]] = {}
        self._bodies: dict[bytes, tuple[str, str | None] | None] = {}
        self._memo_bytes = 0
        self._failure_logged = False

    def bind(
        self,
        runtime: Runtime | None,
        *,
        host_allowed: Callable[[str], bool] | None = None,
        cors: CORSMiddleware | None = None,
    ) -> None:
        """Serve with ``runtime`` (None: stop). ``host_allowed`` is demo mode's guard on the
        ``Host`` header; ``cors`` the app's CORS middleware, whose ``send`` adds its headers."""
        self._runtime = runtime
        self._host_allowed = host_allowed
        self._cors = cors
        self._allowed_hosts.clear()
        if runtime is not None:
            self._max_body = runtime.settings.server.max_body_bytes

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Answer an ``http`` ``POST`` to ``/graphql`` from the response cache and return None,
        or return the ``receive`` the full path must read the request with."""
        started = time.perf_counter()
        runtime = self._runtime
        if (
            runtime is None
            or runtime.telemetry is not None  # the span and its trace id: the full path's
            or not runtime.cache.response_cache_enabled
            or scope.get("root_path")
        ):
            return receive
        # The first of each header wins, as with Starlette's ``Headers.get``.
        headers: dict[bytes, bytes] = dict(reversed(scope["headers"]))
        text, raw_id = pick_request_id(headers.get(b"x-request-id"))
        scope[REQUEST_ID_SCOPE_KEY] = (text, raw_id)
        token = request_id.set(text)
        messages: list[Message] = []
        observed = Observed()
        try:
            hit = await self._look_up(runtime, scope, headers, receive, messages, observed)
        except Exception:
            # A bug of this path must not become the request's failure: the full path serves
            # it. Logged once per app, with its traceback.
            if not self._failure_logged:
                self._failure_logged = True
                logger.exception("the cache-hit path failed; serving through the full path")
            request_id.reset(token)
            return _replay(messages, receive)
        except BaseException:
            # Cancelled (the server stopping) while waiting: recorded as the full path would
            # have recorded it at the same point.
            seconds = time.perf_counter() - started
            runtime.metrics.request(observed.operation_type, observed.outcome, seconds)
            if access_log.isEnabledFor(logging.INFO):
                log_access("POST", scope["path"], observed, 499, seconds)
            request_id.reset(token)
            raise
        if hit is None:
            request_id.reset(token)
            return _replay(messages, receive)
        try:
            body, fresh_for, media_type = hit
            metrics = runtime.metrics
            metrics.cache("response", "hit")
            # One clock read for the metric and the line: the full path's two are microseconds
            # apart, here they would be nanoseconds.
            seconds = time.perf_counter() - started
            metrics.request("query", "ok", seconds)
            if access_log.isEnabledFor(logging.INFO):
                log_access("POST", scope["path"], observed, 200, seconds)
            # Starlette's Response with the full path's headers, then RequestIdMiddleware's.
            raw_headers = [
                *self._envelope(fresh_for),
                (b"content-length", b"%d" % len(body)),
                (b"content-type", media_type.encode("latin-1")),
            ]
            start: Message = {"type": "http.response.start", "status": 200, "headers": raw_headers}
            self.served += 1
            if self._cors is None:
                raw_headers.append((b"x-request-id", raw_id))
                await send(start)
            else:
                await self._cors.send(
                    start, send=_with_request_id(send, raw_id), request_headers=Headers(scope=scope)
                )
            await send({"type": "http.response.body", "body": body})
        finally:
            request_id.reset(token)
        return None

    def _envelope(self, fresh_for: float) -> list[tuple[bytes, bytes]]:
        """The headers before the length and type, as Starlette's ``Response`` encodes the full
        path's: they depend only on the whole seconds the answer stays fresh, so each is
        encoded once (bounded by the longest TTL, in seconds)."""
        seconds = int(fresh_for)
        found = self._envelopes.get(seconds)
        if found is None:
            found = [
                (b"x-orggraph-cache", b"hit"),
                *[
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in cache_headers(fresh_for).items()
                ],
            ]
            if len(self._envelopes) >= 4096:
                self._envelopes.clear()
            self._envelopes[seconds] = found
        return found

    async def _look_up(
        self,
        runtime: Runtime,
        scope: Scope,
        headers: dict[bytes, bytes],
        receive: Receive,
        messages: list[Message],
        observed: Observed,
    ) -> tuple[bytes, float, str] | None:
        """The cached answer (body, seconds fresh, media type), or None when the full path must
        answer; what it reads of the body goes into ``messages``."""
        if self._host_allowed is not None:
            host = headers.get(b"host", b"")
            if host not in self._allowed_hosts:
                if not self._host_allowed(host.decode("latin-1")):
                    return None
                if len(self._allowed_hosts) < 64:  # the loopback names a browser sends
                    self._allowed_hosts.add(host)
        accept = headers.get(b"accept")
        media_type = self._media_types.get(accept)
        if media_type is None:
            media_type = negotiate(None if accept is None else accept.decode("latin-1"))
            if len(self._media_types) >= 256:  # clients send few distinct Accept values
                self._media_types.clear()
            self._media_types[accept] = media_type
        if media_type == NOT_ACCEPTABLE:
            return None
        content_type = headers.get(b"content-type")
        if content_type != b"application/json" and (
            content_type is None
            or content_type.decode("latin-1").split(";")[0].strip().lower() != JSON
        ):
            return None
        authorization = headers.get(b"authorization")
        try:
            tenant = runtime.tenants.authenticate(
                None if authorization is None else authorization.decode("latin-1")
            )
        except GatewayError:
            return None
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            return None
        observed.tenant = tenant.name
        limiter = runtime.rate_limiter
        if limiter.limits(tenant.name):
            decision = await limiter.hit(tenant.name)
            scope[RATE_DECISION_SCOPE_KEY] = decision
            if not decision.allowed:
                return None

        limit = self._max_body
        size = 0
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return None  # the client went away: the full path says so
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)

        request = self._bodies.get(body, _UNSEEN)
        if request is _UNSEEN:
            request = _plain_query(body)
            if len(body) <= MEMO_MAX_BODY_BYTES:
                if self._memo_bytes + len(body) > MEMO_BYTES:
                    self._bodies.clear()
                    self._memo_bytes = 0
                self._bodies[body] = request
                self._memo_bytes += len(body)
        if request is None:
            return None
        assert isinstance(request, tuple)
        digest, operation_name = request
        observed.operation_name = operation_name
        key = response_key(tenant.name, digest)
        cache = runtime.cache
        found = cache.peek_response(key) if cache.local_responses else None
        if found is None and not cache.local_responses:
            found = await cache.get_response(key)
        if found is None:
            scope[RESPONSE_MISS_SCOPE_KEY] = key
            return None
        observed.operation_type = "query"
        observed.response_cache = "hit"
        return found[0], found[1], media_type


def _with_request_id(send: Send, raw_id: bytes) -> Send:
    """``send`` adding ``X-Request-Id`` to the response's headers (``RequestIdMiddleware``'s)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw_id)]
        await send(message)

    return sending
