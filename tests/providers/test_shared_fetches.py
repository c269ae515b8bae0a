"""Shared fetches (``CallMemo.run``, ``AccessTokenCache.get``) and cancellation.

The gateway cancels a resolver's pending upstream calls when it no longer needs them (a page
filled, a client went away). A fetch shared with other waiters — the same GET twice in one
request, one token exchange for several requests — must not die with the caller that happened
to start it: every waiter gets the real outcome, and a fetch nobody waits for any more finishes
in the background and is kept. Concurrency is proved with events and the sandboxes' ``hold``
fault, never with sleeps.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from providers.base import (
    AccessToken,
    AccessTokenCache,
    CallKey,
    CallMemo,
    OrganizationRecord,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    UpstreamResponse,
    UpstreamUnavailable,
    call_memo,
)
from providers.planetscale import sandbox as planetscale_sandbox
from providers.planetscale.adapter import PlanetScaleAdapter
from providers.sandbox_kit import SandboxOptions
from providers.upsun import sandbox as upsun_sandbox
from providers.upsun.adapter import UpsunAdapter
from tests.providers.harness import release_held, wait_held
from tests.support import ServedApp, serve_app

__all__: list[str] = []

T = TypeVar("T")

KEY = CallKey(provider=ProviderName.CAPYDB, credentials="c", method="GET", url="http://x/v1/me")
RESPONSE = UpstreamResponse(status=200, headers={}, body={"ok": True}, url="http://x/v1/me")
OPTIONS = SandboxOptions(orgs=8, rate_limits=False)


class Gate:
    """A fetch that waits until the test opens it, counting how often it was started."""

    def __init__(self, result: Any = RESPONSE, error: BaseException | None = None) -> None:
        self.started = asyncio.Event()
        self.open = asyncio.Event()
        self.calls = 0
        self.result = result
        self.error = error

    async def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        # Bounded so that a broken implementation fails the test instead of hanging it.
        await asyncio.wait_for(self.open.wait(), timeout=10)
        if self.error is not None:
            raise self.error
        return self.result


async def _cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _outcome(task: Awaitable[T]) -> T | BaseException:
    """The task's result or whatever it raised, CancelledError included (a clean failure)."""
    (result,) = await asyncio.gather(task, return_exceptions=True)
    return result


