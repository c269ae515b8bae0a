"""The HTTP service: a Starlette app serving GraphQL (POST and GET), GraphiQL, the dashboard
and /healthz.

``create_app(settings)`` serves a configured deployment; ``create_app(None)`` is demo mode, which
starts the five provider sandboxes in-process on loopback ports and serves an open demo tenant over
them (and, since that tenant needs no key, answers only requests whose ``Host`` names loopback, so
a web page cannot reach it through DNS rebinding). The transport rules (``gateway.transport``)
follow GraphQL-over-HTTP; ``Authorization: Bearer <gateway key>`` picks the tenant, whose rate
limit is checked before anything else is done for it. A ``POST /graphql`` whose answer is in the
whole-response cache is answered in front of Starlette by ``gateway.cache_hit_path``, with the
same bytes, metrics and access line; every other request takes the full path below.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gc
import hashlib
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from graphql import ExecutionResult, GraphQLError, OperationType
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.access import Observed, access_log, log_access
from gateway.cache import CacheLayer, build_cache, request_key
from gateway.cache_hit_path import RATE_DECISION_SCOPE_KEY, RESPONSE_MISS_SCOPE_KEY, CacheHitPath
from gateway.errors import ErrorCode, GatewayError, format_error
from gateway.execution import Executor
from gateway.ids import CursorSigner
from gateway.logs import RequestIdMiddleware, register_secrets, secret_forms
from gateway.metrics import CONTENT_TYPE, GatewayMetrics, request_outcome
from gateway.ratelimit import RateLimitDecision, TenantRateLimiter, build_rate_limiter
from gateway.schema import RequestContext, build_schema
from gateway.settings import Settings
from gateway.telemetry import Telemetry, build_telemetry
from gateway.tenancy import TenantDirectory
from gateway.transport import (
    GRAPHQL_RESPONSE_JSON,
    NO_STORE,
    NOT_ACCEPTABLE,
    RequestRejected,
    cache_headers,
    error_body,
    negotiate,
    read_params,
)
from gateway.upstreams import Upstreams
from providers.base import call_memo, request_deadline, set_request_deadline

if TYPE_CHECKING:
    from gateway.demo import DemoOptions

__all__ = ["Runtime", "create_app", "create_metrics_app", "settings_secrets"]

logger = logging.getLogger("orggraph.app")

STATIC_DIR = Path(__file__).parent / "static"
DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# Whether a cacheable query was answered from the whole-response cache (for operators).
_CACHE_HIT = {"X-OrgGraph-Cache": "hit"}
_CACHE_MISS = {"X-OrgGraph-Cache": "miss"}
_DEADLINE_MARGIN_SECONDS = 0.5


@dataclass(slots=True)
class Runtime:
    settings: Settings
    executor: Executor
    upstreams: Upstreams
    tenants: TenantDirectory
    cache: CacheLayer
    cursors: CursorSigner
    rate_limiter: TenantRateLimiter
    metrics: GatewayMetrics
    telemetry: Telemetry | None = None
    """Tracing (``[telemetry]``); None when off, and then nothing of it runs."""


def _cache_key_secret(settings: Settings) -> bytes:
    """The key of the keyed credential ids in shared cache keys: the cursor secret when set,
    else one derived from every credential the config holds. Replicas with one config agree
    on it; whoever reads the shared Redis has none of those secrets."""
    if settings.server.cursor_secret:
        return settings.server.cursor_secret.encode()
    digest = hashlib.sha256(b"orggraph cache key")
    for tenant in settings.tenants:
        for provider in sorted(tenant.credentials, key=lambda p: p.value):
            for value in tenant.credentials[provider].secrets():
                digest.update(value.encode())
                digest.update(b"\0")
    return digest.digest()


def build_runtime(settings: Settings, *, telemetry: Telemetry | None = None) -> Runtime:
    """Everything the app serves with; ``telemetry`` replaces the one ``[telemetry]`` builds
    (the tests' in-memory exporter)."""
    server = settings.server
    upstreams = Upstreams(settings.providers)
    metrics = GatewayMetrics()
    metrics.watch_circuits(upstreams.circuit_state, settings.providers)
    runtime = Runtime(
        settings=settings,
        executor=Executor(
            build_schema()._schema,
            max_depth=server.max_depth,
            max_tokens=server.max_tokens,
            max_aliases=server.max_aliases,
            max_selections=server.max_selections,
            max_query_bytes=server.max_query_bytes,
            max_upstream_calls=server.max_upstream_calls,
            introspection=server.introspection,
            call_costs=upstreams.call_costs(),
        ),
        upstreams=upstreams,
        tenants=TenantDirectory(settings.tenants),
        cache=build_cache(
            settings.cache,
            settings.provider_ttls,
            key_secret=_cache_key_secret(settings),
            observer=upstreams.record_call,
        ),
        cursors=CursorSigner(server.cursor_secret),
        rate_limiter=build_rate_limiter(settings.tenants, settings.cache),
        metrics=metrics,
        telemetry=telemetry if telemetry is not None else build_telemetry(settings.telemetry),
    )
    runtime.cache.metrics = metrics
    return runtime


def _tune_garbage_collector() -> None:
    """Fewer, cheaper collections: every request allocates thousands of short-lived objects,
    and CPython's default gen-0 threshold (700) makes it walk them dozens of times per request,
    which shows up as tail latency. Freezing moves the start-up heap (schema, adapters) out of
    every future collection; nearly all request garbage is freed by reference counting anyway."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


FULL_COLLECTION_SECONDS = 10.0
"""With the thresholds above, CPython's full collections wait for long-lived garbage to reach a
quarter of the long-lived heap, and failing upstreams make plenty of it (exceptions, their
tracebacks and the frames they hold are reference cycles). Measured with `make chaos`: resident
memory rose 107 -> 127 MiB over two minutes of faults without this, and stayed flat with it."""


async def _collect_periodically() -> None:
    while True:
        await asyncio.sleep(FULL_COLLECTION_SECONDS)
        gc.collect()


CIRCUIT_REFRESH_SECONDS = 1.0
"""With several workers, how often each writes its breaker states to the shared metrics."""


async def _refresh_circuits_periodically(metrics: GatewayMetrics) -> None:
    while True:
        await asyncio.sleep(CIRCUIT_REFRESH_SECONDS)
        metrics.refresh_circuits()


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _reject(exc: RequestRejected, media_type: str = "application/json") -> Response:
    headers = {**NO_STORE, **exc.headers}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="orggraph"'
    extensions: dict[str, Any] = {}
    if exc.code is ErrorCode.RATE_LIMITED and "Retry-After" in exc.headers:
        extensions["retryAfter"] = int(exc.headers["Retry-After"])
    return Response(
        error_body(exc.code, exc.message, **extensions),
        status_code=exc.status,
        media_type=media_type,
        headers=headers,
    )


@functools.cache
def _graphiql_template() -> str:
    return (STATIC_DIR / "graphiql.html").read_text(encoding="utf-8")


def _graphiql_page(path: str) -> HTMLResponse:
    html = _graphiql_template().replace("{{STATIC}}", "/static")
    return HTMLResponse(html.replace("{{ENDPOINT}}", path))


# Inline scripts of the dashboard page (its import map): the CSP allows exactly these, by hash.
_INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
# The only files served below /dashboard/, with their types (never a guess from the host's
# mime.types: a module script needs a JavaScript type to run at all).
_DASHBOARD_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class _DashboardPage:
    body: bytes
    etag: str
    headers: dict[str, str]
    """For the page and every asset: the CSP, and revalidation on every load (no build step
    fingerprints the file names, so an upgraded gateway must never mix old and new modules)."""


@functools.cache
def _dashboard_page() -> _DashboardPage:
    html = (DASHBOARD_DIR / "index.html").read_bytes()
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html.decode("utf-8"))
    )
    policy = "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self'{hashes}",
            "style-src 'self'",
            "img-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",  # the key form is read by the script, never submitted
            "frame-ancestors 'none'",
        ]
    )
    return _DashboardPage(
        body=html,
        etag='"' + hashlib.sha256(html).hexdigest()[:32] + '"',
        headers={
            "Content-Security-Policy": policy,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin",
        },
    )


def _dashboard_enabled(app: Any) -> bool:
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    return runtime is not None and runtime.settings.server.dashboard


async def dashboard(request: Request) -> Response:
    """``GET /dashboard``: the page (an app shell; its data comes from /graphql)."""
    if not _dashboard_enabled(request.app):
        return _reject(RequestRejected(ErrorCode.NOT_FOUND, "The dashboard is disabled", 404))
    page = _dashboard_page()
    headers = {**page.headers, "ETag": page.etag}
    if page.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(page.body, media_type="text/html", headers=headers)


class DashboardAssets(StaticFiles):
    """The dashboard's scripts, styles and vendored libraries, below ``/dashboard/``, with the
    page's headers and explicit types; nothing else of the directory, and nothing at all when
    the dashboard is off."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not _dashboard_enabled(scope["app"]):
            raise HTTPException(404, "The dashboard is disabled")
        if path == ".":
            # /dashboard/ would resolve the page's relative asset URLs one level too deep.
            return RedirectResponse("../dashboard", status_code=308)
        if Path(path).suffix not in _DASHBOARD_TYPES:
            raise HTTPException(404)
        return await super().get_response(path, scope)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_dashboard_page().headers)
        if response.status_code != 304:
            response.headers["Content-Type"] = _DASHBOARD_TYPES[Path(full_path).suffix]
        return response


