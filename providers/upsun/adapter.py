"""The Upsun / Platform.sh adapter: organizations, their subscriptions, and usage derived from them.

Auth: the tenant's ``api_token`` is exchanged at the auth server (``POST {token_url}``, HTTP Basic
``platform-api-user:`` with an empty password, form ``grant_type=api_token&api_token=…``) for a
bearer access token (``expires_in`` 900 s). ``settings.token_url`` defaults to
``https://auth.api.platform.sh/oauth2/token``, the ``tokenUrl`` of the spec's OAuth2
securityScheme — the auth server is a different host from the API, so there is no sensible path
on ``base_url`` to default to. Tokens are cached per credential fingerprint and refreshed shortly
before they expire; a 401 from the API invalidates the token, fetches a new one and retries the
call once. A 400/401 from the token endpoint is ``UpstreamUnauthorized``.

Upstream calls per method:

* ``list_organizations``: ``GET /organizations?page[size]=100``; later pages ``GET`` the
  ``_links.next.href`` the previous page gave (that URL is the cursor). The API's default status
  filter (active, restricted, suspended) applies: deleted organizations are not listed but
  ``get_organization`` still returns them (status DELETED).
* ``get_organization``: ``GET /organizations/{id}``.
* ``list_subscriptions``: ``GET /organizations/{id}/subscriptions?page[size]=100``, then every
  ``_links.next.href`` until there is none.
* ``get_usage``: the same subscription walk (``UpstreamHttp``'s per-request memo shares the GETs
  with ``list_subscriptions``); no history. See below.
* ``update_organization``: unsupported (DESIGN keeps the mutation to CapyDB and PlanetScale).

Every next-page link, from a client's cursor or from ``_links``, is checked by ``page_link``: an
organizations page must be a page of ``{base_url}/organizations``, a subscriptions page one of
``{base_url}/organizations/{id}/subscriptions`` of the organization being walked (only the
query may differ). Ids that cannot name an organization (empty, ``.``, ``..``, not UTF-8) are
``UpstreamNotFound`` without a call.

Usage, over the subscriptions that are not deleted (the spec's Subscription schema: what a
subscription *allows* is ``environments``, "the number of environments which can be
provisioned", and ``storage``, "the total storage available to each environment, in MiB";
what it *uses* is ``user_licenses``, "chargeable users who currently have access"):

* ``projects`` (COUNT): how many subscriptions (one project each);
* ``user_licenses`` (COUNT): Σ user_licenses;
* ``environments`` (COUNT): value null (no usage figure), limit Σ environments;
* ``storage_bytes`` (BYTES): value null, limit Σ (storage x environments) x 1048576.

An absent or null number counts as 0; one that is not a number is ``BadUpstreamResponse``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from providers.base import (
    MONOTONIC,
    AccessToken,
    AccessTokenCache,
    BadUpstreamResponse,
    CallCosts,
    Clock,
    OperationUnsupported,
    OrganizationPage,
    OrganizationRecord,
    OrganizationRecords,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    SubscriptionRecord,
    SubscriptionStatus,
    UpstreamError,
    UpstreamHttp,
    UpstreamResponse,
    UsageMetricRecord,
    UsageRecord,
    UsageUnit,
    opt_datetime,
    opt_float,
    opt_str,
    page_link,
    parse_token_response,
    path_segment,
    req_str,
    token_exchange_error,
)
from providers.http import ShapeCheck

__all__ = ["ADAPTER", "CLIENT_ID", "DEFAULT_TOKEN_URL", "PAGE_SIZE", "UpsunAdapter"]

DEFAULT_TOKEN_URL = "https://auth.api.platform.sh/oauth2/token"
CLIENT_ID = "platform-api-user"
PAGE_SIZE = 100
"""The largest ``page[size]`` the API accepts."""
_MAX_PAGES = 1000
"""A subscription walk longer than this is an upstream loop, not data (100 000 projects)."""
_DEFAULT_EXPIRES_IN = 900.0
_BYTES_PER_MIB = 1024 * 1024
_LIST_PATH = "/organizations"

_PROVIDER = ProviderName.UPSUN

_ORG_STATUSES: dict[str, OrganizationStatus] = {
    "active": OrganizationStatus.ACTIVE,
    "restricted": OrganizationStatus.RESTRICTED,
    "suspended": OrganizationStatus.SUSPENDED,
    "deleted": OrganizationStatus.DELETED,
}

_SUBSCRIPTION_STATUSES: dict[str, SubscriptionStatus] = {
    "active": SubscriptionStatus.ACTIVE,
    "requested": SubscriptionStatus.PROVISIONING,
    "provisioning": SubscriptionStatus.PROVISIONING,
    "provisioning failure": SubscriptionStatus.PROVISIONING_FAILED,
    "suspended": SubscriptionStatus.SUSPENDED,
    "deleted": SubscriptionStatus.DELETED,
}


def _error_detail(body: Any) -> str | None:
    """The message of a problem+json Error body, or of an OAuth error from the token endpoint."""
    if not isinstance(body, Mapping):
        return None
    for key in ("message", "detail", "error_description", "title", "error"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if type(value) is not dict and not isinstance(
        value, Mapping
    ):  # a dict, as parsed JSON is, skips the ABC check
        raise BadUpstreamResponse(_PROVIDER, f"upsun {what} is not a JSON object")
    return value


def _organization(item: Any) -> OrganizationRecord:
    item = _object(item, "organization")
    provider_id = req_str(item, "id", _PROVIDER, "organization")
    slug = opt_str(item, "name")
    # ``label`` is the human name; the machine name is the best stand-in if it is ever missing.
    name = opt_str(item, "label") or slug
    if name is None:
        raise BadUpstreamResponse(_PROVIDER, "upsun organization has no usable 'label' or 'name'")
    status = opt_str(item, "status")
    return OrganizationRecord(
        provider=_PROVIDER,
        provider_id=provider_id,
        name=name,
        slug=slug,
        status=_ORG_STATUSES.get(status.strip().lower(), OrganizationStatus.UNKNOWN)
        if status
        else OrganizationStatus.UNKNOWN,
        created_at=opt_datetime(item, "created_at", _PROVIDER),
        updated_at=opt_datetime(item, "updated_at", _PROVIDER),
        raw=item,
    )


def _subscription(item: Any, organization_id: str) -> SubscriptionRecord:
    item = _object(item, "subscription")
    status = opt_str(item, "status")
    return SubscriptionRecord(
        provider=_PROVIDER,
        provider_id=req_str(item, "id", _PROVIDER, "subscription"),
        organization_id=organization_id,
        plan=opt_str(item, "plan"),
        status=_SUBSCRIPTION_STATUSES.get(status.strip().lower(), SubscriptionStatus.UNKNOWN)
        if status
        else SubscriptionStatus.UNKNOWN,
        provider_status=status,
        created_at=opt_datetime(item, "created_at", _PROVIDER),
        updated_at=opt_datetime(item, "updated_at", _PROVIDER),
        raw=item,
    )


def _items(body: Any, what: str) -> Sequence[Any]:
    """The ``items`` of a list page (``{"items": [...], "_links": {...}}``); null is none."""
    body = _object(body, f"{what} response")
    if "items" not in body:
        raise BadUpstreamResponse(_PROVIDER, f"upsun {what} response has no 'items'")
    items = body["items"]
    if items is None:  # tolerated: an empty list sent as null
        return ()
    if not isinstance(items, list):
        raise BadUpstreamResponse(_PROVIDER, f"upsun {what} response has no 'items' list")
    return items


def _organization_shape(body: Any) -> object:
    return _object(body, "organization")


def _organizations_shape(body: Any) -> object:
    return _items(body, "organizations")


def _subscriptions_shape(body: Any) -> object:
    return _items(body, "subscriptions")


def _count(item: Mapping[str, Any], key: str) -> float:
    """A subscription's number; absent or null counts as nothing."""
    return opt_float(item, key, _PROVIDER) or 0.0


