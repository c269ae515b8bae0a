"""Tests for the PlanetScale sandbox and adapter, over real loopback HTTP.

The sandbox is checked against PlanetScale's documented shapes (envelope, organization fields,
``{"code", "message"}`` errors, service-token auth, page-size limits, rate limit) straight over
httpx; the adapter is then driven against it for pagination, normalisation, updates and the
error taxonomy, with the sandbox's fault injection standing in for misbehaving upstreams.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
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
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    UpstreamForbidden,
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
from providers.planetscale.adapter import ADAPTER, PlanetScaleAdapter
from providers.planetscale.sandbox import create_app, demo_credentials
from providers.sandbox_kit import SandboxOptions
from tests.support import ServedApp, serve_app

__all__: list[str] = []

ACCOUNTS = ("acme", "globex", "initech")
# 10 organizations per account, at most 3 per page: four pages per account.
MAIN = SandboxOptions(seed=7, orgs=30, accounts=ACCOUNTS, max_page_size=3)
# One account with more organizations than the default page size, page size uncapped.
WIDE = SandboxOptions(seed=7, orgs=60, accounts=("acme",))
PREFIX = "/api/v1"

# Every field of the seed's organization object.
ORG_FIELDS = {
    "id", "name", "billing_email", "created_at", "updated_at", "plan", "valid_billing_info",
    "sso", "sso_directory", "single_tenancy", "managed_tenancy", "has_past_due_invoices",
    "database_count", "sso_portal_url", "features", "idp_managed_roles",
    "invoice_budget_amount", "keyspace_shard_limit", "has_card", "payment_info_required",
}  # fmt: skip
ENVELOPE_FIELDS = {
    "type", "current_page", "per_page", "next_page", "next_page_url", "prev_page",
    "prev_page_url", "data",
}  # fmt: skip


def creds(account: str, options: SandboxOptions = MAIN) -> ProviderCredentials:
    return PlanetScaleAdapter.parse_credentials(demo_credentials(account, options))


def auth(account: str, options: SandboxOptions = MAIN) -> dict[str, str]:
    values = demo_credentials(account, options)
    return {"Authorization": f"{values['service_token_id']}:{values['service_token']}"}


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main() -> Iterator[ServedApp]:
    with serve_app(create_app(options=MAIN, read_only_accounts=("initech",))) as served:
        yield served


@pytest.fixture(scope="module")
def prefixed() -> Iterator[ServedApp]:
    app = Starlette(routes=[Mount(PREFIX, app=create_app(options=WIDE))])
    with serve_app(app) as served:
        yield served


@pytest.fixture(scope="module")
def limited() -> Iterator[ServedApp]:
    with serve_app(create_app(options=MAIN, rate_limit_per_minute=3)) as served:
        yield served


@pytest.fixture(autouse=True)
def clean(main: ServedApp) -> Iterator[None]:
    main.clear_faults()
    main.clear_requests()
    yield
    main.clear_faults()


def make_adapter(base_url: str, timeout: float = 5.0, retries: int = 2) -> PlanetScaleAdapter:
    settings = ProviderSettings(base_url=base_url, timeout_seconds=timeout, retries=retries)
    return PlanetScaleAdapter(settings)


@pytest.fixture
async def adapter(main: ServedApp) -> AsyncIterator[PlanetScaleAdapter]:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    instance = make_adapter(main.url, retries=0)
    yield instance
    await instance.aclose()


async def expected_names(account: str, options: SandboxOptions = MAIN) -> list[str]:
    """The account's organizations in order, from an uncapped in-process copy of the sandbox."""
    app = create_app(options=replace(options, max_page_size=100))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        response = await client.get("/organizations?per_page=100", headers=auth(account, options))
    return [org["name"] for org in response.json()["data"]]


async def walk(adapter: PlanetScaleAdapter, account: str) -> list[OrganizationRecord]:
    cursor: str | None = None
    records: list[OrganizationRecord] = []
    for _ in range(50):
        page = await adapter.list_organizations(creds(account), cursor=cursor)
        records.extend(page.organizations)
        cursor = page.next_cursor
        if cursor is None:
            return records
    raise AssertionError("pagination did not end")


def inject_body(served: ServedApp, body: Any) -> None:
    """The next upstream request answers 200 with ``body`` (a JSON value or raw text)."""
    text = body if isinstance(body, str) else json.dumps(body)
    served.fault(body=text, times=1)