def _persisted_query_hash(extensions: Any) -> str | None:
    """The APQ hash from ``extensions.persistedQuery`` (Apollo's protocol, version 1)."""
    if not isinstance(extensions, dict) or "persistedQuery" not in extensions:
        return None
    persisted = extensions["persistedQuery"]
    if (
        not isinstance(persisted, dict)
        or persisted.get("version") != 1
        or not isinstance(persisted.get("sha256Hash"), str)
        or not _SHA256.match(persisted["sha256Hash"])
    ):
        raise RequestRejected(
            ErrorCode.BAD_USER_INPUT,
            "extensions.persistedQuery needs version 1 and a sha256Hash of 64 hex digits",
            400,
        )
    return str(persisted["sha256Hash"]).lower()


async def graphql_endpoint(request: Request) -> Response:
    started = time.perf_counter()
    observed = Observed()
    status = 500
    try:
        response = await _graphql(request, observed, started)
        status = response.status_code
        return response
    except Exception:
        observed.outcome = ErrorCode.INTERNAL.value  # internal_error answers it
        raise
    except BaseException:
        status = 499  # cancelled: the client went away before its answer
        raise
    finally:
        # One line per request, whatever became of it; no record is built when it is off.
        if access_log.isEnabledFor(logging.INFO):
            log_access(
                request.method,
                request.scope["path"],
                observed,
                status,
                time.perf_counter() - started,
            )