def _usage(subscriptions: Iterable[Mapping[str, Any]]) -> UsageRecord:
    """DESIGN's Upsun usage row over the (non-deleted) ``subscriptions``; see the module
    docstring for what each field of the spec's Subscription means."""
    projects = user_licenses = environments = storage_bytes = 0.0
    for item in subscriptions:
        projects += 1
        user_licenses += _count(item, "user_licenses")
        allowed = _count(item, "environments")
        environments += allowed
        # ``storage`` is MiB available to *each* environment.
        storage_bytes += _count(item, "storage") * allowed * _BYTES_PER_MIB
    return UsageRecord(
        metrics=(
            UsageMetricRecord(
                key="projects", label="Projects", value=projects, unit=UsageUnit.COUNT
            ),
            UsageMetricRecord(
                key="user_licenses",
                label="User licenses",
                value=user_licenses,
                unit=UsageUnit.COUNT,
            ),
            # Allowances only: the API reports no figure of environments or storage in use.
            UsageMetricRecord(
                key="environments",
                label="Environments",
                value=None,
                limit=environments,
                unit=UsageUnit.COUNT,
            ),
            UsageMetricRecord(
                key="storage_bytes",
                label="Storage",
                value=None,
                limit=storage_bytes,
                unit=UsageUnit.BYTES,
            ),
        )
    )


