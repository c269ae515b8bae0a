"""Pieces every provider sandbox shares: options, deterministic data, fault injection, a log.

A sandbox is a Starlette app that behaves like one upstream's REST API. Besides the upstream's
own routes, each sandbox mounts a small control surface under ``/__sandbox/`` that tests and
benchmarks use over HTTP (never the gateway):

* ``POST /__sandbox/faults`` with JSON ``{"status": 503, "body": "<raw text>", "content_type":
  "text/html", "headers": {"Retry-After": "7"}, "delay_ms": 100, "hold": true, "times": 2,
  "path_prefix": "/v1/organizations"}`` makes the next ``times`` (default: all) matching requests
  fail, answer ``body``, or slow down. Without ``body`` the error body is the provider's own error
  shape. ``DELETE /__sandbox/faults`` clears them.
* ``hold`` is the deterministic way to be slow: a held request waits, without a timer, until
  ``POST /__sandbox/release`` (then the rest of its fault, if any, applies). ``GET
  /__sandbox/held?at_least=N`` answers once N requests are held (``{"held": n}``; 408 after
  ``timeout`` seconds, default 10), so a test knows a request is in flight before it acts.
* ``GET /__sandbox/requests`` lists the newest upstream requests served (method, path, query;
  at most ``REQUEST_LOG_LIMIT``); ``DELETE /__sandbox/requests`` clears the log.

Data is generated from ``SandboxOptions.seed`` and ``orgs`` only, so two runs agree.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections import deque
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
    "REQUEST_LOG_LIMIT",
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

REQUEST_LOG_LIMIT = 10_000
"""Entries the request log keeps (the newest). Tests clear the log and read back a handful of
requests; the bound is for long-running sandboxes (``orggraph`` demo mode, benchmarks at
thousands of requests per second), whose log would otherwise grow for as long as they run.
10 000 entries of three short strings are a few MB at most."""

_HELD_WAIT_SECONDS = 10.0
"""Default of ``GET /__sandbox/held``'s ``timeout``: far above any test's need, and a bound."""


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
    headers: dict[str, str] | None = None
    """Extra response headers of an injected answer (``status`` or ``body``)."""
    delay_ms: int = 0
    hold: bool = False
    """Wait for ``POST /__sandbox/release`` before anything else (see the module docstring)."""
    times: int | None = None
    path_prefix: str | None = None


ErrorResponder = Callable[[int, str], Response]


@dataclass(slots=True)
class SandboxState:
    """Mutable state of one sandbox app: faults, the request log and held requests."""

    error_response: ErrorResponder
    request_log_limit: int = REQUEST_LOG_LIMIT
    faults: list[Fault] = field(default_factory=list)
    requests: deque[dict[str, str]] = field(init=False)
    held: int = 0
    """Requests waiting on ``release`` right now."""
    _release: asyncio.Event | None = None
    _held_changed: asyncio.Condition | None = None

    def __post_init__(self) -> None:
        self.requests = deque(maxlen=self.request_log_limit)

    def held_changed(self) -> asyncio.Condition:
        # Created on first use: asyncio primitives belong to the loop that serves the app.
        if self._held_changed is None:
            self._held_changed = asyncio.Condition()
        return self._held_changed

    async def hold(self) -> None:
        """Wait until the next ``release``."""
        if self._release is None:
            self._release = asyncio.Event()
        release = self._release
        changed = self.held_changed()
        async with changed:
            self.held += 1
            changed.notify_all()
        try:
            await release.wait()
        finally:
            async with changed:
                self.held -= 1
                changed.notify_all()

    def release(self) -> int:
        """Let every held request go on; later holds wait for the next release."""
        released, event = self.held, self._release
        self._release = None
        if event is not None:
            event.set()
        return released


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
            if fault.hold:
                await self.state.hold()
            if fault.delay_ms:
                await asyncio.sleep(fault.delay_ms / 1000)
            response = self._injected(fault)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _injected(self, fault: Fault) -> Response | None:
        """The answer a fault puts in place of the real one; None lets the request through."""
        response: Response
        if fault.status is not None:
            if fault.body is not None:
                response = Response(
                    fault.body, status_code=fault.status, media_type=fault.content_type
                )
            else:
                response = self.state.error_response(fault.status, "injected fault")
            if fault.status == 429:
                response.headers["Retry-After"] = "1"
        elif fault.body is not None:
            response = Response(fault.body, status_code=200, media_type=fault.content_type)
        else:
            return None
        for name, value in (fault.headers or {}).items():
            response.headers[name] = value
        return response

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
        return JSONResponse({"requests": list(state.requests)})

    async def clear_requests(request: Request) -> Response:
        state.requests.clear()
        return JSONResponse({"requests": []})

    async def held(request: Request) -> Response:
        try:
            at_least = int(request.query_params.get("at_least", "0"))
            timeout = float(request.query_params.get("timeout", _HELD_WAIT_SECONDS))
        except ValueError:
            return JSONResponse({"error": "at_least and timeout must be numbers"}, 400)
        changed = state.held_changed()
        async with changed:
            try:
                await asyncio.wait_for(
                    changed.wait_for(lambda: state.held >= at_least),
                    timeout=min(max(timeout, 0.0), _HELD_WAIT_SECONDS),
                )
            except TimeoutError:
                return JSONResponse({"held": state.held}, 408)
            return JSONResponse({"held": state.held})

    async def release(request: Request) -> Response:
        return JSONResponse({"released": state.release()})

    return [
        Route("/__sandbox/faults", set_fault, methods=["POST"]),
        Route("/__sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/__sandbox/requests", list_requests, methods=["GET"]),
        Route("/__sandbox/requests", clear_requests, methods=["DELETE"]),
        Route("/__sandbox/held", held, methods=["GET"]),
        Route("/__sandbox/release", release, methods=["POST"]),
    ]


def build_sandbox_app(
    routes: Sequence[BaseRoute],
    *,
    error_response: ErrorResponder,
    exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]]
    | None = None,
    request_log_limit: int = REQUEST_LOG_LIMIT,
) -> Starlette:
    """A Starlette app with the provider's ``routes`` plus the ``/__sandbox/`` control surface.

    ``error_response(status, message)`` renders the provider's own error body; it is used for
    injected faults and should also be used by the provider's routes and 404/405 handlers.
    ``request_log_limit`` bounds the request log (the newest entries are kept)."""
    state = SandboxState(error_response=error_response, request_log_limit=request_log_limit)

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
