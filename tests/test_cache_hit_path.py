"""The cache-hit path (``gateway/cache_hit_path.py``) over loopback HTTP: what it answers is what
the full path answers, byte for byte; its metrics and access lines are the full path's; and every
request it does not fully handle falls through to the full path with identical behaviour.

Each gateway here is served in-process, so a test can read the path's ``served`` count (which
would not move if a hit went the full way) and switch the path off (``enabled``) to get the full
path's answer to the same request for comparison.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from gateway.cache_hit_path import CacheHitPath
from gateway.settings import load_settings
from gateway.telemetry import Telemetry
from providers.base import ProviderName
from tests.conftest import KEYS, Deployment, write_config
from tests.processes import free_port
from tests.support import ServedApp, http, serve_app
from tests.test_logging import LogFile
from tests.test_observability import delta, scrape

ORG = (
    "query Org($id: String!) { organization(provider: PLANETSCALE, id: $id) "
    "{ providerId name billingEmail plan } }"
)
NAMES = "{ organizations(first: 3, providers: [PLANETSCALE]) { nodes { name } } }"
MEMORY = {"backend": "memory", "ttl_seconds": 30}
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Gateway:
    deployment: Deployment
    app: Any

    @property
    def url(self) -> str:
        return self.deployment.url

    @property
    def hits(self) -> CacheHitPath:
        path: CacheHitPath = self.app.cache_hits
        return path

    def post(
        self,
        body: dict[str, Any] | bytes,
        *,
        tenant: str | None = "acme",
        headers: dict[str, str] | None = None,
        full: bool = False,
        chunked: bool = False,
    ) -> httpx.Response:
        """POST /graphql; ``full=True`` with the cache-hit path switched off; ``chunked`` sends
        the body in two chunks, without a length."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        if tenant is not None:
            sent["Authorization"] = f"Bearer {KEYS[tenant]}"
        raw = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).read()
        content: bytes | Iterator[bytes] = iter([raw[:10], raw[10:]]) if chunked else raw
        self.hits.enabled = not full
        try:
            return http.post(self.url + "/graphql", content=content, headers=sent)
        finally:
            self.hits.enabled = True


MakeGateway = Callable[..., Gateway]


@pytest.fixture
def make_gateway(sandboxes: dict[ProviderName, ServedApp], tmp_path: Path) -> Iterator[MakeGateway]:
    """Fresh gateways over the shared sandboxes, with a memory cache unless told otherwise;
    ``telemetry`` traces into the caller's span processor."""
    stack = ExitStack()
    made = 0

    def make(*, telemetry: Telemetry | None = None, **config: Any) -> Gateway:
        nonlocal made
        made += 1
        config.setdefault("cache", MEMORY)
        path = write_config(tmp_path / f"cfg{made}.toml", sandboxes, **config)
        settings = load_settings(path)
        app = create_app(settings, telemetry=telemetry)
        served = stack.enter_context(serve_app(app))
        return Gateway(Deployment(served.url, sandboxes, settings), app)

    for served in sandboxes.values():
        served.clear_faults()
        served.clear_requests()
    with stack:
        yield make


def planetscale_ids(gateway: Gateway, tenant: str = "acme") -> list[str]:
    response = gateway.post(
        {"query": "{ organizations(first: 3, providers: [PLANETSCALE]) { nodes { providerId } } }"},
        tenant=tenant,
    )
    return [node["providerId"] for node in response.json()["data"]["organizations"]["nodes"]]