async def _graphql(request: Request, observed: Observed, started: float) -> Response:
    runtime: Runtime = request.app.state.runtime
    if (
        request.method == "GET"
        and "query" not in request.query_params
        and "extensions" not in request.query_params
        and "text/html" in request.headers.get("accept", "")
    ):
        if runtime.settings.server.graphiql:
            return _graphiql_page(request.url.path)
        observed.outcome = ErrorCode.NOT_FOUND.value
        return _reject(RequestRejected(ErrorCode.NOT_FOUND, "GraphiQL is disabled", 404))

    media_type = negotiate(request.headers.get("accept"))
    if media_type == NOT_ACCEPTABLE:
        observed.outcome = ErrorCode.BAD_USER_INPUT.value
        return _reject(
            RequestRejected(
                ErrorCode.BAD_USER_INPUT,
                f"Accept must allow {GRAPHQL_RESPONSE_JSON} or application/json",
                406,
            )
        )
    telemetry = runtime.telemetry
    if telemetry is None:
        return await _answer_graphql(request, runtime, media_type, observed, started)
    with telemetry.operation(request.headers) as span:
        observed.trace_id = span.trace_id
        response = await _answer_graphql(request, runtime, media_type, observed, started)
        span.finish(
            operation_type=observed.operation_type,
            operation_name=observed.operation_name,
            tenant=observed.tenant,
            outcome=observed.outcome,
            status=response.status_code,
            cache=response.headers.get("x-orggraph-cache"),
        )
        return response


