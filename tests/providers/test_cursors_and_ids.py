"""Every adapter against its sandbox: what a client-supplied cursor or id may make us request.

Cursors carry an upstream next-page URL and ids become path segments; both come from clients,
and whatever they make us request carries the tenant's credentials. Each sandbox is served
behind a path prefix (``/p/<provider>``) next to a sibling mount, with a recorder in front of
everything, so "no request" means no request reached the server at all — not even a token
exchange.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from providers.base import (
    BadUpstreamResponse,
    InvalidCursor,
    OrganizationRecord,
    OrganizationUpdate,
    ProviderAdapter,
    ProviderName,
    ProviderSettings,
    UpstreamNotFound,
    load_adapter_class,
    load_sandbox_module,
)
from providers.sandbox_kit import SandboxOptions
from tests.providers.harness import Recorder
from tests.support import ServedApp, serve_app

__all__: list[str] = []

OPTIONS = SandboxOptions(orgs=16, max_page_size=2, rate_limits=False)
LISTED = (ProviderName.LOKE, ProviderName.PLANETSCALE, ProviderName.UPSUN)
"""The providers whose organization lists have next pages (and so cursors)."""
LIST_PATH = "/organizations"
SIBLING = "/p/sibling"


def _prefix(provider: ProviderName) -> str:
    return f"/p/{provider.key}"


@dataclass
class Served:
    provider: ProviderName
    root: str
    """scheme://host:port of the server"""
    sandbox: ServedApp
    """The sandbox, its url being base_url (root + prefix)."""
    recorder: Recorder

    @property
    def base_url(self) -> str:
        return self.sandbox.url

    @property
    def prefix(self) -> str:
        return _prefix(self.provider)

    def upstream_requests(self) -> list[tuple[str, str]]:
        """What reached the server, token exchanges left out."""
        token_path = getattr(load_sandbox_module(self.provider), "TOKEN_PATH", None)
        token = self.prefix + token_path if token_path else None
        return [(m, line) for m, line in self.recorder.seen if line != token]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[ProviderName, Served]]:
    out: dict[ProviderName, Served] = {}
    stack = []
    try:
        for provider in ProviderName:
            inner = load_sandbox_module(provider).create_app(options=OPTIONS)
            sibling = load_sandbox_module(ProviderName.CAPYDB).create_app(options=OPTIONS)
            recorder = Recorder(
                Starlette(routes=[Mount(_prefix(provider), app=inner), Mount(SIBLING, sibling)])
            )
            ctx = serve_app(recorder)
            served = ctx.__enter__()
            stack.append(ctx)
            out[provider] = Served(
                provider, served.url, ServedApp(inner, served.url + _prefix(provider)), recorder
            )
        yield out
    finally:
        for ctx in reversed(stack):
            ctx.__exit__(None, None, None)


@dataclass
class Upstream:
    served: Served
    adapter: ProviderAdapter
    credentials: Any

    @property
    def provider(self) -> ProviderName:
        return self.served.provider

    def fault(self, path: str, **fault: Any) -> None:
        """A fault on ``path`` (relative to base_url; faults see the full, mounted path)."""
        self.served.sandbox.fault(path_prefix=self.served.prefix + path, **fault)
        self.served.recorder.seen.clear()


def _adapter(served: Served) -> ProviderAdapter:
    module = load_sandbox_module(served.provider)
    token_path = getattr(module, "TOKEN_PATH", None)
    settings = ProviderSettings(
        base_url=served.base_url,
        token_url=served.base_url + token_path if token_path else None,
        timeout_seconds=5.0,
    )
    return load_adapter_class(served.provider)(settings)  # type: ignore[call-arg]


async def _upstream(served: Served) -> Upstream:
    served.sandbox.clear_faults()
    credentials = load_adapter_class(served.provider).parse_credentials(
        load_sandbox_module(served.provider).demo_credentials("globex", OPTIONS)
    )
    served.recorder.seen.clear()
    return Upstream(served, _adapter(served), credentials)


