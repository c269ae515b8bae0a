"""LOKE: the sandbox's faithfulness over real HTTP, and the adapter driven against it.

Covers the OAuth2 client-credentials exchange (cached, refreshed before expiry, refreshed and
retried once on 401), the ``access_token`` credentials path, ``X-Next-Page`` pagination followed
as given (also behind a path prefix), every LOKE cell of the normalisation table, Goa and
RFC 6749 error bodies, and the error taxonomy under injected faults.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import respx
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
    ProviderAdapter,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    call_memo,
    load_adapter_class,
    load_sandbox_module,
)
from providers.loke.adapter import LokeAdapter
from providers.loke.sandbox import (
    CURRENCIES,
    REVOKE_PATH,
    TOKEN_PATH,
    create_app,
    demo_credentials,
    generate_organizations,
)
from providers.sandbox_kit import SandboxOptions
from tests.support import ServedApp, serve_app

__all__: list[str] = []

OPTIONS = SandboxOptions(orgs=8)
PAGED = SandboxOptions(orgs=40, max_page_size=4, accounts=("acme", "globex", "initech"))
GOA_KEYS = {"name", "id", "message", "temporary", "timeout", "fault"}
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")

AdapterFactory = Callable[..., LokeAdapter]


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[ServedApp]:
    with serve_app(create_app(options=OPTIONS)) as served:
        yield served


@pytest.fixture(scope="module")
def paged() -> Iterator[ServedApp]:
    with serve_app(create_app(options=PAGED)) as served:
        yield served


@pytest.fixture(scope="module")
def short_lived() -> Iterator[ServedApp]:
    with serve_app(create_app(options=OPTIONS, token_ttl_seconds=1)) as served:
        yield served


@pytest.fixture(scope="module")
def control() -> Iterator[httpx.Client]:
    """One pooled client for sandbox calls made by the tests themselves (keeps the file fast)."""
    with httpx.Client() as client:
        yield client


@pytest.fixture(autouse=True)
def _clean(sandbox: ServedApp, control: httpx.Client) -> Iterator[None]:
    control.delete(sandbox.url + "/__sandbox/faults").raise_for_status()
    control.delete(sandbox.url + "/__sandbox/requests").raise_for_status()
    yield
    control.delete(sandbox.url + "/__sandbox/faults").raise_for_status()


@pytest.fixture
async def make_adapter() -> AsyncIterator[AdapterFactory]:
    made: list[LokeAdapter] = []

    def factory(base_url: str, **settings: Any) -> LokeAdapter:
        adapter = LokeAdapter(ProviderSettings(base_url=base_url, **settings))
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.aclose()


def creds(account: str = "acme", options: SandboxOptions = OPTIONS) -> ProviderCredentials:
    return LokeAdapter.parse_credentials(demo_credentials(account, options))


def raw_token(served: ServedApp, account: str = "acme", options: SandboxOptions = OPTIONS) -> str:
    response = httpx.post(
        served.url + TOKEN_PATH,
        data={"grant_type": "client_credentials", **demo_credentials(account, options)},
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def revoke(served: ServedApp) -> None:
    httpx.post(served.url + REVOKE_PATH).raise_for_status()


def count(log: list[dict[str, str]], method: str, path_suffix: str) -> int:
    return sum(1 for r in log if r["method"] == method and r["path"].endswith(path_suffix))


def token_posts(log: list[dict[str, str]]) -> int:
    return count(log, "POST", TOKEN_PATH)


def org_gets(log: list[dict[str, str]]) -> int:
    return sum(1 for r in log if r["method"] == "GET" and "/organizations" in r["path"])


def expected(account: str, options: SandboxOptions) -> list[dict[str, str]]:
    return [o.payload for o in generate_organizations(options) if o.account == account]


async def walk(adapter: LokeAdapter, credentials: ProviderCredentials) -> list[str | None]:
    """Every page's next_cursor, in order; ids are checked by the callers."""
    cursors: list[str | None] = []
    cursor: str | None = None
    while True:
        page = await adapter.list_organizations(credentials, cursor=cursor)
        cursors.append(page.next_cursor)
        if page.next_cursor is None:
            return cursors
        cursor = page.next_cursor


