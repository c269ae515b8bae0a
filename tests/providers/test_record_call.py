"""``CallMemo.record_call``: one report per real upstream HTTP exchange, none for shared answers.

The gateway's per-tenant health figures (and later metrics) count what really went over the
wire. A recording ``CallMemo`` subclass stands in for the gateway's request scope; the adapters
run against their sandboxes over loopback HTTP.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from providers.base import (
    BadUpstreamResponse,
    CallKey,
    CallMemo,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    UpstreamError,
    UpstreamHttp,
    UpstreamNotFound,
    UpstreamResponse,
    UpstreamUnavailable,
    call_memo,
)
from providers.planetscale import sandbox as planetscale_sandbox
from providers.planetscale.adapter import PlanetScaleAdapter
from providers.sandbox_kit import SandboxOptions
from providers.upsun import sandbox as upsun_sandbox
from providers.upsun.adapter import UpsunAdapter
from tests.support import ServedApp, serve_app

__all__: list[str] = []

OPTIONS = SandboxOptions(orgs=8, rate_limits=False)
PS = ProviderName.PLANETSCALE


@dataclass(frozen=True)
class Call:
    provider: ProviderName
    seconds: float
    status: int | None
    error: UpstreamError | None


class Recording(CallMemo):
    __slots__ = ("calls",)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def record_call(
        self,
        provider: ProviderName,
        *,
        seconds: float,
        status: int | None,
        error: UpstreamError | None,
    ) -> None:
        self.calls.append(Call(provider, seconds, status, error))


class Cached(Recording):
    """Answers every read from its "cache": nothing reaches ``_send``, nothing is recorded."""

    __slots__ = ()

    async def load(
        self, key: CallKey, fetch: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        return UpstreamResponse(status=200, headers={}, body={"data": []}, url=key.url)


@pytest.fixture(scope="module")
def planetscale() -> Iterator[ServedApp]:
    with serve_app(planetscale_sandbox.create_app(options=OPTIONS)) as served:
        yield served


@pytest.fixture(scope="module")
def upsun() -> Iterator[ServedApp]:
    with serve_app(upsun_sandbox.create_app(options=OPTIONS)) as served:
        yield served


@pytest.fixture(autouse=True)
def _clean(planetscale: ServedApp, upsun: ServedApp) -> Iterator[None]:
    for served in (planetscale, upsun):
        served.clear_faults()
        served.clear_requests()
    yield
    for served in (planetscale, upsun):
        served.clear_faults()


@pytest.fixture
def memo() -> Iterator[Recording]:
    recording = Recording()
    token = call_memo.set(recording)
    yield recording
    call_memo.reset(token)


@pytest.fixture
async def ps(planetscale: ServedApp) -> AsyncIterator[PlanetScaleAdapter]:
    # One exchange per call: these tests count exchanges (retries are test_resilience.py's).
    adapter = PlanetScaleAdapter(ProviderSettings(base_url=planetscale.url, retries=0))
    yield adapter
    await adapter.aclose()


PS_ACME = PlanetScaleAdapter.parse_credentials(
    planetscale_sandbox.demo_credentials("acme", OPTIONS)
)
UPSUN_GLOBEX = ProviderCredentials(upsun_sandbox.demo_credentials("globex", OPTIONS))


async def test_every_distinct_exchange_once_repeats_never(
    memo: Recording, ps: PlanetScaleAdapter, planetscale: ServedApp
) -> None:
    page = await ps.list_organizations(PS_ACME)
    first, second = page.organizations[0].provider_id, page.organizations[1].provider_id
    await ps.get_organization(PS_ACME, first)
    await ps.get_organization(PS_ACME, first)  # the same GET in the same request: shared
    await ps.get_organization(PS_ACME, second)
    await ps.update_organization(PS_ACME, first, OrganizationUpdate(billing_email="b@x.example"))
    assert len(planetscale.requests()) == 4
    assert [(c.provider, c.status, c.error) for c in memo.calls] == [(PS, 200, None)] * 4
    assert all(c.seconds >= 0 for c in memo.calls)


async def test_failures_are_recorded_with_their_error(
    memo: Recording, ps: PlanetScaleAdapter, planetscale: ServedApp
) -> None:
    page = await ps.list_organizations(PS_ACME)
    name = page.organizations[0].provider_id
    planetscale.fault(status=503, path_prefix=f"/organizations/{name}", times=1)
    with pytest.raises(UpstreamUnavailable) as unavailable:
        await ps.get_organization(PS_ACME, name)
    with pytest.raises(UpstreamNotFound) as missing:
        await ps.get_organization(PS_ACME, "no-such-org")
    planetscale.fault(body="<html>maintenance</html>", content_type="text/html", times=1)
    with pytest.raises(BadUpstreamResponse) as garbled:
        await ps.get_organization(PS_ACME, name)
    await ps.get_organization(PS_ACME, name)  # a failure is not shared later: a new exchange
    assert [(c.status, c.error) for c in memo.calls] == [
        (200, None),
        (503, unavailable.value),
        (404, missing.value),
        (200, garbled.value),
        (200, None),
    ]
    assert len(planetscale.requests()) == 5


async def test_transport_failures_have_no_status(memo: Recording) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # One answer per call: retries are tests/providers/test_resilience.py's.
    settings = ProviderSettings(base_url=f"http://127.0.0.1:{port}", retries=0)
    adapter = PlanetScaleAdapter(settings)
    try:
        with pytest.raises(UpstreamUnavailable) as info:
            await adapter.list_organizations(PS_ACME)
    finally:
        await adapter.aclose()
    assert memo.calls == [Call(PS, memo.calls[0].seconds, None, info.value)]


async def test_token_exchanges_and_retries_are_exchanges_too(
    memo: Recording, upsun: ServedApp
) -> None:
    adapter = UpsunAdapter(
        ProviderSettings(base_url=upsun.url, token_url=upsun.url + upsun_sandbox.TOKEN_PATH)
    )
    try:
        await adapter.list_organizations(UPSUN_GLOBEX)  # token POST, then the GET
        upsun.fault(status=401, path_prefix="/organizations", times=1)
        await adapter.list_organizations(UPSUN_GLOBEX, cursor=None)  # shared: no exchange
        memo.clear()
        await adapter.list_organizations(UPSUN_GLOBEX)  # 401, a new token, the retried GET
    finally:
        await adapter.aclose()
    statuses = [c.status for c in memo.calls]
    assert statuses == [200, 200, 401, 200, 200]
    assert all(c.provider is ProviderName.UPSUN for c in memo.calls)
    assert [type(c.error).__name__ for c in memo.calls if c.error] == ["UpstreamUnauthorized"]
    assert len(upsun.requests()) == len(memo.calls)


async def test_answers_from_the_memo_or_a_cache_are_never_recorded(
    ps: PlanetScaleAdapter, planetscale: ServedApp
) -> None:
    cached = Cached()
    token = call_memo.set(cached)
    try:
        page = await ps.list_organizations(PS_ACME)
    finally:
        call_memo.reset(token)
    assert page.organizations == () and cached.calls == []
    assert planetscale.requests() == []


async def test_seconds_come_from_the_clock(memo: Recording, planetscale: ServedApp) -> None:
    ticks = iter([10.0, 10.25, 20.0, 21.5])
    http = UpstreamHttp(
        provider=PS,
        settings=ProviderSettings(base_url=planetscale.url),
        error_detail=lambda body: None,
        clock=lambda: next(ticks),
    )
    values = planetscale_sandbox.demo_credentials("acme", OPTIONS)
    headers = {"Authorization": f"{values['service_token_id']}:{values['service_token']}"}
    try:
        await http.request("GET", http.url("/organizations"), credentials=PS_ACME, headers=headers)
        with pytest.raises(UpstreamNotFound):
            await http.request(
                "GET", http.url("/organizations/nope"), credentials=PS_ACME, headers=headers
            )
    finally:
        await http.aclose()
    assert [(c.seconds, c.status) for c in memo.calls] == [(0.25, 200), (1.5, 404)]


async def test_no_memo_no_report(ps: PlanetScaleAdapter, planetscale: ServedApp) -> None:
    assert call_memo.get() is None
    await ps.list_organizations(PS_ACME)
    assert len(planetscale.requests()) == 1


def test_credentials_fingerprint_names_the_values_only() -> None:
    # Hashed once and kept on the (frozen) credentials: the same values always give the same
    # fingerprint, other values another, and the kept hash takes no part in equality or repr.
    one = ProviderCredentials({"token": "t-1", "id": "a"})
    same = ProviderCredentials({"id": "a", "token": "t-1"})
    other = ProviderCredentials({"token": "t-2", "id": "a"})
    assert one.fingerprint == same.fingerprint == one.fingerprint
    assert other.fingerprint != one.fingerprint
    assert len(one.fingerprint) == 32 and "t-1" not in one.fingerprint
    assert one == same and one != other
    assert "t-1" not in repr(one) and one.fingerprint not in repr(one)
