"""Shape checks (``UpstreamHttp.request``'s ``check``): a 200 whose JSON is of the wrong shape
is refused before it is shared or cached.

Without them, a parseable but wrongly-shaped answer (``[]`` where an object is due) was stored
as a fresh cache entry before the adapter found it unusable, so every request failed from the
cache for the whole TTL, and stale-if-error could not help (the bad entry was "fresh"). Here,
over loopback against the sandboxes and the gateway's real cache: one wrong answer is one
failure, the next request goes upstream again, and an expired good copy is served in its place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gateway.cache import CacheLayer, RequestScope, build_cache
from gateway.settings import CacheSettings
from providers.base import (
    BadUpstreamResponse,
    ProviderName,
    ProviderSettings,
    UpstreamHttp,
    call_memo,
)
from providers.bundle import sandbox as bundle_sandbox
from providers.bundle.adapter import POSTS_USAGE_PATH, BundleAdapter
from providers.planetscale import sandbox as planetscale_sandbox
from providers.planetscale.adapter import PlanetScaleAdapter
from providers.sandbox_kit import SandboxOptions
from tests.conftest import ORG_LIST_PATHS, Deployment, MakeGateway
from tests.support import ServedApp, serve_app

__all__: list[str] = []

OPTIONS = SandboxOptions(orgs=4, rate_limits=False)
PS_ACME = PlanetScaleAdapter.parse_credentials(
    planetscale_sandbox.demo_credentials("acme", OPTIONS)
)
PS_HEADERS = {
    "Authorization": f"{PS_ACME['service_token_id']}:{PS_ACME['service_token']}",
    "Accept": "application/json",
}
LIST_PATH = "/organizations"


def _fresh_cache(ttl: float = 300.0, stale: float = 600.0) -> CacheLayer:
    """The gateway's own upstream-read cache (memory backend), as ``RequestScope`` uses it."""
    settings = CacheSettings(backend="memory", ttl_seconds=ttl, stale_seconds=stale)
    return build_cache(settings, {})


def _sandbox_paths(served: ServedApp) -> list[str]:
    return [r["path"] for r in served.requests()]


# --------------------------------------------------------------------------------------------
# UpstreamHttp: what a failing check does (one PlanetScale sandbox of its own)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ps() -> Iterator[ServedApp]:
    with serve_app(planetscale_sandbox.create_app(options=OPTIONS)) as served:
        yield served


@pytest.fixture
async def client(ps: ServedApp) -> AsyncIterator[UpstreamHttp]:
    ps.clear_faults()
    ps.clear_requests()
    # Retries on, so that "not retried" means something; the breaker cannot open.
    settings = ProviderSettings(base_url=ps.url, timeout_seconds=5.0, retries=2, breaker_failures=0)
    instance = UpstreamHttp(
        provider=ProviderName.PLANETSCALE, settings=settings, error_detail=lambda _b: None
    )
    yield instance
    await instance.aclose()
    ps.clear_faults()
    ps.clear_requests()


