"""The resilience policies of ``UpstreamHttp`` (``providers.resilience``), over loopback HTTP
against the sandboxes: retries and what is never retried, ``Retry-After``, full-jitter backoff,
the request deadline, circuit breakers (per origin, half-open probes, logged transitions),
pacing to documented rate limits, bounded concurrency, and what ``record_call`` hears.

Time is a ``FakeClock`` wherever the policy waits (its ``sleep`` moves time at once and records
the wait), so the waits are asserted exactly; in-flight requests are the sandboxes' ``hold``
faults and ``/__sandbox/held``, never sleeps. The gateway-level view (``circuitState``, stale
data while open) is tests/test_resilience.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from providers.base import (
    CircuitOpen,
    DeadlineExceeded,
    OrganizationUpdate,
    PacingRefused,
    ProviderAdapter,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    RateLimit,
    UpstreamError,
    UpstreamHttp,
    UpstreamRateLimited,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    call_memo,
    load_adapter_class,
    request_deadline,
    set_request_deadline,
)
from providers.bundle import sandbox as bundle_sandbox
from providers.bundle.adapter import RATE_LIMITS as BUNDLE_LIMITS
from providers.bundle.adapter import BundleAdapter
from providers.memo import CallMemo
from providers.planetscale import sandbox as planetscale_sandbox
from providers.planetscale.adapter import RATE_LIMITS as PLANETSCALE_LIMITS
from providers.planetscale.adapter import PlanetScaleAdapter
from providers.resilience import (
    MONOTONIC,
    Backoff,
    Clock,
    FakeClock,
    Pacer,
    Pacers,
    effective_rate_limits,
    parse_retry_after,
)
from providers.sandbox_kit import SandboxOptions
from providers.upsun import sandbox as upsun_sandbox
from providers.upsun.adapter import UpsunAdapter
from tests.processes import free_port
from tests.providers.harness import release_held, wait_held
from tests.support import ServedApp, http, serve_app

__all__: list[str] = []

OPTIONS = SandboxOptions(orgs=4, rate_limits=False)
PS = ProviderName.PLANETSCALE
LIST = "/organizations"
PS_ACME = PlanetScaleAdapter.parse_credentials(
    planetscale_sandbox.demo_credentials("acme", OPTIONS)
)
PS_HEADERS = {
    "Authorization": f"{PS_ACME['service_token_id']}:{PS_ACME['service_token']}",
    "Accept": "application/json",
}
UPSUN_GLOBEX = ProviderCredentials(upsun_sandbox.demo_credentials("globex", OPTIONS))
# A guard on waits that must end much sooner: without the feature the test fails, never hangs.
GUARD = 5.0


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ps() -> Iterator[ServedApp]:
    with serve_app(planetscale_sandbox.create_app(options=OPTIONS)) as served:
        yield served


@pytest.fixture(scope="module")
def upsun() -> Iterator[ServedApp]:
    with serve_app(upsun_sandbox.create_app(options=OPTIONS)) as served:
        yield served


def _reset(*servers: ServedApp) -> None:
    for served in servers:
        served.clear_faults()
        http.post(served.url + "/__sandbox/release").raise_for_status()
        served.clear_requests()


@pytest.fixture(autouse=True)
def _clean(ps: ServedApp, upsun: ServedApp) -> Iterator[None]:
    _reset(ps, upsun)
    yield
    _reset(ps, upsun)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def made() -> AsyncIterator[list[UpstreamHttp]]:
    clients: list[UpstreamHttp] = []
    yield clients
    for client in clients:
        await client.aclose()


def make_http(
    made: list[UpstreamHttp],
    base_url: str,
    clock: Clock | None = None,
    *,
    provider: ProviderName = PS,
    seed: int = 7,
    wall_clock: Any = time.time,
    rate_limits: tuple[RateLimit, ...] = (),
    **settings: Any,
) -> UpstreamHttp:
    client = UpstreamHttp(
        provider=provider,
        settings=ProviderSettings(base_url=base_url, **settings),
        error_detail=lambda body: None,
        clock=clock or MONOTONIC,
        random=random.Random(seed),
        wall_clock=wall_clock,
        rate_limits=rate_limits,
    )
    made.append(client)
    return client


async def get(client: UpstreamHttp, path: str = LIST) -> UpstreamResponse:
    return await client.request("GET", client.url(path), credentials=PS_ACME, headers=PS_HEADERS)


@contextlib.contextmanager
def deadline(seconds: float, clock: Clock) -> Iterator[None]:
    token = set_request_deadline(seconds, clock=clock)
    try:
        yield
    finally:
        request_deadline.reset(token)


def sent(served: ServedApp, method: str | None = None) -> int:
    return sum(1 for r in served.requests() if method is None or r["method"] == method)


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 502, 504, 429])
async def test_passing_failures_are_retried_until_the_answer(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock, status: int
) -> None:
    client = make_http(made, ps.url, clock)
    ps.fault(status=status, times=2, path_prefix=LIST)
    response = await get(client)
    assert response.status == 200
    assert sent(ps) == 3
    # A 429 carries the sandbox's Retry-After: 1, and that is the wait; others back off.
    assert len(clock.sleeps) == 2
    if status == 429:
        assert clock.sleeps == [1.0, 1.0]


async def test_a_refused_connection_is_retried(made: list[UpstreamHttp]) -> None:
    port = free_port()
    servers: list[asyncio.Server] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"ok": true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    class ListensOnFirstWait(FakeClock):
        """The upstream comes up while we back off after the refused connection."""

        async def sleep(self, seconds: float) -> None:
            if not servers:
                servers.append(await asyncio.start_server(answer, "127.0.0.1", port))
            await super().sleep(seconds)

    clock = ListensOnFirstWait()
    client = make_http(made, f"http://127.0.0.1:{port}", clock)
    try:
        response = await get(client)
    finally:
        for server in servers:
            server.close()
    assert response.body == {"ok": True}
    assert len(clock.sleeps) == 1 and servers


async def test_connection_failures_exhaust_the_retries(made: list[UpstreamHttp]) -> None:
    memo = Recording()
    client = make_http(made, f"http://127.0.0.1:{free_port()}", FakeClock())
    token = call_memo.set(memo)
    try:
        with pytest.raises(UpstreamUnavailable) as info:
            await get(client)
    finally:
        call_memo.reset(token)
    assert info.value.status is None
    assert [c.status for c in memo.calls] == [None, None, None]  # 1 + retries=2
    assert [r.attempt for r in memo.retries] == [2, 3]


async def test_a_timeout_is_retried(ps: ServedApp, made: list[UpstreamHttp]) -> None:
    # The first attempt is held upstream until its own (real) timeout; the retry is answered.
    client = make_http(made, ps.url, FakeClock(), timeout_seconds=0.3)
    ps.fault(hold=True, times=1, path_prefix=LIST)
    response = await asyncio.wait_for(get(client), GUARD)
    assert response.status == 200
    assert sent(ps) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 500])
async def test_client_errors_and_500_are_not_retried(
    ps: ServedApp, made: list[UpstreamHttp], status: int
) -> None:
    client = make_http(made, ps.url, FakeClock())
    ps.fault(status=503, times=1, path_prefix=LIST)
    assert (await get(client)).status == 200  # a 503 would be retried away...
    ps.clear_requests()
    ps.fault(status=status, times=1, path_prefix=LIST)
    with pytest.raises(UpstreamError) as info:
        await get(client)  # ... this one is final (500: not in the 502/503/504 list)
    assert info.value.status == status
    assert sent(ps) == 1


async def test_a_mutation_is_never_retried(ps: ServedApp, clock: FakeClock) -> None:
    adapter = PlanetScaleAdapter(ProviderSettings(base_url=ps.url), clock=clock)
    try:
        name = (await adapter.list_organizations(PS_ACME)).organizations[0].provider_id
        ps.fault(status=503, times=1, path_prefix=f"{LIST}/{name}")
        assert (await adapter.get_organization(PS_ACME, name)).provider_id == name  # retried
        ps.clear_requests()
        ps.fault(status=503, times=1, path_prefix=f"{LIST}/{name}")
        with pytest.raises(UpstreamUnavailable):
            await adapter.update_organization(
                PS_ACME, name, OrganizationUpdate(billing_email="x@example.org")
            )
    finally:
        await adapter.aclose()
    assert [r["method"] for r in ps.requests()] == ["PATCH"]


async def test_token_requests_are_retried(upsun: ServedApp, clock: FakeClock) -> None:
    adapter = UpsunAdapter(
        ProviderSettings(base_url=upsun.url, token_url=upsun.url + upsun_sandbox.TOKEN_PATH),
        clock=clock,
    )
    upsun.fault(status=503, times=1, path_prefix=upsun_sandbox.TOKEN_PATH)
    try:
        page = await adapter.list_organizations(UPSUN_GLOBEX)
    finally:
        await adapter.aclose()
    assert page.organizations
    assert [r["method"] for r in upsun.requests()] == ["POST", "POST", "GET"]


# --------------------------------------------------------------------------------------------
# Retry-After and backoff
# --------------------------------------------------------------------------------------------

WALL = 1_750_000_000.0  # a fixed wall-clock instant for HTTP-date arithmetic


@pytest.mark.parametrize(
    "value", ["3", email.utils.formatdate(WALL + 3, usegmt=True)], ids=["seconds", "http-date"]
)
async def test_retry_after_is_honoured_within_the_deadline(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock, value: str
) -> None:
    client = make_http(made, ps.url, clock, wall_clock=lambda: WALL)
    ps.fault(status=503, times=1, path_prefix=LIST, headers={"Retry-After": value})
    with deadline(10, clock):
        assert (await get(client)).status == 200
    assert clock.sleeps == [3.0]


@pytest.mark.parametrize(
    "value", ["30", email.utils.formatdate(WALL + 30, usegmt=True)], ids=["seconds", "http-date"]
)
async def test_retry_after_beyond_the_deadline_is_given_up(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock, value: str
) -> None:
    client = make_http(made, ps.url, clock, wall_clock=lambda: WALL)
    ps.fault(status=429, times=1, path_prefix=LIST, headers={"Retry-After": value})
    with deadline(10, clock), pytest.raises(UpstreamRateLimited) as info:
        await get(client)
    assert info.value.code == "UPSTREAM_RATE_LIMITED"
    assert info.value.retry_after == 30.0
    assert clock.sleeps == [] and sent(ps) == 1


async def test_backoff_is_full_jitter_and_seeded(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    client = make_http(made, ps.url, clock, seed=11)
    ps.fault(status=503, times=2, path_prefix=LIST)
    await get(client)
    replay = random.Random(11)
    assert clock.sleeps == [replay.uniform(0, 0.1), replay.uniform(0, 0.2)]


def test_backoff_bounds() -> None:
    backoff = Backoff(random=random.Random(3))
    assert [backoff.ceiling(n) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    for n in range(1, 8):
        delays = [backoff.delay(n) for _ in range(200)]
        assert all(0 <= d <= backoff.ceiling(n) for d in delays)
        assert max(delays) > backoff.ceiling(n) / 2  # spread over the range, not a constant


def test_parse_retry_after() -> None:
    assert parse_retry_after("7", now=WALL) == 7.0
    assert parse_retry_after(" 1.5 ", now=WALL) == 1.5
    assert parse_retry_after(email.utils.formatdate(WALL + 42, usegmt=True), now=WALL) == 42.0
    assert parse_retry_after(email.utils.formatdate(WALL - 5, usegmt=True), now=WALL) == 0.0
    assert parse_retry_after("-3", now=WALL) == 0.0
    for garbage in (None, "", "soon", "inf", "nan"):
        assert parse_retry_after(garbage, now=WALL) is None


# --------------------------------------------------------------------------------------------
# The deadline
# --------------------------------------------------------------------------------------------


async def test_a_passed_deadline_sends_nothing(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    client = make_http(made, ps.url, clock)
    with deadline(0, clock), pytest.raises(DeadlineExceeded) as info:
        await get(client)
    assert info.value.code == "UPSTREAM_TIMEOUT" and "deadline" in info.value.message
    assert sent(ps) == 0


async def test_the_deadline_bounds_retries_and_backoff(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    client = make_http(made, ps.url, clock)
    ps.fault(status=503, path_prefix=LIST, headers={"Retry-After": "0.2"})
    with deadline(0.3, clock), pytest.raises(UpstreamUnavailable) as info:
        await get(client)
    # One retry fits (0.2 s); a second would end past the deadline, so the 503 stands.
    assert clock.sleeps == [0.2] and sent(ps) == 2
    assert info.value.status == 503


async def test_the_deadline_cuts_an_attempt_short(ps: ServedApp, made: list[UpstreamHttp]) -> None:
    client = make_http(made, ps.url, MONOTONIC, timeout_seconds=30)
    ps.fault(hold=True, times=1, path_prefix=LIST)
    started = time.monotonic()
    with deadline(0.3, MONOTONIC), pytest.raises(UpstreamTimeout) as info:
        await asyncio.wait_for(get(client), GUARD)
    assert time.monotonic() - started < 2
    assert "deadline" in info.value.message
    assert sent(ps) == 1  # and it was not retried: no time was left


async def test_the_deadline_bounds_token_exchanges(upsun: ServedApp, clock: FakeClock) -> None:
    adapter = UpsunAdapter(
        ProviderSettings(base_url=upsun.url, token_url=upsun.url + upsun_sandbox.TOKEN_PATH),
        clock=clock,
    )
    upsun.fault(status=503, path_prefix=upsun_sandbox.TOKEN_PATH, headers={"Retry-After": "4"})
    try:
        with deadline(6, clock), pytest.raises(UpstreamUnavailable) as info:
            await adapter.list_organizations(UPSUN_GLOBEX)
    finally:
        await adapter.aclose()
    assert "token exchange" in info.value.message
    assert clock.sleeps == [4.0]
    assert [r["method"] for r in upsun.requests()] == ["POST", "POST"]


async def test_joining_an_exchange_waits_no_longer_than_the_own_deadline(
    upsun: ServedApp,
) -> None:
    adapter = UpsunAdapter(
        ProviderSettings(base_url=upsun.url, token_url=upsun.url + upsun_sandbox.TOKEN_PATH)
    )
    upsun.fault(hold=True, times=1, path_prefix=upsun_sandbox.TOKEN_PATH)
    try:
        patient = asyncio.ensure_future(adapter.list_organizations(UPSUN_GLOBEX))  # no deadline
        await wait_held(upsun, 1)
        with deadline(0.2, MONOTONIC), pytest.raises(DeadlineExceeded) as info:
            await asyncio.wait_for(adapter.list_organizations(UPSUN_GLOBEX), GUARD)
        assert "access token" in info.value.message
        assert not patient.done()
        await release_held(upsun)
        assert (await patient).organizations  # the exchange went on for the patient caller
    finally:
        await adapter.aclose()
    assert [r["method"] for r in upsun.requests()] == ["POST", "GET"]


# --------------------------------------------------------------------------------------------
# Circuit breakers
# --------------------------------------------------------------------------------------------


async def test_consecutive_failures_open_the_circuit_and_it_fails_fast(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    client = make_http(made, ps.url, clock, retries=0, breaker_failures=3)
    ps.fault(status=503, path_prefix=LIST)
    for _ in range(3):
        assert client.circuit_state() == "CLOSED"
        with pytest.raises(UpstreamUnavailable):
            await get(client)
    assert client.circuit_state() == "OPEN"
    with pytest.raises(CircuitOpen) as info:
        await get(client)
    assert info.value.code == "UPSTREAM_UNAVAILABLE" and "circuit" in info.value.message
    assert info.value.retry_after == 30.0
    assert sent(ps) == 3  # failing fast sent nothing


async def test_every_failed_attempt_counts(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    # A dead provider opens the circuit within one call: each retry is a failure too.
    client = make_http(made, ps.url, clock, retries=2, breaker_failures=3)
    ps.fault(status=503, path_prefix=LIST)
    with pytest.raises(UpstreamUnavailable):
        await get(client)
    assert sent(ps) == 3 and client.circuit_state() == "OPEN"


@pytest.mark.parametrize("status", [401, 403, 404, 429])
async def test_answers_below_500_never_open_the_circuit(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock, status: int
) -> None:
    client = make_http(made, ps.url, clock, retries=0, breaker_failures=2)
    ps.fault(status=status, times=5, path_prefix=LIST)
    for _ in range(5):
        with pytest.raises(UpstreamError):
            await get(client)
    assert client.circuit_state() == "CLOSED"
    # ... and they reset the count: failure, 4xx answer, failure is not two in a row.
    for fault in (503, status, 503):
        ps.fault(status=fault, times=1, path_prefix=LIST)
        with pytest.raises(UpstreamError):
            await get(client)
    assert client.circuit_state() == "CLOSED"
    ps.fault(status=503, times=1, path_prefix=LIST)
    with pytest.raises(UpstreamUnavailable):
        await get(client)
    assert client.circuit_state() == "OPEN"


async def test_half_open_lets_exactly_one_probe_through_and_closes_on_its_answer(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orggraph.breaker")
    client = make_http(made, ps.url, clock, retries=0, breaker_failures=1)
    ps.fault(status=503, times=1, path_prefix=LIST)
    with pytest.raises(UpstreamUnavailable):
        await get(client)
    assert client.circuit_state() == "OPEN"
    clock.advance(29)
    with pytest.raises(CircuitOpen):
        await get(client)
    clock.advance(1)
    assert client.circuit_state() == "HALF_OPEN"

    ps.fault(hold=True, times=1, path_prefix=LIST)
    probe = asyncio.ensure_future(get(client))
    await wait_held(ps, 1)  # the probe is in flight
    for _ in range(3):
        with pytest.raises(CircuitOpen) as info:
            await get(client)  # everyone else fails fast meanwhile
        assert "probe" in info.value.message
    assert sent(ps) == 2  # the failure and the probe
    assert await release_held(ps) == 1
    assert (await probe).status == 200
    assert client.circuit_state() == "CLOSED"
    assert (await get(client)).status == 200

    lines = [r.getMessage() for r in caplog.records if r.name == "orggraph.breaker"]
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines] == [
        "CLOSED -> OPEN",
        "OPEN -> HALF_OPEN",
        "HALF_OPEN -> CLOSED",
    ]
    assert all(line.startswith(f"circuit planetscale {ps.url}") for line in lines)
    assert "HTTP 503" in lines[0] and "probe answered HTTP 200" in lines[2]
    assert not any(PS_ACME["service_token"] in line for line in lines)


async def test_a_failed_probe_reopens_and_restarts_the_cooldown(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    client = make_http(made, ps.url, clock, retries=0, breaker_failures=1)
    ps.fault(status=503, times=2, path_prefix=LIST)
    with pytest.raises(UpstreamUnavailable):
        await get(client)
    clock.advance(30)
    with pytest.raises(UpstreamUnavailable) as probe:
        await get(client)
    assert not isinstance(probe.value, CircuitOpen) and probe.value.status == 503
    assert client.circuit_state() == "OPEN"
    clock.advance(29)
    with pytest.raises(CircuitOpen):
        await get(client)
    assert sent(ps) == 2
    clock.advance(1)
    assert (await get(client)).status == 200
    assert client.circuit_state() == "CLOSED"


async def test_a_cancelled_probe_passes_the_turn_on(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    client = make_http(made, ps.url, clock, retries=0, breaker_failures=1)
    ps.fault(status=503, times=1, path_prefix=LIST)
    with pytest.raises(UpstreamUnavailable):
        await get(client)
    clock.advance(30)
    ps.fault(hold=True, times=1, path_prefix=LIST)
    probe = asyncio.ensure_future(get(client))
    await wait_held(ps, 1)
    probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    assert client.circuit_state() == "HALF_OPEN"
    assert (await get(client)).status == 200  # the next caller probes
    assert client.circuit_state() == "CLOSED"


async def test_a_token_endpoint_on_another_origin_has_its_own_circuit(
    upsun: ServedApp, clock: FakeClock
) -> None:
    auth = f"http://127.0.0.1:{free_port()}/oauth2/token"
    adapter = UpsunAdapter(
        ProviderSettings(base_url=upsun.url, token_url=auth, retries=0, breaker_failures=2),
        clock=clock,
    )
    try:
        for _ in range(2):
            with pytest.raises(UpstreamUnavailable) as info:
                await adapter.list_organizations(UPSUN_GLOBEX)
            assert not isinstance(info.value, CircuitOpen)
        with pytest.raises(CircuitOpen) as info:
            await adapter.list_organizations(UPSUN_GLOBEX)
        assert "circuit" in info.value.message
        # The worse of the two circuits: a request needing a token cannot get through.
        assert adapter.circuit_state() == "OPEN"
    finally:
        await adapter.aclose()
    assert upsun.requests() == []


def test_every_adapter_reports_its_circuit() -> None:
    for provider in ProviderName:
        settings = ProviderSettings(base_url="http://x.invalid")
        adapter = load_adapter_class(provider)(settings)  # type: ignore[call-arg]
        assert isinstance(adapter, ProviderAdapter)
        assert adapter.circuit_state() == "CLOSED"


# --------------------------------------------------------------------------------------------
# Pacing
# --------------------------------------------------------------------------------------------

BUNDLE_OPTIONS = SandboxOptions(orgs=3, rate_limits=True)


@dataclass
class PacedBundle:
    served: ServedApp
    clock: FakeClock


@pytest.fixture
def paced_bundle() -> Iterator[PacedBundle]:
    # The sandbox's throttle runs on the same fake clock: its windows and our pacing agree.
    clock = FakeClock()
    app = bundle_sandbox.create_app(options=BUNDLE_OPTIONS, clock=clock.now)
    with serve_app(app) as served:
        yield PacedBundle(served, clock)


def bundle_key(index: int) -> ProviderCredentials:
    return BundleAdapter.parse_credentials(
        {"api_key": bundle_sandbox.api_key_for_org(index, BUNDLE_OPTIONS)}
    )


async def test_bundle_windows_delay_calls_instead_of_drawing_429s(
    paced_bundle: PacedBundle,
) -> None:
    served, clock = paced_bundle.served, paced_bundle.clock
    adapter = BundleAdapter(ProviderSettings(base_url=served.url), clock=clock)
    try:
        for _ in range(21):
            await adapter.list_organizations(bundle_key(0))
        # Another key has a budget of its own.
        for _ in range(5):
            await adapter.list_organizations(bundle_key(1))
    finally:
        await adapter.aclose()
    # 5 per second: the 6th, 11th and 16th wait a second; 20 per 10 s: the 21st waits until
    # the first of them is 10 s old. The sandbox answered every request (none was a 429).
    assert clock.sleeps == [1.0, 1.0, 1.0, 7.0]
    assert sent(served) == 26


async def test_a_pacing_wait_past_the_deadline_is_refused_without_a_call(
    paced_bundle: PacedBundle,
) -> None:
    served, clock = paced_bundle.served, paced_bundle.clock
    adapter = BundleAdapter(ProviderSettings(base_url=served.url), clock=clock)
    try:
        for _ in range(5):
            await adapter.list_organizations(bundle_key(0))
        with deadline(0.5, clock), pytest.raises(UpstreamRateLimited) as info:
            await adapter.list_organizations(bundle_key(0))
    finally:
        await adapter.aclose()
    assert isinstance(info.value, PacingRefused) and info.value.code == "UPSTREAM_RATE_LIMITED"
    assert info.value.retry_after == 1.0
    assert clock.sleeps == [] and sent(served) == 5


async def test_configured_limits_replace_the_documented_ones(paced_bundle: PacedBundle) -> None:
    served, clock = paced_bundle.served, paced_bundle.clock
    stricter = BundleAdapter(
        ProviderSettings(base_url=served.url, rate_limit_per_second=2), clock=clock
    )
    # rate_limit_per_second = 0 and no per-minute key: pacing off, so the sandbox says 429.
    unpaced = BundleAdapter(
        ProviderSettings(base_url=served.url, rate_limit_per_second=0, retries=0), clock=clock
    )
    try:
        for _ in range(3):
            await stricter.list_organizations(bundle_key(0))
        assert clock.sleeps == [1.0]  # the 3rd waited: 2 per second, not the documented 5
        for _ in range(5):
            await unpaced.list_organizations(bundle_key(1))
        with pytest.raises(UpstreamRateLimited) as info:
            await unpaced.list_organizations(bundle_key(1))
    finally:
        await stricter.aclose()
        await unpaced.aclose()
    assert info.value.status == 429 and clock.sleeps == [1.0]


def test_documented_and_effective_limits() -> None:
    assert (RateLimit(5, 1.0), RateLimit(20, 10.0), RateLimit(100, 60.0)) == BUNDLE_LIMITS
    assert (RateLimit(600, 60.0),) == PLANETSCALE_LIMITS
    assert effective_rate_limits(BUNDLE_LIMITS, per_second=None, per_minute=None) == BUNDLE_LIMITS
    assert effective_rate_limits(BUNDLE_LIMITS, per_second=2, per_minute=None) == (
        RateLimit(2, 1.0),
    )
    assert effective_rate_limits((), per_second=3, per_minute=50) == (
        RateLimit(3, 1.0),
        RateLimit(50, 60.0),
    )
    assert effective_rate_limits(PLANETSCALE_LIMITS, per_second=None, per_minute=0) == ()


def test_pacer_arithmetic() -> None:
    pacer = Pacer(PLANETSCALE_LIMITS)
    for _ in range(600):
        assert pacer.next_slot(100.0) == 100.0
        pacer.take(100.0)
    assert pacer.next_slot(100.0) == 160.0
    assert pacer.next_slot(170.0) == 170.0
    # Reserved slots queue up in order: concurrent waiters do not all wake at once.
    burst = Pacer([RateLimit(2, 1.0)])
    slots = []
    for _ in range(5):
        at = burst.next_slot(0.0)
        burst.take(at)
        slots.append(at)
    assert slots == [0.0, 0.0, 1.0, 1.0, 2.0]


def test_pacers_are_bounded() -> None:
    pacers = Pacers(BUNDLE_LIMITS, max_entries=2)
    first = pacers.get("a")
    pacers.get("b")
    assert pacers.get("a") is first  # recently used: kept
    pacers.get("c")  # evicts "b", the least recently used
    assert len(pacers) == 2 and pacers.get("a") is first


# --------------------------------------------------------------------------------------------
# Bounded concurrency
# --------------------------------------------------------------------------------------------


async def test_max_concurrency_bounds_requests_in_flight(
    ps: ServedApp, made: list[UpstreamHttp]
) -> None:
    client = make_http(made, ps.url, max_concurrency=2)
    other = make_http(made, ps.url, provider=ProviderName.CAPYDB)  # another provider's pool
    ps.fault(hold=True, times=2, path_prefix=LIST)
    calls = [asyncio.ensure_future(get(client)) for _ in range(5)]
    await wait_held(ps, 2)
    assert client.in_flight == 2
    assert sent(ps) == 2  # the other three wait for a slot here, not upstream
    assert (await get(other)).status == 200  # no slot or lock shared across providers
    assert await release_held(ps) == 2
    assert [r.status for r in await asyncio.gather(*calls)] == [200] * 5
    assert client.in_flight == 0 and sent(ps) == 6


async def test_waiting_for_a_slot_is_bounded_by_the_deadline(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    client = make_http(made, ps.url, clock, max_concurrency=1)
    ps.fault(hold=True, times=1, path_prefix=LIST)
    holder = asyncio.ensure_future(get(client))
    await wait_held(ps, 1)
    with deadline(0.5, clock), pytest.raises(DeadlineExceeded) as info:
        await get(client)
    assert "slot" in info.value.message and clock.sleeps == [0.5]
    assert sent(ps) == 1
    await release_held(ps)
    assert (await holder).status == 200
    assert client.in_flight == 0


# --------------------------------------------------------------------------------------------
# What the request's memo hears
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    status: int | None
    error: UpstreamError | None


@dataclass(frozen=True)
class Retry:
    attempt: int
    wait: float
    status: int | None


class Recording(CallMemo):
    """Both observers: ``record_call`` (the gateway's current signature) and the optional
    ``record_retry``."""

    __slots__ = ("calls", "retries")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.retries: list[Retry] = []

    def record_call(
        self,
        provider: ProviderName,
        *,
        seconds: float,
        status: int | None,
        error: UpstreamError | None,
    ) -> None:
        self.calls.append(Call(status, error))

    def record_retry(
        self, provider: ProviderName, *, attempt: int, wait: float, error: UpstreamError
    ) -> None:
        self.retries.append(Retry(attempt, wait, error.status))


async def test_every_attempt_is_an_exchange_and_every_retry_is_reported(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    client = make_http(made, ps.url, clock)
    memo = Recording()
    ps.fault(status=503, times=1, path_prefix=LIST)
    ps.fault(status=429, times=1, path_prefix=LIST)
    token = call_memo.set(memo)
    try:
        assert (await get(client)).status == 200
        assert (await get(client)).status == 200  # shared in the request: no exchange at all
    finally:
        call_memo.reset(token)
    assert [c.status for c in memo.calls] == [503, 429, 200]
    assert memo.retries == [Retry(2, clock.sleeps[0], 503), Retry(3, 1.0, 429)]


async def test_a_memo_without_record_retry_still_works(
    ps: ServedApp, made: list[UpstreamHttp], clock: FakeClock
) -> None:
    class CallsOnly(CallMemo):
        def record_call(
            self,
            provider: ProviderName,
            *,
            seconds: float,
            status: int | None,
            error: UpstreamError | None,
        ) -> None:
            statuses.append(status)

    statuses: list[int | None] = []
    client = make_http(made, ps.url, clock)
    ps.fault(status=503, times=1, path_prefix=LIST)
    token = call_memo.set(CallsOnly())
    try:
        assert (await get(client)).status == 200
    finally:
        call_memo.reset(token)
    assert statuses == [503, 200]


async def test_an_unauthorized_token_is_refreshed_once_not_retried(
    upsun: ServedApp, clock: FakeClock
) -> None:
    adapter = UpsunAdapter(
        ProviderSettings(base_url=upsun.url, token_url=upsun.url + upsun_sandbox.TOKEN_PATH),
        clock=clock,
    )
    try:
        upsun.fault(status=503, times=1, path_prefix=LIST)
        await adapter.list_organizations(UPSUN_GLOBEX)  # token, 503, the retried GET
        assert [r["method"] for r in upsun.requests()] == ["POST", "GET", "GET"]
        upsun.clear_requests()
        sleeps = len(clock.sleeps)
        upsun.fault(status=401, times=2, path_prefix=LIST)
        with pytest.raises(UpstreamUnauthorized):
            await adapter.list_organizations(UPSUN_GLOBEX)
    finally:
        await adapter.aclose()
    # 401, fresh token, 401: the refresh is the adapter's; a 401 is never retried.
    assert [r["method"] for r in upsun.requests()] == ["GET", "POST", "GET"]
    assert len(clock.sleeps) == sleeps


# --------------------------------------------------------------------------------------------
# The happy path stays cheap
# --------------------------------------------------------------------------------------------


async def test_the_happy_path_costs_microseconds() -> None:
    """A loop over a fake, instant exchange: what the resilience layer adds per call (deadline,
    breaker, slot, and pacing where configured). A loose bound here; the figure is in the
    report of the change that added the layer."""
    per_call = await happy_path_overhead(calls=5000)
    assert per_call["plain"] < 25e-6 and per_call["paced"] < 25e-6, per_call


async def happy_path_overhead(calls: int) -> dict[str, float]:
    canned = UpstreamResponse(status=200, headers={}, body={}, url="http://bench.invalid/x")

    async def instant(*args: Any, timeout: float | None = None) -> UpstreamResponse:
        return canned

    results: dict[str, float] = {}
    for name, limits in (("plain", ()), ("paced", (RateLimit(10**9, 60.0),))):
        client = UpstreamHttp(
            provider=PS,
            settings=ProviderSettings(base_url="http://bench.invalid"),
            error_detail=lambda body: None,
            rate_limits=limits,
        )
        client._send = instant  # type: ignore[method-assign]
        url = client.url(LIST)
        args = ("GET", url, PS_ACME, PS_HEADERS, None, None, None, None, True)
        token = set_request_deadline(60)
        try:
            best_direct = best_full = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(calls):
                    await instant(*args)
                best_direct = min(best_direct, time.perf_counter() - started)
                started = time.perf_counter()
                for _ in range(calls):
                    await client.request("GET", url, credentials=PS_ACME, headers=PS_HEADERS)
                best_full = min(best_full, time.perf_counter() - started)
        finally:
            request_deadline.reset(token)
            await client.aclose()
        results[name] = (best_full - best_direct) / calls
    return results
