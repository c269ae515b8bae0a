"""Resilience as a client sees it, over HTTP: the request deadline, breakers in
``providers { circuitState }``, failing fast and stale data while a breaker is open, and retries
that hide a provider's passing failure. The policies themselves (backoff, Retry-After, half-open
probes, pacing) are tested with an injected clock in tests/providers/test_resilience.py."""

from __future__ import annotations

import httpx

from providers.base import ProviderName
from tests.conftest import KEYS, ORG_LIST_PATHS, MakeGateway
from tests.processes import free_port
from tests.support import http

ALL = "{ organizations(first: 100) { nodes { provider providerId name } } }"
PLANETSCALE = "{ organizations(first: 3, providers: [PLANETSCALE]) { nodes { providerId name } } }"
UPSUN = "{ organizations(first: 3, providers: [UPSUN]) { nodes { providerId name } } }"
HEALTH = "{ providers { provider circuitState } }"
LIST = ORG_LIST_PATHS[ProviderName.PLANETSCALE]


def _codes(body: dict) -> list[tuple[str | None, str]]:
    return [
        (e["extensions"].get("provider"), e["extensions"]["code"]) for e in body.get("errors", [])
    ]


def _states(gw: object) -> dict[str, str]:
    data = gw.data(HEALTH)  # type: ignore[attr-defined]
    return {p["provider"]: p["circuitState"] for p in data["providers"]}


def test_the_deadline_answers_with_what_is_there(make_gateway: MakeGateway) -> None:
    # The provider's own timeout is far away: only the request's deadline can end the wait.
    gw = make_gateway(timeout=30.0, server={"deadline_seconds": 1, "max_upstream_calls": 1000})
    sandbox = gw.sandboxes[ProviderName.PLANETSCALE]
    sandbox.fault(hold=True, path_prefix=LIST)
    try:
        with httpx.Client(timeout=15) as client:
            response = client.post(
                gw.url + "/graphql",
                json={"query": ALL},
                headers={"Authorization": f"Bearer {KEYS['acme']}"},
            )
        # Still held upstream: the answer did not wait for it.
        assert http.get(sandbox.url + "/__sandbox/held", params={"at_least": 1}).json()["held"]
    finally:
        http.post(sandbox.url + "/__sandbox/release")
    assert response.status_code == 200
    body = response.json()
    assert _codes(body) == [("PLANETSCALE", "UPSTREAM_TIMEOUT")]
    providers = {n["provider"] for n in body["data"]["organizations"]["nodes"]}
    assert providers == {p.value for p in ProviderName} - {"PLANETSCALE"}


def test_a_passing_failure_is_retried_away(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503, times=2, path_prefix=LIST)
    body = gw.query(PLANETSCALE).json()
    assert "errors" not in body and body["data"]["organizations"]["nodes"]
    assert len(gw.sandboxes_requests("PLANETSCALE")) == 3  # two failures, then the answer


def test_a_client_error_is_not_retried(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=404, path_prefix=LIST)
    gw.query(PLANETSCALE)
    assert len(gw.sandboxes_requests("PLANETSCALE")) == 1


def test_an_open_breaker_fails_fast_and_shows_in_circuit_state(make_gateway: MakeGateway) -> None:
    gw = make_gateway(provider_settings={"planetscale": {"retries": 0, "breaker_failures": 3}})
    assert _states(gw)["PLANETSCALE"] == "CLOSED"
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503, path_prefix=LIST)
    for _ in range(3):
        assert _codes(gw.query(PLANETSCALE).json()) == [("PLANETSCALE", "UPSTREAM_UNAVAILABLE")]
    assert _states(gw)["PLANETSCALE"] == "OPEN"
    assert {s for p, s in _states(gw).items() if p != "PLANETSCALE"} == {"CLOSED"}
    calls = len(gw.sandboxes_requests("PLANETSCALE"))
    fast = gw.query(PLANETSCALE).json()
    assert _codes(fast) == [("PLANETSCALE", "UPSTREAM_UNAVAILABLE")]
    assert "circuit" in fast["errors"][0]["message"].lower()
    assert len(gw.sandboxes_requests("PLANETSCALE")) == calls  # no upstream call


def test_an_open_token_endpoint_circuit_shows_in_circuit_state(make_gateway: MakeGateway) -> None:
    """Upsun's tokens come from its auth server, an origin with a breaker of its own. While that
    breaker is open, a request that needs a token fails fast with a message about a circuit,
    and ``circuitState`` said CLOSED all the while (it read the API's breaker alone)."""
    nothing_listens = f"http://127.0.0.1:{free_port()}/oauth2/token"
    gw = make_gateway(
        provider_settings={
            "upsun": {"token_url": nothing_listens, "retries": 0, "breaker_failures": 2}
        }
    )
    for _ in range(2):
        assert _codes(gw.query(UPSUN).json()) == [("UPSUN", "UPSTREAM_UNAVAILABLE")]
    fast = gw.query(UPSUN).json()
    assert _codes(fast) == [("UPSUN", "UPSTREAM_UNAVAILABLE")]
    assert "circuit" in fast["errors"][0]["message"].lower()
    assert _states(gw)["UPSUN"] == "OPEN"
    assert {s for p, s in _states(gw).items() if p != "UPSUN"} == {"CLOSED"}
    assert gw.sandboxes_requests("UPSUN") == []  # its API was never called: no token


def test_a_tenants_revoked_key_never_opens_the_breaker(make_gateway: MakeGateway) -> None:
    gw = make_gateway(provider_settings={"planetscale": {"breaker_failures": 2}})
    for _ in range(4):
        body = gw.query(PLANETSCALE, tenant="broken").json()
        assert _codes(body) == [("PLANETSCALE", "UPSTREAM_UNAUTHORIZED")]
    assert _states(gw)["PLANETSCALE"] == "CLOSED"
    assert gw.data(PLANETSCALE)["organizations"]["nodes"]


def test_an_open_breaker_serves_stale_data_where_the_cache_has_it(
    make_gateway: MakeGateway,
) -> None:
    gw = make_gateway(
        cache={"backend": "memory", "ttl_seconds": 0.001, "stale_seconds": 300},
        provider_settings={"planetscale": {"retries": 0, "breaker_failures": 1}},
    )
    fresh = gw.data(PLANETSCALE)
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503, path_prefix=LIST)
    gw.query(PLANETSCALE.replace("name", "name slug"))  # opens the breaker
    assert _states(gw)["PLANETSCALE"] == "OPEN"
    calls = len(gw.sandboxes_requests("PLANETSCALE"))
    body = gw.query(PLANETSCALE).json()
    assert "errors" not in body
    assert body["data"] == fresh
    assert body["extensions"]["stale"][0]["provider"] == "PLANETSCALE"
    assert len(gw.sandboxes_requests("PLANETSCALE")) == calls
