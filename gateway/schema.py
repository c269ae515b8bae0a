"""The GraphQL schema of DESIGN.md: types, resolvers and the request context they share.

Resolvers turn ``providers.base`` records into GraphQL objects and never talk HTTP: every upstream
call goes through ``gateway.upstreams.Upstreams``. A failing provider never fails the whole
response: list fields skip it and record an error (``RequestContext.errors``) with its code and
provider; nullable single fields resolve to null with the error at their path.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, cast

import strawberry
from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    InlineFragmentNode,
    SelectionSetNode,
)
from strawberry.scalars import JSON
from strawberry.types import Info

from gateway.cache import RequestScope
from gateway.errors import ErrorCode, GatewayError, upstream_graphql_error
from gateway.ids import (
    CursorSigner,
    NodeRef,
    OrganizationCursor,
    decode_index_cursor,
    decode_node_id,
    encode_index_cursor,
    encode_node_id,
)
from gateway.tenancy import Tenant
from gateway.upstreams import Upstreams
from providers.base import (
    InvalidCursor,
    OrganizationPage,
    OrganizationRecord,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    SubscriptionRecord,
    SubscriptionStatus,
    UpstreamError,
    UpstreamNotFound,
    UsageRecord,
    UsageUnit,
)

__all__ = ["MAX_PAGE_SIZE", "RequestContext", "build_schema", "print_sdl"]

MAX_PAGE_SIZE = 100
"""Largest ``first`` a connection accepts: bounds the work one request can ask for."""

Provider = strawberry.enum(ProviderName, name="Provider", description="An upstream provider.")
OrganizationStatusEnum = strawberry.enum(OrganizationStatus, name="OrganizationStatus")
SubscriptionStatusEnum = strawberry.enum(SubscriptionStatus, name="SubscriptionStatus")
UsageUnitEnum = strawberry.enum(UsageUnit, name="UsageUnit")


@strawberry.enum(description="State of a provider's circuit breaker.")
class CircuitState(Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@dataclass(slots=True)
class RequestContext:
    """Everything one GraphQL request needs; built by the HTTP layer per request."""

    tenant: Tenant
    upstreams: Upstreams
    cursors: CursorSigner
    scope: RequestScope | None = None
    errors: list[GraphQLError] = field(default_factory=list)
    prefetched: dict[tuple[str, ProviderName, str], asyncio.Future[Any]] = field(
        default_factory=dict
    )

    def credentials(self, provider: ProviderName) -> ProviderCredentials:
        """The tenant's credentials for ``provider`` or a FORBIDDEN error saying so."""
        creds = self.tenant.credentials_for(provider)
        if creds is None or not self.upstreams.configured(provider):
            raise GatewayError(
                ErrorCode.FORBIDDEN,
                f"No {provider.value} credentials are configured for this tenant",
                provider=provider.value,
            )
        return creds

    def providers(self) -> list[ProviderName]:
        """Providers this tenant can query, in the stable merge order (the enum's order)."""
        return [
            p
            for p in ProviderName
            if self.tenant.credentials_for(p) is not None and self.upstreams.configured(p)
        ]

    def add_upstream_error(self, error: UpstreamError, info: Info | GraphQLResolveInfo) -> None:
        self.errors.append(upstream_graphql_error(error, info.path.as_list()))

    def prefetch(self, org: OrganizationRecord, *, usage: bool, subscriptions: bool) -> None:
        """Start the per-organization reads the query will ask for that call the upstream;
        resolvers take them with ``ready`` (or await them). A read the adapter derives from
        the record is not started here: ``ready`` runs it when asked."""
        creds = self.tenant.credentials_for(org.provider)
        costs = self.upstreams.call_costs_of(org.provider)
        if creds is None or costs is None:
            return
        if usage and costs.usage:
            self._start(_key("usage", org), self.upstreams.get_usage(creds, org))
        if subscriptions and costs.subscriptions:
            self._start(_key("subscriptions", org), self.upstreams.list_subscriptions(creds, org))

    def _start(self, key: tuple[str, ProviderName, str], call: Any) -> None:
        if key in self.prefetched:
            call.close()
            return
        task = asyncio.ensure_future(call)
        # A failure is reported by the resolver that awaits it; never "never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self.prefetched[key] = task

    def ready(self, kind: str, org: OrganizationRecord) -> asyncio.Future[Any] | _Finished | None:
        """The read ``kind`` ("usage" or "subscriptions") of ``org`` once it has finished
        (``result()`` gives it or raises), or None while it has not: a prefetched read's task,
        or a read that makes no upstream call (``CallCosts`` 0: the adapter derives it from
        the record), run to its end here. Run as a task instead, such reads cost a dashboard
        page of LOKE organizations 98 tasks per request that each returned at once, ~15% of
        its time in py-spy (bench/RESULTS.md)."""
        task = self.prefetched.get(_key(kind, org))
        if task is not None:
            return task if task.done() else None
        costs = self.upstreams.call_costs_of(org.provider)
        if costs is None or (costs.usage if kind == "usage" else costs.subscriptions):
            return None
        creds = self.credentials(org.provider)
        if kind == "usage":
            return _run_in_place(self.upstreams.get_usage(creds, org))
        return _run_in_place(self.upstreams.list_subscriptions(creds, org))

    async def settle_prefetched(self) -> None:
        """Wait until every read started by ``prefetch`` has finished (failures included)."""
        pending = [task for task in self.prefetched.values() if not task.done()]
        if pending:
            await asyncio.wait(pending)

    async def usage_of(self, org: OrganizationRecord) -> UsageRecord | None:
        task = self.prefetched.get(_key("usage", org))
        if task is not None:
            result: UsageRecord | None = await task
            return result
        return await self.upstreams.get_usage(self.credentials(org.provider), org)

    async def subscriptions_of(self, org: OrganizationRecord) -> tuple[SubscriptionRecord, ...]:
        task = self.prefetched.get(_key("subscriptions", org))
        if task is not None:
            result: tuple[SubscriptionRecord, ...] = await task
            return result
        return await self.upstreams.list_subscriptions(self.credentials(org.provider), org)


