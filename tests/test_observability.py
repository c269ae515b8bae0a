"""/metrics and /readyz over loopback HTTP: counter deltas after known requests, bounded labels,
the switch, and readiness with no cache, an unreachable Redis and a real one."""

from __future__ import annotations

import hashlib
import secrets
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from providers.base import ProviderName
from tests.conftest import KEYS, ORG_LIST_PATHS, MakeGateway, write_config
from tests.processes import GatewayProcess, RedisServer
from tests.support import ServedApp, http

PLANETSCALE = "{ organizations(first: 3, providers: [PLANETSCALE]) { nodes { providerId name } } }"
LIST = ORG_LIST_PATHS[ProviderName.PLANETSCALE]

Samples = Counter[tuple[str, frozenset[tuple[str, str]]]]


def scrape(url: str) -> Samples:
    response = http.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """The change of every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    keys = {k for k in (*before, *after) if k[0] == name and wanted <= k[1]}
    return sum(after[k] - before[k] for k in keys)


def test_upstream_calls_are_counted_exactly(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    before = scrape(gw.url)
    body = gw.query(PLANETSCALE).json()
    assert "errors" not in body
    after = scrape(gw.url)
    calls = len(gw.sandboxes_requests("PLANETSCALE"))
    assert calls >= 1
    total = "orggraph_upstream_requests_total"
    assert delta(before, after, total) == calls
    assert delta(before, after, total, provider="PLANETSCALE", outcome="ok") == calls
    assert (
        delta(
            before,
            after,
            "orggraph_upstream_request_duration_seconds_count",
            provider="PLANETSCALE",
        )
        == calls
    )
    assert (
        delta(before, after, "orggraph_requests_total", operation_type="query", outcome="ok") == 1
    )
    assert delta(before, after, "orggraph_requests_total") == 1
    assert delta(before, after, "orggraph_request_duration_seconds_count") == 1
    assert delta(before, after, "orggraph_upstream_retries_total") == 0


def test_a_cached_repeat_is_a_response_cache_hit_with_no_upstream_call(
    make_gateway: MakeGateway,
) -> None:
    gw = make_gateway(cache={"backend": "memory"})
    first = scrape(gw.url)
    assert gw.query(PLANETSCALE).headers["x-orggraph-cache"] == "miss"
    second = scrape(gw.url)
    cache = "orggraph_cache_requests_total"
    assert delta(first, second, cache, layer="response", result="miss") == 1
    assert delta(first, second, cache, layer="response", result="hit") == 0
    assert delta(first, second, cache, layer="upstream", result="miss") >= 1
    calls = len(gw.sandboxes_requests("PLANETSCALE"))
    assert delta(first, second, "orggraph_upstream_requests_total") == calls

    assert gw.query(PLANETSCALE).headers["x-orggraph-cache"] == "hit"
    third = scrape(gw.url)
    assert delta(second, third, cache, layer="response", result="hit") == 1
    assert delta(second, third, cache, layer="response", result="miss") == 0
    assert delta(second, third, cache, layer="upstream") == 0
    assert delta(second, third, "orggraph_upstream_requests_total") == 0
    assert len(gw.sandboxes_requests("PLANETSCALE")) == calls
    assert (
        delta(second, third, "orggraph_requests_total", operation_type="query", outcome="ok") == 1
    )


def test_retries_and_failed_exchanges_are_counted(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503, times=2, path_prefix=LIST)
    before = scrape(gw.url)
    assert "errors" not in gw.query(PLANETSCALE).json()
    after = scrape(gw.url)
    calls = len(gw.sandboxes_requests("PLANETSCALE"))
    retries = "orggraph_upstream_retries_total"
    assert delta(before, after, retries, provider="PLANETSCALE") == 2
    assert delta(before, after, retries) == 2
    total = "orggraph_upstream_requests_total"
    assert delta(before, after, total, provider="PLANETSCALE") == calls
    failed = calls - delta(before, after, total, provider="PLANETSCALE", outcome="ok")
    assert failed == 2


def test_a_rate_limited_tenant_is_counted(make_gateway: MakeGateway) -> None:
    gw = make_gateway(tenant_limits={"acme": {"rate_limit_per_minute": 1}})
    before = scrape(gw.url)
    assert gw.query("{ __typename }").status_code == 200
    assert gw.query("{ __typename }").status_code == 429
    after = scrape(gw.url)
    assert delta(before, after, "orggraph_rate_limited_total", tenant="acme") == 1
    assert delta(before, after, "orggraph_rate_limited_total") == 1
    requests = "orggraph_requests_total"
    assert delta(before, after, requests, operation_type="unknown", outcome="RATE_LIMITED") == 1
    assert delta(before, after, requests, operation_type="query", outcome="ok") == 1


def test_labels_are_bounded(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    evil = f"evil_{secrets.token_hex(8)}"
    for query in (f"query {evil} {{ __typename }}", f"query {evil} {{ nope }}"):
        http.post(
            gw.url + "/graphql",
            json={"query": query, "operationName": evil},
            headers={"Authorization": f"Bearer {KEYS['acme']}"},
        )
    http.post(
        gw.url + "/graphql",
        json={"query": "{ __typename }", "operationName": evil},
        headers={"Authorization": f"Bearer {KEYS['acme']}"},
    )
    text = http.get(gw.url + "/metrics").text
    assert evil not in text
    assert KEYS["acme"] not in text
    samples = scrape(gw.url)
    labels: dict[str, set[str]] = {}
    for _, pairs in samples:
        for key, value in pairs:
            labels.setdefault(key, set()).add(value)
    assert labels["operation_type"] <= {"query", "mutation", "unknown"}
    assert labels["provider"] <= {p.value for p in ProviderName}
    circuits = {
        dict(pairs)["provider"]: value
        for (name, pairs), value in samples.items()
        if name == "orggraph_circuit_state"
    }
    assert circuits == {p.value: 0 for p in ProviderName}


def test_an_open_breaker_shows_in_the_circuit_gauge(make_gateway: MakeGateway) -> None:
    gw = make_gateway(provider_settings={"planetscale": {"retries": 0, "breaker_failures": 2}})
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503, path_prefix=LIST)
    for _ in range(2):
        gw.query(PLANETSCALE)
    samples = scrape(gw.url)
    assert samples[("orggraph_circuit_state", frozenset({("provider", "PLANETSCALE")}))] == 2
    assert samples[("orggraph_circuit_state", frozenset({("provider", "CAPYDB")}))] == 0


def test_metrics_can_be_switched_off(make_gateway: MakeGateway) -> None:
    gw = make_gateway(server={"metrics": False, "max_upstream_calls": 1000})
    assert http.get(gw.url + "/metrics").status_code == 404
    assert http.get(gw.url + "/healthz").status_code == 200


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str) -> tuple[int, Any]:
    response = http.get(url + "/readyz")
    assert response.headers["cache-control"].endswith("no-store")
    return response.status_code, response.json()


def test_readyz_without_redis_is_ready(make_gateway: MakeGateway) -> None:
    gw = make_gateway(cache={"backend": "memory"})
    assert _ready(gw.url) == (200, {"status": "ready"})


def test_readyz_with_unreachable_redis_is_not_ready(make_gateway: MakeGateway) -> None:
    url = f"redis://:s3cret-pass@127.0.0.1:{_closed_port()}/0"
    gw = make_gateway(cache={"backend": "redis", "url": url, "redis_timeout_seconds": 0.5})
    status, body = _ready(gw.url)
    assert status == 503
    assert body["status"] == "not ready" and body["reason"]
    assert "s3cret" not in str(body) and "redis://" not in str(body)
    assert http.get(gw.url + "/healthz").status_code == 200


def test_readyz_with_a_real_redis_is_ready(make_gateway: MakeGateway) -> None:
    server = RedisServer()
    try:
        gw = make_gateway(cache={"backend": "redis", "url": server.url})
        assert _ready(gw.url) == (200, {"status": "ready"})
    finally:
        server.stop()


def test_workers_share_their_counts(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    """With two worker processes a scrape, whichever worker answers it, counts both."""
    config = write_config(
        tmp_path / "workers.toml",
        sandboxes,
        server={"workers": 2, "max_depth": 8, "max_upstream_calls": 1000},
    )
    gateway = GatewayProcess(config)
    try:
        sent = 24
        for _ in range(sent):  # a fresh connection each: the kernel spreads them over workers
            with httpx.Client(timeout=10) as client:
                response = client.post(
                    gateway.url + "/graphql",
                    json={"query": "{ __typename }"},
                    headers={"Authorization": f"Bearer {KEYS['acme']}"},
                )
                assert response.status_code == 200
        for _ in range(6):
            with httpx.Client(timeout=10) as client:
                text = client.get(gateway.url + "/metrics").text
            counted = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "orggraph_requests_total"
            )
            assert counted == sent
    finally:
        gateway.stop()


def test_persisted_query_lookups_are_counted(make_gateway: MakeGateway) -> None:
    gw = make_gateway(cache={"backend": "memory"})
    query = "{ __typename }"
    extensions = {
        "persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(query.encode()).hexdigest()}
    }
    auth = {"Authorization": f"Bearer {KEYS['acme']}"}
    before = scrape(gw.url)
    missing = http.post(gw.url + "/graphql", json={"extensions": extensions}, headers=auth)
    assert missing.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    http.post(gw.url + "/graphql", json={"query": query, "extensions": extensions}, headers=auth)
    found = http.post(gw.url + "/graphql", json={"extensions": extensions}, headers=auth)
    assert found.json() == {"data": {"__typename": "Query"}}
    after = scrape(gw.url)
    cache = "orggraph_cache_requests_total"
    assert delta(before, after, cache, layer="apq", result="miss") == 1
    assert delta(before, after, cache, layer="apq", result="hit") == 1
    requests = "orggraph_requests_total"
    assert delta(before, after, requests, outcome="PERSISTED_QUERY_NOT_FOUND") == 1
    assert delta(before, after, requests, operation_type="query", outcome="ok") == 2


def test_joined_reads_are_counted_once_upstream(make_gateway: MakeGateway) -> None:
    gw = make_gateway(cache={"backend": "none"})
    gw.sandboxes[ProviderName.UPSUN].fault(delay_ms=300, path_prefix="/organizations")
    query = "{ organizations(first: 100, providers: [UPSUN]) { nodes { providerId } } }"
    before = scrape(gw.url)
    threads = [threading.Thread(target=lambda: gw.data(query)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = scrape(gw.url)
    calls = len(gw.sandboxes_requests("UPSUN"))
    assert delta(before, after, "orggraph_coalesced_calls_total", provider="UPSUN") >= 1
    assert delta(before, after, "orggraph_upstream_requests_total") == calls
