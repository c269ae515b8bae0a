"""Caching over HTTP: upstream reads, whole responses, APQ, stale-if-error, coalescing.

Every claim is checked on the sandboxes' own request logs: a cache hit is an upstream request
that did not happen.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import pytest

from providers.base import ProviderName
from tests.conftest import KEYS, Deployment, MakeGateway
from tests.support import http

ORG = "query($id: String!) { organization(provider: PLANETSCALE, id: $id) { name billingEmail } }"
DASHBOARD = """{ organizations(first: 100) { nodes { provider providerId name
  subscriptions(first: 5) { nodes { status } } usage { metrics { key value } } } } }"""


@pytest.fixture
def make_gateway(make_gateway: MakeGateway) -> MakeGateway:
    """conftest's factory, with a memory cache unless the test says otherwise."""

    def make(
        cache: dict[str, Any] | None = None,
        provider_ttls: dict[ProviderName, float] | None = None,
        timeout: float = 5.0,
    ) -> Deployment:
        return make_gateway(
            cache=cache or {"backend": "memory", "ttl_seconds": 30, "stale_seconds": 60},
            provider_ttls=provider_ttls,
            timeout=timeout,
        )

    return make


def upstream_calls(gw: Deployment) -> int:
    """API calls made so far (token exchanges excluded: they are cached per process anyway)."""
    return sum(
        1 for log in gw.upstream_requests().values() for r in log if not r["path"].endswith("token")
    )


def planetscale_name(gw: Deployment, tenant: str = "acme") -> str:
    nodes = gw.data(
        "{ organizations(first: 1, providers: [PLANETSCALE]) { nodes { providerId } } }",
        tenant=tenant,
    )["organizations"]["nodes"]
    return str(nodes[0]["providerId"])