class _Finished:
    """A read that ran to its end in place: ``result()`` as a finished future's."""

    __slots__ = ("_error", "_value")

    def __init__(self, value: Any, error: Exception | None) -> None:
        self._value = value
        self._error = error

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


def _run_in_place(call: Coroutine[Any, Any, Any]) -> _Finished | None:
    """``call`` run to its end at once; None when it would wait: ``call`` is then closed and
    the caller awaits a new one. Only reads that make no upstream call come here, so the
    closed one cannot have sent anything."""
    try:
        call.send(None)
    except StopIteration as stop:
        return _Finished(stop.value, None)
    except Exception as exc:
        return _Finished(None, exc)
    call.close()
    return None


def _key(kind: str, org: OrganizationRecord) -> tuple[str, ProviderName, str]:
    return (kind, org.provider, org.provider_id)


def _context(info: Info) -> RequestContext:
    context: RequestContext = info.context
    return context


def _check_first(first: int | None) -> int:
    """``first`` as given, 20 when null; BAD_USER_INPUT outside 0..MAX_PAGE_SIZE."""
    if first is None:
        return 20
    if first < 0 or first > MAX_PAGE_SIZE:
        raise GatewayError(
            ErrorCode.BAD_USER_INPUT, f"'first' must be between 0 and {MAX_PAGE_SIZE}"
        )
    return first


# --------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.interface(description="An object with a global, opaque id; `node(id:)` refetches it.")
class Node:
    id: strawberry.ID


@strawberry.type
class UsageMetric:
    key: str
    label: str
    value: float | None = strawberry.field(
        description="Null where the provider reports only an allowance (the limit)."
    )
    limit: float | None
    unit: UsageUnitEnum  # type: ignore[valid-type]


@strawberry.type
class UsageSample:
    key: str
    at: datetime
    value: float