async def all_orgs(adapter: LokeAdapter, credentials: ProviderCredentials) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page = await adapter.list_organizations(credentials, cursor=cursor)
        ids.extend(o.provider_id for o in page.organizations)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
    raise AssertionError("pagination did not end")


# --------------------------------------------------------------------------------------------
# Sandbox faithfulness, straight over httpx
# --------------------------------------------------------------------------------------------


def test_token_endpoint_accepts_form_body_and_basic_auth(sandbox: ServedApp) -> None:
    pair = demo_credentials("acme", OPTIONS)
    form = httpx.post(sandbox.url + TOKEN_PATH, data={"grant_type": "client_credentials", **pair})
    basic = httpx.post(
        sandbox.url + TOKEN_PATH,
        data={"grant_type": "client_credentials"},
        auth=(pair["client_id"], pair["client_secret"]),
    )
    for response in (form, basic):
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in"}
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        assert response.headers["cache-control"] == "no-store"
    assert form.json()["access_token"] != basic.json()["access_token"]


@pytest.mark.parametrize(
    ("data", "auth", "status", "error"),
    [
        ({"client_secret": "loke_sandbox_wrong"}, None, 401, "invalid_client"),
        ({"client_id": "loke-sandbox-nobody"}, None, 401, "invalid_client"),
        ({"client_id": "", "client_secret": ""}, None, 401, "invalid_client"),
        ({}, ("loke-sandbox-acme", "loke_sandbox_wrong"), 401, "invalid_client"),
        ({"grant_type": "password"}, None, 400, "unsupported_grant_type"),
        ({"grant_type": ""}, None, 400, "invalid_request"),
        ({}, ("loke-sandbox-acme", "x"), 400, "invalid_request"),  # secret in body AND Basic
    ],
)
def test_token_endpoint_errors_use_rfc6749_shape(
    sandbox: ServedApp,
    data: dict[str, str],
    auth: tuple[str, str] | None,
    status: int,
    error: str,
) -> None:
    form = {"grant_type": "client_credentials", **demo_credentials("acme", OPTIONS)}
    if auth is not None:
        if status == 401:
            form.pop("client_secret")
        form.pop("client_id")
    form.update(data)
    response = httpx.post(sandbox.url + TOKEN_PATH, data=form, auth=auth)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")