ORG_BODY = {
    "id": "abc123def456",
    "name": "solo-org",
    "billing_email": "billing@solo.example.com",
    "created_at": "2024-02-03T04:05:06.789Z",
    "updated_at": "2024-03-03T04:05:06.000Z",
    "plan": "scaler_pro",
    "database_count": 4,
}


# ------------------------------------------------------------------------------------------
# Sandbox: credentials and data
# ------------------------------------------------------------------------------------------


def test_demo_credentials_are_fake_deterministic_and_per_account() -> None:
    acme = demo_credentials("acme", MAIN)
    assert set(acme) == {"service_token_id", "service_token"}
    assert all("sandbox" in value for value in acme.values())
    assert ":" not in acme["service_token_id"]
    assert acme == demo_credentials("acme", MAIN)
    assert acme != demo_credentials("globex", MAIN)
    with pytest.raises(KeyError):
        demo_credentials("nobody", MAIN)


def test_registry_finds_adapter_and_sandbox() -> None:
    assert load_adapter_class(ProviderName.PLANETSCALE) is ADAPTER is PlanetScaleAdapter
    assert load_sandbox_module(ProviderName.PLANETSCALE).create_app is create_app
    assert PlanetScaleAdapter.provider is ProviderName.PLANETSCALE
    assert PlanetScaleAdapter.supports_update is True


def test_parse_credentials() -> None:
    parsed = PlanetScaleAdapter.parse_credentials(
        {"service_token_id": "sandbox-id", "service_token": "sandbox-tok", "extra": "x"}
    )
    assert dict(parsed.values) == {"service_token_id": "sandbox-id", "service_token": "sandbox-tok"}
    for bad in ({"service_token_id": "sandbox-id"}, {"service_token_id": "", "service_token": "x"}):
        with pytest.raises(CredentialsError) as info:
            PlanetScaleAdapter.parse_credentials(bad)
        assert "sandbox" not in str(info.value)


async def test_sandbox_data_is_deterministic_and_covers_edge_cases() -> None:
    names = await expected_names("acme")
    assert names == await expected_names("acme")
    assert names != await expected_names("acme", replace(MAIN, seed=8))
    app = create_app(options=replace(MAIN, orgs=300, max_page_size=100))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        orgs: list[dict[str, Any]] = []
        for account in ACCOUNTS:
            response = await client.get("/organizations?per_page=100", headers=auth(account))
            orgs.extend(response.json()["data"])
    assert len(orgs) == 300
    assert len({org["name"] for org in orgs}) == 300
    assert {org["plan"] for org in orgs} == {"hobby", "scaler", "scaler_pro", "enterprise"}
    assert any(org["database_count"] == 0 for org in orgs)
    assert any(org["database_count"] > 0 for org in orgs)
    assert {org["has_past_due_invoices"] for org in orgs} == {None, True, False}
    assert any(org["sso_portal_url"] is None for org in orgs)
    assert any(isinstance(org["sso_portal_url"], str) for org in orgs)
    assert any(org["features"] == {} for org in orgs)
    for org in orgs:
        assert set(org) == ORG_FIELDS
        assert org["created_at"] <= org["updated_at"]
        assert isinstance(org["invoice_budget_amount"], str)


# ------------------------------------------------------------------------------------------
# Sandbox faithfulness over plain httpx
# ------------------------------------------------------------------------------------------


def test_list_envelope_and_absolute_links(main: ServedApp) -> None:
    first = httpx.get(main.url + "/organizations?per_page=100", headers=auth("acme"))
    assert first.status_code == 200
    body = first.json()
    assert set(body) == ENVELOPE_FIELDS
    assert body["type"] == "list"
    assert (body["current_page"], body["per_page"], body["next_page"]) == (1, 3, 2)
    assert body["prev_page"] is None and body["prev_page_url"] is None
    assert body["next_page_url"] == main.url + "/organizations?page=2&per_page=3"
    assert len(body["data"]) == 3 and set(body["data"][0]) == ORG_FIELDS

    last = httpx.get(main.url + "/organizations?page=4&per_page=3", headers=auth("acme")).json()
    assert (last["current_page"], last["next_page"], last["next_page_url"]) == (4, None, None)
    assert last["prev_page"] == 3
    assert last["prev_page_url"] == main.url + "/organizations?page=3&per_page=3"
    assert len(last["data"]) == 1

    beyond = httpx.get(main.url + "/organizations?page=9", headers=auth("acme")).json()
    assert beyond["data"] == [] and beyond["next_page"] is None


