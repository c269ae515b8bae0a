"""The HTTP service: a Starlette app serving GraphQL (POST and GET), GraphiQL and /healthz.

``create_app(settings)`` serves a configured deployment; ``create_app(None)`` is demo mode, which
starts the five provider sandboxes in-process on loopback ports and serves an open demo tenant over
them. The transport rules follow GraphQL-over-HTTP: JSON bodies, queries (not mutations) over GET,
``Authorization: Bearer <gateway key>`` to pick the tenant.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from graphql import GraphQLError, OperationType
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.cache import CacheLayer, build_cache, request_key
from gateway.demo import DemoOptions, running_demo
from gateway.errors import ErrorCode, GatewayError, format_error
from gateway.execution import Executor
from gateway.schema import RequestContext, build_schema
from gateway.settings import Settings
from gateway.tenancy import TenantDirectory
from gateway.upstreams import Upstreams
from providers.base import call_memo

__all__ = ["Runtime", "create_app"]

logger = logging.getLogger("orggraph.app")

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1_000_000  # far above any sane query; stops memory abuse before parsing
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# Whether a cacheable query was answered from the whole-response cache (for operators).
_CACHE_HIT = {"X-OrgGraph-Cache": "hit"}
_CACHE_MISS = {"X-OrgGraph-Cache": "miss"}


@dataclass(slots=True)
class Runtime:
    settings: Settings
    executor: Executor
    upstreams: Upstreams
    tenants: TenantDirectory
    cache: CacheLayer


def build_runtime(settings: Settings) -> Runtime:
    server = settings.server
    return Runtime(
        settings=settings,
        executor=Executor(
            build_schema()._schema,
            max_depth=server.max_depth,
            max_tokens=server.max_tokens,
            introspection=server.introspection,
        ),
        upstreams=Upstreams(settings.providers),
        tenants=TenantDirectory(settings.tenants),
        cache=build_cache(settings.cache, settings.provider_ttls),
    )


def _tune_garbage_collector() -> None:
    """Fewer, cheaper collections: every request allocates thousands of short-lived objects,
    and CPython's default gen-0 threshold (700) makes it walk them dozens of times per request,
    which shows up as tail latency. Freezing moves the start-up heap (schema, adapters) out of
    every future collection; nearly all request garbage is freed by reference counting anyway."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _request_error(code: ErrorCode, message: str, status: int) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="orggraph"'} if status == 401 else None
    return _json(
        {"errors": [{"message": message, "extensions": {"code": code.value}}]}, status, headers
    )


@functools.cache
def _graphiql_template() -> str:
    return (STATIC_DIR / "graphiql.html").read_text(encoding="utf-8")


def _graphiql_page(path: str) -> HTMLResponse:
    html = _graphiql_template().replace("{{STATIC}}", "/static")
    return HTMLResponse(html.replace("{{ENDPOINT}}", path))


async def _read_params(request: Request) -> dict[str, Any] | Response:
    if request.method == "GET":
        params: dict[str, Any] = {
            "query": request.query_params.get("query"),
            "operationName": request.query_params.get("operationName"),
        }
        for key in ("variables", "extensions"):
            raw = request.query_params.get(key)
            if raw:
                try:
                    params[key] = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return _request_error(
                        ErrorCode.BAD_USER_INPUT, f"'{key}' is not valid JSON", 400
                    )
        return params

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "application/graphql-response+json"):
        return _request_error(ErrorCode.BAD_USER_INPUT, "POST bodies must be application/json", 415)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return _request_error(ErrorCode.BAD_USER_INPUT, "Request body too large", 413)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _request_error(ErrorCode.BAD_USER_INPUT, "Request body too large", 413)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _request_error(ErrorCode.BAD_USER_INPUT, "Request body is not valid JSON", 400)
    if isinstance(parsed, list):
        return _request_error(ErrorCode.BAD_USER_INPUT, "Batched requests are not supported", 400)
    if not isinstance(parsed, dict):
        return _request_error(ErrorCode.BAD_USER_INPUT, "Request body must be a JSON object", 400)
    return parsed


def _persisted_query_hash(extensions: Any) -> str | Response | None:
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
        return _request_error(
            ErrorCode.BAD_USER_INPUT,
            "extensions.persistedQuery needs version 1 and a sha256Hash of 64 hex digits",
            400,
        )
    return str(persisted["sha256Hash"]).lower()


