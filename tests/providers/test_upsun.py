"""Upsun / Platform.sh: the adapter against its sandbox over real loopback HTTP, and the sandbox's
faithfulness to the OpenAPI excerpt (token exchange, HAL pagination, filters, sort, problem+json).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from providers.base import (
    BadUpstreamResponse,
    CallMemo,
    CredentialsError,
    InvalidCursor,
    OperationUnsupported,
    OrganizationRecord,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    SubscriptionStatus,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    UsageUnit,
    call_memo,
    load_adapter_class,
    load_sandbox_module,
)
from providers.sandbox_kit import SandboxOptions
from providers.upsun.adapter import DEFAULT_TOKEN_URL, UpsunAdapter
from providers.upsun.sandbox import TOKEN_PATH, create_app, demo_credentials
from tests.support import ServedApp, serve_app

__all__: list[str] = []

OPTIONS = SandboxOptions(orgs=16)
PAGED = SandboxOptions(orgs=16, max_page_size=2)
PREFIX = "/upsun/api"
ACME = ProviderCredentials(demo_credentials("acme", OPTIONS))
GLOBEX = ProviderCredentials(demo_credentials("globex", OPTIONS))
MIB = 1048576
SPEC = Path(__file__).resolve().parents[3] / "shared" / "upstreams" / "upsun.openapi.json"


# One pooled client for the tests' own calls: a fresh httpx client per call costs ~50 ms (TLS
# context), which over ~50 tests would dominate the file's run time.
_HTTP = httpx.Client(timeout=10)


def _control(server: ServedApp, method: str, what: str, **payload: Any) -> Any:
    response = _HTTP.request(
        method, f"{server.url}/__sandbox/{what}", json=payload if payload else None
    )
    response.raise_for_status()
    return response.json()


def _fault(server: ServedApp, **fault: Any) -> None:
    _control(server, "POST", "faults", **fault)


def _requests(server: ServedApp) -> list[dict[str, str]]:
    return list(_control(server, "GET", "requests")["requests"])


# --- fixtures


@pytest.fixture(scope="module", autouse=True)
def _http_client() -> Iterator[None]:
    yield
    _HTTP.close()


@pytest.fixture(scope="module")
def main() -> Iterator[ServedApp]:
    with serve_app(create_app(options=OPTIONS)) as served:
        yield served


@pytest.fixture(scope="module")
def paged() -> Iterator[ServedApp]:
    with serve_app(create_app(options=PAGED)) as served:
        yield served


@pytest.fixture(scope="module")
def short_ttl() -> Iterator[ServedApp]:
    with serve_app(create_app(options=OPTIONS, token_ttl_seconds=2)) as served:
        yield served


@pytest.fixture(scope="module")
def prefixed() -> Iterator[ServedApp]:
    inner = create_app(options=SandboxOptions(orgs=16, max_page_size=4))
    with serve_app(Starlette(routes=[Mount(PREFIX, app=inner)])) as served:
        yield ServedApp(inner, served.url + PREFIX)


@pytest.fixture(autouse=True)
def _clean(main: ServedApp, paged: ServedApp) -> Iterator[None]:
    for server in (main, paged):
        _control(server, "DELETE", "faults")
        _control(server, "DELETE", "requests")
    yield
    for server in (main, paged):
        _control(server, "DELETE", "faults")


def _adapter(server: ServedApp, **settings: Any) -> UpsunAdapter:
    return UpsunAdapter(
        ProviderSettings(base_url=server.url, token_url=server.url + TOKEN_PATH, **settings)
    )


@pytest.fixture
async def adapter(main: ServedApp) -> AsyncIterator[UpsunAdapter]:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    instance = _adapter(main, retries=0)
    yield instance
    await instance.aclose()


@pytest.fixture
async def paged_adapter(paged: ServedApp) -> AsyncIterator[UpsunAdapter]:
    instance = _adapter(paged)
    yield instance
    await instance.aclose()


# --- helpers


def _org_id(server: ServedApp, index: int) -> str:
    return str(server.app.state.upsun.orgs[index].data["id"])


def _org(server: ServedApp, index: int) -> OrganizationRecord:
    return OrganizationRecord(
        provider=ProviderName.UPSUN, provider_id=_org_id(server, index), name="x"
    )


def _access_token(server: ServedApp, credentials: ProviderCredentials) -> str:
    response = _HTTP.post(
        server.url + TOKEN_PATH,
        auth=("platform-api-user", ""),
        data={"grant_type": "api_token", "api_token": credentials["api_token"]},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _api(
    server: ServedApp,
    path: str,
    params: dict[str, Any] | None = None,
    credentials: ProviderCredentials = GLOBEX,
) -> httpx.Response:
    token = _access_token(server, credentials)
    url = path if path.startswith("http") else server.url + path
    return _HTTP.get(url, params=params, headers={"Authorization": f"Bearer {token}"})


def _assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) == {"status", "message", "code", "detail", "title"}
    assert body["code"] == status
    assert isinstance(body["status"], str) and isinstance(body["message"], str)
    assert isinstance(body["detail"], dict)
    return dict(body)


def _log(server: ServedApp, method: str, path_part: str) -> list[dict[str, str]]:
    return [r for r in _requests(server) if r["method"] == method and path_part in r["path"]]


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- registry, credentials


def test_registry_and_credentials() -> None:
    assert load_adapter_class(ProviderName.UPSUN) is UpsunAdapter
    assert load_sandbox_module(ProviderName.UPSUN).TOKEN_PATH == "/oauth2/token"
    assert UpsunAdapter.supports_update is False
    parsed = UpsunAdapter.parse_credentials({"api_token": "abc", "extra": "dropped"})
    assert dict(parsed.values) == {"api_token": "abc"}
    for bad in ({}, {"api_token": ""}, {"api_token": 5}):
        with pytest.raises(CredentialsError) as info:
            UpsunAdapter.parse_credentials(bad)
        assert "api_token" in str(info.value)


def test_demo_credentials_are_fake_and_per_account() -> None:
    acme, globex = demo_credentials("acme"), demo_credentials("globex")
    assert set(acme) == {"api_token"} and "sandbox" in acme["api_token"]
    assert acme != globex
    assert demo_credentials("acme", SandboxOptions(seed=42)) == acme
    with pytest.raises(KeyError):
        demo_credentials("initech")


def test_default_token_url_is_the_spec_auth_server() -> None:
    adapter = UpsunAdapter(ProviderSettings(base_url="https://api.upsun.com"))
    assert adapter.token_url == DEFAULT_TOKEN_URL == "https://auth.api.platform.sh/oauth2/token"


# --- auth


async def test_token_exchanged_once_and_cached(main: ServedApp, adapter: UpsunAdapter) -> None:
    await adapter.list_organizations(GLOBEX)
    await adapter.get_organization(GLOBEX, _org_id(main, 3))
    await adapter.list_subscriptions(GLOBEX, _org(main, 3))
    tokens = _log(main, "POST", TOKEN_PATH)
    assert len(tokens) == 1
    assert len(_log(main, "GET", "/organizations")) == 3
    # A second tenant gets its own token.
    await adapter.list_organizations(ACME)
    assert len(_log(main, "POST", TOKEN_PATH)) == 2


async def test_token_refreshed_before_expiry(short_ttl: ServedApp) -> None:
    _control(short_ttl, "DELETE", "requests")
    adapter = _adapter(short_ttl)
    try:
        org_id = _org_id(short_ttl, 3)
        await adapter.get_organization(GLOBEX, org_id)
        await adapter.get_organization(GLOBEX, org_id)
        assert len(_log(short_ttl, "POST", TOKEN_PATH)) == 1
        await asyncio.sleep(2.05)  # past expires_in=2
        await adapter.get_organization(GLOBEX, org_id)
        assert len(_log(short_ttl, "POST", TOKEN_PATH)) == 2
        # Refreshed proactively: no request was answered 401 and retried.
        assert len(_log(short_ttl, "GET", "/organizations/")) == 3
    finally:
        await adapter.aclose()


async def test_revoked_token_is_refreshed_and_the_call_retried_once(
    main: ServedApp, adapter: UpsunAdapter
) -> None:
    org_id = _org_id(main, 3)
    await adapter.get_organization(GLOBEX, org_id)
    _HTTP.post(main.url + "/__sandbox/revoke-tokens").raise_for_status()
    record = await adapter.get_organization(GLOBEX, org_id)
    assert record.provider_id == org_id
    assert len(_log(main, "POST", TOKEN_PATH)) == 2
    assert len(_log(main, "GET", "/organizations/")) == 3  # ok, 401, retried ok


async def test_persistent_401_is_unauthorized_after_one_retry(
    main: ServedApp, adapter: UpsunAdapter
) -> None:
    _fault(main, status=401, path_prefix="/organizations", times=2)
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(GLOBEX)
    assert info.value.status == 401
    assert len(_log(main, "POST", TOKEN_PATH)) == 2
    assert len(_log(main, "GET", "/organizations")) == 2


async def test_bad_api_token_is_unauthorized(main: ServedApp, adapter: UpsunAdapter) -> None:
    secret = "sandbox_upsun_apitoken_wrong_value_123"
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(ProviderCredentials({"api_token": secret}))
    assert info.value.status == 400
    assert secret not in str(info.value)
    assert _log(main, "GET", "/organizations") == []


async def test_token_endpoint_outage_is_unavailable(main: ServedApp, adapter: UpsunAdapter) -> None:
    _fault(main, status=503, path_prefix=TOKEN_PATH, times=1)
    with pytest.raises(UpstreamUnavailable):
        await adapter.list_organizations(GLOBEX)


def test_token_endpoint_faithfulness(main: ServedApp) -> None:
    url = main.url + TOKEN_PATH
    good = {"grant_type": "api_token", "api_token": GLOBEX["api_token"]}
    ok = _HTTP.post(url, auth=("platform-api-user", ""), data=good)
    assert ok.status_code == 200
    body = ok.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    assert isinstance(body["access_token"], str) and body["access_token"]

    missing = _HTTP.post(url, data=good)
    assert missing.status_code == 401 and missing.json()["error"] == "invalid_client"
    assert missing.headers["www-authenticate"].startswith("Basic")
    wrong_client = _HTTP.post(url, auth=("someone", ""), data=good)
    assert wrong_client.status_code == 401
    grant = _HTTP.post(url, auth=("platform-api-user", ""), data={**good, "grant_type": "password"})
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    bad = _HTTP.post(url, auth=("platform-api-user", ""), data={**good, "api_token": "nope"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"error", "error_description"}
    assert bad.json()["error"] == "invalid_grant"


def test_api_requires_a_valid_bearer(main: ServedApp) -> None:
    missing = _HTTP.get(main.url + "/organizations")
    assert _assert_problem(missing, 401)["title"] == "Unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    bogus = _HTTP.get(main.url + "/organizations", headers={"Authorization": "Bearer nope"})
    _assert_problem(bogus, 401)
    basic = _HTTP.get(main.url + "/organizations", auth=("platform-api-user", ""))
    _assert_problem(basic, 401)


# --- organizations


async def test_org_pagination_follows_links_as_given(
    paged: ServedApp, paged_adapter: UpsunAdapter
) -> None:
    seen: list[str] = []
    cursors: list[str] = []
    cursor: str | None = None
    while True:
        page = await paged_adapter.list_organizations(GLOBEX, cursor=cursor)
        assert len(page.organizations) <= 2
        seen.extend(o.provider_id for o in page.organizations)
        if page.next_cursor is None:
            break
        cursors.append(page.next_cursor)
        cursor = page.next_cursor
    # globex holds the odd indexes; 5 and 13 are deleted, which the API does not list by default.
    expected = [_org_id(paged, i) for i in (1, 3, 7, 9, 11, 15)]
    assert seen == expected
    assert len(cursors) == 2
    gets = _log(paged, "GET", "/organizations")
    assert len(gets) == 3
    assert gets[0]["query"] == "page%5Bsize%5D=100"
    for request, given in zip(gets[1:], cursors, strict=True):
        assert given.startswith(paged.url + "/organizations?")
        assert request["query"] == urlsplit(given).query
        assert "page%5Bafter%5D=" in request["query"]


async def test_deleted_org_reachable_by_id(main: ServedApp, adapter: UpsunAdapter) -> None:
    all_ids: list[str] = []
    page = await adapter.list_organizations(GLOBEX)
    assert page.next_cursor is None
    all_ids = [o.provider_id for o in page.organizations]
    assert _org_id(main, 5) not in all_ids
    record = await adapter.get_organization(GLOBEX, _org_id(main, 5))
    assert record.status is OrganizationStatus.DELETED


@pytest.mark.parametrize(
    ("index", "credentials", "status"),
    [
        (0, ACME, OrganizationStatus.ACTIVE),
        (1, GLOBEX, OrganizationStatus.ACTIVE),
        (2, ACME, OrganizationStatus.RESTRICTED),
        (4, ACME, OrganizationStatus.SUSPENDED),
        (5, GLOBEX, OrganizationStatus.DELETED),
    ],
)
async def test_organization_normalisation(
    main: ServedApp,
    adapter: UpsunAdapter,
    index: int,
    credentials: ProviderCredentials,
    status: OrganizationStatus,
) -> None:
    org_id = _org_id(main, index)
    raw = _api(main, f"/organizations/{org_id}", credentials=credentials).json()
    record = await adapter.get_organization(credentials, org_id)
    assert record.provider is ProviderName.UPSUN
    assert record.provider_id == raw["id"] == org_id
    assert record.name == raw["label"]
    assert record.slug == raw["name"] and record.slug != record.name
    assert record.billing_email is None and record.plan is None
    assert record.currency is None and record.timezone is None
    assert record.status is status
    assert record.created_at == _dt(raw["created_at"])
    assert record.updated_at == _dt(raw["updated_at"])
    assert record.created_at is not None and record.created_at.tzinfo is not None
    assert dict(record.raw) == raw
    assert ("country" in raw) is (index % 3 != 1)  # optional fields absent for some orgs


async def test_listed_org_equals_fetched_org(main: ServedApp, adapter: UpsunAdapter) -> None:
    page = await adapter.list_organizations(ACME)
    assert [o.status for o in page.organizations][:3] == [
        OrganizationStatus.ACTIVE,
        OrganizationStatus.RESTRICTED,
        OrganizationStatus.SUSPENDED,
    ]
    fetched = await adapter.get_organization(ACME, page.organizations[1].provider_id)
    assert fetched == page.organizations[1]
    by_name = await adapter.get_organization(ACME, f"name={fetched.slug}")
    assert by_name.provider_id == fetched.provider_id


async def test_unknown_status_and_missing_label(main: ServedApp, adapter: UpsunAdapter) -> None:
    org_id = _org_id(main, 3)
    odd = {"id": org_id, "name": "machine-name", "status": "archived"}
    _fault(main, body=json.dumps(odd), path_prefix=f"/organizations/{org_id}", times=1)
    record = await adapter.get_organization(GLOBEX, org_id)
    assert record.status is OrganizationStatus.UNKNOWN
    assert record.name == record.slug == "machine-name"
    assert record.created_at is None and record.updated_at is None


async def test_other_accounts_and_missing_orgs_are_not_found(
    main: ServedApp, adapter: UpsunAdapter
) -> None:
    with pytest.raises(UpstreamNotFound) as info:
        await adapter.get_organization(ACME, _org_id(main, 3))
    assert info.value.status == 404
    with pytest.raises(UpstreamNotFound):
        await adapter.get_organization(ACME, "01HZZZZZZZZZZZZZZZZZZZZZZZ")
    with pytest.raises(UpstreamNotFound):
        await adapter.list_subscriptions(ACME, _org(main, 3))
    before = len(_requests(main))
    for weird in ("", ".", ".."):
        with pytest.raises(UpstreamNotFound):
            await adapter.get_organization(ACME, weird)
    assert len(_requests(main)) == before  # never sent


async def test_relative_next_link_and_null_items(main: ServedApp, adapter: UpsunAdapter) -> None:
    body = {
        "count": 0,
        "items": None,
        "_links": {"next": {"href": "/organizations?page%5Bafter%5D=x"}},
    }
    _fault(main, body=json.dumps(body), path_prefix="/organizations", times=1)
    page = await adapter.list_organizations(GLOBEX)
    assert page.organizations == ()
    assert page.next_cursor == main.url + "/organizations?page%5Bafter%5D=x"


async def test_off_origin_cursor_and_link(main: ServedApp, adapter: UpsunAdapter) -> None:
    with pytest.raises(InvalidCursor):
        await adapter.list_organizations(GLOBEX, cursor="https://evil.example/organizations?a=1")
    with pytest.raises(InvalidCursor):
        await adapter.list_organizations(GLOBEX, cursor="  ")
    assert _log(main, "GET", "/organizations") == []
    body = {"items": [], "_links": {"next": {"href": "https://evil.example/organizations"}}}
    _fault(main, body=json.dumps(body), path_prefix="/organizations", times=1)
    with pytest.raises(BadUpstreamResponse):
        await adapter.list_organizations(GLOBEX)


async def test_update_is_unsupported(main: ServedApp, adapter: UpsunAdapter) -> None:
    with pytest.raises(OperationUnsupported) as info:
        await adapter.update_organization(GLOBEX, _org_id(main, 3), OrganizationUpdate(name="x"))
    assert info.value.code == "UNSUPPORTED"
    assert _requests(main) == []


# --- subscriptions and usage

_EXPECTED_SUB_STATUS = {
    "requested": SubscriptionStatus.PROVISIONING,
    "provisioning": SubscriptionStatus.PROVISIONING,
    "active": SubscriptionStatus.ACTIVE,
    "provisioning failure": SubscriptionStatus.PROVISIONING_FAILED,
    "suspended": SubscriptionStatus.SUSPENDED,
    "deleted": SubscriptionStatus.DELETED,
}


async def test_subscriptions_normalised_across_pages(
    main: ServedApp, paged: ServedApp, paged_adapter: UpsunAdapter
) -> None:
    org_id = _org_id(paged, 3)
    raw_items = _api(main, f"/organizations/{org_id}/subscriptions").json()["items"]
    records = await paged_adapter.list_subscriptions(GLOBEX, _org(paged, 3))
    assert len(_log(paged, "GET", "/subscriptions")) == 3  # 6 items, pages of 2
    assert [r.provider_id for r in records] == [item["id"] for item in raw_items]
    assert {r.provider_status for r in records} == set(_EXPECTED_SUB_STATUS)  # every status
    for record, raw in zip(records, raw_items, strict=True):
        assert record.provider is ProviderName.UPSUN
        assert record.organization_id == org_id
        assert record.status is _EXPECTED_SUB_STATUS[raw["status"]]
        assert record.provider_status == raw["status"]
        assert record.plan == raw["plan"]
        assert record.created_at == _dt(raw["created_at"])
        assert record.updated_at == _dt(raw["updated_at"])
        assert record.current_period_end is None and record.trial_ends_at is None
        assert dict(record.raw) == raw
    # Edge cases present in the data: absent owner_info, null services/project_id.
    assert any("owner_info" not in r for r in raw_items)
    assert any(r["user_licenses"] == 0 for r in raw_items)
    assert any(r["services"] is None for r in raw_items)
    assert any(r["project_id"] is None for r in raw_items)


def _expected_usage(raw_items: list[dict[str, Any]]) -> dict[str, tuple[float | None, Any]]:
    """DESIGN's Upsun usage row computed from the subscriptions as the API serves them:
    (value, limit) per key, over the subscriptions that are not deleted."""
    live = [r for r in raw_items if r["status"] != "deleted"]
    return {
        "projects": (float(len(live)), None),
        "user_licenses": (float(sum(r["user_licenses"] for r in live)), None),
        "environments": (None, float(sum(r["environments"] for r in live))),
        "storage_bytes": (None, float(sum(r["storage"] * r["environments"] for r in live) * MIB)),
    }


async def test_usage_normalisation(main: ServedApp, adapter: UpsunAdapter) -> None:
    raw_items = _api(main, f"/organizations/{_org_id(main, 3)}/subscriptions").json()["items"]
    assert any(r["status"] == "deleted" for r in raw_items)  # and they are left out
    usage = await adapter.get_usage(GLOBEX, _org(main, 3))
    assert usage is not None and usage.history == ()
    assert [m.key for m in usage.metrics] == [
        "projects",
        "user_licenses",
        "environments",
        "storage_bytes",
    ]
    expected = _expected_usage(raw_items)
    assert {m.key: (m.value, m.limit) for m in usage.metrics} == expected
    assert expected["storage_bytes"][1] > 0 and expected["user_licenses"][0] > 0
    units = {m.key: m.unit for m in usage.metrics}
    assert units == {
        "projects": UsageUnit.COUNT,
        "user_licenses": UsageUnit.COUNT,
        "environments": UsageUnit.COUNT,
        "storage_bytes": UsageUnit.BYTES,
    }
    labels = {m.key: m.label for m in usage.metrics}
    assert labels == {
        "projects": "Projects",
        "user_licenses": "User licenses",
        "environments": "Environments",
        "storage_bytes": "Storage",
    }


def test_sandbox_subscriptions_carry_the_spec_fields(main: ServedApp) -> None:
    """``environments`` (allowance), ``storage`` (MiB per environment, multiples of 1024),
    ``user_licenses`` (chargeable users now) are integers; ``status`` is from the spec's enum."""
    if not SPEC.exists():  # CI lays shared/ beside the checkout, as for every session
        pytest.fail(f"the public spec excerpt {SPEC} is missing: check out next to shared/")
    spec = json.loads(SPEC.read_text())["components"]["schemas"]["Subscription"]["properties"]
    for index in (0, 3, 7):
        items = _api(
            main,
            f"/organizations/{_org_id(main, index)}/subscriptions",
            credentials=(ACME if index % 2 == 0 else GLOBEX),
        ).json()["items"]
        for item in items:
            for key in ("environments", "storage", "user_licenses"):
                assert spec[key]["type"] == "integer"
                assert isinstance(item[key], int) and not isinstance(item[key], bool)
            assert item["environments"] >= 1
            assert item["storage"] > 0 and item["storage"] % 1024 == 0
            assert item["status"] in spec["status"]["enum"]
            if item["status"] in ("requested", "provisioning failure"):
                assert item["user_licenses"] == 0  # no project yet, so no users