@pytest.fixture(params=list(ProviderName), ids=lambda p: p.key)
async def upstream(
    request: pytest.FixtureRequest, servers: dict[ProviderName, Served]
) -> AsyncIterator[Upstream]:
    up = await _upstream(servers[request.param])
    yield up
    await up.adapter.aclose()
    up.served.sandbox.clear_faults()


ADDRESSED = [p for p in ProviderName if p is not ProviderName.BUNDLE]
"""Providers whose organization ids go into a URL (bundle.social's key names its one org)."""


@pytest.fixture(params=ADDRESSED, ids=lambda p: p.key)
async def addressed(
    request: pytest.FixtureRequest, servers: dict[ProviderName, Served]
) -> AsyncIterator[Upstream]:
    up = await _upstream(servers[request.param])
    yield up
    await up.adapter.aclose()
    up.served.sandbox.clear_faults()


@pytest.fixture(params=LISTED, ids=lambda p: p.key)
async def listed(
    request: pytest.FixtureRequest, servers: dict[ProviderName, Served]
) -> AsyncIterator[Upstream]:
    up = await _upstream(servers[request.param])
    yield up
    await up.adapter.aclose()
    up.served.sandbox.clear_faults()


def hostile_links(served: Served, path: str = LIST_PATH) -> list[str]:
    """Absolute next-page links that must never be followed: each leaves ``base_url + path``
    (or could, once some server normalises it), or smuggles in what a URL must not carry."""
    base, root, prefix = served.base_url, served.root, served.prefix
    split = urlsplit(root)
    host, port = split.hostname, split.port
    assert port is not None
    return [
        f"{base}{path}/../__sandbox/requests",
        f"{base}/../sibling/v1/me",  # the /loke/../capydb/ case: another provider, same host
        f"{base}{path}/..%2F__sandbox%2Frequests",
        f"{base}{path}/%2e%2e/__sandbox/requests",
        f"{base}{path}/%2E%2E/__sandbox/requests",
        f"{base}{path}/.%2e/__sandbox/requests",
        f"{base}{path}%2F..%2F..%2Fsibling%2Fv1%2Fme",
        f"{base}/x/..{path}?after=x",  # dots that happen to land on the list path
        f"{base}/.{path}?after=x",
        f"{base}{path}/.?after=x",
        f"{base}/%2E{path}?after=x",
        f"{base}{path}\\..\\__sandbox\\requests",
        f"{base}\\..{path}?after=x",
        f"{base}{path}%5C..%5C__sandbox",
        f"http://{host}:{port + 1}{prefix}{path}?after=x",  # another port
        f"http://{host}{prefix}{path}?after=x",  # the default port
        f"http://user@{host}:{port}{prefix}{path}?after=x",
        f"http://user:secret@{host}:{port}{prefix}{path}?after=x",
        f"http://{host}:{port}@evil.example{prefix}{path}?after=x",
        f"{base}{path}?after=x#fragment",
        f"{base}{path}#",
        f"{root}{path}?after=x",  # escapes the base_url prefix
        f"{root}{SIBLING}{path}?after=x",
        f"{base}{path}/extra?after=x",
        f"{base}{path}/01HZZZZZZZZZZZZZZZZZZZZZZZ",
        f"{base}{path}%3Fafter=x",
        f"{base}{path[:-1]}",
        f"https://{host}:{port}{prefix}{path}?after=x",
        f"ftp://{host}:{port}{prefix}{path}?after=x",
        f"http://localhost:{port}{prefix}{path}?after=x",
        f"http://evil.example{prefix}{path}?after=x",
        f"{base}{path}?after=x\r\nX-Injected: 1",
        f"{base}{path}?after=x y",
        f" {base}{path}?after=x",
        f"{base}{path}?after=\u00e9",
    ]