@strawberry.type(description="An organization's consumption, as the provider reports it.")
class Usage:
    metrics: list[UsageMetric]
    _record: strawberry.Private[UsageRecord]

    @strawberry.field(
        description="One metric by key, or null when the provider has no such metric."
    )
    def metric(self, key: str) -> UsageMetric | None:
        return next((m for m in self.metrics if m.key == key), None)

    @strawberry.field(description="Samples over time, oldest first; optionally for one key.")
    def history(self, key: str | None = None) -> list[UsageSample]:
        # Sorted when asked for: a dashboard's overview reads metrics only.
        samples = sorted(
            (s for s in self._record.history if key is None or s.key == key), key=lambda s: s.at
        )
        return [UsageSample(key=s.key, at=s.at, value=s.value) for s in samples]

    @classmethod
    def from_record(cls, record: UsageRecord) -> Usage:
        return cls(
            metrics=[
                UsageMetric(key=m.key, label=m.label, value=m.value, limit=m.limit, unit=m.unit)
                for m in record.metrics
            ],
            _record=record,
        )


def _subscription_id(root: Subscription) -> strawberry.ID:
    ref = NodeRef("Subscription", root.provider, root._organization.provider_id, root.provider_id)
    return strawberry.ID(encode_node_id(ref))


def _subscription_raw(root: Subscription) -> JSON:
    return cast(JSON, dict(root._record.raw))


# id, raw and cursors are computed when selected: a list of 100 organizations that asked for
# none of them spent ~10% of its time encoding ids, signing cursors and copying raw objects.
@strawberry.type
class Subscription(Node):
    id: strawberry.ID = strawberry.field(resolver=_subscription_id)
    provider: Provider  # type: ignore[valid-type]
    provider_id: str = strawberry.field(description="The upstream's id for this subscription.")
    plan: str | None
    status: SubscriptionStatusEnum  # type: ignore[valid-type]
    provider_status: str | None = strawberry.field(
        description="The status exactly as the provider spells it."
    )
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_ends_at: datetime | None
    cancel_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    raw: JSON = strawberry.field(
        resolver=_subscription_raw, description="The upstream's subscription object as received."
    )
    _record: strawberry.Private[SubscriptionRecord]
    _organization: strawberry.Private[OrganizationRecord]

    @strawberry.field
    def organization(self) -> Organization:
        return Organization.from_record(self._organization)

    @classmethod
    def from_record(cls, record: SubscriptionRecord, org: OrganizationRecord) -> Subscription:
        return cls(
            provider=record.provider,
            provider_id=record.provider_id,
            plan=record.plan,
            status=record.status,
            provider_status=record.provider_status,
            current_period_start=record.current_period_start,
            current_period_end=record.current_period_end,
            trial_ends_at=record.trial_ends_at,
            cancel_at=record.cancel_at,
            created_at=record.created_at,
            updated_at=record.updated_at,
            _record=record,
            _organization=org,
        )


def _subscription_cursor(root: SubscriptionEdge) -> str:
    return encode_index_cursor("s", root._index)


@strawberry.type
class SubscriptionEdge:
    cursor: str = strawberry.field(resolver=_subscription_cursor)
    node: Subscription
    _index: strawberry.Private[int]


@strawberry.type
class SubscriptionConnection:
    edges: list[SubscriptionEdge]
    page_info: PageInfo
    nodes: list[Subscription]


# An organization's usage and subscriptions answer at once from a read that has finished (a
# page of organizations settles its prefetched reads before it returns), and with an awaitable
# otherwise, which graphql-core awaits: declared async, every organization of a page cost a
# coroutine, a task and a gather in graphql-core, ~30% of a dashboard query's time. They take
# graphql-core's info as well as strawberry's (``_DIRECT_RESOLVERS``): both have the context and
# the path, all they read.
ResolveInfo = Info | GraphQLResolveInfo


def _organization_subscriptions(
    root: Organization,
    info: Info,
    first: int | None = 20,
    after: str | None = strawberry.UNSET,
    status: list[SubscriptionStatusEnum] | None = strawberry.UNSET,  # type: ignore[valid-type]
) -> SubscriptionConnection:
    return _subscriptions(root, info, first, after, status)