async def test_usage_over_all_pages(
    main: ServedApp, paged: ServedApp, paged_adapter: UpsunAdapter
) -> None:
    # The same data set unpaged (main) gives the expectation; the adapter walks pages of two.
    path = f"/organizations/{_org_id(paged, 7)}/subscriptions"
    raw_items = _api(main, path).json()["items"]
    assert len(raw_items) == 5 and len(_api(paged, path).json()["items"]) == 2
    usage = await paged_adapter.get_usage(GLOBEX, _org(paged, 7))
    assert usage is not None
    assert {m.key: (m.value, m.limit) for m in usage.metrics} == _expected_usage(raw_items)


async def test_org_without_subscriptions(main: ServedApp, adapter: UpsunAdapter) -> None:
    assert await adapter.list_subscriptions(GLOBEX, _org(main, 1)) == ()
    usage = await adapter.get_usage(GLOBEX, _org(main, 1))
    assert usage is not None
    assert [(m.key, m.value, m.limit) for m in usage.metrics] == [
        ("projects", 0.0, None),
        ("user_licenses", 0.0, None),
        ("environments", None, 0.0),
        ("storage_bytes", None, 0.0),
    ]


async def test_unknown_subscription_status_and_null_items(
    main: ServedApp, adapter: UpsunAdapter
) -> None:
    path = f"/organizations/{_org_id(main, 3)}/subscriptions"
    _fault(main, body=json.dumps({"items": None, "_links": {}}), path_prefix=path, times=1)
    assert await adapter.list_subscriptions(GLOBEX, _org(main, 3)) == ()
    odd = {
        "items": [
            {"id": 7, "status": "paused", "storage": None},
            {"id": 8, "status": "Deleted", "environments": 3, "storage": 1024, "user_licenses": 2},
        ],
        "_links": {"self": {}},
    }
    _fault(main, body=json.dumps(odd), path_prefix=path, times=2)
    record, deleted = await adapter.list_subscriptions(GLOBEX, _org(main, 3))
    assert record.provider_id == "7" and record.status is SubscriptionStatus.UNKNOWN
    assert record.provider_status == "paused" and record.plan is None
    assert deleted.status is SubscriptionStatus.DELETED
    usage = await adapter.get_usage(GLOBEX, _org(main, 3))
    assert usage is not None
    # The unknown status counts as a project; absent numbers count as nothing; deleted is out.
    assert [(m.key, m.value, m.limit) for m in usage.metrics] == [
        ("projects", 1.0, None),
        ("user_licenses", 0.0, None),
        ("environments", None, 0.0),
        ("storage_bytes", None, 0.0),
    ]