def test_repeated_dashboard_query_makes_no_upstream_calls(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    first = gw.query(DASHBOARD)
    assert first.headers["x-orggraph-cache"] == "miss"
    calls = upstream_calls(gw)
    assert calls > 5
    second = gw.query(DASHBOARD)
    assert second.headers["x-orggraph-cache"] == "hit"
    assert second.json() == first.json()
    assert upstream_calls(gw) == calls


def test_upstream_reads_are_cached_across_different_queries(make_gateway: MakeGateway) -> None:
    gw = make_gateway(cache={"backend": "memory", "response_cache": False})
    gw.data(DASHBOARD)
    calls = upstream_calls(gw)
    # A different document over the same upstream reads: executed, but served from cache.
    response = gw.query(DASHBOARD.replace("name", "name slug"))
    assert "x-orggraph-cache" not in response.headers
    assert "errors" not in response.json()
    assert upstream_calls(gw) == calls


def test_cache_is_per_tenant(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    acme = gw.data(DASHBOARD, tenant="acme")
    calls = upstream_calls(gw)
    globex = gw.data(DASHBOARD, tenant="globex")
    assert upstream_calls(gw) > calls, "globex was answered from acme's cache"
    acme_ids = {n["providerId"] for n in acme["organizations"]["nodes"]}
    globex_ids = {n["providerId"] for n in globex["organizations"]["nodes"]}
    assert not acme_ids & globex_ids


def test_per_provider_ttl_zero_disables_caching_for_that_provider(
    make_gateway: MakeGateway,
) -> None:
    gw = make_gateway(provider_ttls={ProviderName.LOKE: 0})
    query = "{ organizations(first: 100, providers: [LOKE, PLANETSCALE]) { nodes { id } } }"
    gw.data(query)
    before = {p: len(log) for p, log in gw.upstream_requests().items()}
    response = gw.query(query)
    assert response.headers["x-orggraph-cache"] == "miss"  # LOKE data is never reusable
    after = {p: len(log) for p, log in gw.upstream_requests().items()}
    assert after[ProviderName.LOKE] > before[ProviderName.LOKE]
    assert after[ProviderName.PLANETSCALE] == before[ProviderName.PLANETSCALE]


def test_response_cache_expires_with_the_shortest_ttl(make_gateway: MakeGateway) -> None:
    gw = make_gateway(
        cache={"backend": "memory", "ttl_seconds": 30},
        provider_ttls={ProviderName.PLANETSCALE: 1},
    )
    name = planetscale_name(gw)
    assert gw.query(ORG, {"id": name}).headers["x-orggraph-cache"] == "miss"
    assert gw.query(ORG, {"id": name}).headers["x-orggraph-cache"] == "hit"
    calls = upstream_calls(gw)
    time.sleep(1.2)
    assert gw.query(ORG, {"id": name}).headers["x-orggraph-cache"] == "miss"
    assert upstream_calls(gw) == calls + 1


def test_health_and_failed_responses_are_never_reused(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    query = "{ providers { provider recentCalls } }"
    assert gw.query(query).headers["x-orggraph-cache"] == "miss"
    assert gw.query(query).headers["x-orggraph-cache"] == "miss"
    gw.sandboxes[ProviderName.UPSUN].fault(status=503, path_prefix="/organizations")
    failing = "{ organizations(first: 100, providers: [UPSUN]) { nodes { id } } }"
    assert gw.query(failing).json()["errors"]
    gw.sandboxes[ProviderName.UPSUN].clear_faults()
    body = gw.query(failing).json()
    assert "errors" not in body and body["data"]["organizations"]["nodes"]


def test_mutation_invalidates_what_it_changed(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    name = planetscale_name(gw)
    before = gw.data(ORG, {"id": name})["organization"]
    assert gw.query(ORG, {"id": name}).headers["x-orggraph-cache"] == "hit"
    org_id = gw.data("{ organizations(first: 1, providers: [PLANETSCALE]) { nodes { id } } }")[
        "organizations"
    ]["nodes"][0]["id"]
    email = f"new-{time.monotonic_ns()}@example.com"
    gw.data(
        "mutation($id: ID!, $e: String!) { updateOrganization(id: $id, input: "
        "{billingEmail: $e}) { billingEmail } }",
        {"id": org_id, "e": email},
    )
    after = gw.query(ORG, {"id": name})
    assert after.headers["x-orggraph-cache"] == "miss"
    assert after.json()["data"]["organization"]["billingEmail"] == email != before["billingEmail"]
    # The dashboard's cached list page was invalidated too.
    listed = gw.data(
        "{ organizations(first: 100, providers: [PLANETSCALE]) { nodes { billingEmail } } }"
    )
    assert email in [n["billingEmail"] for n in listed["organizations"]["nodes"]]


def test_stale_if_error_serves_an_expired_copy_and_says_so(make_gateway: MakeGateway) -> None:
    gw = make_gateway(
        cache={"backend": "memory", "ttl_seconds": 1, "stale_seconds": 60, "response_cache": False}
    )
    name = planetscale_name(gw)
    fresh = gw.data(ORG, {"id": name})
    time.sleep(1.2)
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503)
    body = gw.query(ORG, {"id": name}).json()
    assert "errors" not in body
    assert body["data"] == fresh
    (stale,) = body["extensions"]["stale"]
    assert stale["provider"] == "PLANETSCALE"
    assert 1.0 <= stale["ageSeconds"] < 30


def test_no_stale_copy_beyond_stale_seconds_or_for_auth_failures(
    make_gateway: MakeGateway,
) -> None:
    gw = make_gateway(
        cache={"backend": "memory", "ttl_seconds": 1, "stale_seconds": 0, "response_cache": False}
    )
    name = planetscale_name(gw)
    gw.data(ORG, {"id": name})
    time.sleep(1.2)
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503)
    body = gw.query(ORG, {"id": name}).json()
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"

    gw2 = make_gateway(
        cache={"backend": "memory", "ttl_seconds": 1, "stale_seconds": 60, "response_cache": False}
    )
    gw2.sandboxes[ProviderName.PLANETSCALE].clear_faults()
    gw2.data(ORG, {"id": name})
    time.sleep(1.2)
    gw2.sandboxes[ProviderName.PLANETSCALE].fault(status=401)
    body = gw2.query(ORG, {"id": name}).json()
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAUTHORIZED"


def test_concurrent_identical_requests_share_one_upstream_call(
    make_gateway: MakeGateway,
) -> None:
    gw = make_gateway(cache={"backend": "none"})
    name = planetscale_name(gw)
    gw.reset_sandboxes()
    gw.sandboxes[ProviderName.PLANETSCALE].fault(delay_ms=400, path_prefix="/organizations/")
    results: list[Any] = []

    def ask() -> None:
        results.append(gw.data(ORG, {"id": name}))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r == results[0] for r in results)
    gets = [r for r in gw.sandboxes_requests("PLANETSCALE") if r["path"].endswith(name)]
    assert len(gets) == 1


def test_coalescing_never_crosses_tenants(make_gateway: MakeGateway) -> None:
    gw = make_gateway(cache={"backend": "none"})
    gw.sandboxes[ProviderName.UPSUN].fault(delay_ms=300, path_prefix="/organizations")
    query = "{ organizations(first: 100, providers: [UPSUN]) { nodes { providerId } } }"
    out: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda t=t: out.__setitem__(t, gw.data(query, tenant=t)))
        for t in ("acme", "globex")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acme = {n["providerId"] for n in out["acme"]["organizations"]["nodes"]}
    globex = {n["providerId"] for n in out["globex"]["organizations"]["nodes"]}
    assert acme and globex and not acme & globex


