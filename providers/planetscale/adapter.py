"""The PlanetScale adapter: organizations over PlanetScale's REST API, normalised for the gateway.

``base_url`` is the public API base including its version (``https://api.planetscale.com/v1``).
Every request carries ``Authorization: <SERVICE_TOKEN_ID>:<SERVICE_TOKEN>`` — a service token,
no ``Bearer`` scheme (PlanetScale reserves that for OAuth access tokens).

Upstream calls per method:

* ``list_organizations`` — one ``GET /organizations?page=1&per_page=100`` (or one GET of the
  cursor, which is the ``next_page_url`` PlanetScale gave, followed as given once ``page_link``
  has checked that it is a page of ``{base_url}/organizations``);
* ``get_organization`` — one ``GET /organizations/{name}`` (names that cannot name an
  organization, such as ``..``, are ``UpstreamNotFound`` without a call);
* ``update_organization`` — one ``PATCH /organizations/{name}`` (a ``GET`` when nothing changes);
* ``list_subscriptions`` / ``get_usage`` — none: PlanetScale has no subscription objects, and the
  one usage metric (``databases``) is the organization's own ``database_count``.

The organization's ``name`` is its key everywhere in PlanetScale's API, so it is our
``providerId``; the API cannot rename an organization.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from providers.base import (
    MONOTONIC,
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
    RateLimit,
    SubscriptionRecord,
    UpstreamHttp,
    UpstreamResponse,
    UsageMetricRecord,
    UsageRecord,
    UsageUnit,
    opt_datetime,
    opt_float,
    opt_str,
    page_link,
    path_segment,
    req_str,
)

__all__ = ["ADAPTER", "MAX_PER_PAGE", "RATE_LIMITS", "PlanetScaleAdapter"]

MAX_PER_PAGE = 100
"""PlanetScale's documented ``per_page`` maximum."""

_PROVIDER = ProviderName.PLANETSCALE

RATE_LIMITS = (RateLimit(600, 60.0),)
"""What requests to PlanetScale are paced to, per service token, unless
``[providers.planetscale]`` configures ``rate_limit_per_second`` / ``rate_limit_per_minute``.
The source is shared/DESIGN.md ("The five upstreams", PlanetScale): "600 requests/minute →
429." — the seed doc and the OpenAPI excerpt state no rate limit."""
_LIST_PATH = "/organizations"


