"""The CapyDB adapter: CapyDB's REST API (managed Postgres) normalised into ``providers.base``.

An org-scoped API key (``Authorization: Bearer capy_live_…``) sees exactly one organization, so
``list_organizations`` is ``GET /v1/me`` (one page, never a cursor). Subscriptions cost no HTTP
call: CapyDB folds its Stripe subscription into the organization object (``billing_*`` fields),
so an organization has one subscription exactly when ``billing_subscription_id`` is set. Usage is
``GET /v1/organizations/{orgID}/usage``. Ids that cannot name an organization (empty, ``.``,
``..``, not UTF-8) are ``UpstreamNotFound`` without a call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from providers.base import (
    MONOTONIC,
    BadUpstreamResponse,
    CallCosts,
    Clock,
    InvalidCursor,
    OrganizationPage,
    OrganizationRecord,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    SubscriptionRecord,
    UpstreamHttp,
    UsageMetricRecord,
    UsageRecord,
    UsageSampleRecord,
    UsageUnit,
    opt_datetime,
    opt_float,
    opt_str,
    path_segment,
    req_str,
    stripe_subscription_status,
)

__all__ = ["ADAPTER", "METRICS", "CapyDBAdapter"]

_P = ProviderName.CAPYDB

METRICS: tuple[tuple[str, str, UsageUnit, str | None], ...] = (
    # (totals key, label, unit, totals key of its limit)
    ("storage_bytes", "Storage", UsageUnit.BYTES, "storage_limit_bytes"),
    ("connections", "Connections", UsageUnit.COUNT, None),
    ("projects", "Projects", UsageUnit.COUNT, "projects_limit"),
    ("previews", "Previews", UsageUnit.COUNT, "previews_limit"),
    ("backups_storage_bytes", "Backup storage", UsageUnit.BYTES, None),
    ("job_success_rate_7d", "Job success rate (7 days)", UsageUnit.RATIO, None),
    ("webhook_delivery_rate_7d", "Webhook delivery rate (7 days)", UsageUnit.RATIO, None),
)
"""The usage metrics CapyDB reports in ``usage.totals``, in the order we return them."""


def _error_detail(body: Any) -> str | None:
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, str):
            return error
        # Tolerate the nested {"error": {"message": …}} some proxies in front of CapyDB use.
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
    return None


def _unwrap(body: Any, envelope: str, what: str) -> Mapping[str, Any]:
    """``body[envelope]`` when the body is the documented ``{envelope: {…}}`` shape."""
    inner = body.get(envelope) if isinstance(body, Mapping) else None
    if not isinstance(inner, Mapping):
        raise BadUpstreamResponse(_P, f"capydb {what} response has no '{envelope}' object")
    return inner


def _organization(org: Mapping[str, Any]) -> OrganizationRecord:
    suspended = org.get("suspended_at")
    return OrganizationRecord(
        provider=_P,
        provider_id=req_str(org, "id", _P, "organization"),
        name=req_str(org, "name", _P, "organization"),
        slug=opt_str(org, "slug"),
        billing_email=opt_str(org, "billing_email"),
        plan=opt_str(org, "billing_plan"),
        # Any suspension timestamp means suspended; null/absent/"" means it is not.
        status=(
            OrganizationStatus.SUSPENDED
            if suspended is not None and suspended != ""
            else OrganizationStatus.ACTIVE
        ),
        created_at=opt_datetime(org, "created_at", _P),
        updated_at=opt_datetime(org, "updated_at", _P),
        raw=org,
    )


class CapyDBAdapter:
    """``providers.base.ProviderAdapter`` for CapyDB."""

    provider: ClassVar[ProviderName] = _P
    supports_update: ClassVar[bool] = True
    call_costs: ClassVar[CallCosts] = CallCosts(organizations_per_page=None, usage=1)

    def __init__(self, settings: ProviderSettings, *, clock: Clock = MONOTONIC) -> None:
        self.settings = settings
        self._http = UpstreamHttp(
            provider=_P, settings=settings, error_detail=_error_detail, clock=clock
        )

    @classmethod
    def parse_credentials(cls, values: Mapping[str, Any]) -> ProviderCredentials:
        return ProviderCredentials.parse(values, one_of=[["api_key"]], provider=_P)

    @staticmethod
    def _headers(credentials: ProviderCredentials) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {credentials['api_key']}",
            "Accept": "application/json",
        }

    def _org_path(self, org_id: str, suffix: str = "") -> str:
        return self._http.url(f"/v1/organizations/{path_segment(org_id, _P)}{suffix}")

    async def _get(
        self, credentials: ProviderCredentials, url: str, envelope: str, what: str
    ) -> Mapping[str, Any]:
        """``GET url``'s ``{envelope: {…}}`` object. The envelope is checked on the answer as it
        arrives, so a wrongly-shaped one is never shared or cached."""
        response = await self._http.request(
            "GET",
            url,
            credentials=credentials,
            headers=self._headers(credentials),
            check=lambda body: _unwrap(body, envelope, what),
        )
        return _unwrap(response.body, envelope, what)

    async def list_organizations(
        self, credentials: ProviderCredentials, *, cursor: str | None = None
    ) -> OrganizationPage:
        if cursor is not None:
            # A key sees one organization, so there is never a next page to continue from.
            raise InvalidCursor(_P, "capydb lists a single organization per key; no cursor")
        org = _organization(
            await self._get(credentials, self._http.url("/v1/me"), "organization", "/v1/me")
        )
        return OrganizationPage(organizations=(org,), next_cursor=None)

    async def get_organization(
        self, credentials: ProviderCredentials, provider_id: str
    ) -> OrganizationRecord:
        return _organization(
            await self._get(
                credentials, self._org_path(provider_id), "organization", "organization"
            )
        )

    async def list_subscriptions(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> tuple[SubscriptionRecord, ...]:
        raw = organization.raw
        subscription_id = opt_str(raw, "billing_subscription_id")
        if subscription_id is None:
            return ()
        billing_status = opt_str(raw, "billing_status")
        return (
            SubscriptionRecord(
                provider=_P,
                provider_id=subscription_id,
                organization_id=organization.provider_id,
                plan=opt_str(raw, "billing_plan"),
                status=stripe_subscription_status(billing_status),
                provider_status=billing_status,
                current_period_end=opt_datetime(raw, "billing_period_end", _P),
                raw=raw,
            ),
        )

    async def get_usage(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> UsageRecord | None:
        usage = await self._get(
            credentials, self._org_path(organization.provider_id, "/usage"), "usage", "usage"
        )
        totals = usage.get("totals")
        if totals is None:
            totals = {}
        if not isinstance(totals, Mapping):
            raise BadUpstreamResponse(_P, "capydb usage 'totals' is not an object")

        metrics: list[UsageMetricRecord] = []
        for key, label, unit, limit_key in METRICS:
            value = opt_float(totals, key, _P)
            if value is None:
                continue
            limit = opt_float(totals, limit_key, _P) if limit_key else None
            metrics.append(
                UsageMetricRecord(key=key, label=label, value=value, unit=unit, limit=limit)
            )

        samples = usage.get("storage_history")
        if samples is None:
            samples = []
        if not isinstance(samples, list):
            raise BadUpstreamResponse(_P, "capydb usage 'storage_history' is not a list")
        history: list[UsageSampleRecord] = []
        for sample in samples:
            if not isinstance(sample, Mapping):
                raise BadUpstreamResponse(_P, "capydb storage_history entry is not an object")
            at = opt_datetime(sample, "sampled_at", _P)
            value = opt_float(sample, "storage_bytes", _P)
            if at is None or value is None:
                raise BadUpstreamResponse(
                    _P, "capydb storage_history entry lacks sampled_at or storage_bytes"
                )
            history.append(UsageSampleRecord(key="storage_bytes", at=at, value=value))
        return UsageRecord(metrics=tuple(metrics), history=tuple(history))

    async def update_organization(
        self, credentials: ProviderCredentials, provider_id: str, update: OrganizationUpdate
    ) -> OrganizationRecord:
        url = self._org_path(provider_id)
        if update.is_empty():
            # Nothing to change: answer with the current state rather than an empty PATCH.
            return await self.get_organization(credentials, provider_id)
        payload: dict[str, str] = {}
        if update.name is not None:
            payload["name"] = update.name
        if update.billing_email is not None:
            payload["billing_email"] = update.billing_email
        response = await self._http.request(
            "PATCH",
            url,
            credentials=credentials,
            headers={**self._headers(credentials), "Content-Type": "application/json"},
            json=payload,
        )
        return _organization(_unwrap(response.body, "organization", "PATCH organization"))

    def circuit_state(self) -> str:
        return self._http.circuit_state()

    async def aclose(self) -> None:
        await self._http.aclose()


ADAPTER = CapyDBAdapter