def hostile_cursors(served: Served) -> list[str]:
    """What a client may send as a cursor: the hostile links, plus relative ones (cursors are
    the absolute links this adapter handed out, never relative)."""
    return [
        *hostile_links(served),
        f"{LIST_PATH}?after=x",
        f"{served.prefix}{LIST_PATH}?after=x",
        f"//{urlsplit(served.root).netloc}{served.prefix}{LIST_PATH}?after=x",
        "?after=x",
        "page=2",
        "",
        "   ",
        "\ud800",
    ]


# --------------------------------------------------------------------------------------------
# Cursors from clients
# --------------------------------------------------------------------------------------------


async def test_hostile_cursors_are_invalid_and_never_sent(upstream: Upstream) -> None:
    for cursor in hostile_cursors(upstream.served):
        with pytest.raises(InvalidCursor):
            await upstream.adapter.list_organizations(upstream.credentials, cursor=cursor)
        assert upstream.served.recorder.seen == [], cursor


async def test_the_cursors_an_adapter_hands_out_are_followed(listed: Upstream) -> None:
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(20):
        page = await listed.adapter.list_organizations(listed.credentials, cursor=cursor)
        ids.extend(o.provider_id for o in page.organizations)
        cursor = page.next_cursor
        if cursor is None:
            break
        assert cursor.startswith(listed.served.base_url + LIST_PATH + "?")
    assert len(ids) > OPTIONS.max_page_size and len(ids) == len(set(ids))


# --------------------------------------------------------------------------------------------
# Next-page links from upstreams
# --------------------------------------------------------------------------------------------


def _list_page_with_next(provider: ProviderName, link: str) -> dict[str, Any]:
    """A first-page answer whose next-page link is ``link``, in the provider's own shape."""
    if provider is ProviderName.LOKE:
        return {"body": "[]", "headers": {"X-Next-Page": link}}
    if provider is ProviderName.PLANETSCALE:
        page = {"type": "list", "data": [], "next_page": 2, "next_page_url": link}
        return {"body": json.dumps(page)}
    page = {"count": 0, "items": [], "_links": {"next": {"href": link}}}
    return {"body": json.dumps(page)}


def _relative_hostile_links(prefix: str) -> list[str]:
    return [
        "../__sandbox/requests",
        "organizations/../../sibling/v1/me",
        "./organizations?after=x",
        f"{LIST_PATH}?after=x",  # absolute path: leaves the base_url prefix
        f"{SIBLING}{LIST_PATH}?after=x",
        f"{prefix}/x/..{LIST_PATH}?after=x",
        f"{prefix}{LIST_PATH}/%2e%2e",
        f"{prefix}{LIST_PATH}?after=x#frag",
        f"{prefix}\\{LIST_PATH}",
        "//evil.example/organizations",
    ]


async def test_hostile_upstream_links_are_bad_responses(listed: Upstream) -> None:
    served = listed.served
    links = [
        link
        for link in hostile_links(served) + _relative_hostile_links(served.prefix)
        if link.strip() and "\r" not in link  # a header value cannot carry those
    ]
    if listed.provider is ProviderName.LOKE:
        # In a header: latin-1 only, and the surrounding whitespace is not part of the value.
        links = [link for link in links if link.isascii() and link == link.strip()]
    for link in links:
        listed.fault(LIST_PATH, times=1, **_list_page_with_next(listed.provider, link))
        with pytest.raises(BadUpstreamResponse):
            await listed.adapter.list_organizations(listed.credentials)
        # Only the first page was requested; the link never was.
        assert len(served.upstream_requests()) == 1, (link, served.upstream_requests())


async def test_relative_upstream_links_inside_the_list_path_are_followed(
    listed: Upstream,
) -> None:
    served = listed.served
    for link in ("?after=x", f"{served.prefix}{LIST_PATH}?after=x", "organizations?after=x"):
        listed.fault(LIST_PATH, times=1, **_list_page_with_next(listed.provider, link))
        page = await listed.adapter.list_organizations(listed.credentials)
        assert page.next_cursor == served.base_url + LIST_PATH + "?after=x", link


