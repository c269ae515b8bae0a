"""The HTTP service: a Starlette app serving GraphQL (POST and GET), GraphiQL and /healthz.

``create_app(settings)`` serves a configured deployment; ``create_app(None)`` is demo mode, which
starts the five provider sandboxes in-process on loopback ports and serves an open demo tenant over
them. The transport rules follow GraphQL-over-HTTP: JSON bodies, queries (not mutations) over GET,
``Authorization: Bearer <gateway key>`` to pick the tenant.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import strawberry
from graphql import GraphQLError, NoSchemaIntrospectionCustomRule
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import AddValidationRules, MaxTokensLimiter
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types.graphql import OperationType

from gateway.demo import DemoOptions, running_demo
from gateway.errors import ErrorCode, GatewayError, format_error
from gateway.limits import max_depth_rule
from gateway.schema import RequestContext, build_schema
from gateway.settings import Settings
from gateway.tenancy import TenantDirectory
from gateway.upstreams import Upstreams
from providers.base import CallMemo, call_memo

__all__ = ["Runtime", "create_app"]

logger = logging.getLogger("orggraph.app")

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1_000_000  # far above any sane query; stops memory abuse before parsing
_QUERY_ONLY = (OperationType.QUERY,)
_ALL_OPERATIONS = (OperationType.QUERY, OperationType.MUTATION)


@dataclass(slots=True)
class Runtime:
    settings: Settings
    schema: strawberry.Schema
    upstreams: Upstreams
    tenants: TenantDirectory


def build_runtime(settings: Settings) -> Runtime:
    rules: list[Any] = [max_depth_rule(settings.server.max_depth)]
    if not settings.server.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    max_tokens = settings.server.max_tokens
    schema = build_schema(
        extensions=[
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            lambda: AddValidationRules(rules),
        ]
    )
    return Runtime(
        settings=settings,
        schema=schema,
        upstreams=Upstreams(settings.providers),
        tenants=TenantDirectory(settings.tenants),
    )


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


def _graphiql_page(path: str) -> HTMLResponse:
    static = "/static"
    html = (STATIC_DIR / "graphiql.html").read_text(encoding="utf-8")
    return HTMLResponse(html.replace("{{STATIC}}", static).replace("{{ENDPOINT}}", path))


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


async def graphql_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if (
        request.method == "GET"
        and "query" not in request.query_params
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
    if not isinstance(query, str) or not query.strip():
        return _request_error(ErrorCode.BAD_USER_INPUT, "No GraphQL query was sent", 400)
    if variables is not None and not isinstance(variables, dict):
        return _request_error(ErrorCode.BAD_USER_INPUT, "'variables' must be an object", 400)
    if operation_name is not None and not isinstance(operation_name, str):
        return _request_error(ErrorCode.BAD_USER_INPUT, "'operationName' must be a string", 400)

    context = RequestContext(tenant=tenant, upstreams=runtime.upstreams)
    token = call_memo.set(CallMemo())
    try:
        result = await runtime.schema.execute(
            query,
            variable_values=variables,
            context_value=context,
            operation_name=operation_name,
            allowed_operation_types=_QUERY_ONLY if request.method == "GET" else _ALL_OPERATIONS,
        )
    except InvalidOperationTypeError:
        return _request_error(ErrorCode.BAD_USER_INPUT, "Mutations must be sent with POST", 405)
    except (MissingQueryError, CannotGetOperationTypeError) as exc:
        return _request_error(ErrorCode.BAD_USER_INPUT, str(exc) or "Unknown operation", 400)
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
    if result.extensions:
        payload["extensions"] = result.extensions
    return _json(payload)


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
            stack.push_async_callback(runtime.upstreams.aclose)
            app.state.runtime = runtime
            yield

    return Starlette(
        routes=[
            Route("/graphql", graphql_endpoint, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
    )