def _organization_records(body: Any) -> OrganizationRecords:
    """A list page's organizations, normalised as they are read (shared by every caller of
    one answer: ``UpstreamResponse.derive``)."""
    return OrganizationRecords(_items(body, "organizations"), _organization)


class UpsunAdapter:
    """Upsun / Platform.sh through one pooled ``UpstreamHttp`` and one token cache."""

    provider: ClassVar[ProviderName] = _PROVIDER
    supports_update: ClassVar[bool] = False
    # Usage is summed from the same subscription pages: both together cost one walk.
    call_costs: ClassVar[CallCosts] = CallCosts(
        organizations_per_page=PAGE_SIZE, usage=1, subscriptions=1, usage_and_subscriptions=1
    )

    def __init__(self, settings: ProviderSettings, *, clock: Clock = MONOTONIC) -> None:
        self.settings = settings
        self.token_url = settings.token_url or DEFAULT_TOKEN_URL
        self._clock = clock
        self._http = UpstreamHttp(
            provider=_PROVIDER, settings=settings, error_detail=_error_detail, clock=clock
        )
        self._tokens = AccessTokenCache(provider=_PROVIDER, clock=clock)

    @classmethod
    def parse_credentials(cls, values: Mapping[str, Any]) -> ProviderCredentials:
        return ProviderCredentials.parse(values, one_of=[["api_token"]], provider=_PROVIDER)

    # ---------------------------------------------------------------------------- auth

    async def _fetch_token(self, credentials: ProviderCredentials) -> AccessToken:
        started = self._clock.now()
        try:
            response = await self._http.request(
                "POST",
                self.token_url,
                credentials=credentials,
                headers={"Accept": "application/json"},
                data={"grant_type": "api_token", "api_token": credentials["api_token"]},
                auth=(CLIENT_ID, ""),
                # A token request changes nothing upstream: safe to repeat.
                idempotent=True,
            )
        except UpstreamError as exc:
            raise token_exchange_error(_PROVIDER, exc) from None
        return parse_token_response(
            response.body, _PROVIDER, started=started, default_lifetime=_DEFAULT_EXPIRES_IN
        )

    async def _get(
        self,
        credentials: ProviderCredentials,
        url: str,
        params: Mapping[str, str | int] | None,
        check: ShapeCheck,
    ) -> UpstreamResponse:
        """An authenticated GET: on 401, one fresh token and one retry. ``check`` is the
        answer's envelope, checked before it is shared or cached."""
        key = credentials.fingerprint
        return await self._http.get_with_bearer(
            url,
            credentials=credentials,
            bearer=lambda: self._tokens.get(key, lambda: self._fetch_token(credentials)),
            invalidate=lambda token: self._tokens.invalidate(key, token),
            params=params,
            check=check,
        )

    # ---------------------------------------------------------------------------- links

    def _next_href(self, body: Mapping[str, Any], response_url: str, list_path: str) -> str | None:
        """``_links.next.href``, resolved against the page it came from and checked to be a page
        of ``list_path``; None on the last page."""
        links = body.get("_links")
        if links is None:
            return None
        if not isinstance(links, Mapping):
            raise BadUpstreamResponse(_PROVIDER, "upsun '_links' is not an object")
        link = links.get("next")
        if link is None:
            return None
        if not isinstance(link, Mapping):
            raise BadUpstreamResponse(_PROVIDER, "upsun '_links.next' is not an object")
        href = link.get("href")
        if href is None or href == "":
            return None
        if not isinstance(href, str):
            raise BadUpstreamResponse(_PROVIDER, "upsun '_links.next.href' is not a string")
        return page_link(
            self.settings.base_url,
            list_path,
            href,
            _PROVIDER,
            relative_to=response_url,
            error=BadUpstreamResponse,
        )

    # ---------------------------------------------------------------------------- reads

    async def list_organizations(
        self, credentials: ProviderCredentials, *, cursor: str | None = None
    ) -> OrganizationPage:
        if cursor is None:
            url = self._http.url(_LIST_PATH)
            params: Mapping[str, str | int] | None = {"page[size]": PAGE_SIZE}
        else:
            url = page_link(self.settings.base_url, _LIST_PATH, cursor, _PROVIDER)
            params = None
        response = await self._get(credentials, url, params, _organizations_shape)
        body = response.body
        organizations = response.derive("organizations", _organization_records)
        next_url = self._next_href(body, response.url, _LIST_PATH)
        if next_url is not None and next_url in (url, response.url):
            raise BadUpstreamResponse(_PROVIDER, "upsun next page link points at the same page")
        return OrganizationPage(organizations=organizations, next_cursor=next_url)

    async def get_organization(
        self, credentials: ProviderCredentials, provider_id: str
    ) -> OrganizationRecord:
        segment = path_segment(provider_id, _PROVIDER)
        response = await self._get(
            credentials, self._http.url(f"{_LIST_PATH}/{segment}"), None, _organization_shape
        )
        return _organization(response.body)

    async def _subscription_items(
        self, credentials: ProviderCredentials, organization_id: str
    ) -> list[Any]:
        list_path = f"{_LIST_PATH}/{path_segment(organization_id, _PROVIDER)}/subscriptions"
        url = self._http.url(list_path)
        params: Mapping[str, str | int] | None = {"page[size]": PAGE_SIZE}
        seen: set[str] = set()
        items: list[Any] = []
        for _ in range(_MAX_PAGES):
            response = await self._get(credentials, url, params, _subscriptions_shape)
            seen.update((url, response.url))
            items.extend(_items(response.body, "subscriptions"))
            next_url = self._next_href(response.body, response.url, list_path)
            if next_url is None:
                return items
            if next_url in seen:
                raise BadUpstreamResponse(_PROVIDER, "upsun subscription pages link in a loop")
            url, params = next_url, None
        raise BadUpstreamResponse(_PROVIDER, f"upsun returned more than {_MAX_PAGES} pages")

    async def list_subscriptions(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> tuple[SubscriptionRecord, ...]:
        organization_id = organization.provider_id
        items = await self._subscription_items(credentials, organization_id)
        return tuple(_subscription(item, organization_id) for item in items)

    async def get_usage(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> UsageRecord | None:
        subscriptions = await self.list_subscriptions(credentials, organization)
        return _usage(s.raw for s in subscriptions if s.status is not SubscriptionStatus.DELETED)

    # ---------------------------------------------------------------------------- writes

    async def update_organization(
        self, credentials: ProviderCredentials, provider_id: str, update: OrganizationUpdate
    ) -> OrganizationRecord:
        raise OperationUnsupported(
            _PROVIDER,
            "upsun organizations cannot be updated through OrgGraph "
            "(updateOrganization is limited to CapyDB and PlanetScale)",
        )

    def circuit_state(self) -> str:
        return self._http.circuit_state()

    async def aclose(self) -> None:
        await self._http.aclose()


ADAPTER = UpsunAdapter
