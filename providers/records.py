"""The normalised records adapters return and the enumerations the GraphQL schema mirrors.

Plain typed objects with no GraphQL in them (``OrganizationRecord``, ``SubscriptionRecord``,
``UsageRecord`` ...), and ``CallCosts``, what each adapter method costs in upstream calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

__all__ = [
    "CallCosts",
    "OrganizationPage",
    "OrganizationRecord",
    "OrganizationStatus",
    "OrganizationUpdate",
    "ProviderName",
    "SubscriptionRecord",
    "SubscriptionStatus",
    "UsageMetricRecord",
    "UsageRecord",
    "UsageSampleRecord",
    "UsageUnit",
]


class ProviderName(str, Enum):
    CAPYDB = "CAPYDB"
    LOKE = "LOKE"
    BUNDLE = "BUNDLE"
    PLANETSCALE = "PLANETSCALE"
    UPSUN = "UPSUN"

    @property
    def key(self) -> str:
        """The lower-case name used in config sections and package names."""
        return self.value.lower()


class OrganizationStatus(str, Enum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    RESTRICTED = "RESTRICTED"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"


class SubscriptionStatus(str, Enum):
    TRIALING = "TRIALING"
    ACTIVE = "ACTIVE"
    PAST_DUE = "PAST_DUE"
    UNPAID = "UNPAID"
    INCOMPLETE = "INCOMPLETE"
    PAUSED = "PAUSED"
    CANCELED = "CANCELED"
    PROVISIONING = "PROVISIONING"
    PROVISIONING_FAILED = "PROVISIONING_FAILED"
    SUSPENDED = "SUSPENDED"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"


class UsageUnit(str, Enum):
    BYTES = "BYTES"
    COUNT = "COUNT"
    RATIO = "RATIO"


# --------------------------------------------------------------------------------------------
# Normalised records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationRecord:
    provider: ProviderName
    provider_id: str
    name: str
    slug: str | None = None
    billing_email: str | None = None
    plan: str | None = None
    currency: str | None = None
    timezone: str | None = None
    status: OrganizationStatus = OrganizationStatus.UNKNOWN
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionRecord:
    provider: ProviderName
    provider_id: str
    organization_id: str
    plan: str | None = None
    status: SubscriptionStatus = SubscriptionStatus.UNKNOWN
    provider_status: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    trial_ends_at: datetime | None = None
    cancel_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageMetricRecord:
    key: str
    label: str
    value: float | None
    """``None`` where the provider reports only an allowance (then ``limit`` says how much)."""
    unit: UsageUnit
    limit: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageSampleRecord:
    key: str
    at: datetime
    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    metrics: tuple[UsageMetricRecord, ...] = ()
    history: tuple[UsageSampleRecord, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationPage:
    """One upstream page of organizations.

    ``next_cursor`` is an adapter-defined opaque string (for link-paginated APIs, the next-page
    URL the upstream gave) to pass back to ``list_organizations``; ``None`` on the last page.
    """

    organizations: tuple[OrganizationRecord, ...]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationUpdate:
    """The writable fields; ``None`` means "leave unchanged"."""

    name: str | None = None
    billing_email: str | None = None

    def is_empty(self) -> bool:
        return self.name is None and self.billing_email is None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCosts:
    """How many upstream HTTP calls an adapter's methods make, for the gateway's static estimate
    of what one GraphQL operation can cost (``[server] max_upstream_calls``). Token exchanges are
    not counted: tokens are cached and shared by every request of a tenant."""

    organizations_per_page: int | None
    """Organizations one ``list_organizations`` call returns at most; ``None`` when the
    provider lists a single organization per credential (so one call, never a next page)."""
    get_organization: int = 1
    usage: int = 0
    """Calls of one ``get_usage``."""
    subscriptions: int = 0
    """Calls of one ``list_subscriptions`` (its first page; longer walks are not foreseeable)."""
    usage_and_subscriptions: int | None = None
    """Calls when one organization's usage and subscriptions are both read in one request
    (adapters whose usage is derived from the subscription pages share them); ``None`` means
    ``usage + subscriptions``."""

    def per_organization(self, *, usage: bool, subscriptions: bool) -> int:
        if usage and subscriptions:
            if self.usage_and_subscriptions is not None:
                return self.usage_and_subscriptions
            return self.usage + self.subscriptions
        return (self.usage if usage else 0) + (self.subscriptions if subscriptions else 0)
