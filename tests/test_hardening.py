"""Hostile input and tenant separation, over HTTP: each test here reproduces a defect of 0.2.0.

Deep JSON, lone surrogates, forged cursors, HEAD bodies, chunked floods, persisted-query floods,
one tenant's failures in another's health figures: each must end in a clear error with a DESIGN.md
code (or be harmless), never a 500, never an upstream call it should not cause.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import create_app
from providers.base import ProviderName
from tests.conftest import KEYS, ORG_LIST_PATHS, Deployment, MakeGateway
from tests.support import http, serve_app

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}
ORGGRAPH = str(Path(sys.executable).parent / "orggraph")
FIRST_PAGE = """query($after: String) { organizations(first: 2, after: $after) {
  nodes { provider providerId } pageInfo { endCursor hasNextPage } } }"""


def codes(response: httpx.Response) -> list[str]:
    return [e["extensions"]["code"] for e in response.json().get("errors", [])]


def calls(gw: Deployment) -> int:
    """Upstream requests the sandboxes served (token exchanges included)."""
    return sum(len(log) for log in gw.upstream_requests().values())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ---------------------------------------------------------------------------- deep JSON


def test_deeply_nested_variables_are_bad_input_not_a_500(gw: Deployment) -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    response = http.post(
        gw.url + "/graphql",
        json={"query": "{ providers { provider } }", "variables": {"x": deep}},
        headers=AUTH,
    )
    assert response.status_code == 400
    assert codes(response) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize(
    "raw",
    [
        # Past the stdlib decoder's recursion limit, yet short enough to pass the length check.
        b"[" * 1200 + b"]" * 1200,
        b'["Organization","LOKE",' + b"[" * 1200 + b"]" * 1200 + b"]",
        b'["Organization","LOKE","\\ud800"]',  # a lone surrogate: no UTF-8 form
        b'["Organization","LOKE","\xed\xa0\x80"]',  # the same, as raw (invalid) UTF-8
    ],
)
def test_node_ids_holding_deep_json_or_surrogates_are_bad_input(gw: Deployment, raw: bytes) -> None:
    response = gw.query("query($id: ID!) { node(id: $id) { id } }", {"id": _b64(raw)})
    assert response.status_code == 200
    assert codes(response) == ["BAD_USER_INPUT"]
    assert calls(gw) == 0


def test_cursor_holding_deep_json_is_bad_input(gw: Deployment) -> None:
    cursor = _b64(b"[" * 1200 + b"]" * 1200)
    response = gw.query(FIRST_PAGE, {"after": cursor})
    assert codes(response) == ["BAD_USER_INPUT"]
    assert calls(gw) == 0


@pytest.mark.parametrize("provider", [p.value for p in ProviderName])
def test_an_id_with_a_lone_surrogate_is_bad_input(gw: Deployment, provider: str) -> None:
    # The escape is GraphQL's, so the document itself is valid JSON and valid UTF-8. (A guard:
    # graphql-core refuses the escape itself; the node-id route above is the one that crashed.)
    response = gw.query(
        f'{{ organization(provider: {provider}, id: "a\\ud800b") {{ id }} }}',
    )
    assert response.status_code == 200
    assert codes(response) == ["BAD_USER_INPUT"]
    assert calls(gw) == 0


# ---------------------------------------------------------------------------- cursors


def test_cursors_are_signed_and_tampering_is_refused_before_any_upstream_call(
    gw: Deployment,
) -> None:
    page = gw.data(FIRST_PAGE)["organizations"]
    cursor = page["pageInfo"]["endCursor"]
    assert gw.data(FIRST_PAGE, {"after": cursor})["organizations"]["nodes"]

    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    tag, payload = raw[:16], raw[16:]
    parts = json.loads(payload)
    # The same position with a hostile page URL, and the unsigned 0.2.0 format.
    forged_payload = json.dumps(
        [parts[0], "LOKE", "http://127.0.0.1:1/organizations/../__sandbox/requests", 0]
    ).encode()
    forgeries = [
        _b64(tag + forged_payload),
        _b64(forged_payload),
        _b64(bytes([tag[0] ^ 1]) + tag[1:] + payload),
    ]
    gw.reset_sandboxes()
    for forged in forgeries:
        response = gw.query(FIRST_PAGE, {"after": forged})
        assert codes(response) == ["BAD_USER_INPUT"], response.text
    assert calls(gw) == 0


def test_a_cursor_is_only_good_for_the_tenant_it_was_given_to(gw: Deployment) -> None:
    cursor = gw.data(FIRST_PAGE)["organizations"]["pageInfo"]["endCursor"]
    gw.reset_sandboxes()
    response = gw.query(FIRST_PAGE, {"after": cursor}, tenant="globex")
    assert codes(response) == ["BAD_USER_INPUT"]
    assert calls(gw) == 0


def test_cursors_survive_a_restart_with_a_configured_secret(make_gateway: MakeGateway) -> None:
    server = {"max_upstream_calls": 1000, "cursor_secret": "a-test-secret-of-some-length"}
    first = make_gateway(server=server)
    cursor = first.data(FIRST_PAGE)["organizations"]["pageInfo"]["endCursor"]
    second = make_gateway(server=server)
    assert second.data(FIRST_PAGE, {"after": cursor})["organizations"]["nodes"]
    unkeyed = make_gateway()  # a random per-process secret: the old cursor is unknown
    assert codes(unkeyed.query(FIRST_PAGE, {"after": cursor})) == ["BAD_USER_INPUT"]


# ---------------------------------------------------------------------------- HTTP methods


def test_head_never_runs_a_mutation(gw: Deployment) -> None:
    org = gw.data("{ organizations(first: 1, providers: [CAPYDB]) { nodes { id name } } }")
    node = org["organizations"]["nodes"][0]
    mutation = (
        'mutation($id: ID!) { updateOrganization(id: $id, input: {name: "Renamed by HEAD"}) '
        "{ name } }"
    )
    gw.reset_sandboxes()
    body = orjson.dumps({"query": mutation, "variables": {"id": node["id"]}})
    response = http.request(
        "HEAD",
        gw.url + "/graphql",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 405)
    assert not any(r["method"] == "PATCH" for r in gw.sandboxes_requests("CAPYDB"))
    again = gw.data("{ organizations(first: 1, providers: [CAPYDB]) { nodes { name } } }")
    assert again["organizations"]["nodes"][0]["name"] == node["name"]


def test_head_of_a_query_is_a_get_without_a_body(gw: Deployment) -> None:
    response = http.request(
        "HEAD", gw.url + "/graphql", params={"query": "{ providers { provider } }"}, headers=AUTH
    )
    assert response.status_code == 200
    assert response.content == b""


def test_405_answers_say_which_methods_are_allowed(gw: Deployment) -> None:
    mutation = 'mutation { updateOrganization(id: "x", input: {name: "y"}) { id } }'
    refused = http.get(gw.url + "/graphql", params={"query": mutation}, headers=AUTH)
    assert refused.status_code == 405
    assert refused.headers["allow"] == "POST"
    put = http.put(gw.url + "/graphql", headers=AUTH)
    assert put.status_code == 405
    assert set(put.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert codes(put) == ["BAD_USER_INPUT"]


# ---------------------------------------------------------------------------- body size


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(
    make_gateway: MakeGateway,
) -> None:
    gw = make_gateway(server={"max_body_bytes": 10_000, "max_upstream_calls": 1000})
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"query": "{ providers { provider } }", "pad": "'
        for _ in range(1000):  # 1 MB if it were read whole
            sent += 1
            yield b"x" * 1000
        yield b'"}'

    with httpx.Client(timeout=30) as client:
        try:
            response = client.post(
                gw.url + "/graphql",
                content=body(),
                headers={**AUTH, "Content-Type": "application/json"},
            )
        except httpx.HTTPError:
            pytest.fail("the gateway must answer 413, not drop the connection")
    assert response.status_code == 413
    assert codes(response) == ["BAD_USER_INPUT"]
    small = make_gateway(server={"max_body_bytes": 10_000}).query("{ providers { provider } }")
    assert small.status_code == 200


# ---------------------------------------------------------------------------- persisted queries


def _apq(query: str) -> dict[str, Any]:
    digest = hashlib.sha256(query.encode()).hexdigest()
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


def test_a_persisted_query_is_registered_only_once_it_validates(gw: Deployment) -> None:
    invalid = "{ providers { noSuchField } }"
    registering = http.post(
        gw.url + "/graphql", json={"query": invalid, "extensions": _apq(invalid)}, headers=AUTH
    )
    assert codes(registering) == ["BAD_USER_INPUT"]
    by_hash = http.post(gw.url + "/graphql", json={"extensions": _apq(invalid)}, headers=AUTH)
    assert codes(by_hash) == ["PERSISTED_QUERY_NOT_FOUND"]


def test_persisted_query_floods_do_not_evict_cached_reads(make_gateway: MakeGateway) -> None:
    gw = make_gateway(cache={"backend": "memory", "ttl_seconds": 300, "max_entries": 50})
    read = "{ organizations(first: 1, providers: [CAPYDB]) { nodes { name } } }"
    gw.data(read)
    before = calls(gw)
    for i in range(200):  # four times the data store's bound
        flood = f"{{ providers {{ provider }} }} # {i}"
        response = http.post(
            gw.url + "/graphql", json={"query": flood, "extensions": _apq(flood)}, headers=AUTH
        )
        assert response.status_code == 200
    # Another document over the same upstream read: served from the cached read.
    gw.data(read.replace("name", "name slug"))
    assert calls(gw) == before


# ---------------------------------------------------------------------------- health


HEALTH = "{ providers { provider healthy recentCalls recentFailures lastErrorCode } }"


def test_health_is_per_tenant(gw: Deployment) -> None:
    for _ in range(6):  # a revoked key: every call of this tenant fails
        gw.query("{ organizations(first: 5) { nodes { id } } }", tenant="broken")
    broken = {p["provider"]: p for p in gw.data(HEALTH, tenant="broken")["providers"]}
    assert not broken["CAPYDB"]["healthy"]
    assert broken["CAPYDB"]["lastErrorCode"] == "UPSTREAM_UNAUTHORIZED"
    globex = {p["provider"]: p for p in gw.data(HEALTH, tenant="globex")["providers"]}
    assert all(p["healthy"] for p in globex.values())
    assert all(p["lastErrorCode"] is None for p in globex.values())


def test_health_counts_real_upstream_calls_not_cache_hits(make_gateway: MakeGateway) -> None:
    gw = make_gateway(cache={"backend": "memory", "ttl_seconds": 300, "response_cache": False})
    read = "{ organizations(first: 1, providers: [PLANETSCALE]) { nodes { name } } }"
    for _ in range(5):
        gw.data(read)
    health = {p["provider"]: p for p in gw.data(HEALTH)["providers"]}
    assert health["PLANETSCALE"]["recentCalls"] == len(gw.sandboxes_requests("PLANETSCALE")) == 1
    assert health["LOKE"]["recentCalls"] == 0


def test_an_upstream_failure_shows_in_the_affected_tenants_health(gw: Deployment) -> None:
    gw.sandboxes[ProviderName.PLANETSCALE].fault(
        status=503, path_prefix=ORG_LIST_PATHS[ProviderName.PLANETSCALE]
    )
    for _ in range(5):
        gw.query("{ organizations(first: 1, providers: [PLANETSCALE]) { nodes { id } } }")
    health = {p["provider"]: p for p in gw.data(HEALTH)["providers"]}
    assert health["PLANETSCALE"]["healthy"] is False
    assert health["PLANETSCALE"]["lastErrorCode"] == "UPSTREAM_UNAVAILABLE"


# ---------------------------------------------------------------------------- schema


def test_the_printed_schema_names_its_roots() -> None:
    from graphql import build_schema as build_sdl

    printed = subprocess.run(
        [ORGGRAPH, "schema"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert printed.startswith("schema {\n  query: Query\n  mutation: Mutation\n}\n")
    schema = build_sdl(printed)
    assert schema.subscription_type is None
    assert schema.mutation_type is not None and schema.mutation_type.name == "Mutation"


# ---------------------------------------------------------------------------- demo mode


def test_demo_mode_refuses_a_public_address_without_demo_flag() -> None:
    result = subprocess.run(
        [ORGGRAPH, "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "ORGGRAPH_CONFIG"},
    )
    assert result.returncode == 2
    assert "--demo" in result.stderr and "config" in result.stderr


def test_demo_mode_answers_only_loopback_host_names() -> None:
    with serve_app(create_app(None)) as demo:
        ok = http.post(demo.url + "/graphql", json={"query": "{ providers { provider } }"})
        assert ok.status_code == 200
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            response = http.post(
                demo.url + "/graphql",
                json={"query": "{ providers { provider } }"},
                headers={"Host": host},
            )
            assert response.status_code == 200, host
        for host in ("attacker.example", "attacker.example:8000", "10.0.0.1", "127.0.0.1.nip.io"):
            response = http.post(
                demo.url + "/graphql",
                json={"query": "{ providers { provider } }"},
                headers={"Host": host},
            )
            assert response.status_code == 403, host
            assert codes(response) == ["FORBIDDEN"]


# ---------------------------------------------------------------------------- keys


def test_key_new_prints_a_fresh_key_and_its_config_line() -> None:
    outputs = [
        subprocess.run(
            [ORGGRAPH, "key", "new", "--tenant", "acme"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        for _ in range(2)
    ]
    keys = []
    for out in outputs:
        key = next(line.split()[1] for line in out.splitlines() if line.startswith("key:"))
        assert len(key) >= 32
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert f'api_keys = ["sha256:{digest}"]' in out
        assert "[tenants.acme]" in out
        keys.append(key)
    assert keys[0] != keys[1]