class Checks:
    """A ``check`` that counts its calls and refuses anything but PlanetScale's list envelope."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []

    def __call__(self, body: Any) -> None:
        self.bodies.append(body)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise BadUpstreamResponse(ProviderName.PLANETSCALE, "not a list envelope")


async def _get(client: UpstreamHttp, scope: RequestScope | None, check: Checks) -> Any:
    token = call_memo.set(scope)
    try:
        response = await client.request(
            "GET", client.url(LIST_PATH), credentials=PS_ACME, headers=PS_HEADERS, check=check
        )
    finally:
        call_memo.reset(token)
    return response.body


async def test_a_failing_check_is_neither_retried_nor_cached(
    ps: ServedApp, client: UpstreamHttp
) -> None:
    layer = _fresh_cache()
    check = Checks()
    ps.fault(body_mode="wrong_shape", times=1, path_prefix=LIST_PATH)
    with pytest.raises(BadUpstreamResponse, match="not a list envelope"):
        await _get(client, layer.scope("t"), check)
    assert _sandbox_paths(ps) == [LIST_PATH]  # one exchange: no retry
    assert check.bodies == [[]]  # the wrong shape, as parsed

    # The next request (another scope, the same cache) goes upstream again: nothing was stored.
    body = await _get(client, layer.scope("t"), check)
    assert isinstance(body["data"], list) and body["data"]
    assert _sandbox_paths(ps) == [LIST_PATH, LIST_PATH]
    # That good answer was stored; a cache hit is not checked again (it passed on arrival).
    assert await _get(client, layer.scope("t"), check) == body
    assert len(ps.requests()) == 2
    assert len(check.bodies) == 2


async def test_a_refused_answer_reaches_every_caller_sharing_the_read(
    ps: ServedApp, client: UpstreamHttp
) -> None:
    layer = _fresh_cache()
    scope = layer.scope("t")
    check = Checks()
    ps.fault(body_mode="wrong_shape", times=1, path_prefix=LIST_PATH)
    results = await asyncio.gather(
        _get(client, scope, check), _get(client, scope, check), return_exceptions=True
    )
    assert all(isinstance(r, BadUpstreamResponse) for r in results), results
    assert len(ps.requests()) == 1 and len(check.bodies) == 1  # one read, checked once
    # A later call in the same request is not handed the refused answer either.
    assert (await _get(client, scope, check))["data"]


async def test_the_check_applies_without_a_memo_and_to_any_method(
    ps: ServedApp, client: UpstreamHttp
) -> None:
    check = Checks()
    ps.fault(body_mode="wrong_shape", times=1, path_prefix=LIST_PATH)
    with pytest.raises(BadUpstreamResponse):
        await _get(client, None, check)
    assert len(ps.requests()) == 1

    name = (await _get(client, None, check))["data"][0]["name"]
    seen: list[Any] = []
    response = await client.request(
        "PATCH",
        client.url(f"{LIST_PATH}/{name}"),
        credentials=PS_ACME,
        headers=PS_HEADERS,
        json={"billing_email": "shape-checks@example.com"},
        check=seen.append,
    )
    assert seen == [response.body] and response.body["name"] == name


async def test_without_a_check_a_wrong_shape_is_the_callers_to_judge(
    ps: ServedApp, client: UpstreamHttp
) -> None:
    ps.fault(body_mode="wrong_shape", times=1, path_prefix=LIST_PATH)
    response = await client.request(
        "GET", client.url(LIST_PATH), credentials=PS_ACME, headers=PS_HEADERS
    )
    assert response.status == 200 and response.body == []


# --------------------------------------------------------------------------------------------
# An adapter GET the gateway tests below do not reach: bundle's /usage/posts
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_without_usage() -> Iterator[ServedApp]:
    app = bundle_sandbox.create_app(options=OPTIONS, include_usage=False)
    with serve_app(app) as served:
        yield served


async def test_bundle_posts_usage_is_checked_before_it_is_cached(
    bundle_without_usage: ServedApp,
) -> None:
    served = bundle_without_usage
    served.clear_faults()
    served.clear_requests()
    adapter = BundleAdapter(ProviderSettings(base_url=served.url, rate_limit_per_minute=0))
    credentials = BundleAdapter.parse_credentials(bundle_sandbox.demo_credentials("acme", OPTIONS))
    layer = _fresh_cache()

    async def usage() -> Any:
        token = call_memo.set(layer.scope("t"))
        try:
            page = await adapter.list_organizations(credentials)
            return await adapter.get_usage(credentials, page.organizations[0])
        finally:
            call_memo.reset(token)

    try:
        served.fault(body_mode="wrong_shape", times=1, path_prefix=POSTS_USAGE_PATH)
        with pytest.raises(BadUpstreamResponse, match="posts usage"):
            await usage()
        record = await usage()
        assert record is not None and record.metrics[0].key == "monthly_posts"
        assert _sandbox_paths(served).count(POSTS_USAGE_PATH) == 2
    finally:
        await adapter.aclose()
        served.clear_faults()
        served.clear_requests()


# --------------------------------------------------------------------------------------------
# The gateway over the five sandboxes, with its real cache
# --------------------------------------------------------------------------------------------

LIST = """query($p: [Provider!]) { organizations(first: 100, providers: $p) {
  nodes { provider providerId name } } }"""
ORG = """query($p: Provider!, $id: String!) { organization(provider: $p, id: $id) {
  providerId name usage { metrics { key value } } subscriptions { nodes { providerId } } } }"""
CACHED = {"backend": "memory", "ttl_seconds": 300, "stale_seconds": 600}


def _codes(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["extensions"]["code"], e["extensions"].get("provider")) for e in body["errors"]]


def _list(gw: Deployment, provider: ProviderName) -> dict[str, Any]:
    body: dict[str, Any] = gw.query(LIST, {"p": [provider.name]}).json()
    return body


@pytest.mark.parametrize("provider", list(ProviderName), ids=lambda p: p.key)
def test_one_wrong_shaped_list_page_fails_one_request_only(
    make_gateway: MakeGateway, provider: ProviderName
) -> None:
    gw = make_gateway(cache=CACHED)
    served = gw.sandboxes[provider]
    served.fault(body_mode="wrong_shape", times=1, path_prefix=ORG_LIST_PATHS[provider])
    failed = _list(gw, provider)
    assert _codes(failed) == [("BAD_UPSTREAM_RESPONSE", provider.name)]
    assert failed["data"]["organizations"]["nodes"] == []

    # The fault is spent: the very next identical query is answered, not failed from the cache.
    answered = _list(gw, provider)
    assert "errors" not in answered, answered["errors"]
    nodes = answered["data"]["organizations"]["nodes"]
    assert nodes and {n["provider"] for n in nodes} == {provider.name}


@pytest.mark.parametrize("provider", list(ProviderName), ids=lambda p: p.key)
def test_a_wrong_shaped_answer_gives_way_to_the_stale_copy(
    make_gateway: MakeGateway, provider: ProviderName
) -> None:
    gw = make_gateway(cache={"backend": "memory", "ttl_seconds": 0.001, "stale_seconds": 600})
    warm = gw.data(LIST, {"p": [provider.name]})
    assert warm["organizations"]["nodes"]
    time.sleep(0.05)  # every entry is past its TTL, well inside stale_seconds
    gw.sandboxes[provider].fault(
        body_mode="wrong_shape", times=1, path_prefix=ORG_LIST_PATHS[provider]
    )
    body = _list(gw, provider)
    assert "errors" not in body, body["errors"]
    assert body["data"] == warm
    (stale,) = body["extensions"]["stale"]
    assert stale["provider"] == provider.name
    # The wrong answer did reach the gateway (it was not served around).
    assert any(r["path"] == ORG_LIST_PATHS[provider] for r in gw.sandboxes[provider].requests())


# Each provider's other GETs behind ``organization(provider:, id:)`` (its list is above; bundle
# and, for usage, PlanetScale and LOKE serve it from the organization object itself).
OTHER_GETS = [
    (ProviderName.CAPYDB, "/v1/organizations/{id}"),
    (ProviderName.CAPYDB, "/v1/organizations/{id}/usage"),
    (ProviderName.PLANETSCALE, "/organizations/{id}"),
    (ProviderName.LOKE, "/organizations/{id}"),
    (ProviderName.UPSUN, "/organizations/{id}"),
    (ProviderName.UPSUN, "/organizations/{id}/subscriptions"),
]


@pytest.mark.parametrize(
    ("provider", "path"), OTHER_GETS, ids=[f"{p.key}:{path}" for p, path in OTHER_GETS]
)
def test_other_wrong_shaped_gets_fail_one_request_only(
    make_gateway: MakeGateway, provider: ProviderName, path: str
) -> None:
    gw = make_gateway(cache=CACHED)
    provider_id = gw.data(LIST, {"p": [provider.name]})["organizations"]["nodes"][0]["providerId"]
    variables = {"p": provider.name, "id": provider_id}
    target = path.format(id=provider_id)
    gw.sandboxes[provider].clear_requests()
    gw.sandboxes[provider].fault(body_mode="wrong_shape", times=1, path_prefix=target)
    failed = gw.query(ORG, variables).json()
    assert ("BAD_UPSTREAM_RESPONSE", provider.name) in _codes(failed)
    assert target in _sandbox_paths(gw.sandboxes[provider])

    answered = gw.query(ORG, variables).json()
    assert "errors" not in answered, answered["errors"]
    assert answered["data"]["organization"]["providerId"] == provider_id
