"""Tests for the CapyDB sandbox and adapter, over real loopback HTTP.

The sandbox is checked against the seed doc (envelopes, error bodies, statuses) with plain httpx;
the adapter is driven against the served sandbox for auth, normalisation, usage, update, fault
mapping and a base_url with a path prefix.
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

from providers import base
from providers.base import (
    BadUpstreamResponse,
    CredentialsError,
    InvalidCursor,
    OrganizationRecord,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    SubscriptionStatus,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    UsageUnit,
)
from providers.capydb import adapter as capy_adapter
from providers.capydb import sandbox
from providers.capydb.adapter import CapyDBAdapter
from providers.sandbox_kit import SandboxOptions
from tests.support import ServedApp, serve_app

__all__: list[str] = []

OPTIONS = SandboxOptions(orgs=16, accounts=("acme", "globex"))
PREFIX = "/api/capydb"


def _key(index: int) -> str:
    return sandbox.api_key_for_org(index, OPTIONS)


def _creds(index: int) -> ProviderCredentials:
    return CapyDBAdapter.parse_credentials({"api_key": _key(index)})


def _auth(index: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {_key(index)}"}


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    with serve_app(sandbox.create_app(options=OPTIONS)) as app:
        yield app


@pytest.fixture(autouse=True)
def _clean(served: ServedApp) -> Iterator[None]:
    served.clear_faults()
    served.clear_requests()
    yield
    served.clear_faults()


@pytest.fixture(scope="module")
def raw_orgs(served: ServedApp) -> list[dict[str, Any]]:
    """Every org as the sandbox serves it, by index (read over HTTP, before any test runs)."""
    out = []
    for i in range(OPTIONS.orgs):
        response = httpx.get(served.url + "/v1/me", headers=_auth(i))
        response.raise_for_status()
        out.append(response.json()["organization"])
    return out


@pytest.fixture
async def capy(served: ServedApp) -> AsyncIterator[CapyDBAdapter]:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    adapter = CapyDBAdapter(ProviderSettings(base_url=served.url, timeout_seconds=2.0, retries=0))
    yield adapter
    await adapter.aclose()


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------------------------
# Sandbox faithfulness (plain httpx)
# --------------------------------------------------------------------------------------------


def test_me_envelope_and_principal(served: ServedApp, raw_orgs: list[dict[str, Any]]) -> None:
    body = httpx.get(served.url + "/v1/me", headers=_auth(0)).json()
    assert set(body) == {"organization", "principal"}
    assert body["principal"]["type"] == "api_key"
    assert body["principal"]["org_id"] == body["organization"]["id"] == raw_orgs[0]["id"]


def test_org_fields_and_edge_cases(raw_orgs: list[dict[str, Any]]) -> None:
    always = {
        "id", "name", "slug", "created_at", "updated_at",
        "billing_plan", "billing_provider", "billing_status",
    }  # fmt: skip
    for org in raw_orgs:
        assert always <= set(org)
    assert len({org["id"] for org in raw_orgs}) == OPTIONS.orgs
    assert "billing_email" not in raw_orgs[2] and "billing_subscription_id" not in raw_orgs[2]
    assert raw_orgs[1]["suspended_at"] is None  # explicit JSON null, not absent
    assert raw_orgs[3]["suspended_at"] and raw_orgs[5]["suspended_reason"] == "abuse_report"
    assert "billing_period_end" not in raw_orgs[4] and "billing_subscription_id" in raw_orgs[4]
    statuses = {org["billing_status"] for org in raw_orgs}
    assert {"active", "trialing", "past_due", "canceled", "unpaid", "paused"} <= statuses


def test_sandbox_is_deterministic() -> None:
    first = sandbox.create_app(options=OPTIONS).state.capydb.orgs
    second = sandbox.create_app(options=OPTIONS).state.capydb.orgs
    other = sandbox.create_app(options=SandboxOptions(orgs=16, seed=7)).state.capydb.orgs
    assert first == second
    assert list(first) != list(other)


def test_error_bodies_and_statuses(served: ServedApp, raw_orgs: list[dict[str, Any]]) -> None:
    url = served.url + "/v1/organizations/"
    cases = [
        (httpx.get(served.url + "/v1/me"), 401),
        (httpx.get(served.url + "/v1/me", headers={"Authorization": "Bearer capy_live_nope"}), 401),
        (httpx.get(served.url + "/v1/me", headers={"Authorization": _key(0)}), 401),  # no Bearer
        (httpx.get(url + raw_orgs[1]["id"], headers=_auth(0)), 403),
        (httpx.get(url + raw_orgs[1]["id"] + "/usage", headers=_auth(0)), 403),
        (httpx.get(url + "org_missing", headers=_auth(0)), 404),
        (httpx.patch(url + raw_orgs[0]["id"], headers=_auth(0), json={"plan": "x"}), 400),
        (httpx.patch(url + raw_orgs[0]["id"], headers=_auth(0), json={"name": 5}), 400),
        (httpx.patch(url + raw_orgs[0]["id"], headers=_auth(0), json=["name"]), 400),
        (httpx.patch(url + raw_orgs[0]["id"], headers=_auth(0), content=b"{"), 400),
        (httpx.get(served.url + "/v2/nothing", headers=_auth(0)), 404),
        (httpx.delete(url + raw_orgs[0]["id"], headers=_auth(0)), 405),
    ]
    for response, status in cases:
        assert response.status_code == status, response.request.url
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


def test_other_org_status_404_variant() -> None:
    app = sandbox.create_app(options=OPTIONS, other_org_status=404)
    with serve_app(app) as served:
        org_1 = httpx.get(served.url + "/v1/me", headers=_auth(1)).json()["organization"]["id"]
        response = httpx.get(served.url + f"/v1/organizations/{org_1}", headers=_auth(0))
    assert response.status_code == 404 and "error" in response.json()


def test_502_is_an_html_page(served: ServedApp) -> None:
    served.fault(status=502, times=1)
    response = httpx.get(served.url + "/v1/me", headers=_auth(0))
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<html>" in response.text


def test_usage_shape_and_null_lists(served: ServedApp, raw_orgs: list[dict[str, Any]]) -> None:
    def usage(i: int) -> dict[str, Any]:
        url = served.url + f"/v1/organizations/{raw_orgs[i]['id']}/usage"
        body: dict[str, Any] = httpx.get(url, headers=_auth(i)).json()
        assert set(body) == {"usage"}
        return dict(body["usage"])

    full = usage(0)
    assert set(full) == {"totals", "projects", "storage_history"}
    assert full["totals"]["projects"] == len(full["projects"])
    assert full["totals"]["storage_bytes"] == sum(p["storage_bytes"] for p in full["projects"])
    assert full["storage_history"][-1]["storage_bytes"] == full["totals"]["storage_bytes"]
    sparse = usage(2)
    assert sparse["projects"] is None and sparse["storage_history"] is None
    assert "job_success_rate_7d" not in sparse["totals"]
    assert usage(5)["projects"] == []


def test_demo_credentials() -> None:
    acme = sandbox.demo_credentials("acme", OPTIONS)
    globex = sandbox.demo_credentials("globex", OPTIONS)
    assert set(acme) == {"api_key"}
    assert acme["api_key"] == _key(0) and globex["api_key"] == _key(1)
    assert all(v.startswith("capy_live_") and "sandbox" in v for v in (*acme.values(), _key(9)))
    assert sandbox.demo_credentials("acme")["api_key"] == sandbox.api_key_for_org(0)
    with pytest.raises(KeyError):
        sandbox.demo_credentials("nobody", OPTIONS)
    with pytest.raises(IndexError):
        sandbox.api_key_for_org(OPTIONS.orgs, OPTIONS)


def test_scale_ten_thousand_orgs_is_fast() -> None:
    options = SandboxOptions(orgs=10_000)
    started = time.perf_counter()
    app = sandbox.create_app(options=options)
    assert time.perf_counter() - started < 5
    with serve_app(app) as served:
        headers = {"Authorization": "Bearer " + sandbox.api_key_for_org(9_999, options)}
        started = time.perf_counter()
        me = httpx.get(served.url + "/v1/me", headers=headers).json()["organization"]
        usage = httpx.get(served.url + f"/v1/organizations/{me['id']}/usage", headers=headers)
        assert time.perf_counter() - started < 1
    assert me["name"].endswith(" 10000") and usage.status_code == 200


# --------------------------------------------------------------------------------------------
# Adapter: credentials, auth, listing
# --------------------------------------------------------------------------------------------


def test_parse_credentials() -> None:
    creds = CapyDBAdapter.parse_credentials({"api_key": "capy_live_x", "extra": "y"})
    assert dict(creds.values) == {"api_key": "capy_live_x"}
    for bad in ({}, {"api_key": ""}, {"api_key": 3}):
        with pytest.raises(CredentialsError) as info:
            CapyDBAdapter.parse_credentials(bad)
        assert "api_key" in str(info.value)
    assert CapyDBAdapter.provider is ProviderName.CAPYDB and CapyDBAdapter.supports_update
    assert capy_adapter.ADAPTER is CapyDBAdapter
    assert base.load_adapter_class(ProviderName.CAPYDB) is CapyDBAdapter
    assert isinstance(CapyDBAdapter(ProviderSettings(base_url="http://x")), base.ProviderAdapter)


async def test_wrong_key_is_unauthorized_without_leaking(
    capy: CapyDBAdapter, served: ServedApp
) -> None:
    secret = "capy_live_sandbox_acme_999"
    with pytest.raises(UpstreamUnauthorized) as info:
        await capy.list_organizations(CapyDBAdapter.parse_credentials({"api_key": secret}))
    assert info.value.status == 401 and secret not in str(info.value)
    assert "invalid API key" in info.value.message
    assert served.requests()[0]["path"] == "/v1/me"


async def test_list_every_org_once_one_per_key(
    capy: CapyDBAdapter, served: ServedApp, raw_orgs: list[dict[str, Any]]
) -> None:
    seen: list[str] = []
    for i in range(OPTIONS.orgs):
        page = await capy.list_organizations(_creds(i))
        assert page.next_cursor is None and len(page.organizations) == 1
        seen.append(page.organizations[0].provider_id)
    assert seen == [org["id"] for org in raw_orgs]
    assert len(set(seen)) == OPTIONS.orgs
    assert [r["path"] for r in served.requests()] == ["/v1/me"] * OPTIONS.orgs


async def test_cursor_is_rejected(capy: CapyDBAdapter, served: ServedApp) -> None:
    for cursor in ("https://evil.example/v1/me", served.url + "/v1/me", "", "abc"):
        with pytest.raises(InvalidCursor):
            await capy.list_organizations(_creds(0), cursor=cursor)
    assert served.requests() == []


# --------------------------------------------------------------------------------------------
# Adapter: normalisation
# --------------------------------------------------------------------------------------------


async def test_organization_normalisation(
    capy: CapyDBAdapter, raw_orgs: list[dict[str, Any]]
) -> None:
    for i, raw in enumerate(raw_orgs):
        org = await capy.get_organization(_creds(i), raw["id"])
        assert org.provider is ProviderName.CAPYDB
        assert org.provider_id == raw["id"]
        assert (org.name, org.slug, org.plan) == (raw["name"], raw["slug"], raw["billing_plan"])
        assert org.billing_email == raw.get("billing_email")
        assert org.created_at == _dt(raw["created_at"]) and org.created_at.tzinfo is not None
        assert org.updated_at == _dt(raw["updated_at"])
        assert org.currency is None and org.timezone is None
        assert dict(org.raw) == raw
        suspended = i % sandbox.PROFILE_COUNT in (3, 5)
        assert org.status is (
            OrganizationStatus.SUSPENDED if suspended else OrganizationStatus.ACTIVE
        )
    absent_email = await capy.get_organization(_creds(2), raw_orgs[2]["id"])
    assert absent_email.billing_email is None
    null_suspension = await capy.get_organization(_creds(1), raw_orgs[1]["id"])
    assert null_suspension.status is OrganizationStatus.ACTIVE


async def test_subscriptions_from_org_without_http(
    capy: CapyDBAdapter, served: ServedApp, raw_orgs: list[dict[str, Any]]
) -> None:
    expected = {
        0: SubscriptionStatus.ACTIVE,
        1: SubscriptionStatus.TRIALING,
        3: SubscriptionStatus.PAST_DUE,
        4: SubscriptionStatus.CANCELED,
        6: SubscriptionStatus.UNPAID,
        7: SubscriptionStatus.PAUSED,
    }
    orgs = [(await capy.list_organizations(_creds(i))).organizations[0] for i in range(8)]
    served.clear_requests()
    for i, org in enumerate(orgs):
        subs = await capy.list_subscriptions(_creds(i), org)
        raw = raw_orgs[i]
        if i not in expected:
            assert subs == ()
            continue
        (sub,) = subs
        assert sub.provider is ProviderName.CAPYDB
        assert sub.provider_id == raw["billing_subscription_id"]
        assert sub.organization_id == raw["id"]
        assert sub.plan == raw["billing_plan"]
        assert sub.status is expected[i] and sub.provider_status == raw["billing_status"]
        period_end = raw.get("billing_period_end")
        assert sub.current_period_end == (_dt(period_end) if period_end else None)
        assert dict(sub.raw) == raw
    assert served.requests() == []


async def test_unknown_billing_status_maps_to_unknown(capy: CapyDBAdapter) -> None:
    raw = {"billing_subscription_id": "sub_1", "billing_status": "on_hold", "billing_plan": "pro"}
    org = OrganizationRecord(provider=ProviderName.CAPYDB, provider_id="org_1", name="x", raw=raw)
    (sub,) = await capy.list_subscriptions(_creds(0), org)
    assert sub.status is SubscriptionStatus.UNKNOWN and sub.provider_status == "on_hold"
    assert sub.current_period_end is None


async def _usage_of(capy: CapyDBAdapter, i: int) -> base.UsageRecord:
    org = (await capy.list_organizations(_creds(i))).organizations[0]
    usage = await capy.get_usage(_creds(i), org)
    assert usage is not None
    return usage


async def test_usage_full(
    capy: CapyDBAdapter, served: ServedApp, raw_orgs: list[dict[str, Any]]
) -> None:
    usage = await _usage_of(capy, 0)
    paths = [r["path"] for r in served.requests()]
    assert paths == ["/v1/me", f"/v1/organizations/{raw_orgs[0]['id']}/usage"]
    totals = httpx.get(
        served.url + f"/v1/organizations/{raw_orgs[0]['id']}/usage", headers=_auth(0)
    ).json()["usage"]
    metrics = {m.key: m for m in usage.metrics}
    units = {
        "storage_bytes": UsageUnit.BYTES,
        "connections": UsageUnit.COUNT,
        "projects": UsageUnit.COUNT,
        "previews": UsageUnit.COUNT,
        "backups_storage_bytes": UsageUnit.BYTES,
        "job_success_rate_7d": UsageUnit.RATIO,
        "webhook_delivery_rate_7d": UsageUnit.RATIO,
    }
    limits = {
        "storage_bytes": "storage_limit_bytes",
        "projects": "projects_limit",
        "previews": "previews_limit",
    }
    assert list(metrics) == list(units)
    for key, unit in units.items():
        metric = metrics[key]
        assert metric.unit is unit and metric.label and metric.label != key
        assert metric.value == float(totals["totals"][key])
        expected_limit = totals["totals"][limits[key]] if key in limits else None
        assert metric.limit == expected_limit
    assert metrics["storage_bytes"].label == "Storage"
    history = totals["storage_history"]
    assert len(usage.history) == len(history) == 30
    for sample, raw in zip(usage.history, history, strict=True):
        assert sample.key == "storage_bytes"
        assert sample.at == _dt(raw["sampled_at"]) and sample.value == raw["storage_bytes"]


async def test_usage_missing_totals_and_null_lists(capy: CapyDBAdapter) -> None:
    sparse = await _usage_of(capy, 2)
    assert [m.key for m in sparse.metrics] == [
        "storage_bytes",
        "connections",
        "projects",
        "previews",
    ]
    previews = sparse.metrics[3]
    assert previews.value == 0 and previews.limit is None  # previews_limit absent
    assert sparse.history == ()
    minimal = await _usage_of(capy, 5)
    assert [m.key for m in minimal.metrics] == ["storage_bytes", "projects"]
    assert minimal.metrics[1].limit == 1.0 and minimal.history == ()


# --------------------------------------------------------------------------------------------
# Adapter: errors and faults
# --------------------------------------------------------------------------------------------


async def test_other_org_forbidden_unknown_not_found(
    capy: CapyDBAdapter, served: ServedApp, raw_orgs: list[dict[str, Any]]
) -> None:
    with pytest.raises(UpstreamForbidden) as info:
        await capy.get_organization(_creds(0), raw_orgs[1]["id"])
    assert info.value.status == 403
    with pytest.raises(UpstreamNotFound):
        await capy.get_organization(_creds(0), "org_does_not_exist")
    with pytest.raises(UpstreamNotFound):
        await capy.get_organization(_creds(0), "")
    # Ids come from clients: they must stay one path segment, never reach another route.
    with pytest.raises(UpstreamNotFound):
        await capy.get_organization(_creds(0), "../me")
    other = (await capy.list_organizations(_creds(1))).organizations[0]
    with pytest.raises(UpstreamForbidden):
        await capy.get_usage(_creds(0), other)
    assert [r["path"] for r in served.requests()][2:4] == ["/v1/organizations/../me", "/v1/me"]


async def test_other_org_404_variant_maps_to_not_found(raw_orgs: list[dict[str, Any]]) -> None:
    with serve_app(sandbox.create_app(options=OPTIONS, other_org_status=404)) as served:
        adapter = CapyDBAdapter(ProviderSettings(base_url=served.url))
        try:
            with pytest.raises(UpstreamNotFound):
                await adapter.get_organization(_creds(0), raw_orgs[1]["id"])
        finally:
            await adapter.aclose()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"status": 503}, UpstreamUnavailable),
        ({"status": 500}, UpstreamUnavailable),
        ({"status": 502}, UpstreamUnavailable),
        ({"status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
         UpstreamUnavailable),
        ({"body": "<html>maintenance</html>", "content_type": "text/html"}, BadUpstreamResponse),
        ({"body": "not json at all", "content_type": "text/plain"}, BadUpstreamResponse),
        ({"body": "[]"}, BadUpstreamResponse),
        ({"body": '{"organization": []}'}, BadUpstreamResponse),
        ({"body": '{"organization": {"name": "no id"}}'}, BadUpstreamResponse),
        ({"body": '{"organization": {"id": "org_1"}}'}, BadUpstreamResponse),
        ({"body": '{"org": {"id": "org_1", "name": "x"}}'}, BadUpstreamResponse),
        ({"body": '{"organization": {"id": "o", "name": "x", "created_at": 5}}'},
         BadUpstreamResponse),
        ({"status": 418}, BadUpstreamResponse),
        ({"status": 409}, UpstreamRejected),
    ],
)  # fmt: skip
async def test_faults_map_to_taxonomy(
    capy: CapyDBAdapter, served: ServedApp, fault: dict[str, Any], error: type[Exception]
) -> None:
    served.fault(path_prefix="/v1/me", times=1, **fault)
    with pytest.raises(error) as info:
        await capy.list_organizations(_creds(0))
    assert _key(0) not in str(info.value)
    assert "<html>" not in str(info.value) and "not json at all" not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        "[]",
        '{"usage": null}',
        '{"usage": {"totals": [1, 2]}}',
        '{"usage": {"totals": {"storage_bytes": true}}}',
        '{"usage": {"totals": {"connections": "many"}}}',
        '{"usage": {"totals": {}, "storage_history": {"a": 1}}}',
        '{"usage": {"totals": {}, "storage_history": [5]}}',
        '{"usage": {"totals": {}, "storage_history": [{"storage_bytes": 1}]}}',
        '{"usage": {"totals": {}, "storage_history": [{"sampled_at": "yesterday", '
        '"storage_bytes": 1}]}}',
    ],
)
async def test_wrongly_shaped_usage(capy: CapyDBAdapter, served: ServedApp, body: str) -> None:
    org = (await capy.list_organizations(_creds(0))).organizations[0]
    served.fault(path_prefix="/v1/organizations/", times=1, body=body)
    with pytest.raises(BadUpstreamResponse):
        await capy.get_usage(_creds(0), org)


async def test_usage_tolerates_null_totals_and_extra_fields(
    capy: CapyDBAdapter, served: ServedApp
) -> None:
    org = (await capy.list_organizations(_creds(0))).organizations[0]
    served.fault(
        path_prefix="/v1/organizations/",
        times=1,
        body='{"usage": {"totals": null, "projects": null, "storage_history": null, "x": 1}}',
    )
    usage = await capy.get_usage(_creds(0), org)
    assert usage is not None and usage.metrics == () and usage.history == ()


async def test_rate_limited_carries_retry_after(capy: CapyDBAdapter, served: ServedApp) -> None:
    served.fault(status=429, times=1)
    with pytest.raises(UpstreamRateLimited) as info:
        await capy.list_organizations(_creds(0))
    assert info.value.retry_after == 1.0 and info.value.status == 429


async def test_slow_upstream_times_out(served: ServedApp) -> None:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    settings = ProviderSettings(base_url=served.url, timeout_seconds=0.2, retries=0)
    adapter = CapyDBAdapter(settings)
    served.fault(delay_ms=600, times=1)
    try:
        with pytest.raises(UpstreamTimeout):
            await adapter.list_organizations(_creds(0))
    finally:
        await adapter.aclose()


async def test_error_detail_is_redacted(capy: CapyDBAdapter, served: ServedApp) -> None:
    served.fault(status=401, times=1, body=f'{{"error": "key {_key(0)} was revoked"}}')
    with pytest.raises(UpstreamUnauthorized) as info:
        await capy.list_organizations(_creds(0))
    assert _key(0) not in info.value.message and "[redacted]" in info.value.message


async def test_unreachable_upstream() -> None:
    adapter = CapyDBAdapter(ProviderSettings(base_url="http://127.0.0.1:9", timeout_seconds=1))
    try:
        with pytest.raises(UpstreamUnavailable):
            await adapter.list_organizations(_creds(0))
    finally:
        await adapter.aclose()


# --------------------------------------------------------------------------------------------
# Adapter: update, and a base_url with a path prefix
# --------------------------------------------------------------------------------------------


@pytest.fixture
def prefixed() -> Iterator[tuple[ServedApp, Starlette]]:
    """A fresh sandbox (updates mutate it) mounted under CapyDB's public path prefix."""
    inner = sandbox.create_app(options=OPTIONS)
    with serve_app(Starlette(routes=[Mount(PREFIX, app=inner)])) as outer:
        yield outer, inner


