"""Helpers shared by the cross-provider tests: a server-side request recorder and async
wrappers around the sandbox control surface (``providers.sandbox_kit``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support import ServedApp

__all__ = ["Recorder", "release_held", "wait_held"]


@dataclass
class Recorder:
    """ASGI wrapper that notes every HTTP request reaching the server, before any routing.

    The sandboxes' own log leaves out their ``/__sandbox/`` control routes and only sees what a
    mount routes to them; this sees everything, as the raw request target."""

    app: ASGIApp
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = scope.get("raw_path") or scope["path"].encode()
            query = scope.get("query_string", b"")
            line = target.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
            self.seen.append((scope["method"], line))
        await self.app(scope, receive, send)


async def wait_held(served: ServedApp, at_least: int = 1) -> None:
    """Return once ``at_least`` requests are held by a ``hold`` fault (long-polls the sandbox,
    so the test's event loop keeps running the tasks that send those requests)."""
    async with httpx.AsyncClient(timeout=15) as client:
        response = await client.get(served.url + "/__sandbox/held", params={"at_least": at_least})
    assert response.status_code == 200, response.text


async def release_held(served: ServedApp) -> int:
    async with httpx.AsyncClient(timeout=15) as client:
        response = await client.post(served.url + "/__sandbox/release")
    response.raise_for_status()
    released: int = response.json()["released"]
    return released