def test_per_page_default_max_and_clamping(prefixed: ServedApp) -> None:
    url = prefixed.url + PREFIX + "/organizations"
    headers = auth("acme", WIDE)

    def page(query: str) -> dict[str, Any]:
        response = httpx.get(url + query, headers=headers)
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    default = page("")
    assert (default["per_page"], len(default["data"])) == (25, 25)
    assert default["next_page_url"] == url + "?page=2&per_page=25"
    assert page("?per_page=500")["per_page"] == 100
    assert len(page("?per_page=500")["data"]) == 60
    assert page("?per_page=0")["per_page"] == 1
    assert page("?per_page=-4")["per_page"] == 1
    assert page("?per_page=lots")["per_page"] == 25
    assert page("?page=0&per_page=10")["current_page"] == 1


@pytest.mark.parametrize(
    ("header", "message_part"),
    [
        (None, "Missing"),
        ("", "Missing"),
        ("sandbox-nobody-00000000:pscale_tkn_sandbox_x", "invalid"),
        ("just-a-token-without-colon", "SERVICE_TOKEN_ID"),
        ("BEARER", "SERVICE_TOKEN_ID"),
    ],
)
def test_sandbox_rejects_bad_authorization(
    main: ServedApp, header: str | None, message_part: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = httpx.get(main.url + "/organizations", headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "unauthorized" and message_part in body["message"]


def test_sandbox_rejects_bearer_service_token_and_wrong_secret(main: ServedApp) -> None:
    good = auth("acme")["Authorization"]
    for header in (f"Bearer {good}", f"bearer {good}", good + "x", good.split(":")[0] + ":"):
        response = httpx.get(main.url + "/organizations", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.json()["code"] == "unauthorized"
    ok = httpx.get(main.url + "/organizations", headers={"Authorization": good})
    assert ok.status_code == 200


def test_sandbox_hides_other_accounts_organizations(main: ServedApp) -> None:
    globex_org = httpx.get(main.url + "/organizations", headers=auth("globex")).json()["data"][0]
    url = main.url + "/organizations/" + globex_org["name"]
    assert httpx.get(url, headers=auth("globex")).json() == globex_org
    foreign = httpx.get(url, headers=auth("acme"))
    missing = httpx.get(main.url + "/organizations/no-such-org", headers=auth("acme"))
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json() == {"code": "not_found", "message": "Not Found"}
    patched = httpx.patch(url, headers=auth("acme"), json={"billing_email": "x@example.com"})
    assert patched.status_code == 404


def test_sandbox_patch_validation(main: ServedApp) -> None:
    org = httpx.get(main.url + "/organizations", headers=auth("acme")).json()["data"][1]
    url = main.url + "/organizations/" + org["name"]
    for payload in (
        {"name": "renamed"},
        {"billing_email": 5},
        {"billing_email": "not-an-email"},
        {"invoice_budget_amount": "100"},
        {"invoice_budget_amount": True},
        {"idp_managed_roles": "yes"},
        ["billing_email"],
    ):
        response = httpx.patch(url, headers=auth("acme"), json=payload)
        assert response.status_code == 422, payload
        assert response.json()["code"] == "invalid_params"
    garbage = httpx.patch(url, headers=auth("acme"), content=b"{not json")
    assert garbage.status_code == 422
    assert httpx.get(url, headers=auth("acme")).json() == org  # nothing changed

    changed = httpx.patch(
        url,
        headers=auth("acme"),
        json={"invoice_budget_amount": 750, "idp_managed_roles": True},
    )
    assert changed.status_code == 200
    assert changed.json()["invoice_budget_amount"] == "750"  # integer in, string out
    assert changed.json()["idp_managed_roles"] is True
    assert changed.json()["updated_at"] > org["updated_at"]

    read_only = httpx.get(main.url + "/organizations", headers=auth("initech")).json()["data"][0]
    forbidden = httpx.patch(
        main.url + "/organizations/" + read_only["name"],
        headers=auth("initech"),
        json={"billing_email": "new@example.com"},
    )
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == "forbidden"


def test_sandbox_unknown_route_and_method_use_error_body(main: ServedApp) -> None:
    unknown = httpx.get(main.url + "/databases", headers=auth("acme"))
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    wrong_method = httpx.delete(main.url + "/organizations", headers=auth("acme"))
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()) == {"code", "message"}
    main.fault(status=503, times=1)
    injected = httpx.get(main.url + "/organizations", headers=auth("acme"))
    assert injected.status_code == 503
    assert injected.json() == {"code": "internal_server_error", "message": "injected fault"}


async def test_rate_limit_per_token_with_retry_after(limited: ServedApp) -> None:
    for _ in range(3):
        assert httpx.get(limited.url + "/organizations", headers=auth("acme")).status_code == 200
    over = httpx.get(limited.url + "/organizations", headers=auth("acme"))
    assert over.status_code == 429
    assert over.json()["code"] == "rate_limit_exceeded"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    # Per token: another account's token is unaffected.
    assert httpx.get(limited.url + "/organizations", headers=auth("globex")).status_code == 200

    adapter = make_adapter(limited.url)
    try:
        with pytest.raises(UpstreamRateLimited) as info:
            await adapter.list_organizations(creds("acme"))
    finally:
        await adapter.aclose()
    assert info.value.status == 429
    assert info.value.retry_after is not None and 1 <= info.value.retry_after <= 60


async def test_rate_limits_switch_off() -> None:
    app = create_app(options=replace(MAIN, rate_limits=False), rate_limit_per_minute=1)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        statuses = [
            (await client.get("/organizations", headers=auth("acme"))).status_code for _ in range(4)
        ]
    assert statuses == [200, 200, 200, 200]


def test_sandbox_builds_10000_orgs_quickly() -> None:
    started = time.perf_counter()
    create_app(options=SandboxOptions(orgs=10_000))
    assert time.perf_counter() - started < 2.0


# ------------------------------------------------------------------------------------------
# Adapter: pagination and normalisation
# ------------------------------------------------------------------------------------------


async def test_pagination_walk_follows_next_page_url_as_given(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    first = await adapter.list_organizations(creds("acme"))
    assert len(first.organizations) == 3
    raw = httpx.get(main.url + "/organizations?page=1&per_page=100", headers=auth("acme")).json()
    assert first.next_cursor == raw["next_page_url"]

    main.clear_requests()
    records = await walk(adapter, "acme")
    names = [record.provider_id for record in records]
    assert names == await expected_names("acme")
    assert len(names) == len(set(names)) == 10
    log = main.requests()
    assert [entry["path"] for entry in log] == ["/organizations"] * 4
    assert [entry["query"] for entry in log] == [
        "page=1&per_page=100",
        "page=2&per_page=3",
        "page=3&per_page=3",
        "page=4&per_page=3",
    ]


async def test_each_account_sees_only_its_own_organizations(adapter: PlanetScaleAdapter) -> None:
    seen: dict[str, set[str]] = {}
    for account in ACCOUNTS:
        seen[account] = {record.provider_id for record in await walk(adapter, account)}
        assert seen[account] == set(await expected_names(account))
    assert not (seen["acme"] & seen["globex"]) and not (seen["acme"] & seen["initech"])
    assert sum(len(names) for names in seen.values()) == 30


async def test_normalisation_of_every_cell(main: ServedApp, adapter: PlanetScaleAdapter) -> None:
    raw_orgs = httpx.get(main.url + "/organizations?per_page=3", headers=auth("globex")).json()[
        "data"
    ]
    page = await adapter.list_organizations(creds("globex"))
    for raw, record in zip(raw_orgs, page.organizations, strict=True):
        assert record.provider is ProviderName.PLANETSCALE
        assert record.provider_id == record.name == record.slug == raw["name"]
        assert record.provider_id != raw["id"]
        assert record.billing_email == raw["billing_email"]
        assert record.plan == raw["plan"]
        assert record.currency is None and record.timezone is None
        assert record.status is OrganizationStatus.ACTIVE
        assert record.created_at == datetime.fromisoformat(raw["created_at"])
        assert record.updated_at == datetime.fromisoformat(raw["updated_at"])
        assert record.created_at is not None and record.created_at.tzinfo is not None
        assert dict(record.raw) == raw

        main.clear_requests()
        assert await adapter.list_subscriptions(creds("globex"), record) == ()
        usage = await adapter.get_usage(creds("globex"), record)
        assert main.requests() == []  # neither needs an upstream call
        assert usage is not None and usage.history == ()
        (metric,) = usage.metrics
        assert (metric.key, metric.label, metric.unit) == (
            "databases",
            "Databases",
            UsageUnit.COUNT,
        )
        assert metric.value == float(raw["database_count"]) and metric.limit is None
    # The first organization of every account has no databases: 0, not "no usage".
    assert page.organizations[0].raw["database_count"] == 0


async def test_get_organization(main: ServedApp, adapter: PlanetScaleAdapter) -> None:
    (first, *_) = (await adapter.list_organizations(creds("acme"))).organizations
    main.clear_requests()
    record = await adapter.get_organization(creds("acme"), first.provider_id)
    assert record == first
    assert main.requests() == [
        {"method": "GET", "path": f"/organizations/{first.provider_id}", "query": ""}
    ]
    with pytest.raises(UpstreamNotFound) as info:
        await adapter.get_organization(creds("globex"), first.provider_id)
    assert info.value.status == 404 and "Not Found" in info.value.message


async def test_get_organization_quotes_the_name(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    with pytest.raises(UpstreamNotFound):
        await adapter.get_organization(creds("acme"), "odd name?page=2#x/../y")
    (entry,) = main.requests()
    # Unquoted, '?' and '#' would have cut the path and '/' would have added segments.
    assert entry["path"] == "/organizations/odd name?page=2#x/../y"
    assert entry["query"] == ""


async def test_tolerates_absent_optional_fields_and_null_data(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    sparse = {"id": "x1", "name": "sparse-org", "billing_email": None, "surprise": [1]}
    inject_body(main, sparse)
    record = await adapter.get_organization(creds("acme"), "sparse-org")
    assert record.provider_id == "sparse-org"
    assert record.billing_email is None and record.plan is None
    assert record.created_at is None and record.updated_at is None
    assert dict(record.raw) == sparse
    assert await adapter.get_usage(creds("acme"), record) is None

    inject_body(main, {"type": "list", "data": None, "next_page": None, "next_page_url": None})
    empty = await adapter.list_organizations(creds("acme"))
    assert empty.organizations == () and empty.next_cursor is None


async def test_relative_and_missing_next_page_url(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    inject_body(main, {"data": [ORG_BODY], "next_page": 2, "next_page_url": "?page=2&per_page=9"})
    page = await adapter.list_organizations(creds("acme"))
    assert page.next_cursor == main.url + "/organizations?page=2&per_page=9"
    assert page.organizations[0].created_at == datetime(2024, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)

    inject_body(main, {"data": [ORG_BODY], "next_page": 3, "next_page_url": None})
    page = await adapter.list_organizations(creds("acme"))
    assert page.next_cursor == main.url + "/organizations?page=3&per_page=100"
    # The built link is a working cursor.
    following = await adapter.list_organizations(creds("acme"), cursor=page.next_cursor)
    assert len(following.organizations) == 3


async def test_off_origin_cursors_are_refused(main: ServedApp, adapter: PlanetScaleAdapter) -> None:
    for cursor in (
        "https://evil.example.com/v1/organizations?page=2",
        main.url.replace("127.0.0.1", "localhost") + "/organizations?page=2",
        "page=2",
        "/organizations?page=2",
    ):
        with pytest.raises(InvalidCursor):
            await adapter.list_organizations(creds("acme"), cursor=cursor)
    # The same check on a link the upstream gave is the upstream's fault, not the client's.
    inject_body(main, {"data": [], "next_page": 2, "next_page_url": "https://evil.example.com/x"})
    with pytest.raises(BadUpstreamResponse):
        await adapter.list_organizations(creds("acme"))
    assert len(main.requests()) == 1  # only the injected page; no cursor was ever sent


@pytest.mark.parametrize(
    "body",
    [
        [ORG_BODY],
        {"data": "organizations"},
        {"data": [{"id": "x", "billing_email": "a@b.c"}]},
        {"data": [{"name": "no-id"}]},
        {"data": ["solo-org"]},
        {"data": [{**ORG_BODY, "created_at": "yesterday"}]},
        {"data": [ORG_BODY], "next_page": "two", "next_page_url": None},
        "<html><body>Maintenance</body></html>",
        "",
    ],
)
async def test_wrongly_shaped_list_bodies(
    main: ServedApp, adapter: PlanetScaleAdapter, body: Any
) -> None:
    if body == "":
        main.fault(body="", times=1)
    else:
        inject_body(main, body)
    with pytest.raises(BadUpstreamResponse) as info:
        # An envelope is checked on arrival, an organization when it is read.
        tuple((await adapter.list_organizations(creds("acme"))).organizations)
    assert "Maintenance" not in info.value.message and "solo-org" not in info.value.message


async def test_organizations_normalise_when_read(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    # A merged list shows only part of a page: the rest is never normalised, and a broken
    # organization there costs nothing until something reads it.
    inject_body(main, {"data": [ORG_BODY, {"name": "no-id"}, ORG_BODY]})
    page = await adapter.list_organizations(creds("acme"))
    assert len(page.organizations) == 3
    assert page.organizations[0].provider_id == ORG_BODY["name"]
    assert page.organizations[2] == page.organizations[0]
    with pytest.raises(BadUpstreamResponse):
        page.organizations[1]
    with pytest.raises(BadUpstreamResponse):
        tuple(page.organizations)


async def test_non_advancing_next_link(main: ServedApp, adapter: PlanetScaleAdapter) -> None:
    inject_body(main, {"data": [], "next_page_url": "?page=1&per_page=100"})
    with pytest.raises(BadUpstreamResponse):
        await adapter.list_organizations(creds("acme"))


async def test_wrongly_shaped_organization_body(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    for body in ({"organization": ORG_BODY}, ["solo-org"], {"id": "x", "name": ""}):
        inject_body(main, body)
        with pytest.raises(BadUpstreamResponse):
            await adapter.get_organization(creds("acme"), "solo-org")


# ------------------------------------------------------------------------------------------
# Adapter: auth and the error taxonomy
# ------------------------------------------------------------------------------------------


async def test_wrong_credentials_are_unauthorized_and_never_echoed(
    adapter: PlanetScaleAdapter,
) -> None:
    good = demo_credentials("acme", MAIN)
    secret = "pscale_tkn_sandbox_wrongwrongwrong"
    wrong = PlanetScaleAdapter.parse_credentials({**good, "service_token": secret})
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(wrong)
    assert info.value.status == 401
    assert secret not in info.value.message and good["service_token"] not in info.value.message
    with pytest.raises(UpstreamUnauthorized):
        await adapter.get_organization(wrong, "anything")


async def test_error_messages_redact_credentials(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    token = demo_credentials("acme", MAIN)["service_token"]
    main.fault(
        status=401,
        body=json.dumps({"code": "unauthorized", "message": f"token {token} expired"}),
        times=1,
    )
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(creds("acme"))
    assert token not in info.value.message and "[redacted]" in info.value.message


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ({"status": 503}, UpstreamUnavailable, 503),
        ({"status": 500, "body": "<html>secret stack</html>", "content_type": "text/html"},
         UpstreamUnavailable, 500),
        ({"status": 429}, UpstreamRateLimited, 429),
        ({"status": 403}, UpstreamForbidden, 403),
        ({"status": 422}, UpstreamRejected, 422),
        ({"status": 418}, BadUpstreamResponse, 418),
    ],
)  # fmt: skip
async def test_faults_map_to_the_taxonomy(
    main: ServedApp,
    adapter: PlanetScaleAdapter,
    fault: dict[str, Any],
    error: type[Exception],
    status: int,
) -> None:
    main.fault(**fault, times=2)
    with pytest.raises(error) as info:
        await adapter.list_organizations(creds("acme"))
    assert getattr(info.value, "status", None) == status
    assert "secret stack" not in str(info.value)
    with pytest.raises(error):
        await adapter.get_organization(creds("acme"), "anything")
    if status == 429:
        assert getattr(info.value, "retry_after", None) == 1.0


async def test_slow_upstream_times_out(main: ServedApp) -> None:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    slow = make_adapter(main.url, timeout=0.2, retries=0)
    main.fault(delay_ms=1500, times=1)
    try:
        with pytest.raises(UpstreamTimeout):
            await slow.list_organizations(creds("acme"))
    finally:
        await slow.aclose()


async def test_unreachable_upstream() -> None:
    closed = make_adapter("http://127.0.0.1:9/v1", timeout=1.0)
    try:
        with pytest.raises(UpstreamUnavailable):
            await closed.list_organizations(creds("acme"))
    finally:
        await closed.aclose()


# ------------------------------------------------------------------------------------------
# Adapter: updates
# ------------------------------------------------------------------------------------------


async def test_update_billing_email_and_read_after_write(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    target = (await adapter.list_organizations(creds("globex"))).organizations[2]
    main.clear_requests()
    updated = await adapter.update_organization(
        creds("globex"), target.provider_id, OrganizationUpdate(billing_email="ap@globex.example")
    )
    assert updated.billing_email == "ap@globex.example"
    assert updated.provider_id == target.provider_id and updated.plan == target.plan
    assert updated.updated_at is not None and target.updated_at is not None
    assert updated.updated_at > target.updated_at
    assert [entry["method"] for entry in main.requests()] == ["PATCH"]
    again = await adapter.get_organization(creds("globex"), target.provider_id)
    assert again.billing_email == "ap@globex.example"
    assert dict(again.raw) == dict(updated.raw)

    # Sending the current name along is not a rename.
    same_name = await adapter.update_organization(
        creds("globex"),
        target.provider_id,
        OrganizationUpdate(name=target.provider_id, billing_email="ar@globex.example"),
    )
    assert same_name.billing_email == "ar@globex.example"


async def test_rename_is_unsupported_before_any_call(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    target = (await adapter.list_organizations(creds("acme"))).organizations[0]
    main.clear_requests()
    with pytest.raises(OperationUnsupported) as info:
        await adapter.update_organization(
            creds("acme"),
            target.provider_id,
            OrganizationUpdate(name="brand-new-name", billing_email="x@example.com"),
        )
    assert info.value.code == "UNSUPPORTED" and "rename" in info.value.message
    assert main.requests() == []
    unchanged = await adapter.get_organization(creds("acme"), target.provider_id)
    assert unchanged.billing_email == target.billing_email


async def test_empty_update_reads_without_writing(
    main: ServedApp, adapter: PlanetScaleAdapter
) -> None:
    target = (await adapter.list_organizations(creds("acme"))).organizations[1]
    main.clear_requests()
    record = await adapter.update_organization(
        creds("acme"), target.provider_id, OrganizationUpdate()
    )
    assert record.provider_id == target.provider_id
    assert [entry["method"] for entry in main.requests()] == ["GET"]


async def test_update_errors(adapter: PlanetScaleAdapter) -> None:
    acme_org = (await adapter.list_organizations(creds("acme"))).organizations[0]
    with pytest.raises(UpstreamNotFound):
        await adapter.update_organization(
            creds("globex"), acme_org.provider_id, OrganizationUpdate(billing_email="a@b.example")
        )
    with pytest.raises(UpstreamRejected) as info:
        await adapter.update_organization(
            creds("acme"), acme_org.provider_id, OrganizationUpdate(billing_email="no-at-sign")
        )
    assert info.value.status == 422 and "billing_email" in info.value.message
    read_only = (await adapter.list_organizations(creds("initech"))).organizations[0]
    with pytest.raises(UpstreamForbidden):
        await adapter.update_organization(
            creds("initech"), read_only.provider_id, OrganizationUpdate(billing_email="a@b.example")
        )


# ------------------------------------------------------------------------------------------
# Adapter: a base_url with a path prefix
# ------------------------------------------------------------------------------------------


async def test_base_url_with_path_prefix(prefixed: ServedApp) -> None:
    prefixed_adapter = make_adapter(prefixed.url + PREFIX)
    account = creds("acme", WIDE)
    try:
        first = await prefixed_adapter.list_organizations(account)
        assert len(first.organizations) == 60  # per_page=100 honoured: one page
        assert first.next_cursor is None
        # The sandbox only answers under the prefix, so success shows the prefix was kept.
        name = first.organizations[-1].provider_id
        record = await prefixed_adapter.get_organization(account, name)
        assert record.provider_id == name
        updated = await prefixed_adapter.update_organization(
            account, name, OrganizationUpdate(billing_email="wide@example.com")
        )
        assert updated.billing_email == "wide@example.com"
    finally:
        await prefixed_adapter.aclose()

    # Links keep the prefix, and the adapter follows one as given.
    base = prefixed.url + PREFIX + "/organizations"
    body = httpx.get(base, headers=auth("acme", WIDE)).json()
    assert body["next_page_url"] == base + "?page=2&per_page=25"
    expected = httpx.get(body["next_page_url"], headers=auth("acme", WIDE)).json()
    follower = make_adapter(prefixed.url + PREFIX)
    try:
        second = await follower.list_organizations(account, cursor=body["next_page_url"])
    finally:
        await follower.aclose()
    assert [record.provider_id for record in second.organizations] == [
        org["name"] for org in expected["data"]
    ]
    assert second.next_cursor == base + "?page=3&per_page=25"