def _subscriptions(
    root: Organization,
    info: ResolveInfo,
    first: int | None = 20,
    after: str | None = None,
    status: list[SubscriptionStatus] | None = None,
) -> SubscriptionConnection:
    first = _check_first(first)
    start = decode_index_cursor("s", after) + 1 if after else 0
    ctx: RequestContext = info.context
    org = root._record
    ctx.credentials(org.provider)  # FORBIDDEN when the tenant has none
    wanted = frozenset(status) if status else None
    finished = ctx.ready("subscriptions", org)
    if finished is None:
        return cast(
            SubscriptionConnection, _subscriptions_later(ctx, info, org, first, start, wanted)
        )
    try:
        records = finished.result()
    except UpstreamError as exc:
        # The connection is non-null: an empty page plus the error keeps the organization.
        ctx.add_upstream_error(exc, info)
        records = ()
    return _subscription_page(org, records, first, start, wanted)


async def _subscriptions_later(
    ctx: RequestContext,
    info: ResolveInfo,
    org: OrganizationRecord,
    first: int,
    start: int,
    wanted: frozenset[SubscriptionStatus] | None,
) -> SubscriptionConnection:
    try:
        records = await ctx.subscriptions_of(org)
    except UpstreamError as exc:
        ctx.add_upstream_error(exc, info)
        records = ()
    return _subscription_page(org, records, first, start, wanted)


def _subscription_page(
    org: OrganizationRecord,
    records: tuple[SubscriptionRecord, ...],
    first: int,
    start: int,
    wanted: frozenset[SubscriptionStatus] | None,
) -> SubscriptionConnection:
    matching = [r for r in records if wanted is None or r.status in wanted]
    window = matching[start : start + first]
    edges = [
        SubscriptionEdge(node=Subscription.from_record(r, org), _index=start + i)
        for i, r in enumerate(window)
    ]
    return SubscriptionConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=start + first < len(matching),
            has_previous_page=start > 0,
            start_cursor=_subscription_cursor(edges[0]) if edges else None,
            end_cursor=_subscription_cursor(edges[-1]) if edges else None,
        ),
        nodes=[edge.node for edge in edges],
    )


def _organization_usage(root: Organization, info: Info) -> Usage | None:
    return _usage(root, info)


def _usage(root: Organization, info: ResolveInfo) -> Usage | None:
    ctx: RequestContext = info.context
    finished = ctx.ready("usage", root._record)
    if finished is None:
        return cast(Usage | None, _usage_later(ctx, root._record))
    record: UsageRecord | None = finished.result()
    return Usage.from_record(record) if record is not None else None


async def _usage_later(ctx: RequestContext, org: OrganizationRecord) -> Usage | None:
    record = await ctx.usage_of(org)
    return Usage.from_record(record) if record is not None else None


def _organization_id(root: Organization) -> strawberry.ID:
    return strawberry.ID(encode_node_id(NodeRef("Organization", root.provider, root.provider_id)))


def _organization_raw(root: Organization) -> JSON:
    return cast(JSON, dict(root._record.raw))


@strawberry.type
class Organization(Node):
    id: strawberry.ID = strawberry.field(resolver=_organization_id)
    provider: Provider  # type: ignore[valid-type]
    provider_id: str = strawberry.field(
        description="The upstream's id for this organization (PlanetScale: its name slug)."
    )
    name: str
    slug: str | None
    billing_email: str | None
    plan: str | None
    currency: str | None = strawberry.field(description="ISO 4217 code, when known.")
    timezone: str | None = strawberry.field(description="IANA time zone, when known.")
    status: OrganizationStatusEnum  # type: ignore[valid-type]
    created_at: datetime | None
    updated_at: datetime | None
    raw: JSON = strawberry.field(
        resolver=_organization_raw,
        description="The upstream's organization object as received (inside any envelope).",
    )
    _record: strawberry.Private[OrganizationRecord]

    @classmethod
    def from_record(cls, record: OrganizationRecord) -> Organization:
        return cls(
            provider=record.provider,
            provider_id=record.provider_id,
            name=record.name,
            slug=record.slug,
            billing_email=record.billing_email,
            plan=record.plan,
            currency=record.currency,
            timezone=record.timezone,
            status=record.status,
            created_at=record.created_at,
            updated_at=record.updated_at,
            _record=record,
        )

    subscriptions: SubscriptionConnection = strawberry.field(
        resolver=_organization_subscriptions,
        description="Billing subscriptions, in the provider's order.",
    )
    usage: Usage | None = strawberry.field(
        resolver=_organization_usage,
        description="Usage figures; null where the provider exposes none.",
    )


