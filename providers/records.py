"""The normalised records adapters return and the enumerations the GraphQL schema mirrors.

Plain typed objects with no GraphQL in them (``OrganizationRecord``, ``SubscriptionRecord``,
``UsageRecord`` ...), and ``CallCosts``, what each adapter method costs in upstream calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, overload

__all__ = [
    "CallCosts",
    "OrganizationPage",
    "OrganizationRecord",
    "OrganizationRecords",
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

    organizations: Sequence[OrganizationRecord]
    next_cursor: str | None = None


class OrganizationRecords(Sequence[OrganizationRecord]):
    """The organizations of one upstream page, each normalised when it is first read.

    A list merges providers' pages that are all fetched at once, so most of a page is often
    never shown: a dashboard's 50 organizations read PlanetScale's and Upsun's first pages
    whole and used none of them, and normalising those cost ~7% of the query in py-spy
    (bench/RESULTS.md). An item that does not normalise raises ``BadUpstreamResponse`` when it
    is read, as the whole page did when it was normalised on arrival."""

    __slots__ = ("_items", "_normalise", "_records")

    def __init__(
        self, items: Sequence[Any], normalise: Callable[[Any], OrganizationRecord]
    ) -> None:
        self._items = items
        self._normalise = normalise
        self._records: list[OrganizationRecord | None] = [None] * len(items)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> OrganizationRecord: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[OrganizationRecord, ...]: ...

    def __getitem__(
        self, index: int | slice
    ) -> OrganizationRecord | tuple[OrganizationRecord, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self._items))))
        record = self._records[index]
        if record is None:
            record = self._records[index] = self._normalise(self._items[index])
        return record

    def __iter__(self) -> Iterator[OrganizationRecord]:
        return (self[i] for i in range(len(self._items)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside; never a dict key

    def __repr__(self) -> str:
        return f"OrganizationRecords({len(self._items)} items)"


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
