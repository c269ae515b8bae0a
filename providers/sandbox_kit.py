"""Pieces every provider sandbox shares: options, deterministic data, fault injection, a log.

A sandbox is a Starlette app that behaves like one upstream's REST API. Besides the upstream's
own routes, each sandbox mounts a small control surface under ``/__sandbox/`` that tests and
benchmarks use over HTTP (never the gateway):

* ``POST /__sandbox/faults`` with JSON ``{"status": 503, "body": "<raw text>", "content_type":
  "text/html", "delay_ms": 100, "times": 2, "path_prefix": "/v1/organizations"}`` makes the next
  ``times`` (default: all) matching requests fail or slow down. Without ``body`` the error body is
  the provider's own error shape. ``DELETE /__sandbox/faults`` clears them.
* ``GET /__sandbox/requests`` lists the upstream requests served (method, path, query);
  ``DELETE /__sandbox/requests`` clears the log.

Data is generated from ``SandboxOptions.seed`` and ``orgs`` only, so two runs agree.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "EPOCH",
    "Fault",
    "SandboxOptions",
    "SandboxState",
    "build_sandbox_app",
    "company_name",
    "iso",
    "offset",
    "random_token",
    "rng_for",
    "slugify",
    "ulid",
]

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
"""All generated timestamps are offsets from this instant, so data is reproducible."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxOptions:
    seed: int = 42
    orgs: int = 8
    """Organizations in the data set, shared out round-robin between ``accounts``."""
    accounts: tuple[str, ...] = ("acme", "globex")
    """Each account gets its own credentials (see each sandbox's ``demo_credentials``)."""
    max_page_size: int = 100
    """Largest page the sandbox serves; lower it in tests to force pagination."""
    rate_limits: bool = True
    """Enforce the provider's documented rate limits (benchmarks turn this off)."""


@dataclass(slots=True, kw_only=True)
class Fault:
    status: int | None = None
    body: str | None = None
    content_type: str = "application/json"
    delay_ms: int = 0
    times: int | None = None
    path_prefix: str | None = None


ErrorResponder = Callable[[int, str], Response]


@dataclass(slots=True)
class SandboxState:
    """Mutable state of one sandbox app: faults and the request log."""

    error_response: ErrorResponder
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)


class _Control:
    """ASGI middleware: logs upstream requests and applies faults before the real routes."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/__sandbox/"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        self.state.requests.append(
            {
                "method": scope["method"],
                "path": path,
                "query": scope.get("query_string", b"").decode("latin-1"),
            }
        )
        fault = self._take_fault(path)
        if fault is not None:
            if fault.delay_ms:
                await asyncio.sleep(fault.delay_ms / 1000)
            if fault.status is not None:
                response: Response
                if fault.body is not None:
                    response = Response(
                        fault.body, status_code=fault.status, media_type=fault.content_type
                    )
                else:
                    response = self.state.error_response(fault.status, "injected fault")
                if fault.status == 429:
                    response.headers["Retry-After"] = "1"
                await response(scope, receive, send)
                return
            if fault.body is not None:
                await Response(fault.body, status_code=200, media_type=fault.content_type)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.state.faults:
            if fault.path_prefix and not path.startswith(fault.path_prefix):
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.state.faults.remove(fault)
            return fault
        return None


def _control_routes(state: SandboxState) -> list[BaseRoute]:
    async def set_fault(request: Request) -> Response:
        payload: dict[str, Any] = await request.json()
        allowed = set(Fault.__dataclass_fields__)
        unknown = set(payload) - allowed
        if unknown:
            return JSONResponse({"error": f"unknown fault keys {sorted(unknown)}"}, 400)
        state.faults.append(Fault(**payload))
        return JSONResponse({"faults": len(state.faults)})

    async def clear_faults(request: Request) -> Response:
        state.faults.clear()
        return JSONResponse({"faults": 0})

    async def list_requests(request: Request) -> Response:
        return JSONResponse({"requests": state.requests})

    async def clear_requests(request: Request) -> Response:
        state.requests.clear()
        return JSONResponse({"requests": []})

    return [
        Route("/__sandbox/faults", set_fault, methods=["POST"]),
        Route("/__sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/__sandbox/requests", list_requests, methods=["GET"]),
        Route("/__sandbox/requests", clear_requests, methods=["DELETE"]),
    ]


def build_sandbox_app(
    routes: Sequence[BaseRoute],
    *,
    error_response: ErrorResponder,
    exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]]
    | None = None,
) -> Starlette:
    """A Starlette app with the provider's ``routes`` plus the ``/__sandbox/`` control surface.

    ``error_response(status, message)`` renders the provider's own error body; it is used for
    injected faults and should also be used by the provider's routes and 404/405 handlers."""
    state = SandboxState(error_response=error_response)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error_response(status, "Not Found" if status == 404 else "Method Not Allowed")

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        405: not_found,
    }
    handlers.update(exception_handlers or {})
    app = Starlette(routes=[*_control_routes(state), *routes], exception_handlers=handlers)
    app.state.sandbox = state
    app.add_middleware(_Control, state=state)
    return app


# --------------------------------------------------------------------------------------------
# Deterministic data helpers
# --------------------------------------------------------------------------------------------


def rng_for(provider: str, seed: int) -> random.Random:
    return random.Random(f"{provider}:{seed}")


_ADJECTIVES = (
    "Acme",
    "Blue",
    "Crimson",
    "Delta",
    "Eager",
    "Fern",
    "Golden",
    "Harbor",
    "Indigo",
    "Jolly",
    "Kepler",
    "Lunar",
    "Maple",
    "Nimbus",
    "Orbit",
    "Pine",
    "Quartz",
    "River",
    "Solar",
    "Tidal",
)
_NOUNS = (
    "Analytics",
    "Bakery",
    "Cloud",
    "Dynamics",
    "Espresso",
    "Foods",
    "Games",
    "Health",
    "Labs",
    "Media",
    "Networks",
    "Outfitters",
    "Partners",
    "Robotics",
    "Studios",
    "Travel",
    "Works",
)


def company_name(rng: random.Random, index: int) -> str:
    """Readable and unique per index (the index is part of the name)."""
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {index + 1}"


def slugify(name: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(rng: random.Random, at: datetime) -> str:
    """A syntactically valid ULID (48-bit ms timestamp + 80 random bits) from ``rng``."""
    ms = int(at.timestamp() * 1000)
    value = (ms << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_token(rng: random.Random, length: int = 24) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(length))


def offset(days: float) -> datetime:
    return EPOCH + timedelta(days=days)
