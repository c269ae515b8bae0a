"""GraphQL over HTTP as clients meet it: media types, status codes, caching headers, CORS and
per-key rate limits (memory, and shared through a real redis-server by two gateways)."""

from __future__ import annotations

from typing import Any

from providers.base import ProviderName
from tests.conftest import KEYS, Deployment, MakeGateway
from tests.support import ServedApp, http

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}
GRAPHQL_RESPONSE = "application/graphql-response+json"
QUERY = "{ organizations(first: 1, providers: [PLANETSCALE]) { nodes { name } } }"


def post(gw: Deployment, body: Any, **headers: str) -> Any:
    return http.post(gw.url + "/graphql", json=body, headers={**AUTH, **headers})


# ---------------------------------------------------------------------------- media types


def test_graphql_response_json_is_negotiated_and_request_errors_are_4xx(gw: Deployment) -> None:
    ok = post(gw, {"query": QUERY}, Accept=GRAPHQL_RESPONSE)
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    for bad in ({"query": "{ providers { "}, {"query": "{ noSuchField }"}):
        refused = post(gw, bad, Accept=GRAPHQL_RESPONSE)
        assert refused.status_code == 400
        assert refused.headers["content-type"].startswith(GRAPHQL_RESPONSE)
        assert "data" not in refused.json()
    # Variables that do not coerce stop the request before execution, too.
    typed = "query($n: Int) { organizations(first: $n) { nodes { id } } }"
    coerce = post(gw, {"query": typed, "variables": {"n": "many"}}, Accept=GRAPHQL_RESPONSE)
    assert coerce.status_code == 400 and "data" not in coerce.json()


def test_application_json_keeps_200_for_request_errors(gw: Deployment) -> None:
    legacy = post(gw, {"query": "{ noSuchField }"}, Accept="application/json")
    assert legacy.status_code == 200
    assert legacy.headers["content-type"].startswith("application/json")
    assert legacy.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    default = post(gw, {"query": QUERY})
    assert default.headers["content-type"].startswith("application/json")


def test_unacceptable_accept_is_406(gw: Deployment) -> None:
    response = post(gw, {"query": QUERY}, Accept="text/csv")
    assert response.status_code == 406
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_simple_content_types_stay_refused_with_415(gw: Deployment) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = http.post(
            gw.url + "/graphql",
            content=b'{"query": "{ providers { provider } }"}',
            headers={**AUTH, "Content-Type": content_type},
        )
        assert response.status_code == 415, content_type


# ---------------------------------------------------------------------------- caching headers


def test_answers_are_private_and_vary_on_the_key(make_gateway: MakeGateway) -> None:
    gw = make_gateway(cache={"backend": "memory", "ttl_seconds": 30})
    cacheable = post(gw, {"query": QUERY})
    assert cacheable.headers["cache-control"].startswith("private, max-age=")
    assert 1 <= int(cacheable.headers["cache-control"].split("=")[1]) <= 30
    assert "Authorization" in cacheable.headers["vary"]
    hit = post(gw, {"query": QUERY})
    assert hit.headers["x-orggraph-cache"] == "hit"
    assert hit.headers["cache-control"].startswith("private, max-age=")

    for uncacheable in (
        {"query": "{ providers { provider healthy } }"},  # live figures
        {"query": "{ noSuchField }"},
    ):
        response = post(gw, uncacheable)
        assert response.headers["cache-control"] == "private, no-store"
        assert "Authorization" in response.headers["vary"]
    unauthenticated = http.post(gw.url + "/graphql", json={"query": QUERY})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["cache-control"] == "private, no-store"


def test_without_a_cache_nothing_is_marked_reusable(gw: Deployment) -> None:
    assert post(gw, {"query": QUERY}).headers["cache-control"] == "private, no-store"


# ---------------------------------------------------------------------------- CORS


def test_cors_is_off_by_default(gw: Deployment) -> None:
    origin = {"Origin": "https://dashboard.example.com"}
    response = post(gw, {"query": QUERY}, **origin)
    assert "access-control-allow-origin" not in response.headers
    preflight = http.options(
        gw.url + "/graphql",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_configured_origins_get_cors_answers(make_gateway: MakeGateway) -> None:
    allowed = "https://dashboard.example.com"
    gw = make_gateway(server={"cors_origins": [allowed], "max_upstream_calls": 1000})
    preflight = http.options(
        gw.url + "/graphql",
        headers={
            "Origin": allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == allowed
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    response = post(gw, {"query": QUERY}, Origin=allowed)
    assert response.headers["access-control-allow-origin"] == allowed
    other = post(gw, {"query": QUERY}, Origin="https://evil.example")
    assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------------------- rate limits


def test_a_tenant_over_its_rate_limit_gets_429_and_others_do_not(
    make_gateway: MakeGateway,
) -> None:
    gw = make_gateway(tenant_limits={"acme": {"rate_limit_per_minute": 3}})
    query = "{ providers { provider } }"
    for _ in range(3):
        assert gw.query(query).status_code == 200
    limited = gw.query(query)
    assert limited.status_code == 429
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 60
    (error,) = limited.json()["errors"]
    assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": retry_after}
    assert gw.query(query, tenant="globex").status_code == 200
    assert gw.query(query).status_code == 429


def test_burst_caps_requests_per_second(make_gateway: MakeGateway) -> None:
    gw = make_gateway(tenant_limits={"acme": {"rate_limit_per_minute": 600, "burst": 2}})
    statuses = [gw.query("{ providers { provider } }").status_code for _ in range(6)]
    # Six requests cannot all fall into three different seconds on this machine; what matters
    # is that some were refused although the per-minute allowance was far from spent.
    assert statuses.count(429) >= 1
    assert statuses[:2] == [200, 200]


# ---------------------------------------------------------------------------- upstream budget


def test_the_upstream_call_estimate_is_reported_when_asked(make_gateway: MakeGateway) -> None:
    gw = make_gateway(server={})  # the shipped defaults: max_upstream_calls = 50
    # One PlanetScale list page (100 per page) for 10 organizations, nothing per organization.
    cheap = {"query": QUERY.replace("first: 1", "first: 10"), "extensions": {"cost": True}}
    answer = post(gw, cheap).json()
    assert answer["extensions"]["cost"] == {"upstreamCalls": 1, "maxUpstreamCalls": 50}
    assert "cost" not in post(gw, {"query": QUERY}).json().get("extensions", {})


def test_an_operation_over_the_upstream_budget_is_refused_before_any_call(
    make_gateway: MakeGateway, sandboxes: dict[ProviderName, ServedApp]
) -> None:
    gw = make_gateway(server={})
    # Upsun: one list page, then one subscriptions walk per organization for its usage: 1 + 60.
    costly = (
        "{ organizations(first: 60, providers: [UPSUN]) { nodes { usage { metrics { key } } } } }"
    )
    for served in sandboxes.values():
        served.clear_requests()
    refused = post(gw, {"query": costly, "extensions": {"cost": True}}, Accept=GRAPHQL_RESPONSE)
    assert refused.status_code == 400
    body = refused.json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["QUERY_TOO_COMPLEX"]
    assert "data" not in body
    assert body["extensions"]["cost"] == {"upstreamCalls": 61, "maxUpstreamCalls": 50}
    assert all(not s.requests() for s in sandboxes.values())