async def test_non_numeric_allowance_is_a_bad_response(
    main: ServedApp, adapter: UpsunAdapter
) -> None:
    path = f"/organizations/{_org_id(main, 3)}/subscriptions"
    odd = {"items": [{"id": 7, "status": "active", "environments": "many"}], "_links": {}}
    _fault(main, body=json.dumps(odd), path_prefix=path, times=1)
    with pytest.raises(BadUpstreamResponse):
        await adapter.get_usage(GLOBEX, _org(main, 3))


async def test_usage_and_subscriptions_share_one_walk(
    paged: ServedApp, paged_adapter: UpsunAdapter
) -> None:
    org = _org(paged, 3)
    reset = call_memo.set(CallMemo())
    try:
        subscriptions, usage = await asyncio.gather(
            paged_adapter.list_subscriptions(GLOBEX, org), paged_adapter.get_usage(GLOBEX, org)
        )
    finally:
        call_memo.reset(reset)
    assert len(subscriptions) == 6 and usage is not None
    assert len(_log(paged, "GET", "/subscriptions")) == 3
    assert len(_log(paged, "POST", TOKEN_PATH)) == 1
    # Without a memo the same two calls walk twice: the sharing above is real.
    _control(paged, "DELETE", "requests")
    await asyncio.gather(
        paged_adapter.list_subscriptions(GLOBEX, org), paged_adapter.get_usage(GLOBEX, org)
    )
    assert len(_log(paged, "GET", "/subscriptions")) == 6