def test_token_endpoint_wants_a_form_body(sandbox: ServedApp) -> None:
    response = httpx.post(
        sandbox.url + TOKEN_PATH,
        json={"grant_type": "client_credentials", **demo_credentials("acme", OPTIONS)},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Basic abc", "Bearer loke_sandbox_at_unknown"]
)
def test_api_auth_errors_are_goa_401(sandbox: ServedApp, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in ("/organizations", f"/organizations/{generate_organizations(OPTIONS)[0].id}"):
        response = httpx.get(sandbox.url + path, headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert set(body) == GOA_KEYS
        assert body["name"] == "unauthorized"
        assert body["fault"] is False and body["temporary"] is False
        assert response.headers["goa-error"] == "unauthorized"


def test_api_404s_are_goa_not_found(sandbox: ServedApp) -> None:
    headers = {"Authorization": "Bearer " + raw_token(sandbox, "acme")}
    orgs = generate_organizations(OPTIONS)
    globex_org = next(o for o in orgs if o.account == "globex")
    acme_org = next(o for o in orgs if o.account == "acme")
    ok = httpx.get(sandbox.url + f"/organizations/{acme_org.id}", headers=headers)
    assert ok.status_code == 200 and ok.json() == acme_org.payload
    for path in (
        "/organizations/01H0S97D8RX4RBFHHTB1HE7SFR",
        f"/organizations/{globex_org.id}",  # exists, but not for this token's account
        "/no-such-route",
    ):
        response = httpx.get(sandbox.url + path, headers=headers)
        assert response.status_code == 404
        body = response.json()
        assert set(body) == GOA_KEYS
        assert (body["name"], body["message"]) == ("not_found", "Not Found")
        assert isinstance(body["id"], str) and body["id"]


def test_list_is_a_bare_array_paged_by_x_next_page(paged: ServedApp) -> None:
    headers = {"Authorization": "Bearer " + raw_token(paged, "globex", PAGED)}
    url: str | None = paged.url + "/organizations"
    seen: list[dict[str, str]] = []
    pages = 0
    while url is not None:
        response = httpx.get(url, headers=headers)
        assert response.status_code == 200
        body = response.json()
        assert isinstance(body, list) and 0 < len(body) <= PAGED.max_page_size
        seen.extend(body)
        pages += 1
        url = response.headers.get("x-next-page")
        if url is not None:
            # A full absolute URL on the same server, carrying the opaque cursor.
            assert url.startswith(paged.url + "/organizations?after=")
    assert seen == expected("globex", PAGED)
    assert pages == -(-len(seen) // PAGED.max_page_size) > 1


def test_list_cursor_errors_and_query_filter(paged: ServedApp) -> None:
    headers = {"Authorization": "Bearer " + raw_token(paged, "acme", PAGED)}
    bad = httpx.get(paged.url + "/organizations", params={"after": "nonsense"}, headers=headers)
    assert bad.status_code == 400 and bad.json()["name"] == "bad_request"
    globex_headers = {"Authorization": "Bearer " + raw_token(paged, "globex", PAGED)}
    first = httpx.get(paged.url + "/organizations", headers=globex_headers)
    foreign = httpx.get(first.headers["x-next-page"], headers=headers)
    assert foreign.status_code == 400

    names = [o["name"] for o in expected("acme", PAGED)]
    needle = "1"  # company names end in the index + 1; several contain a "1"
    matching = [n for n in names if needle in n.casefold()]
    assert len(matching) > PAGED.max_page_size
    url: str | None = paged.url + "/organizations?query=" + needle
    got: list[str] = []
    while url is not None:
        response = httpx.get(url, headers=headers)
        got.extend(o["name"] for o in response.json())
        url = response.headers.get("x-next-page")
        if url is not None:
            assert "query=1" in url  # the next URL keeps the whole query context
    assert got == matching


def test_data_set_is_deterministic_and_covers_the_edge_cases() -> None:
    orgs = generate_organizations(OPTIONS)
    assert len(orgs) == 8
    assert [o.account for o in orgs] == ["acme", "globex"] * 4
    assert orgs == generate_organizations(OPTIONS)
    assert orgs[0].id != generate_organizations(SandboxOptions(orgs=8, seed=7))[0].id
    assert len({o.id for o in orgs}) == 8
    for org in orgs:
        assert ULID.match(org.id)
        assert set(org.payload) <= {"id", "name", "createdAt", "currency", "timezone"}
        datetime.fromisoformat(org.payload["createdAt"].replace("Z", "+00:00"))
    assert {o.payload["currency"] for o in orgs if "currency" in o.payload} == set(CURRENCIES)
    for account in OPTIONS.accounts:
        mine = [o.payload for o in orgs if o.account == account]
        assert any("currency" not in p for p in mine)
        assert any("timezone" not in p for p in mine)
        assert any("currency" in p and "timezone" in p for p in mine)
    assert any(not o.payload["name"].isascii() for o in orgs)

    for account in OPTIONS.accounts:
        pair = demo_credentials(account, OPTIONS)
        assert set(pair) == {"client_id", "client_secret"}
        assert all("sandbox" in v for v in pair.values())
    assert demo_credentials("acme") == demo_credentials("acme", OPTIONS)
    with pytest.raises(KeyError):
        demo_credentials("umbrella", OPTIONS)


def test_scale_ten_thousand_orgs_is_fast() -> None:
    started = time.perf_counter()
    app = create_app(options=SandboxOptions(orgs=10_000, rate_limits=False))
    assert time.perf_counter() - started < 2.0
    assert len(app.state.loke_organizations) == 10_000


def test_revoked_tokens_are_rejected(sandbox: ServedApp) -> None:
    headers = {"Authorization": "Bearer " + raw_token(sandbox)}
    assert httpx.get(sandbox.url + "/organizations", headers=headers).status_code == 200
    revoke(sandbox)
    response = httpx.get(sandbox.url + "/organizations", headers=headers)
    assert response.status_code == 401 and response.json()["name"] == "unauthorized"


# --------------------------------------------------------------------------------------------
# Adapter: contract, credentials, tokens
# --------------------------------------------------------------------------------------------


def test_adapter_satisfies_the_protocol_and_registry() -> None:
    adapter_cls = load_adapter_class(ProviderName.LOKE)
    assert adapter_cls is LokeAdapter
    assert adapter_cls.provider is ProviderName.LOKE and adapter_cls.supports_update is False
    adapter = LokeAdapter(ProviderSettings(base_url="http://127.0.0.1:9"))
    assert isinstance(adapter, ProviderAdapter)
    module = load_sandbox_module(ProviderName.LOKE)
    assert module.TOKEN_PATH == "/token"
    asyncio.run(adapter.aclose())


def test_parse_credentials() -> None:
    pair = LokeAdapter.parse_credentials({"client_id": "a", "client_secret": "b", "x": "y"})
    assert dict(pair.values) == {"client_id": "a", "client_secret": "b"}
    token = LokeAdapter.parse_credentials({"access_token": "tok"})
    assert dict(token.values) == {"access_token": "tok"}
    for bad in ({}, {"client_id": "loke-sandbox-only"}, {"client_secret": 3}, {"access_token": ""}):
        with pytest.raises(CredentialsError) as info:
            LokeAdapter.parse_credentials(bad)
        assert "loke-sandbox-only" not in str(info.value)


async def test_token_fetched_once_for_many_calls(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    credentials = creds("acme")
    first = await adapter.list_organizations(credentials)
    ids = [o.provider_id for o in first.organizations]
    for org_id in ids:
        await adapter.get_organization(credentials, org_id)
    await asyncio.gather(
        *(adapter.get_organization(credentials, org_id) for org_id in ids * 3),
        *(adapter.list_organizations(credentials) for _ in range(5)),
    )
    log = sandbox.requests()
    assert token_posts(log) == 1
    assert org_gets(log) == 1 + len(ids) + 3 * len(ids) + 5


async def test_concurrent_first_calls_share_one_token_exchange(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    await asyncio.gather(*(adapter.list_organizations(creds("globex")) for _ in range(10)))
    assert token_posts(sandbox.requests()) == 1


async def test_token_refreshed_before_expiry(
    short_lived: ServedApp, make_adapter: AdapterFactory
) -> None:
    short_lived.clear_requests()
    adapter = make_adapter(short_lived.url)
    credentials = creds("acme")
    old = raw_token(short_lived)
    await adapter.list_organizations(credentials)
    await adapter.list_organizations(credentials)
    log = short_lived.requests()
    assert (token_posts(log), org_gets(log)) == (2, 2)  # one raw, one adapter
    await asyncio.sleep(1.1)
    stale = httpx.get(
        short_lived.url + "/organizations", headers={"Authorization": "Bearer " + old}
    )
    assert stale.status_code == 401  # the sandbox really expired tokens by now
    short_lived.clear_requests()
    page = await adapter.list_organizations(credentials)
    assert page.organizations
    log = short_lived.requests()
    # Refreshed up front: no wasted 401 round trip before the new token.
    assert [(r["method"], r["path"]) for r in log] == [
        ("POST", TOKEN_PATH),
        ("GET", "/organizations"),
    ]


async def test_refresh_and_retry_once_after_revoke(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    credentials = creds("acme")
    before = await adapter.list_organizations(credentials)
    revoke(sandbox)
    after = await adapter.list_organizations(credentials)
    assert after == before
    log = sandbox.requests()
    # token, GET, (revoke) GET→401, token, GET
    assert [r["method"] for r in log] == ["POST", "GET", "GET", "POST", "GET"]


async def test_retry_after_401_happens_only_once(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    credentials = creds("acme")
    sandbox.fault(status=401, times=2, path_prefix="/organizations")
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(credentials)
    assert info.value.status == 401
    log = sandbox.requests()
    assert (token_posts(log), org_gets(log)) == (2, 2)
    assert demo_credentials("acme", OPTIONS)["client_secret"] not in info.value.message


async def test_retry_after_401_is_not_served_from_the_call_memo(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    credentials = creds("acme")
    await adapter.list_organizations(credentials)
    revoke(sandbox)
    sandbox.clear_requests()
    memo = call_memo.set(CallMemo())
    try:
        page = await adapter.list_organizations(credentials)
        again = await adapter.list_organizations(credentials)  # memoised: no new call
    finally:
        call_memo.reset(memo)
    assert page.organizations and again == page
    log = sandbox.requests()
    assert (token_posts(log), org_gets(log)) == (1, 2)


async def test_access_token_credentials_are_used_as_is(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    token = raw_token(sandbox, "globex")
    sandbox.clear_requests()
    adapter = make_adapter(sandbox.url)
    credentials = LokeAdapter.parse_credentials({"access_token": token})
    page = await adapter.list_organizations(credentials)
    assert [o.raw for o in page.organizations] == expected("globex", OPTIONS)
    assert token_posts(sandbox.requests()) == 0
    revoke(sandbox)
    sandbox.clear_requests()
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(credentials)
    assert token not in info.value.message
    log = sandbox.requests()
    assert (token_posts(log), org_gets(log)) == (0, 1)


@pytest.mark.parametrize(
    "values",
    [
        {"client_id": "loke-sandbox-acme", "client_secret": "loke_sandbox_not_the_secret"},
        {"client_id": "loke-sandbox-nobody", "client_secret": "loke_sandbox_whatever"},
    ],
)
async def test_bad_client_credentials_are_upstream_unauthorized(
    sandbox: ServedApp, make_adapter: AdapterFactory, values: dict[str, str]
) -> None:
    adapter = make_adapter(sandbox.url)
    with pytest.raises(UpstreamUnauthorized) as info:
        await adapter.list_organizations(LokeAdapter.parse_credentials(values))
    message = info.value.message
    assert "token exchange" in message and info.value.status == 401
    assert values["client_secret"] not in message and values["client_id"] not in message
    log = sandbox.requests()
    assert (token_posts(log), org_gets(log)) == (1, 0)


@pytest.mark.parametrize(
    ("fault", "error", "fragment"),
    [
        (
            {"status": 400, "body": '{"error":"invalid_grant"}'},
            UpstreamUnauthorized,
            "invalid_grant",
        ),
        ({"status": 503}, UpstreamUnavailable, "token exchange"),
        ({"status": 404}, BadUpstreamResponse, "token_url"),
        ({"body": "<html>login</html>", "content_type": "text/html"}, BadUpstreamResponse, "JSON"),
        ({"body": '{"token_type":"Bearer"}'}, BadUpstreamResponse, "access_token"),
        ({"body": "[]"}, BadUpstreamResponse, "JSON object"),
        ({"body": '{"access_token":"t","token_type":"mac"}'}, BadUpstreamResponse, "bearer"),
        ({"body": '{"access_token":"t","expires_in":"soon"}'}, BadUpstreamResponse, "expires_in"),
        ({"body": '{"access_token":"a\\nb"}'}, BadUpstreamResponse, "malformed"),
    ],
)
async def test_token_endpoint_faults(
    sandbox: ServedApp,
    make_adapter: AdapterFactory,
    fault: dict[str, Any],
    error: type[UpstreamError],
    fragment: str,
) -> None:
    sandbox.fault(path_prefix=TOKEN_PATH, **fault)
    adapter = make_adapter(sandbox.url)
    with pytest.raises(error) as info:
        await adapter.list_organizations(creds("acme"))
    assert type(info.value) is error
    assert fragment in info.value.message
    assert "<html>" not in info.value.message
    assert org_gets(sandbox.requests()) == 0


async def test_token_response_without_expires_in_is_accepted(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    token = raw_token(sandbox)
    sandbox.fault(path_prefix=TOKEN_PATH, times=1, body=f'{{"access_token":"{token}"}}')
    adapter = make_adapter(sandbox.url)
    page = await adapter.list_organizations(creds("acme"))
    assert [o.raw for o in page.organizations] == expected("acme", OPTIONS)


# --------------------------------------------------------------------------------------------
# Adapter: reads, pagination and normalisation
# --------------------------------------------------------------------------------------------


async def test_every_page_walked_with_every_org_once(
    paged: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(paged.url)
    for account in PAGED.accounts:
        ids = await all_orgs(adapter, creds(account, PAGED))
        want = [p["id"] for p in expected(account, PAGED)]
        assert len(want) > 2 * PAGED.max_page_size
        assert ids == want and len(set(ids)) == len(ids)


async def test_x_next_page_is_followed_as_given(
    paged: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(paged.url)
    credentials = creds("initech", PAGED)
    headers = {"Authorization": "Bearer " + raw_token(paged, "initech", PAGED)}
    first = httpx.get(paged.url + "/organizations", headers=headers)
    page = await adapter.list_organizations(credentials)
    assert page.next_cursor == first.headers["x-next-page"]
    paged.clear_requests()
    cursors = await walk(adapter, credentials)
    log = [r for r in paged.requests() if r["method"] == "GET"]
    # The first request has no query; each later one is exactly the previous X-Next-Page.
    assert log[0]["query"] == ""
    for request, cursor in zip(log[1:], cursors[:-1], strict=True):
        assert cursor is not None
        split = urlsplit(cursor)
        assert (request["path"], request["query"]) == (split.path, split.query)
    assert cursors[-1] is None and len(cursors) == len(log)


async def test_normalisation_of_every_loke_field(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    records: list[OrganizationRecord] = []
    for account in OPTIONS.accounts:
        page = await adapter.list_organizations(creds(account))
        assert page.next_cursor is None
        records.extend(page.organizations)
    payloads = {o.id: o.payload for o in generate_organizations(OPTIONS)}
    assert sorted(r.provider_id for r in records) == sorted(payloads)
    for record in records:
        payload = payloads[record.provider_id]
        assert record.provider is ProviderName.LOKE
        assert record.name == payload["name"]
        assert (record.slug, record.billing_email, record.plan) == (None, None, None)
        assert record.currency == payload.get("currency")
        assert record.timezone == payload.get("timezone")
        assert record.status is OrganizationStatus.ACTIVE
        assert record.created_at == datetime.fromisoformat(
            payload["createdAt"].replace("Z", "+00:00")
        )
        assert record.created_at is not None and record.created_at.tzinfo is not None
        assert record.updated_at is None
        assert record.raw == payload
    # The edge cases really were exercised.
    assert any(r.currency is None for r in records) and any(r.timezone is None for r in records)
    assert {r.currency for r in records} == {*CURRENCIES, None}


async def test_get_organization(sandbox: ServedApp, make_adapter: AdapterFactory) -> None:
    adapter = make_adapter(sandbox.url)
    credentials = creds("acme")
    orgs = generate_organizations(OPTIONS)
    mine = next(o for o in orgs if o.account == "acme" and "timezone" not in o.payload)
    theirs = next(o for o in orgs if o.account == "globex")
    record = await adapter.get_organization(credentials, mine.id)
    assert record.provider_id == mine.id and record.raw == mine.payload
    assert record.timezone is None
    sandbox.clear_requests()
    for missing in (theirs.id, "01H0S97D8RX4RBFHHTB1HE7SFR", "a/b", "?after=x", "", ".", ".."):
        with pytest.raises(UpstreamNotFound):
            await adapter.get_organization(credentials, missing)
    # Reserved characters stayed inside the id segment (never reaching the list route).
    assert not any(r["path"] == "/organizations" for r in sandbox.requests())


async def test_subscriptions_usage_and_update_make_no_calls(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    credentials = creds("acme")
    record = await adapter.get_organization(credentials, expected("acme", OPTIONS)[0]["id"])
    sandbox.clear_requests()
    assert await adapter.list_subscriptions(credentials, record) == ()
    assert await adapter.get_usage(credentials, record) is None
    with pytest.raises(OperationUnsupported):
        await adapter.update_organization(
            credentials, record.provider_id, OrganizationUpdate(name="New name")
        )
    assert sandbox.requests() == []


async def test_off_origin_or_empty_cursor_is_invalid(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    for cursor in (
        "https://evil.example/organizations?after=x",
        sandbox.url.replace("127.0.0.1", "localhost") + "/organizations?after=x",
        "//evil.example/organizations",
        "",
    ):
        with pytest.raises(InvalidCursor):
            await adapter.list_organizations(creds("acme"), cursor=cursor)
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ({"status": 503}, UpstreamUnavailable, 503),
        ({"status": 500}, UpstreamUnavailable, 500),
        (
            {"status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
            UpstreamUnavailable,
            502,
        ),
        ({"body": "<html>oops</html>", "content_type": "text/html"}, BadUpstreamResponse, 200),
        ({"body": '{"organizations": []}'}, BadUpstreamResponse, None),
        ({"body": "[1, 2]"}, BadUpstreamResponse, None),
        ({"body": '[{"id": "01H0S97D8RX4RBFHHTB1HE7SFR"}]'}, BadUpstreamResponse, None),
        ({"body": '[{"name": "No id"}]'}, BadUpstreamResponse, None),
        (
            {"body": '[{"id": "x", "name": "y", "createdAt": "yesterday"}]'},
            BadUpstreamResponse,
            None,
        ),
        ({"status": 403}, UpstreamForbidden, 403),
    ],
)
async def test_list_faults_map_to_the_taxonomy(
    sandbox: ServedApp,
    make_adapter: AdapterFactory,
    fault: dict[str, Any],
    error: type[UpstreamError],
    status: int | None,
) -> None:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    adapter = make_adapter(sandbox.url, retries=0)
    credentials = creds("acme")
    await adapter.list_organizations(credentials)  # token cached; the fault hits the API call
    sandbox.fault(path_prefix="/organizations", times=1, **fault)
    with pytest.raises(error) as info:
        # An envelope is checked on arrival, an organization when it is read.
        tuple((await adapter.list_organizations(credentials)).organizations)
    assert info.value.status == status
    assert "<html>" not in info.value.message and "oops" not in info.value.message
    assert "yesterday" not in info.value.message


async def test_get_with_a_non_object_body_is_bad(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    sandbox.fault(path_prefix="/organizations/", body="[]")
    with pytest.raises(BadUpstreamResponse):
        await adapter.get_organization(creds("acme"), expected("acme", OPTIONS)[0]["id"])


async def test_null_list_is_an_empty_last_page(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    sandbox.fault(path_prefix="/organizations", body="null")
    page = await adapter.list_organizations(creds("acme"))
    assert page.organizations == () and page.next_cursor is None


async def test_rate_limited_and_timeout(sandbox: ServedApp, make_adapter: AdapterFactory) -> None:
    # One answer per call: retries are tests/providers/test_resilience.py's.
    adapter = make_adapter(sandbox.url, timeout_seconds=0.2, retries=0)
    credentials = creds("acme")
    await adapter.list_organizations(credentials)
    sandbox.fault(path_prefix="/organizations", status=429, times=1)
    with pytest.raises(UpstreamRateLimited) as info:
        await adapter.list_organizations(credentials)
    assert info.value.retry_after == 1.0 and info.value.status == 429
    sandbox.fault(path_prefix="/organizations", delay_ms=600, times=1)
    with pytest.raises(UpstreamTimeout):
        await adapter.list_organizations(credentials)


async def test_error_messages_never_carry_credentials_or_raw_bodies(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    pair = demo_credentials("acme", OPTIONS)
    leak = f"boom {pair['client_secret']} for {pair['client_id']}"
    sandbox.fault(
        path_prefix="/organizations",
        status=500,
        body=f'{{"name":"fault","message":"{leak}","fault":true}}',
    )
    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.list_organizations(creds("acme"))
    message = info.value.message
    assert "boom" in message and "[redacted]" in message
    assert pair["client_secret"] not in message and pair["client_id"] not in message


async def test_goa_error_message_is_reported(
    sandbox: ServedApp, make_adapter: AdapterFactory
) -> None:
    adapter = make_adapter(sandbox.url)
    with pytest.raises(UpstreamNotFound) as info:
        await adapter.get_organization(creds("acme"), "01H0S97D8RX4RBFHHTB1HE7SFR")
    assert info.value.message == "loke answered HTTP 404: Not Found"


async def test_next_page_header_variants() -> None:
    """respx: the one thing the sandbox never does is send a relative or foreign X-Next-Page."""
    base = "https://api.loke.test"
    credentials = LokeAdapter.parse_credentials({"access_token": "loke_sandbox_at_static"})
    org = {"id": "01H0S97D8RX4RBFHHTB1HE7SFR", "name": "My Awesome Business"}
    # respx intercepts httpx's own transport only.
    adapter = LokeAdapter(ProviderSettings(base_url=base + "/v0", transport="httpx"))
    try:
        with respx.mock(assert_all_called=True) as mock:
            route = mock.get(base + "/v0/organizations")
            route.side_effect = [
                httpx.Response(
                    200, json=[org], headers={"X-Next-Page": "/v0/organizations?after=a"}
                ),
                httpx.Response(200, json=[org], headers={"X-Next-Page": "https://evil.test/o"}),
                httpx.Response(
                    200, json=[org], headers={"X-Next-Page": base + "/v0/organizations"}
                ),
            ]
            page = await adapter.list_organizations(credentials)
            assert page.next_cursor == base + "/v0/organizations?after=a"
            assert route.calls[0].request.headers["authorization"] == (
                "Bearer loke_sandbox_at_static"
            )
            with pytest.raises(BadUpstreamResponse, match="another origin"):
                await adapter.list_organizations(credentials)
            with pytest.raises(BadUpstreamResponse, match="repeats"):
                await adapter.list_organizations(credentials)
    finally:
        await adapter.aclose()


# --------------------------------------------------------------------------------------------
# Adapter: base_url with a path prefix, separate token_url
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefixed() -> Iterator[tuple[ServedApp, Starlette]]:
    inner = create_app(options=PAGED)
    outer = Starlette(routes=[Mount("/loke-api", app=inner), Mount("/auth", app=inner)])
    with serve_app(outer) as served:
        yield served, inner


async def test_base_url_with_a_path_prefix(
    prefixed: tuple[ServedApp, Starlette], make_adapter: AdapterFactory
) -> None:
    served, inner = prefixed
    log: list[dict[str, str]] = inner.state.sandbox.requests
    log.clear()
    adapter = make_adapter(served.url + "/loke-api")
    credentials = creds("acme", PAGED)
    cursors = await walk(adapter, credentials)
    assert len(cursors) > 2
    for cursor in cursors[:-1]:
        assert cursor is not None and cursor.startswith(served.url + "/loke-api/organizations?")
    assert await all_orgs(adapter, credentials) == [p["id"] for p in expected("acme", PAGED)]
    first_id = expected("acme", PAGED)[0]["id"]
    assert (await adapter.get_organization(credentials, first_id)).provider_id == first_id
    paths = {r.get("root_path", "") + r["path"] for r in log}
    assert paths == {
        "/loke-api/token",  # default token_url: base_url + /token
        "/loke-api/organizations",
        f"/loke-api/organizations/{first_id}",
    }
    assert token_posts(log) == 1


async def test_explicit_token_url(
    prefixed: tuple[ServedApp, Starlette], make_adapter: AdapterFactory
) -> None:
    served, inner = prefixed
    log: list[dict[str, str]] = inner.state.sandbox.requests
    log.clear()
    adapter = make_adapter(served.url + "/loke-api/", token_url=served.url + "/auth/token")
    ids = await all_orgs(adapter, creds("globex", PAGED))
    assert ids == [p["id"] for p in expected("globex", PAGED)]
    assert [r.get("root_path", "") + r["path"] for r in log if r["method"] == "POST"] == [
        "/auth/token"
    ]


async def test_sandbox_request_log_helper_counts(sandbox: ServedApp) -> None:
    """Guards the helpers above against passing vacuously on an empty log."""
    raw_token(sandbox)
    httpx.get(sandbox.url + "/organizations")
    log = sandbox.requests()
    assert token_posts(log) == 1 and org_gets(log) == 1