# --------------------------------------------------------------------------------------------
# Upsun's subscription walk: links must stay on that organization's subscriptions
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def upsun(servers: dict[ProviderName, Served]) -> AsyncIterator[Upstream]:
    up = await _upstream(servers[ProviderName.UPSUN])
    yield up
    await up.adapter.aclose()
    up.served.sandbox.clear_faults()


def _upsun_org(up: Upstream, index: int) -> OrganizationRecord:
    org_id = str(up.served.sandbox.app.state.upsun.orgs[index].data["id"])
    return OrganizationRecord(provider=ProviderName.UPSUN, provider_id=org_id, name="x")


async def test_upsun_subscription_links_stay_on_that_organization(upsun: Upstream) -> None:
    org, other = _upsun_org(upsun, 3), _upsun_org(upsun, 7)  # both globex's
    own = f"/organizations/{org.provider_id}/subscriptions"
    served = upsun.served
    links = [
        *hostile_links(served, own),
        f"{served.base_url}/organizations/{other.provider_id}/subscriptions?page%5Bafter%5D=x",
        f"{served.base_url}{own}/../../{other.provider_id}/subscriptions",
        f"{served.base_url}/organizations?page%5Bafter%5D=x",
        f"/organizations/{other.provider_id}/subscriptions",
        f"../{other.provider_id}/subscriptions",
    ]
    for link in links:
        page = {"items": [], "_links": {"next": {"href": link}}}
        upsun.fault(own, body=json.dumps(page), times=1)
        with pytest.raises(BadUpstreamResponse):
            await upsun.adapter.list_subscriptions(upsun.credentials, org)
        assert len(served.upstream_requests()) == 1, (link, served.upstream_requests())
    # The real walk (pages of two) still works.
    assert len(await upsun.adapter.list_subscriptions(upsun.credentials, org)) == 6


# --------------------------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------------------------

BAD_IDS = ("", ".", "..", "...", "\ud800", "org\udfffid", "\udc80..")


def _record(provider: ProviderName, provider_id: str) -> OrganizationRecord:
    return OrganizationRecord(provider=provider, provider_id=provider_id, name="x")


async def test_unusable_ids_are_not_found_without_a_request(upstream: Upstream) -> None:
    adapter, credentials = upstream.adapter, upstream.credentials
    for bad in BAD_IDS:
        with pytest.raises(UpstreamNotFound):
            await adapter.get_organization(credentials, bad)
        record = _record(upstream.provider, bad)
        if upstream.provider in (ProviderName.CAPYDB, ProviderName.UPSUN):
            # Their usage (and Upsun's subscriptions) are upstream calls about the id.
            with pytest.raises(UpstreamNotFound):
                await adapter.get_usage(credentials, record)
        if upstream.provider is ProviderName.UPSUN:
            with pytest.raises(UpstreamNotFound):
                await adapter.list_subscriptions(credentials, record)
        if adapter.supports_update:
            for update in (OrganizationUpdate(billing_email="a@b.example"), OrganizationUpdate()):
                with pytest.raises(UpstreamNotFound):
                    await adapter.update_organization(credentials, bad, update)
        assert upstream.served.recorder.seen == [], repr(bad)


async def test_ids_with_reserved_characters_stay_one_segment(addressed: Upstream) -> None:
    """Not refused: quoted into a single path segment, so the upstream answers for itself."""
    with pytest.raises(UpstreamNotFound):
        await addressed.adapter.get_organization(addressed.credentials, "../x?y#z")
    (line,) = [line for _m, line in addressed.served.upstream_requests()]
    assert line.startswith(addressed.served.prefix) and "..%2Fx%3Fy%23z" in line
