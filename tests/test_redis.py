"""The Redis cache backend against a real redis-server, shared by two gateway processes.

``make test`` installs redis-server where it is missing; a machine without it fails here on
purpose (with a message saying so) rather than skipping the proof.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from providers.base import ProviderName
from tests.conftest import KEYS, Deployment, write_config
from tests.processes import GatewayProcess, RedisServer, start_gateways, stop_all
from tests.support import ServedApp, http

# GatewayProcess and RedisServer live in tests/processes.py; test_observability imports them
# from here still.
DASHBOARD = """{ organizations(first: 100) { nodes { provider providerId name billingEmail
  subscriptions(first: 5) { nodes { status } } usage { metrics { key value } } } } }"""


@pytest.fixture
def two_gateways(
    sandboxes: dict[ProviderName, ServedApp], redis_server: RedisServer, tmp_path: Path
) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def start(
        cache: dict[str, Any], *, url: str | None = None, **config_kw: Any
    ) -> tuple[Deployment, Deployment]:
        config = write_config(
            tmp_path / f"redis{len(started)}.toml",
            sandboxes,
            cache={"backend": "redis", "url": url or redis_server.url, **cache},
            **config_kw,
        )
        from gateway.settings import load_settings

        settings = load_settings(config)
        a, b = start_gateways(config, 2)
        started.extend([a, b])
        return Deployment(a.url, sandboxes, settings), Deployment(b.url, sandboxes, settings)

    for served in sandboxes.values():
        served.clear_requests()
        served.clear_faults()
    yield start
    for output in stop_all(started).values():
        assert "Traceback" not in output, output


def api_calls(gw: Deployment) -> int:
    return sum(
        1 for log in gw.upstream_requests().values() for r in log if not r["path"].endswith("token")
    )


def test_processes_share_whole_responses_through_redis(
    two_gateways: Any, redis_server: RedisServer
) -> None:
    a, b = two_gateways({"ttl_seconds": 30})
    first = a.query(DASHBOARD)
    assert first.headers["x-orggraph-cache"] == "miss"
    calls = api_calls(a)
    second = b.query(DASHBOARD)
    assert second.headers["x-orggraph-cache"] == "hit"
    assert second.json() == first.json()
    assert api_calls(b) == calls
    keys = [k.decode() for k in redis_server.client.keys("og:*")]
    assert any(k.startswith("og:r:acme:") for k in keys)
    assert any(k.startswith("og:u:acme:") for k in keys)
    # Nothing secret is in a key.
    from tests.conftest import sandbox_credentials

    secrets = [v for p in ProviderName for v in sandbox_credentials(p, "acme").values()]
    assert not any(s in k for k in keys for s in secrets)


def test_processes_share_upstream_reads_and_invalidation(two_gateways: Any) -> None:
    a, b = two_gateways({"ttl_seconds": 30, "response_cache": False})
    a.data(DASHBOARD)
    calls = api_calls(a)
    b.data(DASHBOARD)
    assert api_calls(b) == calls, "process B went upstream for reads A had cached"

    org = a.data("{ organizations(first: 1, providers: [PLANETSCALE]) { nodes { id } } }")
    org_id = org["organizations"]["nodes"][0]["id"]
    email = f"redis-{time.monotonic_ns()}@example.com"
    a.data(
        "mutation($id: ID!, $e: String!) { updateOrganization(id: $id, input: {billingEmail: $e})"
        " { billingEmail } }",
        {"id": org_id, "e": email},
    )
    seen = b.data(
        "{ organizations(first: 100, providers: [PLANETSCALE]) { nodes { billingEmail } } }"
    )
    assert email in [n["billingEmail"] for n in seen["organizations"]["nodes"]]


def test_a_dead_redis_degrades_to_uncached_not_to_errors(
    two_gateways: Any, redis_server: RedisServer
) -> None:
    a, _ = two_gateways({"ttl_seconds": 30})
    a.data(DASHBOARD)
    redis_server.stop()
    calls = api_calls(a)
    body = a.query(DASHBOARD.replace("billingEmail", "slug")).json()
    assert "errors" not in body and body["data"]["organizations"]["nodes"]
    assert api_calls(a) > calls


def test_credential_fingerprints_in_shared_keys_are_keyed_hashes(
    two_gateways: Any, redis_server: RedisServer
) -> None:
    """A plain SHA-256 of the credentials in a key would let whoever reads Redis confirm a
    guessed credential offline; the keys carry an HMAC under a secret Redis never sees."""
    a, _ = two_gateways({"ttl_seconds": 30})
    a.data(DASHBOARD)
    keys = " ".join(k.decode() for k in redis_server.client.keys("og:*"))
    for provider in ProviderName:
        creds = a.settings.tenants[0].credentials[provider]
        assert creds.fingerprint not in keys
        assert hashlib.sha256(creds.fingerprint.encode()).hexdigest()[:32] not in keys
    assert "og:u:acme:" in keys


def test_the_rate_limit_is_shared_by_replicas(two_gateways: Any) -> None:
    a, b = two_gateways({"ttl_seconds": 30}, tenant_limits={"acme": {"rate_limit_per_minute": 4}})
    query = "{ providers { provider } }"
    statuses = [gw.query(query).status_code for gw in (a, b, a, b)]
    assert statuses == [200, 200, 200, 200]
    assert a.query(query).status_code == 429
    assert b.query(query).status_code == 429
    assert a.query(query, tenant="globex").status_code == 200


def test_persisted_queries_are_shared_but_apart_from_upstream_data(
    two_gateways: Any, redis_server: RedisServer
) -> None:
    a, b = two_gateways({"ttl_seconds": 30})
    query = "{ providers { provider configured } }"
    digest = hashlib.sha256(query.encode()).hexdigest()
    apq = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    auth = {"Authorization": "Bearer " + KEYS["acme"]}
    assert http.post(a.url + "/graphql", json={"query": query, "extensions": apq}, headers=auth)
    by_hash = http.post(b.url + "/graphql", json={"extensions": apq}, headers=auth).json()
    assert "errors" not in by_hash and len(by_hash["data"]["providers"]) == 5
    assert redis_server.client.hget("og:apq", digest) == query.encode()
    assert not redis_server.client.keys("og:q:*")


def test_a_redis_url_with_an_acl_username_is_honoured(
    two_gateways: Any, redis_server: RedisServer
) -> None:
    client = redis_server.client
    client.execute_command("ACL", "SETUSER", "orggraph", "on", ">s3cret-pass", "~*", "&*", "+@all")
    client.execute_command("ACL", "SETUSER", "default", "off")
    try:
        url = f"redis://orggraph:s3cret-pass@127.0.0.1:{redis_server.port}/0"
        a, _ = two_gateways({"ttl_seconds": 30}, url=url)
        assert a.query(DASHBOARD).headers["x-orggraph-cache"] == "miss"
        assert a.query(DASHBOARD).headers["x-orggraph-cache"] == "hit"
    finally:
        admin = redis.Redis(
            host="127.0.0.1", port=redis_server.port, username="orggraph", password="s3cret-pass"
        )
        admin.execute_command("ACL", "SETUSER", "default", "on", "nopass", "~*", "&*", "+@all")