async def test_prefixed_base_url_update_and_read_after_write(
    prefixed: tuple[ServedApp, Starlette],
) -> None:
    served, inner = prefixed
    adapter = CapyDBAdapter(ProviderSettings(base_url=served.url + PREFIX + "/"))
    try:
        org = (await adapter.list_organizations(_creds(0))).organizations[0]
        assert (await adapter.get_usage(_creds(0), org)) is not None

        # Only billing_email is sent: the sandbox answers 400 to a null/non-string name.
        updated = await adapter.update_organization(
            _creds(0), org.provider_id, OrganizationUpdate(billing_email="ap@example.org")
        )
        assert updated.billing_email == "ap@example.org" and updated.name == org.name
        assert updated.updated_at is not None and org.updated_at is not None
        assert updated.updated_at > org.updated_at

        renamed = await adapter.update_organization(
            _creds(0), org.provider_id, OrganizationUpdate(name="Capybara Holdings")
        )
        assert renamed.name == "Capybara Holdings" and renamed.slug == org.slug
        assert renamed.billing_email == "ap@example.org"

        again = await adapter.get_organization(_creds(0), org.provider_id)
        assert (again.name, again.billing_email) == ("Capybara Holdings", "ap@example.org")
        assert dict(again.raw) == dict(renamed.raw)

        unchanged = await adapter.update_organization(
            _creds(0), org.provider_id, OrganizationUpdate()
        )
        assert unchanged.name == "Capybara Holdings"

        other = (await adapter.list_organizations(_creds(1))).organizations[0]
        with pytest.raises(UpstreamRejected) as conflict:
            await adapter.update_organization(
                _creds(0), org.provider_id, OrganizationUpdate(name=other.name.upper())
            )
        assert conflict.value.status == 409
        with pytest.raises(UpstreamRejected):
            await adapter.update_organization(
                _creds(0), org.provider_id, OrganizationUpdate(billing_email="not-an-email")
            )
        with pytest.raises(UpstreamForbidden):
            await adapter.update_organization(
                _creds(0), other.provider_id, OrganizationUpdate(name="Hijack")
            )
    finally:
        await adapter.aclose()

    # The control surface sits under the mount too, so read the request log in-process.
    methods = [
        (r["method"], r.get("root_path", "") + r["path"]) for r in inner.state.sandbox.requests
    ]
    patch_path = f"{PREFIX}/v1/organizations/{org.provider_id}"
    assert methods[:3] == [
        ("GET", f"{PREFIX}/v1/me"),
        ("GET", patch_path + "/usage"),
        ("PATCH", patch_path),
    ]
    assert methods[5] == ("GET", patch_path)  # the empty update is a read, not a PATCH
    # The sandbox kept the write.
    fresh = httpx.get(served.url + PREFIX + "/v1/me", headers=_auth(0)).json()["organization"]
    assert fresh["name"] == "Capybara Holdings"
    assert _dt(fresh["updated_at"]) <= datetime.now(UTC)