def _error_detail(body: Any) -> str | None:
    """The ``message`` (or failing that the ``code``) of ``{"code": …, "message": …}``."""
    if not isinstance(body, Mapping):
        return None
    for key in ("message", "code"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if type(value) is not dict and not isinstance(
        value, Mapping
    ):  # a dict, as parsed JSON is, skips the ABC check
        raise BadUpstreamResponse(_PROVIDER, f"planetscale {what} is not a JSON object")
    return value


def _organization_object(body: Any) -> Mapping[str, Any]:
    return _object(body, "organization")


def _list_items(body: Any) -> list[Any]:
    """The ``data`` of the list envelope ``{"type": "list", "current_page": …, "next_page": …,
    "next_page_url": …, "data": [...]}``; null is an empty page."""
    body = _object(body, "organization list")
    # The list envelope always has "data"; a body without it is not this API's answer.
    if "data" not in body:
        raise BadUpstreamResponse(_PROVIDER, "planetscale organization list has no data array")
    items = body["data"]
    if items is None:
        return []
    if not isinstance(items, list):
        raise BadUpstreamResponse(_PROVIDER, "planetscale organization list has no data array")
    return items


def _organization(obj: Any) -> OrganizationRecord:
    obj = _organization_object(obj)
    req_str(obj, "id", _PROVIDER, "organization")
    name = req_str(obj, "name", _PROVIDER, "organization")
    return OrganizationRecord(
        provider=_PROVIDER,
        provider_id=name,
        name=name,
        slug=name,
        billing_email=opt_str(obj, "billing_email"),
        plan=opt_str(obj, "plan"),
        status=OrganizationStatus.ACTIVE,
        created_at=opt_datetime(obj, "created_at", _PROVIDER),
        updated_at=opt_datetime(obj, "updated_at", _PROVIDER),
        raw=obj,
    )


def _organization_records(body: Any) -> OrganizationRecords:
    """A list page's organizations, normalised as they are read (shared by every caller of
    one answer: ``UpstreamResponse.derive``)."""
    return OrganizationRecords(_list_items(body), _organization)


class PlanetScaleAdapter:
    """PlanetScale organizations; supports changing the billing email, not the name."""

    provider: ClassVar[ProviderName] = _PROVIDER
    supports_update: ClassVar[bool] = True
    call_costs: ClassVar[CallCosts] = CallCosts(organizations_per_page=MAX_PER_PAGE)

    def __init__(self, settings: ProviderSettings, *, clock: Clock = MONOTONIC) -> None:
        self._http = UpstreamHttp(
            provider=_PROVIDER,
            settings=settings,
            error_detail=_error_detail,
            rate_limits=RATE_LIMITS,
            clock=clock,
        )

    @classmethod
    def parse_credentials(cls, values: Mapping[str, Any]) -> ProviderCredentials:
        return ProviderCredentials.parse(
            values, one_of=[("service_token_id", "service_token")], provider=_PROVIDER
        )

    def circuit_state(self) -> str:
        return self._http.circuit_state()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, credentials: ProviderCredentials) -> dict[str, str]:
        return {
            "Authorization": f"{credentials['service_token_id']}:{credentials['service_token']}",
            "Accept": "application/json",
        }

    def _organization_url(self, name: str) -> str:
        return self._http.url(f"{_LIST_PATH}/{path_segment(name, _PROVIDER)}")

    def _next_link(self, response: UpstreamResponse, body: Mapping[str, Any]) -> str | None:
        link = body.get("next_page_url")
        if isinstance(link, str) and link:
            # A relative link is relative to the page it came in.
            target = page_link(
                self._http.settings.base_url,
                _LIST_PATH,
                link,
                _PROVIDER,
                relative_to=response.url,
                error=BadUpstreamResponse,
            )
        else:
            next_page = body.get("next_page")
            if next_page is None:
                return None
            if isinstance(next_page, bool) or not isinstance(next_page, int):
                raise BadUpstreamResponse(_PROVIDER, "planetscale next_page is not a number")
            # next_page without its URL: ask for that page the way the docs describe.
            target = str(
                httpx.URL(
                    self._http.url(_LIST_PATH),
                    params={"page": next_page, "per_page": MAX_PER_PAGE},
                )
            )
        if target == response.url:
            raise BadUpstreamResponse(_PROVIDER, "planetscale next page link does not advance")
        return target

    async def list_organizations(
        self, credentials: ProviderCredentials, *, cursor: str | None = None
    ) -> OrganizationPage:
        if cursor is None:
            url = self._http.url(_LIST_PATH)
            params: dict[str, str | int] | None = {"page": 1, "per_page": MAX_PER_PAGE}
        else:
            # Cursors come back from clients: only a page of this list (what this adapter
            # hands out) may receive the tenant's service token.
            url = page_link(self._http.settings.base_url, _LIST_PATH, cursor, _PROVIDER)
            params = None
        response = await self._http.request(
            "GET",
            url,
            credentials=credentials,
            headers=self._headers(credentials),
            params=params,
            # Checked as it arrives: a wrongly-shaped page is never shared or cached.
            check=_list_items,
        )
        body = response.body
        return OrganizationPage(
            organizations=response.derive("organizations", _organization_records),
            next_cursor=self._next_link(response, body),
        )

    async def get_organization(
        self, credentials: ProviderCredentials, provider_id: str
    ) -> OrganizationRecord:
        response = await self._http.request(
            "GET",
            self._organization_url(provider_id),
            credentials=credentials,
            headers=self._headers(credentials),
            check=_organization_object,
        )
        return _organization(response.body)

    async def list_subscriptions(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> tuple[SubscriptionRecord, ...]:
        return ()

    async def get_usage(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> UsageRecord | None:
        count = opt_float(organization.raw, "database_count", _PROVIDER)
        if count is None:
            return None
        return UsageRecord(
            metrics=(
                UsageMetricRecord(
                    key="databases", label="Databases", value=count, unit=UsageUnit.COUNT
                ),
            )
        )

    async def update_organization(
        self, credentials: ProviderCredentials, provider_id: str, update: OrganizationUpdate
    ) -> OrganizationRecord:
        # The name is the organization's key and PlanetScale's PATCH has no field for it; the
        # same name again is not a change.
        if update.name is not None and update.name != provider_id:
            raise OperationUnsupported(_PROVIDER, "PlanetScale's API cannot rename an organization")
        if update.billing_email is None:
            return await self.get_organization(credentials, provider_id)
        response = await self._http.request(
            "PATCH",
            self._organization_url(provider_id),
            credentials=credentials,
            headers=self._headers(credentials),
            json={"billing_email": update.billing_email},
        )
        return _organization(response.body)


ADAPTER = PlanetScaleAdapter