# ---------------------------------------------------------------------------- APQ


def apq(query: str) -> dict[str, Any]:
    return {
        "persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(query.encode()).hexdigest()}
    }


def test_automatic_persisted_queries_post_and_get(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    query = "{ organizations(first: 3) { nodes { providerId } } }"
    auth = {"Authorization": f"Bearer {KEYS['acme']}"}
    url = gw.url + "/graphql"
    miss = http.post(url, json={"extensions": apq(query)}, headers=auth).json()
    assert miss["errors"][0]["message"] == "PersistedQueryNotFound"
    assert miss["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    registered = http.post(url, json={"query": query, "extensions": apq(query)}, headers=auth)
    assert registered.status_code == 200 and "errors" not in registered.json()
    by_hash = http.post(url, json={"extensions": apq(query)}, headers=auth).json()
    assert by_hash == registered.json()
    import json

    got = http.get(url, params={"extensions": json.dumps(apq(query))}, headers=auth)
    assert got.status_code == 200 and got.json() == registered.json()


def test_apq_rejects_a_hash_that_does_not_match(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    auth = {"Authorization": f"Bearer {KEYS['acme']}"}
    body = {"query": "{ providers { provider } }", "extensions": apq("{ something else }")}
    response = http.post(gw.url + "/graphql", json=body, headers=auth)
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    bad = {"extensions": {"persistedQuery": {"version": 2, "sha256Hash": "abc"}}}
    assert http.post(gw.url + "/graphql", json=bad, headers=auth).status_code == 400


async def test_a_stored_response_is_not_served_past_its_data_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stores round entry lifetimes up to whole seconds; the answer itself must still end when
    its shortest-lived data does (a clock stands in for waiting)."""
    from gateway.cache import build_cache
    from gateway.settings import CacheSettings

    now = [1_000.0]
    monkeypatch.setattr("gateway.cache.time.time", lambda: now[0])
    layer = build_cache(CacheSettings(backend="memory"), {})
    await layer.set_response("og:r:t:x", b'{"data":{}}', [], 0.25)
    assert await layer.get_response("og:r:t:x") == (b'{"data":{}}', 0.25)
    now[0] += 0.3  # past the data's TTL, well within the store's rounded-up second
    assert await layer.get_response("og:r:t:x") is None