def envelope(response: httpx.Response) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Everything of an answer but its Date: status, body, and every header in order."""
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() != b"date"]
    return response.status_code, response.content, headers


def full_and_hit_path(
    gateway: Gateway, body: dict[str, Any] | bytes, **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    """The same cached request answered by the full path, then by the cache-hit path (which
    must have served it). A pair whose ``max-age`` straddled a second is asked again: only
    the clock may tell the two apart."""
    for _ in range(5):
        served = gateway.hits.served
        full = gateway.post(body, full=True, **kwargs)
        assert gateway.hits.served == served
        fast = gateway.post(body, **kwargs)
        assert gateway.hits.served == served + 1, "the hit went the full way"
        if full.headers.get("cache-control") == fast.headers.get("cache-control"):
            return full, fast
    raise AssertionError("max-age never agreed")


def assert_full_path(gateway: Gateway, body: dict[str, Any] | bytes, **kwargs: Any) -> None:
    """The request falls through: the cache-hit path serves nothing, and the answer is the one
    the full path gives with the cache-hit path switched off."""
    served = gateway.hits.served
    with_path = gateway.post(body, **kwargs)
    assert gateway.hits.served == served, "the cache-hit path answered it"
    without = gateway.post(body, full=True, **kwargs)
    assert envelope(with_path) == envelope(without)


# ---------------------------------------------------------------------------- byte for byte


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Accept": "application/graphql-response+json"},
        {"Accept": "application/json, application/graphql-response+json;q=0.9"},
        {"Accept": "*/*", "Content-Type": "application/json; charset=utf-8"},
    ],
    ids=["default", "graphql-response+json", "json-preferred", "any+charset"],
)
def test_a_hit_is_byte_identical_to_the_full_paths(
    make_gateway: MakeGateway, headers: dict[str, str]
) -> None:
    gateway = make_gateway()
    (first, *_) = planetscale_ids(gateway)
    body = {"query": ORG, "variables": {"id": first}, "operationName": "Org"}
    miss = gateway.post(body, headers=headers)
    assert miss.headers["x-orggraph-cache"] == "miss"
    full, fast = full_and_hit_path(gateway, body, headers={**headers, "X-Request-Id": "same-id"})
    assert envelope(full) == envelope(fast)
    assert fast.headers["x-orggraph-cache"] == "hit"
    assert fast.headers["x-request-id"] == "same-id"
    assert re.fullmatch(r"private, max-age=\d+", fast.headers["cache-control"])
    assert fast.headers["vary"] == "Authorization, Accept"
    assert fast.json()["data"]["organization"]["providerId"] == first
    wanted = headers.get("Accept", "application/json").split(",")[0]
    assert fast.headers["content-type"] == ("application/json" if "*" in wanted else wanted)


def test_a_hit_without_a_request_id_gets_a_fresh_one(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    gateway.post({"query": NAMES})
    full, fast = full_and_hit_path(gateway, {"query": NAMES})
    assert HEX32.match(full.headers["x-request-id"]) and HEX32.match(fast.headers["x-request-id"])
    assert full.headers["x-request-id"] != fast.headers["x-request-id"]
    strip = [(k, v) for k, v in envelope(fast)[2] if k != b"x-request-id"]
    assert [(k, v) for k, v in envelope(full)[2] if k != b"x-request-id"] == strip


def test_a_chunked_body_is_served_alike(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    gateway.post({"query": NAMES})
    full, fast = full_and_hit_path(
        gateway, {"query": NAMES}, chunked=True, headers={"X-Request-Id": "chunked"}
    )
    assert envelope(full) == envelope(fast)
    assert fast.headers["x-orggraph-cache"] == "hit"


def test_each_tenant_is_answered_from_its_own_entries(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    acme = gateway.post({"query": NAMES})
    served = gateway.hits.served
    # globex's first request misses (acme's entry is not globex's) and goes the full way.
    globex = gateway.post({"query": NAMES}, tenant="globex")
    assert globex.headers["x-orggraph-cache"] == "miss"
    assert gateway.hits.served == served
    assert globex.json() != acme.json()
    full, fast = full_and_hit_path(
        gateway, {"query": NAMES}, tenant="globex", headers={"X-Request-Id": "g"}
    )
    assert envelope(full) == envelope(fast)
    assert fast.json() == globex.json()
    assert gateway.post({"query": NAMES}).json() == acme.json()


# ---------------------------------------------------------------------------- what it records


def test_a_hit_is_counted_exactly_as_the_full_path_counts_it(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    gateway.post({"query": NAMES})
    cache = "orggraph_cache_requests_total"
    for full in (True, False):
        served = gateway.hits.served
        before = scrape(gateway.url)
        assert gateway.post({"query": NAMES}, full=full).headers["x-orggraph-cache"] == "hit"
        after = scrape(gateway.url)
        assert gateway.hits.served == served + (0 if full else 1)
        assert delta(before, after, cache, layer="response", result="hit") == 1
        assert delta(before, after, cache, layer="response", result="miss") == 0
        assert delta(before, after, cache, layer="upstream") == 0
        assert delta(before, after, cache) == 1
        assert delta(before, after, "orggraph_requests_total") == 1
        assert (
            delta(before, after, "orggraph_requests_total", operation_type="query", outcome="ok")
            == 1
        )
        assert delta(before, after, "orggraph_request_duration_seconds_count") == 1
        assert delta(before, after, "orggraph_upstream_requests_total") == 0
        assert delta(before, after, "orggraph_rate_limited_total") == 0


def test_a_hit_writes_the_full_paths_access_line(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway()
    (first, *_) = planetscale_ids(gateway)
    body = {"query": ORG, "variables": {"id": first}, "operationName": "Org"}
    gateway.post(body)
    log = LogFile(tmp_path / "access.log")
    try:
        full_and_hit_path(gateway, body, headers={"X-Request-Id": "line"})
        lines = [line for line in log.lines() if line["logger"] == "orggraph.access"]
    finally:
        log.close()
    # The last pair (an earlier one is asked again when its max-age straddled a second).
    by_path = dict(zip(("full", "fast"), lines[-2:], strict=True))
    for line in by_path.values():
        assert set(line) == {
            "ts",
            "level",
            "logger",
            "message",
            "request_id",
            "method",
            "tenant",
            "operation_type",
            "operation_name",
            "status",
            "outcome",
            "duration_ms",
            "cache",
            "upstream",
            "upstream_dropped",
        }
        assert line["duration_ms"] > 0
    same = {k: v for k, v in by_path["fast"].items() if k not in ("ts", "duration_ms")}
    assert same == {k: v for k, v in by_path["full"].items() if k not in ("ts", "duration_ms")}
    assert list(by_path["fast"]) == list(by_path["full"])  # the same order, too
    assert same == {
        "level": "info",
        "logger": "orggraph.access",
        "message": "POST /graphql 200 ok",
        "request_id": "line",
        "method": "POST",
        "tenant": "acme",
        "operation_type": "query",
        "operation_name": "Org",
        "status": 200,
        "outcome": "ok",
        "cache": {"response": "hit", "upstream": {"hit": 0, "miss": 0, "stale": 0}},
        "upstream": [],
        "upstream_dropped": 0,
    }


def test_a_request_that_falls_through_keeps_the_id_it_was_given(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway()
    log = LogFile(tmp_path / "access.log")
    try:
        response = gateway.post({"query": NAMES}, tenant=None)  # 401: looked at, fell through
        (line,) = [line for line in log.lines() if line["logger"] == "orggraph.access"]
    finally:
        log.close()
    assert response.status_code == 401
    assert HEX32.match(response.headers["x-request-id"])
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["status"] == 401 and line["tenant"] is None


def test_every_line_of_a_request_that_falls_through_names_one_id(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    # A Redis that refuses connections: the cache-hit path's lookup fails and logs it (with
    # the request's id), then the request falls through and is answered uncached.
    url = f"redis://127.0.0.1:{free_port()}/0"
    gateway = make_gateway(cache={"backend": "redis", "url": url, "redis_timeout_seconds": 0.5})
    log = LogFile(tmp_path / "gateway.log")
    try:
        response = gateway.post({"query": NAMES})
        lines = log.lines()
    finally:
        log.close()
    assert response.status_code == 200 and "errors" not in response.json()
    assert HEX32.match(response.headers["x-request-id"])
    (warning,) = [line for line in lines if line["logger"] == "orggraph.cache"]
    assert "cache get failed" in warning["message"]
    (access,) = [line for line in lines if line["logger"] == "orggraph.access"]
    assert warning["request_id"] == access["request_id"] == response.headers["x-request-id"]


# ---------------------------------------------------------------------------- falls through


def test_requests_it_does_not_handle_get_the_full_paths_answer(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(server={"max_body_bytes": 2000, "max_upstream_calls": 1000})
    gateway.post({"query": NAMES})  # cached from here on
    rid = {"X-Request-Id": "through"}
    cases: list[tuple[str, dict[str, Any] | bytes, dict[str, Any]]] = [
        ("no key", {"query": NAMES}, {"tenant": None}),
        (
            "unknown key",
            {"query": NAMES},
            {"tenant": None, "headers": {"Authorization": "Bearer x"}},
        ),
        (
            "malformed key",
            {"query": NAMES},
            {"tenant": None, "headers": {"Authorization": "Basic"}},
        ),
        ("406", {"query": NAMES}, {"headers": {"Accept": "image/png"}}),
        ("415", {"query": NAMES}, {"headers": {"Content-Type": "text/plain"}}),
        ("413", {"query": NAMES + " " * 3000}, {}),
        ("413 chunked", {"query": NAMES + " " * 3000}, {"chunked": True}),
        ("not JSON", b'{"query": ', {}),
        ("batch", [{"query": NAMES}], {}),  # type: ignore[list-item]
        ("not an object", b'"{ __typename }"', {}),
        ("empty query", {"query": "  "}, {}),
        ("query not a string", {"query": 1}, {}),
        ("bad variables", {"query": NAMES, "variables": []}, {}),
        ("bad operationName", {"query": NAMES, "operationName": 3}, {}),
        (
            "deep variables",
            {
                "query": NAMES,
                "variables": {
                    "a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
                },
            },
            {},
        ),
        ("cost", {"query": NAMES, "extensions": {"cost": True}}, {}),
        ("bad extensions", {"query": NAMES, "extensions": []}, {}),
    ]
    for name, body, kwargs in cases:
        kwargs = {**kwargs, "headers": {**rid, **kwargs.get("headers", {})}}
        if isinstance(body, list):
            body = httpx.Request("POST", "/", json=body).read()
        try:
            assert_full_path(gateway, body, **kwargs)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def test_get_and_persisted_queries_take_the_full_path(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    sha = hashlib.sha256(NAMES.encode()).hexdigest()
    apq = {"persistedQuery": {"version": 1, "sha256Hash": sha}}
    served = gateway.hits.served
    # Registering (query + hash) and the hash alone: the full path's, both answered.
    registered = gateway.post({"query": NAMES, "extensions": apq})
    assert registered.status_code == 200 and "errors" not in registered.json()
    assert gateway.post({"extensions": apq}).headers["x-orggraph-cache"] == "miss"
    by_hash = gateway.post({"extensions": apq})
    assert by_hash.headers["x-orggraph-cache"] == "hit"
    assert by_hash.json() == registered.json()
    response = http.get(
        gateway.url + "/graphql",
        params={"query": NAMES},
        headers={"Authorization": f"Bearer {KEYS['acme']}"},
    )
    assert response.headers["x-orggraph-cache"] == "hit"
    assert response.json() == registered.json()
    assert gateway.hits.served == served
    assert gateway.post({"query": NAMES}).headers["x-orggraph-cache"] == "hit"
    assert gateway.hits.served == served + 1


def test_a_miss_is_executed_once_and_counted_once(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    before = scrape(gateway.url)
    served = gateway.hits.served
    # The body the cache-hit path read is replayed: the full path executes this very query.
    miss = gateway.post({"query": NAMES, "operationName": None, "extensions": {}})
    after = scrape(gateway.url)
    assert miss.headers["x-orggraph-cache"] == "miss"
    assert len(miss.json()["data"]["organizations"]["nodes"]) == 3
    assert gateway.hits.served == served
    cache = "orggraph_cache_requests_total"
    assert delta(before, after, cache, layer="response", result="miss") == 1
    assert delta(before, after, cache, layer="response", result="hit") == 0
    assert delta(before, after, "orggraph_requests_total") == 1
    # The same request again: a hit, served by the cache-hit path (extensions {} included).
    hit = gateway.post({"query": NAMES, "operationName": None, "extensions": {}})
    assert hit.headers["x-orggraph-cache"] == "hit" and hit.content == miss.content
    assert gateway.hits.served == served + 1


def test_with_tracing_on_hits_take_the_full_path(
    sandboxes: dict[ProviderName, ServedApp], make_gateway: MakeGateway
) -> None:
    exporter = InMemorySpanExporter()
    gateway = make_gateway(telemetry=Telemetry.with_processor(SimpleSpanProcessor(exporter)))
    gateway.post({"query": NAMES})
    served = gateway.hits.served
    hit = gateway.post({"query": NAMES})
    assert hit.headers["x-orggraph-cache"] == "hit"
    assert gateway.hits.served == served
    spans = [s for s in exporter.get_finished_spans() if s.attributes]
    assert [s.attributes.get("orggraph.cache") for s in spans if s.attributes][-1] == "hit"


def test_rate_limits_count_each_request_once(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(tenant_limits={"acme": {"rate_limit_per_minute": 3}})
    before = scrape(gateway.url)
    served = gateway.hits.served
    statuses = [gateway.post({"query": NAMES}).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]  # a miss, then two hits of the cache-hit path
    assert gateway.hits.served == served + 2
    limited = gateway.post({"query": NAMES}, headers={"X-Request-Id": "limited"})
    assert gateway.hits.served == served + 2
    assert limited.status_code == 429
    assert limited.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["errors"][0]["extensions"]["retryAfter"] == int(
        limited.headers["retry-after"]
    )
    assert limited.headers["x-request-id"] == "limited"
    after = scrape(gateway.url)
    assert delta(before, after, "orggraph_rate_limited_total", tenant="acme") == 1
    # Another tenant's allowance is its own, and its hits are served as usual.
    gateway.post({"query": NAMES}, tenant="globex")
    assert gateway.post({"query": NAMES}, tenant="globex").status_code == 200
    assert gateway.hits.served == served + 3


def test_cors_headers_are_the_full_paths(make_gateway: MakeGateway) -> None:
    allowed = "https://dashboard.example"
    gateway = make_gateway(server={"cors_origins": [allowed], "max_upstream_calls": 1000})
    gateway.post({"query": NAMES})
    for origin in (allowed, "https://elsewhere.example", None):
        headers = {"X-Request-Id": "cors"} | ({"Origin": origin} if origin else {})
        full, fast = full_and_hit_path(gateway, {"query": NAMES}, headers=headers)
        assert envelope(full) == envelope(fast)
        assert "Origin" in fast.headers["vary"]
        if origin == allowed:
            assert fast.headers["access-control-allow-origin"] == allowed
            assert "X-OrgGraph-Cache" in fast.headers["access-control-expose-headers"]
        else:
            assert "access-control-allow-origin" not in fast.headers
    preflight = http.options(
        gateway.url + "/graphql",
        headers={"Origin": allowed, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == allowed


def test_demo_mode_keeps_its_loopback_guard() -> None:
    app = create_app(None)
    with serve_app(app) as demo:
        gateway = Gateway(Deployment(demo.url, {}, None), app)  # type: ignore[arg-type]
        body = {"query": NAMES}
        assert gateway.post(body, tenant=None).headers["x-orggraph-cache"] == "miss"
        for host in (None, "localhost:8000", "[::1]:8000"):
            headers = {"X-Request-Id": "demo"} | ({"Host": host} if host else {})
            full, fast = full_and_hit_path(gateway, body, tenant=None, headers=headers)
            assert envelope(full) == envelope(fast)
        for host in ("attacker.example", "127.0.0.1.nip.io"):
            served = gateway.hits.served
            refused = gateway.post(body, tenant=None, headers={"Host": host})
            assert refused.status_code == 403, host
            assert refused.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
            assert gateway.hits.served == served