def _organization_cursor(root: OrganizationEdge) -> str:
    return root._signer.encode_organization_cursor(root._tenant, root._position)


@strawberry.type
class OrganizationEdge:
    cursor: str = strawberry.field(resolver=_organization_cursor)
    node: Organization
    _position: strawberry.Private[OrganizationCursor]
    _tenant: strawberry.Private[str]
    _signer: strawberry.Private[CursorSigner]


def _organization_edges(root: OrganizationConnection) -> list[OrganizationEdge]:
    return [
        OrganizationEdge(node=node, _position=position, _tenant=root._tenant, _signer=root._signer)
        for node, position in zip(root.nodes, root._positions, strict=True)
    ]


@strawberry.type
class OrganizationConnection:
    # Edges are built when selected: a page read through ``nodes`` (the dashboard's, the
    # bench's) paid an edge and a cursor position per organization for nothing.
    edges: list[OrganizationEdge] = strawberry.field(resolver=_organization_edges)
    page_info: PageInfo
    nodes: list[Organization]
    _positions: strawberry.Private[list[OrganizationCursor]]
    _tenant: strawberry.Private[str]
    _signer: strawberry.Private[CursorSigner]


@strawberry.type(description="How a provider looks from this gateway, for this tenant.")
class ProviderStatus:
    provider: Provider  # type: ignore[valid-type]
    configured: bool = strawberry.field(
        description="The gateway knows this provider and the tenant has credentials for it."
    )
    healthy: bool = strawberry.field(
        description="False when this tenant's most recent calls to this provider all failed."
    )
    circuit_state: CircuitState = strawberry.field(
        description=(
            "The circuit breaker in front of the provider's API, or of its token endpoint "
            "where that is on another host and worse off (shared by all tenants: it opens on "
            "timeouts, connection failures and 5xx, never on a tenant's 4xx). OPEN fails "
            "fast; HALF_OPEN lets one probe through."
        )
    )
    recent_calls: int = strawberry.field(
        description="Upstream HTTP calls made for this tenant (the last 200; cache hits excluded)."
    )
    recent_failures: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    last_error_code: str | None


@strawberry.input
class UpdateOrganizationInput:
    name: str | None = None
    billing_email: str | None = None


# --------------------------------------------------------------------------------------------
# Resolvers
# --------------------------------------------------------------------------------------------


async def _fetch_page(
    ctx: RequestContext, info: ResolveInfo, provider: ProviderName, cursor: str | None
) -> OrganizationPage | None:
    try:
        return await ctx.upstreams.list_organizations(provider, ctx.credentials(provider), cursor)
    except InvalidCursor:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "Invalid cursor") from None
    except UpstreamError as exc:
        ctx.add_upstream_error(exc, info)
        return None


def _node_fields(info: ResolveInfo) -> set[str]:
    """Names of the fields selected on the connection's organizations (via ``nodes``,
    ``edges { node }`` and fragments), to know which per-organization reads will follow.
    Read from the document itself: strawberry's ``selected_fields`` converts the whole
    selection, arguments included, into objects first. Directives are not evaluated (a
    skipped ``usage`` is read all the same, as before)."""
    raw: GraphQLResolveInfo = info if isinstance(info, GraphQLResolveInfo) else info._raw_info
    names: set[str] = set()

    def walk(selection_set: SelectionSetNode, in_node: bool) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                if in_node:
                    names.add(name)
                elif name in ("nodes", "edges", "node") and selection.selection_set:
                    walk(selection.selection_set, name != "edges")
            elif isinstance(selection, InlineFragmentNode):
                walk(selection.selection_set, in_node)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = raw.fragments.get(selection.name.value)
                if fragment is not None:
                    walk(fragment.selection_set, in_node)

    for node in raw.field_nodes:
        if node.selection_set is not None:
            walk(node.selection_set, False)
    return names