async def test_subscription_link_loop_is_bad_response(
    main: ServedApp, adapter: UpsunAdapter
) -> None:
    path = f"/organizations/{_org_id(main, 3)}/subscriptions"
    looping = {"items": [], "_links": {"next": {"href": main.url + path + "?page%5Bafter%5D=a"}}}
    _fault(main, body=json.dumps(looping), path_prefix=path)
    with pytest.raises(BadUpstreamResponse):
        await adapter.list_subscriptions(GLOBEX, _org(main, 3))
    assert len(_log(main, "GET", "/subscriptions")) == 2


# --- base_url prefix


async def test_base_url_with_path_prefix(prefixed: ServedApp) -> None:
    adapter = _adapter(prefixed)
    try:
        ids: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await adapter.list_organizations(GLOBEX, cursor=cursor)
            pages += 1
            ids.extend(o.provider_id for o in page.organizations)
            if page.next_cursor is None:
                break
            assert page.next_cursor.startswith(prefixed.url + "/organizations?")
            cursor = page.next_cursor
        assert pages == 2 and len(ids) == len(set(ids)) == 6
        org = await adapter.get_organization(GLOBEX, _org_id(prefixed, 3))
        assert len(await adapter.list_subscriptions(GLOBEX, org)) == 6
        assert org.raw["_links"]["self"]["href"].startswith(prefixed.url + "/organizations/")
    finally:
        await adapter.aclose()


