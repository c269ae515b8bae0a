"""The sandbox control surface shared by every provider sandbox (``providers.sandbox_kit``).

Over real loopback HTTP: the request log is bounded, injected faults can carry response headers,
and a ``hold`` fault keeps matching requests waiting until the test releases them, which is how
tests make an upstream "slow" deterministically (no timing involved); waiting for held or hung
requests answers at once when already true. The fault kinds themselves are in test_faults.py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from providers.base import ProviderName, load_sandbox_module
from providers.sandbox_kit import REQUEST_LOG_LIMIT, build_sandbox_app
from tests.support import ServedApp, serve_app

__all__: list[str] = []


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


async def _ok(request: Request) -> Response:
    return JSONResponse({"ok": True})


@pytest.fixture(scope="module")
def tiny() -> Iterator[ServedApp]:
    app = build_sandbox_app([Route("/ok", _ok)], error_response=_error, request_log_limit=3)
    with serve_app(app) as served:
        yield served


@pytest.fixture(autouse=True)
def _clean(tiny: ServedApp) -> Iterator[None]:
    tiny.clear_faults()
    tiny.clear_requests()
    yield
    tiny.clear_faults()


def test_request_log_keeps_only_the_newest_entries(tiny: ServedApp) -> None:
    with httpx.Client(base_url=tiny.url) as client:
        for i in range(5):
            client.get("/ok", params={"n": i})
    assert [r["query"] for r in tiny.requests()] == ["n=2", "n=3", "n=4"]
    # The count goes on past the bound (benchmarks divide by it), until the log is cleared.
    assert httpx.get(tiny.url + "/__sandbox/requests").json()["total"] == 5
    tiny.clear_requests()
    assert httpx.get(tiny.url + "/__sandbox/requests").json() == {"requests": [], "total": 0}


@pytest.mark.parametrize("provider", list(ProviderName))
def test_every_sandbox_log_is_bounded(provider: ProviderName) -> None:
    app = load_sandbox_module(provider).create_app()
    log = app.state.sandbox.requests
    assert isinstance(log, deque) and log.maxlen == REQUEST_LOG_LIMIT == 10_000


def test_fault_headers_are_sent(tiny: ServedApp) -> None:
    tiny.fault(body="[]", headers={"X-Next-Page": "http://elsewhere/x"}, times=1)
    tiny.fault(status=503, headers={"Retry-After": "7"}, times=1)
    with httpx.Client(base_url=tiny.url) as client:
        injected = client.get("/ok")
        assert injected.text == "[]" and injected.headers["x-next-page"] == "http://elsewhere/x"
        failed = client.get("/ok")
        assert failed.status_code == 503 and failed.headers["retry-after"] == "7"
        assert client.get("/ok").json() == {"ok": True}


async def test_hold_keeps_requests_until_released(tiny: ServedApp) -> None:
    tiny.fault(hold=True, path_prefix="/ok", times=1)
    async with httpx.AsyncClient(base_url=tiny.url, timeout=10) as client:
        held = asyncio.ensure_future(client.get("/ok"))
        waited = await client.get("/__sandbox/held", params={"at_least": 1})
        assert waited.json() == {"held": 1}
        # Still held: a second, unfaulted request overtakes it.
        assert (await client.get("/ok")).json() == {"ok": True}
        assert not held.done()
        released = await client.post("/__sandbox/release")
        assert released.json() == {"released": 1}
        assert (await held).json() == {"ok": True}
        assert (await client.get("/__sandbox/held")).json() == {"held": 0}
    assert [r["path"] for r in tiny.requests()] == ["/ok", "/ok"]


async def test_held_request_then_gets_the_fault_status(tiny: ServedApp) -> None:
    tiny.fault(hold=True, status=502, times=1)
    async with httpx.AsyncClient(base_url=tiny.url, timeout=10) as client:
        held = asyncio.ensure_future(client.get("/ok"))
        await client.get("/__sandbox/held", params={"at_least": 1})
        await client.post("/__sandbox/release")
        assert (await held).status_code == 502


def test_waiting_for_held_requests_gives_up(tiny: ServedApp) -> None:
    response = httpx.get(tiny.url + "/__sandbox/held", params={"at_least": 1, "timeout": 0})
    assert response.status_code == 408 and response.json() == {"held": 0}


def test_unknown_fault_keys_are_refused(tiny: ServedApp) -> None:
    response = httpx.post(tiny.url + "/__sandbox/faults", json={"hold": True, "bogus": 1})
    assert response.status_code == 400


def test_waiting_for_hung_requests_gives_up_and_at_most_waits_for_fewer(tiny: ServedApp) -> None:
    hung = httpx.get(tiny.url + "/__sandbox/hung", params={"at_least": 1, "timeout": 0})
    assert hung.status_code == 408 and hung.json() == {"hung": 0}
    none_held = httpx.get(tiny.url + "/__sandbox/held", params={"at_most": 0, "timeout": 0})
    assert none_held.status_code == 200 and none_held.json() == {"held": 0}
    bad = httpx.get(tiny.url + "/__sandbox/held", params={"at_most": "few"})
    assert bad.status_code == 400