async def _answer_graphql(
    request: Request, runtime: Runtime, media_type: str, observed: Observed, started: float
) -> Response:
    try:
        return await _serve_graphql(request, runtime, media_type, observed)
    except RequestRejected as exc:
        observed.outcome = exc.code.value
        if exc.code is ErrorCode.RATE_LIMITED:
            runtime.metrics.rate_limit(observed.tenant)
        return _reject(exc, media_type)
    except Exception:
        observed.outcome = ErrorCode.INTERNAL.value  # a bug: internal_error answers it
        raise
    finally:
        runtime.metrics.request(
            observed.operation_type, observed.outcome, time.perf_counter() - started
        )


async def _serve_graphql(
    request: Request, runtime: Runtime, media_type: str, observed: Observed
) -> Response:
    server = runtime.settings.server
    # Under graphql-response+json, a request that never reaches execution answers 4xx; under
    # application/json such answers stay 200 for the clients written before the spec.
    request_error_status = 400 if media_type == GRAPHQL_RESPONSE_JSON else 200
    try:
        tenant = runtime.tenants.authenticate(request.headers.get("authorization"))
    except GatewayError as exc:
        raise RequestRejected(exc.code, exc.message, 401) from None

    observed.tenant = tenant.name
    metrics = runtime.metrics
    # Counted already when the cache-hit path looked at this request first.
    decision: RateLimitDecision | None = request.scope.get(RATE_DECISION_SCOPE_KEY)
    if decision is None:
        decision = await runtime.rate_limiter.hit(tenant.name)
    if not decision.allowed:
        raise RequestRejected(
            ErrorCode.RATE_LIMITED,
            f"Rate limit exceeded for this API key; retry in {decision.retry_after} s",
            429,
            headers={"Retry-After": str(decision.retry_after)},
        )

    params = await read_params(request, max_body_bytes=server.max_body_bytes)
    query, variables, operation_name = params.query, params.variables, params.operation_name
    observed.operation_name = operation_name
    cache = runtime.cache
    executor = runtime.executor
    persisted = _persisted_query_hash(params.extensions)
    register = False
    if persisted is not None:
        if query:
            if hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest() != persisted:
                raise RequestRejected(
                    ErrorCode.BAD_USER_INPUT, "provided sha does not match query", 400
                )
            register = True  # once the document has parsed and validated
        else:
            query = await cache.persisted_query(persisted)
            metrics.cache("apq", "miss" if query is None else "hit")
            if query is None:
                observed.outcome = ErrorCode.PERSISTED_QUERY_NOT_FOUND.value
                # Apollo clients look for this message and code, then resend with the query.
                return Response(
                    error_body(ErrorCode.PERSISTED_QUERY_NOT_FOUND, "PersistedQueryNotFound"),
                    media_type=media_type,
                    headers=NO_STORE,
                )
    if not query or not query.strip():
        raise RequestRejected(ErrorCode.BAD_USER_INPUT, "No GraphQL query was sent", 400)

    want_cost = bool(params.extensions and params.extensions.get("cost") is True)
    # Only query results are ever stored, so a stored answer for this key needs no parsing,
    # validation or operation check to be served again.
    cache_key: str | None = None
    if cache.response_cache_enabled and not want_cost and not register:
        cache_key = request_key(tenant.name, query, operation_name, variables)
        if request.scope.get(RESPONSE_MISS_SCOPE_KEY) == cache_key:
            hit = None  # the cache-hit path has just looked it up
        else:
            hit = await cache.get_response(cache_key)
        observed.response_cache = "miss" if hit is None else "hit"
        metrics.cache("response", observed.response_cache)
        if hit is not None:
            observed.operation_type = "query"
            body, fresh_for = hit
            return Response(
                body,
                media_type=media_type,
                headers={**_CACHE_HIT, **cache_headers(fresh_for)},
            )

    prepared = executor.prepare(query)
    if prepared.errors or prepared.document is None:
        rejected = {"errors": [format_error(e) for e in prepared.errors]}
        observed.outcome = request_outcome(False, [_code(e) for e in rejected["errors"]])
        return Response(
            orjson.dumps(rejected),
            status_code=request_error_status,
            media_type=media_type,
            headers=NO_STORE,
        )
    if register:
        await cache.persist_query(persisted or "", query)
    definition = prepared.operation(operation_name)
    operation = definition.operation if definition is not None else None
    if definition is not None:
        observed.operation_type = definition.operation.value
        if definition.name is not None:
            observed.operation_name = definition.name.value
    if operation is None:
        raise RequestRejected(
            ErrorCode.BAD_USER_INPUT,
            "operationName does not name one operation of the document"
            if operation_name
            else "The document has several operations: send operationName",
            400,
        )
    if operation is not OperationType.QUERY and request.method != "POST":
        raise RequestRejected(
            ErrorCode.BAD_USER_INPUT,
            f"{operation.value.capitalize()}s must be sent with POST",
            405,
            headers={"Allow": "POST"},
        )
    if operation is not OperationType.QUERY:
        cache_key = None  # mutations are never stored

    scope = observed.scope = cache.scope(tenant.name)
    if runtime.telemetry is not None:
        scope.tracer = runtime.telemetry.upstream
    context = RequestContext(
        tenant=tenant, upstreams=runtime.upstreams, cursors=runtime.cursors, scope=scope
    )
    deadline = server.deadline_seconds
    token = call_memo.set(scope)
    deadline_token = set_request_deadline(deadline)
    try:
        # Every upstream wait already ends at the deadline (providers.resilience); this bound
        # is the backstop for anything else a resolver might wait on.
        async with asyncio.timeout(deadline + _DEADLINE_MARGIN_SECONDS):
            result = await executor.execute(
                prepared, context=context, variables=variables, operation_name=operation_name
            )
    except TimeoutError:
        result = ExecutionResult(
            data=None,
            errors=[
                GraphQLError(
                    f"The request's deadline of {deadline:g} s passed",
                    extensions={"code": ErrorCode.UPSTREAM_TIMEOUT.value},
                )
            ],
        )
    finally:
        request_deadline.reset(deadline_token)
        call_memo.reset(token)

    errors: list[GraphQLError] = list(result.errors or []) + context.errors
    payload: dict[str, Any] = {}
    if errors:
        payload["errors"] = [format_error(e) for e in errors]
        observed.outcome = request_outcome(
            result.data is not None, [_code(e) for e in payload["errors"]]
        )
    # Spec: "data" is present (maybe null) once execution started, absent when the request
    # failed before it (variables that do not coerce, say); only execution errors have a path.
    started = result.data is not None or not errors or any(e.path for e in errors)
    if started:
        payload["data"] = result.data
    extensions: dict[str, Any] = {}
    if want_cost and result.extensions and "cost" in result.extensions:
        extensions["cost"] = result.extensions["cost"]
    stale = scope.stale_reads()
    if stale:
        extensions["stale"] = [
            {"provider": s.provider.value, "ageSeconds": round(s.age_seconds, 3)} for s in stale
        ]
    if extensions:
        payload["extensions"] = extensions
    encoded = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    status = 200 if started else request_error_status
    if cache_key is None:
        return Response(encoded, status_code=status, media_type=media_type, headers=NO_STORE)
    ttl = scope.response_ttl() if not errors else 0.0
    if ttl > 0:
        await cache.set_response(cache_key, encoded, scope.dependencies(), ttl)
    return Response(
        encoded,
        status_code=status,
        media_type=media_type,
        headers={**_CACHE_MISS, **cache_headers(ttl)},
    )


