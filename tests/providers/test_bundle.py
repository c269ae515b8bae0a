"""bundle.social: the sandbox's faithfulness to the documented API, and the adapter against it.

The sandbox is served on a real loopback port (tests.support.serve_app) and the adapter talks to
it over HTTP exactly as it would to api.bundle.social. A few checks of the sandbox's own rules
(rate-limit windows with a fake clock, determinism, scale) drive the ASGI app in-process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from providers.base import (
    BadUpstreamResponse,
    CredentialsError,
    InvalidCursor,
    OperationUnsupported,
    OrganizationRecord,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderAdapter,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    SubscriptionStatus,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    UsageUnit,
    load_adapter_class,
    load_sandbox_module,
)
from providers.bundle import adapter as adapter_module
from providers.bundle.adapter import ADAPTER, BundleAdapter, _error_detail
from providers.bundle.sandbox import (
    MESSAGES,
    PROFILES,
    api_key_for_org,
    create_app,
    demo_credentials,
)
from providers.sandbox_kit import SandboxOptions
from tests.support import ServedApp, serve_app

__all__: list[str] = []

OPTIONS = SandboxOptions(orgs=24, rate_limits=False)
ORG_PATH = "/api/v1/organization/"
USAGE = "/api/v1/organization/usage"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


# One pooled client for the tests' own calls: a fresh httpx client per call (as the ServedApp
# helpers make) costs tens of milliseconds each, which added up to seconds.
SYNC = httpx.Client(timeout=10.0)


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    with serve_app(create_app(options=OPTIONS)) as app:
        yield app
    SYNC.close()


@pytest.fixture(autouse=True)
def _clean(served: ServedApp) -> None:
    SYNC.delete(served.url + "/__sandbox/faults").raise_for_status()
    clear_requests(served)


def fault(served: ServedApp, **spec: Any) -> None:
    SYNC.post(served.url + "/__sandbox/faults", json=spec).raise_for_status()


def clear_requests(served: ServedApp) -> None:
    SYNC.delete(served.url + "/__sandbox/requests").raise_for_status()


@pytest.fixture
async def adapter(served: ServedApp) -> AsyncIterator[BundleAdapter]:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    settings = ProviderSettings(base_url=served.url, timeout_seconds=5.0, retries=0)
    instance = BundleAdapter(settings)
    yield instance
    await instance.aclose()


def creds(index: int, options: SandboxOptions = OPTIONS) -> ProviderCredentials:
    return BundleAdapter.parse_credentials({"api_key": api_key_for_org(index, options)})


def key_header(index: int, options: SandboxOptions = OPTIONS) -> dict[str, str]:
    return {"x-api-key": api_key_for_org(index, options)}


def org_body(served: ServedApp, index: int) -> dict[str, Any]:
    response = SYNC.get(served.url + ORG_PATH, headers=key_header(index))
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def upstream_calls(served: ServedApp) -> list[tuple[str, str]]:
    """(method, path) of every upstream request the sandbox served since the last clear."""
    response = SYNC.get(served.url + "/__sandbox/requests")
    response.raise_for_status()
    return [(r["method"], r["path"]) for r in response.json()["requests"]]


def assert_clean_message(exc: UpstreamError, *forbidden: str) -> None:
    for text in (api_key_for_org(0, OPTIONS), *forbidden):
        assert text not in exc.message
        assert text not in str(exc)


# --------------------------------------------------------------------------------------------
# Module contract and credentials
# --------------------------------------------------------------------------------------------


def test_module_contract() -> None:
    assert ADAPTER is BundleAdapter
    assert load_adapter_class(ProviderName.BUNDLE) is BundleAdapter
    assert load_sandbox_module(ProviderName.BUNDLE).create_app is create_app
    assert BundleAdapter.provider is ProviderName.BUNDLE
    assert BundleAdapter.supports_update is False
    assert isinstance(BundleAdapter(ProviderSettings(base_url="http://x")), ProviderAdapter)
    for module in (adapter_module, load_sandbox_module(ProviderName.BUNDLE)):
        assert module.__doc__ and module.__all__


def test_demo_credentials_and_keys() -> None:
    options = SandboxOptions(orgs=5, accounts=("acme", "globex", "initech"))
    acme = demo_credentials("acme", options)
    assert set(acme) == {"api_key"} and "sandbox" in acme["api_key"]
    # One key per organization; the account's demo key is that of its first organization.
    assert acme["api_key"] == api_key_for_org(0, options)
    assert demo_credentials("globex", options)["api_key"] == api_key_for_org(1, options)
    assert demo_credentials("initech", options)["api_key"] == api_key_for_org(2, options)
    keys = {api_key_for_org(i, options) for i in range(5)}
    assert len(keys) == 5 and all("sandbox" in k for k in keys)
    assert api_key_for_org(3, options) == api_key_for_org(3, SandboxOptions(orgs=5))
    assert api_key_for_org(3, options) != api_key_for_org(3, SandboxOptions(orgs=5, seed=7))
    with pytest.raises(KeyError):
        demo_credentials("umbrella", options)
    with pytest.raises(IndexError):
        api_key_for_org(5, options)
    assert "sandbox" in demo_credentials("globex", SandboxOptions(orgs=1))["api_key"]


def test_parse_credentials() -> None:
    parsed = BundleAdapter.parse_credentials({"api_key": "bundle_sandbox_key", "extra": "x"})
    assert dict(parsed.values) == {"api_key": "bundle_sandbox_key"}
    assert "bundle_sandbox_key" not in repr(parsed)
    for bad in ({}, {"api_key": ""}, {"api_key": 42}, {"api_key": "kéy"}, {"api_key": "a\nb"}):
        with pytest.raises(CredentialsError) as info:
            BundleAdapter.parse_credentials(bad)
        assert "api_key" in str(info.value)


# --------------------------------------------------------------------------------------------
# Sandbox faithfulness (plain httpx)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [ORG_PATH, f"{USAGE}/posts", f"{USAGE}/imports"])
def test_sandbox_auth_statuses_and_bodies(served: ServedApp, path: str) -> None:
    missing = SYNC.get(served.url + path)
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/json")
    assert missing.json() == {"statusCode": 401, "message": "Unauthorized"}
    empty = SYNC.get(served.url + path, headers={"x-api-key": ""})
    assert empty.status_code == 401
    wrong = SYNC.get(served.url + path, headers={"x-api-key": "bundle_sandbox_key_nope"})
    assert wrong.status_code == 403
    assert wrong.json() == {"statusCode": 403, "message": "Forbidden resource"}
    # The key travels in x-api-key only; a bearer header is not accepted.
    bearer = {"Authorization": "Bearer " + api_key_for_org(0, OPTIONS)}
    assert SYNC.get(served.url + path, headers=bearer).status_code == 401
    assert SYNC.get(served.url + path, headers=key_header(0)).status_code == 200


def test_sandbox_serves_both_slash_forms_without_redirect(served: ServedApp) -> None:
    with_slash = SYNC.get(served.url + ORG_PATH, headers=key_header(0))
    without = SYNC.get(served.url + ORG_PATH.rstrip("/"), headers=key_header(0))
    assert with_slash.status_code == without.status_code == 200
    assert with_slash.json() == without.json()
    posts = SYNC.get(served.url + f"{USAGE}/posts/", headers=key_header(0))
    assert posts.status_code == 200 and set(posts.json()) == {"used", "limit", "remaining"}


def test_sandbox_unknown_routes_answer_like_express(served: ServedApp) -> None:
    unknown = SYNC.get(served.url + "/api/v1/organizations", headers=key_header(0))
    assert unknown.status_code == 404
    assert unknown.json() == {"statusCode": 404, "message": "Cannot GET /api/v1/organizations"}
    patch = SYNC.patch(served.url + ORG_PATH, headers=key_header(0), json={"name": "x"})
    assert patch.status_code == 404
    assert patch.json() == {"statusCode": 404, "message": f"Cannot PATCH {ORG_PATH}"}


SEED_ORG_FIELDS = {
    "id", "createdById", "promotionCodeId", "name", "avatarUrl", "apiAccess", "ref",
    "createdAt", "updatedAt", "deletedAt", "teams", "createdBy", "subscription",
    "promotionCode", "usage",
}  # fmt: skip
SPEC_REQUIRED_ORG_FIELDS = {
    "id", "createdById", "apiAccess", "analyticsDisabled", "analyticsPostsDisabled",
    "uploadsCompressionEnabled", "showVerboseErrors", "disconnectCheckEnabled",
    "deleteAccountAfter", "createdAt", "updatedAt", "createdBy", "teams",
}  # fmt: skip
SEED_SUBSCRIPTION_FIELDS = {
    "id", "organizationId", "couponId", "promotionCodeId", "stripeSubscriptionId",
    "stripeSubscriptionItems", "status", "metadata", "stripePriceId", "tier",
    "cancelAtPeriodEnd", "created", "currentPeriodStart", "currentPeriodEnd", "endedAt",
    "cancelAt", "canceledAt", "trialStart", "trialEnd", "maxMonthlyPosts", "discountStart",
    "discountEnd", "createdAt", "updatedAt", "coupon", "promotionCode",
}  # fmt: skip
SEED_TEAM_FIELDS = {
    "id", "name", "avatarUrl", "organizationId", "createdById", "createdAt", "updatedAt",
    "deletedAt",
}  # fmt: skip
SEED_USER_FIELDS = {
    "id", "externalId", "email", "emailVerified", "firstName", "lastName", "avatarUrl", "role",
    "createdAt", "updatedAt", "deletedAt",
}  # fmt: skip


def test_sandbox_organization_has_every_seed_field(served: ServedApp) -> None:
    body = org_body(served, 0)
    assert set(body) >= SEED_ORG_FIELDS
    assert set(body) >= SPEC_REQUIRED_ORG_FIELDS
    assert set(body["subscription"]) >= SEED_SUBSCRIPTION_FIELDS
    assert set(body["createdBy"]) >= SEED_USER_FIELDS
    assert body["createdBy"]["role"] in ("ADMIN", "CUSTOMER")
    assert body["teams"] and all(set(t) >= SEED_TEAM_FIELDS for t in body["teams"])
    assert all(t["organizationId"] == body["id"] for t in body["teams"])
    assert body["subscription"]["organizationId"] == body["id"]
    assert isinstance(body["usage"]["monthlyPosts"], int)
    coupon = org_body(served, 3)["subscription"]
    assert coupon["coupon"]["duration"] == "repeating" and coupon["promotionCode"]["code"]


def test_sandbox_edge_cases_cover_the_normalisation(served: ServedApp) -> None:
    bodies = [org_body(served, i) for i in range(12)]
    subs = [b["subscription"] for b in bodies]
    statuses = {s["status"] for s in subs if s}
    assert statuses == {
        "trialing", "active", "canceled", "incomplete", "incomplete_expired", "past_due",
        "unpaid", "paused",
    }  # fmt: skip
    assert {s["tier"] for s in subs if s} == {"PRO", "BUSINESS"}
    assert [i for i, s in enumerate(subs) if s is None] == [2, 7]
    assert [i for i, b in enumerate(bodies) if b.get("deletedAt")] == [4]
    assert [i for i, b in enumerate(bodies) if b.get("suspended")] == [4, 6, 7]
    assert any("suspended" not in b for b in bodies)
    assert any("deletedAt" not in b for b in bodies)
    assert [i for i, b in enumerate(bodies) if b["name"] is None] == [10]
    assert [i for i, b in enumerate(bodies) if b["teams"] == []] == [10]
    assert [i for i, s in enumerate(subs) if s and s["maxMonthlyPosts"] is None] == [10]
    assert [i for i, s in enumerate(subs) if s and s["createdAt"] is None] == [9]
    assert len(PROFILES) == 12
    # The cycle repeats: organization 16 carries profile 4.
    assert org_body(served, 16)["deletedAt"] and org_body(served, 16)["subscription"]


async def test_sandbox_is_deterministic_and_scales() -> None:
    async def fetch(app: Starlette, index: int, options: SandboxOptions) -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            response = await client.get(ORG_PATH, headers=key_header(index, options))
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    small = SandboxOptions(orgs=3, rate_limits=False)
    assert await fetch(create_app(options=small), 2, small) == await fetch(
        create_app(options=small), 2, small
    )
    other_seed = SandboxOptions(orgs=3, seed=7, rate_limits=False)
    assert (await fetch(create_app(options=other_seed), 2, other_seed))["id"] != (
        await fetch(create_app(options=small), 2, small)
    )["id"]

    big = SandboxOptions(orgs=10_000, rate_limits=False)
    started = time.perf_counter()
    app = create_app(options=big)
    assert time.perf_counter() - started < 10
    last = await fetch(app, 9_999, big)
    assert last["name"].endswith(" 10000")


# --------------------------------------------------------------------------------------------
# Usage endpoints
# --------------------------------------------------------------------------------------------


def _counter_ok(counter: dict[str, Any]) -> None:
    assert set(counter) == {"used", "limit", "remaining"}
    assert all(isinstance(v, int | float) for v in counter.values())
    assert counter["remaining"] == max(0, counter["limit"] - counter["used"])


@pytest.mark.parametrize("kind", ["posts", "comments", "uploads"])
def test_usage_counters_shape(served: ServedApp, kind: str) -> None:
    for index in range(12):
        response = SYNC.get(served.url + f"{USAGE}/{kind}", headers=key_header(index))
        assert response.status_code == 200
        _counter_ok(response.json())


def test_posts_usage_matches_organization(served: ServedApp) -> None:
    for index in (0, 2, 6, 10):
        body = org_body(served, index)
        posts = SYNC.get(served.url + f"{USAGE}/posts", headers=key_header(index)).json()
        assert posts["used"] == body["usage"]["monthlyPosts"]
        if body["subscription"] and body["subscription"]["maxMonthlyPosts"] is not None:
            assert posts["limit"] == body["subscription"]["maxMonthlyPosts"]
    free = SYNC.get(served.url + f"{USAGE}/posts", headers=key_header(2)).json()
    assert free["limit"] == 10  # bundle's documented FREE tier
    over = SYNC.get(served.url + f"{USAGE}/posts", headers=key_header(6)).json()
    assert over["used"] > over["limit"] and over["remaining"] == 0


def _social_accounts(served: ServedApp, index: int) -> list[dict[str, Any]]:
    response = SYNC.get(
        served.url + f"{USAGE}/imports", params={"pageSize": 100}, headers=key_header(index)
    )
    assert response.status_code == 200
    accounts: list[dict[str, Any]] = response.json()["socialAccounts"]
    return accounts


def test_daily_limits_usage(served: ServedApp) -> None:
    url = served.url + f"{USAGE}/daily-limits"
    account = _social_accounts(served, 0)[0]
    response = SYNC.get(url, params={"socialAccountId": account["id"]}, headers=key_header(0))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"date", "socialAccountId", "type", "posts", "comments"}
    assert body["socialAccountId"] == account["id"] and body["type"] == account["type"]
    _counter_ok(body["posts"])
    _counter_ok(body["comments"])
    params = {"socialAccountId": account["id"], "date": "2024-03-05T10:00:00Z"}
    dated = SYNC.get(url, params=params, headers=key_header(0)).json()
    assert dated["date"] == "2024-03-05"
    assert dated == SYNC.get(url, params=params, headers=key_header(0)).json()

    missing = SYNC.get(url, headers=key_header(0))
    assert missing.status_code == 400
    assert missing.json()["statusCode"] == 400 and missing.json()["message"]
    assert missing.json()["issues"] == [
        {"code": "invalid_type", "message": "Required", "path": ["socialAccountId"]}
    ]
    bad_date = SYNC.get(url, params={**params, "date": "soon"}, headers=key_header(0))
    assert bad_date.status_code == 400 and bad_date.json()["issues"][0]["path"] == ["date"]
    # Another organization's account is not visible with this key.
    foreign = _social_accounts(served, 1)[0]["id"]
    not_mine = SYNC.get(url, params={"socialAccountId": foreign}, headers=key_header(0))
    assert not_mine.status_code == 404
    assert not_mine.json() == {"statusCode": 404, "message": "Social account not found"}


def test_imports_usage_shape_validation_and_pages() -> None:
    options = SandboxOptions(orgs=24, rate_limits=False, max_page_size=1)
    with serve_app(create_app(options=options)) as small_pages:
        url = small_pages.url + f"{USAGE}/imports"
        index = next(
            i
            for i in range(24)
            if SYNC.get(url, headers=key_header(i, options)).json()["pagination"]["total"] >= 2
        )
        first = SYNC.get(url, params={"pageSize": 50}, headers=key_header(index, options)).json()
        assert set(first) == {"limitPerSocialAccount", "socialAccounts", "pagination"}
        total = first["pagination"]["total"]
        assert first["pagination"]["pageSize"] == 1  # never more than max_page_size
        assert first["pagination"]["totalPages"] == total
        seen = []
        for page in range(1, total + 1):
            body = SYNC.get(
                url, params={"page": page, "pageSize": 50}, headers=key_header(index, options)
            ).json()
            assert len(body["socialAccounts"]) == 1
            account = body["socialAccounts"][0]
            assert set(account) == {
                "id", "type", "username", "displayName", "used", "limit", "remaining",
            }  # fmt: skip
            assert account["limit"] == body["limitPerSocialAccount"]
            seen.append(account["id"])
        assert len(seen) == len(set(seen)) == total
        beyond = SYNC.get(url, params={"page": total + 1}, headers=key_header(index, options))
        assert beyond.json()["socialAccounts"] == []

        kind = first["socialAccounts"][0]["type"]
        filtered = SYNC.get(
            url, params={"socialAccountType": kind}, headers=key_header(index, options)
        ).json()
        assert filtered["pagination"]["total"] >= 1

        for params, code, path in (
            ({"pageSize": 101}, "too_big", "pageSize"),
            ({"pageSize": 0}, "too_small", "pageSize"),
            ({"page": 0}, "too_small", "page"),
            ({"page": "two"}, "invalid_type", "page"),
            ({"socialAccountType": "MYSPACE"}, "invalid_enum_value", "socialAccountType"),
        ):
            response = SYNC.get(url, params=params, headers=key_header(index, options))
            assert response.status_code == 400
            issue = response.json()["issues"][0]
            assert (issue["code"], issue["path"]) == (code, [path])
        both = SYNC.get(url, params={"page": 0, "pageSize": 500}, headers=key_header(0, options))
        assert len(both.json()["issues"]) == 2


# --------------------------------------------------------------------------------------------
# Rate limits
# --------------------------------------------------------------------------------------------


async def test_rate_limit_over_http_and_adapter_mapping() -> None:
    options = SandboxOptions(orgs=2, rate_limits=True)
    with serve_app(create_app(options=options)) as limited:
        async with httpx.AsyncClient(base_url=limited.url) as client:
            statuses = []
            for _ in range(6):
                response = await client.get(ORG_PATH, headers=key_header(0, options))
                statuses.append(response.status_code)
            assert statuses == [200] * 5 + [429]
            assert response.json() == {"statusCode": 429, "message": MESSAGES[429]}
            assert response.json()["message"] == "ThrottlerException: Too Many Requests"
            assert int(response.headers["Retry-After"]) >= 1
            # Per key: the other organization's key has its own budget.
            other = await client.get(ORG_PATH, headers=key_header(1, options))
            assert other.status_code == 200
        # One answer per call: retries are tests/providers/test_resilience.py's.
        adapter = BundleAdapter(ProviderSettings(base_url=limited.url, retries=0))
        try:
            with pytest.raises(UpstreamRateLimited) as info:
                await adapter.list_organizations(creds(0, options))
        finally:
            await adapter.aclose()
        assert info.value.status == 429 and info.value.code == "UPSTREAM_RATE_LIMITED"
        assert info.value.retry_after is not None and info.value.retry_after >= 1
        assert "Too Many Requests" in info.value.message
        assert api_key_for_org(0, options) not in info.value.message


async def test_rate_limit_layers_with_a_fake_clock() -> None:
    now = [1000.0]
    options = SandboxOptions(orgs=1, rate_limits=True)
    app = create_app(options=options, clock=lambda: now[0])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:

        async def burst(count: int, path: str = ORG_PATH) -> list[httpx.Response]:
            return [await client.get(path, headers=key_header(0, options)) for _ in range(count)]

        # 5 per second; every endpoint shares the key's budget.
        first = await burst(3) + await burst(3, f"{USAGE}/posts")
        assert [r.status_code for r in first] == [200] * 5 + [429]
        assert first[-1].headers["Retry-After"] == "1"
        # 20 per 10 s: four one-second steps of 5 fill it.
        for _ in range(3):
            now[0] += 1.0
            assert [r.status_code for r in await burst(5)] == [200] * 5
        now[0] += 1.0
        blocked = await burst(1)
        assert blocked[0].status_code == 429
        assert blocked[0].headers["Retry-After"] == "6"  # the 10 s window opened 4 s ago
        # 100 per minute: five 10 s windows of 20 fill it.
        for _ in range(4):
            now[0] += 10.0
            for _ in range(4):
                assert [r.status_code for r in await burst(5)] == [200] * 5
                now[0] += 1.0
            now[0] -= 4.0
        now[0] += 10.0
        minute = await burst(1)
        assert minute[0].status_code == 429
        assert int(minute[0].headers["Retry-After"]) > 1
        now[0] += 60.0
        assert (await burst(1))[0].status_code == 200
        # Without a key the client's address is the tracker, and the throttle comes first.
        statuses = [(await client.get(ORG_PATH)).status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]


async def test_rate_limits_off() -> None:
    options = SandboxOptions(orgs=1, rate_limits=False)
    transport = httpx.ASGITransport(app=create_app(options=options))
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        for _ in range(30):
            response = await client.get(ORG_PATH, headers=key_header(0, options))
            assert response.status_code == 200


# --------------------------------------------------------------------------------------------
# Adapter: organizations
# --------------------------------------------------------------------------------------------


async def test_list_organizations_maps_one_page(served: ServedApp, adapter: BundleAdapter) -> None:
    body = org_body(served, 0)
    clear_requests(served)
    page = await adapter.list_organizations(creds(0))
    assert page.next_cursor is None
    assert len(page.organizations) == 1
    org = page.organizations[0]
    assert org.provider is ProviderName.BUNDLE
    assert org.provider_id == body["id"]
    assert org.name == body["name"]
    assert org.slug is None and org.billing_email is None
    assert org.currency is None and org.timezone is None
    assert org.plan == "PRO" == body["subscription"]["tier"]
    assert org.status is OrganizationStatus.ACTIVE
    assert org.created_at == datetime.fromisoformat(body["createdAt"].replace("Z", "+00:00"))
    assert org.updated_at == datetime.fromisoformat(body["updatedAt"].replace("Z", "+00:00"))
    assert org.created_at is not None and org.created_at.tzinfo is not None
    assert dict(org.raw) == body
    assert upstream_calls(served) == [("GET", ORG_PATH)]


@pytest.mark.parametrize("cursor", ["", "2", "https://evil.example/api/v1/organization/"])
async def test_any_cursor_is_invalid(
    served: ServedApp, adapter: BundleAdapter, cursor: str
) -> None:
    with pytest.raises(InvalidCursor) as info:
        await adapter.list_organizations(creds(0), cursor=cursor)
    assert info.value.code == "BAD_USER_INPUT"
    assert upstream_calls(served) == []


async def test_get_organization(served: ServedApp, adapter: BundleAdapter) -> None:
    own = org_body(served, 5)["id"]
    other = org_body(served, 6)["id"]
    clear_requests(served)
    record = await adapter.get_organization(creds(5), own)
    assert record.provider_id == own
    with pytest.raises(UpstreamNotFound) as info:
        await adapter.get_organization(creds(5), other)
    assert info.value.code == "NOT_FOUND"
    assert upstream_calls(served) == [("GET", ORG_PATH)] * 2
    fault(served, status=404, times=1)
    with pytest.raises(UpstreamNotFound):
        await adapter.get_organization(creds(5), own)


# Organization status, plan, subscription status and provider status for each profile.
EXPECTED: dict[
    int, tuple[OrganizationStatus, str | None, SubscriptionStatus | None, str | None]
] = {
    0: (OrganizationStatus.ACTIVE, "PRO", SubscriptionStatus.ACTIVE, "active"),
    1: (OrganizationStatus.ACTIVE, "BUSINESS", SubscriptionStatus.TRIALING, "trialing"),
    2: (OrganizationStatus.ACTIVE, None, None, None),
    3: (OrganizationStatus.ACTIVE, "PRO", SubscriptionStatus.PAST_DUE, "past_due"),
    4: (OrganizationStatus.DELETED, "BUSINESS", SubscriptionStatus.CANCELED, "canceled"),
    5: (OrganizationStatus.ACTIVE, "PRO", SubscriptionStatus.INCOMPLETE, "incomplete"),
    6: (OrganizationStatus.SUSPENDED, "BUSINESS", SubscriptionStatus.UNPAID, "unpaid"),
    7: (OrganizationStatus.SUSPENDED, None, None, None),
    8: (OrganizationStatus.ACTIVE, "PRO", SubscriptionStatus.CANCELED, "incomplete_expired"),
    9: (OrganizationStatus.ACTIVE, "BUSINESS", SubscriptionStatus.PAUSED, "paused"),
    10: (OrganizationStatus.ACTIVE, "BUSINESS", SubscriptionStatus.ACTIVE, "active"),
    11: (OrganizationStatus.ACTIVE, "PRO", SubscriptionStatus.ACTIVE, "active"),
    16: (OrganizationStatus.DELETED, "BUSINESS", SubscriptionStatus.CANCELED, "canceled"),
}


@pytest.mark.parametrize("index", sorted(EXPECTED))
async def test_status_plan_and_subscription_mapping(
    served: ServedApp, adapter: BundleAdapter, index: int
) -> None:
    org_status, plan, sub_status, provider_status = EXPECTED[index]
    (org,) = (await adapter.list_organizations(creds(index))).organizations
    assert org.status is org_status
    assert org.plan == plan
    subscriptions = await adapter.list_subscriptions(creds(index), org)
    if sub_status is None:
        assert subscriptions == ()
        return
    (sub,) = subscriptions
    assert sub.status is sub_status
    assert sub.provider_status == provider_status
    assert sub.plan == plan


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_subscription_fields(served: ServedApp, adapter: BundleAdapter) -> None:
    for index in (1, 4, 9, 11):
        body = org_body(served, index)
        raw_sub = body["subscription"]
        (org,) = (await adapter.list_organizations(creds(index))).organizations
        (sub,) = await adapter.list_subscriptions(creds(index), org)
        assert sub.provider is ProviderName.BUNDLE
        assert sub.provider_id == raw_sub["id"]
        assert sub.organization_id == body["id"]
        assert sub.current_period_start == _dt(raw_sub["currentPeriodStart"])
        assert sub.current_period_end == _dt(raw_sub["currentPeriodEnd"])
        assert sub.updated_at == _dt(raw_sub["updatedAt"])
        assert dict(sub.raw) == raw_sub
        if index == 1:  # trialing
            assert sub.trial_ends_at == _dt(raw_sub["trialEnd"])
            assert sub.cancel_at is None
        if index in (4, 11):  # canceled / cancel at period end
            assert sub.cancel_at == _dt(raw_sub["cancelAt"])
            assert sub.trial_ends_at is None
        if index == 9:  # createdAt null: Stripe's `created` stands in
            assert raw_sub["createdAt"] is None
            assert sub.created_at == _dt(raw_sub["created"])
        else:
            assert sub.created_at == _dt(raw_sub["createdAt"])


async def test_null_name_falls_back_to_id(served: ServedApp, adapter: BundleAdapter) -> None:
    (org,) = (await adapter.list_organizations(creds(10))).organizations
    assert org.raw["name"] is None
    assert org.name == org.provider_id


# --------------------------------------------------------------------------------------------
# Adapter: usage
# --------------------------------------------------------------------------------------------


async def test_usage_from_the_organization_object_without_extra_calls(
    served: ServedApp, adapter: BundleAdapter
) -> None:
    for index, limit in ((0, 10_000.0), (1, 100_000.0), (2, None), (10, None)):
        body = org_body(served, index)
        clear_requests(served)
        (org,) = (await adapter.list_organizations(creds(index))).organizations
        usage = await adapter.get_usage(creds(index), org)
        await adapter.list_subscriptions(creds(index), org)
        assert upstream_calls(served) == [("GET", ORG_PATH)]  # usage and subscriptions ride along
        assert usage is not None and usage.history == ()
        (metric,) = usage.metrics
        assert metric.key == "monthly_posts" and metric.label == "Monthly posts"
        assert metric.unit is UsageUnit.COUNT
        assert metric.value == float(body["usage"]["monthlyPosts"])
        assert metric.limit == limit


async def test_record_without_raw_is_fetched_again(
    served: ServedApp, adapter: BundleAdapter
) -> None:
    body = org_body(served, 3)
    bare = OrganizationRecord(provider=ProviderName.BUNDLE, provider_id=body["id"], name="x")
    clear_requests(served)
    (sub,) = await adapter.list_subscriptions(creds(3), bare)
    assert sub.provider_id == body["subscription"]["id"]
    assert upstream_calls(served) == [("GET", ORG_PATH)]
    stranger = OrganizationRecord(provider=ProviderName.BUNDLE, provider_id="cnope", name="x")
    with pytest.raises(UpstreamNotFound):
        await adapter.get_usage(creds(3), stranger)


async def test_usage_falls_back_to_the_posts_endpoint() -> None:
    options = SandboxOptions(orgs=3, rate_limits=False)
    with serve_app(create_app(options=options, include_usage=False)) as newer:
        adapter = BundleAdapter(ProviderSettings(base_url=newer.url))
        try:
            for index, limit in ((0, 10_000.0), (2, 10.0)):
                expected = SYNC.get(
                    newer.url + f"{USAGE}/posts", headers=key_header(index, options)
                ).json()
                clear_requests(newer)
                (org,) = (await adapter.list_organizations(creds(index, options))).organizations
                assert "usage" not in org.raw
                usage = await adapter.get_usage(creds(index, options), org)
                assert usage is not None
                (metric,) = usage.metrics
                assert metric.value == expected["used"] and metric.limit == limit
                assert upstream_calls(newer) == [("GET", ORG_PATH), ("GET", f"{USAGE}/posts")]
        finally:
            await adapter.aclose()
    with serve_app(create_app(options=options, include_usage=False, usage_endpoints=False)) as old:
        adapter = BundleAdapter(ProviderSettings(base_url=old.url))
        try:
            (org,) = (await adapter.list_organizations(creds(0, options))).organizations
            assert await adapter.get_usage(creds(0, options), org) is None
        finally:
            await adapter.aclose()


# --------------------------------------------------------------------------------------------
# Adapter: errors
# --------------------------------------------------------------------------------------------


async def test_wrong_key_is_unauthorized(served: ServedApp, adapter: BundleAdapter) -> None:
    wrong = BundleAdapter.parse_credentials({"api_key": "bundle_sandbox_key_wrong_123"})
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(wrong)
    assert info.value.status == 403 and info.value.code == "UPSTREAM_UNAUTHORIZED"
    assert "Forbidden resource" in info.value.message
    assert "bundle_sandbox_key_wrong_123" not in info.value.message


async def test_missing_key_answer_is_unauthorized(
    served: ServedApp, adapter: BundleAdapter
) -> None:
    # The adapter never sends an empty key (parse_credentials refuses one), so the 401 the
    # sandbox gives for a missing key is injected with the provider's own body.
    fault(served, status=401, times=1)
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.get_organization(creds(0), "anything")
    assert info.value.status == 401


HTML = "text/html"
HTML_502 = "<html><h1>502 Bad Gateway</h1></html>"
VALIDATION_400 = '{"statusCode": 400, "message": "Validation failed"}'


@pytest.mark.parametrize(
    ("spec", "error", "status"),
    [
        ({"status": 500}, UpstreamUnavailable, 500),
        ({"status": 503, "body": "upstream overloaded"}, UpstreamUnavailable, 503),
        ({"status": 502, "body": HTML_502, "content_type": HTML}, UpstreamUnavailable, 502),
        ({"body": "<html>maintenance page</html>", "content_type": HTML}, BadUpstreamResponse, 200),
        ({"body": "[]"}, BadUpstreamResponse, None),
        ({"body": '"organization"'}, BadUpstreamResponse, None),
        ({"body": '{"name": "no id here"}'}, BadUpstreamResponse, None),
        ({"body": '{"id": "c1", "subscription": "PRO"}'}, BadUpstreamResponse, None),
        ({"body": '{"id": "c1", "suspended": "yes"}'}, BadUpstreamResponse, None),
        ({"body": '{"id": "c1", "deletedAt": "last week"}'}, BadUpstreamResponse, None),
        ({"status": 429}, UpstreamRateLimited, 429),
        ({"status": 400, "body": VALIDATION_400}, UpstreamRejected, 400),
        ({"status": 418}, BadUpstreamResponse, 418),
    ],
)  # fmt: skip
async def test_faults_map_to_the_taxonomy(
    served: ServedApp,
    adapter: BundleAdapter,
    spec: dict[str, Any],
    error: type[UpstreamError],
    status: int | None,
) -> None:
    fault(served, **spec, times=1)
    with pytest.raises(error) as info:
        await adapter.list_organizations(creds(0))
    assert info.value.provider is ProviderName.BUNDLE
    assert info.value.status == status
    assert_clean_message(info.value, "<html", "maintenance", "no id here", "overloaded")
    if status == 429:
        assert info.value.retry_after == 1.0


async def test_wrongly_shaped_usage_and_subscription(
    served: ServedApp, adapter: BundleAdapter
) -> None:
    fault(served, body='{"id": "c1", "usage": "lots", "subscription": null}', times=1)
    (org,) = (await adapter.list_organizations(creds(0))).organizations
    with pytest.raises(BadUpstreamResponse):
        await adapter.get_usage(creds(0), org)
    fault(served, body='{"id": "c1", "subscription": {"status": "active"}}', times=1)
    (org,) = (await adapter.list_organizations(creds(0))).organizations
    with pytest.raises(BadUpstreamResponse) as info:
        await adapter.list_subscriptions(creds(0), org)
    assert "'id'" in info.value.message
    fault(
        served, body='{"id": "c1", "subscription": {"id": "s", "maxMonthlyPosts": true}}', times=1
    )
    (org,) = (await adapter.list_organizations(creds(0))).organizations
    with pytest.raises(BadUpstreamResponse):
        await adapter.get_usage(creds(0), org)


async def test_tolerates_absent_optional_members(served: ServedApp, adapter: BundleAdapter) -> None:
    fault(served, body='{"id": "c1", "name": "Minimal", "teams": null}', times=1)
    (org,) = (await adapter.list_organizations(creds(0))).organizations
    assert (org.provider_id, org.name, org.plan) == ("c1", "Minimal", None)
    assert org.status is OrganizationStatus.ACTIVE and org.created_at is None
    assert await adapter.list_subscriptions(creds(0), org) == ()


async def test_upstream_message_is_redacted(served: ServedApp, adapter: BundleAdapter) -> None:
    key = api_key_for_org(0, OPTIONS)
    fault(
        served, status=403, body=f'{{"statusCode": 403, "message": "key {key} revoked"}}', times=1
    )
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(creds(0))
    assert key not in info.value.message and "[redacted]" in info.value.message


async def test_slow_upstream_times_out(served: ServedApp) -> None:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    settings = ProviderSettings(base_url=served.url, timeout_seconds=0.2, retries=0)
    adapter = BundleAdapter(settings)
    try:
        fault(served, delay_ms=1000, times=1)
        started = time.perf_counter()
        with pytest.raises(UpstreamTimeout) as info:
            await adapter.list_organizations(creds(0))
        assert time.perf_counter() - started < 0.9
        assert info.value.code == "UPSTREAM_TIMEOUT"
    finally:
        await adapter.aclose()


async def test_unreachable_upstream() -> None:
    adapter = BundleAdapter(ProviderSettings(base_url="http://127.0.0.1:9", timeout_seconds=2))
    try:
        with pytest.raises(UpstreamUnavailable):
            await adapter.list_organizations(creds(0))
    finally:
        await adapter.aclose()


def test_error_detail() -> None:
    assert _error_detail({"statusCode": 403, "message": "Forbidden resource"}) == (
        "Forbidden resource"
    )
    with_issues = {
        "message": "Validation failed",
        "issues": [{"message": "Required", "path": ["a"]}],
    }
    assert _error_detail(with_issues) == "Validation failed (a: Required)"
    assert _error_detail(["x"]) is None and _error_detail({"message": 3}) is None


# --------------------------------------------------------------------------------------------
# Adapter: update, base_url prefix
# --------------------------------------------------------------------------------------------


async def test_update_is_unsupported(served: ServedApp, adapter: BundleAdapter) -> None:
    own = org_body(served, 0)["id"]
    clear_requests(served)
    with pytest.raises(OperationUnsupported) as info:
        await adapter.update_organization(creds(0), own, OrganizationUpdate(name="New"))
    assert info.value.code == "UNSUPPORTED"
    assert upstream_calls(served) == []


async def test_base_url_with_path_prefix() -> None:
    options = SandboxOptions(orgs=2, rate_limits=False)
    app = Starlette(routes=[Mount("/proxy/bundle", app=create_app(options=options))])
    with serve_app(app) as prefixed:
        adapter = BundleAdapter(ProviderSettings(base_url=prefixed.url + "/proxy/bundle/"))
        try:
            (org,) = (await adapter.list_organizations(creds(1, options))).organizations
            assert org.provider_id and org.plan == "BUSINESS"
            usage = await adapter.get_usage(creds(1, options), org)
            assert usage is not None and usage.metrics[0].key == "monthly_posts"
        finally:
            await adapter.aclose()
        direct = SYNC.get(prefixed.url + ORG_PATH, headers=key_header(1, options))
        assert direct.status_code == 404


def test_timestamps_are_utc(served: ServedApp) -> None:
    body = org_body(served, 0)
    for value in (body["createdAt"], body["subscription"]["currentPeriodEnd"]):
        assert value.endswith("Z") and _dt(value).tzinfo == UTC