@dataclass(slots=True)
class _Walk:
    """Up to ``first`` organizations of one provider from a starting position, each with the
    page cursor and index its own cursor will name; ``more`` when the provider has others."""

    items: list[tuple[str | None, int, Sequence[OrganizationRecord]]] = field(default_factory=list)
    """(page cursor, index, page): records are read from their page only once they are
    certain to be shown (``OrganizationRecords`` normalises them then)."""
    more: bool = False


async def _walk(
    ctx: RequestContext,
    info: ResolveInfo,
    provider: ProviderName,
    page_cursor: str | None,
    index: int,
    first: int,
) -> _Walk:
    walk = _Walk()
    page = await _fetch_page(ctx, info, provider, page_cursor)
    while page is not None:
        organizations = page.organizations
        while index < len(organizations) and len(walk.items) < first:
            walk.items.append((page_cursor, index, organizations))
            index += 1
        if len(walk.items) == first or page.next_cursor is None:
            walk.more = index < len(organizations) or page.next_cursor is not None
            return walk
        page_cursor, index = page.next_cursor, 0
        page = await _fetch_page(ctx, info, provider, page_cursor)
    return walk


def _records(
    ctx: RequestContext,
    info: ResolveInfo,
    items: list[tuple[str | None, int, Sequence[OrganizationRecord]]],
) -> list[tuple[str | None, int, OrganizationRecord]]:
    """The records ``items`` point at. A page holding one that does not normalise fails
    whole, as a page that failed to arrive: its provider contributes the items of the pages
    before it, and the error is reported."""
    taken: list[tuple[str | None, int, OrganizationRecord]] = []
    page_start = 0
    try:
        for page_cursor, index, page in items:
            if taken and page is not items[len(taken) - 1][2]:
                page_start = len(taken)
            taken.append((page_cursor, index, page[index]))
    except UpstreamError as exc:
        ctx.add_upstream_error(exc, info)
        del taken[page_start:]
    return taken


async def resolve_organizations(
    ctx: RequestContext,
    info: ResolveInfo,
    providers: list[ProviderName] | None,
    first: int | None,
    after: str | None,
) -> OrganizationConnection:
    """Providers in enum order, each provider's organizations in upstream order.

    The cursor of an organization names its provider, the upstream page it is on and its index
    there, so resuming refetches that page and continues after it: every organization appears
    exactly once however the client pages. Every remaining provider is walked at once, each up
    to ``first`` organizations, so a slow provider never holds up another's pages (the request
    deadline then ends only the slow one). Walks are taken in provider order as they finish, and
    as soon as an organization's place on this page is certain its usage and subscriptions are
    requested (when selected), so those calls do not wait for the rest of the page."""
    first = _check_first(first)
    if providers is None or providers is strawberry.UNSET:
        providers = None  # no filter; an explicit empty list selects nothing
    selected = [p for p in ctx.providers() if providers is None or p in providers]
    start_at = 0
    start_cursor: str | None = None
    start_index = 0
    if after:
        position = ctx.cursors.decode_organization_cursor(ctx.tenant.name, after)
        if position.provider not in selected:
            raise GatewayError(
                ErrorCode.BAD_USER_INPUT, "Cursor does not belong to this provider selection"
            )
        start_at = selected.index(position.provider)
        start_cursor, start_index = position.page_cursor, position.index + 1
    remaining = selected[start_at:]
    wanted = _node_fields(info)
    want_usage, want_subscriptions = "usage" in wanted, "subscriptions" in wanted

    walks = [
        asyncio.ensure_future(
            _walk(
                ctx,
                info,
                provider,
                start_cursor if i == 0 else None,
                start_index if i == 0 else 0,
                first,
            )
        )
        for i, provider in enumerate(remaining)
    ]
    nodes: list[Organization] = []
    positions: list[OrganizationCursor] = []
    has_next = False
    try:
        for i, provider in enumerate(remaining):
            walk = await walks[i]
            room = first - len(nodes)
            taken = _records(ctx, info, walk.items[:room])
            if len(taken) < min(room, len(walk.items)):
                walk.more = False  # a page did not normalise: its provider stops there
                walk.items = walk.items[: len(taken)]
            for page_cursor, index, record in taken:
                ctx.prefetch(record, usage=want_usage, subscriptions=want_subscriptions)
                nodes.append(Organization.from_record(record))
                positions.append(OrganizationCursor(provider, page_cursor, index))
            if len(nodes) == first:
                if len(walk.items) > room or walk.more:
                    has_next = True
                else:
                    later = [await task for task in walks[i + 1 :]]
                    has_next = any(w.items for w in later)
                break
    finally:
        for task in walks:
            if not task.done():
                task.cancel()
    await ctx.settle_prefetched()

    tenant, signer = ctx.tenant.name, ctx.cursors
    return OrganizationConnection(
        nodes=nodes,
        page_info=PageInfo(
            has_next_page=has_next,
            has_previous_page=bool(after),
            start_cursor=signer.encode_organization_cursor(tenant, positions[0])
            if positions
            else None,
            end_cursor=signer.encode_organization_cursor(tenant, positions[-1])
            if positions
            else None,
        ),
        _positions=positions,
        _tenant=tenant,
        _signer=signer,
    )