async def _background_done() -> None:
    """Wait for every other task of this loop (the shared fetches) to finish."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the event loop would log ("exception was never retrieved", ...)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


# --------------------------------------------------------------------------------------------
# CallMemo.run
# --------------------------------------------------------------------------------------------


async def test_memo_first_waiter_cancelled_second_gets_the_result() -> None:
    memo, fetch = CallMemo(), Gate()
    first = asyncio.ensure_future(memo.run(KEY, fetch))
    second = asyncio.ensure_future(memo.run(KEY, fetch))
    await fetch.started.wait()
    await _cancelled(first)
    fetch.open.set()
    assert await _outcome(second) is RESPONSE
    assert fetch.calls == 1


async def test_memo_fetch_nobody_waits_for_finishes_and_is_kept() -> None:
    memo, fetch = CallMemo(), Gate()
    waiters = [asyncio.ensure_future(memo.run(KEY, fetch)) for _ in range(2)]
    await fetch.started.wait()
    for waiter in waiters:
        await _cancelled(waiter)
    fetch.open.set()
    await _background_done()
    again = Gate()
    again.open.set()
    assert await memo.run(KEY, again) is RESPONSE
    assert fetch.calls == 1 and again.calls == 0


async def test_memo_failure_is_shared_then_retried() -> None:
    boom = UpstreamUnavailable(ProviderName.CAPYDB, "capydb is unreachable")
    memo, fetch = CallMemo(), Gate(error=boom)
    first = asyncio.ensure_future(memo.run(KEY, fetch))
    second = asyncio.ensure_future(memo.run(KEY, fetch))
    await fetch.started.wait()
    await _cancelled(first)
    fetch.open.set()
    assert await _outcome(second) is boom
    # A failure is not remembered: the next identical call goes upstream again.
    retry = Gate()
    retry.open.set()
    assert await memo.run(KEY, retry) is RESPONSE and retry.calls == 1


async def test_memo_background_failure_is_retrieved(loop_errors: list[dict[str, Any]]) -> None:
    memo = CallMemo()
    fetch = Gate(error=UpstreamUnavailable(ProviderName.CAPYDB, "down"))
    waiter = asyncio.ensure_future(memo.run(KEY, fetch))
    await fetch.started.wait()
    await _cancelled(waiter)
    fetch.open.set()
    await _background_done()
    del waiter, fetch
    gc.collect()
    assert loop_errors == []
    assert len(memo) == 0  # the failed call was forgotten


async def test_memo_clear_does_not_lose_a_running_fetch() -> None:
    memo, fetch = CallMemo(), Gate()
    waiter = asyncio.ensure_future(memo.run(KEY, fetch))
    await fetch.started.wait()
    memo.clear()
    later = Gate()
    later.open.set()
    assert await memo.run(KEY, later) is RESPONSE  # a new fetch after the clear
    fetch.open.set()
    assert await _outcome(waiter) is RESPONSE
    assert later.calls == 1


# --------------------------------------------------------------------------------------------
# AccessTokenCache.get
# --------------------------------------------------------------------------------------------


def _token(value: str = "tok") -> AccessToken:
    return AccessToken(value=value, expires_at=asyncio.get_running_loop().time() + 600)


async def test_token_first_waiter_cancelled_second_gets_the_token() -> None:
    cache = AccessTokenCache()
    fetch = Gate(result=_token())
    first = asyncio.ensure_future(cache.get("tenant", fetch))
    second = asyncio.ensure_future(cache.get("tenant", fetch))
    await fetch.started.wait()
    await _cancelled(first)
    fetch.open.set()
    assert await _outcome(second) == "tok"
    assert fetch.calls == 1


async def test_token_fetched_for_nobody_is_still_cached() -> None:
    cache = AccessTokenCache()
    fetch = Gate(result=_token())
    waiter = asyncio.ensure_future(cache.get("tenant", fetch))
    await fetch.started.wait()
    await _cancelled(waiter)
    fetch.open.set()
    await _background_done()
    never = Gate(result=_token("other"))
    never.open.set()
    assert await cache.get("tenant", never) == "tok"
    assert never.calls == 0


async def test_token_failure_shared_retrieved_and_not_cached(
    loop_errors: list[dict[str, Any]],
) -> None:
    boom = UpstreamUnavailable(ProviderName.UPSUN, "upsun token exchange failed")
    cache = AccessTokenCache()
    fetch = Gate(error=boom)
    first = asyncio.ensure_future(cache.get("tenant", fetch))
    second = asyncio.ensure_future(cache.get("tenant", fetch))
    await fetch.started.wait()
    await _cancelled(first)
    fetch.open.set()
    assert await _outcome(second) is boom
    # Nobody waiting at all: the failure is still retrieved, never logged as unhandled.
    lonely = Gate(error=UpstreamUnavailable(ProviderName.UPSUN, "down"))
    waiter = asyncio.ensure_future(cache.get("tenant", lonely))
    await lonely.started.wait()
    await _cancelled(waiter)
    lonely.open.set()
    await _background_done()
    del waiter, lonely, first, second, fetch
    gc.collect()
    assert loop_errors == []
    fresh = Gate(result=_token("fresh"))
    fresh.open.set()
    assert await cache.get("tenant", fresh) == "fresh"


# --------------------------------------------------------------------------------------------
# Over HTTP: a slow token exchange shared by two requests, a slow GET shared in one request
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upsun() -> Iterator[ServedApp]:
    with serve_app(upsun_sandbox.create_app(options=OPTIONS)) as served:
        yield served


@pytest.fixture(scope="module")
def planetscale() -> Iterator[ServedApp]:
    with serve_app(planetscale_sandbox.create_app(options=OPTIONS)) as served:
        yield served


@pytest.fixture(autouse=True)
def _clean(upsun: ServedApp, planetscale: ServedApp) -> Iterator[None]:
    for served in (upsun, planetscale):
        served.clear_faults()
        served.clear_requests()
    yield
    for served in (upsun, planetscale):
        served.clear_faults()


@pytest.fixture
async def upsun_adapter(upsun: ServedApp) -> AsyncIterator[UpsunAdapter]:
    adapter = UpsunAdapter(
        ProviderSettings(base_url=upsun.url, token_url=upsun.url + upsun_sandbox.TOKEN_PATH)
    )
    yield adapter
    await adapter.aclose()


def _in_request(call: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
    """``call`` in a task of its own with its own ``CallMemo``, like one GraphQL request."""

    async def run() -> T:
        call_memo.set(CallMemo())
        return await call()

    return asyncio.ensure_future(run())


def _upsun_org_id(served: ServedApp, index: int) -> str:
    return str(served.app.state.upsun.orgs[index].data["id"])


async def test_upsun_token_exchange_survives_the_first_requests_cancellation(
    upsun: ServedApp, upsun_adapter: UpsunAdapter
) -> None:
    credentials = ProviderCredentials(upsun_sandbox.demo_credentials("globex", OPTIONS))
    first_id, second_id = _upsun_org_id(upsun, 1), _upsun_org_id(upsun, 3)
    upsun.fault(hold=True, path_prefix=upsun_sandbox.TOKEN_PATH, times=1)
    first = _in_request(lambda: upsun_adapter.get_organization(credentials, first_id))
    second = _in_request(lambda: upsun_adapter.get_organization(credentials, second_id))
    await wait_held(upsun)  # the exchange the first request started is at the auth server
    await _cancelled(first)
    assert await release_held(upsun) == 1
    record = await _outcome(second)
    assert isinstance(record, OrganizationRecord) and record.provider_id == second_id
    # The exchange finished although its starter was gone, and its token is cached.
    assert (await upsun_adapter.get_organization(credentials, first_id)).provider_id == first_id
    log = upsun.requests()
    assert [r["method"] for r in log if r["path"] == upsun_sandbox.TOKEN_PATH] == ["POST"]


@pytest.fixture
async def planetscale_adapter(planetscale: ServedApp) -> AsyncIterator[PlanetScaleAdapter]:
    adapter = PlanetScaleAdapter(ProviderSettings(base_url=planetscale.url))
    yield adapter
    await adapter.aclose()


PLANETSCALE_CREDENTIALS = PlanetScaleAdapter.parse_credentials(
    planetscale_sandbox.demo_credentials("acme", OPTIONS)
)


async def _two_held_listings(
    planetscale: ServedApp, adapter: PlanetScaleAdapter, *, cancel_first: bool
) -> tuple[Any, Any]:
    """Two list calls in one request's memo while the upstream holds the page, the first
    cancelled before the page is released when ``cancel_first``; their outcomes."""
    planetscale.fault(hold=True, path_prefix="/organizations", times=1)
    token = call_memo.set(CallMemo())
    try:
        one = asyncio.ensure_future(adapter.list_organizations(PLANETSCALE_CREDENTIALS))
        two = asyncio.ensure_future(adapter.list_organizations(PLANETSCALE_CREDENTIALS))
        await wait_held(planetscale)
        if cancel_first:
            await _cancelled(one)
        await release_held(planetscale)
        return (None if cancel_first else await _outcome(one)), await _outcome(two)
    finally:
        call_memo.reset(token)


async def test_planetscale_shared_get_survives_the_first_callers_cancellation(
    planetscale: ServedApp, planetscale_adapter: PlanetScaleAdapter
) -> None:
    # Aliased organizations(first: 1) and organizations(first: 100): the same page.
    _, page = await _two_held_listings(planetscale, planetscale_adapter, cancel_first=True)
    assert not isinstance(page, BaseException), page
    assert len(page.organizations) == 4
    assert [r["path"] for r in planetscale.requests()] == ["/organizations"]


async def test_callers_sharing_a_page_share_its_normalised_organizations(
    planetscale: ServedApp, planetscale_adapter: PlanetScaleAdapter
) -> None:
    # UpstreamResponse.derive: the page is normalised once for every caller of one answer,
    # not once per waiting request.
    first, second = await _two_held_listings(planetscale, planetscale_adapter, cancel_first=False)
    assert first.organizations is second.organizations
    assert first.organizations[0] is second.organizations[0]
    # A page fetched again is an answer of its own.
    third = await planetscale_adapter.list_organizations(PLANETSCALE_CREDENTIALS)
    assert third.organizations is not first.organizations
    assert third.organizations == first.organizations
    assert [r["path"] for r in planetscale.requests()] == ["/organizations"] * 2


def test_derive_builds_once_per_answer_and_never_keeps_a_failure() -> None:
    calls: list[Any] = []

    def build(body: Any) -> Any:
        calls.append(body)
        if body.get("fail") and len(calls) == 1:
            raise ValueError("broken")
        return object()

    response = UpstreamResponse(status=200, headers={}, body={"ok": True}, url="http://x/")
    assert response.derive("x", build) is response.derive("x", build)
    assert len(calls) == 1
    failing = UpstreamResponse(status=200, headers={}, body={"fail": True}, url="http://x/")
    calls.clear()
    with pytest.raises(ValueError):
        failing.derive("x", build)
    assert failing.derive("x", build) is failing.derive("x", build)
    assert len(calls) == 2
    assert response == UpstreamResponse(status=200, headers={}, body={"ok": True}, url="http://x/")