# --- faults


async def test_fault_5xx_and_html(main: ServedApp, adapter: UpsunAdapter) -> None:
    _fault(main, status=503, path_prefix="/organizations", times=1)
    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.list_organizations(GLOBEX)
    assert info.value.status == 503
    html = "<html><body>Bad gateway SECRET-PAGE</body></html>"
    _fault(main, status=502, body=html, content_type="text/html", path_prefix="/organizations")
    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.list_organizations(GLOBEX)
    assert "SECRET-PAGE" not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        "<html>not json</html>",
        "[1, 2]",
        '{"items": "nope"}',
        '{"unexpected": true}',
        '{"items": [{"label": "no id"}]}',
        '{"items": [{"id": "x"}]}',
        '{"items": [{"id": "x", "label": "l", "created_at": "yesterday"}]}',
        '{"items": [], "_links": {"next": "not-an-object"}}',
    ],
)
async def test_wrongly_shaped_bodies(main: ServedApp, adapter: UpsunAdapter, body: str) -> None:
    _fault(main, body=body, content_type="application/json", path_prefix="/organizations")
    with pytest.raises(BadUpstreamResponse) as info:
        # An envelope is checked on arrival, an organization when it is read.
        tuple((await adapter.list_organizations(GLOBEX)).organizations)
    assert body not in str(info.value)


