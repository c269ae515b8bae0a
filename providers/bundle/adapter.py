"""The gateway's client for bundle.social's organization API.

A bundle.social API key belongs to exactly one organization, so every read starts from the one
call ``GET /api/v1/organization/`` (header ``x-api-key``), which returns the bare organization
object:

* ``list_organizations`` is that organization as a single, last page (bundle has no cursor);
* ``get_organization(id)`` is the same call, ``UpstreamNotFound`` when the key's organization
  has another id (and without the call for an id no upstream could have, such as ``..``);
* ``list_subscriptions`` is the nullable ``subscription`` member of that object (no extra call);
* ``get_usage`` is ``usage.monthlyPosts`` against ``subscription.maxMonthlyPosts`` (no extra
  call). The newer OpenAPI schema no longer lists ``usage`` on the organization; when it is
  absent the adapter asks ``GET /api/v1/organization/usage/posts`` (``{used, limit, remaining}``)
  instead, and reports no usage when that endpoint does not exist either (404).

bundle.social documents 401 for a missing key and 403 for a wrong one; both mean the tenant's
credentials are unusable, so both become ``UpstreamUnauthorized``. The API has no way to update
an organization (``supports_update = False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from providers.base import (
    MONOTONIC,
    BadUpstreamResponse,
    CallCosts,
    Clock,
    CredentialsError,
    InvalidCursor,
    OperationUnsupported,
    OrganizationPage,
    OrganizationRecord,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    RateLimit,
    SubscriptionRecord,
    UpstreamHttp,
    UpstreamNotFound,
    UpstreamUnauthorized,
    UsageMetricRecord,
    UsageRecord,
    UsageUnit,
    opt_datetime,
    opt_float,
    opt_str,
    path_segment,
    req_str,
    stripe_subscription_status,
)

__all__ = ["ADAPTER", "ORGANIZATION_PATH", "POSTS_USAGE_PATH", "RATE_LIMITS", "BundleAdapter"]

ORGANIZATION_PATH = "/api/v1/organization/"
POSTS_USAGE_PATH = "/api/v1/organization/usage/posts"

_PROVIDER = ProviderName.BUNDLE
_ORGANIZATION_RESPONSE = "organization response"

RATE_LIMITS = (RateLimit(5, 1.0), RateLimit(20, 10.0), RateLimit(100, 60.0))
"""What requests to bundle.social are paced to, per API key, unless ``[providers.bundle]``
configures ``rate_limit_per_second`` / ``rate_limit_per_minute``. The source is
shared/DESIGN.md ("The five upstreams", bundle.social): "Rate limit: 5 req/s, 20 per 10 s, 100
per minute per user → 429." — the seed doc and the OpenAPI excerpt state no figures (the spec
only lists a 429 response on every operation). A key is one user, and the budget is shared by
every endpoint ("per user, not per endpoint", as the sandbox's docstring quotes the docs)."""


def _error_detail(body: Any) -> str | None:
    """``{"statusCode": n, "message": "…", "issues": [{"message", "path"}]?}`` → the message."""
    if not isinstance(body, Mapping):
        return None
    message = body.get("message")
    if not isinstance(message, str) or not message:
        return None
    issues = body.get("issues")
    if isinstance(issues, list) and issues and isinstance(issues[0], Mapping):
        first = issues[0]
        path = first.get("path")
        where = ".".join(str(p) for p in path) if isinstance(path, list) else ""
        what = first.get("message")
        if isinstance(what, str) and what:
            message += f" ({where + ': ' if where else ''}{what})"
    return message


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadUpstreamResponse(_PROVIDER, f"bundle {what} is not a JSON object")
    return value


def _subscription_of(organization: Mapping[str, Any]) -> Mapping[str, Any] | None:
    subscription = organization.get("subscription")
    if subscription is None:
        return None
    return _object(subscription, "organization.subscription")


def _organization_record(body: Any) -> OrganizationRecord:
    org = _object(body, _ORGANIZATION_RESPONSE)
    org_id = req_str(org, "id", _PROVIDER, "organization")
    suspended = org.get("suspended")
    if suspended is not None and not isinstance(suspended, bool):
        raise BadUpstreamResponse(
            _PROVIDER, "bundle organization field 'suspended' is not a boolean"
        )
    subscription = _subscription_of(org)
    if opt_datetime(org, "deletedAt", _PROVIDER) is not None:
        status = OrganizationStatus.DELETED
    elif suspended:
        status = OrganizationStatus.SUSPENDED
    else:
        status = OrganizationStatus.ACTIVE
    return OrganizationRecord(
        provider=_PROVIDER,
        provider_id=org_id,
        # The schema allows a null name; the id is the only other stable label to show.
        name=opt_str(org, "name") or org_id,
        plan=opt_str(subscription, "tier") if subscription is not None else None,
        status=status,
        created_at=opt_datetime(org, "createdAt", _PROVIDER),
        updated_at=opt_datetime(org, "updatedAt", _PROVIDER),
        raw=org,
    )


def _subscription_record(sub: Mapping[str, Any], organization_id: str) -> SubscriptionRecord:
    provider_status = opt_str(sub, "status")
    return SubscriptionRecord(
        provider=_PROVIDER,
        provider_id=req_str(sub, "id", _PROVIDER, "subscription"),
        organization_id=organization_id,
        plan=opt_str(sub, "tier"),
        status=stripe_subscription_status(provider_status),
        provider_status=provider_status,
        current_period_start=opt_datetime(sub, "currentPeriodStart", _PROVIDER),
        current_period_end=opt_datetime(sub, "currentPeriodEnd", _PROVIDER),
        trial_ends_at=opt_datetime(sub, "trialEnd", _PROVIDER),
        cancel_at=opt_datetime(sub, "cancelAt", _PROVIDER),
        # createdAt is bundle's own record; `created` is Stripe's, the fallback when it is null.
        created_at=opt_datetime(sub, "createdAt", _PROVIDER)
        or opt_datetime(sub, "created", _PROVIDER),
        updated_at=opt_datetime(sub, "updatedAt", _PROVIDER),
        raw=sub,
    )


class BundleAdapter:
    """bundle.social: one organization per API key."""

    provider: ClassVar[ProviderName] = _PROVIDER
    supports_update: ClassVar[bool] = False
    # Usage is in the organization object, or one GET of /usage/posts on newer API versions.
    call_costs: ClassVar[CallCosts] = CallCosts(organizations_per_page=None, usage=1)

    def __init__(self, settings: ProviderSettings, *, clock: Clock = MONOTONIC) -> None:
        self.settings = settings
        self._http = UpstreamHttp(
            provider=_PROVIDER,
            settings=settings,
            error_detail=_error_detail,
            status_errors={403: UpstreamUnauthorized},
            rate_limits=RATE_LIMITS,
            clock=clock,
        )

    @classmethod
    def parse_credentials(cls, values: Mapping[str, Any]) -> ProviderCredentials:
        credentials = ProviderCredentials.parse(values, one_of=[("api_key",)], provider=_PROVIDER)
        # httpx refuses non-ASCII header values with an error outside the taxonomy; refuse the
        # config instead, where the mistake is.
        if not credentials["api_key"].isascii() or not credentials["api_key"].isprintable():
            raise CredentialsError("bundle credentials need api_key as printable ASCII")
        return credentials

    async def _get(
        self, credentials: ProviderCredentials, path: str, what: str
    ) -> Mapping[str, Any]:
        """``GET path``'s body, a JSON object (``what`` names it in errors). That much is
        checked on the answer as it arrives, so a wrongly-shaped one is never shared or cached."""
        response = await self._http.request(
            "GET",
            self._http.url(path),
            credentials=credentials,
            headers={"x-api-key": credentials["api_key"], "Accept": "application/json"},
            check=lambda body: _object(body, what),
        )
        return _object(response.body, what)

    async def _fetch_organization(self, credentials: ProviderCredentials) -> OrganizationRecord:
        return _organization_record(
            await self._get(credentials, ORGANIZATION_PATH, _ORGANIZATION_RESPONSE)
        )

    async def _raw_for(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> Mapping[str, Any]:
        """The organization object: the record's ``raw`` when it is one (always, for records
        this adapter made), else fetched again."""
        raw = organization.raw
        if isinstance(raw, Mapping) and raw.get("id") == organization.provider_id:
            return raw
        return (await self.get_organization(credentials, organization.provider_id)).raw

    async def list_organizations(
        self, credentials: ProviderCredentials, *, cursor: str | None = None
    ) -> OrganizationPage:
        if cursor is not None:
            raise InvalidCursor(
                _PROVIDER, "bundle serves one organization per key; there is no next page"
            )
        record = await self._fetch_organization(credentials)
        return OrganizationPage(organizations=(record,), next_cursor=None)

    async def get_organization(
        self, credentials: ProviderCredentials, provider_id: str
    ) -> OrganizationRecord:
        # The id never goes into a URL here; the check is the one every adapter makes, so an
        # id that cannot name an organization anywhere costs no call.
        path_segment(provider_id, _PROVIDER)
        record = await self._fetch_organization(credentials)
        if record.provider_id != provider_id:
            raise UpstreamNotFound(
                _PROVIDER, "bundle organization not found: the API key belongs to another one"
            )
        return record

    async def list_subscriptions(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> tuple[SubscriptionRecord, ...]:
        subscription = _subscription_of(await self._raw_for(credentials, organization))
        if subscription is None:
            return ()
        return (_subscription_record(subscription, organization.provider_id),)

    async def get_usage(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> UsageRecord | None:
        raw = await self._raw_for(credentials, organization)
        subscription = _subscription_of(raw)
        limit = (
            opt_float(subscription, "maxMonthlyPosts", _PROVIDER)
            if subscription is not None
            else None
        )
        usage = raw.get("usage")
        value = (
            opt_float(_object(usage, "organization.usage"), "monthlyPosts", _PROVIDER)
            if usage is not None
            else None
        )
        if value is None:
            try:
                body = await self._get(credentials, POSTS_USAGE_PATH, "posts usage")
            except UpstreamNotFound:
                return None  # an API version with neither usage.monthlyPosts nor /usage/posts
            value = opt_float(body, "used", _PROVIDER)
            if value is None:
                raise BadUpstreamResponse(_PROVIDER, "bundle posts usage has no 'used'")
            limit = opt_float(body, "limit", _PROVIDER)
        return UsageRecord(
            metrics=(
                UsageMetricRecord(
                    key="monthly_posts",
                    label="Monthly posts",
                    value=value,
                    unit=UsageUnit.COUNT,
                    limit=limit,
                ),
            )
        )

    async def update_organization(
        self, credentials: ProviderCredentials, provider_id: str, update: OrganizationUpdate
    ) -> OrganizationRecord:
        raise OperationUnsupported(_PROVIDER, "bundle.social's API cannot update an organization")

    def circuit_state(self) -> str:
        return self._http.circuit_state()

    async def aclose(self) -> None:
        await self._http.aclose()


ADAPTER = BundleAdapter
