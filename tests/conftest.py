"""Shared fixtures: the five sandboxes and gateways on loopback, configured through real TOML.

Tenants of the test deployment:
* ``acme`` and ``globex``: every provider, each with its sandbox account's credentials;
* ``partial``: only CapyDB and PlanetScale credentials (acme's);
* ``broken``: acme's ids but wrong secrets everywhere, for upstream-auth failures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings, load_settings
from gateway.tenancy import hash_api_key
from providers.base import ProviderName, load_sandbox_module
from providers.sandbox_kit import SandboxOptions
from tests.processes import RedisServer
from tests.support import ServedApp, http, serve_app, serve_sandboxes

# Pages of at most 3 force the gateway to walk several upstream pages per provider.
SANDBOX_OPTIONS = SandboxOptions(orgs=14, max_page_size=3, rate_limits=False)

# Where each provider's organization listing starts (for faults aimed at it, not at tokens).
ORG_LIST_PATHS = {
    ProviderName.CAPYDB: "/v1/me",
    ProviderName.LOKE: "/organizations",
    ProviderName.BUNDLE: "/api/v1/organization/",
    ProviderName.PLANETSCALE: "/organizations",
    ProviderName.UPSUN: "/organizations",
}

KEYS = {
    "acme": "test-gateway-key-acme",
    "globex": "test-gateway-key-globex",
    "partial": "test-gateway-key-partial",
    "broken": "test-gateway-key-broken",
}


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _inline(table: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in table.items()) + " }"


def sandbox_credentials(
    provider: ProviderName, account: str, options: SandboxOptions = SANDBOX_OPTIONS
) -> dict[str, str]:
    creds: dict[str, str] = load_sandbox_module(provider).demo_credentials(account, options)
    return creds


def broken(creds: dict[str, str]) -> dict[str, str]:
    """Same shape, wrong secrets (ids kept, so only the secret part is wrong)."""
    out = dict(creds)
    for key in ("api_key", "client_secret", "service_token", "api_token"):
        if key in out:
            out[key] = out[key] + "-wrong"
    return out


def write_config(
    path: Path,
    sandboxes: dict[ProviderName, ServedApp],
    *,
    timeout: float = 5.0,
    cache: dict[str, Any] | None = None,
    provider_ttls: dict[ProviderName, float] | None = None,
    server: dict[str, Any] | None = None,
    tenant_limits: dict[str, dict[str, int]] | None = None,
    options: SandboxOptions = SANDBOX_OPTIONS,
    provider_settings: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A gateway config over ``sandboxes`` with the four test tenants. ``server`` replaces the
    [server] table (default: a low max_depth and an upstream-call budget that lets the tests
    walk the sandboxes' deliberately small pages); ``tenant_limits`` adds rate-limit keys;
    ``options`` are the sandboxes' (their accounts' credentials depend on them);
    ``provider_settings`` adds keys to ``[providers.<key>]`` tables."""
    server = server if server is not None else {"max_depth": 8, "max_upstream_calls": 1000}
    lines = ["[server]"]
    for key, value in server.items():
        if isinstance(value, list):
            lines.append(f"{key} = [{', '.join(_toml_value(v) for v in value)}]")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    lines += ["", "[cache]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in (cache or {"backend": "none"}).items()]
    lines.append("")
    for provider, served in sandboxes.items():
        lines.append(f"[providers.{provider.key}]")
        lines.append(f"base_url = {_toml_value(served.url)}")
        lines.append(f"timeout_seconds = {timeout}")
        if provider_ttls and provider in provider_ttls:
            lines.append(f"ttl_seconds = {provider_ttls[provider]}")
        # Breakers stay shut unless a test asks for one: the shared deployment lives through
        # every fault-injection test, and one test's failures must not fail the next test fast.
        # No outbound pacing either: these sandboxes enforce no rate limit (rate_limits=False).
        extra = {
            "breaker_failures": 0,
            "rate_limit_per_minute": 0,
            **(provider_settings or {}).get(provider.key, {}),
        }
        for key, value in extra.items():
            lines.append(f"{key} = {_toml_value(value)}")
        token_path = getattr(load_sandbox_module(provider), "TOKEN_PATH", None)
        if token_path and "token_url" not in extra:
            lines.append(f"token_url = {_toml_value(served.url + token_path)}")
        lines.append("")
    tenants: dict[str, dict[ProviderName, dict[str, str]]] = {
        "acme": {p: sandbox_credentials(p, "acme", options) for p in ProviderName},
        "globex": {p: sandbox_credentials(p, "globex", options) for p in ProviderName},
        "partial": {
            p: sandbox_credentials(p, "acme", options)
            for p in (ProviderName.CAPYDB, ProviderName.PLANETSCALE)
        },
        "broken": {p: broken(sandbox_credentials(p, "acme", options)) for p in ProviderName},
    }
    for name, creds in tenants.items():
        lines.append(f"[tenants.{name}]")
        lines.append(f'api_keys = ["{hash_api_key(KEYS[name])}"]')
        for key, value in (tenant_limits or {}).get(name, {}).items():
            lines.append(f"{key} = {value}")
        lines.append(f"[tenants.{name}.credentials]")
        for provider, values in creds.items():
            lines.append(f"{provider.key} = {_inline(values)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class Deployment:
    """A served gateway plus the sandboxes behind it."""

    url: str
    sandboxes: dict[ProviderName, ServedApp]
    settings: Settings

    def query(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        tenant: str | None = "acme",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if tenant is not None:
            all_headers["Authorization"] = f"Bearer {KEYS[tenant]}"
        return http.post(
            self.url + "/graphql",
            json={"query": query, "variables": variables or {}},
            headers=all_headers,
        )

    def data(self, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> Any:
        """The ``data`` of a query that must succeed without errors."""
        response = self.query(query, variables, **kw)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def sandboxes_requests(self, provider: str) -> list[dict[str, str]]:
        return self.sandboxes[ProviderName(provider)].requests()

    def upstream_requests(self) -> dict[ProviderName, list[dict[str, str]]]:
        return {p: s.requests() for p, s in self.sandboxes.items()}

    def reset_sandboxes(self) -> None:
        for served in self.sandboxes.values():
            served.clear_faults()
            served.clear_requests()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a free loopback port."""
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sandboxes() -> Iterator[dict[ProviderName, ServedApp]]:
    with serve_sandboxes(SANDBOX_OPTIONS) as served:
        yield served


@pytest.fixture(scope="session")
def deployment(
    sandboxes: dict[ProviderName, ServedApp], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    config = write_config(tmp_path_factory.mktemp("cfg") / "orggraph.toml", sandboxes)
    settings = load_settings(config)
    with serve_app(create_app(settings)) as gateway:
        yield Deployment(gateway.url, sandboxes, settings)


@pytest.fixture
def gw(deployment: Deployment) -> Iterator[Deployment]:
    """The shared deployment with clean sandbox faults and request logs around each test."""
    deployment.reset_sandboxes()
    yield deployment
    deployment.reset_sandboxes()


MakeGateway = Callable[..., Deployment]


@pytest.fixture
def make_gateway(sandboxes: dict[ProviderName, ServedApp], tmp_path: Path) -> Iterator[MakeGateway]:
    """Fresh gateways (fresh caches, limits, secrets) over the shared sandboxes:
    ``make_gateway(**write_config keywords)``; sandbox faults and logs are clean around it."""
    stack = ExitStack()

    def make(**config: Any) -> Deployment:
        path = write_config(tmp_path / f"cfg{len(stack._exit_callbacks)}.toml", sandboxes, **config)
        settings = load_settings(path)
        served = stack.enter_context(serve_app(create_app(settings)))
        return Deployment(served.url, sandboxes, settings)

    for served in sandboxes.values():
        served.clear_faults()
        served.clear_requests()
    with stack:
        yield make
    for served in sandboxes.values():
        served.clear_faults()
        served.clear_requests()