async def test_slow_upstream_times_out(main: ServedApp) -> None:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    adapter = _adapter(main, timeout_seconds=0.2, retries=0)
    try:
        _fault(main, delay_ms=1000, path_prefix="/organizations", times=1)
        with pytest.raises(UpstreamTimeout):
            await adapter.list_organizations(GLOBEX)
    finally:
        await adapter.aclose()


async def test_rate_limited(main: ServedApp, adapter: UpsunAdapter) -> None:
    _fault(main, status=429, path_prefix="/organizations", times=1)
    with pytest.raises(UpstreamRateLimited) as info:
        await adapter.list_organizations(GLOBEX)
    assert info.value.retry_after == 1.0 and info.value.status == 429


async def test_error_messages_never_carry_credentials(
    main: ServedApp, adapter: UpsunAdapter
) -> None:
    echo = {"status": "Internal", "message": f"token {GLOBEX['api_token']} broke", "code": 500}
    _fault(main, status=500, body=json.dumps(echo), path_prefix="/organizations", times=1)
    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.list_organizations(GLOBEX)
    assert GLOBEX["api_token"] not in str(info.value)
    assert "[redacted]" in str(info.value)


# --- sandbox faithfulness


def test_page_size_bounds_and_cursor_validation(main: ServedApp) -> None:
    path = f"/organizations/{_org_id(main, 3)}/subscriptions"
    for size in ("0", "101", "abc"):
        body = _assert_problem(_api(main, path, {"page[size]": size}), 400)
        assert body["title"] == "Bad Request" and "page[size]" in body["detail"]
        _assert_problem(_api(main, "/organizations", {"page[size]": size}), 400)
    bogus = base64.urlsafe_b64encode(b'{"v":1,"id":"nope"}').decode()
    for cursor in ("!!!", "bm90LWpzb24", bogus):
        _assert_problem(_api(main, path, {"page[after]": cursor}), 400)
        _assert_problem(_api(main, "/organizations", {"page[before]": cursor}), 400)
    assert len(_api(main, path, {"page[size]": "100"}).json()["items"]) == 6