async def graphql_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if (
        request.method == "GET"
        and "query" not in request.query_params
        and "extensions" not in request.query_params
        and "text/html" in request.headers.get("accept", "")
    ):
        if runtime.settings.server.graphiql:
            return _graphiql_page(request.url.path)
        return _request_error(ErrorCode.BAD_USER_INPUT, "GraphiQL is disabled", 404)

    try:
        tenant = runtime.tenants.authenticate(request.headers.get("authorization"))
    except GatewayError as exc:
        return _request_error(exc.code, exc.message, 401)

    params = await _read_params(request)
    if isinstance(params, Response):
        return params
    query = params.get("query")
    variables = params.get("variables")
    operation_name = params.get("operationName")
    if query is not None and not isinstance(query, str):
        return _request_error(ErrorCode.BAD_USER_INPUT, "'query' must be a string", 400)
    if variables is not None and not isinstance(variables, dict):
        return _request_error(ErrorCode.BAD_USER_INPUT, "'variables' must be an object", 400)
    if operation_name is not None and not isinstance(operation_name, str):
        return _request_error(ErrorCode.BAD_USER_INPUT, "'operationName' must be a string", 400)

    cache = runtime.cache
    persisted = _persisted_query_hash(params.get("extensions"))
    if isinstance(persisted, Response):
        return persisted
    if persisted is not None:
        if query:
            if hashlib.sha256(query.encode()).hexdigest() != persisted:
                return _request_error(
                    ErrorCode.BAD_USER_INPUT, "provided sha does not match query", 400
                )
            await cache.persist_query(persisted, query)
        else:
            query = await cache.persisted_query(persisted)
            if query is None:
                # Apollo clients look for this message and code, then resend with the query.
                return _json(
                    {
                        "errors": [
                            {
                                "message": "PersistedQueryNotFound",
                                "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
                            }
                        ]
                    }
                )
    if not query or not query.strip():
        return _request_error(ErrorCode.BAD_USER_INPUT, "No GraphQL query was sent", 400)

    # Only query results are ever stored, so a stored answer for this key needs no parsing,
    # validation or operation check to be served again.
    cache_key: str | None = None
    if cache.response_cache_enabled:
        cache_key = request_key(tenant.name, query, operation_name, variables)
        body = await cache.get_response(cache_key)
        if body is not None:
            return Response(body, media_type="application/json", headers=_CACHE_HIT)

    executor = runtime.executor
    prepared = executor.prepare(query)
    operation = prepared.operation_type(operation_name)
    if prepared.document is not None and not prepared.errors and operation is None:
        return _request_error(
            ErrorCode.BAD_USER_INPUT,
            "operationName does not name one operation of the document"
            if operation_name
            else "The document has several operations: send operationName",
            400,
        )
    if operation is not None and operation is not OperationType.QUERY and request.method == "GET":
        return _request_error(ErrorCode.BAD_USER_INPUT, "Mutations must be sent with POST", 405)

    if operation is not OperationType.QUERY:
        cache_key = None  # mutations and unrunnable documents are never stored

    scope = cache.scope(tenant.name)
    context = RequestContext(tenant=tenant, upstreams=runtime.upstreams, scope=scope)
    token = call_memo.set(scope)
    try:
        result = await executor.execute(
            prepared, context=context, variables=variables, operation_name=operation_name
        )
    finally:
        call_memo.reset(token)

    errors: list[GraphQLError] = list(result.errors or []) + context.errors
    payload: dict[str, Any] = {}
    if errors:
        payload["errors"] = [format_error(e) for e in errors]
    # Spec: "data" is present (maybe null) once execution started, absent when the request
    # failed parsing or validation; only execution errors have a path.
    if result.data is not None or not errors or any(e.path for e in errors):
        payload["data"] = result.data
    stale = scope.stale_reads()
    if stale:
        payload["extensions"] = {
            "stale": [
                {"provider": s.provider.value, "ageSeconds": round(s.age_seconds, 3)} for s in stale
            ]
        }
    encoded = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    if cache_key is None:
        return Response(encoded, media_type="application/json")
    if not errors:
        ttl = scope.response_ttl()
        if ttl > 0:
            await cache.set_response(cache_key, encoded, scope.dependencies(), ttl)
    return Response(encoded, media_type="application/json", headers=_CACHE_MISS)


async def internal_error(request: Request, exc: Exception) -> Response:
    """Last resort for a bug outside any resolver: a GraphQL-shaped answer, never a bare 500
    or a stack trace; the details go to the log."""
    logger.error("unhandled error serving %s", request.url.path, exc_info=exc)
    return _request_error(ErrorCode.INTERNAL, "Internal error", 500)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings | None = None, *, demo: DemoOptions | None = None) -> Starlette:
    """The gateway. ``settings=None`` means demo mode (sandboxes started in-process)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            effective = settings
            if effective is None:
                effective = await stack.enter_async_context(running_demo(demo or DemoOptions()))
            runtime = build_runtime(effective)
            _tune_garbage_collector()
            stack.push_async_callback(runtime.upstreams.aclose)
            stack.push_async_callback(runtime.cache.close)
            app.state.runtime = runtime
            yield

    return Starlette(
        routes=[
            Route("/graphql", graphql_endpoint, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
        exception_handlers={Exception: internal_error},
    )
