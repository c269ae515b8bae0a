"""Each adapter's declared ``call_costs`` against the upstream requests it really makes.

The gateway's static cost estimate (``[server] max_upstream_calls``) trusts these numbers, so
they are measured here: every method runs against its sandbox (large enough for full pages) and
the sandbox's request log is counted, token exchanges left out as ``CallCosts`` documents.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from providers.base import (
    CallCosts,
    CallMemo,
    OrganizationRecord,
    ProviderAdapter,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    call_memo,
    load_adapter_class,
    load_sandbox_module,
)
from providers.bundle import sandbox as bundle_sandbox
from providers.sandbox_kit import SandboxOptions
from tests.support import ServedApp, serve_app, serve_sandboxes

__all__: list[str] = []

# Enough organizations that every listing has a full first page and a next one.
OPTIONS = SandboxOptions(orgs=420, rate_limits=False)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[ProviderName, ServedApp]]:
    with serve_sandboxes(OPTIONS) as served:
        yield served


@dataclass
class Measured:
    adapter: ProviderAdapter
    served: ServedApp
    credentials: ProviderCredentials

    def calls(self) -> int:
        """Upstream requests since the last call, token exchanges left out."""
        token_path = getattr(load_sandbox_module(self.adapter.provider), "TOKEN_PATH", None)
        count = sum(1 for r in self.served.requests() if r["path"] != token_path)
        self.served.clear_requests()
        return count


async def _measured(provider: ProviderName, served: ServedApp) -> Measured:
    module = load_sandbox_module(provider)
    token_path = getattr(module, "TOKEN_PATH", None)
    settings = ProviderSettings(
        base_url=served.url, token_url=served.url + token_path if token_path else None
    )
    adapter = load_adapter_class(provider)(settings)  # type: ignore[call-arg]
    credentials = adapter.parse_credentials(module.demo_credentials("acme", OPTIONS))
    served.clear_requests()
    return Measured(adapter, served, credentials)


@pytest.fixture(params=list(ProviderName), ids=lambda p: p.key)
async def measured(
    request: pytest.FixtureRequest, servers: dict[ProviderName, ServedApp]
) -> AsyncIterator[Measured]:
    m = await _measured(request.param, servers[request.param])
    yield m
    await m.adapter.aclose()


async def _first_organization(m: Measured) -> OrganizationRecord:
    page = await m.adapter.list_organizations(m.credentials)
    m.calls()
    return page.organizations[0]


async def test_listing(measured: Measured) -> None:
    costs: CallCosts = measured.adapter.call_costs
    page = await measured.adapter.list_organizations(measured.credentials)
    assert measured.calls() == 1
    if costs.organizations_per_page is None:
        assert len(page.organizations) == 1 and page.next_cursor is None
    else:
        # A full first page (the data set is larger) holds exactly the declared number.
        assert page.next_cursor is not None
        assert len(page.organizations) == costs.organizations_per_page
        await measured.adapter.list_organizations(measured.credentials, cursor=page.next_cursor)
        assert measured.calls() == 1


async def test_get_organization(measured: Measured) -> None:
    first = await _first_organization(measured)
    await measured.adapter.get_organization(measured.credentials, first.provider_id)
    assert measured.calls() == measured.adapter.call_costs.get_organization


async def test_usage_and_subscriptions(measured: Measured) -> None:
    costs = measured.adapter.call_costs
    first = await _first_organization(measured)
    await measured.adapter.get_usage(measured.credentials, first)
    usage = measured.calls()
    await measured.adapter.list_subscriptions(measured.credentials, first)
    subscriptions = measured.calls()
    token = call_memo.set(CallMemo())  # one GraphQL request reading both
    try:
        await measured.adapter.get_usage(measured.credentials, first)
        await measured.adapter.list_subscriptions(measured.credentials, first)
    finally:
        call_memo.reset(token)
    both = measured.calls()
    together = costs.per_organization(usage=True, subscriptions=True)
    assert subscriptions == costs.subscriptions
    if measured.adapter.provider is ProviderName.BUNDLE:
        # Usage is inside the organization object here; the newer shape costs the declared GET
        # (the next test), so the declared numbers are the upper bound.
        assert usage == both == 0 < costs.usage == together
    else:
        assert usage == costs.usage
        assert both == together


async def test_bundle_usage_without_the_usage_member_costs_the_declared_call() -> None:
    with serve_app(bundle_sandbox.create_app(options=OPTIONS, include_usage=False)) as served:
        m = await _measured(ProviderName.BUNDLE, served)
        try:
            first = await _first_organization(m)
            usage = await m.adapter.get_usage(m.credentials, first)
            assert usage is not None and usage.metrics[0].key == "monthly_posts"
            assert m.calls() == m.adapter.call_costs.usage == 1
            assert m.adapter.call_costs.per_organization(usage=True, subscriptions=True) == 1
        finally:
            await m.adapter.aclose()