def test_subscription_filter_and_sort(main: ServedApp) -> None:
    path = f"/organizations/{_org_id(main, 3)}/subscriptions"
    for status in ("active", "provisioning failure", "requested"):
        items = _api(main, path, {"filter[status]": status}).json()["items"]
        assert [i["status"] for i in items] == [status]
    _assert_problem(_api(main, path, {"filter[status]": "paused"}), 400)
    ascending = [i["status"] for i in _api(main, path, {"sort": "status"}).json()["items"]]
    descending = [i["status"] for i in _api(main, path, {"sort": "-status"}).json()["items"]]
    assert ascending == sorted(ascending) and descending == sorted(ascending, reverse=True)
    created = [i["created_at"] for i in _api(main, path, {"sort": "-created_at"}).json()["items"]]
    assert created == sorted(created, reverse=True)
    titles = [
        i["project_title"] for i in _api(main, path, {"sort": "project_title"}).json()["items"]
    ]
    assert titles == sorted(titles)
    _assert_problem(_api(main, path, {"sort": "storage"}), 400)


def test_links_carry_filters_sort_and_size(paged: ServedApp) -> None:
    path = f"/organizations/{_org_id(paged, 3)}/subscriptions"
    params = {"sort": "-updated_at", "filter[status]": "active", "page[size]": "1"}
    first = _api(paged, path, {"sort": "-updated_at", "page[size]": "1"}).json()
    links = first["_links"]
    assert "previous" not in links and links["self"]["href"].startswith(paged.url + path)
    nxt = links["next"]["href"]
    assert nxt.startswith(paged.url + path) and "sort=-updated_at" in nxt
    assert "page%5Bsize%5D=1" in nxt
    second = _api(paged, nxt).json()
    assert second["items"][0]["id"] != first["items"][0]["id"]
    back = _api(paged, second["_links"]["previous"]["href"]).json()
    assert back["items"] == first["items"]
    filtered = _api(paged, path, params).json()
    assert [i["status"] for i in filtered["items"]] == ["active"]
    assert "next" not in filtered["_links"]