async def _get_organization(
    ctx: RequestContext, info: ResolveInfo, provider: ProviderName, provider_id: str
) -> OrganizationRecord | None:
    if not provider_id or len(provider_id) > 512 or not _encodable(provider_id):
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "Invalid organization id")
    creds = ctx.credentials(provider)
    try:
        return await ctx.upstreams.get_organization(provider, creds, provider_id)
    except UpstreamNotFound as exc:
        ctx.add_upstream_error(exc, info)
        return None


def _encodable(text: str) -> bool:
    """False for text that cannot go into a URL: lone surrogates ("\\ud800") are valid in a
    GraphQL string literal but have no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _update_from_input(data: UpdateOrganizationInput) -> OrganizationUpdate:
    name = data.name.strip() if data.name is not None else None
    email = data.billing_email.strip() if data.billing_email is not None else None
    if name is not None and not 1 <= len(name) <= 200:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "name must be 1 to 200 characters")
    if email is not None and (len(email) > 254 or not _EMAIL.match(email)):
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "billingEmail is not an email address")
    update = OrganizationUpdate(name=name, billing_email=email)
    if update.is_empty():
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "input must set name or billingEmail")
    return update


@strawberry.type
class Query:
    @strawberry.field(description="Refetch any object by its global id.")
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        ref = decode_node_id(str(id))
        ctx = _context(info)
        record = await _get_organization(ctx, info, ref.provider, ref.organization_id)
        if record is None:
            return None
        if ref.subscription_id is None:
            return Organization.from_record(record)
        subscriptions = await ctx.upstreams.list_subscriptions(
            ctx.credentials(ref.provider), record
        )
        for sub in subscriptions:
            if sub.provider_id == ref.subscription_id:
                return Subscription.from_record(sub, record)
        return None

    @strawberry.field(description="One organization by provider and upstream id.")
    async def organization(
        self,
        info: Info,
        provider: Provider,  # type: ignore[valid-type]
        id: str,
    ) -> Organization | None:
        record = await _get_organization(_context(info), info, provider, id)
        return Organization.from_record(record) if record is not None else None

    @strawberry.field(
        description=(
            "Every organization the caller's credentials can see, merged across providers in a "
            "stable order (providers in enum order, then upstream order). At most 100 per page."
        )
    )
    async def organizations(
        self,
        info: Info,
        providers: list[Provider] | None = strawberry.UNSET,  # type: ignore[valid-type]
        first: int | None = 20,
        after: str | None = strawberry.UNSET,
    ) -> OrganizationConnection:
        return await resolve_organizations(_context(info), info, providers, first, after)

    @strawberry.field(description="Every provider, whether it is configured, and its health.")
    def providers(self, info: Info) -> list[ProviderStatus]:
        ctx = _context(info)
        if ctx.scope is not None:
            ctx.scope.mark_uncacheable()  # live health figures: never from a cached response
        out = []
        for provider in ProviderName:
            health = ctx.upstreams.health(
                provider,
                tenant=ctx.tenant.name,
                has_credentials=ctx.tenant.credentials_for(provider) is not None,
            )
            out.append(
                ProviderStatus(
                    provider=provider,
                    configured=health.configured,
                    healthy=health.healthy,
                    circuit_state=CircuitState(ctx.upstreams.circuit_state(provider)),
                    recent_calls=health.recent_calls,
                    recent_failures=health.recent_failures,
                    latency_p50_ms=health.latency_p50_ms,
                    latency_p95_ms=health.latency_p95_ms,
                    last_error_code=health.last_error_code,
                )
            )
        return out


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description=(
            "Change an organization's name and/or billing email (CapyDB; PlanetScale: billing "
            "email only). Other providers answer UNSUPPORTED. Returns the organization as the "
            "provider stored it."
        )
    )
    async def update_organization(
        self, info: Info, id: strawberry.ID, input: UpdateOrganizationInput
    ) -> Organization:
        ref = decode_node_id(str(id))
        if ref.subscription_id is not None:
            raise GatewayError(ErrorCode.BAD_USER_INPUT, "id is not an organization id")
        update = _update_from_input(input)
        ctx = _context(info)
        creds = ctx.credentials(ref.provider)
        if not ctx.upstreams.supports_update(ref.provider):
            raise GatewayError(
                ErrorCode.UNSUPPORTED,
                f"{ref.provider.value} does not allow updating organizations",
                provider=ref.provider.value,
            )
        record = await ctx.upstreams.update_organization(
            ref.provider, creds, ref.organization_id, update
        )
        # Reads made before the write, in this request or cached, must not answer later reads.
        if ctx.scope is not None:
            await ctx.scope.invalidate(ref.provider, creds.fingerprint)
        return Organization.from_record(record)


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Logging happens once, in gateway.errors.format_error, and only for unexpected errors:
        # upstream failures are expected and already reported to the client.
        return None


def print_sdl(schema: strawberry.Schema) -> str:
    """The SDL, opening with the schema definition: without it every SDL tool takes the billing
    type ``Subscription`` for the subscription root (graphql-core omits the block whenever the
    roots are named Query and Mutation)."""
    core = schema._schema
    roots = [f"  query: {core.query_type.name}"] if core.query_type else []
    if core.mutation_type:
        roots.append(f"  mutation: {core.mutation_type.name}")
    return "schema {\n" + "\n".join(roots) + "\n}\n\n" + schema.as_str() + "\n"


async def _direct_organization(
    source: Any, info: GraphQLResolveInfo, provider: ProviderName, id: str
) -> Organization | None:
    record = await _get_organization(info.context, info, provider, id)
    return Organization.from_record(record) if record is not None else None


async def _direct_organizations(
    source: Any,
    info: GraphQLResolveInfo,
    providers: list[ProviderName] | None = None,
    first: int | None = 20,
    after: str | None = None,
) -> OrganizationConnection:
    return await resolve_organizations(info.context, info, providers, first, after)


_DIRECT_RESOLVERS: dict[tuple[str, str], Any] = {
    ("Query", "organization"): _direct_organization,
    ("Query", "organizations"): _direct_organizations,
    ("Organization", "usage"): _usage,
    ("Organization", "subscriptions"): _subscriptions,
}
"""graphql-core resolvers for the fields every organization of a page resolves, in place of
strawberry's wrappers: those build a strawberry ``Info`` and convert every argument again
(graphql-core has coerced them, enums to our members included), ~10% of a dashboard query's
time in py-spy for two calls of a few microseconds each. Same functions, same arguments."""


def _install_direct_resolvers(schema: GraphQLSchema) -> None:
    for (type_name, field_name), resolve in _DIRECT_RESOLVERS.items():
        graphql_type = schema.type_map[type_name]
        assert isinstance(graphql_type, GraphQLObjectType)
        graphql_type.fields[field_name].resolve = resolve


def build_schema(
    *, extensions: list[Any] | None = None, direct_resolvers: bool = True
) -> strawberry.Schema:
    """The schema; ``direct_resolvers=False`` keeps strawberry's resolvers everywhere (the
    reference tests/test_completion.py compares with)."""
    schema = _Schema(
        query=Query,
        mutation=Mutation,
        types=[Organization, Subscription],
        extensions=extensions or [],
    )
    if direct_resolvers:
        _install_direct_resolvers(schema._schema)
    return schema