def _code(formatted: Any) -> str:
    extensions = formatted.get("extensions") if isinstance(formatted, dict) else None
    code = extensions.get("code") if isinstance(extensions, dict) else None
    return code if isinstance(code, str) else ErrorCode.INTERNAL.value


async def internal_error(request: Request, exc: Exception) -> Response:
    """Last resort for a bug outside any resolver: a GraphQL-shaped answer, never a bare 500
    or a stack trace; the details go to the log."""
    logger.error("unhandled error serving %s", request.url.path, exc_info=exc)
    # Logged (with the request id): RequestIdMiddleware keeps the server from logging it again.
    request.scope["orggraph.error_logged"] = True
    return _reject(RequestRejected(ErrorCode.INTERNAL, "Internal error", 500))


async def http_error(request: Request, exc: Exception) -> Response:
    """Routing answers (unknown path, method not allowed) in the same JSON shape, keeping the
    headers Starlette set (``Allow`` on a 405)."""
    assert isinstance(exc, HTTPException)
    code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.BAD_USER_INPUT
    return _reject(
        RequestRejected(code, str(exc.detail), exc.status_code, headers=dict(exc.headers or {}))
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def readyz(request: Request) -> Response:
    """Ready when the config is loaded and, with a Redis cache, Redis answers a PING in time."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return _not_ready("config not loaded")
    cache_settings = runtime.settings.cache
    if cache_settings.backend == "redis":
        client = runtime.cache._redis()
        if client is None:
            return _not_ready("redis client unavailable")
        try:
            await asyncio.wait_for(client.ping(), cache_settings.redis_timeout_seconds)
        except Exception as exc:
            # The exception's type only: its text may name the Redis URL and its password.
            return _not_ready(f"redis unreachable ({type(exc).__name__})")
    return JSONResponse({"status": "ready"}, headers=NO_STORE)


def _not_ready(reason: str) -> Response:
    return JSONResponse({"status": "not ready", "reason": reason}, 503, headers=NO_STORE)


async def metrics_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return Response(
        runtime.metrics.exposition(),
        media_type=CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


def _is_loopback_host(host: str) -> bool:
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """Demo mode's guard against DNS rebinding: a page on any site can make a browser send
    requests to a name that resolves to 127.0.0.1, but its ``Host`` is then that name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not _is_loopback_host(host):
                response = Response(
                    error_body(
                        ErrorCode.FORBIDDEN,
                        "Demo mode answers only requests addressed to a loopback host name",
                    ),
                    status_code=403,
                    media_type="application/json",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the cache-hit path's CORSMiddleware only adds headers")


class _GatewayApp(Starlette):
    """Starlette with ``RequestIdMiddleware`` outside its whole stack (user middleware sits
    inside Starlette's error handling, and a 500 answer needs the request id too), and the
    cache-hit path in front of everything for ``POST /graphql`` (``gateway.cache_hit_path``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache_hits = CacheHitPath()

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/graphql"
            and self.cache_hits.enabled
        ):
            replayed = await self.cache_hits.serve(scope, receive, send)
            if replayed is None:
                return  # answered from the response cache
            receive = replayed
        await super().__call__(scope, receive, send)


def settings_secrets(settings: Settings) -> set[str]:
    """Every secret the config holds, in the forms it could take in a log line: each
    tenant's credentials (and their Basic-auth base64 forms), the cursor secret, the Redis
    password, the telemetry exporter's header values."""
    found: set[str] = set()
    for tenant in settings.tenants:
        for credentials in tenant.credentials.values():
            found |= secret_forms(credentials.secrets())
    if settings.server.cursor_secret:
        found.add(settings.server.cursor_secret)
    if settings.cache.url:
        with contextlib.suppress(ValueError):
            password = urlsplit(settings.cache.url).password
            if password:
                found |= secret_forms([password])
    headers = getattr(getattr(settings, "telemetry", None), "headers", None) or {}
    for value in headers.values():
        found.update([str(value), *str(value).split()])  # "Bearer <token>": the token alone
    return found


def create_metrics_app(api: Starlette) -> Starlette:
    """``GET /metrics`` alone, with the figures of ``api`` (the gateway app, in this process):
    what ``[server] metrics_port`` serves when there is one worker."""

    async def metrics(request: Request) -> Response:
        runtime: Runtime | None = getattr(api.state, "runtime", None)
        if runtime is None:
            return _not_ready("starting")
        return Response(
            runtime.metrics.exposition(),
            media_type=CONTENT_TYPE,
            headers={"Cache-Control": "no-store"},
        )

    return Starlette(
        routes=[Route("/metrics", metrics, methods=["GET", "HEAD"])],
        exception_handlers={HTTPException: http_error},
    )


def create_app(
    settings: Settings | None = None,
    *,
    demo: DemoOptions | None = None,
    telemetry: Telemetry | None = None,
) -> Starlette:
    """The gateway. ``settings=None`` means demo mode (sandboxes started in-process);
    ``telemetry`` traces into a span processor of the caller's instead of ``[telemetry]``'s."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            effective = settings
            if effective is None:
                # Imported here: the sandboxes are demo-mode code, not the serving path's.
                from gateway.demo import DemoOptions, running_demo

                effective = await stack.enter_async_context(running_demo(demo or DemoOptions()))
                register_secrets(settings_secrets(effective))
            runtime = build_runtime(effective, telemetry=telemetry)
            if runtime.telemetry is not None:
                stack.callback(runtime.telemetry.shutdown)  # flushes the spans still batched
            _tune_garbage_collector()
            collector = asyncio.create_task(_collect_periodically())
            stack.callback(collector.cancel)
            if runtime.metrics.shared:
                circuits = asyncio.create_task(_refresh_circuits_periodically(runtime.metrics))
                stack.callback(circuits.cancel)
            stack.push_async_callback(runtime.upstreams.aclose)
            stack.push_async_callback(runtime.cache.close)
            app.state.runtime = runtime
            assert isinstance(app, _GatewayApp)
            app.cache_hits.bind(
                runtime,
                host_allowed=_is_loopback_host if guard_hosts else None,
                cors=cors,
            )
            stack.callback(app.cache_hits.bind, None)
            yield

    if settings is not None:
        register_secrets(settings_secrets(settings))
    middleware: list[Middleware] = []
    guard_hosts = settings is None or settings.demo
    if guard_hosts:
        middleware.append(Middleware(LoopbackHostOnly))
    origins = settings.server.cors_origins if settings is not None else ()
    cors: CORSMiddleware | None = None
    if origins:
        cors_options: dict[str, Any] = {
            "allow_origins": list(origins),
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["Authorization", "Content-Type", "Accept", "X-Request-Id"],
            "expose_headers": ["X-OrgGraph-Cache", "Retry-After", "X-Request-Id"],
            "max_age": 600,
        }
        middleware.append(Middleware(CORSMiddleware, **cors_options))
        # The cache-hit path adds the headers through the same code: its ``send``.
        cors = CORSMiddleware(_no_app, **cors_options)
    # With metrics_port, /metrics is served on that port only (create_metrics_app).
    serve_metrics = settings is None or (
        settings.server.metrics and settings.server.metrics_port is None
    )
    metrics_routes = [Route("/metrics", metrics_endpoint, methods=["GET", "HEAD"])]
    return _GatewayApp(
        routes=[
            Route("/graphql", graphql_endpoint, methods=["GET", "HEAD", "POST"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            *(metrics_routes if serve_metrics else []),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            Route("/dashboard", dashboard, methods=["GET", "HEAD"]),
            Mount("/dashboard", DashboardAssets(directory=DASHBOARD_DIR), name="dashboard"),
        ],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={Exception: internal_error, HTTPException: http_error},
    )