def test_org_listing_status_filter_and_sort(main: ServedApp) -> None:
    default = _api(main, "/organizations").json()
    assert default["count"] == 6 and len(default["items"]) == 6
    assert {o["status"] for o in default["items"]} == {"active"}
    with_deleted = _api(main, "/organizations", {"filter[status][in]": "active,deleted"}).json()
    assert with_deleted["count"] == 8
    assert {o["status"] for o in with_deleted["items"]} == {"active", "deleted"}
    acme = _api(main, "/organizations", credentials=ACME).json()
    assert {o["status"] for o in acme["items"]} == {"active", "restricted", "suspended"}
    labels = [o["label"] for o in _api(main, "/organizations", {"sort": "-label"}).json()["items"]]
    assert labels == sorted(labels, reverse=True)
    _assert_problem(_api(main, "/organizations", {"sort": "plan"}), 400)
    _assert_problem(_api(main, "/organizations", {"filter[status]": "gone"}), 400)


def test_org_errors_and_name_lookup(main: ServedApp) -> None:
    other = _assert_problem(_api(main, f"/organizations/{_org_id(main, 0)}"), 404)
    assert other["title"] == "Not Found"
    _assert_problem(_api(main, "/organizations/01HZZZZZZZZZZZZZZZZZZZZZZZ"), 404)
    _assert_problem(_api(main, "/no/such/route"), 404)
    org = _api(main, f"/organizations/{_org_id(main, 3)}").json()
    assert _api(main, f"/organizations/name={org['name']}").json()["id"] == org["id"]
    assert (
        org["_links"]["subscriptions"]["href"]
        == main.url + f"/organizations/{org['id']}/subscriptions"
    )


def test_patch_is_kept_in_memory() -> None:
    with serve_app(create_app(options=OPTIONS)) as server:
        org_id = _org_id(server, 3)
        token = _access_token(server, GLOBEX)
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{server.url}/organizations/{org_id}"
        patched = _HTTP.patch(url, headers=headers, json={"label": "Renamed Inc", "country": "NL"})
        assert patched.status_code == 200 and patched.json()["label"] == "Renamed Inc"
        assert _HTTP.get(url, headers=headers).json()["label"] == "Renamed Inc"
        bad = _HTTP.patch(url, headers=headers, json={"country": "NLD"})
        assert _assert_problem(bad, 400)["detail"]["country"]


async def test_ten_thousand_orgs_are_fast() -> None:
    started = time.perf_counter()
    app = create_app(options=SandboxOptions(orgs=10_000))
    assert time.perf_counter() - started < 2.0
    credentials = demo_credentials("acme")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://upsun") as client:
        token = (
            await client.post(
                TOKEN_PATH,
                auth=("platform-api-user", ""),
                data={"grant_type": "api_token", "api_token": credentials["api_token"]},
            )
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        page = (await client.get("/organizations", headers=headers)).json()
        assert page["count"] > 3000 and len(page["items"]) == 100
        started = time.perf_counter()
        for _ in range(10):
            page = (await client.get(page["_links"]["next"]["href"], headers=headers)).json()
        assert (time.perf_counter() - started) / 10 < 0.1
